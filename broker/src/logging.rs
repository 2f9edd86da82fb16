//! The broker's log filter, changeable while it runs: Kafka's broker loggers
//! (`kafka-configs --entity-type broker-loggers`, `runnel loggers`). A logger is a tracing
//! target, a module path such as `runnel::net::quic`, `runnel::storage` or `quinn`, and covers
//! the targets under it; `root` is the level of every target no logger names. The filter starts
//! from `RUST_LOG` (default `info`); a change lasts until the broker stops.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The name Kafka gives the level of every logger not set on its own.
pub const ROOT: &str = "root";

/// The levels a logger takes, as Kafka names them (FATAL is ERROR here: tracing has no fatal
/// level). OFF silences a logger.
pub const LEVELS: [&str; 7] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"];

/// The broker's own modules, listed beside the loggers set so that an operator sees what may be
/// named.
const MODULES: [&str; 13] = [
    "runnel::acl",
    "runnel::admin",
    "runnel::broker",
    "runnel::catalog",
    "runnel::federation",
    "runnel::groups",
    "runnel::meta",
    "runnel::net",
    "runnel::plugins",
    "runnel::protocol",
    "runnel::replication",
    "runnel::storage",
    "runnel::transactions",
];

struct Loggers {
    handle: reload::Handle<EnvFilter, Registry>,
    state: Mutex<Levels>,
}

/// The filter's directives: the root level, a level per logger, and what `RUST_LOG` said that
/// is not a logger's level (span and field filters), kept as given.
#[derive(Clone, Debug, PartialEq)]
struct Levels {
    root: String,
    loggers: BTreeMap<String, String>,
    other: Vec<String>,
}

impl Levels {
    /// Parsed from a `RUST_LOG` value that `EnvFilter` took (which, with no level alone,
    /// lets nothing through but the targets named).
    fn parse(filter: &str) -> Levels {
        let mut levels = Levels {
            root: "OFF".into(),
            loggers: BTreeMap::new(),
            other: Vec::new(),
        };
        for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match d.split_once('=') {
                _ if d.contains('[') => levels.other.push(d.to_string()),
                None => match level(d) {
                    Some(l) => levels.root = l.to_string(),
                    // A target alone enables every level of it.
                    None => {
                        levels.loggers.insert(d.to_string(), "TRACE".into());
                    }
                },
                Some((target, l)) => match level(l) {
                    Some(l) if target.is_empty() => levels.root = l.to_string(),
                    Some(l) => {
                        levels.loggers.insert(target.to_string(), l.to_string());
                    }
                    None => levels.other.push(d.to_string()),
                },
            }
        }
        levels
    }

    /// The directives, for `EnvFilter`.
    fn directives(&self) -> String {
        let mut out = vec![self.root.to_ascii_lowercase()];
        out.extend(
            self.loggers
                .iter()
                .map(|(t, l)| format!("{t}={}", l.to_ascii_lowercase())),
        );
        out.extend(self.other.iter().cloned());
        out.join(",")
    }

    /// The level a target logs at: that of the longest logger its name starts with (as
    /// `EnvFilter` matches them: `runnel::net` covers `runnel::network` too), else the root's.
    fn effective(&self, target: &str) -> &str {
        self.loggers
            .iter()
            .filter(|(t, _)| target.starts_with(t.as_str()))
            .max_by_key(|(t, _)| t.len())
            .map_or(&self.root, |(_, l)| l)
    }
}

/// A level as Kafka spells it, from any case; FATAL is taken as ERROR.
fn level(text: &str) -> Option<&'static str> {
    let upper = text.trim().to_ascii_uppercase();
    match upper.as_str() {
        "FATAL" => Some("ERROR"),
        _ => LEVELS.into_iter().find(|l| *l == upper),
    }
}

static LOGGERS: OnceLock<Loggers> = OnceLock::new();

/// Installs the process's logger: `filter` (from `RUST_LOG`, already checked by `EnvFilter`)
/// on stderr, changeable with [`set`] and [`reset`].
pub fn init(filter: &str, ansi: bool) {
    let levels = Levels::parse(filter);
    let env_filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(env_filter);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
        .init();
    let _ = LOGGERS.set(Loggers {
        handle,
        state: Mutex::new(levels),
    });
}

/// Every logger set, the root first, then the broker's modules, each with the level it logs at.
pub fn describe() -> Result<Vec<(String, String)>, LoggerError> {
    let loggers = LOGGERS.get().ok_or(LoggerError::NotInstalled)?;
    let levels = loggers.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = vec![(ROOT.to_string(), levels.root.clone())];
    let mut names: Vec<&str> = levels.loggers.keys().map(String::as_str).collect();
    names.extend(MODULES);
    names.sort_unstable();
    names.dedup();
    out.extend(
        names
            .into_iter()
            .map(|n| (n.to_string(), levels.effective(n).to_string())),
    );
    Ok(out)
}

/// Why a logger cannot be set or reset, in Kafka's words where Kafka has them.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoggerError {
    #[error(
        "Cannot set the log level of {logger} to {level} as it is not a supported log level. \
         Valid log levels are TRACE, DEBUG, INFO, WARN, ERROR, FATAL (taken as ERROR) and OFF"
    )]
    Level { logger: String, level: String },
    #[error(
        "Logger {0} does not exist: a logger is a module path such as runnel::net or quinn, \
         or root"
    )]
    Name(String),
    #[error("Removing the log level of the root logger is not allowed")]
    RemoveRoot,
    #[error(
        "this process's log levels are not runnel's to show or change (it did not install runnel's logger)"
    )]
    NotInstalled,
}

/// A change to make: a logger's level, or `None` to let it log at the root's level again.
pub type Change = (String, Option<String>);

/// Checks `changes` and, unless `validate_only`, applies them together.
pub fn apply(changes: &[Change], validate_only: bool) -> Result<(), LoggerError> {
    let loggers = LOGGERS.get().ok_or(LoggerError::NotInstalled)?;
    let mut state = loggers.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = state.clone();
    for (logger, l) in changes {
        let root = logger.eq_ignore_ascii_case(ROOT);
        if !root && !is_target(logger) {
            return Err(LoggerError::Name(crate::log_budget::client_text(logger)));
        }
        match l {
            None if root => return Err(LoggerError::RemoveRoot),
            None => {
                next.loggers.remove(logger);
            }
            Some(text) => {
                let l = level(text).ok_or_else(|| LoggerError::Level {
                    logger: crate::log_budget::client_text(logger),
                    level: crate::log_budget::client_text(text),
                })?;
                if root {
                    next.root = l.to_string();
                } else {
                    next.loggers.insert(logger.clone(), l.to_string());
                }
            }
        }
    }
    if validate_only || next == *state {
        return Ok(());
    }
    let filter = EnvFilter::try_new(next.directives()).map_err(|_| {
        // Every part was checked above; a refusal here would be a filter kept from RUST_LOG.
        LoggerError::Name(next.directives())
    })?;
    if loggers.handle.reload(filter).is_err() {
        return Err(LoggerError::NotInstalled);
    }
    // Dependencies logging through the `log` crate (rustls) are filtered by its own maximum,
    // set once at start; it follows the new filter's.
    log::set_max_level(log_level(tracing::level_filters::LevelFilter::current()));
    *state = next;
    Ok(())
}

/// `level` as the `log` crate names it.
fn log_level(level: tracing::level_filters::LevelFilter) -> log::LevelFilter {
    use tracing::level_filters::LevelFilter as L;
    match level {
        L::OFF => log::LevelFilter::Off,
        L::ERROR => log::LevelFilter::Error,
        L::WARN => log::LevelFilter::Warn,
        L::INFO => log::LevelFilter::Info,
        L::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// A tracing target a directive can name: module path segments of letters, digits, `_` and
/// `-` (crate names), joined by `::`.
fn is_target(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split("::").all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_is_read_as_a_root_level_and_loggers() {
        let l = Levels::parse("warn,runnel::net=debug,quinn=off,h2,runnel[conn]=trace");
        assert_eq!(l.root, "WARN");
        assert_eq!(l.loggers["runnel::net"], "DEBUG");
        assert_eq!(l.loggers["quinn"], "OFF");
        assert_eq!(l.loggers["h2"], "TRACE");
        assert_eq!(l.other, vec!["runnel[conn]=trace".to_string()]);
        assert_eq!(
            l.directives(),
            "warn,h2=trace,quinn=off,runnel::net=debug,runnel[conn]=trace"
        );
        assert!(EnvFilter::try_new(l.directives()).is_ok());
        // No level alone: EnvFilter lets only the targets named through.
        assert_eq!(Levels::parse("runnel=info").root, "OFF");
    }

    #[test]
    fn a_target_logs_at_the_level_of_the_longest_logger_over_it() {
        let l = Levels::parse("info,runnel::net=debug,runnel::net::quic=warn");
        assert_eq!(l.effective("runnel::net::tcp"), "DEBUG");
        assert_eq!(l.effective("runnel::net::quic"), "WARN");
        assert_eq!(l.effective("runnel::net::quic::x"), "WARN");
        // As EnvFilter matches: by the start of the name.
        assert_eq!(l.effective("runnel::network"), "DEBUG");
        assert_eq!(l.effective("quinn"), "INFO");
    }

    #[test]
    fn levels_and_names_are_checked() {
        assert_eq!(level("debug"), Some("DEBUG"));
        assert_eq!(level("Fatal"), Some("ERROR"));
        assert_eq!(level("verbose"), None);
        assert!(is_target("runnel::net::quic"));
        assert!(is_target("tokio-util"));
        assert!(!is_target("runnel::"));
        assert!(!is_target("runnel=debug"));
        assert!(!is_target("a,b"));
        assert!(!is_target(""));
    }
}
