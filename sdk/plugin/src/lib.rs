//! Guest SDK for Runnel WebAssembly plugins.
//!
//! A filter plugin is a type implementing [`Filter`] plus one line, `runnel_plugin::filter!(T);`:
//!
//! ```no_run
//! struct DropEmpty;
//! impl runnel_plugin::Filter for DropEmpty {
//!     fn init(_config: &str) -> Result<Self, String> { Ok(DropEmpty) }
//!     fn keep(&mut self, record: &runnel_plugin::Record<'_>) -> bool {
//!         record.value().is_some_and(|v| !v.is_empty())
//!     }
//! }
//! runnel_plugin::filter!(DropEmpty);
//! ```
//!
//! A transform implements [`Transform`] and writes zero or more records per input into an
//! [`Output`], each one unchanged ([`Output::keep`]), rewritten or sent to another topic
//! ([`NewRecord`]):
//!
//! ```no_run
//! use runnel_plugin::{NewRecord, Output, Record};
//! struct Tag(String);
//! impl runnel_plugin::Transform for Tag {
//!     fn init(config: &str) -> Result<Self, String> { Ok(Tag(config.to_owned())) }
//!     fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<(), String> {
//!         out.push(&NewRecord::from(record).with_header("site", Some(self.0.as_bytes())));
//!         Ok(())
//!     }
//! }
//! runnel_plugin::transform!(Tag);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` is a component the
//! broker loads. The batch arrives as one framed buffer (layout in `sdk/wit/plugin.wit` and in
//! [`frame`]); [`Batch`] and [`Record`] read it in place, without copying keys or values.
//!
//! A quota policy implements [`QuotaPolicy`] and ends with `runnel_plugin::quota!(T);` (see
//! [`quota`]).
//!
//! A plugin writes to the broker's log with [`log`]; a panic's message lands there too, and in
//! the error the broker reports for the call.

pub mod frame;
pub mod log;
pub mod output;
pub mod quota;

pub use frame::{Batch, FrameError, Header, Record};
pub use output::{NewRecord, Output};
pub use quota::{Decision, QuotaPolicy};

/// The generated WIT bindings of the `filter` world. Used by [`filter!`]; plugin authors do not
/// need it.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "filter",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_filter_world",
        default_bindings_module: "runnel_plugin::bindings",
    });
}

/// The generated WIT bindings of the `transform` world. Used by [`transform!`].
#[doc(hidden)]
pub mod transform_bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_transform_world",
        default_bindings_module: "runnel_plugin::transform_bindings",
    });
}

/// A record filter. One value lives per plugin instance: made by [`Filter::init`] from the
/// plugin's config string, then asked about every record of every batch.
pub trait Filter: Sized + 'static {
    /// Parses the config string of the plugin's `[[plugins.load]]` entry. An error refuses the plugin.
    fn init(config: &str) -> Result<Self, String>;
    /// Whether `record` is kept.
    fn keep(&mut self, record: &Record<'_>) -> bool;
}

/// Runs `filter` over a framed batch and returns the keep bitmap (bit i set = record i kept).
/// Public so plugins can test their logic on the host with [`frame::Writer`]-built batches.
pub fn run_filter<F: Filter>(filter: &mut F, batch: &[u8]) -> Result<Vec<u8>, String> {
    let batch = Batch::parse(batch).map_err(|e| e.to_string())?;
    let count = batch.count() as usize;
    let mut bitmap = vec![0u8; count.div_ceil(8)];
    for (i, record) in batch.records().enumerate() {
        let record = record.map_err(|e| e.to_string())?;
        if filter.keep(&record) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    Ok(bitmap)
}

/// A record transform. One value lives per plugin instance: made by [`Transform::init`] from the
/// plugin's config string, then handed every record of every batch with the batch's [`Output`].
pub trait Transform: Sized + 'static {
    /// Parses the config string of the plugin's `[[plugins.load]]` entry. An error refuses the
    /// plugin.
    fn init(config: &str) -> Result<Self, String>;
    /// Writes what `record` becomes into `out`: nothing (dropped), itself ([`Output::keep`]),
    /// or any number of new records ([`Output::push`]). An error fails the whole batch's call
    /// (the binding's `on_error` policy applies).
    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<(), String>;
}

/// Runs `transform` over a framed batch and returns the output frame. Public so plugins can test
/// their logic on the host ([`output::read_output`] reads the answer back).
pub fn run_transform<T: Transform>(transform: &mut T, batch: &[u8]) -> Result<Vec<u8>, String> {
    let parsed = Batch::parse(batch).map_err(|e| e.to_string())?;
    let mut out = Output::with_capacity(batch.len());
    for record in parsed.records() {
        let record = record.map_err(|e| e.to_string())?;
        transform.transform(&record, &mut out)?;
    }
    Ok(out.finish())
}

/// Exports a [`Transform`] type as the plugin's `transform` world.
#[macro_export]
macro_rules! transform {
    ($ty:ty) => {
        static __RUNNEL_TRANSFORM: ::std::sync::Mutex<::std::option::Option<$ty>> =
            ::std::sync::Mutex::new(::std::option::Option::None);

        struct __RunnelTransformExport;

        impl $crate::transform_bindings::Guest for __RunnelTransformExport {
            fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::log::connect($crate::log::transform_sink);
                let transform = <$ty as $crate::Transform>::init(&config)?;
                *__RUNNEL_TRANSFORM.lock().unwrap_or_else(|e| e.into_inner()) = Some(transform);
                Ok(())
            }

            fn transform(
                batch: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                let mut state = __RUNNEL_TRANSFORM.lock().unwrap_or_else(|e| e.into_inner());
                let transform = state
                    .as_mut()
                    .ok_or_else(|| "transform called before init".to_string())?;
                $crate::run_transform(transform, &batch)
            }
        }

        $crate::transform_bindings::export_transform_world!(
            __RunnelTransformExport with_types_in $crate::transform_bindings
        );
    };
}

/// Exports a [`Filter`] type as the plugin's `filter` world.
#[macro_export]
macro_rules! filter {
    ($ty:ty) => {
        static __RUNNEL_FILTER: ::std::sync::Mutex<::std::option::Option<$ty>> =
            ::std::sync::Mutex::new(::std::option::Option::None);

        struct __RunnelFilterExport;

        impl $crate::bindings::Guest for __RunnelFilterExport {
            fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::log::connect($crate::log::filter_sink);
                let filter = <$ty as $crate::Filter>::init(&config)?;
                *__RUNNEL_FILTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(filter);
                Ok(())
            }

            fn filter(
                batch: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                let mut state = __RUNNEL_FILTER.lock().unwrap_or_else(|e| e.into_inner());
                let filter = state.as_mut().ok_or_else(|| "filter called before init".to_string())?;
                $crate::run_filter(filter, &batch)
            }
        }

        $crate::bindings::export_filter_world!(__RunnelFilterExport with_types_in $crate::bindings);
    };
}
