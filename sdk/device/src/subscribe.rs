//! Subscriptions: reading a topic partition on a stream of its own, on the device's connection,
//! with long-polling Fetch requests (e.g. commands sent back to devices).
//!
//! A subscription opened with a consumer group ([`crate::Device::subscribe_group`]) starts at the
//! offset the group committed for the partition, and [`Subscription::commit`] stores its
//! position there, so a device that restarts goes on after the last command it handled. The
//! commits are Kafka's own (OffsetCommit as a standalone consumer: no group membership, no
//! rebalancing), so `kafka-consumer-groups`-style tools see them.
//!
//! A position the partition does not hold (below its first kept record after retention or
//! DeleteRecords, past its end, e.g. an explicit offset too large or a topic emptied and filled
//! again) gets OFFSET_OUT_OF_RANGE from Fetch. The subscription then moves as its
//! [`OffsetReset`] says (Kafka's `auto.offset.reset`): to the partition's earliest or latest
//! offset, looked up with ListOffsets and logged at warn with how far it moved, or not at all,
//! failing [`Subscription::next`] with [`DeviceError::OffsetOutOfRange`].
//!
//! Invariants: `next_offset` is the offset after the last record handed out (or queued in
//! `ready`), so a new stream after a reconnect resumes exactly there; it moves otherwise only
//! when the broker answers OFFSET_OUT_OF_RANGE for it (then `ready` is empty). A request
//! cancelled half way (the caller dropped `next`) leaves the stream in an unknown state, so it
//! is replaced before the next request.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, GroupId, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::sync::{mpsc, oneshot};

use crate::DeviceError;
use crate::session::{decode_response, encode_request, read_frame};
use crate::worker::Cmd;

const FETCH_VERSION: i16 = 11;
const LIST_OFFSETS_VERSION: i16 = 4;
const METADATA_VERSION: i16 = 9;
const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_FETCH_VERSION: i16 = 7;
/// How long the broker holds a Fetch open while there is nothing new.
const MAX_WAIT_MS: i32 = 5_000;
/// The most record bytes one Fetch returns.
const MAX_FETCH_BYTES: i32 = 1 << 20;
/// A request unanswered this long (beyond the long-poll wait) counts as a lost connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// The ListOffsets "timestamp" asking for the partition's first kept offset.
const EARLIEST_OFFSET: i64 = -2;
/// The ListOffsets "timestamp" asking for the partition's end (the offset the next record gets).
const LATEST_OFFSET: i64 = -1;

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first record still in the log.
    Earliest,
    /// After the last record now in the log: only records written from now on.
    Latest,
    /// This offset (0 or more; a negative one is refused with [`DeviceError::InvalidOffset`]).
    /// An offset the partition does not hold (past its end, or removed by retention) is
    /// accepted, and the first read moves the subscription as its [`OffsetReset`] says.
    Offset(i64),
}

/// What a subscription does when its position is not in the partition: an explicit
/// [`StartAt::Offset`] past the end, a group's committed offset that retention or DeleteRecords
/// has removed, a topic emptied while the device was offline. Kafka's `auto.offset.reset`
/// (`earliest`, `latest`, `none`); set with [`Subscription::with_offset_reset`].
///
/// The default is [`OffsetReset::Earliest`], where Kafka's is `latest`: for commands sent to a
/// device, a lost position should cost nothing the broker still keeps. When the position fell
/// below the first kept record, `Earliest` skips only what is gone and delivers every command
/// the device has not read yet, where `Latest` would also drop those, silently. When the
/// position is past the end, `Earliest` reads the whole partition again, so a device may see
/// commands it already handled: handle commands idempotently, or check their timestamps, or
/// choose `Latest` for a topic where only what is sent from now on matters (e.g. live
/// settings that are sent again periodically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Go on from the first record the partition still keeps (Kafka's `earliest`).
    #[default]
    Earliest,
    /// Go on from the end: only records written from now on (Kafka's `latest`).
    Latest,
    /// Do not move: [`Subscription::next`] fails with [`DeviceError::OffsetOutOfRange`], on
    /// every call, until the caller subscribes again at a position it chooses (Kafka's `none`).
    Fail,
}

/// A record read by a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The record's offset in the partition.
    pub offset: i64,
    /// The record's timestamp (ms since the Unix epoch).
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// The record's Kafka headers, in order, a name as often as the producer gave it.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A stream of the records of one topic partition; see [`crate::Device::subscribe`].
pub struct Subscription {
    /// Weak, so that a subscription does not keep a dropped device's worker alive.
    tx: mpsc::WeakUnboundedSender<Cmd>,
    topic: TopicName,
    partition: i32,
    next_offset: i64,
    /// Where `next_offset` goes when the broker does not hold it.
    reset: OffsetReset,
    /// The consumer group whose committed offset this subscription started from, if any.
    group: Option<GroupId>,
    stream: Option<SubStream>,
    ready: VecDeque<Message>,
    backoff: Duration,
    /// The Fetch error last warned of, until a Fetch succeeds.
    warned: Option<i16>,
}

/// One Kafka session (QUIC stream) used for one request at a time.
struct SubStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    client_id: StrBytes,
    correlation: i32,
    /// A request was started and not finished (its future was dropped).
    dirty: bool,
}

impl SubStream {
    async fn call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, DeviceError> {
        self.dirty = true;
        self.correlation = self.correlation.wrapping_add(1);
        let frame = encode_request(req, version, self.correlation, &self.client_id)?;
        let exchange = async {
            self.send
                .write_all(&frame)
                .await
                .map_err(|e| DeviceError::Connect(e.to_string()))?;
            read_frame(&mut self.recv).await
        };
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(DeviceError::Connect("request timed out".into())),
        };
        let resp = decode_response::<R>(body, self.correlation, version)?;
        self.dirty = false;
        Ok(resp)
    }
}

impl Subscription {
    pub(crate) async fn open(
        tx: mpsc::WeakUnboundedSender<Cmd>,
        topic: &str,
        partition: i32,
        group: Option<&str>,
        start: StartAt,
    ) -> Result<Subscription, DeviceError> {
        if let StartAt::Offset(offset @ ..0) = start {
            return Err(DeviceError::InvalidOffset(offset));
        }
        let mut sub = Subscription {
            tx,
            topic: TopicName(StrBytes::from_string(topic.to_string())),
            partition,
            next_offset: -1,
            reset: OffsetReset::default(),
            group: group.map(|g| GroupId(StrBytes::from_string(g.to_string()))),
            stream: None,
            ready: VecDeque::new(),
            backoff: BACKOFF_MIN,
            warned: None,
        };
        let mut stream = sub.new_stream().await?;
        // Like Kafka consumers: Metadata first, which auto-creates the topic if allowed.
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(sub.topic.clone())),
            ]))
            .with_allow_auto_topic_creation(true);
        stream.call(&req, METADATA_VERSION).await?;
        let committed = match &sub.group {
            Some(group) => sub.committed(&mut stream, group).await?,
            None => None,
        };
        sub.next_offset = match (committed, start) {
            (Some(o), _) | (None, StartAt::Offset(o)) => o,
            (None, StartAt::Earliest) => sub.list_offset(&mut stream, EARLIEST_OFFSET).await?,
            (None, StartAt::Latest) => sub.list_offset(&mut stream, LATEST_OFFSET).await?,
        };
        sub.stream = Some(stream);
        Ok(sub)
    }

    /// This subscription, moving as `reset` says when its position is not in the partition
    /// (default [`OffsetReset::Earliest`]; see there for why).
    pub fn with_offset_reset(mut self, reset: OffsetReset) -> Subscription {
        self.reset = reset;
        self
    }

    /// The offset of the next record this subscription will yield. Before the first read it is
    /// where the subscription started, which the partition may not hold: the read then moves
    /// it as the [`OffsetReset`] says.
    pub fn position(&self) -> i64 {
        self.ready.front().map_or(self.next_offset, |m| m.offset)
    }

    /// Moves the subscription to `offset` (as a Kafka consumer's `seek`): the next read starts
    /// there, records already fetched beyond are dropped. An offset the partition does not hold
    /// moves as the [`OffsetReset`] says at the next read.
    pub fn seek(&mut self, offset: i64) -> Result<(), DeviceError> {
        if offset < 0 {
            return Err(DeviceError::InvalidOffset(offset));
        }
        self.ready.clear();
        self.next_offset = offset;
        Ok(())
    }

    /// The next record, waiting (long-polling the broker) until there is one. Connection losses
    /// are retried with backoff. A position the partition does not hold moves as the
    /// subscription's [`OffsetReset`] says (logged at warn), or with [`OffsetReset::Fail`]
    /// fails with [`DeviceError::OffsetOutOfRange`]. Fails with [`DeviceError::Broker`] when
    /// the broker refuses the read otherwise, and [`DeviceError::Closed`] once the device is
    /// gone. Cancel-safe: dropping the future loses no record.
    pub async fn next(&mut self) -> Result<Message, DeviceError> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(m);
            }
            if self.stream.as_ref().is_some_and(|s| s.dirty) {
                self.stream = None;
            }
            let mut stream = match self.stream.take() {
                Some(s) => s,
                None => match self.new_stream().await {
                    Ok(s) => s,
                    Err(DeviceError::Closed) => return Err(DeviceError::Closed),
                    Err(e) => {
                        tracing::debug!(error = %e, "subscription: no stream; retrying");
                        self.wait_backoff().await;
                        continue;
                    }
                },
            };
            match self.fetch(&mut stream).await {
                Ok(()) => self.stream = Some(stream),
                Err(DeviceError::Connect(e)) | Err(DeviceError::Protocol(e)) => {
                    tracing::debug!(error = %e, "subscription: stream lost; retrying");
                    self.wait_backoff().await;
                }
                Err(e) => {
                    self.stream = Some(stream);
                    return Err(e);
                }
            }
        }
    }

    /// Stores [`Subscription::position`] as the group's committed offset for the partition: a
    /// subscription opened later with the same group starts there. Commit after handling the
    /// records up to the position (at-least-once: a record handled but not yet committed is
    /// read again after a restart). Fails with [`DeviceError::NoGroup`] on a subscription
    /// opened without a group, and with [`DeviceError::Broker`] when the broker refuses the
    /// commit (e.g. the group is in use by consumers that joined it).
    pub async fn commit(&mut self) -> Result<(), DeviceError> {
        let group = self.group.clone().ok_or(DeviceError::NoGroup)?;
        let req = OffsetCommitRequest::default()
            .with_group_id(group)
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::default())
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(self.topic.clone())
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(self.partition)
                            .with_committed_offset(self.position())
                            .with_committed_leader_epoch(-1),
                    ]),
            ]);
        // Its own stream: the subscription's may be parked in a long-poll (or dropped mid-way).
        let mut stream = self.new_stream().await?;
        let resp = stream.call(&req, OFFSET_COMMIT_VERSION).await?;
        let parts = resp.topics.iter().flat_map(|t| t.partitions.iter());
        let part = answer_for(parts, |p| p.partition_index, self.partition, "OffsetCommit")?;
        checked(part.error_code)
    }

    /// The offset `group` committed for the partition, if it did.
    async fn committed(
        &self,
        stream: &mut SubStream,
        group: &GroupId,
    ) -> Result<Option<i64>, DeviceError> {
        let req = OffsetFetchRequest::default()
            .with_group_id(group.clone())
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(self.topic.clone())
                    .with_partition_indexes(vec![self.partition]),
            ]));
        let resp = stream.call(&req, OFFSET_FETCH_VERSION).await?;
        checked(resp.error_code)?;
        let parts = resp.topics.iter().flat_map(|t| t.partitions.iter());
        let part = answer_for(parts, |p| p.partition_index, self.partition, "OffsetFetch")?;
        checked(part.error_code)?;
        Ok((part.committed_offset >= 0).then_some(part.committed_offset))
    }

    async fn wait_backoff(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Asks the device's worker for a new stream on its connection.
    async fn new_stream(&self) -> Result<SubStream, DeviceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .upgrade()
            .ok_or(DeviceError::Closed)?
            .send(Cmd::OpenStream(reply))
            .map_err(|_| DeviceError::Closed)?;
        let ((send, recv), client_id) = rx.await.map_err(|_| DeviceError::Closed)??;
        Ok(SubStream {
            send,
            recv,
            client_id,
            correlation: 0,
            dirty: false,
        })
    }

    /// The earliest ([`EARLIEST_OFFSET`]) or latest ([`LATEST_OFFSET`]) offset of the partition.
    async fn list_offset(&self, stream: &mut SubStream, which: i64) -> Result<i64, DeviceError> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(self.topic.clone())
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(self.partition)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(which),
                    ]),
            ]);
        let resp = stream.call(&req, LIST_OFFSETS_VERSION).await?;
        let parts = resp.topics.iter().flat_map(|t| t.partitions.iter());
        let part = answer_for(parts, |p| p.partition_index, self.partition, "ListOffsets")?;
        checked(part.error_code)?;
        Ok(part.offset)
    }

    /// One long-polling Fetch from `next_offset`; its records go to `ready`.
    async fn fetch(&mut self, stream: &mut SubStream) -> Result<(), DeviceError> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(MAX_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(MAX_FETCH_BYTES)
            .with_session_epoch(-1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(self.topic.clone())
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(self.partition)
                            .with_current_leader_epoch(-1)
                            .with_fetch_offset(self.next_offset)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(MAX_FETCH_BYTES),
                    ]),
            ]);
        let resp = stream.call(&req, FETCH_VERSION).await?;
        checked(resp.error_code)?;
        let parts = resp.responses.iter().flat_map(|t| t.partitions.iter());
        let part = answer_for(parts, |p| p.partition_index, self.partition, "Fetch")?;
        match part.error_code {
            0 => {
                // Only an answered Fetch resets the backoff (an error answer grows it).
                self.warned = None;
                self.backoff = BACKOFF_MIN;
            }
            OFFSET_OUT_OF_RANGE => {
                let (log_start, log_end) = (part.log_start_offset, part.high_watermark);
                return self.reset(stream, log_start, log_end).await;
            }
            code => {
                // E.g. the topic does not exist (yet): as Kafka consumers, wait for it, asking
                // again with a growing backoff; said once at warn, again if the error changes.
                let (topic, partition) = (self.topic.0.as_str(), self.partition);
                let error = crate::error_text(code);
                if self.warned != Some(code) {
                    tracing::warn!(topic, partition, code, %error, "subscription: the broker refuses the fetch; retrying");
                    self.warned = Some(code);
                } else {
                    tracing::debug!(topic, partition, code, %error, "subscription: fetch error; retrying");
                }
                self.wait_backoff().await;
                return Ok(());
            }
        }
        if let Some(records) = part.records.clone() {
            self.take_records(records)?;
        }
        Ok(())
    }

    /// Moves `next_offset`, which the partition does not hold (it keeps `log_start` up to, not
    /// including, `log_end`, as the Fetch answer said), to where `self.reset` says.
    async fn reset(
        &mut self,
        stream: &mut SubStream,
        log_start: i64,
        log_end: i64,
    ) -> Result<(), DeviceError> {
        let which = match self.reset {
            OffsetReset::Earliest => EARLIEST_OFFSET,
            OffsetReset::Latest => LATEST_OFFSET,
            OffsetReset::Fail => {
                return Err(DeviceError::OffsetOutOfRange {
                    position: self.next_offset,
                    log_start,
                    log_end,
                });
            }
        };
        let (from, to) = (self.next_offset, self.list_offset(stream, which).await?);
        let (topic, partition, reset) = (self.topic.0.as_str(), self.partition, self.reset);
        if to != from {
            let (moving, by) = if to > from {
                ("skipping", to - from)
            } else {
                ("going back", from - to)
            };
            tracing::warn!(
                topic,
                partition,
                from,
                to,
                ?reset,
                "subscription position is not in the partition (first kept offset {log_start}, end \
                 {log_end}); {moving} {by} offsets"
            );
        } else {
            // Fetch and ListOffsets disagree (the log changed in between): ask again shortly.
            tracing::debug!(
                topic,
                partition,
                from,
                "subscription: out of range at the reset offset; retrying"
            );
            tokio::time::sleep(BACKOFF_MIN).await;
        }
        self.next_offset = to;
        Ok(())
    }

    /// Decodes the whole record batches in `data` (a fetch may end in a partial one) and queues
    /// their records from `next_offset` on.
    fn take_records(&mut self, mut data: Bytes) -> Result<(), DeviceError> {
        while data.len() >= 27 {
            let base = i64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
            let len = i32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
            let last_delta = i32::from_be_bytes(data[23..27].try_into().expect("4 bytes"));
            if len < 0 || data.len() < 12 + len as usize {
                break;
            }
            let one = data.split_to(12 + len as usize);
            let records = crate::record_batch::decode(one).map_err(DeviceError::Protocol)?;
            for r in records {
                if r.offset < self.next_offset {
                    continue;
                }
                self.ready.push_back(Message {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
            self.next_offset = self.next_offset.max(base + last_delta as i64 + 1);
        }
        Ok(())
    }
}

/// `Ok` for Kafka error code 0, else the broker's error.
fn checked(code: i16) -> Result<(), DeviceError> {
    match code {
        0 => Ok(()),
        code => Err(DeviceError::Broker {
            code,
            message: None,
        }),
    }
}

/// The answer for `partition` among the partitions of an `api` response.
fn answer_for<'a, P>(
    mut parts: impl Iterator<Item = &'a P>,
    index: impl Fn(&P) -> i32,
    partition: i32,
    api: &str,
) -> Result<&'a P, DeviceError> {
    parts
        .find(|p| index(p) == partition)
        .ok_or_else(|| DeviceError::Protocol(format!("{api} answer without the partition")))
}
