//! # runnel-device
//!
//! The device client of Runnel: produce readings to a Runnel broker over
//! QUIC (`docs/quic.md`) with batching, idempotent delivery and a bounded offline buffer.
//!
//! - [`Device::connect`] opens a QUIC connection (TLS 1.3, ALPN `runnel`), trusting the broker by
//!   a pinned certificate fingerprint or a CA ([`Trust`]), and gets an idempotent producer id.
//!   [`Device::start`] does the same in the background, for a device that may start while the
//!   broker is unreachable.
//! - [`Device::send`] queues a record and resolves with its [`Ack`] (partition and offset) once
//!   the broker has stored it. Records are batched per (topic, partition) for
//!   [`DeviceConfig::linger`] or up to [`DeviceConfig::max_batch_records`] or
//!   [`DeviceConfig::max_batch_bytes`]. A batch the broker refuses as too large
//!   (`MESSAGE_TOO_LARGE`, over its `max_message_bytes`) is sent again in halves, as Kafka
//!   producers do; a single record too large for it fails with [`DeviceError::Broker`].
//! - Records not yet acknowledged stay in an in-memory buffer bounded by
//!   [`DeviceConfig::buffer_limit_bytes`]; beyond it `send` fails at once with
//!   [`DeviceError::BufferFull`]. When the connection drops, the device reconnects with backoff
//!   (100 ms doubling to 5 s) and re-sends the buffered batches in order with the same producer
//!   id, epoch and sequence numbers, so the broker drops any it already stored.
//! - [`Record`] adds Kafka record headers, a partition or a timestamp of the record's own
//!   ([`Device::send_record`], [`Device::enqueue_record`]); subscriptions hand the headers back
//!   in [`Message::headers`].
//!
//! ## Delivery guarantee
//!
//! Exactly once per record into the log, in order per partition, as long as the broker still
//! knows the device's producer id. If the broker has forgotten it (answers
//! `UNKNOWN_PRODUCER_ID` or `OUT_OF_ORDER_SEQUENCE_NUMBER`, e.g. after a very long outage or
//! retention removed the producer's records), the device takes a new producer id and re-sends
//! its buffered batches under it: a batch the broker had stored but whose acknowledgement was
//! lost is then written a second time (at-least-once for that batch).
//!
//! Without [`DeviceConfig::buffer_file`] the buffer lives in memory only: records buffered when
//! the device process exits are lost. With it, unacknowledged batches are also kept in that file
//! (with the producer id, epoch and sequence numbers) and a device started again on the file
//! delivers them, in order and without duplicates (see `buffer.rs` for the format and
//! durability). A device started on the file keeps every reading in it, even beyond
//! [`DeviceConfig::buffer_limit_bytes`] (e.g. a file written under a larger limit): they count
//! against the limit, so new sends fail with [`DeviceError::BufferFull`] until enough of the
//! backlog is acknowledged.
//!
//! Up to 5 produce requests are in flight at once on the session stream (like Kafka's
//! `max.in.flight.requests.per.connection=5` with idempotence); the sequence numbers keep them in
//! order. On a lost connection everything unacknowledged is re-sent in order; when the broker
//! refuses one batch (too large, or for good), the batches sent behind it go again on the same
//! stream (the broker answers those it had stored as duplicates, with their offsets).
//!
//! [`Device::subscribe`] reads a topic (e.g. commands sent back to devices) on its own stream of
//! the same connection with long-polling Fetch requests. [`Device::subscribe_group`] starts at
//! the offset a consumer group committed, and [`Subscription::commit`] stores the position there,
//! so a restarted device goes on after the last command it handled. A position the partition
//! does not hold (below its first kept record after retention or DeleteRecords, or past its end)
//! moves as the subscription's [`OffsetReset`] says (Kafka's `auto.offset.reset`): by default
//! to the first record still kept, so no command the broker keeps is skipped.
//!
//! ## Identity, datagrams, 0-RTT
//!
//! - [`DeviceConfig::identity`]: a client certificate (mutual TLS) or a token (SASL PLAIN), for
//!   brokers whose `[listeners.quic] client_auth` asks for one. A refused device gets
//!   [`DeviceError::Refused`] or, for a certificate the broker does not accept, a
//!   [`DeviceError::Tls`] naming the TLS alert.
//! - [`Device::send_datagram`]: a fire-and-forget reading in one QUIC datagram: no
//!   acknowledgement, no retry, no buffering; it may be lost.
//! - 0-RTT: a device that reconnects to a broker it has talked to (with the same
//!   [`DeviceConfig`] or a clone of it) sends its first requests with the handshake
//!   ([`DeviceConfig::zero_rtt`], [`Device::zero_rtt`]). Only replay-safe requests travel that
//!   way: authentication, metadata, and idempotent produce (docs/quic.md).

mod buffer;
mod datagram;
mod link;
mod record;
mod record_batch;
mod session;
mod subscribe;
mod worker;

pub use link::ZeroRtt;
pub use record::Record;
pub use subscribe::{Message, OffsetReset, StartAt, Subscription};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::worker::{Cmd, Pending};

/// How the device decides that it talks to the right broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Accept only the certificate whose SHA-256 fingerprint is this (`AB:CD:...`, 32 hex pairs
    /// joined by `:`, case-insensitive; the broker logs it at start). The TLS handshake
    /// signature is still checked, so only the holder of the certificate's key passes.
    Fingerprint(String),
    /// Verify the broker's certificate chain and name ([`DeviceConfig::server_name`]) against
    /// the CA certificates in this PEM file.
    CaPem(PathBuf),
}

/// How the device proves who it is (the broker's `[listeners.quic] client_auth`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Identity {
    /// Nothing: the broker sees `User:ANONYMOUS` (`client_auth = "none"`).
    #[default]
    None,
    /// A client certificate in the TLS handshake (`client_auth = "mtls"`): PEM files of the
    /// certificate chain (leaf first, signed by the broker's `client_ca`) and its private key.
    /// The broker's principal for the device is `User:<CN of the certificate>`.
    Certificate {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key of the certificate.
        key: PathBuf,
    },
    /// A token (`client_auth = "token"`), presented with SASL PLAIN on connect. `device` is the
    /// device name the broker's token file gives the token (or empty to let the token name it);
    /// the principal is `User:<device>`.
    Token {
        /// The device name (SASL user name).
        device: String,
        /// The secret token (SASL password).
        token: String,
    },
}

/// What acknowledgement the broker sends before a record counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// The broker answers once the record is written under its `acks=all` rules (`acks=-1`).
    All,
    /// The broker answers once the leader has written the record (`acks=1`).
    Leader,
}

impl Acks {
    fn code(self) -> i16 {
        match self {
            Acks::All => -1,
            Acks::Leader => 1,
        }
    }
}

/// How the device compresses its batches (Kafka's `compression.type`). The broker stores them
/// as sent and every Kafka consumer decompresses them; over a metered or slow uplink this trades
/// a little device CPU for fewer bytes.
///
/// A batch is compressed as a whole, so the gain grows with the readings in a batch (rate times
/// [`DeviceConfig::linger`]): a batch of one 100-byte JSON reading shrinks by a tenth or so,
/// a batch of hundreds several times (5,000 readings of 200 bytes, 1.08 MB: zstd 35 KB, gzip
/// 61 KB, lz4 87 KB, snappy 124 KB). Datagrams are never compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Uncompressed (the default).
    #[default]
    None,
    /// Smaller than lz4 and snappy, slower than both; every Kafka client reads it.
    Gzip,
    /// The cheapest to compress, the least compression.
    Snappy,
    /// Nearly as cheap as snappy, and smaller.
    Lz4,
    /// The smallest batches, at more CPU than lz4 (Kafka 2.1+ consumers).
    Zstd,
}

impl Compression {
    fn codec(self) -> kafka_protocol::records::Compression {
        use kafka_protocol::records::Compression as C;
        match self {
            Compression::None => C::None,
            Compression::Gzip => C::Gzip,
            Compression::Snappy => C::Snappy,
            Compression::Lz4 => C::Lz4,
            Compression::Zstd => C::Zstd,
        }
    }
}

/// Settings of a [`Device`].
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The broker's QUIC listener (`[listeners.quic].address`).
    pub server: SocketAddr,
    /// The TLS server name (SNI); with [`Trust::CaPem`] the certificate must name it.
    pub server_name: String,
    /// How the broker's certificate is checked.
    pub trust: Trust,
    /// The Kafka client id sent with every request.
    pub client_id: String,
    /// How long a record may wait for more records to share its batch. While 5 batches are
    /// unanswered or waiting to be sent, the batch keeps taking records past it until one is
    /// answered (at most a second more).
    pub linger: Duration,
    /// A batch is sent as soon as it holds this many records (at least 1).
    pub max_batch_records: usize,
    /// A batch is sent as soon as its records hold this many bytes (default 64 KiB). A batch the
    /// broker refuses as too large (over the topic's `max.message.bytes`, or its request over
    /// the broker's `max_request_bytes`) is split, and that partition's later batches are kept
    /// to half its size for the rest of the device's life.
    pub max_batch_bytes: usize,
    /// The most bytes of records (keys, values, topic names and a small per-record overhead) the
    /// device holds before the broker acknowledges them; sends beyond it fail with
    /// [`DeviceError::BufferFull`].
    pub buffer_limit_bytes: usize,
    /// The acknowledgement the broker must give.
    pub acks: Acks,
    /// How batches are compressed. Default [`Compression::None`].
    pub compression: Compression,
    /// Also keep unacknowledged records in this file (append-only, compacted as it goes), so
    /// that records buffered when the process exits are delivered by the next device started
    /// on the file. One device uses a file at a time (`<file>.lock`). A record reaches the file
    /// when its batch is sealed: after `linger`, a little later while the device works through
    /// a burst, or up to a second later while 5 batches are unanswered, so the last records
    /// queued before a crash may be missing; call [`Device::flush`] or [`Device::close`] before
    /// a planned exit.
    pub buffer_file: Option<PathBuf>,
    /// With a buffer file: sync every write to disk (survives power loss; one disk flush per
    /// batch and per acknowledgement). Without it, writes survive the process but not the OS.
    pub buffer_file_fsync: bool,
    /// How the device proves who it is. Default [`Identity::None`].
    pub identity: Identity,
    /// Resume with 0-RTT when a TLS session ticket from this broker is at hand, so the first
    /// requests of a reconnect leave without waiting a round trip. Default true.
    pub zero_rtt: bool,
    /// How often a quiet connection sends a keep-alive, so that the broker's idle timeout
    /// (`listeners.quic.idle_timeout`, default 30 s) does not close it. Keep it under a third
    /// of that timeout; each costs a small packet (battery and data on a cellular link). `None`:
    /// no keep-alives, so a quiet device's connection ends at the idle timeout and the next
    /// reading connects again. Default 10 s; from 10 ms to 1 h.
    pub keep_alive: Option<Duration>,
    /// TLS session tickets; shared by clones of this config.
    tickets: link::Tickets,
    /// The connection of the device using this config (each [`Device`] sets its own).
    link: link::Link,
}

impl DeviceConfig {
    /// Refuses settings no connection could use.
    fn check(&self) -> Result<(), DeviceError> {
        const KEEP_ALIVE: std::ops::RangeInclusive<Duration> =
            Duration::from_millis(10)..=Duration::from_secs(3600);
        match self.keep_alive {
            Some(k) if !KEEP_ALIVE.contains(&k) => Err(DeviceError::Config(format!(
                "keep_alive {k:?} is outside 10ms..=1h (None turns keep-alives off)"
            ))),
            _ => Ok(()),
        }
    }

    /// A config for `server` trusted by `trust`, with defaults: server name `localhost`, client
    /// id `runnel-device`, 5 ms linger, 500 records per batch, an 8 MiB buffer, `acks=all`, no
    /// compression, no identity, 0-RTT on, a keep-alive every 10 s.
    pub fn new(server: SocketAddr, trust: Trust) -> DeviceConfig {
        DeviceConfig {
            server,
            server_name: "localhost".into(),
            trust,
            client_id: "runnel-device".into(),
            linger: Duration::from_millis(5),
            max_batch_records: 500,
            max_batch_bytes: 64 * 1024,
            buffer_limit_bytes: 8 << 20,
            acks: Acks::All,
            compression: Compression::None,
            buffer_file: None,
            buffer_file_fsync: false,
            identity: Identity::None,
            zero_rtt: true,
            keep_alive: Some(Duration::from_secs(10)),
            tickets: link::Tickets::default(),
            link: link::Link::default(),
        }
    }
}

/// Where the broker stored a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    /// The partition of the topic.
    pub partition: i32,
    /// The record's offset in that partition: the base offset the broker gave the record's
    /// batch plus the record's position in it (-1 when the broker gave none), as every Kafka
    /// producer computes it, since a produce response carries only the base offset. When a
    /// filter plugin on the broker drops records of the batch, the kept ones stay at these
    /// offsets and a dropped one is acknowledged like a kept one, at an offset where nothing
    /// is stored (a transform that answers more or fewer records renumbers the batch).
    pub offset: i64,
}

/// Errors of the device client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The broker could not be reached or the connection was lost.
    #[error("cannot reach the broker: {0}")]
    Connect(String),
    /// The TLS handshake failed: wrong fingerprint, untrusted certificate, refused client
    /// certificate, ALPN. (A CA, certificate or key file that cannot be read is a
    /// [`DeviceError::Config`].)
    #[error("TLS handshake with the broker failed: {0}")]
    Tls(String),
    /// The broker sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker refused the request (for a send: the record) with this Kafka error code.
    #[error(
        "the broker refused the request: {} (Kafka error code {code}){}",
        error_text(*code),
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Broker {
        /// The Kafka error code (e.g. 10 `MESSAGE_TOO_LARGE`).
        code: i16,
        /// The broker's reason, where it gave one (a quota policy's or a plugin's refusal, a
        /// record over a limit).
        message: Option<String>,
    },
    /// The record cannot be sent as it is (e.g. a negative timestamp); nothing was queued.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The offline buffer is full: the record was not queued. Retry after some are delivered.
    #[error("the device buffer is full")]
    BufferFull,
    /// A setting of the [`DeviceConfig`] cannot be used; nothing was started.
    #[error("invalid device config: {0}")]
    Config(String),
    /// The device is closed (or its background task has ended).
    #[error("the device is closed")]
    Closed,
    /// The buffer file cannot be used (unreadable, not a buffer file, in use by another device).
    #[error("buffer file {0}")]
    Buffer(String),
    /// The broker refused the device's identity (bad or missing token, no authentication); the
    /// broker's reason follows.
    #[error("the broker refused the device: {0}")]
    Refused(String),
    /// No stream for a subscription within 5 s: the broker allows `listeners.quic.max_streams`
    /// (default 16) per connection, one of them the device's produce session; close a
    /// subscription to open another, or raise the broker's limit.
    #[error(
        "no stream free on the connection (the broker allows listeners.quic.max_streams, default 16, one of them for produce): close a subscription first"
    )]
    NoStream,
    /// A subscription asked to start at a negative offset; nothing was opened.
    #[error(
        "cannot subscribe at offset {0}: offsets start at 0 (StartAt::Earliest reads from the first record kept)"
    )]
    InvalidOffset(i64),
    /// The subscription's position is not in the partition (removed by retention or
    /// DeleteRecords, or past the end), and its [`OffsetReset`] is [`OffsetReset::Fail`]: it
    /// stays there, and every [`Subscription::next`] fails so, until the caller subscribes
    /// again at a position it chooses.
    #[error(
        "subscription position {position} is not in the partition (first kept offset {log_start}, end {log_end}) and its OffsetReset is Fail: subscribe again with a StartAt"
    )]
    OffsetOutOfRange {
        /// The subscription's position.
        position: i64,
        /// The partition's first kept offset.
        log_start: i64,
        /// The partition's end: the offset its next record gets.
        log_end: i64,
    },
    /// [`Subscription::commit`] on a subscription opened without a consumer group.
    #[error("commit needs a group: open the subscription with Device::subscribe_group")]
    NoGroup,
    /// A datagram could not be sent: the broker does not take datagrams, or the connection is
    /// down.
    #[error("cannot send the datagram: {0}")]
    Datagram(String),
    /// The reading does not fit in one datagram on this connection.
    #[error("the datagram is {size} bytes; this connection carries at most {max}")]
    DatagramTooLarge {
        /// The encoded datagram's size.
        size: usize,
        /// The most the connection takes now.
        max: usize,
    },
}

/// Kafka's rule for topic names (at most 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`), checked
/// as a record is queued: a broker answers a name it cannot hold only when the batch is sent.
pub(crate) fn check_topic_name(topic: &str) -> Result<(), DeviceError> {
    let why = if topic.is_empty() {
        "is empty"
    } else if topic.len() > 249 {
        "is longer than 249 characters"
    } else if topic == "." || topic == ".." {
        "cannot be \".\" or \"..\""
    } else if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "may hold only ASCII letters, digits, '.', '_' and '-'"
    } else {
        return Ok(());
    };
    Err(DeviceError::InvalidRecord(format!(
        "topic name {topic:?} {why}"
    )))
}

/// The Kafka name of an error code (`MessageTooLarge`), with what it means for a device where
/// that is not plain from the name.
pub(crate) fn error_text(code: i16) -> String {
    use kafka_protocol::error::ResponseError as E;
    match E::try_from_code(code) {
        Some(E::MessageTooLarge) => "MessageTooLarge: the reading alone is over the topic's \
             max.message.bytes or the broker's max_request_bytes"
            .to_string(),
        Some(e) => e.to_string(),
        None => "unknown error".to_string(),
    }
}

/// A connection to a Runnel broker that produces records. Cheap to share by reference across
/// tasks (`&Device` sends); all work happens on one background task that owns the QUIC
/// connection and its stream.
pub struct Device {
    tx: mpsc::UnboundedSender<Cmd>,
    buffered: Arc<AtomicUsize>,
    limit: usize,
    task: JoinHandle<()>,
    link: link::Link,
    client_id: String,
}

impl Device {
    /// Connects to the broker and initialises an idempotent producer. Fails with
    /// [`DeviceError::Tls`] when the broker's certificate is not trusted and
    /// [`DeviceError::Connect`] when it cannot be reached; after this first connection, losses
    /// are handled in the background. A device the broker's ACLs let only read (no Write on
    /// any topic) connects without a producer id, for its subscriptions; its sends are
    /// buffered until the broker gives it one (a warning says why).
    pub async fn connect(config: DeviceConfig) -> Result<Device, DeviceError> {
        let config = own_config(config);
        config.check()?;
        let link = config.link.clone();
        let (file, restored) = open_buffer(&config).await?;
        let mut session = session::Session::connect(&config).await?;
        let producer = match restored.producer_to_resume() {
            Some(p) => Ok(p),
            None => {
                let mut producer = worker::init_producer(&mut session).await;
                if producer.is_err() && link.zero_rtt().await == ZeroRtt::Rejected {
                    // The broker refused the early data: go again with a full handshake.
                    session = session::Session::connect(&config).await?;
                    producer = worker::init_producer(&mut session).await;
                }
                producer
            }
        };
        let producer = match producer {
            Ok(p) => Some(p),
            // Connected and authenticated, but the ACLs give no producer id: a device that only
            // subscribes goes on; its sends wait, buffered, for the rights (said at warn).
            Err(DeviceError::Broker { code, .. })
                if code == worker::CLUSTER_AUTHORIZATION_FAILED =>
            {
                None
            }
            Err(e) => return Err(session.explain(e).await),
        };
        let start = worker::Start {
            session: Some(session),
            producer,
            file,
            restored,
        };
        Ok(Device::spawn(config, start))
    }

    /// Like [`Device::connect`], but without waiting for the broker: the device is ready at
    /// once, buffers what it is sent (in the buffer file too, when configured), and connects
    /// in the background, retrying with backoff (100 ms doubling to 5 s) until it gets
    /// through. For a device that may start while the broker or its uplink is down. Fails only
    /// for what needs no broker: an unusable buffer file, a trust or identity that cannot be
    /// loaded. What [`Device::connect`] would fail with later (an untrusted broker certificate,
    /// a refused identity) is then logged and retried: use `connect` where such a
    /// misconfiguration should stop the program.
    pub async fn start(config: DeviceConfig) -> Result<Device, DeviceError> {
        let config = own_config(config);
        config.check()?;
        session::client_tls(&config.trust, &config.identity)?;
        let (file, restored) = open_buffer(&config).await?;
        // Without a producer to resume, the first connection gets one.
        let start = worker::Start {
            session: None,
            producer: restored.producer_to_resume(),
            file,
            restored,
        };
        Ok(Device::spawn(config, start))
    }

    fn spawn(config: DeviceConfig, start: worker::Start) -> Device {
        let link = config.link.clone();
        let client_id = config.client_id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let limit = config.buffer_limit_bytes;
        let task = tokio::spawn(worker::Worker::new(config, rx, buffered.clone(), start).run());
        Device {
            tx,
            buffered,
            limit,
            task,
            link,
            client_id,
        }
    }

    /// Sends one reading to `partition` of `topic` as a QUIC datagram: fire and forget, with no
    /// acknowledgement, retry or buffering, so it may be lost (or, rarely, stored twice). Waits
    /// only for room in the connection's send buffer. Fails with
    /// [`DeviceError::DatagramTooLarge`] when the encoded reading does not fit one datagram
    /// (about 1,000 bytes of key, value, headers, topic name and client id always fit), and
    /// [`DeviceError::Datagram`] while the device is not connected or the broker takes no
    /// datagrams. What the broker refuses is dropped there, unsaid: a datagram creates no
    /// topic (send one acknowledged reading first, or create it), and readings to a topic that
    /// does not exist are lost (`runnel_quic_datagrams_dropped_total` counts them).
    pub async fn send_datagram(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(), DeviceError> {
        let record = Record::new(topic, value).partition(partition);
        let record = match key {
            Some(k) => record.key(k),
            None => record,
        };
        self.send_datagram_record(&record).await
    }

    /// Sends a [`Record`] (with headers or a timestamp of its own) as a QUIC datagram, like
    /// [`Device::send_datagram`]; its headers count against the datagram's size.
    pub async fn send_datagram_record(&self, record: &Record) -> Result<(), DeviceError> {
        record.check()?;
        let payload = datagram::encode(record, now_ms(), &self.client_id)?;
        let conn = self
            .link
            .conn()
            .filter(|c| c.close_reason().is_none())
            .ok_or_else(|| DeviceError::Datagram("not connected to the broker".into()))?;
        datagram::send(&conn, payload).await
    }

    /// Whether the current connection resumed with 0-RTT, waiting for the broker's answer when
    /// it is still pending.
    pub async fn zero_rtt(&self) -> ZeroRtt {
        self.link.zero_rtt().await
    }

    /// Sends a record to partition 0 of `topic` and waits until the broker has acknowledged it.
    /// Fails at once with [`DeviceError::BufferFull`] when the buffer is full.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Ack, DeviceError> {
        self.enqueue(topic, 0, key, value)?.await
    }

    /// Queues a record for `partition` of `topic` without waiting: the returned [`Delivery`]
    /// resolves with its [`Ack`]. Records queued one after another are stored in that order.
    /// Fails at once with [`DeviceError::BufferFull`] when the buffer is full.
    pub fn enqueue(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Delivery, DeviceError> {
        let (ack, rx) = oneshot::channel();
        self.push(topic, partition, simple(key, value), Some(ack))?;
        Ok(Delivery { rx })
    }

    /// Queues a record for partition 0 of `topic` and forgets it: it is delivered like any
    /// other (idempotently, buffered across outages), but nobody is told its offset or error.
    pub fn send_no_ack(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<(), DeviceError> {
        self.push(topic, 0, simple(key, value), None)
    }

    /// Sends a [`Record`] (with headers, a partition or a timestamp of its own) and waits until
    /// the broker has acknowledged it. Fails at once with [`DeviceError::BufferFull`] when the
    /// buffer is full.
    pub async fn send_record(&self, record: Record) -> Result<Ack, DeviceError> {
        self.enqueue_record(record)?.await
    }

    /// Queues a [`Record`] without waiting, like [`Device::enqueue`].
    pub fn enqueue_record(&self, record: Record) -> Result<Delivery, DeviceError> {
        record.check()?;
        let (ack, rx) = oneshot::channel();
        let Record {
            topic,
            partition,
            key,
            value,
            headers,
            timestamp,
        } = record;
        let pending = Pending {
            key,
            value,
            headers,
            timestamp: timestamp.unwrap_or_else(now_ms),
            cost: 0,
            ack: None,
        };
        self.push(&topic, partition, pending, Some(ack))?;
        Ok(Delivery { rx })
    }

    /// Queues `record` for `partition` of `topic`, reserving its cost in the buffer.
    fn push(
        &self,
        topic: &str,
        partition: i32,
        mut record: Pending,
        ack: Option<oneshot::Sender<Result<Ack, DeviceError>>>,
    ) -> Result<(), DeviceError> {
        if self.tx.is_closed() {
            return Err(DeviceError::Closed);
        }
        check_topic_name(topic)?;
        let cost = record.cost_in(topic);
        let reserved = self
            .buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(cost).filter(|&n| n <= self.limit)
            });
        if reserved.is_err() {
            return Err(DeviceError::BufferFull);
        }
        record.cost = cost;
        record.ack = ack;
        self.tx
            .send(Cmd::Record {
                topic: topic.to_string(),
                partition,
                record,
            })
            .map_err(|_| {
                self.buffered.fetch_sub(cost, Ordering::AcqRel);
                DeviceError::Closed
            })
    }

    /// Bytes of records held and not yet acknowledged: at most
    /// [`DeviceConfig::buffer_limit_bytes`], except after a buffer file written under a larger
    /// limit was restored (its readings are all kept; new ones wait until it drains below).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Sends every queued record now and waits until all are acknowledged or failed. While the
    /// broker is unreachable this waits for it to come back.
    pub async fn flush(&self) -> Result<(), DeviceError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(done))
            .map_err(|_| DeviceError::Closed)?;
        rx.await.map_err(|_| DeviceError::Closed)
    }

    /// Reads `partition` of `topic` from `start` on a stream of its own on this device's
    /// connection: [`Subscription::next`] yields the records in offset order, long-polling the
    /// broker while there are none, and resumes after the last record across reconnects. The
    /// topic is created if the broker allows auto-creation. A position the partition does not
    /// hold (an offset past its end, or removed by retention) moves to the first kept record
    /// on the first read, or as [`Subscription::with_offset_reset`] says. Fails with
    /// [`DeviceError::InvalidOffset`] for a negative [`StartAt::Offset`].
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: i32,
        start: StartAt,
    ) -> Result<Subscription, DeviceError> {
        Subscription::open(self.tx.downgrade(), topic, partition, None, start).await
    }

    /// Like [`Device::subscribe`], as a member of consumer group `group`: reading starts at the
    /// offset the group committed for the partition ([`Subscription::commit`]), or at `otherwise`
    /// when it committed none, so a device that restarts goes on after the last record it
    /// committed. The group is used the way Kafka's standalone consumers use one (offsets only,
    /// no membership); give each device its own group, e.g. its name. A committed offset the
    /// partition no longer holds (retention or DeleteRecords removed it while the device was
    /// away) moves as the subscription's [`OffsetReset`] says, by default to the first record
    /// still kept; `otherwise` applies only when the group committed nothing.
    pub async fn subscribe_group(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        otherwise: StartAt,
    ) -> Result<Subscription, DeviceError> {
        Subscription::open(
            self.tx.downgrade(),
            topic,
            partition,
            Some(group),
            otherwise,
        )
        .await
    }

    /// Flushes, then closes the connection and ends the background task. Like [`Device::flush`]
    /// it waits while the broker is unreachable; wrap it in a timeout to bound that. Dropping a
    /// `Device` instead closes at once and fails records still buffered with
    /// [`DeviceError::Closed`].
    pub async fn close(self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(done)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

/// The acknowledgement of one queued record: a future resolving with its [`Ack`].
#[must_use = "a Delivery does nothing unless awaited (the record is sent either way)"]
pub struct Delivery {
    rx: oneshot::Receiver<Result<Ack, DeviceError>>,
}

impl std::future::Future for Delivery {
    type Output = Result<Ack, DeviceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(DeviceError::Closed)))
    }
}

/// `config` made this device's own: a connection link of its own, at least one record a batch.
fn own_config(mut config: DeviceConfig) -> DeviceConfig {
    config.max_batch_records = config.max_batch_records.max(1);
    config.link = link::Link::default();
    config
}

/// The configured buffer file, opened and replayed (none: nothing restored).
async fn open_buffer(
    config: &DeviceConfig,
) -> Result<(Option<buffer::FileBuffer>, buffer::Restored), DeviceError> {
    Ok(match &config.buffer_file {
        Some(path) => {
            let (f, r) = buffer::FileBuffer::open(path, config.buffer_file_fsync).await?;
            (Some(f), r)
        }
        None => (None, buffer::Restored::default()),
    })
}

/// A record of a key and a value, stamped now.
fn simple(key: Option<&[u8]>, value: &[u8]) -> Pending {
    Pending {
        key: key.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(value),
        headers: Vec::new(),
        timestamp: now_ms(),
        cost: 0,
        ack: None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The rustls client configuration a device uses: TLS 1.3 only, ALPN `runnel`, and the server
/// certificate checked as `trust` says (pinned fingerprint, or a CA). For tools and tests that
/// open their own QUIC connections to a broker.
pub fn tls_client_config(trust: &Trust) -> Result<rustls::ClientConfig, DeviceError> {
    session::client_tls(trust, &Identity::None)
}

/// The SHA-256 fingerprint (`AB:CD:...`) of a DER certificate, as [`Trust::Fingerprint`]
/// expects it.
pub fn fingerprint_of(der: &[u8]) -> String {
    session::sha256_fingerprint(der)
}

/// Compiles the program in README.md.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for good in ["readings", "site-1.temp_C", &"t".repeat(249)] {
            assert_eq!(check_topic_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("bad topic!", "may hold only"),
            ("..", "cannot be"),
            (&"t".repeat(250), "longer than 249"),
        ] {
            match check_topic_name(bad) {
                Err(DeviceError::InvalidRecord(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
