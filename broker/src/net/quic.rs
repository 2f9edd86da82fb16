//! The QUIC listener for devices: Kafka sessions over QUIC streams (wire protocol: `docs/quic.md`).
//!
//! - UDP + QUIC v1 (quinn), TLS 1.3 only (rustls with the `ring` provider), ALPN [`ALPN`].
//! - Every bidirectional stream a client opens is one Kafka session, served by
//!   [`super::conn::serve`] exactly as a TCP connection is: same frames, handlers and error codes.
//!   A bad frame closes that stream only; the connection and its other streams go on.
//! - The server certificate comes from `[listeners.quic] cert/key`, or when both are empty from a
//!   self-signed certificate made once in `<data_dir>/quic/` and reused; its SHA-256 fingerprint is
//!   logged and returned so devices can pin it.
//! - Bounds: `broker.max_connections` QUIC connections (further ones are refused at once), the
//!   handshake within `broker.handshake_timeout`, the transport limits in [`transport`].
//! - Shutdown: on the broker's shutdown signal the endpoint closes every connection and waits at
//!   most [`CLOSE_GRACE`] for the peers to acknowledge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::protocol::{ListenerKind, Session};

/// The ALPN protocol id a client must offer. It names the wire protocol of `docs/quic.md`
/// (Kafka framing on bidirectional streams); a different protocol gets a different id.
pub const ALPN: &[u8] = b"runnel";

/// A connection with no packets for this long is closed (QUIC transport idle timeout, the lower
/// of both sides' values applies). Devices that stay connected while quiet send keep-alives.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes one stream may have in flight towards the broker before the device must wait for the
/// broker to read them (per-stream flow-control window).
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Bytes all streams of one connection together may have in flight towards the broker.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// Bytes of responses the broker buffers per connection before writers wait for the device.
pub const SEND_WINDOW: u64 = 4 * 1024 * 1024;

/// Kafka sessions (bidirectional streams) one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// How long shutdown waits for peers to acknowledge the close before giving up.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A bound QUIC listener.
pub struct QuicListener {
    pub addr: SocketAddr,
    /// SHA-256 of the server's leaf certificate, upper-case hex pairs joined by `:`.
    pub fingerprint: String,
    pub task: JoinHandle<()>,
}

/// The transport limits of every QUIC connection. With the defaults, data the broker has
/// accepted but not yet read is at most [`CONNECTION_RECEIVE_WINDOW`] (4 MiB) per connection, and
/// unsent responses at most [`SEND_WINDOW`] (4 MiB): a device that sends faster than the broker
/// reads is slowed by flow control instead of growing broker memory. Devices may not open
/// unidirectional streams, and datagrams are off (not part of the protocol yet).
pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(Some(
            IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s fits a QUIC varint"),
        ));
    t
}

/// Binds `[listeners.quic]` and spawns the accept loop.
pub async fn listen(
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<QuicListener> {
    let cfg = &broker.config.listeners.quic;
    let (chain, key) = server_identity(cfg, &broker.config.broker.data_dir)?;
    let fingerprint = fingerprint(&chain[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("listeners.quic: certificate and key do not match")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: early data could be replayed, and produce is not idempotent for every client.
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).context("listeners.quic: TLS config for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport()));
    let endpoint = Endpoint::server(server, cfg.address)
        .with_context(|| format!("cannot bind QUIC listener on udp {}", cfg.address))?;
    let addr = endpoint.local_addr()?;
    tracing::info!(listener = ListenerKind::Quic.name(), address = %addr, %fingerprint, "listening");
    let task = tokio::spawn(accept_loop(broker, endpoint, addr, shutdown));
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
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let advertised_host = advertised_host.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let peer = incoming.remote_address();
            let timeout = broker.config.broker.handshake_timeout;
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "QUIC connection not accepted");
                    return;
                }
            };
            let conn = match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "QUIC handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "QUIC handshake timed out");
                    return;
                }
            };
            serve_connection(broker, conn, bound, advertised_host, shutdown).await;
        });
    }
    endpoint.close(VarInt::from_u32(0), b"broker shutting down");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

/// Accepts the connection's bidirectional streams, each one a Kafka session, until it closes.
async fn serve_connection(
    broker: Arc<Broker>,
    conn: quinn::Connection,
    bound: SocketAddr,
    advertised_host: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = conn.remote_address();
    tracing::debug!(%peer, "QUIC connection open");
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "QUIC connection closed");
                    return;
                }
            },
            _ = shutdown.changed() => return,
        };
        let session = Session {
            // The address the connection has now; QUIC lets it change later (migration).
            peer: conn.remote_address(),
            listener: ListenerKind::Quic,
            advertised_host: advertised_host.to_string(),
            advertised_port: bound.port() as i32,
            principal: "User:ANONYMOUS".to_string(),
        };
        let stream = tokio::io::join(recv, send);
        tokio::spawn(super::conn::serve(
            broker.clone(),
            stream,
            session,
            shutdown.clone(),
        ));
    }
}

/// The certificate chain and key: the configured PEM files, or the self-signed pair in
/// `<data_dir>/quic/` (made on first use).
fn server_identity(
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
    let chain: Vec<_> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("listeners.quic.cert: cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listeners.quic.cert: bad PEM in {}", cert.display()))?;
    if chain.is_empty() {
        bail!("listeners.quic.cert: no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key).with_context(|| {
        format!(
            "listeners.quic.key: no usable private key in {}",
            key.display()
        )
    })?;
    Ok((chain, key))
}

/// Returns `dir/cert.pem` and `dir/key.pem`, creating a self-signed certificate for `localhost`
/// and `127.0.0.1` when either file is missing.
fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("cannot generate the self-signed QUIC certificate")?;
    write_new(&key, made.signing_key.serialize_pem().as_bytes(), true)?;
    write_new(&cert, made.cert.pem().as_bytes(), false)?;
    tracing::info!(cert = %cert.display(), "made a self-signed QUIC certificate");
    Ok((cert, key))
}

/// Writes `path` through a temporary file and a rename, so a crash never leaves half a file;
/// `private` files are readable by the owner only.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
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
