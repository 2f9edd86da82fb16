//! Federation: local topics forwarded to central Kafka clusters, store and forward.
//!
//! Each `[[federation.links]]` entry gets one librdkafka producer (idempotent, `acks=all`, no
//! message timeout) and one forwarder task per partition of every local topic it matches
//! ([`forwarder`]). A forwarder reads its partition's log from a cursor, hands the records to
//! the producer, and moves the cursor past them once the remote cluster has acknowledged every
//! one. The cursor lives in redb (`federation_cursors`, with the topic's id), written at most
//! once a second and at shutdown.
//!
//! What that gives:
//! - **Nothing is lost while the uplink is down.** The records wait in the local log (its
//!   retention and compaction still apply: records retention deletes before they were sent are
//!   skipped, with a WARN line and `runnel_federation_skipped_records_total`), and the
//!   forwarder's chunk waits in librdkafka, which retries it until the cluster answers.
//! - **Order, and each record once**, outages included: the producer is idempotent and a
//!   forwarder has one chunk in flight. A clean restart resumes at the saved cursor. Sent again
//!   (at least once): up to a second's worth after a crash, and what was not acknowledged within
//!   5 s of a shutdown.
//! - Local partition p goes to remote partition p (p modulo the remote count if the remote
//!   topic has fewer). A missing remote topic is created with the local partition count and the
//!   remote cluster's default replication factor.
//! - Key, value (null stays null), headers (in order, a name given twice kept twice) and
//!   timestamp of each record are kept; a record without a timestamp gets the send time.
//! - A record the remote cluster refuses for itself (too large, invalid) is skipped with an
//!   ERROR line and counted. The remote answers for a whole batch, so the records around it are
//!   sent again in halves, then alone, until the refused one is found (a few rounds, not one per
//!   record); they may arrive after records that followed them. Other failures are tried again
//!   after `retry_backoff`, doubling up to `retry_backoff_max`.

mod forwarder;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_config::{FederationConfig, FederationLink};
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::broker::Broker;
use forwarder::Forwarder;

/// How often a link looks for new topics and partitions that match it, besides when the
/// catalog says some were added.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Bytes librdkafka may hold queued for a link unless its `client` settings say otherwise
/// (librdkafka's own default is 1 GiB); a full queue holds the forwarders back.
const QUEUE_KBYTES: &str = "65536";
/// Largest produce request a link's producer makes unless its `client` settings say otherwise:
/// Kafka's largest request by default (`socket.request.max.bytes`, also runnel's
/// `max_request_bytes`), so any record the edge stored can be sent; but no more than the queue
/// holds (`queue.buffering.max.kbytes`), as a record larger than the whole queue never fits in
/// it ([`queue_bytes`]).
const MESSAGE_MAX_BYTES: u64 = 104_857_600;

/// What the forwarders report, for `/metrics`.
#[derive(Default)]
pub struct Stats {
    links: Mutex<BTreeMap<String, Arc<LinkStats>>>,
    partitions: Mutex<BTreeMap<(String, String, i32), Arc<AtomicI64>>>,
}

/// Counters of one link.
#[derive(Default)]
pub struct LinkStats {
    /// Records the remote cluster acknowledged.
    pub forwarded: AtomicU64,
    /// Failed sends (each followed by a backoff and another try).
    pub errors: AtomicU64,
    /// Records not forwarded: deleted by retention before they were sent, or refused by the
    /// remote cluster for themselves.
    pub skipped: AtomicU64,
    /// When the remote cluster last acknowledged records (ms since 1970; 0: not since start).
    pub last_acknowledged_ms: AtomicI64,
    /// When talking to the remote cluster last failed (ms since 1970; 0: not since start).
    pub last_error_ms: AtomicI64,
}

impl LinkStats {
    /// Counts a failed connection or send.
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error_ms
            .store(crate::broker::now_ms(), Ordering::Relaxed);
    }

    /// Counts `records` the remote cluster acknowledged.
    pub fn acknowledged(&self, records: u64) {
        self.forwarded.fetch_add(records, Ordering::Relaxed);
        if records > 0 {
            self.last_acknowledged_ms
                .store(crate::broker::now_ms(), Ordering::Relaxed);
        }
    }

    /// Whether nothing failed since the remote cluster last acknowledged records (or since the
    /// start). `/metrics` also counts a link with nothing pending as up.
    pub fn up(&self) -> bool {
        self.last_error_ms.load(Ordering::Relaxed)
            <= self.last_acknowledged_ms.load(Ordering::Relaxed)
    }
}

/// One forwarded partition as `/metrics` shows it.
pub struct PartitionCursor {
    pub link: String,
    pub topic: String,
    pub partition: i32,
    /// The next local offset to forward: everything before it was acknowledged.
    pub next: i64,
}

impl Stats {
    fn link(&self, name: &str) -> Arc<LinkStats> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.entry(name.to_owned()).or_default().clone()
    }

    /// A new gauge for a partition's forwarder, in place of any earlier forwarder's (of a
    /// topic deleted and made again under its name, say).
    fn cursor(&self, link: &str, topic: &str, partition: i32) -> Arc<AtomicI64> {
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        let gauge = Arc::new(AtomicI64::new(0));
        parts.insert(
            (link.to_owned(), topic.to_owned(), partition),
            gauge.clone(),
        );
        gauge
    }

    /// Drops a partition's gauge, unless a forwarder of a topic made again under the same name
    /// has taken it over meanwhile.
    fn forget(&self, link: &str, topic: &str, partition: i32, gauge: &Arc<AtomicI64>) {
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (link.to_owned(), topic.to_owned(), partition);
        if parts.get(&key).is_some_and(|g| Arc::ptr_eq(g, gauge)) {
            parts.remove(&key);
        }
    }

    /// Each link's counters, by link name.
    pub fn links(&self) -> Vec<(String, Arc<LinkStats>)> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The cursor of every partition being forwarded.
    pub fn cursors(&self) -> Vec<PartitionCursor> {
        let parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        parts
            .iter()
            .map(|((link, topic, partition), next)| PartitionCursor {
                link: link.clone(),
                topic: topic.clone(),
                partition: *partition,
                next: next.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// How often at most a link logs what librdkafka reports while the remote cluster is unreachable
/// (it reports each failed connection, every second or so).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The librdkafka clients' context of a link: their log lines and errors go to `tracing`, one
/// WARN line a minute at most (with the number left out), and errors are counted.
#[derive(Clone)]
struct LinkContext(Arc<ContextInner>);

struct ContextInner {
    link: String,
    stats: Arc<LinkStats>,
    /// When the last WARN line went out, and how many were held back since.
    last_warn: Mutex<(Option<Instant>, u64)>,
    /// Set by an error, cleared by the next acknowledged chunk (which logs that it is over).
    troubled: AtomicBool,
    /// The last error librdkafka reported (a refused login, an unreachable broker), and when,
    /// for the lines that would otherwise only say that something timed out.
    last_error: Mutex<Option<(Instant, String)>>,
    /// librdkafka's last word on a failed connection (its FAIL lines, logged at debug): why
    /// "all brokers are down".
    last_failure: Mutex<Option<String>>,
}

impl LinkContext {
    /// The last error librdkafka reported, if any in the last [`RECENT_ERROR`] (an older one,
    /// from an outage since over, would point the wrong way).
    fn last_error(&self) -> Option<String> {
        self.0
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RECENT_ERROR)
            .map(|(_, what)| what.clone())
    }

    fn warn(&self, what: &str) {
        let mut last = self.0.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.0.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            last.1 += 1;
            return;
        }
        tracing::warn!(link = %self.0.link, held_back = last.1, "remote cluster: {what}");
        *last = (Some(Instant::now()), 0);
    }
}

impl ClientContext for LinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => self.warn(&format!("{fac} {message}")),
            _ => tracing::debug!(link = %self.0.link, "librdkafka {fac} {message}"),
        }
        if fac == "FAIL" {
            *self
                .0
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(message.to_string());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.stats.failed();
        self.0.troubled.store(true, Ordering::Relaxed);
        let mut what = format!("{error}: {reason}");
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
            && let Some(failure) = self
                .0
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        {
            what.push_str(&format!("; the last connection: {failure}"));
            // A remote that answers ApiVersions and then hangs up at once: a SASL or TLS
            // listener spoken to in plaintext, most often (not a connection that was up a
            // while: that is a remote going down).
            if failure.contains("closed by peer") && up_for_ms(&failure).is_some_and(|ms| ms < 5000)
            {
                what.push_str(
                    " (the remote closed it after the first requests: does it require SASL or \
                     TLS? set security.protocol and sasl.* under [federation.links.client])",
                );
            }
        }
        *self.0.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), what.clone()));
        self.warn(&what);
    }
}

/// The `host:port` addresses of a link's `bootstrap_servers`, in the forms librdkafka takes:
/// separated by commas or spaces, `PROTOCOL://` before them allowed, the port 9092 when none
/// is given (`[v6]` or a bare IPv6 address too).
fn probe_addresses(servers: &str) -> Vec<String> {
    servers
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s.rsplit_once("://").map_or(s, |(_, a)| a);
            let has_port = match s.strip_prefix('[') {
                Some(rest) => rest.contains("]:"),
                None => s.matches(':').count() == 1,
            };
            match (has_port, s.starts_with('['), s.contains(':')) {
                (true, _, _) => s.to_string(),
                (false, true, _) => format!("{s}:9092"),
                (false, false, true) => format!("[{s}]:9092"),
                (false, false, false) => format!("{s}:9092"),
            }
        })
        .collect()
}

/// How long librdkafka's last error is quoted in the link's warnings.
const RECENT_ERROR: Duration = Duration::from_secs(30);

/// How long a connection librdkafka says failed had been up: its FAIL lines end `(after
/// 361031ms in state UP)`.
fn up_for_ms(failure: &str) -> Option<u64> {
    let (before, _) = failure.rsplit_once("ms in state UP")?;
    let (_, digits) = before.rsplit_once("(after ")?;
    digits.trim().parse().ok()
}

type LinkProducer = FutureProducer<LinkContext>;

/// The producer and settings a link's forwarders share.
struct Link {
    spec: FederationLink,
    /// The producer's librdkafka settings, for a replacement.
    client: ClientConfig,
    context: LinkContext,
    /// Replaced when librdkafka reports a fatal error (an idempotent producer cannot go on).
    producer: Mutex<Arc<LinkProducer>>,
    /// Producers replaced after a fatal error, dropped with the link (off the async workers).
    retired: Mutex<Vec<Arc<LinkProducer>>>,
    admin: AdminClient<LinkContext>,
    /// Partition count of each remote topic, once made sure of (created if missing). One
    /// forwarder at a time asks the remote cluster.
    remote_topics: tokio::sync::Mutex<HashMap<String, i32>>,
    stats: Arc<LinkStats>,
    backoff: (Duration, Duration),
    /// The most record bytes the producer's queue holds ([`queue_bytes`]).
    queue_bytes: u64,
}

impl Link {
    /// Whether one of the link's bootstrap servers takes a TCP connection (within 2 s). Asked
    /// before the admin and metadata requests that make sure of a remote topic: librdkafka,
    /// waiting on those while the cluster refuses connections, tries to connect in a loop
    /// (thousands of tries a second, most of a core), where its producer's own reconnects
    /// back off.
    async fn reachable(&self) -> bool {
        for address in probe_addresses(&self.spec.bootstrap_servers) {
            let connect = tokio::net::TcpStream::connect(address);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                return true;
            }
        }
        false
    }

    fn producer(&self) -> Arc<LinkProducer> {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a fatal error an idempotent producer refuses everything: makes a new one, once for
    /// all of the link's forwarders (`failed` is the one the caller used).
    fn replace_producer(&self, failed: &Arc<LinkProducer>) {
        let mut slot = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&slot, failed) {
            return;
        }
        let Some((code, reason)) = slot.client().fatal_error() else {
            return;
        };
        match self
            .client
            .create_with_context::<_, LinkProducer>(self.context.clone())
        {
            Ok(fresh) => {
                tracing::warn!(link = %self.spec.name, error = %code, reason, "the link's producer failed fatally; a new one takes over");
                let old = std::mem::replace(&mut *slot, Arc::new(fresh));
                self.retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(old);
            }
            Err(e) => {
                tracing::error!(link = %self.spec.name, error = %e, "cannot make a new producer for the link")
            }
        }
    }
}

/// The settings a link's clients share: the user's, the bootstrap servers and a client id.
fn base_config(spec: &FederationLink) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &spec.client {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &spec.bootstrap_servers);
    if !spec.client.contains_key("client.id") {
        c.set("client.id", format!("runnel-federation-{}", spec.name));
    }
    c
}

/// The librdkafka settings of a link's producer: the shared ones, then the ones forwarding
/// needs.
fn producer_config(spec: &FederationLink) -> ClientConfig {
    let mut c = base_config(spec);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // 0 = no timeout: a chunk waits in librdkafka, retried, until the cluster answers.
        .set("message.timeout.ms", "0");
    // librdkafka's own 1,000,000 would refuse records the broker took (its default
    // max.message.bytes is 1,048,588); the remote topic's limit still applies.
    let message_max = MESSAGE_MAX_BYTES
        .min(queue_bytes(spec))
        .max(1000)
        .to_string();
    let defaults = [
        ("queue.buffering.max.kbytes", QUEUE_KBYTES),
        ("message.max.bytes", message_max.as_str()),
        // A remote topic deleted while forwarded must not come back through the remote's
        // auto-creation (with its default partition count): the forwarder makes it again.
        ("allow.auto.create.topics", "false"),
    ];
    for (key, value) in defaults {
        if !spec.client.contains_key(key) {
            c.set(key, value);
        }
    }
    c
}

/// The most record bytes librdkafka queues for a link (`queue.buffering.max.kbytes`): a record
/// larger than that never gets into the queue, so it is skipped, as one the remote refuses.
fn queue_bytes(spec: &FederationLink) -> u64 {
    spec.client
        .get("queue.buffering.max.kbytes")
        .map_or(QUEUE_KBYTES, String::as_str)
        .trim()
        .parse::<u64>()
        .map_or(u64::MAX, |k| k.saturating_mul(1024))
}

/// Checks that librdkafka takes each link's `client` settings, without connecting: for
/// `runnel config validate` and start-up. The error names the link's key.
pub fn check_clients(config: &FederationConfig) -> anyhow::Result<()> {
    /// Keeps librdkafka's log lines out of a check.
    struct Quiet;
    impl ClientContext for Quiet {
        fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
        fn error(&self, _: KafkaError, _: &str) {}
    }
    for (i, spec) in config.links.iter().enumerate() {
        let mut client = producer_config(spec);
        // With no bootstrap servers librdkafka connects nowhere; it checks everything else.
        client.remove("bootstrap.servers");
        let made: Result<FutureProducer<Quiet>, KafkaError> = client.create_with_context(Quiet);
        if let Err(e) = made {
            anyhow::bail!(
                "federation.links[{i}].client: link {:?}: librdkafka refuses the settings: {}",
                spec.name,
                settings_refusal(&e)
            );
        }
    }
    Ok(())
}

/// The configured links, their clients made and not started yet ([`Links::spawn`]).
pub struct Links(Vec<Arc<Link>>);

/// Makes each configured link's clients, and moves any cursor past its partition's log end
/// (a torn tail cut at start-up) back to it before a produce can reuse those offsets. Fails if
/// librdkafka refuses a link's settings, naming the link; nothing is sent before
/// [`Links::spawn`].
pub fn connect(broker: &Broker, config: &FederationConfig) -> anyhow::Result<Links> {
    let mut links = Vec::new();
    for (i, spec) in config.links.iter().enumerate() {
        let stats = broker.federation.link(&spec.name);
        let context = LinkContext(Arc::new(ContextInner {
            link: spec.name.clone(),
            stats: stats.clone(),
            last_warn: Mutex::new((None, 0)),
            troubled: AtomicBool::new(false),
            last_error: Mutex::new(None),
            last_failure: Mutex::new(None),
        }));
        let err = |e: KafkaError| {
            anyhow::anyhow!(
                "federation.links[{i}].client: link {:?}: librdkafka refuses the settings: {}",
                spec.name,
                settings_refusal(&e)
            )
        };
        let client = producer_config(spec);
        let producer: LinkProducer = client.create_with_context(context.clone()).map_err(err)?;
        let admin: AdminClient<LinkContext> = base_config(spec)
            .create_with_context(context.clone())
            .map_err(err)?;
        links.push(Arc::new(Link {
            spec: spec.clone(),
            client,
            context,
            producer: Mutex::new(Arc::new(producer)),
            retired: Mutex::new(Vec::new()),
            admin,
            remote_topics: tokio::sync::Mutex::new(HashMap::new()),
            stats,
            backoff: (config.retry_backoff, config.retry_backoff_max),
            queue_bytes: queue_bytes(spec),
        }));
        clamp_cursors(broker, spec)?;
    }
    Ok(Links(links))
}

/// Moves each cursor of `spec` that is past its partition's log end back to the end.
fn clamp_cursors(broker: &Broker, spec: &FederationLink) -> anyhow::Result<()> {
    for topic in broker.catalog.list() {
        if !spec.forwards(&topic.name) {
            continue;
        }
        let id = (&*topic.name, topic.id.as_u128());
        for p in topic.partitions() {
            let end = p.log().log_end_offset();
            match broker.meta.federation_cursor(&spec.name, id, p.index)? {
                Some(next) if next > end => {
                    tracing::warn!(link = %spec.name, topic = %topic.name, partition = p.index, cursor = next, log_end = end, "the local log ends before the federation cursor (its tail was cut at start-up after being forwarded); forwarding from its end");
                    broker
                        .meta
                        .set_federation_cursor(&spec.name, id, p.index, end)?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl Links {
    /// Starts a task per link; each ends at shutdown.
    pub fn spawn(
        self,
        broker: &Arc<Broker>,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        self.0
            .into_iter()
            .map(|link| {
                let spec = &link.spec;
                tracing::info!(link = %spec.name, remote = %spec.bootstrap_servers, topics = ?spec.topics, "federation link started");
                tokio::spawn(run_link(broker.clone(), link, shutdown.clone()))
            })
            .collect()
    }
}

/// Keeps a forwarder running for every partition the link matches, until shutdown.
async fn run_link(broker: Arc<Broker>, link: Arc<Link>, mut shutdown: watch::Receiver<bool>) {
    let mut running: HashMap<(Uuid, i32), JoinHandle<()>> = HashMap::new();
    // Topics whose remote name Kafka would refuse (too long, say), reported once each.
    let mut unnamable: HashSet<Uuid> = HashSet::new();
    while !stopping(&shutdown) {
        running.retain(|_, task| !task.is_finished());
        // Armed before the catalog is read, so a topic added meanwhile is not missed.
        let added = broker.catalog.added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        for topic in broker.catalog.list() {
            if !link.spec.forwards(&topic.name) {
                continue;
            }
            let remote = link.spec.remote_name(&topic.name);
            if let Err(e) = crate::catalog::validate_topic_name(&remote) {
                if unnamable.insert(topic.id) {
                    tracing::error!(link = %link.spec.name, topic = %topic.name, %remote, error = %e, "the remote topic name is not a valid Kafka topic name; this topic is not forwarded");
                }
                continue;
            }
            for partition in topic.partitions() {
                let key = (topic.id, partition.index);
                if running.contains_key(&key) {
                    continue;
                }
                let forwarder = Forwarder::new(&broker, &link, &topic, partition);
                running.insert(key, tokio::spawn(forwarder.run(shutdown.clone())));
            }
        }
        tokio::select! {
            _ = &mut added => {}
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            _ = stopped(&mut shutdown) => {}
        }
    }
    for (_, task) in running {
        let _ = task.await;
    }
    // Dropping librdkafka clients purges and waits for their threads: off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(link)).await;
}

/// Whether the broker is stopping: shutdown was asked for, or its sender is gone.
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Resolves once the broker is [`stopping`] (at once if it is already), or when the shutdown
/// signal changes otherwise.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if !stopping(shutdown) {
        let _ = shutdown.changed().await;
    }
}

/// Sleeps `backoff` (then doubles it up to `max`); false if shutdown came first.
async fn pause(
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
    max: Duration,
) -> bool {
    let wait = *backoff;
    *backoff = backoff.checked_mul(2).unwrap_or(max).min(max);
    tokio::select! {
        _ = tokio::time::sleep(wait) => !stopping(shutdown),
        _ = stopped(shutdown) => false,
    }
}

/// What librdkafka says of a setting it refuses, without the Debug-like tail of its error
/// ("... \"bogus.prop\" bogus.prop 1").
fn settings_refusal(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, value) => {
            format!("{key} = {value:?}: {description}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_long_a_failed_connection_was_up_is_read_from_librdkafkas_line() {
        let line = "127.0.0.1:19810/1: Connection closed by peer: receive 0 after POLLIN \
                    (after 361031ms in state UP)";
        assert_eq!(up_for_ms(line), Some(361_031));
        assert_eq!(
            up_for_ms("Disconnected (after 12ms in state UP, 1 identical error(s) suppressed)"),
            Some(12)
        );
        assert_eq!(
            up_for_ms(
                "Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"
            ),
            None
        );
    }

    #[test]
    fn bootstrap_servers_are_read_as_librdkafka_reads_them() {
        assert_eq!(
            probe_addresses("kafka, b:9093 SSL://c:9094 [::1]:9095,[::1] ::1"),
            [
                "kafka:9092",
                "b:9093",
                "c:9094",
                "[::1]:9095",
                "[::1]:9092",
                "[::1]:9092"
            ]
        );
    }
}
