//! Federation: local topics forwarded to central Kafka clusters, store and forward.
//!
//! Each `[[federation.links]]` entry gets one librdkafka producer (idempotent, `acks=all`, no
//! message timeout) and one forwarder task per partition of every local topic it matches. A
//! forwarder reads its partition's log from a cursor, hands the records to the producer, and
//! moves the cursor past them once the remote cluster has acknowledged every one. The cursor
//! lives in redb (`federation_cursors`), written at most once a second and at shutdown.
//!
//! What that gives:
//! - **Nothing is lost while the uplink is down.** The records wait in the local log (its
//!   retention still applies: a partition whose unsent records retention deletes skips them,
//!   with a WARN line and `runnel_federation_skipped_records_total`), and the forwarder's chunk
//!   waits in librdkafka, which retries it until the cluster answers.
//! - **Order and no duplicates** within a run, outages included: the producer is idempotent and
//!   a forwarder has one chunk in flight. A clean restart resumes at the saved cursor. After a
//!   crash, up to a second's worth of acknowledged records is sent again (at least once).
//! - Local partition p goes to remote partition p (p modulo the remote count if the remote
//!   topic has fewer). A missing remote topic is created with the local partition count and the
//!   remote cluster's default replication factor.
//! - Key, value (null stays null), headers (in order, a name given twice kept twice) and
//!   timestamp of each record are kept.
//! - A record the remote cluster refuses for itself (too large, invalid) is skipped with an
//!   ERROR line and counted; other failures are tried again after `retry_backoff`, doubling up
//!   to `retry_backoff_max`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_config::{FederationConfig, FederationLink};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::catalog::{Partition, Topic};
use crate::plugins::raw::Records;
use crate::storage::{self, StorageError};

/// How often a link looks for new topics and partitions that match it.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Most bytes of log a forwarder reads (and has unacknowledged) at once.
const CHUNK_BYTES: usize = 1 << 20;
/// How often a moving cursor is written to redb.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stopping forwarder waits for acknowledgements already asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for the remote cluster's metadata or a topic creation.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

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

    fn cursor(&self, link: &str, topic: &str, partition: i32) -> Arc<AtomicI64> {
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        parts
            .entry((link.to_owned(), topic.to_owned(), partition))
            .or_default()
            .clone()
    }

    fn forget(&self, link: &str, topic: &str, partition: i32) {
        let mut parts = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        parts.remove(&(link.to_owned(), topic.to_owned(), partition));
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
}

impl LinkContext {
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
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.0.troubled.store(true, Ordering::Relaxed);
        self.warn(&format!("{error}: {reason}"));
    }
}

type LinkProducer = FutureProducer<LinkContext>;

/// The producer and settings a link's forwarders share.
struct Link {
    spec: FederationLink,
    client: ClientConfig,
    context: LinkContext,
    /// Replaced when librdkafka reports a fatal error (an idempotent producer cannot go on).
    producer: Mutex<Arc<LinkProducer>>,
    admin: AdminClient<LinkContext>,
    stats: Arc<LinkStats>,
    backoff: (Duration, Duration),
}

/// The librdkafka settings of a link's producer: the user's, then the ones forwarding needs.
fn client_config(spec: &FederationLink) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &spec.client {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &spec.bootstrap_servers)
        .set("client.id", format!("runnel-federation-{}", spec.name))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // 0 = no timeout: a chunk waits in librdkafka, retried, until the cluster answers.
        .set("message.timeout.ms", "0");
    c
}

/// The configured links, their clients made and not started yet ([`Links::spawn`]).
pub struct Links(Vec<Arc<Link>>);

/// Makes each configured link's clients. Fails if librdkafka refuses a link's client settings,
/// naming the link; nothing is sent before [`Links::spawn`].
pub fn connect(broker: &Broker, config: &FederationConfig) -> anyhow::Result<Links> {
    let mut links = Vec::new();
    for (i, spec) in config.links.iter().enumerate() {
        let client = client_config(spec);
        let err = |e: KafkaError| {
            anyhow::anyhow!(
                "federation.links[{i}] ({:?}): librdkafka refused the client settings: {e}",
                spec.name
            )
        };
        let stats = broker.federation.link(&spec.name);
        let context = LinkContext(Arc::new(ContextInner {
            link: spec.name.clone(),
            stats: stats.clone(),
            last_warn: Mutex::new((None, 0)),
            troubled: AtomicBool::new(false),
        }));
        let producer: LinkProducer = client.create_with_context(context.clone()).map_err(err)?;
        let admin: AdminClient<LinkContext> =
            client.create_with_context(context.clone()).map_err(err)?;
        let link = Arc::new(Link {
            spec: spec.clone(),
            client,
            context,
            producer: Mutex::new(Arc::new(producer)),
            admin,
            stats,
            backoff: (config.retry_backoff, config.retry_backoff_max),
        });
        links.push(link);
    }
    Ok(Links(links))
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
    let mut running: HashMap<(Arc<str>, i32), JoinHandle<()>> = HashMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        for topic in broker.catalog.list() {
            if !link.spec.forwards(&topic.name) {
                continue;
            }
            for partition in topic.partitions() {
                let key = (topic.name.clone(), partition.index);
                if running.contains_key(&key) {
                    continue;
                }
                let forwarder = Forwarder {
                    broker: broker.clone(),
                    link: link.clone(),
                    remote: link.spec.remote_name(&topic.name),
                    topic: topic.clone(),
                    partition,
                };
                running.insert(key, tokio::spawn(forwarder.run(shutdown.clone())));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, task) in running {
        let _ = task.await;
    }
    // Dropping a producer purges and waits for librdkafka: off the runtime's threads.
    let producer = link
        .producer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    drop(link);
    let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
}

/// Forwards one local partition.
struct Forwarder {
    broker: Arc<Broker>,
    link: Arc<Link>,
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    remote: String,
}

/// Why a chunk did not get through whole.
struct Failed {
    /// The first record not acknowledged.
    offset: i64,
    error: KafkaError,
}

impl Forwarder {
    fn name(&self) -> &str {
        &self.link.spec.name
    }

    /// Whether the topic this forwarder reads is still the catalog's (not deleted, not made
    /// again under its name).
    fn topic_alive(&self) -> bool {
        self.broker
            .catalog
            .get(&self.topic.name)
            .is_some_and(|t| Arc::ptr_eq(&t, &self.topic))
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (topic, index) = (self.topic.name.to_string(), self.partition.index);
        let stats = self.broker.federation.cursor(self.name(), &topic, index);
        let mut next = match self
            .broker
            .meta
            .federation_cursor(self.name(), &topic, index)
        {
            Ok(Some(next)) => next,
            Ok(None) => self.partition.log().log_start_offset(),
            Err(e) => {
                tracing::error!(link = %self.name(), topic, partition = index, error = %e, "cannot read the federation cursor; the partition is not forwarded until the next scan");
                return;
            }
        };
        stats.store(next, Ordering::Relaxed);
        let mut saved = next;
        let mut saved_at = Instant::now();
        let mut backoff = self.link.backoff.0;
        let mut remote_partitions: Option<i32> = None;
        // A record refused for itself, with the records sent beside it: sent alone next.
        let mut refused_at: Option<i64> = None;
        while !*shutdown.borrow() && self.topic_alive() {
            if remote_partitions.is_none() {
                let ensured = tokio::select! {
                    r = self.ensure_remote_topic() => r,
                    _ = shutdown.changed() => break,
                };
                match ensured {
                    Ok(n) => remote_partitions = Some(n),
                    Err(e) => {
                        self.link.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(link = %self.name(), remote_topic = %self.remote, error = %e, retry_in = ?backoff, "remote cluster not reachable; records wait in the local log");
                        if !pause(&mut shutdown, &mut backoff, self.link.backoff.1).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let appended = self.partition.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let chunk = match self.read(&mut next) {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(link = %self.name(), topic, partition = index, offset = next, error = %e, "cannot read the local log");
                    if !pause(&mut shutdown, &mut backoff, self.link.backoff.1).await {
                        break;
                    }
                    continue;
                }
            };
            stats.store(next, Ordering::Relaxed);
            let Some((bytes, end)) = chunk else {
                if next != saved {
                    self.save(next, &mut saved, &mut saved_at);
                }
                tokio::select! {
                    _ = &mut appended => {}
                    // A topic deleted while idle, or a retention pass: look again now and then.
                    _ = tokio::time::sleep(SCAN_INTERVAL) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            let count = remote_partitions.unwrap_or(1).max(1);
            let target = if index < count { index } else { index % count };
            let only = refused_at.filter(|&at| at == next).map(|_| 1);
            match self
                .send(&bytes, next, end, target, only, &mut shutdown)
                .await
            {
                Ok(done) => {
                    next = done;
                    refused_at = None;
                    backoff = self.link.backoff.0;
                    if self.link.context.0.troubled.swap(false, Ordering::Relaxed) {
                        tracing::info!(link = %self.name(), "the remote cluster acknowledges records again");
                    }
                }
                Err((acked, failed)) => {
                    next = acked;
                    if record_refused(&failed.error) && only.is_some() {
                        self.link.stats.skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(link = %self.name(), topic, partition = index, offset = failed.offset, remote_topic = %self.remote, error = %failed.error, "the remote cluster refused a record sent alone; it is skipped");
                        next = failed.offset + 1;
                        refused_at = None;
                    } else if record_refused(&failed.error) {
                        // The remote answers for a whole batch: send the record alone to see
                        // whether it is the one refused. (Those before it got through.)
                        next = failed.offset;
                        refused_at = Some(failed.offset);
                    } else if !*shutdown.borrow() {
                        self.link.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(link = %self.name(), topic, partition = index, offset = failed.offset, remote_topic = %self.remote, error = %failed.error, retry_in = ?backoff, "forwarding failed; trying again");
                        self.replace_producer_if_fatal();
                        remote_partitions = None;
                        stats.store(next, Ordering::Relaxed);
                        if !pause(&mut shutdown, &mut backoff, self.link.backoff.1).await {
                            break;
                        }
                    }
                }
            }
            stats.store(next, Ordering::Relaxed);
            if next != saved && saved_at.elapsed() >= SAVE_INTERVAL {
                self.save(next, &mut saved, &mut saved_at);
            }
        }
        if next != saved && self.topic_alive() {
            self.save(next, &mut saved, &mut saved_at);
        }
        self.broker.federation.forget(self.name(), &topic, index);
    }

    fn save(&self, next: i64, saved: &mut i64, saved_at: &mut Instant) {
        let (topic, index) = (&self.topic.name, self.partition.index);
        match self
            .broker
            .meta
            .set_federation_cursor(self.name(), topic, index, next)
        {
            Ok(()) => {
                *saved = next;
                *saved_at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(link = %self.name(), %topic, partition = index, error = %e, "cannot save the federation cursor; records may be sent again after a restart")
            }
        }
    }

    /// The batches from `next` on (at most [`CHUNK_BYTES`], at least one batch) and the offset
    /// after the last of them; `None` at the log end. Moves `next` into the log: up to the log
    /// start if retention deleted records before they were forwarded, down to the log end if
    /// the log ends before it.
    fn read(&self, next: &mut i64) -> Result<Option<(Bytes, i64)>, StorageError> {
        let plan = {
            let log = self.partition.log();
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            if *next < start {
                self.link
                    .stats
                    .skipped
                    .fetch_add((start - *next) as u64, Ordering::Relaxed);
                tracing::warn!(link = %self.name(), topic = %self.topic.name, partition = self.partition.index, from = *next, to = start, "retention deleted records before they were forwarded; they are skipped");
                *next = start;
            } else if *next > end {
                // A torn tail cut at start-up took records that were already forwarded; the
                // offsets from the log end on will be new records.
                tracing::warn!(link = %self.name(), topic = %self.topic.name, partition = self.partition.index, cursor = *next, log_end = end, "the local log ends before the federation cursor; forwarding from its end");
                *next = end;
            }
            if *next == end {
                return Ok(None);
            }
            log.plan_read(*next, CHUNK_BYTES)?
        };
        let bytes = plan.read()?;
        let end = storage::parse_batches(&bytes)
            .map_while(Result::ok)
            .map(|(_, h, _)| h.next_offset())
            .last();
        if end.is_none() {
            // Batches were checked on append and a torn tail is cut at start-up.
            tracing::error!(link = %self.name(), topic = %self.topic.name, partition = self.partition.index, offset = *next, "the local log holds no readable batch at the federation cursor; waiting");
        }
        Ok(end.map(|end| (bytes, end)))
    }

    /// Sends the records of `bytes` from offset `from` on (`only` that many if given) and waits
    /// for every acknowledgement. `Ok(next)` when all got through (`end`, or the offset after
    /// the last record sent); else the offset before which all did, and the failure.
    async fn send(
        &self,
        bytes: &Bytes,
        from: i64,
        mut end: i64,
        target: i32,
        only: Option<usize>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<i64, (i64, Failed)> {
        let producer = self
            .link
            .producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut pending: Vec<(i64, DeliveryFuture)> = Vec::new();
        let mut acked = from;
        let mut queue_error = None;
        'batches: for batch in storage::parse_batches(bytes) {
            let Ok((pos, h, raw)) = batch else { break };
            if h.next_offset() <= from || h.is_control() {
                continue;
            }
            let records = plain_batch(bytes.slice(pos..pos + raw.len()), &h);
            let parsed = records
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|plain| Records::parse(plain, &h));
            let records = match parsed {
                Ok(records) => records,
                Err(e) => {
                    // Stored batches passed the same reading on produce: a damaged file.
                    tracing::error!(link = %self.name(), topic = %self.topic.name, partition = self.partition.index, offset = h.base_offset, error = %e, "a stored batch cannot be read; it is skipped");
                    self.link
                        .stats
                        .skipped
                        .fetch_add(h.record_count.max(0) as u64, Ordering::Relaxed);
                    continue;
                }
            };
            for i in 0..records.len() {
                let r = records.record(i);
                let offset = h.base_offset + i64::from(r.offset_delta);
                if offset < from {
                    continue;
                }
                if only.is_some_and(|n| pending.len() >= n) {
                    end = offset;
                    break 'batches;
                }
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                for &(key, value) in &r.headers {
                    headers = headers.insert(Header { key, value });
                }
                let mut record = FutureRecord::<[u8], [u8]>::to(&self.remote)
                    .partition(target)
                    .headers(headers);
                if let Some(k) = r.key {
                    record = record.key(k);
                }
                if let Some(v) = r.value {
                    record = record.payload(v);
                }
                let timestamp = if h.is_log_append_time() {
                    h.max_timestamp
                } else {
                    r.timestamp
                };
                if timestamp >= 0 {
                    record = record.timestamp(timestamp);
                }
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push((offset, delivery));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((error, _)) => {
                            queue_error = Some(Failed { offset, error });
                            break 'batches;
                        }
                    }
                }
            }
        }
        let settled = {
            let settle = async {
                for (offset, delivery) in pending {
                    match delivery.await {
                        Ok(Ok(_)) => {
                            acked = offset + 1;
                            self.link.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err((error, _))) => return Err(Failed { offset, error }),
                        Err(_) => {
                            return Err(Failed {
                                offset,
                                error: KafkaError::Canceled,
                            });
                        }
                    }
                }
                Ok(())
            };
            tokio::pin!(settle);
            tokio::select! {
                r = &mut settle => Some(r),
                _ = shutdown.changed() => tokio::time::timeout(SHUTDOWN_GRACE, &mut settle).await.ok(),
            }
        };
        match (settled, queue_error) {
            (Some(Ok(())), None) => Ok(end),
            (Some(Ok(())), Some(failed)) | (Some(Err(failed)), _) => Err((acked, failed)),
            (None, _) => Err((
                acked,
                Failed {
                    offset: acked,
                    error: KafkaError::Canceled,
                },
            )),
        }
    }

    /// Creates the remote topic if it is missing and returns its partition count.
    async fn ensure_remote_topic(&self) -> Result<i32, KafkaError> {
        let partitions = self.topic.partition_count();
        let new = NewTopic::new(&self.remote, partitions, TopicReplication::Fixed(-1));
        let options = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        let created = self.link.admin.create_topics([&new], &options).await?;
        for result in created {
            match result {
                Ok(_) => {
                    tracing::info!(link = %self.name(), remote_topic = %self.remote, partitions, "created the remote topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // Not allowed to create topics there: the remote's own auto-creation, or an
                // operator, may still make it; the metadata below says.
                Err((_, code)) => {
                    tracing::warn!(link = %self.name(), remote_topic = %self.remote, error = %code, "cannot create the remote topic")
                }
            }
        }
        let producer = self
            .link
            .producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let remote = self.remote.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&remote), ADMIN_TIMEOUT)
                .map(|m| {
                    m.topics()
                        .first()
                        .filter(|t| t.error().is_none())
                        .map(|t| t.partitions().len() as i32)
                })
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        metadata.filter(|&n| n > 0).ok_or(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ))
    }

    /// After a fatal error an idempotent producer refuses everything: make a new one, once
    /// for all of the link's forwarders.
    fn replace_producer_if_fatal(&self) {
        let mut slot = self.link.producer.lock().unwrap_or_else(|p| p.into_inner());
        let Some((code, reason)) = slot.client().fatal_error() else {
            return;
        };
        match self
            .link
            .client
            .create_with_context::<_, LinkProducer>(self.link.context.clone())
        {
            Ok(fresh) => {
                tracing::warn!(link = %self.name(), error = %code, reason, "the link's producer failed fatally; a new one takes over");
                let old = std::mem::replace(&mut *slot, Arc::new(fresh));
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => {
                tracing::error!(link = %self.name(), error = %e, "cannot make a new producer for the link")
            }
        }
    }
}

/// A stored batch with its records uncompressed (the header's codec bits left as they were),
/// for [`Records::parse`]. The decoders are kafka-protocol's; every stored batch passed the
/// broker's own, bounded, decompression on produce.
fn plain_batch(raw: Bytes, h: &storage::BatchHeader) -> anyhow::Result<Bytes> {
    let mut payload = raw.slice(storage::BATCH_HEADER_LEN..);
    let all = |b: &mut Bytes| Ok(b.split_off(0));
    let records = match h.compression() {
        0 => return Ok(raw),
        1 => Gzip::decompress(&mut payload, all)?,
        2 => Snappy::decompress(&mut payload, all)?,
        3 => Lz4::decompress(&mut payload, all)?,
        4 => Zstd::decompress(&mut payload, all)?,
        codec => anyhow::bail!("compression codec {codec} is unknown"),
    };
    let mut plain = bytes::BytesMut::with_capacity(storage::BATCH_HEADER_LEN + records.len());
    plain.extend_from_slice(&raw[..storage::BATCH_HEADER_LEN]);
    plain.extend_from_slice(&records);
    Ok(plain.freeze())
}

/// Errors about a record itself, which sending it again cannot cure.
fn record_refused(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidTimestamp
        )
    )
}

/// Sleeps `backoff` (then doubles it up to `max`); false if shutdown came first.
async fn pause(
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
    max: Duration,
) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(max);
    tokio::select! {
        _ = tokio::time::sleep(wait) => !*shutdown.borrow(),
        _ = shutdown.changed() => false,
    }
}
