//! The QUIC listener for devices: Kafka sessions over QUIC streams (wire protocol: `docs/quic.md`).
//!
//! - UDP + QUIC v1 (quinn), TLS 1.3 only (rustls with the `ring` provider), ALPN [`ALPN`].
//! - Every bidirectional stream a client opens is one Kafka session, served by
//!   [`super::conn::serve`] exactly as a TCP connection is: same frames, handlers and error codes.
//!   A bad frame closes that stream only; the connection and its other streams go on.
//! - The server certificate comes from `[listeners.quic] cert/key`, or when both are empty from a
//!   self-signed certificate made once in `<data_dir>/quic/` and reused; its SHA-256 fingerprint is
//!   logged and returned so devices can pin it.
//! - Device identity (`[listeners.quic] client_auth`): none (`User:ANONYMOUS`), mutual TLS
//!   (a client certificate signed by `client_ca`, principal `User:<CN>`; without one the handshake
//!   fails with a TLS alert), or a token presented with SASL PLAIN on the first stream
//!   (`protocol::auth`); a connection that fails it is closed with [`CLOSE_AUTH_FAILED`] and the
//!   reason. The principal belongs to the connection: every stream and datagram shares it.
//! - Datagrams: each one is a single Produce request with acks=0 ([`serve_datagrams`]), handled by
//!   the same produce handler as a stream; a bad one is dropped and counted, never harming the
//!   connection.
//! - 0-RTT: a resuming device may send requests with its first packet. Requests are handled only
//!   once the handshake has completed, so a replayed 0-RTT flight (which cannot complete it) is
//!   never served, and a client-certificate principal is known before any request runs.
//! - Migration: a device whose address changes keeps its connection (quinn's path validation).
//! - Bounds: `broker.max_connections` QUIC connections (further ones are refused at once), the
//!   handshake within `broker.handshake_timeout`, the transport limits in [`transport`].
//! - Shutdown: on the broker's shutdown signal the endpoint closes every connection and waits at
//!   most [`CLOSE_GRACE`] for the peers to acknowledge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use edge_config::QuicClientAuth;
use kafka_protocol::messages::{ApiKey, ProduceRequest};
use kafka_protocol::protocol::Decodable;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::protocol::apis::produce;
use crate::protocol::auth::{Identity, TokenFile};
use crate::protocol::frame::{self, FrameError};
use crate::protocol::{Ctx, DispatchError, ListenerKind, Session};

/// The ALPN protocol id a client must offer. It names the wire protocol of `docs/quic.md`
/// (Kafka framing on bidirectional streams); a different protocol gets a different id.
pub const ALPN: &[u8] = b"runnel";

/// Bytes one stream may have in flight towards the broker before the device must wait for the
/// broker to read them (per-stream flow-control window).
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Bytes all streams of one connection together may have in flight towards the broker.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// Bytes of responses the broker buffers per connection before writers wait for the device.
pub const SEND_WINDOW: u64 = 4 * 1024 * 1024;

/// How long shutdown waits for peers to acknowledge the close before giving up.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Bytes of received datagrams held for the broker to read; beyond it the oldest are dropped
/// (datagrams are unreliable by design; the sender is not slowed).
pub const DATAGRAM_RECEIVE_BUFFER: usize = 256 * 1024;

/// TLS sessions remembered for resumption and 0-RTT (about 1 KiB each). Each connection gets one
/// ticket, used once, so a device holds one at a time; beyond this many devices the oldest
/// tickets are forgotten and those devices do a full handshake.
pub const RESUMPTION_SESSIONS: usize = 16 * 1024;

/// Application close code: the device failed or skipped authentication; the reason says why.
pub const CLOSE_AUTH_FAILED: u32 = 1;
/// STOP_SENDING code on a stream whose request frame was over `broker.max_request_bytes`.
pub const STOP_TOO_LARGE: u32 = 1;
/// STOP_SENDING code on a stream whose request was malformed or is not served.
pub const STOP_MALFORMED: u32 = 2;

impl super::conn::ReadSide for quinn::RecvStream {
    fn refuse(&mut self, why: super::conn::Refusal) {
        let code = match why {
            super::conn::Refusal::TooLarge => STOP_TOO_LARGE,
            super::conn::Refusal::Malformed => STOP_MALFORMED,
        };
        // Fails only when the stream has ended already: nothing left to stop.
        let _ = self.stop(VarInt::from_u32(code));
    }
}

/// RESET_STREAM code of a stream whose device read none of its answers for the idle timeout.
pub const RESET_UNREAD: u32 = 3;

impl super::conn::WriteSide for quinn::SendStream {
    fn give_up(&mut self) {
        // Fails only when the stream has ended already.
        let _ = self.reset(VarInt::from_u32(RESET_UNREAD));
    }
}

/// After refusing a device, how long the broker waits for it to hang up (so the response that
/// explains the refusal gets through) before closing the connection itself.
const REFUSAL_GRACE: Duration = Duration::from_millis(500);

/// A bound QUIC listener.
pub struct QuicListener {
    pub addr: SocketAddr,
    /// SHA-256 of the server's leaf certificate, upper-case hex pairs joined by `:`.
    pub fingerprint: String,
    pub task: JoinHandle<()>,
}

/// The transport limits of every QUIC connection. With the defaults, data the broker has
/// accepted but not yet read is at most [`CONNECTION_RECEIVE_WINDOW`] (4 MiB) per connection,
/// unsent responses at most [`SEND_WINDOW`] (4 MiB), and unread datagrams at most
/// [`DATAGRAM_RECEIVE_BUFFER`]: a device that sends faster than the broker reads is slowed by
/// flow control (or loses datagrams) instead of growing broker memory. Devices may not open
/// unidirectional streams, and may have `max_streams` bidirectional ones (Kafka sessions) open
/// at once. A connection quiet for `idle_timeout` is closed.
pub fn transport(idle_timeout: Duration, max_streams: u32) -> anyhow::Result<TransportConfig> {
    let idle = IdleTimeout::try_from(idle_timeout)
        .context("listeners.quic.idle_timeout: too long for QUIC")?;
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(0)
        .max_idle_timeout(Some(idle));
    Ok(t)
}

/// How devices on this listener are identified (`client_auth`).
#[derive(Clone)]
enum Auth {
    None,
    /// A client certificate, whose subject makes the principal as given.
    Certificate(edge_config::CertPrincipal),
    Token(Arc<TokenFile>),
}

/// Binds `[listeners.quic]` and spawns the accept loop.
pub async fn listen(
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<QuicListener> {
    let cfg = &broker.config.listeners.quic;
    let (chain, key) = server_identity(cfg, &broker.config.broker.data_dir)?;
    let fingerprint = fingerprint(&chain[0]);
    let auth = match cfg.client_auth {
        QuicClientAuth::None => Auth::None,
        QuicClientAuth::Mtls => Auth::Certificate(cfg.client_principal),
        QuicClientAuth::Token => Auth::Token(Arc::new(
            TokenFile::open(&cfg.token_file).context("listeners.quic.token_file")?,
        )),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?;
    let builder = match cfg.client_auth {
        QuicClientAuth::Mtls => builder.with_client_cert_verifier(super::tls::client_verifier(
            &cfg.client_ca,
            "listeners.quic.client_ca",
            true,
            provider,
        )?),
        _ => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(chain, key).with_context(|| {
        if cfg.cert.as_os_str().is_empty() {
            let dir = broker.config.broker.data_dir.join("quic");
            format!(
                "the self-signed QUIC certificate and key in {} do not match (one was replaced?): \
                 remove cert.pem and key.pem there to make a new pair (devices then pin its new \
                 fingerprint)",
                dir.display()
            )
        } else {
            format!(
                "listeners.quic: the certificate in {} and the key in {} do not match",
                cfg.cert.display(),
                cfg.key.display()
            )
        }
    })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT: QUIC allows only "unlimited" here. Tickets are stateful and single-use, and
    // requests wait for the handshake to complete (see the module docs).
    tls.max_early_data_size = u32::MAX;
    tls.send_tls13_tickets = 1;
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(RESUMPTION_SESSIONS);
    let crypto = QuicServerConfig::try_from(tls).context("listeners.quic: TLS config for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(cfg.idle_timeout, cfg.max_streams)?));
    // A device whose address changes (NAT rebinding, Wi-Fi to cellular) keeps its connection.
    server.migration(true);
    let socket = bind_udp(cfg.address)
        .with_context(|| format!("cannot bind QUIC listener on udp {}", cfg.address))?;
    let runtime = quinn::default_runtime().context("QUIC needs the tokio runtime")?;
    let endpoint_config = endpoint_config(&broker.config.broker.data_dir.join("quic"))?;
    let endpoint = Endpoint::new(endpoint_config, Some(server), socket, runtime)
        .with_context(|| format!("cannot start the QUIC listener on udp {}", cfg.address))?;
    let addr = endpoint.local_addr()?;
    tracing::info!(listener = ListenerKind::Quic.name(), address = %addr, %fingerprint, client_auth = %cfg.client_auth, "listening");
    let task = tokio::spawn(accept_loop(broker, endpoint, addr, auth, shutdown));
    Ok(QuicListener {
        addr,
        fingerprint,
        task,
    })
}

async fn accept_loop(
    broker: Arc<Broker>,
    endpoint: Endpoint,
    bound: SocketAddr,
    auth: Auth,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(broker.config.broker.max_connections));
    let advertised_host: Arc<str> = if broker.config.broker.advertised_host.is_empty() {
        Arc::from(bound.ip().to_string())
    } else {
        Arc::from(broker.config.broker.advertised_host.as_str())
    };
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::info!(peer = %incoming.remote_address(), "QUIC connection refused: max_connections reached");
            incoming.refuse();
            continue;
        };
        // A connection_creation_rate counts addresses that answered a retry: a spoofed source
        // address must not use up a real one's quota.
        let peer = incoming.remote_address();
        if broker.client_quotas.limits_connections(peer.ip()) {
            if !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
                continue;
            }
            if crate::client_quotas::admit_connection(&broker, peer, "quic").is_err() {
                incoming.refuse();
                continue;
            }
        }
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let advertised_host = advertised_host.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = incoming.remote_address();
            let timeout = broker.config.broker.handshake_timeout;
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    // quinn's words for a first packet that does not decrypt are those of a
                    // failed authentication; no device identity is involved yet.
                    let why = if e.to_string().contains("authentication failed") {
                        "its first packet did not decrypt: not a QUIC client, or a damaged or forged packet"
                    } else {
                        "the QUIC handshake could not start"
                    };
                    tracing::info!(%peer, error = %e, "QUIC connection not accepted: {why}");
                    return;
                }
            };
            let conn = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "QUIC handshake failed");
                    if matches!(auth, Auth::Certificate(_)) && refused_certificate(&e) {
                        broker.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "QUIC handshake timed out");
                    return;
                }
            };
            broker
                .metrics
                .quic_connections_total
                .fetch_add(1, Ordering::Relaxed);
            let identity = match identify(&auth, &conn) {
                Ok(identity) => identity,
                Err(reason) => {
                    tracing::info!(%peer, %reason, "QUIC connection refused");
                    broker.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                    conn.close(VarInt::from_u32(CLOSE_AUTH_FAILED), reason.as_bytes());
                    return;
                }
            };
            if let (Auth::Certificate(_), Some(principal)) = (&auth, identity.principal()) {
                broker.metrics.count_authenticated(principal);
            }
            let link = Link {
                bound,
                advertised_host,
                identity,
            };
            let _open = OpenConnection::count(broker.clone());
            serve_connection(broker, conn, link, shutdown).await;
        });
    }
    endpoint.close(VarInt::from_u32(0), b"broker shutting down");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

/// One connection in `runnel_quic_connections_open`, for as long as this lives.
struct OpenConnection(Arc<Broker>);

impl OpenConnection {
    fn count(broker: Arc<Broker>) -> OpenConnection {
        broker
            .metrics
            .quic_connections_open
            .fetch_add(1, Ordering::Relaxed);
        OpenConnection(broker)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .metrics
            .quic_connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every session of one connection shares.
struct Link {
    bound: SocketAddr,
    advertised_host: Arc<str>,
    identity: Arc<Identity>,
}

impl Link {
    fn session(&self, conn: &quinn::Connection) -> Session {
        Session {
            // The address the connection has now; QUIC lets it change later (migration).
            peer: conn.remote_address(),
            listener: ListenerKind::Quic,
            advertised_host: self.advertised_host.to_string(),
            advertised_port: self.bound.port() as i32,
            identity: self.identity.clone(),
        }
    }
}

/// Whether the broker failed a handshake over the device's certificate (none, an unknown CA,
/// expired, ...): the TLS alert it sent, as a QUIC crypto error (0x100 + alert).
fn refused_certificate(e: &quinn::ConnectionError) -> bool {
    use rustls::AlertDescription as A;
    let quinn::ConnectionError::TransportError(t) = e else {
        return false;
    };
    let Some(alert) = u64::from(t.code)
        .checked_sub(0x100)
        .and_then(|a| u8::try_from(a).ok())
    else {
        return false;
    };
    matches!(
        A::from(alert),
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
    )
}

/// The identity of a connection whose handshake completed, or why it is refused.
fn identify(auth: &Auth, conn: &quinn::Connection) -> Result<Arc<Identity>, String> {
    match auth {
        Auth::None => Ok(Identity::anonymous()),
        Auth::Token(file) => Ok(Identity::sasl(file.current())),
        Auth::Certificate(how) => {
            // The verifier has checked the chain against client_ca; the leaf names the device.
            let leaf = conn
                .peer_identity()
                .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
                .and_then(|chain| chain.first().cloned())
                .ok_or("no client certificate")?;
            let principal = super::tls::principal_of(&leaf, *how)?;
            Ok(Identity::certified(principal))
        }
    }
}

/// Accepts the connection's bidirectional streams, each one a Kafka session, and serves its
/// datagrams, until it closes. When the identity asks for the connection to be closed (failed or
/// missing authentication), the broker closes it with [`CLOSE_AUTH_FAILED`] and the reason; after
/// a failed SaslAuthenticate it first gives the device [`REFUSAL_GRACE`] to read the answer.
async fn serve_connection(
    broker: Arc<Broker>,
    conn: quinn::Connection,
    link: Link,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = conn.remote_address();
    tracing::debug!(%peer, principal = ?link.identity.principal(), "QUIC connection open");
    let datagrams_read = Arc::new(AtomicU64::new(0));
    let datagrams = tokio::spawn(serve_datagrams(
        broker.clone(),
        conn.clone(),
        Arc::new(link.session(&conn)),
        datagrams_read.clone(),
    ));
    let refused = link.identity.closed();
    tokio::pin!(refused);
    // A device that must authenticate has `handshake_timeout` to do it, keep-alives or not.
    let auth_timeout = broker.config.broker.handshake_timeout;
    let auth_deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(auth_deadline);
    let mut auth_timed = link.identity.uses_sasl();
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "QUIC connection closed");
                    break;
                }
            },
            closing = &mut refused => {
                if closing.after_reply {
                    tokio::select! {
                        _ = conn.closed() => {}
                        _ = tokio::time::sleep(REFUSAL_GRACE) => {}
                    }
                }
                conn.close(VarInt::from_u32(CLOSE_AUTH_FAILED), closing.reason.as_bytes());
                break;
            }
            _ = &mut auth_deadline, if auth_timed => {
                auth_timed = false;
                if link.identity.awaits_sasl() && !link.identity.is_closing() {
                    let reason = format!(
                        "authentication required: no SASL authentication within {auth_timeout:?} \
                         (broker.handshake_timeout)"
                    );
                    tracing::info!(%peer, %reason, "closing QUIC connection");
                    if link.identity.close(reason, false) {
                        broker.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            _ = shutdown.changed() => {
                // Held open for the endpoint's close, which tells the device why (dropped
                // here, it would be closed with no reason).
                let conn = conn.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
                });
                break;
            }
        };
        tokio::spawn(super::conn::serve_halves(
            broker.clone(),
            recv,
            send,
            link.session(&conn),
            shutdown.clone(),
        ));
    }
    datagrams.abort();
    // Once it has stopped, so that it reads no datagram after the count is taken.
    let _ = datagrams.await;
    // Datagrams the connection received but the broker never read: dropped by quinn when its
    // receive buffer was full, or still in it at the close.
    let unread = conn
        .stats()
        .frame_rx
        .datagram
        .saturating_sub(datagrams_read.load(Ordering::Relaxed));
    if unread > 0 {
        let metrics = &broker.metrics;
        metrics
            .quic_datagrams_total
            .fetch_add(unread, Ordering::Relaxed);
        metrics
            .quic_datagrams_dropped
            .fetch_add(unread, Ordering::Relaxed);
        tracing::debug!(%peer, unread, "QUIC datagrams dropped unread (datagram receive buffer full)");
    }
}

/// Why a datagram was dropped.
#[derive(Debug, thiserror::Error)]
enum DatagramError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{0:?} is not allowed in a datagram (only Produce with acks=0)")]
    NotProduce(ApiKey),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error("produce with acks={0} in a datagram (only acks=0: nobody can be answered)")]
    Acks(i16),
    #[error("the connection has not authenticated")]
    Unauthenticated,
    #[error("the broker refused the records: Kafka error code {0}")]
    Refused(i16),
    #[error("a quota policy throttled this connection; {0} ms left")]
    Throttled(u64),
}

/// Reads the connection's datagrams one at a time and produces each. A datagram is one Kafka
/// Produce request, header and body without the size prefix, with acks=0 (docs/quic.md). A bad
/// or refused datagram is dropped and counted; the connection goes on. A quota policy's throttle
/// cannot slow a datagram sender down, so it is enforced by dropping the connection's datagrams
/// until the throttle time has passed (the datagram that earned it is stored).
async fn serve_datagrams(
    broker: Arc<Broker>,
    conn: quinn::Connection,
    session: Arc<Session>,
    read: Arc<AtomicU64>,
) {
    let peer = session.peer;
    let mut muted_until: Option<tokio::time::Instant> = None;
    while let Ok(datagram) = conn.read_datagram().await {
        read.fetch_add(1, Ordering::Relaxed);
        let metrics = &broker.metrics;
        metrics.quic_datagrams_total.fetch_add(1, Ordering::Relaxed);
        metrics
            .bytes_in
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let result = match muted_until.filter(|t| *t > now) {
            Some(t) => Err(DatagramError::Throttled((t - now).as_millis() as u64)),
            None => produce_datagram(&broker, &session, datagram)
                .await
                .map(|throttle_ms| {
                    if throttle_ms > 0 {
                        muted_until = Some(now + Duration::from_millis(throttle_ms as u64));
                    }
                }),
        };
        if let Err(e) = result {
            metrics
                .quic_datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "QUIC datagram dropped");
        }
    }
}

/// Produces one datagram; the throttle (ms) a quota policy asked for, or 0.
async fn produce_datagram(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    datagram: Bytes,
) -> Result<u32, DatagramError> {
    let req = frame::decode_request(datagram)?;
    if req.api_key != ApiKey::Produce {
        return Err(DatagramError::NotProduce(req.api_key));
    }
    if !session.identity.admits(req.api_key) {
        return Err(DatagramError::Unauthenticated);
    }
    let version = req.header.request_api_version;
    if !broker.dispatcher.serves(ApiKey::Produce, version) {
        return Err(DispatchError::UnsupportedVersion {
            api: ApiKey::Produce,
            version,
            min: 3,
            max: 9,
        }
        .into());
    }
    let mut body = req.body;
    let produce =
        ProduceRequest::decode(&mut body, version).map_err(|e| DispatchError::BadBody {
            api: ApiKey::Produce,
            version,
            reason: e.to_string(),
        })?;
    if produce.acks != 0 {
        return Err(DatagramError::Acks(produce.acks));
    }
    broker.metrics.count_request(ApiKey::Produce);
    let throttle_ms = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ctx = Ctx {
        broker: broker.clone(),
        session: session.clone(),
        api_version: version,
        client_id: Arc::from(req.header.client_id.as_deref().unwrap_or("")),
        throttle_ms: throttle_ms.clone(),
        holding: Arc::default(),
    };
    let response = produce::handle(ctx, produce).await;
    let refused = response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .map(|p| p.error_code)
        .find(|&code| code != 0);
    match refused {
        Some(code) => Err(DatagramError::Refused(code)),
        None => Ok(throttle_ms.load(Ordering::Relaxed)),
    }
}

/// Receive buffer asked for on the QUIC socket. One socket carries every device, and with the
/// kernel's default (about 208 KiB) a burst that arrives while the broker waits for a CPU
/// overflows it; QUIC then recovers those packets only after a loss-detection delay, which is
/// the multi-second latency tail seen with 1,000 devices. Linux caps it at
/// `net.core.rmem_max`; the size granted is logged.
pub const SOCKET_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// The listener's UDP socket, with [`SOCKET_RECEIVE_BUFFER`] asked for.
pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_RECEIVE_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the QUIC socket's receive buffer");
    }
    socket.bind(&addr.into())?;
    if let Ok(granted) = socket.recv_buffer_size() {
        tracing::debug!(granted, "QUIC socket receive buffer");
    }
    Ok(socket.into())
}

/// The certificate chain and key: the configured PEM files, or the self-signed pair in
/// `<data_dir>/quic/` (made on first use).
pub(crate) fn server_identity(
    cfg: &edge_config::QuicListener,
    data_dir: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (cert, key) = match (
        cfg.cert.as_os_str().is_empty(),
        cfg.key.as_os_str().is_empty(),
    ) {
        (true, true) => self_signed(&data_dir.join("quic"))?,
        (false, false) => (cfg.cert.clone(), cfg.key.clone()),
        _ => bail!("listeners.quic: set both cert and key, or neither (self-signed)"),
    };
    let chain = super::tls::pem_certs(&cert, "listeners.quic.cert")?;
    super::tls::warn_if_expiring(&chain[0], "listeners.quic.cert");
    let key = super::tls::pem_key(&key, "listeners.quic.key")?;
    Ok((chain, key))
}

/// Returns `dir/cert.pem` and `dir/key.pem`, creating a self-signed certificate for `localhost`
/// and `127.0.0.1` when either file is missing.
pub(crate) fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    // One of the two lost (a restore that missed the key, say): devices pinning the old
    // certificate's fingerprint will refuse the new one, which the operator must be told.
    let partial = cert.is_file() || key.is_file();
    let old = super::tls::pem_certs(&cert, "listeners.quic.cert")
        .ok()
        .and_then(|chain| chain.first().map(|c| fingerprint(c.as_ref())))
        .unwrap_or_else(|| "unknown".to_string());
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("cannot generate the self-signed QUIC certificate")?;
    write_new(&key, made.signing_key.serialize_pem().as_bytes(), true)?;
    write_new(&cert, made.cert.pem().as_bytes(), false)?;
    if partial {
        tracing::warn!(cert = %cert.display(), old_fingerprint = %old, new_fingerprint = %fingerprint(made.cert.der()),
            "the self-signed QUIC certificate or its key was missing: made a new pair; devices that pin the old fingerprint refuse it until they pin the new one");
    } else {
        tracing::info!(cert = %cert.display(), "made a self-signed QUIC certificate");
    }
    Ok((cert, key))
}

/// The endpoint's keys, kept in `dir/reset.key` (made on first start, mode 0600) so that a
/// restarted broker recognises the connections of its previous run: the connection ids it hands
/// out are signed with one key, stateless-reset tokens derived from the other. When a device
/// sends on a connection the broker no longer has (after a crash or a restart), the broker
/// answers with a stateless reset and the device reconnects at once instead of waiting for its
/// idle timeout. A missing or damaged file is made again (devices then wait out that one outage).
fn endpoint_config(dir: &Path) -> anyhow::Result<quinn::EndpointConfig> {
    const HMAC_LEN: usize = 32;
    const LEN: usize = HMAC_LEN + 8;
    let path = dir.join("reset.key");
    let bytes = match std::fs::read(&path) {
        Ok(b) if b.len() == LEN => b,
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot read {}", path.display()));
        }
        // Missing, or not what this broker writes (e.g. cut short): made again.
        _ => {
            let mut b = vec![0u8; LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                .map_err(|_| anyhow::anyhow!("no randomness for the QUIC endpoint keys"))?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            write_new(&path, &b, true)?;
            b
        }
    };
    let (hmac, cid) = bytes.split_at(HMAC_LEN);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hmac);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    let cid_key = u64::from_le_bytes(cid.try_into().expect("8 bytes"));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    // Resets are smaller than the packets that prompt them, so they cannot loop or amplify;
    // after a crash every device of the previous run needs one.
    config.min_reset_interval(Duration::from_millis(1));
    Ok(config)
}

/// Writes `path` through a temporary file and a rename, so a crash never leaves half a file;
/// `private` files are readable by the owner only.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    // A leftover from a crash would keep its old mode: start from nothing.
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// SHA-256 of a DER certificate as `AB:CD:...` (the form `openssl x509 -fingerprint -sha256`
/// prints).
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_colon_separated_upper_hex_sha256() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        let f = fingerprint(b"abc");
        assert_eq!(
            f,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn self_signed_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = self_signed(dir.path()).unwrap();
        let first = std::fs::read(&c1).unwrap();
        let (c2, k2) = self_signed(dir.path()).unwrap();
        assert_eq!((c1, k1), (c2.clone(), k2));
        assert_eq!(first, std::fs::read(&c2).unwrap());
    }

    #[test]
    fn cert_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = edge_config::QuicListener {
            cert: dir.path().join("c.pem"),
            ..Default::default()
        };
        let err = server_identity(&cfg, dir.path()).unwrap_err().to_string();
        assert!(err.contains("both cert and key"), "{err}");
    }
}
