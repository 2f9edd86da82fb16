//! One Kafka connection: read frames, dispatch them in order, write the responses in order.
//!
//! Requests on a connection are handled one at a time, as Kafka does, so responses keep the
//! request order clients rely on; a writer task lets the next request be read and handled while
//! the previous response is still being written, up to [`QUEUED_RESPONSE_BYTES`] of responses
//! not yet written: past that the next request waits, so a client that sends requests ahead and
//! does not read the answers holds one answer beyond that, not one per request. A bad frame
//! (negative or oversized length, malformed header or body, unknown API) closes this
//! connection only, with a log line (a warning,
//! at most [`BAD_INPUT_WARNINGS_PER_MINUTE`] of them broker-wide, the rest at debug); where
//! the transport can say why ([`ReadSide::refuse`]: a QUIC stream's STOP_SENDING code), the
//! client is told which of the two it was, so that a device can split a batch too large. On a
//! connection that must authenticate first (`protocol::auth`), any other request before a
//! successful SaslAuthenticate is not handled: the session ends and the listener is asked to close
//! the whole connection with the reason; after a failed SaslAuthenticate a TCP connection ends
//! once the answer is written. Until it has authenticated, such a connection may send requests
//! of at most [`auth::MAX_UNAUTHENTICATED_REQUEST_BYTES`], and its streams may hold no more than
//! that together ([`auth::PreAuthHold`]); a TCP one must authenticate
//! within `broker.handshake_timeout` (the QUIC listener times the whole connection itself).
//!
//! A request a quota policy or a client quota throttled (`Ctx::throttle_ms`, set by
//! `plugins::quota` and `client_quotas`) mutes the connection for that long: no further request
//! is handled meanwhile, and a client that closes the connection meanwhile has none of what it
//! sent after that request handled ([`wait_muted`]). The response goes first, whatever its
//! version, as Kafka sends it since 2.0 (KIP-219): clients of the newer versions hold back by
//! themselves, and older ones find their next request waiting out the mute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::broker::Broker;
use crate::log_budget::{LogBudget, client_text, within_budget};
use crate::protocol::memory::{Held, Holding, LARGE_REQUEST};
use crate::protocol::{Ctx, ListenerKind, Outcome, Session, auth, frame};

/// Warnings about a client's bad input written per minute, broker-wide; beyond them the lines go
/// to debug, and the next warning written says how many were held back. A client (or a fleet
/// with a broken firmware) sending bad frames must not fill the gateway's log.
const BAD_INPUT_WARNINGS_PER_MINUTE: u32 = 20;

static BAD_INPUT: LogBudget = LogBudget::new(BAD_INPUT_WARNINGS_PER_MINUTE);

/// Connections closed for what a client sent (requests before authentication, a refused
/// acks=0 produce), said a minute.
static REFUSED: LogBudget = LogBudget::new(60);

/// Connections closed in the middle of a request frame, said a minute.
static MID_FRAME: LogBudget = LogBudget::new(20);

/// `tracing::warn!` within the bad-input budget, `tracing::debug!` beyond it.
macro_rules! warn_bad_input {
    ($($arg:tt)+) => {
        within_budget!(BAD_INPUT, warn, $($arg)+)
    };
}

/// Responses queued for the writer before the reader waits.
const WRITE_QUEUE: usize = 64;

/// Bytes of responses queued for the writer and not yet written past which the next request
/// waits until they are. Small answers (produce acknowledgements) flow as before; a fetch
/// answer of megabytes is written before the next request is handled, as Kafka handles a
/// connection's next request only once the previous answer is sent.
const QUEUED_RESPONSE_BYTES: usize = 1 << 20;

/// The bytes of responses handed to the writer and not yet written, and a wake-up each time
/// some are. A writer that ends sets it to zero: nothing it was given will be written.
#[derive(Default)]
struct Queued {
    bytes: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Queued {
    fn written(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.drained.notify_one();
    }
}

/// Bytes written at a time, so that a large response to a slow reader shows as progress.
const WRITE_CHUNK: usize = 256 * 1024;

/// When a connection last moved bytes, either way. `broker.connections_max_idle` counts both
/// directions, as Kafka's `connections.max.idle.ms` does: a client downloading one large
/// response over a slow link is not idle.
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When the connection counts as idle: `idle` after the last activity (far in the future
    /// for a limit too large to add).
    fn idle_at(&self, idle: Duration) -> tokio::time::Instant {
        let last = self.last();
        last.checked_add(idle)
            .unwrap_or_else(|| last + Duration::from_secs(100 * 365 * 24 * 3600))
    }
}

/// Why a connection stopped reading a client's requests early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A frame over `broker.max_request_bytes`.
    TooLarge,
    /// A frame that is not a request the broker serves: a negative size, a malformed header or
    /// body, an unknown API or version.
    Malformed,
}

/// How a mute ended.
#[derive(Debug, PartialEq, Eq)]
enum Muted {
    Over,
    /// The client ended its side of the connection (or a read failed).
    ClientGone,
    ShuttingDown,
}

/// Waits out a quota's mute: no request is handled meanwhile. The connection is still read (up
/// to `limit` bytes held), only to notice a client that goes away: the connection then ends
/// without handling what it had sent after the throttled request (a producer that timed out and
/// closed would otherwise have it written after it gave up on it, and write it again on its
/// next connection).
async fn wait_muted<R: ReadSide>(
    mute: Duration,
    rd: &mut R,
    buf: &mut BytesMut,
    limit: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> Muted {
    let until = tokio::time::sleep(mute);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return Muted::Over,
            _ = shutdown.changed() => return Muted::ShuttingDown,
            read = rd.read_buf(buf), if buf.len() < limit => match read {
                Ok(0) | Err(_) => return Muted::ClientGone,
                Ok(_) => {}
            },
        }
    }
}

/// The reading half of a connection.
pub trait ReadSide: AsyncRead + Unpin + Send + 'static {
    /// Stops reading and tells the client why, where the transport can (a QUIC stream's
    /// STOP_SENDING code). A TCP connection cannot: it is closed, as Kafka does.
    fn refuse(&mut self, _why: Refusal) {}
}

impl<T: AsyncRead + Send + 'static> ReadSide for tokio::io::ReadHalf<T> {}

/// The writing half of a connection.
pub trait WriteSide: AsyncWrite + Unpin + Send + 'static {
    /// Drops what is written but not yet sent and tells the client the answers stop, where the
    /// transport can (a QUIC stream's RESET_STREAM). A TCP connection is closed instead.
    fn give_up(&mut self) {}
}

impl<T: AsyncWrite + Send + 'static> WriteSide for tokio::io::WriteHalf<T> {}

/// QUIC streams whose device stopped reading its answers, given up, said a minute.
static STALLED: LogBudget = LogBudget::new(10);

/// Serves a byte stream that reads and writes (TCP, TLS).
pub async fn serve<S>(
    broker: Arc<Broker>,
    stream: S,
    session: Session,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    serve_halves(broker, rd, wr, session, shutdown).await;
}

/// Serves a connection given as its two halves (a QUIC stream's receive and send sides).
pub async fn serve_halves<R, W>(
    broker: Arc<Broker>,
    mut rd: R,
    wr: W,
    session: Session,
    mut shutdown: watch::Receiver<bool>,
) where
    R: ReadSide,
    W: WriteSide,
{
    let peer = session.peer;
    let listener = session.listener.name();
    // What a bad request ends: over QUIC one stream, the connection goes on.
    let closing = if session.listener == ListenerKind::Quic {
        "stream"
    } else {
        "connection"
    };
    tracing::debug!(%peer, listener, "connection opened");
    let session = Arc::new(session);
    let metrics = &broker.metrics;
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Answer>(WRITE_QUEUE);
    let activity = Arc::new(Activity::new());
    let queued = Arc::new(Queued::default());
    // A QUIC stream is not closed for being idle (its connection has its own idle timeout,
    // which a device's keep-alives hold off), so a device that stops reading its answers
    // would hold them, and the fetch memory they take, for as long as it stays connected: a
    // write that moves no byte for the QUIC idle timeout gives the stream up. A TCP
    // connection's writes are covered by `broker.connections_max_idle`.
    let stall = (session.listener == ListenerKind::Quic)
        .then_some(broker.config.listeners.quic.idle_timeout);
    // A large request holds its share of `broker.queued_max_request_bytes` from its size on:
    // one whose bytes stop coming mid-frame (a client gone quiet, or one that only announces
    // sizes) is given up after this long, not held for the idle limit.
    let request_stall =
        stall.unwrap_or(LARGE_REQUEST_STALL.min(broker.config.broker.connections_max_idle));
    let writer = tokio::spawn(write_loop(
        wr,
        rx,
        broker.clone(),
        activity.clone(),
        queued.clone(),
        stall.map(|limit| (limit, peer)),
    ));
    let max = broker.config.broker.max_request_bytes as usize;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut client_id: Arc<str> = Arc::from("");
    let throttle_ms = Arc::new(AtomicU32::new(0));
    let holding = Arc::new(Holding::default());
    let mut refused = None;
    let mut closed_idle = false;
    // QUIC streams live under the QUIC idle timeout instead.
    let closes_idle = session.listener != ListenerKind::Quic;
    let idle = broker.config.broker.connections_max_idle;
    let auth_timeout = broker.config.broker.handshake_timeout;
    // (A sleep, not an Instant sum, so that no configured value can overflow.)
    let auth_deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(auth_deadline);
    let mut pre_auth = auth::PreAuthHold::new(session.identity.clone());
    // What the large request being read holds of `broker.queued_max_request_bytes`, from its
    // size prefix until it is handled.
    let mut request_held: Option<Held> = None;
    'conn: loop {
        // Handle every complete frame already buffered before reading again.
        loop {
            let unauthenticated = session.identity.awaits_sasl();
            let limit = if unauthenticated {
                max.min(auth::MAX_UNAUTHENTICATED_REQUEST_BYTES)
            } else {
                max
            };
            let frame = match frame::split_frame(&mut buf, limit) {
                Ok(Some(f)) => {
                    metrics
                        .bytes_in
                        .fetch_add(f.len() as u64 + 4, Ordering::Relaxed);
                    f
                }
                Ok(None) => break,
                Err(frame::FrameError::TooLarge { size, max }) if unauthenticated => {
                    let reason = match protocol_hint(&buf) {
                        // Most often a client speaking another protocol: say which.
                        Some(hint) => format!("not a Kafka request: {hint}"),
                        None => format!(
                            "authentication required: a request of {size} bytes before SASL \
                             authentication (at most {max} until then)"
                        ),
                    };
                    refuse_unauthenticated(&session, &broker, reason);
                    break 'conn;
                }
                Err(e) => {
                    match protocol_hint(&buf) {
                        Some(hint) => {
                            warn_bad_input!(%peer, listener, closing, error = %e, hint, "bad frame")
                        }
                        None => warn_bad_input!(%peer, listener, closing, error = %e, "bad frame"),
                    }
                    metrics.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    refused = Some(match e {
                        frame::FrameError::TooLarge { .. } => Refusal::TooLarge,
                        _ => Refusal::Malformed,
                    });
                    break 'conn;
                }
            };
            // Kept until the request is handled (its bytes live in it until then).
            let _frame_held = request_held.take();
            let correlation_id = frame::peek_correlation_id(&frame);
            let req = match frame::decode_request(frame) {
                Ok(r) => r,
                Err(e) => {
                    warn_bad_input!(%peer, listener, closing, correlation_id, error = %e, "bad request");
                    metrics.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    refused = Some(Refusal::Malformed);
                    break 'conn;
                }
            };
            if let Some(id) = req.header.client_id.as_deref()
                && *id != *client_id
            {
                client_id = Arc::from(id);
            }
            metrics.count_request(req.api_key);
            if !session.identity.admits(req.api_key) {
                let reason = if session.identity.principal().is_some() {
                    format!(
                        "{:?} refused in the middle of a SASL re-authentication (only \
                         SaslAuthenticate may follow its SaslHandshake)",
                        req.api_key
                    )
                } else {
                    format!(
                        "authentication required: {:?} refused before SASL authentication",
                        req.api_key
                    )
                };
                within_budget!(REFUSED, info, %peer, listener, client_id = %client_text(&client_id), %reason, "closing connection");
                if session.identity.close(reason, false) {
                    metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                }
                break 'conn;
            }
            if let Some(reason) = session.identity.expired_for(req.api_key) {
                tracing::info!(%peer, listener, client_id = %client_text(&client_id), %reason, "closing connection");
                session.identity.close(reason, false);
                break 'conn;
            }
            let version = req.header.request_api_version;
            let ctx = Ctx {
                broker: broker.clone(),
                session: session.clone(),
                api_version: version,
                client_id: client_id.clone(),
                throttle_ms: throttle_ms.clone(),
                holding: holding.clone(),
            };
            let reply = match broker.dispatcher.dispatch(ctx, req) {
                Ok(r) => r,
                Err(e) => {
                    warn_bad_input!(%peer, listener, closing, client_id = %client_text(&client_id), error = %e, "request not served");
                    metrics.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    refused = Some(Refusal::Malformed);
                    break 'conn;
                }
            };
            let response = tokio::select! {
                r = reply => r,
                _ = shutdown.changed() => break 'conn,
            };
            // A request served is activity, however long it waited (a long-polling fetch): the
            // idle limit counts from its answer, which the writer may not have begun yet.
            activity.touch();
            let mute = Duration::from_millis(throttle_ms.swap(0, Ordering::Relaxed) as u64);
            // What the answer holds of `broker.fetch_memory_bytes`: its encoded size, until the
            // writer has written it.
            let mut held = holding.take();
            match response {
                Outcome::Respond(bytes) => {
                    if let Some(held) = &mut held {
                        held.resize(bytes.len());
                    }
                    queued.bytes.fetch_add(bytes.len(), Ordering::AcqRel);
                    if tx.send(Answer { bytes, held }).await.is_err() {
                        break 'conn;
                    }
                    // A client that does not read its answers holds no more of them.
                    while queued.bytes.load(Ordering::Acquire) > QUEUED_RESPONSE_BYTES {
                        tokio::select! {
                            _ = queued.drained.notified() => {}
                            _ = shutdown.changed() => break 'conn,
                            _ = tokio::time::sleep_until(activity.idle_at(idle)), if closes_idle => {
                                if activity.idle_at(idle) <= tokio::time::Instant::now() {
                                    break 'conn; // the writer is given up below
                                }
                            }
                        }
                    }
                }
                Outcome::Silent => {}
                Outcome::Close(reason) => {
                    within_budget!(REFUSED, info, %peer, listener, client_id = %client_text(&client_id), reason, "closing the {closing}");
                    metrics.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    break 'conn;
                }
            }
            if session.identity.is_closing() && session.listener != ListenerKind::Quic {
                // A failed SASL authentication on a TCP listener: the answer is queued and the
                // connection ends once it is written. (A QUIC listener closes the whole
                // connection itself, with the reason.)
                break 'conn;
            }
            if !mute.is_zero() {
                tracing::trace!(%peer, client_id = %client_text(&client_id), ?mute, "connection muted by a quota");
                if wait_muted(mute, &mut rd, &mut buf, max, &mut shutdown).await != Muted::Over {
                    break 'conn;
                }
            }
        }
        // What is left unhandled counts against the budget while this stream waits.
        if session.identity.awaits_sasl() {
            pre_auth.set(buf.len());
        }
        // A large request takes its size from the broker's budget before the rest is read,
        // waiting (unread) while others hold it.
        if request_held.is_none()
            && let Some(size) = frame::pending_size(&buf)
            && size > LARGE_REQUEST
        {
            tokio::select! {
                held = broker.request_memory.take(size) => request_held = Some(held),
                _ = shutdown.changed() => break,
            }
        }
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep_until(activity.idle_at(idle)), if closes_idle => {
                if activity.idle_at(idle) > tokio::time::Instant::now() {
                    continue 'conn; // the writer moved bytes meanwhile
                }
                tracing::info!(%peer, listener, idle = ?idle, pending = buf.len(), "closing an idle connection (broker.connections_max_idle)");
                closed_idle = true;
                break;
            }
            _ = &mut auth_deadline, if closes_idle && session.identity.awaits_sasl() => {
                let reason = format!(
                    "authentication required: no SASL authentication within {auth_timeout:?} \
                     (broker.handshake_timeout)"
                );
                refuse_unauthenticated(&session, &broker, reason);
                break;
            }
            _ = tokio::time::sleep_until(activity.idle_at(request_stall)), if request_held.is_some() => {
                if activity.idle_at(request_stall) > tokio::time::Instant::now() {
                    continue 'conn;
                }
                let declared = request_held.as_ref().map_or(0, Held::bytes);
                within_budget!(MID_FRAME, info, %peer, listener, pending = buf.len(), declared, stalled = ?request_stall,
                    "closing the {closing}: the rest of a large request stopped coming, and it holds its share of broker.queued_max_request_bytes");
                break;
            }
        };
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    within_budget!(MID_FRAME, info, %peer, listener, pending = buf.len(), "connection closed mid-frame");
                }
                break;
            }
            Ok(_) => activity.touch(),
            Err(e) => {
                tracing::debug!(%peer, listener, error = %e, "read failed");
                break;
            }
        }
        // Before authentication the connection's streams share one budget (a QUIC client could
        // otherwise hold the per-request limit on each of its streams).
        if session.identity.awaits_sasl() {
            let held = pre_auth.set(buf.len());
            // (Plus one frame's 4-byte size prefix, so that a single request may be the limit.)
            if held > auth::MAX_UNAUTHENTICATED_REQUEST_BYTES + 4 {
                let reason = format!(
                    "authentication required: {held} bytes of requests held before SASL \
                     authentication (at most {} until then, over all streams)",
                    auth::MAX_UNAUTHENTICATED_REQUEST_BYTES
                );
                refuse_unauthenticated(&session, &broker, reason);
                break;
            }
        } else {
            pre_auth.set(0);
        }
    }
    // Before the responses already queued are written and the stream finished, so that the
    // client learns why by the time it sees the end.
    if let Some(why) = refused {
        rd.refuse(why);
    }
    drop(tx);
    // The responses already queued are written, unless the client stops reading them: a
    // writer that moves no byte for the idle limit is given up, so that the connection does not
    // hold its `max_connections` slot for ever. A connection closed as idle has used its limit
    // up: its writer (with nothing left to write, as a rule) gets a moment to finish.
    let mut writer = writer;
    if closed_idle {
        if tokio::time::timeout(IDLE_CLOSE_GRACE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    } else {
        give_up_unread(&mut writer, &activity, idle, closes_idle, peer, listener).await;
    }
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(%peer, listener, "connection closed");
}

/// Waits for `writer` to write what is queued, giving it up when it moves no byte for `idle`.
async fn give_up_unread(
    writer: &mut tokio::task::JoinHandle<()>,
    activity: &Activity,
    idle: Duration,
    closes_idle: bool,
    peer: std::net::SocketAddr,
    listener: &str,
) {
    loop {
        tokio::select! {
            _ = &mut *writer => break,
            _ = tokio::time::sleep_until(activity.idle_at(idle)), if closes_idle => {
                if activity.idle_at(idle) <= tokio::time::Instant::now() {
                    tracing::info!(%peer, listener, "giving up a connection whose client does not read its responses");
                    writer.abort();
                    break;
                }
            }
        }
    }
}

/// Ends a connection that has not authenticated, telling the client `reason`; counted as one
/// authentication failure of the connection however many of its streams end so.
fn refuse_unauthenticated(session: &Session, broker: &Broker, reason: String) {
    let (peer, listener) = (session.peer, session.listener.name());
    within_budget!(REFUSED, info, %peer, listener, %reason, "closing connection");
    if session.identity.close(reason, false) {
        broker.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a client sending this instead of a Kafka frame most likely speaks, for the log line.
fn protocol_hint(buf: &[u8]) -> Option<&'static str> {
    const HTTP: [&[u8]; 4] = [b"GET ", b"POST ", b"PUT ", b"HEAD "];
    if buf.starts_with(&[0x16, 0x03]) {
        // A TLS record header: handshake (22), version 3.x.
        Some(
            "the client speaks TLS and this listener is plaintext: use the TLS listener, or security.protocol=plaintext",
        )
    } else if HTTP.iter().any(|m| buf.starts_with(m)) {
        Some(
            "the client speaks HTTP and this is a Kafka listener (the admin HTTP listener is [listeners.admin])",
        )
    } else {
        None
    }
}

/// How long a large request's bytes may stop coming mid-frame on a TCP connection (at most
/// `broker.connections_max_idle`); a QUIC stream has its connection's idle timeout.
const LARGE_REQUEST_STALL: Duration = Duration::from_secs(30);

/// How long the writer of a connection closed as idle has to finish.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A response frame for the writer, with what it holds of the fetch memory until written.
struct Answer {
    bytes: Bytes,
    held: Option<Held>,
}

/// Writes the answers queued on `rx`. With `stall` (a limit and the client's address), a write
/// that moves no byte for the limit gives the stream up ([`WriteSide::give_up`]): the answers
/// queued are dropped, and the reader's next answer finds the writer gone and ends the stream.
async fn write_loop<W: WriteSide>(
    mut wr: W,
    rx: mpsc::Receiver<Answer>,
    broker: Arc<Broker>,
    activity: Arc<Activity>,
    queued: Arc<Queued>,
    stall: Option<(Duration, std::net::SocketAddr)>,
) {
    /// However the writer ends (a failed write, aborted), the reader stops waiting for it.
    struct Ended(Arc<Queued>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.bytes.store(0, Ordering::Release);
            self.0.drained.notify_one();
        }
    }
    let _ended = Ended(queued.clone());
    // Dropped before `_ended` (locals go in reverse order): once the reader may no longer
    // queue a response, the count is cleared, so no response it queued is waited for.
    let mut rx = rx;
    let write = async |wr: &mut W,
                       Answer {
                           bytes: response,
                           held,
                       }: Answer| {
        broker
            .metrics
            .bytes_out
            .fetch_add(response.len() as u64, Ordering::Relaxed);
        for chunk in response.chunks(WRITE_CHUNK) {
            match stall {
                None => wr.write_all(chunk).await?,
                Some((limit, _)) => write_moving(wr, chunk, limit, &activity).await?,
            }
            activity.touch();
        }
        queued.written(response.len());
        drop(held);
        std::io::Result::Ok(())
    };
    let given_up = |wr: &mut W, e: std::io::Error| {
        if let (Some((limit, peer)), std::io::ErrorKind::TimedOut) = (stall, e.kind()) {
            within_budget!(STALLED, info, %peer, ?limit, "giving up a QUIC stream whose device reads none of its answers (listeners.quic.idle_timeout)");
            wr.give_up();
        }
    };
    while let Some(first) = rx.recv().await {
        if let Err(e) = write(&mut wr, first).await {
            return given_up(&mut wr, e);
        }
        // Coalesce whatever else is ready into the same flush.
        while let Ok(more) = rx.try_recv() {
            if let Err(e) = write(&mut wr, more).await {
                return given_up(&mut wr, e);
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes `data`, failing with `TimedOut` when a write moves no byte for `limit`.
async fn write_moving<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut data: &[u8],
    limit: Duration,
    activity: &Activity,
) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = tokio::time::timeout(limit, wr.write(data))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        activity.touch();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_http_sent_to_a_kafka_listener_are_named() {
        let hello = [0x16, 0x03, 0x01, 0x01, 0x3c, 0x01];
        assert!(protocol_hint(&hello).is_some_and(|h| h.contains("TLS")));
        assert!(protocol_hint(b"GET /metrics HTTP/1.1\r\n").is_some_and(|h| h.contains("HTTP")));
        // A Kafka frame's size prefix.
        assert_eq!(protocol_hint(&[0, 0, 0, 42, 0, 18]), None);
    }
}
