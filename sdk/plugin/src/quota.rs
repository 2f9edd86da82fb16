//! Quota policies: a type implementing [`QuotaPolicy`] plus one line,
//! `runnel_plugin::quota!(T);`, is a plugin of the `quota` world.
//!
//! ```no_run
//! use runnel_plugin::quota::{Decision, QuotaPolicy, Request};
//!
//! /// Refuses produce requests over a size.
//! struct MaxRequest(u64);
//!
//! impl QuotaPolicy for MaxRequest {
//!     fn init(config: &str) -> Result<Self, String> {
//!         config.trim().parse().map(MaxRequest).map_err(|e| format!("{config:?}: {e}"))
//!     }
//!     fn decide(&mut self, request: &Request, _now_ms: i64) -> Decision {
//!         if request.bytes > self.0 {
//!             Decision::Reject(format!("{} bytes is over {}", request.bytes, self.0))
//!         } else {
//!             Decision::Allow
//!         }
//!     }
//! }
//! runnel_plugin::quota!(MaxRequest);
//! ```
//!
//! The broker asks once per topic of a produce request (and of a fetch response, when the
//! binding lists `fetch`). It keeps one instance of the plugin and calls it under a lock, so the
//! policy value sees every request of every connection, in order.

/// The generated WIT bindings of the `quota` world. Used by [`quota!`](crate::quota!); plugin
/// authors do not need it.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "quota",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_quota_world",
        default_bindings_module: "runnel_plugin::quota::bindings",
    });
}

/// The Kafka API a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Api {
    /// Produce (key 0): `bytes` and `records` are what the request carries for the topic.
    Produce,
    /// Fetch (key 1): `bytes` and `records` are what the response returns for the topic.
    Fetch,
    /// Another API key (not sent by this broker today).
    Other(i16),
}

impl Api {
    pub fn from_key(key: i16) -> Api {
        match key {
            0 => Api::Produce,
            1 => Api::Fetch,
            other => Api::Other(other),
        }
    }
}

/// One request, as far as one topic of it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client id the client sent ("" when none).
    pub client_id: String,
    /// `User:ANONYMOUS`, `User:<CN>` of a verified client certificate, or `User:<name>` after a
    /// SASL PLAIN login (a `sasl_plain_file` user, or a QUIC `token_file` device).
    pub principal: String,
    /// The listener: `kafka`, `kafka_tls` or `quic`.
    pub listener: String,
    pub api: Api,
    pub topic: String,
    /// Record-batch bytes of this topic (in the produce request, or in the fetch response).
    pub bytes: u64,
    /// Records in those batches.
    pub records: u32,
}

/// What the broker does with the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Accept, and throttle the client this many milliseconds: the response carries
    /// `throttle_time_ms` and the connection is muted that long.
    Throttle(u32),
    /// Refuse this topic's part of the request (POLICY_VIOLATION) with this reason; nothing of
    /// it is written.
    Reject(String),
}

/// A quota policy. One value lives per plugin instance: made by [`QuotaPolicy::init`] from the
/// plugin's config string, then asked about every request.
pub trait QuotaPolicy: Sized + 'static {
    /// Parses the config string of the plugin's `[[plugins.load]]` entry. An error refuses the
    /// plugin.
    fn init(config: &str) -> Result<Self, String>;
    /// Decides about `request`. `now_ms` is the broker's wall clock in milliseconds since the
    /// Unix epoch (it can step back when the system clock is set back).
    fn decide(&mut self, request: &Request, now_ms: i64) -> Decision;
}

/// Converts the WIT record and asks `policy`. Used by [`quota!`](crate::quota!).
#[doc(hidden)]
pub fn run_decide<P: QuotaPolicy>(
    policy: &mut P,
    request: bindings::RequestInfo,
    now_ms: i64,
) -> bindings::Decision {
    let request = Request {
        client_id: request.client_id,
        principal: request.principal,
        listener: request.listener,
        api: Api::from_key(request.api_key),
        topic: request.topic,
        bytes: request.bytes,
        records: request.records,
    };
    match policy.decide(&request, now_ms) {
        Decision::Allow => bindings::Decision::Allow,
        Decision::Throttle(ms) => bindings::Decision::Throttle(ms),
        Decision::Reject(reason) => bindings::Decision::Reject(reason),
    }
}

/// Exports a [`QuotaPolicy`] type as the plugin's `quota` world.
#[macro_export]
macro_rules! quota {
    ($ty:ty) => {
        static __RUNNEL_QUOTA: ::std::sync::Mutex<::std::option::Option<$ty>> =
            ::std::sync::Mutex::new(::std::option::Option::None);

        struct __RunnelQuotaExport;

        impl $crate::quota::bindings::Guest for __RunnelQuotaExport {
            fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                $crate::log::connect($crate::log::quota_sink);
                let policy = <$ty as $crate::quota::QuotaPolicy>::init(&config)?;
                *__RUNNEL_QUOTA.lock().unwrap_or_else(|e| e.into_inner()) = Some(policy);
                Ok(())
            }

            fn decide(
                request: $crate::quota::bindings::RequestInfo,
                now_ms: i64,
            ) -> $crate::quota::bindings::Decision {
                let mut state = __RUNNEL_QUOTA.lock().unwrap_or_else(|e| e.into_inner());
                match state.as_mut() {
                    Some(policy) => $crate::quota::run_decide(policy, request, now_ms),
                    None => $crate::quota::bindings::Decision::Reject(
                        "quota policy called before init".into(),
                    ),
                }
            }
        }

        $crate::quota::bindings::export_quota_world!(__RunnelQuotaExport with_types_in $crate::quota::bindings);
    };
}
