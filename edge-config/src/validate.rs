//! Validation: ranges of single values, and contradictions between values.
//!
//! Each check names the key it is about; a contradiction is reported at the first of its keys
//! that was set explicitly (in the file or env), since that is the one the user wrote.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::ConfigError;
use crate::provenance::Provenance;
use crate::units::{GIB, KIB, MIB, format_bytes, format_duration};
use crate::{Config, FlushPolicy, QuicClientAuth};

/// `broker.default_partitions`.
pub(crate) const PARTITIONS: RangeInclusive<i32> = 1..=10_000;
/// `broker.max_request_bytes`.
pub(crate) const REQUEST_BYTES: RangeInclusive<u64> = KIB..=2 * GIB;
/// `broker.fetch_memory_bytes`.
const FETCH_MEMORY_BYTES: RangeInclusive<u64> = MIB..=1024 * GIB;
/// `log.segment_bytes` and `segment.bytes`: small enough for 32-bit positions within a segment,
/// and small minimum so tests can roll tiny segments.
pub(crate) const SEGMENT_BYTES: RangeInclusive<u64> = KIB..=2 * GIB;
/// `log.index_interval_bytes` and `index.interval.bytes`.
pub(crate) const INDEX_INTERVAL_BYTES: RangeInclusive<u64> = 0..=2 * GIB;
/// `log.max_message_bytes` and `max.message.bytes` (also at most `broker.max_request_bytes`).
pub(crate) const MESSAGE_BYTES: RangeInclusive<u64> = 1..=2 * GIB;

fn bytes_range(range: &RangeInclusive<u64>) -> String {
    format!(
        "{}..={}",
        format_bytes(*range.start()),
        format_bytes(*range.end())
    )
}

struct Checker<'a> {
    provenance: &'a Provenance,
}

impl Checker<'_> {
    fn out_of_range(&self, key: &str, value: impl Display, allowed: impl Display) -> ConfigError {
        ConfigError::OutOfRange {
            at: self.provenance.locate(key),
            key: key.to_owned(),
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    fn range<T: PartialOrd + Display>(
        &self,
        key: &str,
        value: T,
        range: RangeInclusive<T>,
    ) -> Result<(), ConfigError> {
        if range.contains(&value) {
            return Ok(());
        }
        let allowed = format!("{}..={}", range.start(), range.end());
        Err(self.out_of_range(key, value, allowed))
    }

    fn bytes(&self, key: &str, value: u64, range: RangeInclusive<u64>) -> Result<(), ConfigError> {
        if range.contains(&value) {
            return Ok(());
        }
        Err(self.out_of_range(key, format_bytes(value), bytes_range(&range)))
    }

    fn positive(&self, key: &str, value: Duration) -> Result<(), ConfigError> {
        if value.is_zero() {
            return Err(self.out_of_range(key, "0s", "more than 0s"));
        }
        Ok(())
    }

    /// Two or more keys that contradict each other; reported at `keys[0]`, located at the first
    /// of `keys` set explicitly.
    fn conflict(&self, keys: &[&str], message: String) -> ConfigError {
        ConfigError::Conflict {
            at: self.provenance.locate_first(keys),
            key: keys[0].to_owned(),
            message,
        }
    }

    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: self.provenance.locate(key),
            key: key.to_owned(),
            message,
        }
    }
}

/// An error in an entry of an array of tables (`plugins.load[2].path`), at the line of that
/// key if the file set it, else at the entry's, else at the array's.
fn entry_error(provenance: &Provenance, key: String, message: String) -> ConfigError {
    let entry = key
        .rsplit_once('.')
        .map_or(key.as_str(), |(entry, _)| entry);
    let array = key.split('[').next().unwrap_or(&key);
    ConfigError::Invalid {
        at: provenance.locate_first(&[&key, entry, array]),
        key,
        message,
    }
}

/// Whether two TCP listeners would fail to bind both: same non-zero port, and the same IP or
/// either one a wildcard. Port 0 asks the OS for a free port, so it never clashes.
fn tcp_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Config {
    /// Checks ranges and contradictions. Errors name the key path and what is allowed; for a
    /// config built in code they carry no location.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&Provenance::unknown())
    }

    pub(crate) fn check(&self, provenance: &Provenance) -> Result<(), ConfigError> {
        let c = Checker { provenance };
        let broker = &self.broker;
        c.range("broker.node_id", broker.node_id, 0..=i32::MAX)?;
        if broker.data_dir.as_os_str().is_empty() {
            return Err(c.invalid("broker.data_dir", "must not be empty".into()));
        }
        let host = &broker.advertised_host;
        if host.contains(char::is_whitespace)
            || host.contains('/')
            || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err())
        {
            return Err(c.invalid(
                "broker.advertised_host",
                format!("{host:?} is not a host name or IP address (give no scheme or port)"),
            ));
        }
        c.range(
            "broker.default_partitions",
            broker.default_partitions,
            PARTITIONS,
        )?;
        if broker.default_replication_factor != 1 {
            return Err(c.out_of_range(
                "broker.default_replication_factor",
                broker.default_replication_factor,
                "1 (this broker is the only replica of its topics)",
            ));
        }
        c.bytes(
            "broker.max_request_bytes",
            broker.max_request_bytes,
            REQUEST_BYTES,
        )?;
        if broker.max_connections == 0 {
            return Err(c.out_of_range("broker.max_connections", 0, "1 or more"));
        }
        c.positive("broker.handshake_timeout", broker.handshake_timeout)?;
        broker
            .parsed_ip_overrides()
            .map_err(|why| c.invalid("broker.max_connections_per_ip_overrides", why))?;
        if broker.max_fetch_sessions > 100_000 {
            return Err(c.out_of_range(
                "broker.max_fetch_sessions",
                broker.max_fetch_sessions,
                "0..=100000",
            ));
        }
        c.positive("broker.connections_max_idle", broker.connections_max_idle)?;
        c.bytes(
            "broker.fetch_max_bytes",
            broker.fetch_max_bytes,
            REQUEST_BYTES,
        )?;
        c.bytes(
            "broker.fetch_memory_bytes",
            broker.fetch_memory_bytes,
            FETCH_MEMORY_BYTES,
        )?;
        c.bytes(
            "broker.queued_max_request_bytes",
            broker.queued_max_request_bytes,
            FETCH_MEMORY_BYTES,
        )?;

        self.check_listeners(&c)?;

        let log = &self.log;
        c.bytes("log.segment_bytes", log.segment_bytes, SEGMENT_BYTES)?;
        c.positive("log.segment_age", log.segment_age)?;
        c.bytes(
            "log.index_interval_bytes",
            log.index_interval_bytes,
            INDEX_INTERVAL_BYTES,
        )?;
        if log.flush == FlushPolicy::Interval && log.flush_interval.is_zero() {
            return Err(c.conflict(
                &["log.flush_interval", "log.flush"],
                "must be more than 0s when log.flush = \"interval\"; \
                 use flush = \"always\" to fsync every append"
                    .into(),
            ));
        }
        let max_message =
            *MESSAGE_BYTES.start()..=broker.max_request_bytes.min(*MESSAGE_BYTES.end());
        if log.max_message_bytes > *max_message.end()
            && provenance.is_set("broker.max_request_bytes")
            && !provenance.is_set("log.max_message_bytes")
        {
            // The request limit was lowered under the batch limit's default: that is the key
            // to name.
            return Err(c.conflict(
                &["broker.max_request_bytes"],
                format!(
                    "{} is less than log.max_message_bytes ({}, its default): a produce \
                     request must hold the largest batch; lower log.max_message_bytes too",
                    format_bytes(broker.max_request_bytes),
                    format_bytes(log.max_message_bytes)
                ),
            ));
        }
        if !max_message.contains(&log.max_message_bytes) {
            return Err(ConfigError::OutOfRange {
                at: provenance.locate_first(&["log.max_message_bytes", "broker.max_request_bytes"]),
                key: "log.max_message_bytes".into(),
                value: format_bytes(log.max_message_bytes),
                allowed: format!("{} (broker.max_request_bytes)", bytes_range(&max_message)),
            });
        }
        c.positive("log.retention_check_interval", log.retention_check_interval)?;
        c.positive(
            "log.compaction_check_interval",
            log.compaction_check_interval,
        )?;
        c.range(
            "log.min_cleanable_dirty_ratio",
            log.min_cleanable_dirty_ratio,
            0.0..=1.0,
        )?;

        let groups = &self.groups;
        c.positive("groups.min_session_timeout", groups.min_session_timeout)?;
        if groups.min_session_timeout > groups.max_session_timeout {
            return Err(c.conflict(
                &["groups.min_session_timeout", "groups.max_session_timeout"],
                format!(
                    "{} is more than groups.max_session_timeout ({})",
                    format_duration(groups.min_session_timeout),
                    format_duration(groups.max_session_timeout)
                ),
            ));
        }
        // Kafka's group.initial.rebalance.delay.ms is an int of milliseconds.
        if groups.initial_rebalance_delay > std::time::Duration::from_millis(i32::MAX as u64) {
            return Err(c.out_of_range(
                "groups.initial_rebalance_delay",
                format_duration(groups.initial_rebalance_delay),
                "at most 2147483647ms (24d)",
            ));
        }
        c.positive("groups.offsets_retention", groups.offsets_retention)?;
        c.positive(
            "groups.consumer_heartbeat_interval",
            groups.consumer_heartbeat_interval,
        )?;
        if groups.consumer_session_timeout > std::time::Duration::from_secs(60 * 60) {
            return Err(c.out_of_range(
                "groups.consumer_session_timeout",
                format_duration(groups.consumer_session_timeout),
                "at most 1h",
            ));
        }
        if groups.consumer_heartbeat_interval >= groups.consumer_session_timeout {
            return Err(c.conflict(
                &[
                    "groups.consumer_heartbeat_interval",
                    "groups.consumer_session_timeout",
                ],
                format!(
                    "{} is not less than groups.consumer_session_timeout ({})",
                    format_duration(groups.consumer_heartbeat_interval),
                    format_duration(groups.consumer_session_timeout)
                ),
            ));
        }
        for (min_key, min, max_key, max) in [
            (
                "groups.consumer_min_session_timeout",
                groups.consumer_min_session_timeout,
                "groups.consumer_max_session_timeout",
                groups.consumer_max_session_timeout,
            ),
            (
                "groups.consumer_min_heartbeat_interval",
                groups.consumer_min_heartbeat_interval,
                "groups.consumer_max_heartbeat_interval",
                groups.consumer_max_heartbeat_interval,
            ),
        ] {
            c.positive(min_key, min)?;
            if min > max {
                return Err(c.conflict(
                    &[min_key, max_key],
                    format!(
                        "{} is more than {max_key} ({})",
                        format_duration(min),
                        format_duration(max)
                    ),
                ));
            }
        }
        for user in &self.acls.super_users {
            if user.strip_prefix("User:").is_none_or(str::is_empty) {
                return Err(c.invalid(
                    "acls.super_users",
                    format!("{user:?} is not a principal; write it as \"User:<name>\""),
                ));
            }
        }

        let cluster = &self.cluster;
        let brokers = cluster
            .parsed_brokers()
            .map_err(|why| c.invalid("cluster.brokers", why))?;
        if !brokers.is_empty() {
            if !brokers.iter().any(|b| b.node_id == self.broker.node_id) {
                return Err(c.conflict(
                    &["cluster.brokers", "broker.node_id"],
                    format!(
                        "this broker (broker.node_id = {}) is not one of them",
                        self.broker.node_id
                    ),
                ));
            }
            if cluster.leader != 0 && !brokers.iter().any(|b| b.node_id == cluster.leader) {
                return Err(c.conflict(
                    &["cluster.leader", "cluster.brokers"],
                    format!("node {} is not one of cluster.brokers", cluster.leader),
                ));
            }
        }
        let replicas = brokers.len().max(1) as i32;
        if !(1..=replicas).contains(&cluster.min_insync_replicas) {
            return Err(c.invalid(
                "cluster.min_insync_replicas",
                format!(
                    "{} is not between 1 and the number of brokers ({replicas})",
                    cluster.min_insync_replicas
                ),
            ));
        }
        if !cluster.sasl_mechanism.is_empty() {
            if !crate::schema::CLUSTER_SASL_MECHANISMS.contains(&cluster.sasl_mechanism.as_str()) {
                return Err(c.invalid(
                    "cluster.sasl_mechanism",
                    format!(
                        "{:?} is not one of \"\", {}",
                        cluster.sasl_mechanism,
                        crate::schema::CLUSTER_SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            if cluster.sasl_username.is_empty() || cluster.sasl_password.is_empty() {
                return Err(c.conflict(
                    &[
                        "cluster.sasl_mechanism",
                        "cluster.sasl_username",
                        "cluster.sasl_password",
                    ],
                    "a SASL login needs cluster.sasl_username and cluster.sasl_password".into(),
                ));
            }
        }
        let tls_brokers = cluster
            .parsed_tls_brokers()
            .map_err(|why| c.invalid("cluster.tls_brokers", why))?;
        if !tls_brokers.is_empty() {
            let ids = |list: &[crate::ClusterBroker]| {
                let mut ids: Vec<i32> = list.iter().map(|b| b.node_id).collect();
                ids.sort_unstable();
                ids
            };
            if ids(&tls_brokers) != ids(&brokers) {
                return Err(c.conflict(
                    &["cluster.tls_brokers", "cluster.brokers"],
                    "must name the same node ids as cluster.brokers, one TLS listener each".into(),
                ));
            }
        }
        if !tls_brokers.is_empty() && !self.listeners.kafka_tls.enabled {
            return Err(c.conflict(
                &["cluster.tls_brokers", "listeners.kafka_tls.enabled"],
                format!(
                    "names this broker's TLS listener (node {}), but listeners.kafka_tls is not \
                     enabled",
                    self.broker.node_id
                ),
            ));
        }
        if cluster.tls {
            if tls_brokers.is_empty() {
                return Err(c.conflict(
                    &["cluster.tls_brokers", "cluster.tls"],
                    "required when cluster.tls = true: every broker's TLS listener, where \
                     followers reach the leader"
                        .into(),
                ));
            }
            if cluster.tls_ca.as_os_str().is_empty() {
                return Err(c.conflict(
                    &["cluster.tls_ca", "cluster.tls"],
                    "required when cluster.tls = true: the CA file the leader's certificate is \
                     checked against"
                        .into(),
                ));
            }
        }
        let (has_cert, has_key) = (
            !cluster.tls_cert.as_os_str().is_empty(),
            !cluster.tls_key.as_os_str().is_empty(),
        );
        if has_cert != has_key {
            return Err(c.conflict(
                &["cluster.tls_cert", "cluster.tls_key"],
                "a follower's certificate needs both cluster.tls_cert and cluster.tls_key".into(),
            ));
        }
        if !cluster.tls_ca.as_os_str().is_empty() && !cluster.tls {
            return Err(c.conflict(
                &["cluster.tls_ca", "cluster.tls"],
                "the leader's certificate is checked only over TLS: set cluster.tls = true".into(),
            ));
        }
        if has_cert && !cluster.tls {
            return Err(c.conflict(
                &["cluster.tls_cert", "cluster.tls"],
                "a follower presents a certificate only over TLS: set cluster.tls = true".into(),
            ));
        }
        c.positive("cluster.replica_lag_time_max", cluster.replica_lag_time_max)?;
        c.positive("cluster.replica_fetch_wait", cluster.replica_fetch_wait)?;

        let plugins = &self.plugins;
        c.positive("plugins.call_timeout", plugins.call_timeout)?;
        c.bytes(
            "plugins.memory_limit",
            plugins.memory_limit,
            crate::plugins::MEMORY_LIMIT,
        )?;
        if let Err((key, message)) = plugins.check() {
            return Err(entry_error(provenance, key, message));
        }
        c.positive("federation.retry_backoff", self.federation.retry_backoff)?;
        if let Err((key, message)) = self.federation.check() {
            return Err(entry_error(provenance, key, message));
        }
        Ok(())
    }

    fn check_listeners(&self, c: &Checker<'_>) -> Result<(), ConfigError> {
        let l = &self.listeners;
        if !(l.kafka.enabled || l.kafka_tls.enabled || l.quic.enabled) {
            return Err(c.conflict(
                &[
                    "listeners.kafka.enabled",
                    "listeners.kafka_tls.enabled",
                    "listeners.quic.enabled",
                ],
                "no client listener is enabled (kafka, kafka_tls or quic): nothing could \
                 produce or consume"
                    .into(),
            ));
        }
        let oauth = &self.oauthbearer;
        for (used, key) in [
            (
                l.kafka.enabled && l.kafka.sasl_oauthbearer,
                "listeners.kafka.sasl_oauthbearer",
            ),
            (
                l.kafka_tls.enabled && l.kafka_tls.sasl_oauthbearer,
                "listeners.kafka_tls.sasl_oauthbearer",
            ),
        ] {
            if used && oauth.jwks_file.as_os_str().is_empty() {
                return Err(c.conflict(
                    &[key, "oauthbearer.jwks_file"],
                    "needs oauthbearer.jwks_file: the identity provider's keys (JWKS) to check \
                     tokens with"
                        .to_string(),
                ));
            }
        }
        if oauth.clock_skew > std::time::Duration::from_secs(24 * 60 * 60) {
            return Err(c.out_of_range(
                "oauthbearer.clock_skew",
                format_duration(oauth.clock_skew),
                "at most 1d",
            ));
        }
        if oauth.principal_claim.trim().is_empty() {
            return Err(c.invalid(
                "oauthbearer.principal_claim",
                "must name a claim (such as \"sub\")".to_string(),
            ));
        }
        if l.kafka_tls.enabled {
            for (name, file) in [("cert", &l.kafka_tls.cert), ("key", &l.kafka_tls.key)] {
                if file.as_os_str().is_empty() {
                    let what = if name == "cert" {
                        "PEM certificate chain"
                    } else {
                        "PEM private key"
                    };
                    let key = format!("listeners.kafka_tls.{name}");
                    return Err(c.conflict(
                        &[&key, "listeners.kafka_tls.enabled"],
                        format!(
                            "required when listeners.kafka_tls.enabled = true: the {what} file"
                        ),
                    ));
                }
            }
        }
        if l.quic.enabled && l.quic.cert.as_os_str().is_empty() != l.quic.key.as_os_str().is_empty()
        {
            let (missing, set) = if l.quic.cert.as_os_str().is_empty() {
                ("listeners.quic.cert", "listeners.quic.key")
            } else {
                ("listeners.quic.key", "listeners.quic.cert")
            };
            return Err(c.conflict(
                &[set, missing],
                format!(
                    "is set but {missing} is not; set both, or neither for a self-signed certificate"
                ),
            ));
        }
        if l.quic.enabled {
            self.check_quic(c)?;
        }
        let tcp = [
            ("listeners.kafka", l.kafka.enabled, l.kafka.address),
            (
                "listeners.kafka_tls",
                l.kafka_tls.enabled,
                l.kafka_tls.address,
            ),
            ("listeners.admin", l.admin.enabled, l.admin.address),
        ];
        let enabled: Vec<_> = tcp.iter().filter(|(_, on, _)| *on).collect();
        for (i, (later, _, addr)) in enabled.iter().enumerate() {
            if let Some((earlier, _, other)) = enabled[..i]
                .iter()
                .find(|(_, _, other)| tcp_clash(*addr, *other))
            {
                let later_key = format!("{later}.address");
                let earlier_key = format!("{earlier}.address");
                return Err(c.conflict(
                    &[&later_key, &earlier_key],
                    format!(
                        "{addr} clashes with {earlier_key} ({other}); \
                         enabled TCP listeners need different ports"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// What every topic starts from: `[log]`, with `min.insync.replicas` from `[cluster]`.
    pub fn topic_defaults(&self) -> crate::LogConfig {
        crate::LogConfig {
            min_insync_replicas: self.cluster.min_insync_replicas,
            ..self.log.clone()
        }
    }

    fn check_quic(&self, c: &Checker<'_>) -> Result<(), ConfigError> {
        let q = &self.listeners.quic;
        if q.idle_timeout < Duration::from_millis(1) || q.idle_timeout > QUIC_IDLE_MAX {
            return Err(c.out_of_range(
                "listeners.quic.idle_timeout",
                format_duration(q.idle_timeout),
                "1ms..=1h",
            ));
        }
        if !(1..=QUIC_MAX_STREAMS).contains(&q.max_streams) {
            return Err(c.out_of_range(
                "listeners.quic.max_streams",
                q.max_streams,
                format!("1..={QUIC_MAX_STREAMS}"),
            ));
        }
        let needed = match q.client_auth {
            QuicClientAuth::None => None,
            QuicClientAuth::Mtls => Some(("listeners.quic.client_ca", &q.client_ca, "mtls")),
            QuicClientAuth::Token => Some(("listeners.quic.token_file", &q.token_file, "token")),
        };
        if let Some((key, file, mode)) = needed
            && file.as_os_str().is_empty()
        {
            return Err(c.conflict(
                &[key, "listeners.quic.client_auth"],
                format!("required when listeners.quic.client_auth = \"{mode}\""),
            ));
        }
        Ok(())
    }
}

/// `listeners.quic.idle_timeout`: longer would keep vanished devices' slots for hours.
const QUIC_IDLE_MAX: Duration = Duration::from_secs(3600);
/// `listeners.quic.max_streams`: each stream is a session task with up to 1 MiB of window.
const QUIC_MAX_STREAMS: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_brokers_are_checked_and_name_the_key_and_line() {
        let c = |toml: &str| Config::from_toml_str(toml, "r.toml", &[]);
        let err = c("[cluster]\nbrokers = [\"1@a:9092\", \"b:9092\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.toml:2: cluster.brokers"), "{err}");
        assert!(err.contains("\"b:9092\" is not"), "{err}");
        let err = c("[cluster]\nbrokers = [\"1@a:9092\", \"1@b:9092\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node id 1 is named twice"), "{err}");
        let err = c("[cluster]\nbrokers = [\"1@127.0.0.1:9092\", \"2@127.0.0.1:9092\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.toml:2: cluster.brokers")
                && err.contains("nodes 1 and 2 have the same address 127.0.0.1:9092"),
            "{err}"
        );
        let err = c("[broker]\nnode_id = 3\n[cluster]\nbrokers = [\"1@a:9092\", \"2@b:9092\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker.node_id = 3"), "{err}");
        let err = c("[cluster]\nbrokers = [\"1@a:9092\", \"2@b:9092\"]\nleader = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.toml:3: cluster.leader"), "{err}");
        let err = c("[cluster]\nbrokers = [\"1@a:9092\", \"2@b:9092\"]\nmin_insync_replicas = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.min_insync_replicas"), "{err}");
        let ok =
            c("[cluster]\nbrokers = [\"2@b:9092\", \"1@[::1]:9092\"]\nmin_insync_replicas = 2\n")
                .unwrap();
        assert_eq!(ok.cluster.leader_id(), Some(1));
        assert_eq!(
            ok.cluster.parsed_brokers().unwrap()[1],
            crate::ClusterBroker {
                node_id: 1,
                address: "[::1]:9092".into()
            }
        );
        assert_eq!(Config::default().cluster.leader_id(), None);
    }

    #[test]
    fn quic_auth_needs_its_file_and_idle_timeout_is_bounded() {
        let mut cfg = Config::default();
        cfg.listeners.quic.client_auth = QuicClientAuth::Mtls;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("listeners.quic.client_ca"), "{err}");
        cfg.listeners.quic.client_ca = "ca.pem".into();
        cfg.validate().unwrap();
        cfg.listeners.quic.client_auth = QuicClientAuth::Token;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("listeners.quic.token_file"), "{err}");
        cfg.listeners.quic.token_file = "tokens".into();
        cfg.validate().unwrap();
        cfg.listeners.quic.idle_timeout = Duration::ZERO;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("listeners.quic.idle_timeout"), "{err}");
        cfg.listeners.quic.idle_timeout = Duration::from_secs(3601);
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn quic_max_streams_is_bounded_and_named_with_its_line() {
        let load = |toml: &str| Config::from_toml_str(toml, "runnel.toml", &[]);
        let at = |toml: &str| load(toml).unwrap_err().to_string();
        let err = at("[listeners.quic]\nmax_streams = 0\n");
        assert!(
            err.contains("runnel.toml:2: listeners.quic.max_streams"),
            "{err}"
        );
        assert!(err.contains("1..=1024"), "{err}");
        assert!(at("[listeners.quic]\nmax_streams = 1025\n").contains("max_streams"));
        let cfg = load("[listeners.quic]\nmax_streams = 64\n").unwrap();
        assert_eq!(cfg.listeners.quic.max_streams, 64);
    }

    #[test]
    fn connection_limit_overrides_name_an_address_and_a_count() {
        let at = |toml: &str| {
            Config::from_toml_str(toml, "r.toml", &[])
                .unwrap_err()
                .to_string()
        };
        let err = at("[broker]\nmax_connections_per_ip_overrides = [\"gateway:5\"]\n");
        assert!(
            err.contains("r.toml:2: broker.max_connections_per_ip_overrides"),
            "{err}"
        );
        assert!(err.contains("\"<ip>:<count>\""), "{err}");
        let err = at(
            "[broker]\nmax_connections_per_ip_overrides = [\"10.0.0.1:1\", \"::ffff:10.0.0.1:2\"]\n",
        );
        assert!(err.contains("10.0.0.1 is named twice"), "{err}");
        let env = [(
            "RUNNEL_BROKER__MAX_CONNECTIONS_PER_IP_OVERRIDES".to_string(),
            "192.0.2.7:200, [::1]:0".to_string(),
        )];
        let c = Config::from_toml_str("[broker]\nmax_connections_per_ip = 50\n", "r.toml", &env)
            .unwrap();
        assert_eq!(c.broker.max_connections_per_ip, 50);
        let parsed = c.broker.parsed_ip_overrides().unwrap();
        assert_eq!(
            parsed,
            [
                ("192.0.2.7".parse().unwrap(), 200),
                ("::1".parse().unwrap(), 0)
            ]
        );
    }

    #[test]
    fn super_users_are_principals_and_come_from_the_environment_as_a_list() {
        let err = Config::from_toml_str("[acls]\nsuper_users = [\"admin\"]\n", "r.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.toml:2: acls.super_users"), "{err}");
        assert!(err.contains("\"User:<name>\""), "{err}");
        let env = [(
            "RUNNEL_ACLS__SUPER_USERS".to_string(),
            "User:admin, User:ops".to_string(),
        )];
        let c = Config::from_toml_str("", "r.toml", &env).unwrap();
        assert_eq!(c.acls.super_users, ["User:admin", "User:ops"]);
        assert!(!c.acls.enabled);
        // Principals whose DNs hold commas are separated by `;`, as in Kafka's super.users.
        let env = [(
            "RUNNEL_ACLS__SUPER_USERS".to_string(),
            "User:CN=admin,OU=eng,O=Acme; User:bob;".to_string(),
        )];
        let c = Config::from_toml_str("", "r.toml", &env).unwrap();
        assert_eq!(
            c.acls.super_users,
            ["User:CN=admin,OU=eng,O=Acme", "User:bob"]
        );
    }

    #[test]
    fn clash_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(tcp_clash(a("127.0.0.1:9092"), a("127.0.0.1:9092")));
        assert!(tcp_clash(a("0.0.0.0:9092"), a("127.0.0.1:9092")));
        assert!(tcp_clash(a("[::]:9092"), a("10.0.0.1:9092")));
        assert!(!tcp_clash(a("127.0.0.1:9092"), a("127.0.0.2:9092")));
        assert!(!tcp_clash(a("127.0.0.1:9092"), a("127.0.0.1:9094")));
        assert!(!tcp_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
