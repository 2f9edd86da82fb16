//! Lines in the broker's log, and panics that say what happened.
//!
//! A plugin has no stdout or stderr (no WASI): [`error`], [`warn`], [`info`] and [`debug`] write
//! to the broker's log instead, with the plugin's name (at most 100 lines a second; the broker
//! drops and counts the rest). The plugin macros ([`filter!`](crate::filter!),
//! [`transform!`](crate::transform!), [`quota!`](crate::quota!)) connect this module when the
//! broker calls `init`, and install a panic hook that writes the panic's message and place at
//! error level: the broker then reports a trap as, say, `trapped: panicked at src/lib.rs:30:9:
//! attempt to divide by zero` rather than only the wasm trap.
//!
//! Outside the broker (a plugin's own tests on the host) nothing is connected, and lines go to
//! stderr.
//!
//! ```no_run
//! runnel_plugin::log::info("loaded 12 rules");
//! runnel_plugin::log::warn(&format!("record {} has no device id", 7));
//! ```

use std::sync::OnceLock;

/// How serious a line is; the broker logs it at the same tracing level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// Where lines go: the `log` import of the plugin's world, set by its macro.
static SINK: OnceLock<fn(Level, &str)> = OnceLock::new();

/// Writes `message` to the broker's log at `level`.
pub fn log(level: Level, message: &str) {
    match SINK.get() {
        Some(sink) => sink(level, message),
        None => eprintln!("{level:?}: {message}"),
    }
}

/// Writes `message` to the broker's log at error level (the reason reported if the call then traps).
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Writes `message` to the broker's log at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes `message` to the broker's log at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes `message` to the broker's log at debug level (shown only when the broker's log filter lets debug lines of `runnel::plugins::guest` through).
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Sends lines to `sink` and panics to the log, once per instance. Called by the plugin macros
/// from `init`.
#[doc(hidden)]
pub fn connect(sink: fn(Level, &str)) {
    if SINK.set(sink).is_ok() {
        std::panic::set_hook(Box::new(|info| {
            // One line: "panicked at FILE:LINE:COL: MESSAGE". The default hook would first ask
            // WASI for RUST_BACKTRACE, which a plugin does not have, and trap before a word.
            let line = info.to_string().replace('\n', " ");
            log(Level::Error, &line);
        }));
    }
}

/// A sink: `log` of a world's generated `host` bindings, at the matching level.
macro_rules! sink {
    ($name:ident, $world:literal, $($host:ident)::+) => {
        #[doc = concat!("The sink of the `", $world, "` world.")]
        #[doc(hidden)]
        pub fn $name(level: Level, message: &str) {
            use $($host)::+ as host;
            let level = match level {
                Level::Error => host::Level::Error,
                Level::Warn => host::Level::Warn,
                Level::Info => host::Level::Info,
                Level::Debug => host::Level::Debug,
            };
            host::log(level, message);
        }
    };
}

sink!(filter_sink, "filter", crate::bindings::runnel::plugin::host);
sink!(transform_sink, "transform", crate::transform_bindings::runnel::plugin::host);
sink!(quota_sink, "quota", crate::quota::bindings::runnel::plugin::host);
