//! Configuration for the `runnel` broker: the TOML schema, a documented default for every key,
//! validation whose errors name the key, the line and what is allowed, and `RUNNEL_*`
//! environment overrides. No I/O beyond reading the config file.
//!
//! # Map
//!
//! - `schema`: one serde struct per section ([`BrokerConfig`],
//!   [`ListenersConfig`], [`LogConfig`], [`GroupsConfig`]) with `Default` giving the documented
//!   values, and the enums [`FlushPolicy`], [`CleanupPolicy`], [`TimestampType`].
//! - `plugins`: `[plugins]` ([`PluginsConfig`]): plugins to load, limits, topic bindings,
//!   quota policies ([`QuotaBinding`]).
//! - [`units`]: human sizes ("64MiB", "100MB") and durations ("10s", "7d"), parsed and rendered.
//! - `keys`: the table of sections and keys, their kinds and the comments of the default file.
//! - `load`: TOML text -> key check -> env overrides -> serde -> validation
//!   ([`Config::from_toml_str`], [`Config::load`]).
//! - `env`: `RUNNEL_<SECTION>__<KEY>` overrides (see [`ENV_PREFIX`]).
//! - `validate`: ranges and contradictions ([`Config::validate`]).
//! - `topic`: per-topic overrides with Kafka names ([`LogConfig::apply_topic_override`],
//!   [`LogConfig::to_topic_configs`]).
//! - `render`: the commented default file ([`Config::default_toml`]).
//!
//! # Precedence
//!
//! Environment variables override the file, which overrides the defaults. A key missing from the
//! file takes its default; an unknown key anywhere is an error.
//!
//! # Errors
//!
//! Every [`ConfigError`] names where the value came from ([`Location`]), the key path and what
//! is allowed:
//!
//! ```text
//! runnel.toml:12: log.flush: unknown value "sometimes"; allowed: never, interval, always
//! runnel.toml:3: broker.default_partitions: 0 is out of range; allowed: 1..=10000
//! env RUNNEL_LOG__RETENTION: log.retention: invalid duration "3 parsecs"
//! runnel.toml:7: unknown key listeners.kafka.adress; allowed keys: enabled, address
//! ```
//!
//! A value that was never set but contradicts one that was is reported at the one that was set;
//! a key that only has its default is located as `runnel.toml:(default)`.
//!
//! # Example
//!
//! ```
//! let text = "[log]\nretention = \"3d\"\n";
//! let env = [("RUNNEL_BROKER__NODE_ID".to_string(), "7".to_string())];
//! let config = edge_config::Config::from_toml_str(text, "runnel.toml", &env).unwrap();
//! assert_eq!(config.broker.node_id, 7);
//! assert_eq!(config.log.retention, Some(std::time::Duration::from_secs(3 * 86_400)));
//! ```

mod env;
mod error;
mod federation;
mod keys;
mod load;
mod plugins;
mod provenance;
mod render;
mod schema;
mod topic;
pub mod units;
mod validate;

pub use env::{ENV_PREFIX, ENV_SEPARATOR};
pub use error::{ConfigError, Location};
pub use federation::{FederationConfig, FederationLink, RESERVED_CLIENT_KEYS};
pub use load::key_line;
pub use plugins::{Binding, OnError, PluginSpec, PluginsConfig, QuotaApi, QuotaBinding};
pub use schema::{
    AclsConfig, AdminListener, BrokerConfig, CertPrincipal, CleanupPolicy, ClusterBroker,
    ClusterConfig, Config, FlushPolicy, GroupsConfig, KafkaListener, ListenersConfig, LogConfig,
    OAuthBearerConfig, QuicClientAuth, QuicListener, TimestampType, TlsClientAuth, TlsListener,
    UnknownValue,
};
pub use topic::{FIXED_TOPIC_CONFIGS, TOPIC_CONFIG_NAMES};
