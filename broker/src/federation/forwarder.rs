//! One forwarded partition: the cursor, the chunk in flight, and what a failure does to them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use tokio::sync::watch;

use super::{Link, LinkProducer, SCAN_INTERVAL, pause, stopped, stopping};
use crate::broker::Broker;
use crate::catalog::{Partition, Topic};
use crate::log_budget::{LogBudget, within_budget};
use crate::storage::record_spans::{Records, plain_batch};
use crate::storage::{self, BatchHeader, StorageError};

/// Most bytes of log a forwarder reads at once (at least one batch).
const CHUNK_BYTES: usize = 1 << 20;
/// Most records a forwarder has unacknowledged at once.
const CHUNK_RECORDS: usize = 10_000;
/// How often a moving cursor is written to redb at most.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stopping forwarder waits for acknowledgements already asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for the remote cluster's metadata or a topic creation.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards one local partition.
pub(super) struct Forwarder {
    broker: Arc<Broker>,
    link: Arc<Link>,
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    remote: String,
}

/// The cursor of a partition and what is known past it.
struct Cursor {
    /// Every record before it was acknowledged (or skipped).
    next: i64,
    /// Records at or past `next` that were acknowledged already: a chunk that failed part way
    /// is sent again without them.
    delivered: BTreeSet<i64>,
    /// Most records the next chunk may hold. Halved when the remote cluster refuses a batch
    /// for its contents, so the refused record is found in a few rounds and the records around
    /// it get through; doubled again, up to [`CHUNK_RECORDS`], by each chunk that is taken.
    limit: usize,
    saved: i64,
    saved_at: Instant,
    /// The value `/metrics` reads.
    shown: Arc<AtomicI64>,
}

impl Cursor {
    fn moved_to(&mut self, next: i64) {
        self.next = next;
        self.delivered = self.delivered.split_off(&next);
        self.shown.store(next, Ordering::Relaxed);
    }
}

/// What became of a chunk.
struct Outcome {
    /// Offsets the remote cluster acknowledged.
    delivered: Vec<i64>,
    /// The first record not acknowledged, and why; `None` if all were.
    failed: Option<(i64, KafkaError)>,
    /// How many records the remote cluster refused for their contents (with their batch).
    refused: usize,
    /// The offset after the chunk: where the cursor goes if nothing failed.
    end: i64,
}

impl Forwarder {
    pub(super) fn new(
        broker: &Arc<Broker>,
        link: &Arc<Link>,
        topic: &Arc<Topic>,
        partition: Arc<Partition>,
    ) -> Forwarder {
        Forwarder {
            broker: broker.clone(),
            link: link.clone(),
            remote: link.spec.remote_name(&topic.name),
            topic: topic.clone(),
            partition,
        }
    }

    fn name(&self) -> &str {
        &self.link.spec.name
    }

    fn topic_id(&self) -> (&str, u128) {
        (&self.topic.name, self.topic.id.as_u128())
    }

    /// Whether the topic this forwarder reads is still the catalog's (not deleted, not made
    /// again under its name).
    fn topic_alive(&self) -> bool {
        self.broker
            .catalog
            .get(&self.topic.name)
            .is_some_and(|t| Arc::ptr_eq(&t, &self.topic))
    }

    pub(super) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let index = self.partition.index;
        let shown = self
            .broker
            .federation
            .cursor(self.name(), &self.topic.name, index);
        let stored = self
            .broker
            .meta
            .federation_cursor(self.name(), self.topic_id(), index);
        match stored {
            Ok(stored) => {
                let next = stored.unwrap_or_else(|| self.partition.log().log_start_offset());
                shown.store(next, Ordering::Relaxed);
                let mut cursor = Cursor {
                    next,
                    delivered: BTreeSet::new(),
                    limit: CHUNK_RECORDS,
                    saved: next,
                    saved_at: Instant::now(),
                    shown: shown.clone(),
                };
                // A new partition's starting point is saved at once: if retention deletes
                // records before they are sent and the broker restarts meanwhile, the saved
                // cursor shows what was skipped.
                if stored.is_none() {
                    let records = self.partition.log().log_end_offset() - next;
                    if records > 0 {
                        // Positions are kept by link name: a renamed link starts again too.
                        tracing::info!(link = %self.name(), topic = %self.topic.name, partition = index, records, "no saved position for this link (a new link, or one renamed): forwarding the partition from its log start");
                    }
                    self.save(&mut cursor);
                }
                self.forward(&mut cursor, &mut shutdown).await;
                if cursor.next != cursor.saved {
                    self.save(&mut cursor);
                }
            }
            Err(e) => {
                tracing::error!(link = %self.name(), topic = %self.topic.name, partition = index, error = %e, "cannot read the federation cursor; the partition is not forwarded until the next scan");
            }
        }
        self.broker
            .federation
            .forget(self.name(), &self.topic.name, index, &shown);
    }

    /// Forwards chunk after chunk until shutdown or the topic's deletion.
    async fn forward(&self, cursor: &mut Cursor, shutdown: &mut watch::Receiver<bool>) {
        let (topic, index) = (&self.topic.name, self.partition.index);
        let mut backoff = self.link.backoff.0;
        while !stopping(shutdown) && self.topic_alive() {
            let remote_partitions = tokio::select! {
                r = self.remote_partitions() => r,
                _ = stopped(shutdown) => continue,
            };
            let remote_partitions = match remote_partitions {
                Ok(n) => n,
                Err(e) => {
                    self.link.stats.failed();
                    // Every partition's forwarder retries: one line a minute per link at most.
                    self.link.context.0.troubled.store(true, Ordering::Relaxed);
                    // A timeout says little: the cluster's last error (a refused login) says why.
                    let last = self
                        .link
                        .context
                        .last_error()
                        .map(|l| format!("; the cluster's last error: {l}"))
                        .unwrap_or_default();
                    self.link.context.warn(&format!(
                        "cannot make sure of the remote topic {} ({e}{last}); records wait in the local log",
                        self.remote
                    ));
                    pause(shutdown, &mut backoff, self.link.backoff.1).await;
                    continue;
                }
            };
            let appended = self.partition.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let chunk = match self.read(cursor) {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(link = %self.name(), %topic, partition = index, offset = cursor.next, error = %e, "cannot read the local log");
                    pause(shutdown, &mut backoff, self.link.backoff.1).await;
                    continue;
                }
            };
            let Some((bytes, end)) = chunk else {
                // Caught up: save a moved cursor once a second has passed since the last save.
                let dirty = cursor.next != cursor.saved;
                let wait = match dirty {
                    true => SAVE_INTERVAL.saturating_sub(cursor.saved_at.elapsed()),
                    // A topic deleted while idle, or a retention pass: look again now and then.
                    false => SCAN_INTERVAL,
                };
                tokio::select! {
                    _ = &mut appended => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(shutdown) => {}
                }
                if dirty && cursor.saved_at.elapsed() >= SAVE_INTERVAL {
                    self.save(cursor);
                }
                continue;
            };
            let target = index % remote_partitions;
            let limit = cursor.limit;
            let producer = self.link.producer();
            let outcome = self
                .send(&producer, &bytes, cursor, end, target, limit, shutdown)
                .await;
            let acknowledged = outcome.delivered.len() as u64;
            self.link.stats.acknowledged(acknowledged);
            cursor.delivered.extend(outcome.delivered);
            match outcome.failed {
                None => {
                    cursor.moved_to(outcome.end);
                    cursor.limit = (limit * 2).min(CHUNK_RECORDS);
                    backoff = self.link.backoff.0;
                    if self.link.context.0.troubled.swap(false, Ordering::Relaxed) {
                        tracing::info!(link = %self.name(), "the remote cluster acknowledges records again");
                    }
                }
                Some((offset, error)) if refused(&error) && limit == 1 => {
                    self.link.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(link = %self.name(), %topic, partition = index, offset, remote_topic = %self.remote, %error, "a record sent alone was refused (by the remote cluster, or by librdkafka as larger than the link's message.max.bytes or queue.buffering.max.kbytes); it is skipped");
                    cursor.moved_to(offset + 1);
                }
                Some((offset, error)) => {
                    // Everything before the first failure was acknowledged.
                    cursor.moved_to(offset);
                    if refused(&error) {
                        cursor.limit = outcome.refused.clamp(1, limit).div_ceil(2);
                    } else if !stopping(shutdown) {
                        self.link.stats.failed();
                        // Said again once the remote acknowledges records.
                        self.link.context.0.troubled.store(true, Ordering::Relaxed);
                        // Every partition's forwarder retries, each at its own pace.
                        within_budget!(SEND_FAILED, warn, link = %self.name(), %topic, partition = index, offset, remote_topic = %self.remote, %error, retry_in = ?backoff, "forwarding failed; trying again");
                        self.link.replace_producer(&producer);
                        self.link.remote_topics.lock().await.remove(&self.remote);
                        pause(shutdown, &mut backoff, self.link.backoff.1).await;
                    }
                }
            }
            if cursor.next != cursor.saved && cursor.saved_at.elapsed() >= SAVE_INTERVAL {
                self.save(cursor);
            }
        }
    }

    /// Writes the cursor to redb, unless the topic was deleted meanwhile (its cursors went
    /// with it).
    fn save(&self, cursor: &mut Cursor) {
        if !self.topic_alive() {
            return;
        }
        let (topic, index) = (&self.topic.name, self.partition.index);
        let saved = self.broker.meta.set_federation_cursor(
            self.name(),
            self.topic_id(),
            index,
            cursor.next,
        );
        match saved {
            Ok(()) => {
                cursor.saved = cursor.next;
                cursor.saved_at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(link = %self.name(), %topic, partition = index, error = %e, "cannot save the federation cursor; records may be sent again after a restart")
            }
        }
    }

    /// The batches from the cursor on (at most [`CHUNK_BYTES`], at least one batch) and the
    /// offset after the last of them; `None` at the log end, or at the first record of a
    /// transaction not ended yet (only what is decided is forwarded: committed records, and
    /// aborted ones to be skipped by [`Forwarder::send`]). Moves the cursor into the log: up
    /// to the log start if retention deleted records before they were forwarded, down to the
    /// log end if the log ends before it, and past a batch that fails its checks.
    fn read(&self, cursor: &mut Cursor) -> Result<Option<(Bytes, i64)>, StorageError> {
        loop {
            let plan = {
                let mut log = self.partition.log();
                let (start, end) = (log.log_start_offset(), log.log_end_offset());
                if cursor.next < start {
                    let lost = (start - cursor.next) as u64;
                    self.link.stats.skipped.fetch_add(lost, Ordering::Relaxed);
                    tracing::warn!(link = %self.name(), topic = %self.topic.name, partition = self.partition.index, from = cursor.next, to = start, "retention deleted records before they were forwarded; they are skipped");
                    cursor.moved_to(start);
                } else if cursor.next > end {
                    cursor.moved_to(end);
                }
                // In a cluster, only what every in-sync broker has (below the high watermark):
                // the central cluster must not get records a change of leader could cut.
                let readable = crate::replication::readable_end(
                    self.broker.cluster.as_ref(),
                    &self.partition,
                    end,
                );
                let stable = log.last_stable_offset(readable);
                if cursor.next >= stable {
                    return Ok(None);
                }
                log.plan_read_below(cursor.next, CHUNK_BYTES, stable)?
            };
            let bytes = plan.read()?;
            let end = storage::parse_batches(&bytes)
                .map_while(Result::ok)
                .map(|(_, h, _)| h.next_offset())
                .last();
            if let Some(end) = end {
                return Ok(Some((bytes, end)));
            }
            // The first batch fails its checks (appends were checked, so the file is damaged):
            // skip it if its header says how far it goes, else wait for an operator.
            let Some((_, damage)) = storage::parse_batches(&bytes).find_map(Result::err) else {
                return Ok(None);
            };
            match BatchHeader::parse(&bytes) {
                Ok(h) if h.next_offset() > cursor.next => {
                    let lost = (h.next_offset() - cursor.next) as u64;
                    self.link.stats.skipped.fetch_add(lost, Ordering::Relaxed);
                    tracing::error!(link = %self.name(), topic = %self.topic.name, partition = self.partition.index, from = cursor.next, to = h.next_offset(), error = %damage, "a stored batch fails its checks; its records are skipped");
                    cursor.moved_to(h.next_offset());
                }
                _ => {
                    return Err(StorageError::CorruptRecord {
                        position: 0,
                        source: damage,
                    });
                }
            }
        }
    }

    /// Sends the records of `bytes` from the cursor on (at most `limit` of them; none the
    /// cursor knows were delivered) and waits for every acknowledgement, at most
    /// [`SHUTDOWN_GRACE`] once shutdown is asked for.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        producer: &LinkProducer,
        bytes: &Bytes,
        cursor: &Cursor,
        mut end: i64,
        target: i32,
        limit: usize,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let mut pending: Vec<(i64, DeliveryFuture)> = Vec::new();
        let mut unsent = None;
        // Aborted transactions' records stay here, as a read_committed consumer's would.
        let aborted = self.partition.log().aborted_transactions(cursor.next, end);
        let was_aborted = |h: &BatchHeader| {
            h.is_transactional()
                && aborted.iter().any(|a| {
                    a.producer_id == h.producer_id
                        && (a.first_offset..a.last_offset).contains(&h.base_offset)
                })
        };
        'batches: for batch in storage::parse_batches(bytes) {
            let Ok((pos, h, raw)) = batch else { break };
            if h.next_offset() <= cursor.next || h.is_control() || was_aborted(&h) {
                continue;
            }
            let plain = plain_batch(bytes.slice(pos..pos + raw.len()), &h);
            let parsed = plain
                .as_ref()
                .map_err(String::clone)
                .and_then(|plain| Records::parse(plain, &h));
            let records = match parsed {
                Ok(records) => records,
                Err(e) => {
                    // Stored batches passed the same reading on produce: a damaged file.
                    tracing::error!(link = %self.name(), topic = %self.topic.name, partition = self.partition.index, offset = h.base_offset, error = %e, "a stored batch cannot be read; it is skipped");
                    // Counted by the offsets it spans, as deleted records are.
                    self.link.stats.skipped.fetch_add(
                        (h.next_offset() - h.base_offset).max(0) as u64,
                        Ordering::Relaxed,
                    );
                    continue;
                }
            };
            for i in 0..records.len() {
                let r = records.record(i);
                let offset = h.base_offset + i64::from(r.offset_delta);
                if offset < cursor.next || cursor.delivered.contains(&offset) {
                    continue;
                }
                if pending.len() >= limit {
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
                let timestamp = match h.is_log_append_time() {
                    true => h.max_timestamp,
                    false => r.timestamp,
                };
                if timestamp >= 0 {
                    record = record.timestamp(timestamp);
                }
                // librdkafka counts a record's key and value against its queue: one larger than
                // the whole queue would wait for room forever.
                let size = r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
                if size as u64 > self.link.queue_bytes {
                    unsent = Some((
                        offset,
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                    ));
                    break 'batches;
                }
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            pending.push((offset, delivery));
                            break;
                        }
                        // librdkafka's queue is full (other partitions, or the uplink is down):
                        // wait for room.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                                _ = stopped(shutdown) => {}
                            }
                            if stopping(shutdown) {
                                unsent = Some((offset, KafkaError::Canceled));
                                break 'batches;
                            }
                        }
                        Err((error, _)) => {
                            unsent = Some((offset, error));
                            break 'batches;
                        }
                    }
                }
            }
        }
        // Every acknowledgement is awaited, failures or not: a record after a failed one may
        // still get through, and must then not be sent again.
        let mut delivered = Vec::with_capacity(pending.len());
        let mut failed: Option<(i64, KafkaError)> = None;
        // How many acknowledgements have come, in order: the one after them is the first still
        // awaited when the grace runs out (it stays in `pending` until it has settled).
        let mut settled = 0;
        let mut refused_records = 0;
        {
            let settle = async {
                for (offset, delivery) in pending.iter_mut() {
                    match delivery.await {
                        Ok(Ok(_)) => delivered.push(*offset),
                        Ok(Err((error, _))) => {
                            refused_records += usize::from(refused(&error));
                            failed.get_or_insert((*offset, error));
                        }
                        Err(_) => {
                            failed.get_or_insert((*offset, KafkaError::Canceled));
                        }
                    }
                    settled += 1;
                }
            };
            tokio::pin!(settle);
            tokio::select! {
                _ = &mut settle => {}
                _ = stopped(shutdown) => {
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut settle).await;
                }
            }
        }
        // Not settled within the grace: not known to be delivered.
        let first_waiting = pending
            .get(settled)
            .map(|(offset, _)| (*offset, KafkaError::Canceled));
        let failed = [failed, first_waiting, unsent]
            .into_iter()
            .flatten()
            .min_by_key(|(offset, _)| *offset);
        Outcome {
            delivered,
            failed,
            refused: refused_records,
            end,
        }
    }

    /// The partition count of the remote topic, which is created if it is missing.
    async fn remote_partitions(&self) -> Result<i32, KafkaError> {
        let mut known = self.link.remote_topics.lock().await;
        if let Some(&n) = known.get(&self.remote) {
            return Ok(n);
        }
        if !self.link.reachable().await {
            return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown));
        }
        let partitions = self.topic.partition_count();
        let new = NewTopic::new(&self.remote, partitions, TopicReplication::Fixed(-1));
        let options = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        let created = self.link.admin.create_topics([&new], &options).await?;
        let mut refused = None;
        for result in created {
            match result {
                Ok(_) => {
                    tracing::info!(link = %self.name(), remote_topic = %self.remote, partitions, "created the remote topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // Not allowed to create topics there (a link given only Write, say): the topic
                // may exist all the same, or be made by the remote's own auto-creation or an
                // operator; the metadata below says, and only its absence is an error.
                Err((_, code)) => refused = Some(code),
            }
        }
        let producer = self.link.producer();
        let remote = self.remote.clone();
        let count = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&remote), ADMIN_TIMEOUT);
            drop(producer);
            metadata.map(|m| {
                m.topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
            })
        })
        .await
        .map_err(|_| KafkaError::Canceled)??
        .filter(|&n| n > 0);
        let count = match (count, refused) {
            (Some(n), _) => n,
            // Missing, and this link may not create it: that is the reason to give.
            (None, Some(code)) => return Err(KafkaError::AdminOp(code)),
            (None, None) => {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
        };
        if let Some(code) = refused {
            tracing::debug!(link = %self.name(), remote_topic = %self.remote, error = %code, "the remote topic exists; this link may not create topics there");
        }
        known.insert(self.remote.clone(), count);
        Ok(count)
    }
}

/// Failed sends said a minute, over every link and partition.
static SEND_FAILED: LogBudget = LogBudget::new(6);

/// Errors about a record itself (or the batch it went in), which sending it again as it is
/// cannot cure.
fn refused(e: &KafkaError) -> bool {
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
