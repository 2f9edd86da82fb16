//! Admin HTTP (`[listeners.admin]`, default 127.0.0.1:9094): `GET /health` (503 when the
//! metadata database cannot be read), Prometheus
//! `GET /metrics`, and the plugins (`GET /plugins`, `POST /plugins/reload`, in [`plugins`]).
//! Unauthenticated by design; keep it on a trusted interface.
//!
//! The counters live in [`Metrics`], updated with relaxed atomics on the data path; partition
//! gauges (log start and end offsets, size on disk) are read from the catalog when scraped;
//! the process's own figures (CPU, memory, open files) are in [`process`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use kafka_protocol::messages::ApiKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;

pub mod plugins;
pub mod process;

/// Highest Kafka API key we keep a request counter for.
const MAX_API_KEY: usize = 128;

/// Broker-wide counters, shared by every connection.
pub struct Metrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    /// Connections closed because of a bad frame or request.
    pub connections_rejected: AtomicU64,
    /// Connections closed at once because their address had `broker.max_connections_per_ip`
    /// open.
    pub connections_over_ip_limit: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Records appended by produce requests (duplicates from idempotent retries excluded).
    pub records_in: AtomicU64,
    /// Partition appends refused with an error code.
    pub produce_errors: AtomicU64,
    /// Requests a quota policy throttled (`[[plugins.quotas]]`).
    pub quota_throttled: AtomicU64,
    /// Requests a client quota throttled and connections one turned away
    /// (`crate::client_quotas`).
    pub client_quota_throttled: AtomicU64,
    /// Requests a quota policy rejected, for at least one topic.
    pub quota_rejected: AtomicU64,
    /// QUIC connections whose handshake completed (one per device connection, not per stream).
    pub quic_connections_total: AtomicU64,
    /// QUIC connections open now: the devices connected.
    pub quic_connections_open: AtomicI64,
    /// QUIC datagrams received, and those dropped (malformed, not a produce with acks=0,
    /// unauthenticated, or refused by the produce path).
    pub quic_datagrams_total: AtomicU64,
    pub quic_datagrams_dropped: AtomicU64,
    /// Connections refused for a failed or missing authentication.
    pub auth_failures: AtomicU64,
    /// Operations an ACL check refused (`[acls]`): one per topic, group or cluster check.
    pub acl_denied: AtomicU64,
    /// Successful authentications (client certificate or SASL) by principal. One entry per
    /// device that ever authenticated: as many as the token file or the CA allows.
    authenticated: Mutex<BTreeMap<String, u64>>,
    requests: Vec<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            connections_rejected: AtomicU64::new(0),
            connections_over_ip_limit: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            records_in: AtomicU64::new(0),
            produce_errors: AtomicU64::new(0),
            quota_throttled: AtomicU64::new(0),
            client_quota_throttled: AtomicU64::new(0),
            quota_rejected: AtomicU64::new(0),
            quic_connections_total: AtomicU64::new(0),
            quic_connections_open: AtomicI64::new(0),
            quic_datagrams_total: AtomicU64::new(0),
            quic_datagrams_dropped: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            acl_denied: AtomicU64::new(0),
            authenticated: Mutex::new(BTreeMap::new()),
            requests: (0..MAX_API_KEY).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, api: ApiKey) {
        if let Some(c) = self.requests.get(api as i16 as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests of `api` read so far.
    pub fn requests_of(&self, api: ApiKey) -> u64 {
        self.requests
            .get(api as i16 as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a successful authentication of `principal`.
    pub fn count_authenticated(&self, principal: &str) {
        let mut map = self
            .authenticated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(principal.to_string()).or_default() += 1;
    }

    /// Prometheus text exposition of the counters and of every partition's gauges.
    pub fn render(&self, broker: &Broker) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP runnel_connections_open Kafka sessions open now: TCP and TLS connections, and QUIC streams.\n# TYPE runnel_connections_open gauge\nrunnel_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP runnel_quic_connections_open QUIC connections open now (devices connected).\n# TYPE runnel_quic_connections_open gauge\nrunnel_quic_connections_open {}",
            self.quic_connections_open.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "runnel_connections_total",
            "Kafka connections accepted.",
            self.connections_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_connections_rejected_total",
            "Connections closed for a bad frame or request.",
            self.connections_rejected.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_connections_over_ip_limit_total",
            "Kafka connections closed when accepted: their address had broker.max_connections_per_ip (or its override) open.",
            self.connections_over_ip_limit.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_bytes_in_total",
            "Request bytes received.",
            self.bytes_in.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_bytes_out_total",
            "Response bytes sent.",
            self.bytes_out.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_records_in_total",
            "Records appended by produce requests.",
            self.records_in.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_produce_errors_total",
            "Partitions of produce requests answered with an error: refused, or not replicated in time (acks=all).",
            self.produce_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_quota_throttled_total",
            "Requests throttled by a quota policy.",
            self.quota_throttled.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_client_quota_throttled_total",
            "Requests throttled by a Kafka client quota (byte rates, request_percentage, controller_mutation_rate), and connections turned away by a connection_creation_rate.",
            self.client_quota_throttled.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_quota_rejected_total",
            "Requests rejected by a quota policy (for at least one topic).",
            self.quota_rejected.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_quic_connections_total",
            "QUIC connections whose handshake completed.",
            self.quic_connections_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_quic_datagrams_total",
            "QUIC datagrams received.",
            self.quic_datagrams_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_quic_datagrams_dropped_total",
            "QUIC datagrams dropped: malformed, not produce acks=0, unauthenticated, refused, or beyond the connection's receive buffer.",
            self.quic_datagrams_dropped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_auth_failures_total",
            "Connections refused for a failed or missing authentication.",
            self.auth_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "runnel_acl_denied_total",
            "Operations on a topic, group or the cluster that the ACLs refused.",
            self.acl_denied.load(Ordering::Relaxed),
        );
        let (sessions, cached) = broker.fetch_sessions.counts();
        let _ = writeln!(
            out,
            "# HELP runnel_fetch_sessions Consumers' incremental fetch sessions open now (KIP-227).\n# TYPE runnel_fetch_sessions gauge\nrunnel_fetch_sessions {sessions}\n# HELP runnel_fetch_session_partitions Partitions remembered in the fetch sessions.\n# TYPE runnel_fetch_session_partitions gauge\nrunnel_fetch_session_partitions {cached}"
        );
        let memory = &broker.fetch_memory;
        let _ = writeln!(
            out,
            "# HELP runnel_fetch_memory_bytes Memory held by consumers' Fetch answers not yet written (broker.fetch_memory_bytes).\n# TYPE runnel_fetch_memory_bytes gauge\nrunnel_fetch_memory_bytes {}\n# HELP runnel_fetch_memory_limit_bytes broker.fetch_memory_bytes.\n# TYPE runnel_fetch_memory_limit_bytes gauge\nrunnel_fetch_memory_limit_bytes {}",
            memory.used(),
            memory.limit()
        );
        let requests = &broker.request_memory;
        let _ = writeln!(
            out,
            "# HELP runnel_request_memory_bytes Memory held by requests over 1 MiB being read or handled (broker.queued_max_request_bytes).\n# TYPE runnel_request_memory_bytes gauge\nrunnel_request_memory_bytes {}",
            requests.used()
        );
        counter(
            &mut out,
            "runnel_request_memory_waits_total",
            "Requests over 1 MiB that waited for room in broker.queued_max_request_bytes before being read.",
            requests.short(),
        );
        counter(
            &mut out,
            "runnel_fetch_memory_trimmed_total",
            "Consumers' fetch answers with records given less room than they asked for, for want of fetch memory (broker.fetch_memory_bytes).",
            memory.short(),
        );
        counter(
            &mut out,
            "runnel_fetch_session_evictions_total",
            "Fetch sessions evicted to make room for new ones (broker.max_fetch_sessions).",
            broker.fetch_sessions.evictions(),
        );
        let _ = writeln!(
            out,
            "# HELP runnel_authenticated_total Successful authentications by principal.\n# TYPE runnel_authenticated_total counter"
        );
        for (principal, n) in self
            .authenticated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let label = label(principal);
            let _ = writeln!(
                out,
                "runnel_authenticated_total{{principal=\"{label}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP runnel_requests_total Kafka requests by API.\n# TYPE runnel_requests_total counter"
        );
        for (key, c) in self.requests.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let name = ApiKey::try_from(key as i16)
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "runnel_requests_total{{api=\"{name}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP runnel_leader_epoch The latest leader epoch: the latest this broker leads a partition at, or its leader's as last read (-1 before that).\n# TYPE runnel_leader_epoch gauge\nrunnel_leader_epoch {}",
            broker.catalog.leader_epoch()
        );
        let _ = writeln!(
            out,
            "# HELP runnel_log_end_offset Next offset of each partition.\n# TYPE runnel_log_end_offset gauge"
        );
        let mut starts = String::new();
        let mut sizes = String::new();
        let mut stable = String::new();
        for topic in broker.catalog.list() {
            for p in topic.partitions() {
                let mut log = p.log();
                let labels = format!("topic=\"{}\",partition=\"{}\"", topic.name, p.index);
                let _ = writeln!(
                    out,
                    "runnel_log_end_offset{{{labels}}} {}",
                    log.log_end_offset()
                );
                let _ = writeln!(
                    starts,
                    "runnel_log_start_offset{{{labels}}} {}",
                    log.log_start_offset()
                );
                let _ = writeln!(
                    sizes,
                    "runnel_log_size_bytes{{{labels}}} {}",
                    log.size_bytes()
                );
                let readable = crate::replication::readable_end(
                    broker.cluster.as_ref(),
                    &p,
                    log.log_end_offset(),
                );
                let _ = writeln!(
                    stable,
                    "runnel_log_last_stable_offset{{{labels}}} {}",
                    log.last_stable_offset(readable)
                );
            }
        }
        gauge_family(
            &mut out,
            "runnel_log_start_offset",
            "First offset still stored.",
            &starts,
        );
        gauge_family(
            &mut out,
            "runnel_log_size_bytes",
            "Bytes on disk of each partition's segments.",
            &sizes,
        );
        gauge_family(
            &mut out,
            "runnel_log_last_stable_offset",
            "Offset below which read_committed consumers read: the oldest open transaction's first offset, else the high watermark.",
            &stable,
        );
        render_transactions(&mut out, broker);
        render_groups(&mut out, broker);
        render_plugins(&mut out, broker);
        render_federation(&mut out, broker);
        render_replication(&mut out, broker);
        process::render(&mut out);
        out
    }
}

/// One counter without labels: its HELP and TYPE lines and its value.
fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// One gauge family: its HELP and TYPE lines, then its samples (`name{labels} value` lines).
fn gauge_family(out: &mut String, name: &str, help: &str, samples: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    out.push_str(samples);
}

/// A Prometheus label value: backslashes, quotes and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The transaction coordinator: transactions in progress, and how the ended ones ended.
fn render_transactions(out: &mut String, broker: &Broker) {
    let t = &broker.transactions;
    gauge_family(
        out,
        "runnel_transactions_ongoing",
        "Transactions in progress (begun by a transactional producer, not yet ended).",
        &format!(
            "runnel_transactions_ongoing {}\n",
            crate::broker::waiting_for_disk(|| t.ongoing())
        ),
    );
    counter(
        out,
        "runnel_transactions_committed_total",
        "Transactions committed.",
        t.committed.load(Ordering::Relaxed),
    );
    counter(
        out,
        "runnel_transactions_aborted_total",
        "Transactions aborted: by their producer, by a new producer of the transactional id, or past their timeout.",
        t.aborted.load(Ordering::Relaxed),
    );
    counter(
        out,
        "runnel_transactions_timed_out_total",
        "Transactions the coordinator aborted because they ran past their timeout.",
        t.timed_out.load(Ordering::Relaxed),
    );
}

/// Consumer groups: members of each, and per committed partition the committed offset and the
/// lag behind the log end (what Kafka operators otherwise run an exporter for).
fn render_groups(out: &mut String, broker: &Broker) {
    let mut members = String::new();
    let mut committed = String::new();
    let mut lags = String::new();
    for g in broker.groups.list_groups(&[]) {
        let group = label(&g.group_id);
        if let Ok(d) = broker.groups.describe_group(&g.group_id) {
            let _ = writeln!(
                members,
                "runnel_group_members{{group=\"{group}\"}} {}",
                d.members.len()
            );
        }
        for t in broker
            .groups
            .fetch_offsets(&g.group_id, None)
            .unwrap_or_default()
        {
            let end = broker.catalog.get(&t.name);
            for p in t.partitions.iter().filter(|p| p.offset >= 0) {
                let labels = format!(
                    "group=\"{group}\",topic=\"{}\",partition=\"{}\"",
                    label(&t.name),
                    p.partition
                );
                let _ = writeln!(
                    committed,
                    "runnel_group_committed_offset{{{labels}}} {}",
                    p.offset
                );
                if let Some(part) = end.as_ref().and_then(|t| t.partition(p.partition)) {
                    let lag = (part.log().log_end_offset() - p.offset).max(0);
                    let _ = writeln!(lags, "runnel_group_lag{{{labels}}} {lag}");
                }
            }
        }
    }
    gauge_family(
        out,
        "runnel_group_members",
        "Members of each consumer group.",
        &members,
    );
    gauge_family(
        out,
        "runnel_group_committed_offset",
        "A consumer group's committed offset of a partition.",
        &committed,
    );
    gauge_family(
        out,
        "runnel_group_lag",
        "Records between a group's committed offset and the log end.",
        &lags,
    );
}

/// Per-plugin call counters and the disabled flag, for filters and transforms and for quota
/// policies (which are never disabled); nothing when no plugin is loaded. Plugin names are
/// checked by the config (no spaces); quotes and backslashes are escaped anyway.
fn render_plugins(out: &mut String, broker: &Broker) {
    let set = broker.plugins.current();
    let chains = set
        .loaded
        .iter()
        .map(|p| (p.name(), &p.stats, p.is_disabled()));
    let quotas = set
        .quotas
        .loaded
        .iter()
        .map(|p| (p.name(), &p.stats, false));
    let loaded: Vec<_> = chains.chain(quotas).collect();
    if loaded.is_empty() {
        return;
    }
    let label = |name: &str| name.replace('\\', "\\\\").replace('"', "\\\"");
    let families: [(&str, &str, &str); 3] = [
        (
            "runnel_plugin_calls_total",
            "counter",
            "Calls of each plugin: batches for filters and transforms, topics of requests for quota policies.",
        ),
        (
            "runnel_plugin_faults_total",
            "counter",
            "Plugin calls that failed (trap, timeout, memory cap, error, bad answer, disabled).",
        ),
        (
            "runnel_plugin_disabled",
            "gauge",
            "1 when the plugin was disabled after failing plugins.disable_after calls in a row.",
        ),
    ];
    for (i, (name, kind, help)) in families.into_iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (plugin, stats, disabled) in &loaded {
            let v = match i {
                0 => stats.calls.load(Ordering::Relaxed),
                1 => stats.faults.load(Ordering::Relaxed),
                _ => *disabled as u64,
            };
            let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {v}", label(plugin));
        }
    }
}

/// In a cluster: per partition its high watermark and in-sync set; on the leader how far each
/// follower lags and how many partitions lack a follower; on a follower whether it follows.
fn render_replication(out: &mut String, broker: &Broker) {
    let Some(cluster) = &broker.cluster else {
        return;
    };
    let now = crate::broker::now_ms();
    let (mut hws, mut isrs, mut lags) = (String::new(), String::new(), String::new());
    let mut under = 0;
    for topic in broker.catalog.list() {
        for p in topic.partitions() {
            let labels = format!("topic=\"{}\",partition=\"{}\"", label(&topic.name), p.index);
            let end = p.log().log_end_offset();
            let hw = crate::replication::readable_end(Some(cluster), &p, end);
            let isr = crate::replication::isr(cluster, &p, now).len();
            let _ = writeln!(hws, "runnel_replication_high_watermark{{{labels}}} {hw}");
            let _ = writeln!(
                isrs,
                "runnel_replication_in_sync_replicas{{{labels}}} {isr}"
            );
            if cluster.is_leader() {
                under += usize::from(isr < cluster.brokers.len());
                for (id, follower_end) in crate::replication::follower_ends(cluster, &p) {
                    let _ = writeln!(
                        lags,
                        "runnel_replication_follower_lag_records{{follower=\"{id}\",{labels}}} {}",
                        (end - follower_end).max(0)
                    );
                }
            }
        }
    }
    gauge_family(
        out,
        "runnel_replication_high_watermark",
        "Offset consumers read below: what every in-sync broker holds (on a follower, as last heard from the leader).",
        &hws,
    );
    gauge_family(
        out,
        "runnel_replication_in_sync_replicas",
        "Brokers in the partition's in-sync set, the leader included.",
        &isrs,
    );
    if cluster.is_leader() {
        gauge_family(
            out,
            "runnel_replication_follower_lag_records",
            "Offsets of the leader's log a follower has not fetched yet.",
            &lags,
        );
        gauge_family(
            out,
            "runnel_replication_under_replicated_partitions",
            "Partitions with a follower out of the in-sync set (Kafka's UnderReplicatedPartitions).",
            &format!("runnel_replication_under_replicated_partitions {under}\n"),
        );
    } else {
        gauge_family(
            out,
            "runnel_replication_following",
            "1 while this follower is connected to the leader and fetching.",
            &format!(
                "runnel_replication_following {}\n",
                u8::from(cluster.following())
            ),
        );
    }
}

/// Per federation link its counters, and per forwarded partition the records not yet
/// acknowledged by the remote cluster; nothing when no link is configured.
fn render_federation(out: &mut String, broker: &Broker) {
    let links = broker.federation.links();
    if links.is_empty() {
        return;
    }
    type Read = fn(&crate::federation::LinkStats) -> u64;
    let families: [(&str, &str, Read); 3] = [
        (
            "runnel_federation_forwarded_records_total",
            "Records the remote cluster acknowledged, by link.",
            |s| s.forwarded.load(Ordering::Relaxed),
        ),
        (
            "runnel_federation_errors_total",
            "Errors talking to the remote cluster, by link: failed connections and sends (each send tried again after a backoff).",
            |s| s.errors.load(Ordering::Relaxed),
        ),
        (
            "runnel_federation_skipped_records_total",
            "Records not forwarded: deleted by retention before they were sent, refused by the remote cluster for themselves, or in a damaged batch. Deleted and damaged ones are counted by the offsets they spanned, so offsets compaction or a plugin's filter left unused count too.",
            |s| s.skipped.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (link, stats) in &links {
            let _ = writeln!(out, "{name}{{link=\"{}\"}} {}", label(link), read(stats));
        }
    }
    let mut pending = String::new();
    let mut pending_of: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for c in broker.federation.cursors() {
        let Some(p) = broker
            .catalog
            .get(&c.topic)
            .and_then(|t| t.partition(c.partition))
        else {
            continue;
        };
        let (start, end) = {
            let log = p.log();
            (log.log_start_offset(), log.log_end_offset())
        };
        // Records retention deleted before they were sent are no longer pending: they are
        // counted as skipped when the link reaches them.
        let left = (end - c.next.max(start)).max(0);
        *pending_of.entry(c.link.clone()).or_default() += left;
        let _ = writeln!(
            pending,
            "runnel_federation_pending_records{{link=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
            label(&c.link),
            label(&c.topic),
            c.partition,
            left
        );
    }
    let _ = writeln!(
        out,
        "# HELP runnel_federation_link_up 0 from a failed connection or send, while records are pending, until the link's remote cluster acknowledges records again; 1 otherwise.\n# TYPE runnel_federation_link_up gauge"
    );
    for (link, stats) in &links {
        let _ = writeln!(
            out,
            "runnel_federation_link_up{{link=\"{}\"}} {}",
            label(link),
            u8::from(stats.up() || pending_of.get(link.as_str()).is_none_or(|&n| n == 0))
        );
    }
    let _ = writeln!(
        out,
        "# HELP runnel_federation_last_acknowledged_timestamp_seconds When the link's remote cluster last acknowledged records, in seconds since 1970 (0: not since the broker started). A hung remote cluster shows as this growing old while records are pending.\n# TYPE runnel_federation_last_acknowledged_timestamp_seconds gauge"
    );
    for (link, stats) in &links {
        let ms = stats.last_acknowledged_ms.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "runnel_federation_last_acknowledged_timestamp_seconds{{link=\"{}\"}} {}",
            label(link),
            ms as f64 / 1000.0
        );
    }
    gauge_family(
        out,
        "runnel_federation_pending_records",
        "Offsets of each forwarded partition not yet acknowledged by the link's remote cluster.",
        &pending,
    );
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let b = broker.clone();
    // Reading every partition takes their locks briefly; keep it off the async workers.
    let text = tokio::task::spawn_blocking(move || b.metrics.render(&b))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `ok` while the broker can serve; 503 with the reason after an fsync of partition data failed
/// (`Broker::storage_failed`), while the data directory's filesystem is full (every produce
/// fails), or while the metadata database cannot be read (offset commits, topic changes and new
/// producer ids would fail).
async fn health(State(broker): State<Arc<Broker>>) -> axum::response::Response {
    if let Some(failure) = broker.storage_failure.borrow().clone() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: storage failed: {failure}\n"),
        )
            .into_response();
    }
    let data_dir = &broker.config.broker.data_dir;
    if !data_dir.join("meta.redb").exists() {
        // Removed under the running broker (an unmounted card, an `rm -rf`): writes go to
        // deleted files and the next start finds nothing.
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the data directory {} or its meta.redb is gone: what is written now is lost at the next start\n",
                data_dir.display()
            ),
        )
            .into_response();
    }
    let free = free_bytes(&broker.config.broker.data_dir);
    if free.is_some_and(|free| free < FULL_BELOW) {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the data directory's filesystem is full ({} bytes free): producers get KAFKA_STORAGE_ERROR\n",
                free.unwrap_or(0)
            ),
        )
            .into_response();
    }
    let b = broker.clone();
    // Listing the open files and reading the database are file work: off the async workers.
    let checked = tokio::task::spawn_blocking(move || {
        // Within the share of the limit kept free, new segments and partitions are refused.
        if let Err(no) = crate::storage::open_files::room_for(1) {
            return Err(format!(
                "{} of the {} file descriptors the process may open are in use, within the {} \
                 kept free for connections: new segments and partitions are refused; raise the \
                 open-files limit (LimitNOFILE=, ulimit -n), or use a larger segment.bytes or \
                 a shorter retention",
                no.open, no.limit, no.kept
            ));
        }
        b.meta.check().map_err(|e| e.to_string())
    })
    .await;
    match checked {
        Ok(Ok(())) => "ok\n".into_response(),
        Ok(Err(why)) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Free bytes under which `/health` calls the data directory's filesystem full: less than a
/// produce request of a few batches.
const FULL_BELOW: u64 = 1 << 20;

/// The bytes an unprivileged writer may still use on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Connections the admin listener holds at once; one more is closed as soon as it is accepted.
/// Scrapers and health probes need a few: the bound keeps a stuck or hostile client from
/// taking the file descriptors the Kafka listeners and the partitions need.
const ADMIN_CONNECTIONS: usize = 64;

/// An admin connection that sends nothing for this long (no request, or a request that stops
/// half way) is closed; sooner when `broker.connections_max_idle` is shorter.
const ADMIN_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Admin connections refused for the bound, said a minute.
static ADMIN_REFUSED: crate::log_budget::LogBudget = crate::log_budget::LogBudget::new(1);

/// The admin listener with its bounds ([`ADMIN_CONNECTIONS`], [`ADMIN_IDLE`]).
struct Bounded {
    listener: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    idle: std::time::Duration,
}

impl axum::serve::Listener for Bounded {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    crate::log_budget::within_budget!(ADMIN_REFUSED, warn, error = %e, "admin listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let stream = BoundedStream {
                        stream,
                        _slot: slot,
                        idle_for: self.idle,
                        idle: Box::pin(tokio::time::sleep(self.idle)),
                    };
                    return (stream, peer);
                }
                Err(_) => {
                    crate::log_budget::within_budget!(ADMIN_REFUSED, warn, %peer, limit = ADMIN_CONNECTIONS, "admin listener: too many connections open; closing a new one");
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An admin connection: holds its slot, and fails a read that waits past [`ADMIN_IDLE`] since
/// the last byte went in or out (a response being written keeps it open).
struct BoundedStream {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    idle_for: std::time::Duration,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl tokio::io::AsyncRead for BoundedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future as _;
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle_for;
                    self.idle.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "admin connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl tokio::io::AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            let next = tokio::time::Instant::now() + self.idle_for;
            self.idle.as_mut().reset(next);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Binds the admin listener and serves it until shutdown.
pub async fn listen(
    broker: Arc<Broker>,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind admin listener on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(listener = "admin", address = %bound, "listening");
    let listener = Bounded {
        listener,
        slots: Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS)),
        idle: ADMIN_IDLE.min(broker.config.broker.connections_max_idle),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins::list))
        .route("/plugins/reload", post(plugins::reload))
        .with_state(broker);

    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok((bound, task))
}
