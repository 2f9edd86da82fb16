//! The configuration schema: one serde struct per TOML section.
//!
//! Field names are a contract with users (they are the keys of `runnel.toml` and of the
//! `RUNNEL_*` variables) and with the broker code. Every struct is `#[serde(deny_unknown_fields,
//! default)]`, so a key left out takes the default given by the struct's `Default` impl, and a
//! misspelt key is an error rather than silently ignored. Ranges and contradictions are checked
//! by [`crate::Config::validate`], not here.
//!
//! When a field is added, add it to the key table in `keys.rs` too (its comment in the default
//! file and its kind for env overrides); a test fails until both agree.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{self, GIB, KIB, MIB};

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const DAY: u64 = 24 * 60 * 60;

/// The whole configuration of a `runnel` broker: the parsed `runnel.toml`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[broker]`: identity, data directory and limits of this node.
    pub broker: BrokerConfig,
    /// `[listeners.*]`: the sockets the broker serves on.
    pub listeners: ListenersConfig,
    /// `[log]`: storage defaults for every topic.
    pub log: LogConfig,
    /// `[groups]`: the consumer-group coordinator.
    pub groups: GroupsConfig,
    /// `[acls]`: who may do what (Kafka ACLs), checked on every listener.
    pub acls: AclsConfig,
    /// `[oauthbearer]`: how SASL OAUTHBEARER tokens are checked.
    pub oauthbearer: OAuthBearerConfig,
    /// `[cluster]`: the peer brokers this one replicates with.
    pub cluster: ClusterConfig,
    /// `[plugins]`: WebAssembly plugins and the topics that run them.
    pub plugins: crate::PluginsConfig,
    /// `[federation]`: local topics forwarded to central Kafka clusters.
    pub federation: crate::FederationConfig,
}

/// `[broker]`: identity, data directory and limits of this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// This broker's id in Metadata responses. Default 1.
    pub node_id: i32,
    /// Directory for the segment log, the redb metadata and the generated QUIC certificate.
    /// Default `./runnel-data`, relative to the working directory. Needs room for every
    /// partition's retained segments.
    pub data_dir: PathBuf,
    /// Host name or IP that Metadata responses tell clients to connect to. Default `""`: the
    /// address each listener is bound to, or for a Kafka listener bound to every address
    /// (`0.0.0.0`, `::`) the address the client connected to. Set it when clients reach the
    /// gateway through NAT or by a name.
    pub advertised_host: String,
    /// Create a topic when a client asks for the metadata of one that does not exist (Kafka
    /// clients do before producing; a bare Produce request or a QUIC datagram does not). Default
    /// true. Convenient at the edge, but a typo in a client creates a topic (and its
    /// files) instead of failing.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, or of a CreateTopics request that asks for -1.
    /// Default 1. Each partition costs open segment files and an index in memory.
    pub default_partitions: i32,
    /// Replication factor given to a CreateTopics request that asks for -1 on a broker alone.
    /// Only 1 is allowed. In a `[cluster]` every broker holds every topic, so the factor there
    /// is the number of brokers.
    pub default_replication_factor: i16,
    /// Largest request frame accepted; the size prefix is checked before any allocation.
    /// Default 100MiB. A connection may hold up to this much memory while a request is read.
    #[serde(with = "units::bytes")]
    pub max_request_bytes: u64,
    /// Client connections open at once on each listener; over it, TCP connections wait to be
    /// accepted and QUIC connections are refused (CONNECTION_REFUSED).
    /// Default 10000. Each connection costs a task, buffers and a file descriptor.
    pub max_connections: usize,
    /// Connections open at once from one IP address on the Kafka listeners together (TCP and
    /// TLS), as Kafka's `max.connections.per.ip`; one more is closed as soon as it is accepted.
    /// Default 0: no limit. QUIC devices are not counted (many may share one address behind a
    /// NAT); peer brokers are, so give their addresses room in the overrides.
    pub max_connections_per_ip: usize,
    /// Other limits for some addresses, as Kafka's `max.connections.per.ip.overrides`:
    /// `"<ip>:<count>"` entries such as `"192.0.2.7:200"` (0 refuses the address). Default none.
    pub max_connections_per_ip_overrides: Vec<String>,
    /// Time a new connection has to finish its TLS or QUIC handshake before it is closed, and,
    /// where it must log in (SASL PLAIN, QUIC tokens), to authenticate after that. Default 10s.
    /// Longer tolerates slow links; shorter frees slots held by idle or hostile peers sooner.
    #[serde(with = "units::duration")]
    pub handshake_timeout: Duration,
    /// A Kafka connection (TCP or TLS) that has moved no byte either way for this long is
    /// closed, as Kafka's `connections.max.idle.ms` does. Default 10m. Clients reconnect when they next
    /// need the broker; silent or stalled peers stop holding `max_connections` slots. QUIC
    /// connections have their own `listeners.quic.idle_timeout`.
    #[serde(with = "units::duration")]
    pub connections_max_idle: Duration,
    /// The longest a SASL login on a Kafka listener lasts before the client must log in again
    /// on the same connection (KIP-368, Kafka's `connections.max.reauth.ms`); an OAUTHBEARER
    /// login lasts no longer than its token. A connection that does not log in again in time is
    /// closed at its next request, so a removed user or an expired token loses its connections
    /// within this time. Default 0: PLAIN and SCRAM logins last as long as their connection, as
    /// in Kafka (OAUTHBEARER ones end with their token whatever this is).
    #[serde(with = "units::duration")]
    pub connections_max_reauth: Duration,
    /// Consumers' incremental fetch sessions (KIP-227) kept at once, as Kafka's
    /// `max.incremental.fetch.session.cache.slots`: a consumer in a session sends and gets only
    /// the partitions that changed. Default 1000; 0 keeps none (every fetch is then a full one,
    /// which all clients handle). Each costs about 150 bytes per partition it fetches.
    pub max_fetch_sessions: usize,
    /// The most record bytes one Fetch answer carries, whatever the consumer asks for, as
    /// Kafka's `fetch.max.bytes` (55MiB there and here). An answer is built in memory before
    /// it is sent, so this bounds what one consumer's fetch costs; a consumer given less asks
    /// again (a first batch larger than this is still sent whole, as in Kafka).
    #[serde(with = "units::bytes")]
    pub fetch_max_bytes: u64,
    /// The memory all consumers' Fetch answers may hold at once, from when they are read from
    /// the log until their last byte is written to the client. Default 256MiB. A consumer's
    /// answer takes what is left when that is less than it asks for, and with nothing left
    /// still gets its first batch whole, so every consumer keeps making progress while the
    /// answers held by slow or stalled clients are written. Replica fetches are not counted.
    #[serde(with = "units::bytes")]
    pub fetch_memory_bytes: u64,
    /// The memory requests larger than 1 MiB may hold at once while they are read and handled,
    /// as Kafka's `queued.max.request.bytes`: such a request takes its size before the rest of
    /// it is read, and waits while the others hold too much (its connection is not read
    /// meanwhile). Default 512MiB. A request larger than this (under a larger
    /// `max_request_bytes`) is read once no other is held. Without a bound, a dozen clients
    /// each sending most of a 100 MiB request would hold over a gigabyte. Smaller requests
    /// never wait.
    #[serde(with = "units::bytes")]
    pub queued_max_request_bytes: u64,
}

impl BrokerConfig {
    /// `max_connections_per_ip_overrides`, parsed: each address (canonical: an IPv4-mapped IPv6
    /// address is its IPv4 one) and its limit; the error names the entry and what is wrong.
    pub fn parsed_ip_overrides(&self) -> Result<Vec<(std::net::IpAddr, usize)>, String> {
        let mut out = Vec::with_capacity(self.max_connections_per_ip_overrides.len());
        for entry in &self.max_connections_per_ip_overrides {
            let shape = || format!("{entry:?} is not \"<ip>:<count>\", such as \"192.0.2.7:200\"");
            let (ip, count) = entry.trim().rsplit_once(':').ok_or_else(shape)?;
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = ip.parse().map_err(|_| shape())?;
            let count: usize = count.trim().parse().map_err(|_| shape())?;
            let ip = ip.to_canonical();
            if out.iter().any(|(seen, _)| *seen == ip) {
                return Err(format!("{ip} is named twice"));
            }
            out.push((ip, count));
        }
        Ok(out)
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            data_dir: PathBuf::from("./runnel-data"),
            advertised_host: String::new(),
            auto_create_topics: true,
            default_partitions: 1,
            default_replication_factor: 1,
            max_request_bytes: 100 * MIB,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_connections_per_ip_overrides: Vec::new(),
            handshake_timeout: secs(10),
            connections_max_idle: secs(600),
            connections_max_reauth: Duration::ZERO,
            max_fetch_sessions: 1000,
            fetch_max_bytes: 55 * MIB,
            fetch_memory_bytes: 256 * MIB,
            queued_max_request_bytes: 512 * MIB,
        }
    }
}

/// `[listeners]`: one table per transport.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// `[listeners.kafka]`: Kafka protocol over plaintext TCP.
    pub kafka: KafkaListener,
    /// `[listeners.kafka_tls]`: Kafka protocol over TLS.
    pub kafka_tls: TlsListener,
    /// `[listeners.quic]`: the device protocol over QUIC (UDP).
    pub quic: QuicListener,
    /// `[listeners.admin]`: HTTP for metrics and health.
    pub admin: AdminListener,
}

/// `[listeners.kafka]`: Kafka protocol over plaintext TCP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaListener {
    /// Serve Kafka clients without TLS. Default true. Traffic is readable by anyone on the path:
    /// keep it on loopback or a trusted network.
    pub enabled: bool,
    /// TCP address to bind. Default `127.0.0.1:9092` (this machine only); `0.0.0.0:9092` for all
    /// interfaces; port 0 picks a free port.
    #[serde(deserialize_with = "units::socket_addr::deserialize")]
    pub address: SocketAddr,
    /// Default `""`: no authentication, every client is `User:ANONYMOUS`. When set, a file of
    /// `<user> <secret>` lines (`#` comments): clients must authenticate with SASL PLAIN,
    /// SCRAM-SHA-256 or SCRAM-SHA-512 first (librdkafka: `security.protocol=SASL_PLAINTEXT`,
    /// `sasl.mechanism=SCRAM-SHA-256`) and are `User:<user>`. Read at start-up and again when it
    /// changes. PLAIN sends the secret in the clear here: use SCRAM, or the TLS listener, off a
    /// trusted network.
    pub sasl_plain_file: PathBuf,
    /// Take SASL OAUTHBEARER logins: JSON Web Tokens of the identity provider `[oauthbearer]`
    /// names (librdkafka: `sasl.mechanism=OAUTHBEARER`), the client being `User:<sub>`.
    /// Default false. With it, clients must authenticate (with this or with the users of
    /// `sasl_plain_file`).
    pub sasl_oauthbearer: bool,
}

impl Default for KafkaListener {
    fn default() -> Self {
        KafkaListener {
            enabled: true,
            address: loopback(9092),
            sasl_plain_file: PathBuf::new(),
            sasl_oauthbearer: false,
        }
    }
}

/// `[listeners.kafka_tls]`: Kafka protocol over TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListener {
    /// Serve Kafka clients over TLS. Default false. Costs a handshake per connection and
    /// encryption on every byte.
    pub enabled: bool,
    /// TCP address to bind. Default `127.0.0.1:9096`.
    #[serde(deserialize_with = "units::socket_addr::deserialize")]
    pub address: SocketAddr,
    /// PEM certificate chain presented to clients, leaf first. Required when enabled.
    pub cert: PathBuf,
    /// PEM private key of the certificate. Required when enabled; keep it readable by the
    /// broker's user only.
    pub key: PathBuf,
    /// PEM CA certificate(s). Default `""`: clients are not asked for a certificate. When set,
    /// every client must present a certificate signed by this CA, and its subject becomes the
    /// client's principal. Client certificates must be X.509 version 3: version 1 ones (which
    /// Kafka's Java TLS takes) are refused, with a WARN that says so.
    pub client_ca: PathBuf,
    /// With `client_ca`: whether a client must present a certificate (Kafka's
    /// `ssl.client.auth`). Default `required`; `requested`: a client without one is served as
    /// `User:ANONYMOUS` (or its SASL user), one with one must present a valid one.
    pub client_auth: TlsClientAuth,
    /// With `client_ca`: the principal of a client certificate. Default `cn`: `User:<CN>`;
    /// `dn`: `User:<subject DN>`, as Kafka names it (`User:CN=alice,OU=eng,O=Acme`).
    pub client_principal: CertPrincipal,
    /// With `client_ca`: Kafka's `ssl.principal.mapping.rules`, one rule per item, tried in
    /// order on the certificate's subject DN (as `dn` writes it): `RULE:pattern/replacement/`
    /// (then `L` or `U` to lower or upper the name) or `DEFAULT` (the DN). The first whose
    /// pattern matches the whole DN names the client; a DN no rule matches is refused. Default
    /// none: `client_principal` decides. E.g. `["RULE:^CN=(.*?),OU=devices.*$/$1/L", "DEFAULT"]`.
    pub client_principal_rules: Vec<String>,
    /// Default `""`. When set, clients must authenticate with SASL PLAIN, SCRAM-SHA-256 or
    /// SCRAM-SHA-512 against this file of `<user> <secret>` lines (librdkafka:
    /// `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-256`) and are `User:<user>`,
    /// whatever certificate they present. Read at start-up and again when it changes.
    pub sasl_plain_file: PathBuf,
    /// Take SASL OAUTHBEARER logins (`[oauthbearer]`; librdkafka: `security.protocol=SASL_SSL`,
    /// `sasl.mechanism=OAUTHBEARER`), the client being `User:<sub>`. Default false.
    pub sasl_oauthbearer: bool,
}

impl Default for TlsListener {
    fn default() -> Self {
        TlsListener {
            enabled: false,
            address: loopback(9096),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            client_auth: TlsClientAuth::Required,
            client_principal: CertPrincipal::Cn,
            client_principal_rules: Vec::new(),
            sasl_plain_file: PathBuf::new(),
            sasl_oauthbearer: false,
        }
    }
}

/// `[listeners.quic]`: the device protocol over QUIC (UDP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicListener {
    /// Serve devices over QUIC. Default true. QUIC is always encrypted.
    pub enabled: bool,
    /// UDP address to bind. Default `127.0.0.1:9093`. UDP may share a port number with the TCP
    /// listeners.
    #[serde(deserialize_with = "units::socket_addr::deserialize")]
    pub address: SocketAddr,
    /// PEM certificate chain. Default `""`: a self-signed certificate is generated in `data_dir`
    /// on first start and its fingerprint printed; devices must pin that fingerprint.
    pub cert: PathBuf,
    /// PEM private key of `cert`. Set both `cert` and `key`, or neither.
    pub key: PathBuf,
    /// A connection with no packets for this long is closed (the QUIC idle timeout; the lower of
    /// the broker's and the device's value applies). Default 30s. Devices that stay connected
    /// while quiet send keep-alives more often than this (the device SDK every 10s by default:
    /// set its `keep_alive` under a third of a shorter timeout); shorter
    /// frees the slots of vanished devices sooner.
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    /// Kafka sessions (bidirectional streams) one connection may have open at once: a device's
    /// producing session plus one per subscription. Default 16. A device that opens more waits
    /// until one closes. Each open stream may hold up to 1 MiB of unread requests, within the
    /// connection's 4 MiB.
    pub max_streams: u32,
    /// How devices prove who they are. Default `none`: every device is `User:ANONYMOUS`, which
    /// suits a listener on loopback or a closed network. See [`QuicClientAuth`].
    pub client_auth: QuicClientAuth,
    /// PEM CA certificate(s) that sign device certificates. Required with `client_auth = "mtls"`;
    /// a device's principal is `User:<CN of its certificate>` (see `client_principal`).
    pub client_ca: PathBuf,
    /// With `client_auth = "mtls"`: the principal of a device certificate. Default `cn`:
    /// `User:<CN>`; `dn`: `User:<subject DN>`, as Kafka names it.
    pub client_principal: CertPrincipal,
    /// Text file of device tokens, one `<device-name> <token>` per line (`#` starts a comment).
    /// Required with `client_auth = "token"`; a device presenting a token is `User:<device-name>`.
    /// Read at start-up and again when it changes; keep it readable by the broker's user only.
    pub token_file: PathBuf,
}

impl Default for QuicListener {
    fn default() -> Self {
        QuicListener {
            enabled: true,
            address: loopback(9093),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            idle_timeout: secs(30),
            max_streams: 16,
            client_auth: QuicClientAuth::None,
            client_ca: PathBuf::new(),
            client_principal: CertPrincipal::Cn,
            token_file: PathBuf::new(),
        }
    }
}

/// `[listeners.admin]`: HTTP for Prometheus metrics and health checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminListener {
    /// Serve the admin HTTP endpoints. Default true. They are unauthenticated: do not expose
    /// them beyond a trusted network.
    pub enabled: bool,
    /// TCP address to bind. Default `127.0.0.1:9094`.
    #[serde(deserialize_with = "units::socket_addr::deserialize")]
    pub address: SocketAddr,
}

impl Default for AdminListener {
    fn default() -> Self {
        AdminListener {
            enabled: true,
            address: loopback(9094),
        }
    }
}

/// `[log]`: storage defaults for every topic. A topic may override each of them with Kafka's
/// config name (see [`LogConfig::apply_topic_override`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Size at which the active segment is closed and a new one started (`segment.bytes`).
    /// Default 1GiB. Retention deletes whole segments, so smaller segments free space sooner but
    /// cost more files and indexes.
    #[serde(with = "units::bytes")]
    pub segment_bytes: u64,
    /// Age at which the active segment is rolled even if not full (`segment.ms`). Default 7d.
    /// Bounds how long a quiet topic keeps data past its retention.
    #[serde(with = "units::duration")]
    pub segment_age: Duration,
    /// How long records are kept (`retention.ms`). Default 7d; `None` ("forever") keeps them
    /// until `retention_bytes` or the disk runs out.
    #[serde(with = "units::opt_duration")]
    pub retention: Option<Duration>,
    /// Bytes kept per partition before the oldest segments are deleted (`retention.bytes`).
    /// Default `None` ("unlimited"). On a small disk this is the knob that prevents filling it.
    #[serde(with = "units::opt_bytes")]
    pub retention_bytes: Option<u64>,
    /// Bytes appended between two offset-index entries (`index.interval.bytes`). Default 4KiB.
    /// Smaller makes fetch lookups land closer at the cost of larger indexes.
    #[serde(with = "units::bytes")]
    pub index_interval_bytes: u64,
    /// When appends are fsynced. Default `interval`. See [`FlushPolicy`] for the trade-off.
    pub flush: FlushPolicy,
    /// Time between fsyncs when `flush = "interval"` (`flush.ms`). Default 1s: a power cut can
    /// lose up to this much acknowledged data.
    #[serde(with = "units::duration")]
    pub flush_interval: Duration,
    /// What happens to old data (`cleanup.policy`). Default `delete`.
    pub cleanup_policy: CleanupPolicy,
    /// Which timestamp records carry (`message.timestamp.type`). Default `CreateTime`.
    pub timestamp_type: TimestampType,
    /// Largest record batch accepted (`max.message.bytes`). Default 1048588, Kafka's default.
    /// Larger batches are rejected with MESSAGE_TOO_LARGE; consumers need fetch buffers at least
    /// this big. A compressed batch whose records inflate past 16 times this is refused with
    /// INVALID_RECORD.
    #[serde(with = "units::bytes")]
    pub max_message_bytes: u64,
    /// How long tombstones (null-value records) survive compaction so consumers see deletes
    /// (`delete.retention.ms`). Default 1d.
    #[serde(with = "units::duration")]
    pub delete_retention: Duration,
    /// How much of a compacted partition's sealed data must be new since its last cleaning before
    /// compaction runs again (`min.cleanable.dirty.ratio`; 64 new segments also start a pass,
    /// to merge small ones), 0.0..=1.0. Default 0.5, Kafka's: a
    /// pass rewrites what it cleans, so cleaning whenever a segment is sealed (0.0) writes the
    /// log again each time, several times the ingest (flash wears), for a smaller disk.
    pub min_cleanable_dirty_ratio: f64,
    /// How far in the past a record's own timestamp may be, for CreateTime topics
    /// (`message.timestamp.before.max.ms`): a batch with an older record is refused with
    /// INVALID_TIMESTAMP. Default `None` ("forever"), no bound.
    #[serde(with = "units::opt_duration")]
    pub timestamp_before_max: Option<Duration>,
    /// How far in the future a record's own timestamp may be, for CreateTime topics
    /// (`message.timestamp.after.max.ms`). A device whose clock runs ahead writes records that
    /// time-based retention keeps until that future has passed; a bound refuses them instead
    /// (INVALID_TIMESTAMP), which loses the reading unless the producer fixes its clock.
    /// Default `None` ("forever"), no bound.
    #[serde(with = "units::opt_duration")]
    pub timestamp_after_max: Option<Duration>,
    /// How often retention looks for segments to delete
    /// (`log.retention.check.interval.ms`). Default 5m, Kafka's. Shorter frees space sooner.
    /// Compaction looks at least this often too.
    #[serde(with = "units::duration")]
    pub retention_check_interval: Duration,
    /// How often compaction looks for compacted partitions to clean (Kafka's cleaner backoff,
    /// `log.cleaner.backoff.ms`). Default 15s, Kafka's. A look costs a walk over each
    /// partition's segment list in memory; a pass runs only when a partition is dirty enough
    /// (`min_cleanable_dirty_ratio`) or a delete is due.
    #[serde(with = "units::duration")]
    pub compaction_check_interval: Duration,
    /// Least number of in-sync brokers for a write with acks=all (`min.insync.replicas`). Not
    /// a `[log]` key: the broker-wide default is `cluster.min_insync_replicas`
    /// ([`crate::Config::topic_defaults`]); a topic may override it.
    #[serde(skip)]
    pub min_insync_replicas: i32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: GIB,
            segment_age: secs(7 * DAY),
            retention: Some(secs(7 * DAY)),
            retention_bytes: None,
            index_interval_bytes: 4 * KIB,
            flush: FlushPolicy::Interval,
            flush_interval: secs(1),
            cleanup_policy: CleanupPolicy::Delete,
            timestamp_type: TimestampType::CreateTime,
            max_message_bytes: 1_048_588,
            delete_retention: secs(DAY),
            min_cleanable_dirty_ratio: 0.5,
            timestamp_before_max: None,
            timestamp_after_max: None,
            retention_check_interval: secs(5 * 60),
            compaction_check_interval: secs(15),
            min_insync_replicas: 1,
        }
    }
}

/// `[groups]`: the consumer-group coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Smallest session timeout a consumer may ask for (`group.min.session.timeout.ms`).
    /// Default 6s. Lower lets consumers detect failures faster at the cost of more heartbeats.
    #[serde(with = "units::duration")]
    pub min_session_timeout: Duration,
    /// Largest session timeout a consumer may ask for (`group.max.session.timeout.ms`).
    /// Default 30m. Higher lets slow consumers stay in their group, but a dead one holds its
    /// partitions that long.
    #[serde(with = "units::duration")]
    pub max_session_timeout: Duration,
    /// Wait before the first rebalance of a new group, so members joining together get one
    /// rebalance (`group.initial.rebalance.delay.ms`). Default 0s, which suits a single edge node.
    #[serde(with = "units::duration")]
    pub initial_rebalance_delay: Duration,
    /// How long committed offsets of an empty group are kept (`offsets.retention.minutes`),
    /// and, in a live group, those of topics no member subscribes to any more after their last
    /// commit (KIP-496; looked at once a minute). Default 7d.
    #[serde(with = "units::duration")]
    pub offsets_retention: Duration,
    /// Consumers of the consumer group protocol (KIP-848, `group.protocol=consumer`) that have
    /// not heartbeated for this long leave their group (`group.consumer.session.timeout.ms`).
    /// Default 45s.
    #[serde(with = "units::duration")]
    pub consumer_session_timeout: Duration,
    /// How often consumers of the consumer group protocol are told to heartbeat
    /// (`group.consumer.heartbeat.interval.ms`); a partition given up by one consumer reaches
    /// the next within about this long. Default 5s; less than consumer_session_timeout.
    #[serde(with = "units::duration")]
    pub consumer_heartbeat_interval: Duration,
    /// The shortest `consumer.session.timeout.ms` a group's own config may set
    /// (`group.consumer.min.session.timeout.ms`). Default 45s; consumer_session_timeout is
    /// allowed whatever this says.
    #[serde(with = "units::duration")]
    pub consumer_min_session_timeout: Duration,
    /// The longest `consumer.session.timeout.ms` a group's own config may set
    /// (`group.consumer.max.session.timeout.ms`). Default 60s; consumer_session_timeout is
    /// allowed whatever this says.
    #[serde(with = "units::duration")]
    pub consumer_max_session_timeout: Duration,
    /// The shortest `consumer.heartbeat.interval.ms` a group's own config may set
    /// (`group.consumer.min.heartbeat.interval.ms`). Default 5s; consumer_heartbeat_interval
    /// is allowed whatever this says.
    #[serde(with = "units::duration")]
    pub consumer_min_heartbeat_interval: Duration,
    /// The longest `consumer.heartbeat.interval.ms` a group's own config may set
    /// (`group.consumer.max.heartbeat.interval.ms`). Default 15s; consumer_heartbeat_interval
    /// is allowed whatever this says.
    #[serde(with = "units::duration")]
    pub consumer_max_heartbeat_interval: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            min_session_timeout: secs(6),
            max_session_timeout: secs(30 * 60),
            initial_rebalance_delay: Duration::ZERO,
            offsets_retention: secs(7 * DAY),
            consumer_session_timeout: secs(45),
            consumer_heartbeat_interval: secs(5),
            consumer_min_session_timeout: secs(45),
            consumer_max_session_timeout: secs(60),
            consumer_min_heartbeat_interval: secs(5),
            consumer_max_heartbeat_interval: secs(15),
        }
    }
}

/// `[oauthbearer]`: SASL OAUTHBEARER (KIP-255, KIP-768), for the listeners with
/// `sasl_oauthbearer = true`: a client logs in with a JSON Web Token its identity provider
/// (Keycloak, Entra ID, Okta, ...) signed, checked as Kafka's JWKS validator checks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthBearerConfig {
    /// The identity provider's public signing keys, a JWKS document (`{"keys": [...]}`, what its
    /// `jwks_uri` serves) saved to a file; read at start-up and again when it changes, so keys
    /// rotate without a restart (Kafka's `sasl.oauthbearer.jwks.endpoint.url` with a `file:`
    /// URL). Required by `sasl_oauthbearer`.
    pub jwks_file: PathBuf,
    /// The `iss` a token must carry (`sasl.oauthbearer.expected.issuer`). Default `""`: any.
    pub expected_issuer: String,
    /// A token's `aud` must name one of these (`sasl.oauthbearer.expected.audience`). Default
    /// none: any.
    pub expected_audience: Vec<String>,
    /// The claim whose value names the principal, `User:<value>`
    /// (`sasl.oauthbearer.sub.claim.name`). Default `sub`.
    pub principal_claim: String,
    /// How far apart the broker's and the provider's clocks may be when expiry and not-before
    /// times are checked (`sasl.oauthbearer.clock.skew.seconds`). Default 30s.
    #[serde(with = "units::duration")]
    pub clock_skew: Duration,
}

impl Default for OAuthBearerConfig {
    fn default() -> Self {
        OAuthBearerConfig {
            jwks_file: PathBuf::new(),
            expected_issuer: String::new(),
            expected_audience: Vec::new(),
            principal_claim: "sub".to_string(),
            clock_skew: secs(30),
        }
    }
}

/// `[acls]`: authorization by Kafka ACLs.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclsConfig {
    /// Check every request against the ACLs (Kafka's `authorizer.class.name`). Default false:
    /// every principal may do everything. ACLs are managed with `runnel acls`, `kafka-acls.sh`
    /// or an admin client (Kafka's CreateAcls, DescribeAcls and DeleteAcls) and kept in the
    /// metadata database.
    pub enabled: bool,
    /// Principals allowed everything whatever the ACLs say (Kafka's `super.users`), such as
    /// `["User:admin"]`. Default none. With none, only ACLs can let anyone manage ACLs. From
    /// the environment, separate them with `;` when a DN holds commas
    /// (`RUNNEL_ACLS__SUPER_USERS="User:CN=admin,O=Acme;User:bob"`).
    pub super_users: Vec<String>,
    /// Allow an operation on a resource that no ACL names at all (Kafka's
    /// `allow.everyone.if.no.acl.found`). Default false: what no ACL allows is refused.
    pub allow_if_no_acl: bool,
}

/// `[cluster]`: brokers that hold copies of each other's topics.
///
/// One broker of the cluster, the leader, takes every write and serves every consumer; the
/// others follow it: they copy its topics, configs and record batches (the same offsets, the
/// same bytes) as Kafka's followers do, so that a write acknowledged with acks=all is on every
/// in-sync broker's disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Every broker of the cluster, this one included, as `"<node_id>@<host>:<port>"`: the
    /// address of its plaintext Kafka listener as peers and clients reach it. Default none: a
    /// broker alone.
    pub brokers: Vec<String>,
    /// Node id of the broker that takes writes. Default 0: the lowest id in `brokers`. To move
    /// the lead to another broker, change it on every broker and restart them.
    pub leader: i32,
    /// Least number of in-sync brokers (the leader included) for a write with acks=all to be
    /// taken (Kafka's `min.insync.replicas`). Default 1. With fewer, such writes are refused
    /// with NOT_ENOUGH_REPLICAS and nothing is written.
    pub min_insync_replicas: i32,
    /// A follower that has not caught up with the leader's log end for this long leaves the
    /// in-sync set (Kafka's `replica.lag.time.max.ms`). Default 30s.
    #[serde(with = "units::duration")]
    pub replica_lag_time_max: Duration,
    /// Longest a follower's fetch waits at the leader for new records (Kafka's
    /// `replica.fetch.wait.max.ms`). Default 500ms.
    #[serde(with = "units::duration")]
    pub replica_fetch_wait: Duration,
    /// How a follower logs in to the leader's plaintext listener when that listener asks for
    /// SASL (`sasl_plain_file`): `"SCRAM-SHA-512"`, `"SCRAM-SHA-256"` or `"PLAIN"`. Default `""`:
    /// no login. The follower is then `User:<sasl_username>` to the leader's ACLs.
    pub sasl_mechanism: String,
    /// The user a follower logs in as. Default `""`.
    pub sasl_username: String,
    /// That user's password. Default `""`. Readable by whoever reads this file: keep it 0600.
    pub sasl_password: String,
    /// Every broker's TLS Kafka listener (`[listeners.kafka_tls]`), as `"<node_id>@<host>:<port>"`
    /// with the node ids of `brokers`. Default none. When given, Metadata and FindCoordinator on
    /// a TLS listener name these addresses, so that a TLS client sent to another broker reaches
    /// its TLS listener; without them it is sent to the plaintext one.
    pub tls_brokers: Vec<String>,
    /// Followers reach the leader over TLS, at its `tls_brokers` address, checking its
    /// certificate against `tls_ca` (Kafka's `security.inter.broker.protocol=SSL`). Default
    /// false: plaintext, to its `brokers` address.
    pub tls: bool,
    /// PEM CA certificate(s) the leader's TLS certificate must be signed by. Required with `tls`.
    /// The leader's certificate must name the host of its `tls_brokers` address.
    pub tls_ca: PathBuf,
    /// PEM certificate chain a follower presents to the leader, for a leader whose TLS listener
    /// asks for one (`client_ca`); it is then `User:<CN>` to the leader's ACLs unless it also
    /// logs in with SASL. Default `""`: none.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`. Keep it readable by the broker's user only.
    pub tls_key: PathBuf,
}

/// The SASL mechanisms a follower can log in to its leader with.
pub const CLUSTER_SASL_MECHANISMS: &[&str] = &["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            brokers: Vec::new(),
            leader: 0,
            min_insync_replicas: 1,
            replica_lag_time_max: secs(30),
            replica_fetch_wait: Duration::from_millis(500),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            tls_brokers: Vec::new(),
            tls: false,
            tls_ca: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

/// One entry of `cluster.brokers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterBroker {
    pub node_id: i32,
    /// `host:port` as written.
    pub address: String,
}

impl ClusterConfig {
    /// The entries of `brokers`, parsed; the error names the entry and what is wrong.
    pub fn parsed_brokers(&self) -> Result<Vec<ClusterBroker>, String> {
        parse_brokers(&self.brokers)
    }

    /// The entries of `tls_brokers`, parsed as [`ClusterConfig::parsed_brokers`] does.
    pub fn parsed_tls_brokers(&self) -> Result<Vec<ClusterBroker>, String> {
        parse_brokers(&self.tls_brokers)
    }

    /// The leader's node id: `leader`, or the lowest id of `brokers` when it is 0. `None`
    /// without brokers.
    pub fn leader_id(&self) -> Option<i32> {
        let brokers = self.parsed_brokers().ok()?;
        if self.leader != 0 {
            return Some(self.leader);
        }
        brokers.iter().map(|b| b.node_id).min()
    }
}

/// `"<node_id>@<host>:<port>"` entries, parsed; the error names the entry and what is wrong.
fn parse_brokers(entries: &[String]) -> Result<Vec<ClusterBroker>, String> {
    let mut out: Vec<ClusterBroker> = Vec::with_capacity(entries.len());
    for entry in entries {
        let shape = || format!("{entry:?} is not \"<node_id>@<host>:<port>\"");
        let (id, address) = entry.split_once('@').ok_or_else(shape)?;
        let node_id: i32 = id.trim().parse().map_err(|_| shape())?;
        if !(0..=65_535).contains(&node_id) {
            return Err(format!("{entry:?}: a node id in a cluster is 0..=65535"));
        }
        let (host, port) = address.rsplit_once(':').ok_or_else(shape)?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(shape());
        }
        if out.iter().any(|b| b.node_id == node_id) {
            return Err(format!("node id {node_id} is named twice"));
        }
        if let Some(other) = out.iter().find(|b| b.address.eq_ignore_ascii_case(address)) {
            return Err(format!(
                "nodes {} and {node_id} have the same address {address}: each broker needs \
                 its own listener",
                other.node_id
            ));
        }
        out.push(ClusterBroker {
            node_id,
            address: address.to_string(),
        });
    }
    Ok(out)
}

/// A string value that is not one of an enum's spellings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {value:?}; allowed: {}", allowed.join(", "))]
pub struct UnknownValue {
    /// What was written.
    pub value: String,
    /// The accepted spellings.
    pub allowed: &'static [&'static str],
}

/// Implements `as_str`, `Display`, `FromStr` and serde for an enum written as fixed strings.
/// The first spelling of each variant is canonical; later ones are accepted aliases.
macro_rules! string_enum {
    ($ty:ident { $($variant:ident => [$canonical:literal $(, $alias:literal)*]),+ $(,)? }) => {
        impl $ty {
            /// The accepted spellings, canonical ones only.
            pub const ALLOWED: &'static [&'static str] = &[$($canonical),+];

            /// The canonical spelling, as written in config files and Kafka configs.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($ty::$variant => $canonical),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($canonical $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err(UnknownValue { value: s.to_owned(), allowed: Self::ALLOWED }),
                }
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Choice;

                impl serde::de::Visitor<'_> for Choice {
                    type Value = $ty;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        write!(f, "one of {}", $ty::ALLOWED.join(", "))
                    }

                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }

                d.deserialize_str(Choice)
            }
        }
    };
}

/// When appended data is forced to disk with fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FlushPolicy {
    /// Never fsync; the OS page cache writes data back when it likes. Fastest; a power cut (not
    /// a broker crash) can lose recent acknowledged data.
    Never,
    /// Fsync every `flush_interval`. A power cut loses at most that much acknowledged data.
    #[default]
    Interval,
    /// Fsync before acknowledging every append. Nothing acknowledged is lost, at the cost of a
    /// disk flush per produce request (slow on SD cards and eMMC).
    Always,
}

string_enum!(FlushPolicy {
    Never => ["never"],
    Interval => ["interval"],
    Always => ["always"],
});

/// What happens to data older than the retention limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CleanupPolicy {
    /// Delete whole segments past `retention` or `retention_bytes`.
    #[default]
    Delete,
    /// Keep only the latest record per key (and tombstones for `delete_retention`).
    Compact,
    /// Compact, and also delete segments past the retention limits.
    CompactDelete,
}

string_enum!(CleanupPolicy {
    Delete => ["delete"],
    Compact => ["compact"],
    CompactDelete => ["compact,delete", "delete,compact", "compact, delete", "delete, compact"],
});

impl CleanupPolicy {
    /// Whether old records are compacted by key.
    pub fn compact(&self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// Whether old segments are deleted by retention.
    pub fn delete(&self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
}

/// Which timestamp a record batch carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TimestampType {
    /// The producer's timestamp, stored as sent.
    #[default]
    CreateTime,
    /// The broker's clock at append; the broker rewrites the batch header (and its CRC).
    LogAppendTime,
}

string_enum!(TimestampType {
    CreateTime => ["CreateTime"],
    LogAppendTime => ["LogAppendTime"],
});

/// Whether the TLS listener requires a client certificate (`client_auth`, Kafka's
/// `ssl.client.auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TlsClientAuth {
    /// Every client presents a certificate signed by `client_ca`.
    #[default]
    Required,
    /// A client may present one (then checked) or none.
    Requested,
}

string_enum!(TlsClientAuth {
    Required => ["required"],
    Requested => ["requested"],
});

/// What a verified client certificate's principal is made of (`client_principal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CertPrincipal {
    /// `User:<CN>`: the subject's common name.
    #[default]
    Cn,
    /// `User:<DN>`: the whole subject as Kafka writes it by default (RFC 2253, most specific
    /// first: `User:CN=sensor-7,OU=plant-2,O=Acme`), so that ACLs written for Kafka apply.
    Dn,
}

string_enum!(CertPrincipal {
    Cn => ["cn"],
    Dn => ["dn"],
});

/// How QUIC devices authenticate (`listeners.quic.client_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum QuicClientAuth {
    /// No authentication: every device is `User:ANONYMOUS`.
    #[default]
    None,
    /// Mutual TLS: a device must present a certificate signed by `client_ca`, or its handshake
    /// fails with a TLS alert.
    Mtls,
    /// A token, presented with Kafka SASL PLAIN (the device name as user name, the token as
    /// password) on the connection's first stream before any other request.
    Token,
}

string_enum!(QuicClientAuth {
    None => ["none"],
    Mtls => ["mtls"],
    Token => ["token"],
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_their_spellings() {
        assert_eq!("never".parse(), Ok(FlushPolicy::Never));
        assert_eq!("always".parse(), Ok(FlushPolicy::Always));
        assert_eq!("delete,compact".parse(), Ok(CleanupPolicy::CompactDelete));
        assert_eq!("compact, delete".parse(), Ok(CleanupPolicy::CompactDelete));
        assert_eq!("LogAppendTime".parse(), Ok(TimestampType::LogAppendTime));
        assert_eq!(
            "sometimes".parse::<FlushPolicy>().unwrap_err().to_string(),
            r#"unknown value "sometimes"; allowed: never, interval, always"#
        );
        assert_eq!(CleanupPolicy::CompactDelete.as_str(), "compact,delete");
    }

    #[test]
    fn cleanup_policy_flags() {
        assert!(CleanupPolicy::Delete.delete() && !CleanupPolicy::Delete.compact());
        assert!(CleanupPolicy::Compact.compact() && !CleanupPolicy::Compact.delete());
        assert!(CleanupPolicy::CompactDelete.compact() && CleanupPolicy::CompactDelete.delete());
    }
}
