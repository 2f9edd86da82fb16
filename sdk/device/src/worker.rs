//! The background task: owns the session, batches records, produces them idempotently, keeps
//! unacknowledged batches across connection losses and re-sends them in order.
//!
//! Pipelining: up to [`MAX_IN_FLIGHT`] produce requests are outstanding on the session stream at
//! once (Kafka's `max.in.flight.requests.per.connection=5` with idempotence). The broker handles
//! a stream's requests one at a time and answers in order, so responses match `in_flight` from
//! the front. Invariants:
//! - batches are sealed, sent, acknowledged and (with a file buffer) logged in one order: the
//!   order of `in_flight` followed by `queue`;
//! - a batch keeps its sequence numbers from sealing until it is acknowledged, unless the
//!   producer id changes (all renumbered from 0) or an earlier batch of its partition is refused
//!   (shifted down);
//! - whenever a response is not a plain success, or the connection fails, the session is dropped
//!   and every unacknowledged batch goes back to `queue` in order, to be re-sent on a new
//!   connection. The broker keeps the last 5 batches of each producer, so a re-sent batch it
//!   already stored is answered as a duplicate with its original offsets. The exception is a
//!   batch the broker refused on its own (too large, or a non-retriable error): the requests in
//!   flight behind it go back to `queue` as well, but the stream stays, and their answers are
//!   read and skipped (`skip`).
//! - Until the broker has acknowledged a batch of a partition from this producer on this
//!   session, only one batch of that partition is in flight. A broker that holds no state for a
//!   producer takes any sequence number from it (as Kafka does since 2.5), so a batch sent behind
//!   one it refuses (say, as too large) would be stored ahead of it; once it knows the producer it
//!   refuses such a batch as out of order, and pipelining is safe.
//! - Metadata and InitProducerId go out only when nothing is in flight (with [`Session::call`]),
//!   skipped answers included.
//! - Connecting and that set-up run beside the loop ([`prepare`]), never inside it: while the
//!   broker is away records keep being batched, sealed and written to the file buffer, and
//!   subscriptions keep their own streams without holding up produce.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    InitProducerIdRequest, MetadataRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::buffer::{FileBuffer, Restored};
use crate::record_batch;
use crate::session::{self, Read, Session};
use crate::{Ack, DeviceConfig, DeviceError};

const PRODUCE_VERSION: i16 = 9;
const INIT_PRODUCER_ID_VERSION: i16 = 2;
const METADATA_VERSION: i16 = 9;
/// How long the broker may take to meet `acks` before answering with a timeout.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// How long opening a stream for a subscription waits for the broker's stream credit.
const OPEN_STREAM_WAIT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

// Kafka error codes handled specially.
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub(crate) const MESSAGE_TOO_LARGE: i16 = 10;
pub(crate) const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;

pub(crate) enum Cmd {
    Record {
        topic: String,
        partition: i32,
        record: Pending,
    },
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
    /// Open another stream on the device's connection (for a subscription).
    OpenStream(oneshot::Sender<Result<(Stream, StrBytes), DeviceError>>),
}

/// Both halves of a QUIC bidirectional stream.
pub(crate) type Stream = (quinn::SendStream, quinn::RecvStream);

/// A record waiting for its acknowledgement.
pub(crate) struct Pending {
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Bytes,
    /// Kafka record headers, in order (a name may be repeated).
    pub(crate) headers: Vec<(StrBytes, Option<Bytes>)>,
    pub(crate) timestamp: i64,
    /// Bytes reserved in the buffer, released when the record is acknowledged or failed.
    pub(crate) cost: usize,
    pub(crate) ack: Option<oneshot::Sender<Result<Ack, DeviceError>>>,
}

impl Pending {
    /// Bytes the record counts against the buffer when queued for `topic`.
    pub(crate) fn cost_in(&self, topic: &str) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + HEADER_OVERHEAD)
            .sum();
        topic.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + headers
            + RECORD_OVERHEAD
    }
}

/// Bytes a record counts against the buffer besides its key, value, headers and topic name.
const RECORD_OVERHEAD: usize = 64;
/// Bytes a header counts besides its key and value.
const HEADER_OVERHEAD: usize = 8;

pub(crate) type Tp = (String, i32);

/// Records of one partition still gathering (not yet given sequence numbers).
struct Open {
    records: Vec<Pending>,
    bytes: usize,
    deadline: Instant,
}

/// A sealed batch: its sequence numbers are fixed until the producer id changes.
pub(crate) struct Batch {
    pub(crate) tp: Tp,
    pub(crate) base_sequence: i32,
    pub(crate) records: Vec<Pending>,
}

impl Batch {
    /// The first half of the records and the rest, each with its own sequence numbers (the
    /// same ones as before, so the later batches are unchanged).
    fn split(mut self) -> (Batch, Batch) {
        let rest = self.records.split_off(self.records.len() / 2);
        let second = Batch {
            tp: self.tp.clone(),
            base_sequence: self.base_sequence.wrapping_add(self.records.len() as i32) & i32::MAX,
            records: rest,
        };
        (self, second)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Producer {
    pub(crate) id: i64,
    pub(crate) epoch: i16,
}

/// Asks the broker for a new idempotent producer id.
pub(crate) async fn init_producer(session: &mut Session) -> Result<Producer, DeviceError> {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(-1)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let resp = session.call(&req, INIT_PRODUCER_ID_VERSION).await?;
    if resp.error_code != 0 {
        let message = (resp.error_code == CLUSTER_AUTHORIZATION_FAILED).then(|| {
            "the device may not produce: an idempotent producer id needs Write on some topic \
             (or IdempotentWrite on the cluster) in the broker's ACLs"
                .to_string()
        });
        return Err(DeviceError::Broker {
            code: resp.error_code,
            message,
        });
    }
    Ok(Producer {
        id: resp.producer_id.0,
        epoch: resp.producer_epoch,
    })
}

/// Produce requests outstanding on the session stream at once.
pub(crate) const MAX_IN_FLIGHT: usize = 5;

/// The longest a batch whose linger has passed is held open for want of a request slot.
const MAX_HOLD: Duration = Duration::from_secs(1);

/// A produce request written to the session and not yet answered.
struct InFlight {
    correlation: i32,
    batch: Batch,
}

pub(crate) struct Worker {
    cfg: DeviceConfig,
    rx: mpsc::UnboundedReceiver<Cmd>,
    buffered: Arc<AtomicUsize>,
    session: Option<Session>,
    /// Response bytes read from the session and not yet a whole frame.
    rbuf: BytesMut,
    /// None: a new producer id must be fetched before producing.
    producer: Option<Producer>,
    next_sequence: HashMap<Tp, i32>,
    /// Topics already looked up with Metadata (which creates them when the broker allows it).
    known_topics: HashSet<String>,
    open: HashMap<Tp, Open>,
    /// Open partitions in the order their first record arrived, so batches are sealed fairly.
    open_order: VecDeque<Tp>,
    /// Sealed batches not yet sent (after `in_flight` in delivery order).
    queue: VecDeque<Batch>,
    in_flight: VecDeque<InFlight>,
    /// Partitions of which a batch has been acknowledged under the current producer id on the
    /// current session: the broker holds their sequence numbers, and they may have several
    /// batches in flight.
    confirmed: HashSet<Tp>,
    /// Correlation ids of requests still unanswered on the session stream whose batches went
    /// back to `queue` (behind a refused batch): their answers are read and skipped.
    skip: VecDeque<i32>,
    /// The file copy of the unacknowledged batches, when configured.
    file: Option<FileBuffer>,
    flushes: Vec<oneshot::Sender<()>>,
    closing: Option<oneshot::Sender<()>>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Connecting, or getting a producer id or metadata, beside the loop (the session is
    /// inside it meanwhile).
    setup: Option<Setup>,
    /// Records' bytes at which a batch of a partition is sealed where the broker refused one as
    /// too large (elsewhere `max_batch_bytes`). Per partition, as topics have limits of their
    /// own (`max.message.bytes`).
    batch_limits: HashMap<Tp, usize>,
    /// Why the broker last refused this device (a TLS or authentication failure), once warned
    /// of; cleared by a connection.
    refused: Option<String>,
    /// Subscriptions waiting for a connection to open their stream on.
    stream_waiters: Vec<oneshot::Sender<Result<(Stream, StrBytes), DeviceError>>>,
    /// The broker stopped the session stream over a request too large for it: nothing more is
    /// written on it, and it is read to its end (the answers to the requests before that one),
    /// which tells which batch it was.
    draining: bool,
    /// The session stream has ended over a request too large; the connection is still good, and
    /// the next request goes on a new stream of it.
    stream_ended: bool,
}

/// A running [`prepare`].
type Setup = Pin<Box<dyn Future<Output = Result<Prepared, DeviceError>> + Send>>;

/// A session made ready to send the head batch by [`prepare`].
struct Prepared {
    session: Session,
    /// A new connection: what the old one knew (topics, a partial response) is gone.
    reconnected: bool,
    /// A producer id when one was asked for, or the broker's refusal of one (the ACLs give the
    /// device no Write): the session is good all the same, for subscriptions.
    producer: Option<Result<Producer, DeviceError>>,
    /// The topic looked up with Metadata.
    topic: Option<String>,
}

/// Connects when `session` is none (or opens a new stream on its connection when
/// `fresh_stream`), gets a producer id when `need_producer`, and looks up `topic` with Metadata
/// (which creates it when the broker allows), in that order.
async fn prepare(
    cfg: DeviceConfig,
    session: Option<Session>,
    fresh_stream: bool,
    need_producer: bool,
    topic: Option<String>,
) -> Result<Prepared, DeviceError> {
    let session = match session {
        Some(mut s) if fresh_stream => s.reopen().await.map(|()| s).ok(),
        s => s,
    };
    let reconnected = session.is_none();
    let mut session = match session {
        Some(s) => s,
        None => Session::connect(&cfg).await?,
    };
    let mut producer = set_up(&mut session, need_producer, topic.as_deref()).await;
    if producer.is_err() && reconnected && cfg.link.zero_rtt().await == crate::ZeroRtt::Rejected {
        // The broker refused the early data (it restarted and forgot the ticket): the
        // requests sent early failed, but the connection gave a fresh ticket. Go again now,
        // rather than as a lost connection after a back-off.
        tracing::debug!("the broker refused 0-RTT; connecting again");
        session = Session::connect(&cfg).await?;
        producer = set_up(&mut session, need_producer, topic.as_deref()).await;
    }
    Ok(Prepared {
        session,
        reconnected,
        producer: producer?,
        topic,
    })
}

/// On a new session: a producer id when `need_producer`, and Metadata for `topic` (which
/// creates it when the broker allows), in that order.
async fn set_up(
    session: &mut Session,
    need_producer: bool,
    topic: Option<&str>,
) -> Result<Option<Result<Producer, DeviceError>>, DeviceError> {
    let producer = if need_producer {
        match init_producer(session).await {
            Ok(p) => Some(Ok(p)),
            Err(e @ DeviceError::Broker { code, .. }) if code == CLUSTER_AUTHORIZATION_FAILED => {
                Some(Err(e))
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some(topic) = topic {
        // Like Kafka producers: Metadata first, which auto-creates the topic if allowed.
        let req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_string())),
            ))]))
            .with_allow_auto_topic_creation(true);
        session.call(&req, METADATA_VERSION).await?;
    }
    Ok(producer)
}

/// Opens a stream on `conn` for a subscription, waiting at most [`OPEN_STREAM_WAIT`] for the
/// broker's stream credit, and answers `reply`.
fn spawn_open_stream(
    conn: quinn::Connection,
    client_id: StrBytes,
    reply: oneshot::Sender<Result<(Stream, StrBytes), DeviceError>>,
) {
    tokio::spawn(async move {
        let opened =
            match tokio::time::timeout(OPEN_STREAM_WAIT, conn.open_bi()).await {
                Ok(Ok(stream)) => Ok((stream, client_id)),
                Ok(Err(e)) => Err(session::closed_error(&e)
                    .unwrap_or_else(|| DeviceError::Connect(e.to_string()))),
                Err(_) => Err(DeviceError::NoStream),
            };
        let _ = reply.send(opened);
    });
}

/// What the worker starts from: a live session and producer (or none yet: they are got before
/// the first request), and (with a file buffer) the batches and sequence numbers a previous
/// run left unacknowledged.
pub(crate) struct Start {
    pub(crate) session: Option<Session>,
    pub(crate) producer: Option<Producer>,
    pub(crate) file: Option<FileBuffer>,
    pub(crate) restored: Restored,
}

impl Worker {
    pub(crate) fn new(
        cfg: DeviceConfig,
        rx: mpsc::UnboundedReceiver<Cmd>,
        buffered: Arc<AtomicUsize>,
        start: Start,
    ) -> Worker {
        let Start {
            session,
            producer,
            mut file,
            restored,
        } = start;
        let restored_bytes: usize = restored
            .batches
            .iter()
            .flat_map(|b| b.records.iter())
            .map(|r| r.cost)
            .sum();
        buffered.fetch_add(restored_bytes, Ordering::AcqRel);
        let mut next_sequence = restored.next_sequence;
        let mut queue = restored.batches;
        if let Some(p) = producer.filter(|p| restored.producer != Some(*p)) {
            // A new producer id: whatever the file held is numbered from 0 again.
            renumber(&mut queue, &mut next_sequence);
            if let Some(f) = file.as_mut() {
                f.producer(p);
            }
        }
        Worker {
            cfg,
            rx,
            buffered,
            session,
            rbuf: BytesMut::new(),
            producer,
            next_sequence,
            known_topics: HashSet::new(),
            open: HashMap::new(),
            open_order: VecDeque::new(),
            queue,
            in_flight: VecDeque::new(),
            confirmed: HashSet::new(),
            skip: VecDeque::new(),
            file,
            flushes: Vec::new(),
            closing: None,
            backoff: BACKOFF_MIN,
            retry_at: None,
            setup: None,
            batch_limits: HashMap::new(),
            refused: None,
            stream_waiters: Vec::new(),
            draining: false,
            stream_ended: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut senders_gone = false;
        loop {
            // Take everything already queued, without waiting.
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => self.handle(cmd).await,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        senders_gone = true;
                        break;
                    }
                }
            }
            if senders_gone {
                self.abandon();
                return;
            }
            let urgent = !self.flushes.is_empty() || self.closing.is_some();
            // One instant for sealing and for the next wake-up, so that a linger ending
            // between the two is not taken for a batch held open.
            let now = Instant::now();
            self.seal_due(now, urgent);
            if self.queue.is_empty() && self.open.is_empty() && self.in_flight.is_empty() {
                for f in self.flushes.drain(..) {
                    let _ = f.send(());
                }
                if let Some(done) = self.closing.take() {
                    if let Some(s) = self.session.take() {
                        s.close().await;
                    }
                    let _ = done.send(());
                    return;
                }
            }
            if self.can_send() {
                self.send_head().await;
                continue;
            }
            // Nothing to send now: wait for a command, a response, a linger deadline or the
            // next retry.
            let mut wake = self.next_seal(now);
            // The back-off matters only while no setup runs (one started by a subscription
            // may run past it; waking for it then would spin).
            if !self.queue.is_empty() && !self.awaiting_answers() && self.setup.is_none() {
                wake = match (wake, self.retry_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let waiting = self.awaiting_answers() || self.draining;
            let read = read_response(self.session.as_mut().filter(|_| waiting));
            let setup = async {
                match self.setup.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => senders_gone = true,
                },
                r = read => self.on_bytes(r),
                r = setup => {
                    self.setup = None;
                    self.on_prepared(r);
                }
                _ = sleep => {}
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Record {
                topic,
                partition,
                record,
            } => {
                let tp = (topic, partition);
                let linger = self.cfg.linger;
                let open = self.open.entry(tp.clone()).or_insert_with(|| Open {
                    records: Vec::new(),
                    bytes: 0,
                    deadline: Instant::now() + linger,
                });
                if open.records.is_empty() {
                    self.open_order.push_back(tp.clone());
                }
                open.bytes += record.cost;
                open.records.push(record);
                let full = open.records.len() >= self.cfg.max_batch_records
                    || open.bytes >= batch_limit(&self.batch_limits, &self.cfg, &tp);
                if full {
                    self.seal(&tp);
                }
            }
            Cmd::Flush(done) => self.flushes.push(done),
            Cmd::Close(done) => self.closing = Some(done),
            Cmd::OpenStream(reply) => match self.session.as_ref() {
                Some(s) if s.connection().close_reason().is_none() => {
                    spawn_open_stream(s.connection(), s.client_id().clone(), reply)
                }
                _ => {
                    // No live connection (a device that only subscribes notices a lost one
                    // here, as nothing reads its produce stream).
                    if self.session.is_some() {
                        self.requeue_in_flight();
                        self.drop_session();
                    }
                    // Opened once a connection is made (now, unless one is being made). A
                    // subscription needs no producer id: a device that may only read gets none.
                    self.stream_waiters.push(reply);
                    if self.setup.is_none() {
                        self.start_setup(None, false);
                    }
                }
            },
        }
    }

    /// Starts [`prepare`] beside the loop with the session (if any), asking for a producer id
    /// when there is none and `to_send`, and for `topic`'s metadata.
    fn start_setup(&mut self, topic: Option<String>, to_send: bool) {
        let session = self.session.take();
        let fresh_stream = std::mem::take(&mut self.stream_ended);
        let need_producer = to_send && self.producer.is_none();
        self.setup = Some(Box::pin(prepare(
            self.cfg.clone(),
            session,
            fresh_stream,
            need_producer,
            topic,
        )));
    }

    /// The end of a [`prepare`] run.
    fn on_prepared(&mut self, prepared: Result<Prepared, DeviceError>) {
        let p = match prepared {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, DeviceError::Refused(_) | DeviceError::Tls(_)) {
                    // The device's identity or trust is wrong, not the network: said once at
                    // warn (and again if the reason changes), as retrying will not mend it.
                    let reason = e.to_string();
                    if self.refused.as_ref() != Some(&reason) {
                        tracing::warn!(error = %e, "the broker refuses this device; buffering and trying again");
                        self.refused = Some(reason);
                    } else {
                        tracing::info!(error = %e, "the broker refuses this device; buffering");
                    }
                } else {
                    tracing::info!(error = %e, "cannot reach the broker; buffering");
                }
                for w in self.stream_waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
                self.lose_session();
                return;
            }
        };
        if p.reconnected {
            tracing::info!(server = %self.cfg.server, "connected to the broker");
            self.refused = None;
            self.rbuf.clear();
            // The broker may have lost topics (a wiped data dir): look them up again.
            self.known_topics.clear();
        }
        // Connected: whatever back-off an earlier failure set no longer applies.
        self.retry_at = None;
        match p.producer {
            Some(Ok(producer)) => self.new_producer(producer),
            Some(Err(e)) => {
                // The ACLs give this device no producer id: its sends wait, buffered, and it
                // asks again after a back-off; the connection and its subscriptions go on.
                let reason = e.to_string();
                if self.refused.as_ref() != Some(&reason) {
                    tracing::warn!(error = %e, "the broker does not let this device produce; buffering and asking again");
                    self.refused = Some(reason);
                }
                self.back_off();
            }
            None => {}
        }
        if let Some(topic) = p.topic {
            self.known_topics.insert(topic);
        }
        for w in self.stream_waiters.drain(..) {
            spawn_open_stream(p.session.connection(), p.session.client_id().clone(), w);
        }
        self.session = Some(p.session);
    }

    /// Seals the open batches whose linger has passed (all of them when `all`), oldest first.
    ///
    /// While connected, a batch whose linger has passed is sealed only when a request slot is
    /// free for it (fewer than [`MAX_IN_FLIGHT`] batches unanswered or sealed and waiting to
    /// go); until then it stays open and keeps taking records, as in Kafka's producers.
    /// So when the broker or the link is slow, a device sends fewer, larger requests instead of
    /// a queue of small ones, each a round trip. A batch is sealed regardless once it has
    /// waited [`MAX_HOLD`] past its linger, so that its records reach the buffer file.
    fn seal_due(&mut self, now: Instant, all: bool) {
        let mut room = if self.session.is_some() {
            MAX_IN_FLIGHT.saturating_sub(self.in_flight.len() + self.skip.len() + self.queue.len())
        } else {
            usize::MAX
        };
        let due: Vec<Tp> = self
            .open_order
            .iter()
            .filter(|tp| {
                all || self.open.get(*tp).is_some_and(|o| {
                    let due = o.deadline <= now && (room > 0 || o.deadline + MAX_HOLD <= now);
                    if due {
                        room = room.saturating_sub(1);
                    }
                    due
                })
            })
            .cloned()
            .collect();
        for tp in due {
            self.seal(&tp);
        }
    }

    /// When the loop must next look at the open batches: the earliest linger deadline still
    /// ahead, or for a batch held open past it, when it must be sealed regardless.
    fn next_seal(&self, now: Instant) -> Option<Instant> {
        self.open
            .values()
            .map(|o| {
                if o.deadline > now {
                    o.deadline
                } else {
                    o.deadline + MAX_HOLD
                }
            })
            .min()
    }

    /// Turns the open records of `tp` into a batch with the next sequence numbers.
    fn seal(&mut self, tp: &Tp) {
        let Some(open) = self.open.remove(tp) else {
            return;
        };
        self.open_order.retain(|t| t != tp);
        if open.records.is_empty() {
            return;
        }
        let seq = self.next_sequence.entry(tp.clone()).or_insert(0);
        let base_sequence = *seq;
        *seq = seq.wrapping_add(open.records.len() as i32) & i32::MAX;
        let batch = Batch {
            tp: tp.clone(),
            base_sequence,
            records: open.records,
        };
        if let Some(f) = self.file.as_mut() {
            f.sealed(&batch);
        }
        self.queue.push_back(batch);
    }

    /// Whether the head of `queue` may be sent now: there is room in flight, no back-off, and
    /// if something is in flight, nothing must be set up first (connection, producer id,
    /// metadata), since those requests wait for an idle stream.
    fn can_send(&self) -> bool {
        let Some(head) = self.queue.front() else {
            return false;
        };
        if self.setup.is_some()
            || self.draining
            || self.in_flight.len() + self.skip.len() >= MAX_IN_FLIGHT
            || self.retry_at.is_some_and(|t| t > Instant::now())
        {
            return false;
        }
        if !self.confirmed.contains(&head.tp)
            && self.in_flight.iter().any(|f| f.batch.tp == head.tp)
        {
            return false;
        }
        !self.awaiting_answers()
            || (self.session.is_some()
                && self.producer.is_some()
                && self.known_topics.contains(&head.tp.0))
    }

    /// Whether requests on the session stream are unanswered (in flight, or to be skipped).
    fn awaiting_answers(&self) -> bool {
        !self.in_flight.is_empty() || !self.skip.is_empty()
    }

    /// Writes the produce request of the oldest unsent batch and moves it in flight; first, if
    /// there is no session, producer id or metadata for its topic, starts getting them (the
    /// batch goes once they are there).
    async fn send_head(&mut self) {
        self.retry_at = None;
        let Some(topic) = self.queue.front().map(|b| b.tp.0.clone()) else {
            return;
        };
        let Some(producer) = self.producer.filter(|_| {
            self.session.is_some() && !self.stream_ended && self.known_topics.contains(&topic)
        }) else {
            let lookup =
                (!self.known_topics.contains(&topic) || self.session.is_none()).then_some(topic);
            self.start_setup(lookup, true);
            return;
        };
        let (Some(batch), Some(session)) = (self.queue.front(), self.session.as_mut()) else {
            return;
        };
        let req = produce_request(
            batch,
            producer,
            self.cfg.acks.code(),
            self.cfg.compression.codec(),
        );
        let written = match session.request_frame(&req, PRODUCE_VERSION) {
            Ok((correlation, frame)) => session.write_frame(&frame).await.map(|()| correlation),
            Err(e) => Err(e),
        };
        match written {
            Ok(correlation) => {
                let batch = self.queue.pop_front().expect("head batch");
                self.in_flight.push_back(InFlight { correlation, batch });
            }
            // The broker stopped the stream over a request too large: this one, or one in
            // flight. Which one shows once the answers to those before it are read.
            Err(DeviceError::Broker { code, .. }) if code == MESSAGE_TOO_LARGE => {
                self.draining = true;
            }
            Err(e) => {
                tracing::info!(error = %e, "connection to the broker lost; buffering");
                self.lose_session();
            }
        }
    }

    /// Bytes (or the end) read from the session: answers every whole response frame.
    fn on_bytes(&mut self, read: Result<Read, DeviceError>) {
        match read {
            Ok(Read::Data(bytes)) => self.rbuf.extend_from_slice(&bytes),
            Ok(Read::Ended { too_large: true }) if !self.skip.is_empty() => {
                // The refused request may be one whose batch already went back to the queue
                // (behind an earlier refusal): which one is not known. Everything goes again on
                // a new session, where the refusal comes again and is blamed right.
                tracing::info!("the broker refused a request as over its max_request_bytes");
                self.lose_session();
                return;
            }
            Ok(Read::Ended { too_large: true }) => {
                // The broker answered every request before the one it refused: that is the
                // oldest one in flight, or, if all were answered, the one whose writing it
                // stopped.
                let refused = match self.in_flight.pop_front() {
                    Some(f) => Some(f.batch),
                    None => self.queue.pop_front(),
                };
                self.requeue_in_flight();
                // The connection is fine: the next request opens a new stream on it.
                self.draining = false;
                self.stream_ended = true;
                if let Some(batch) = refused {
                    tracing::info!(
                        records = batch.records.len(),
                        "the broker refused a request as over its max_request_bytes"
                    );
                    self.too_large(batch);
                }
                return;
            }
            Ok(Read::Ended { too_large: false }) => {
                tracing::info!("the broker ended the session; buffering");
                self.lose_session();
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "connection to the broker lost; buffering");
                self.lose_session();
                return;
            }
        }
        loop {
            let body = match session::split_frame(&mut self.rbuf) {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "bad response from the broker");
                    self.lose_session();
                    return;
                }
            };
            if self
                .skip
                .front()
                .is_some_and(|&c| body.starts_with(&c.to_be_bytes()))
            {
                // The answer to a request whose batch went back to the queue.
                self.skip.pop_front();
                continue;
            }
            let Some(head) = self.in_flight.front() else {
                tracing::warn!("a response nothing waits for");
                self.lose_session();
                return;
            };
            match session::decode_response::<ProduceRequest>(
                body,
                head.correlation,
                PRODUCE_VERSION,
            ) {
                Ok(resp) => self.on_response(resp),
                Err(e) => {
                    tracing::warn!(error = %e, "bad produce response");
                    self.lose_session();
                    return;
                }
            }
        }
    }

    /// Handles the response to the oldest request in flight.
    fn on_response(&mut self, resp: ProduceResponse) {
        let Some(head) = self.in_flight.front() else {
            return;
        };
        let tp = &head.batch.tp;
        let part = resp
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == tp.0)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == tp.1);
        let Some(part) = part else {
            tracing::warn!("produce response without the batch's partition");
            self.lose_session();
            return;
        };
        let (code, base_offset) = (part.error_code, part.base_offset);
        let message = part.error_message.as_ref().map(|m| m.to_string());
        if code != 0 && code != DUPLICATE_SEQUENCE_NUMBER {
            // The broker may have lost the producer's state for it (say, the topic was deleted
            // and made again): one batch at a time again until one is acknowledged.
            let tp = tp.clone();
            self.confirmed.remove(&tp);
        }
        match code {
            0 | DUPLICATE_SEQUENCE_NUMBER => {
                self.backoff = BACKOFF_MIN;
                let batch = self.in_flight.pop_front().expect("head batch").batch;
                self.confirmed.insert(batch.tp.clone());
                let partition = batch.tp.1;
                self.finish(batch, false, |i| {
                    Ok(Ack {
                        partition,
                        offset: if base_offset >= 0 {
                            base_offset + i as i64
                        } else {
                            -1
                        },
                    })
                });
            }
            OUT_OF_ORDER_SEQUENCE_NUMBER
            | UNKNOWN_PRODUCER_ID
            | INVALID_PRODUCER_EPOCH
            | INVALID_PRODUCER_ID_MAPPING => {
                tracing::warn!(
                    code,
                    "the broker no longer knows this producer's sequence; taking a new producer \
                     id (a batch stored before the outage may be written twice)"
                );
                self.producer = None;
                // The later requests in flight carry the old producer: start over.
                self.requeue_in_flight();
                self.drop_session();
            }
            // Like Kafka producers: a batch of several records that is too large for the broker
            // (its max_message_bytes) is sent again in two halves; a single record fails.
            MESSAGE_TOO_LARGE
                if self
                    .in_flight
                    .front()
                    .is_some_and(|f| f.batch.records.len() > 1) =>
            {
                let batch = self.in_flight.pop_front().expect("head batch").batch;
                tracing::info!(
                    records = batch.records.len(),
                    "the broker refused a batch as too large"
                );
                self.behind_a_refusal();
                self.too_large(batch);
            }
            // Retriable in Kafka (metadata may be stale), but this broker is the only one: the
            // topic does not exist and cannot be created, so the batch fails.
            c if c != UNKNOWN_TOPIC_OR_PARTITION
                && ResponseError::try_from_code(c).is_some_and(|e| e.is_retriable()) =>
            {
                tracing::info!(code = c, "retriable produce error; retrying");
                self.lose_session();
            }
            c => {
                // The broker did not store the batch, so later batches of the partition move
                // down to its sequence numbers; those already sent carry the old ones and are
                // sent again on a new session.
                let batch = self.in_flight.pop_front().expect("head batch").batch;
                self.behind_a_refusal();
                self.refuse(batch, c, message);
            }
        }
    }

    /// Like Kafka producers: a batch of several records that is too large for the broker is
    /// sent again in two halves (with the same sequence numbers, so later batches are
    /// unchanged); a single record fails with `MESSAGE_TOO_LARGE`. `batch` is the oldest
    /// unacknowledged one, already out of `in_flight`, with the later ones back in `queue`.
    fn too_large(&mut self, batch: Batch) {
        if batch.records.len() < 2 {
            return self.refuse(
                batch,
                MESSAGE_TOO_LARGE,
                Some("the reading alone is over the topic's max.message.bytes".into()),
            );
        }
        // From now on the partition's batches hold at most half as much: those sealed later,
        // and those already queued or gathering, which would be refused as well (each refusal
        // costs a round trip). Other partitions keep theirs: a topic may have a lower
        // `max.message.bytes` than the rest.
        let bytes: usize = batch.records.iter().map(|r| r.cost).sum();
        let tp = batch.tp.clone();
        let limit = batch_limit(&self.batch_limits, &self.cfg, &tp)
            .min(bytes / 2)
            .max(1);
        self.batch_limits.insert(tp.clone(), limit);
        // Records still gathering under the old size are sealed now, to be cut with the rest.
        if self.open.get(&tp).is_some_and(|o| o.bytes > limit) {
            self.seal(&tp);
        }
        // Only this partition's batches are cut. Another partition's batch may have been stored
        // already (sent behind the refused one): sent again whole it is answered as a duplicate,
        // while its halves would not match and be refused as out of order.
        let backlog = std::mem::take(&mut self.queue);
        for b in std::iter::once(batch).chain(backlog) {
            if b.tp == tp {
                split_down(b, limit, &mut self.queue);
            } else {
                self.queue.push_back(b);
            }
        }
        if let (Some(f), Some(p)) = (self.file.as_mut(), self.producer) {
            f.rewrite(p, &self.next_sequence, self.queue.iter());
        }
    }

    /// Fails `batch`, which the broker did not store (Kafka error `code`): later batches of its
    /// partition move down to its sequence numbers. `batch` is the oldest unacknowledged one,
    /// with the later ones back in `queue`.
    fn refuse(&mut self, batch: Batch, code: i16, message: Option<String>) {
        give_back_sequences(&batch, &mut self.queue, &mut self.next_sequence);
        self.finish(batch, true, |_| {
            Err(DeviceError::Broker {
                code,
                message: message.clone(),
            })
        });
    }

    /// The broker refused the oldest batch in flight, and did not store it. Later requests
    /// already sent carry sequence numbers it will now refuse (or, for other partitions, may be
    /// stored): their batches go back to `queue`, to be sent again after the refused one is
    /// split or failed, on the same stream; their answers are skipped. (One it stored comes back
    /// as a duplicate, with the offsets first assigned.) While the broker is stopping the stream
    /// over a request too large (`draining`), the batch being written must stay the one the
    /// stream's end is blamed on: everything goes again on a new session instead.
    fn behind_a_refusal(&mut self) {
        if self.draining {
            self.requeue_in_flight();
            self.drop_session();
            return;
        }
        while let Some(f) = self.in_flight.pop_back() {
            self.skip.push_front(f.correlation);
            self.queue.push_front(f.batch);
        }
    }

    /// Puts every batch in flight back at the front of `queue`, in order, for a new stream.
    fn requeue_in_flight(&mut self) {
        while let Some(f) = self.in_flight.pop_back() {
            self.queue.push_front(f.batch);
        }
        self.skip.clear();
        self.rbuf.clear();
    }

    /// The session failed: drop it, keep every unacknowledged batch for the next one, back off.
    fn lose_session(&mut self) {
        self.requeue_in_flight();
        self.drop_session();
        self.back_off();
    }

    /// Drops the session (closing its connection); the next request makes a new one.
    fn drop_session(&mut self) {
        self.session = None;
        self.confirmed.clear();
        self.skip.clear();
        self.draining = false;
        self.stream_ended = false;
    }

    /// A new producer id restarts every partition at sequence 0; buffered batches are
    /// renumbered in order.
    fn new_producer(&mut self, p: Producer) {
        self.producer = Some(p);
        self.confirmed.clear();
        renumber(&mut self.queue, &mut self.next_sequence);
        if let Some(f) = self.file.as_mut() {
            f.producer(p);
        }
    }

    fn back_off(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Releases a batch's buffer bytes and tells each record's sender its result. The batch is
    /// the oldest unacknowledged one; `failed` says the broker refused it.
    fn finish(
        &mut self,
        batch: Batch,
        failed: bool,
        result: impl Fn(usize) -> Result<Ack, DeviceError>,
    ) {
        if let Some(f) = self.file.as_mut() {
            f.done(failed);
            if let Some(p) = self.producer {
                let pending = self
                    .in_flight
                    .iter()
                    .map(|x| &x.batch)
                    .chain(self.queue.iter());
                f.compact_if_due(p, &self.next_sequence, pending);
            }
        }
        for (i, r) in batch.records.into_iter().enumerate() {
            self.buffered.fetch_sub(r.cost, Ordering::AcqRel);
            if let Some(ack) = r.ack {
                let _ = ack.send(result(i));
            }
        }
    }

    /// The device was dropped: fail everything still held (with a file buffer, the records
    /// stay in the file and a later device on it delivers them).
    fn abandon(&mut self) {
        self.seal_due(Instant::now(), true);
        self.requeue_in_flight();
        while let Some(b) = self.queue.pop_front() {
            for r in b.records {
                self.buffered.fetch_sub(r.cost, Ordering::AcqRel);
                if let Some(ack) = r.ack {
                    let _ = ack.send(Err(DeviceError::Closed));
                }
            }
        }
        if let Some(f) = self.file.as_mut() {
            f.sync();
        }
    }
}

/// The bytes of records at which a batch of `tp` is sealed.
fn batch_limit(limits: &HashMap<Tp, usize>, cfg: &DeviceConfig, tp: &Tp) -> usize {
    limits
        .get(tp)
        .copied()
        .unwrap_or(cfg.max_batch_bytes)
        .max(1)
}

/// Appends `batch` to `out` in halves, and those in halves, until each part's records count at
/// most `limit` bytes or it is a single record. The parts keep their sequence numbers.
fn split_down(batch: Batch, limit: usize, out: &mut VecDeque<Batch>) {
    let bytes: usize = batch.records.iter().map(|r| r.cost).sum();
    if bytes <= limit || batch.records.len() < 2 {
        out.push_back(batch);
        return;
    }
    let (first, second) = batch.split();
    split_down(first, limit, out);
    split_down(second, limit, out);
}

/// Reads response bytes from `session`; never resolves without one.
async fn read_response(session: Option<&mut Session>) -> Result<Read, DeviceError> {
    match session {
        Some(s) => s.read_chunk().await,
        None => std::future::pending().await,
    }
}

/// Numbers the queued batches from sequence 0 per partition, in queue order (a new producer id).
pub(crate) fn renumber(queue: &mut VecDeque<Batch>, next_sequence: &mut HashMap<Tp, i32>) {
    next_sequence.clear();
    for b in queue.iter_mut() {
        let seq = next_sequence.entry(b.tp.clone()).or_insert(0);
        b.base_sequence = *seq;
        *seq = seq.wrapping_add(b.records.len() as i32) & i32::MAX;
    }
}

/// `failed` was refused and not stored: the later batches of its partition take over its
/// sequence numbers.
pub(crate) fn give_back_sequences(
    failed: &Batch,
    queue: &mut VecDeque<Batch>,
    next_sequence: &mut HashMap<Tp, i32>,
) {
    let n = failed.records.len() as i32;
    for later in queue.iter_mut().filter(|b| b.tp == failed.tp) {
        later.base_sequence = later.base_sequence.wrapping_sub(n) & i32::MAX;
    }
    if let Some(s) = next_sequence.get_mut(&failed.tp) {
        *s = s.wrapping_sub(n) & i32::MAX;
    }
}

fn produce_request(
    batch: &Batch,
    producer: Producer,
    acks: i16,
    compression: Compression,
) -> ProduceRequest {
    let records = batch.records.iter().map(|r| record_batch::Out {
        key: r.key.as_deref(),
        value: &r.value,
        headers: &r.headers,
        timestamp: r.timestamp,
    });
    let writer = record_batch::Writer {
        producer_id: producer.id,
        producer_epoch: producer.epoch,
        base_sequence: batch.base_sequence,
    };
    let records = record_batch::encode(records, writer, compression)
        .expect("a batch holds a record, and encodes with every codec the crate is built with");
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(PRODUCE_TIMEOUT_MS)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(batch.tp.0.clone())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(batch.tp.1)
                        .with_records(Some(records)),
                ]),
        ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn batch(topic: &str, base_sequence: i32, n: usize) -> Batch {
        Batch {
            tp: (topic.to_string(), 0),
            base_sequence,
            records: (0..n)
                .map(|i| Pending {
                    key: Some(Bytes::from_static(b"k")),
                    value: Bytes::from(format!("v{i}")),
                    headers: Vec::new(),
                    timestamp: 1_700_000_000_000 + i as i64,
                    cost: 10,
                    ack: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_is_one_record_batch_with_the_producer_and_its_sequences() {
        let b = batch("t", 40, 5);
        let req = produce_request(&b, Producer { id: 7, epoch: 2 }, -1, Compression::None);
        assert_eq!(req.acks, -1);
        let mut bytes = req.topic_data[0].partition_data[0].records.clone().unwrap();
        // One batch, not one per record: the first batch's length (after base offset and the
        // length field) covers all the bytes.
        let batch_length = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(12 + batch_length, bytes.len(), "one record batch");
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        let records = &set.records;
        assert_eq!(records.len(), 5);
        for (i, r) in records.iter().enumerate() {
            assert_eq!((r.producer_id, r.producer_epoch), (7, 2));
            assert_eq!(r.sequence, 40 + i as i32);
            assert_eq!(r.value.as_deref(), Some(format!("v{i}").as_bytes()));
        }
    }

    #[test]
    fn a_new_producer_renumbers_buffered_batches_in_order() {
        let mut q: VecDeque<Batch> =
            [batch("a", 10, 3), batch("b", 4, 2), batch("a", 13, 4)].into();
        let mut next = HashMap::from([(("a".to_string(), 0), 17), (("b".to_string(), 0), 6)]);
        renumber(&mut q, &mut next);
        let seqs: Vec<i32> = q.iter().map(|b| b.base_sequence).collect();
        assert_eq!(seqs, [0, 0, 3]);
        assert_eq!(next[&("a".to_string(), 0)], 7);
        assert_eq!(next[&("b".to_string(), 0)], 2);
    }

    #[test]
    fn a_refused_batch_gives_its_sequences_to_the_later_ones() {
        let failed = batch("a", 10, 3);
        let mut q: VecDeque<Batch> = [batch("b", 4, 2), batch("a", 13, 4)].into();
        let mut next = HashMap::from([(("a".to_string(), 0), 17), (("b".to_string(), 0), 6)]);
        give_back_sequences(&failed, &mut q, &mut next);
        let seqs: Vec<i32> = q.iter().map(|b| b.base_sequence).collect();
        assert_eq!(seqs, [4, 10]);
        assert_eq!(next[&("a".to_string(), 0)], 14);
        assert_eq!(next[&("b".to_string(), 0)], 6);
    }

    #[test]
    fn a_batch_is_split_down_to_the_limit_keeping_its_sequences_and_order() {
        let mut out = VecDeque::new();
        // Ten records of 10 bytes, at most 25 bytes a part.
        split_down(batch("a", 7, 10), 25, &mut out);
        let parts: Vec<(i32, usize)> = out
            .iter()
            .map(|b| (b.base_sequence, b.records.len()))
            .collect();
        assert_eq!(parts, [(7, 2), (9, 1), (10, 2), (12, 2), (14, 1), (15, 2)]);
        let values: Vec<_> = out
            .iter()
            .flat_map(|b| &b.records)
            .map(|r| r.value.clone())
            .collect();
        let want: Vec<_> = (0..10).map(|i| Bytes::from(format!("v{i}"))).collect();
        assert_eq!(values, want);
        // A batch within the limit, and a single record over it, stay whole.
        let mut out = VecDeque::new();
        split_down(batch("b", 0, 2), 25, &mut out);
        split_down(batch("c", 0, 1), 5, &mut out);
        assert_eq!(
            out.iter().map(|b| b.records.len()).collect::<Vec<_>>(),
            [2, 1]
        );
    }
}
