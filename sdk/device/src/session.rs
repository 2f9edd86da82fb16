//! One Kafka session over QUIC: the connection, its TLS trust and identity, and one bidirectional
//! stream carrying size-prefixed Kafka frames (docs/quic.md).
//!
//! Connecting: with a TLS session ticket from an earlier connection to the same broker (kept in
//! the config with the TLS configuration, [`crate::link::Tickets`]) and
//! [`DeviceConfig::zero_rtt`] on, the connection is
//! used at once as 0-RTT and the first requests travel with the handshake. With
//! [`Identity::Token`] the session authenticates with SASL PLAIN before it is returned; with
//! [`Identity::Certificate`] the certificate goes in the TLS handshake.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::{DeviceConfig, DeviceError, Identity, Trust, ZeroRtt};

/// The ALPN id of the Runnel QUIC protocol.
const ALPN: &[u8] = b"runnel";
/// A handshake slower than this fails the attempt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request unanswered this long counts as a lost connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failed request waits for the broker's close to say why.
const EXPLAIN_WAIT: Duration = Duration::from_secs(1);
/// The largest response frame accepted.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// The STOP_SENDING code with which the broker refuses a request frame over its
/// `max_request_bytes` (docs/quic.md).
const STOP_TOO_LARGE: u32 = 1;
/// How long an ended stream waits for the broker's STOP_SENDING, which is sent before the end
/// but may arrive after it when its packet was lost. (A broker always stops a stream it ends
/// early, with code 0 when nothing was wrong, or closes the connection: this bounds a wait
/// that ends at once.)
const STOP_WAIT: Duration = Duration::from_secs(3);
/// How long replacing the session stream waits for the broker's stream credit before the
/// device connects afresh instead.
const REOPEN_WAIT: Duration = Duration::from_secs(2);
/// The code the device resets and stops a stream it gives up with.
const STREAM_ABANDONED: u32 = 0;

/// What reading the session stream gave.
pub(crate) enum Read {
    /// Response bytes.
    Data(Bytes),
    /// The broker ended the session; `too_large`: because a request frame was over its
    /// `max_request_bytes` (it answered the requests before that one).
    Ended { too_large: bool },
}

pub(crate) struct Session {
    // Keeps the client endpoint (its UDP socket) alive as long as the connection.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    correlation: i32,
    client_id: StrBytes,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"device closing");
    }
}

impl Session {
    /// Connects to the broker, checks its certificate, opens the session stream and, with a
    /// token, authenticates on it.
    pub(crate) async fn connect(cfg: &DeviceConfig) -> Result<Session, DeviceError> {
        let first = Session::connect_once(cfg, cfg.zero_rtt).await;
        if first.is_err() && cfg.link.zero_rtt().await == ZeroRtt::Rejected {
            // The broker refused the early data (its ticket is gone): the session's stream is
            // dead, but a full handshake will do.
            return Session::connect_once(cfg, false).await;
        }
        first
    }

    async fn connect_once(cfg: &DeviceConfig, zero_rtt: bool) -> Result<Session, DeviceError> {
        let crypto = cfg.tickets.config(&cfg.trust, &cfg.identity)?;
        let mut client = quinn::ClientConfig::new(crypto);
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(cfg.keep_alive);
        client.transport_config(Arc::new(transport));
        let bind: std::net::SocketAddr = if cfg.server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| DeviceError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(client);
        let connecting = endpoint
            .connect(cfg.server, &cfg.server_name)
            .map_err(|e| DeviceError::Connect(e.to_string()))?;
        let early = if zero_rtt {
            // Only possible with a ticket from this broker.
            connecting.into_0rtt()
        } else {
            Err(connecting)
        };
        let (conn, early) = match early {
            Ok((conn, accepted)) => (conn, Some(accepted)),
            Err(connecting) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                Err(_) => return Err(DeviceError::Connect("handshake timed out".into())),
                Ok(Ok(c)) => (c, None),
                Ok(Err(e)) => return Err(handshake_error(e)),
            },
        };
        cfg.link.set(conn.clone(), early);
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| closed_error(&e).unwrap_or_else(|| DeviceError::Connect(e.to_string())))?;
        let mut session = Session {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            correlation: 0,
            client_id: StrBytes::from_string(cfg.client_id.clone()),
        };
        if let Identity::Token { device, token } = &cfg.identity
            && let Err(e) = session.authenticate(device, token).await
        {
            return Err(session.explain(e).await);
        }
        Ok(session)
    }

    /// SASL PLAIN with the device name as user name and the token as password (docs/quic.md).
    async fn authenticate(&mut self, device: &str, token: &str) -> Result<(), DeviceError> {
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let resp = self.call(&hs, 1).await?;
        if resp.error_code != 0 {
            return Err(DeviceError::Refused(format!(
                "the broker does not take SASL PLAIN (Kafka error code {}; is its client_auth \"token\"?)",
                resp.error_code
            )));
        }
        let mut plain = Vec::with_capacity(device.len() + token.len() + 2);
        plain.push(0);
        plain.extend_from_slice(device.as_bytes());
        plain.push(0);
        plain.extend_from_slice(token.as_bytes());
        let auth = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(plain));
        let resp = self.call(&auth, 2).await?;
        if resp.error_code != 0 {
            let reason = resp.error_message.as_deref().unwrap_or("no reason given");
            return Err(DeviceError::Refused(reason.to_string()));
        }
        Ok(())
    }

    /// The clearer error when the broker has closed the connection for a reason the device
    /// should see (a TLS alert about its certificate, a refused identity); `e` otherwise. The
    /// close may trail the failed request by a moment, so this waits for it briefly.
    pub(crate) async fn explain(&self, e: DeviceError) -> DeviceError {
        if matches!(e, DeviceError::Refused(_)) {
            return e;
        }
        let closed = tokio::time::timeout(EXPLAIN_WAIT, self.conn.closed()).await;
        match closed.ok().as_ref().and_then(closed_error) {
            Some(clear) => clear,
            None => e,
        }
    }

    /// Closes the connection and waits briefly for the broker to hear of it.
    pub(crate) async fn close(self) {
        self.conn.close(0u32.into(), b"device closing");
        let _ = tokio::time::timeout(Duration::from_secs(1), self._endpoint.wait_idle()).await;
    }

    /// Sends `req` at `version` and waits for its response.
    pub(crate) async fn call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, DeviceError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.call_inner(req, version)).await {
            Ok(r) => r,
            Err(_) => Err(DeviceError::Connect("request timed out".into())),
        }
    }

    async fn call_inner<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, DeviceError> {
        let (correlation, frame) = self.request_frame(req, version)?;
        self.write_frame(&frame).await?;
        let body = read_frame(&mut self.recv).await?;
        decode_response::<R>(body, correlation, version)
    }

    /// Encodes `req` at `version` as one size-prefixed frame with the next correlation id, and
    /// returns both. The caller writes it ([`Session::write_frame`]) and later decodes the
    /// response with [`decode_response`]; responses come back in request order.
    pub(crate) fn request_frame<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<(i32, Bytes), DeviceError> {
        self.correlation = self.correlation.wrapping_add(1);
        let frame = encode_request(req, version, self.correlation, &self.client_id)?;
        Ok((self.correlation, frame))
    }

    /// Writes a request frame on the session stream. Waits while QUIC flow control holds it.
    /// Fails with [`DeviceError::Broker`] `MESSAGE_TOO_LARGE` when the broker has stopped the
    /// stream because a request frame on it (this one or an earlier one) was too large.
    pub(crate) async fn write_frame(&mut self, frame: &[u8]) -> Result<(), DeviceError> {
        match self.send.write_all(frame).await {
            Ok(()) => Ok(()),
            Err(quinn::WriteError::Stopped(code)) if code.into_inner() == STOP_TOO_LARGE as u64 => {
                Err(DeviceError::Broker {
                    code: crate::worker::MESSAGE_TOO_LARGE,
                    message: Some(
                        "the broker stopped the stream: a request was over its max_request_bytes"
                            .into(),
                    ),
                })
            }
            Err(e) => Err(DeviceError::Connect(e.to_string())),
        }
    }

    /// Reads whatever response bytes have arrived on the session stream (cancel-safe: dropping
    /// the future loses nothing), or how the stream ended.
    pub(crate) async fn read_chunk(&mut self) -> Result<Read, DeviceError> {
        match self.recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => Ok(Read::Data(c.bytes)),
            Ok(None) => Ok(Read::Ended {
                too_large: self.refused_too_large().await,
            }),
            Err(_) if self.refused_too_large().await => Ok(Read::Ended { too_large: true }),
            Err(e) => Err(DeviceError::Connect(e.to_string())),
        }
    }

    /// Whether the broker stopped the session stream because a request frame was too large.
    async fn refused_too_large(&mut self) -> bool {
        let stopped = tokio::time::timeout(STOP_WAIT, self.send.stopped()).await;
        matches!(stopped, Ok(Ok(Some(code))) if code.into_inner() == STOP_TOO_LARGE as u64)
    }

    /// Replaces the session stream, which the broker has ended, with a new one on the same
    /// connection (which keeps its identity and its other streams).
    pub(crate) async fn reopen(&mut self) -> Result<(), DeviceError> {
        // Close the old stream on both sides first, so that it stops counting against the
        // broker's stream limit. Its credit comes back only once an eighth of the limit is
        // free: with more than 12 subscriptions it may not, and the device reconnects.
        let _ = self.send.reset(STREAM_ABANDONED.into());
        let _ = self.recv.stop(STREAM_ABANDONED.into());
        let opened = tokio::time::timeout(REOPEN_WAIT, self.conn.open_bi()).await;
        let (send, recv) = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(DeviceError::Connect(e.to_string())),
            Err(_) => {
                return Err(DeviceError::Connect(
                    "no stream free on the connection".into(),
                ));
            }
        };
        self.send = send;
        self.recv = recv;
        Ok(())
    }

    /// The QUIC connection (for opening more streams on it).
    pub(crate) fn connection(&self) -> quinn::Connection {
        self.conn.clone()
    }

    /// The client id sent with every request.
    pub(crate) fn client_id(&self) -> &StrBytes {
        &self.client_id
    }
}

/// A request frame: size, request header (`correlation`, `client_id`), `req` at `version`.
pub(crate) fn encode_request<R: Request>(
    req: &R,
    version: i16,
    correlation: i32,
    client_id: &StrBytes,
) -> Result<Bytes, DeviceError> {
    let api = ApiKey::try_from(R::KEY).map_err(|_| protocol("unknown API key"))?;
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(client_id.clone()));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header
        .encode(&mut frame, api.request_header_version(version))
        .map_err(|e| protocol(&e.to_string()))?;
    req.encode(&mut frame, version)
        .map_err(|e| protocol(&e.to_string()))?;
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(frame.freeze())
}

/// Decodes a response frame body (no size prefix) to `R`'s response, checking that it answers
/// the request with `correlation`.
pub(crate) fn decode_response<R: Request>(
    mut body: Bytes,
    correlation: i32,
    version: i16,
) -> Result<R::Response, DeviceError> {
    let api = ApiKey::try_from(R::KEY).map_err(|_| protocol("unknown API key"))?;
    let rh = ResponseHeader::decode(&mut body, api.response_header_version(version))
        .map_err(|e| protocol(&e.to_string()))?;
    if rh.correlation_id != correlation {
        return Err(protocol("response correlation id does not match"));
    }
    R::Response::decode(&mut body, version).map_err(|e| protocol(&e.to_string()))
}

/// Takes the first complete frame (its body, without the size) off the front of `buf`, or
/// `None` while it is incomplete. A negative or oversized size is a protocol error.
pub(crate) fn split_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, DeviceError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 0 || len as usize > MAX_RESPONSE_BYTES {
        return Err(protocol("bad response frame size"));
    }
    if buf.len() < 4 + len as usize {
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + len as usize);
    let _ = frame.split_to(4);
    Ok(Some(frame.freeze()))
}

/// Reads one whole response frame (not cancel-safe).
pub(crate) async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Bytes, DeviceError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| DeviceError::Connect(e.to_string()))?;
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > MAX_RESPONSE_BYTES {
        return Err(protocol("bad response frame size"));
    }
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| DeviceError::Connect(e.to_string()))?;
    Ok(Bytes::from(body))
}

fn protocol(msg: &str) -> DeviceError {
    DeviceError::Protocol(msg.to_string())
}

/// Handshake failures from TLS (certificate, ALPN) are `Tls`; the rest are `Connect`.
fn handshake_error(e: quinn::ConnectionError) -> DeviceError {
    if let Some(clear) = closed_error(&e) {
        return clear;
    }
    match e {
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            DeviceError::Connect(
                "the broker refused the connection: it serves as many as it allows \
                 (broker.max_connections)"
                    .into(),
            )
        }
        quinn::ConnectionError::TransportError(t) => DeviceError::Tls(t.to_string()),
        quinn::ConnectionError::ConnectionClosed(c) => DeviceError::Tls(c.to_string()),
        other => DeviceError::Connect(other.to_string()),
    }
}

/// The broker's application close code for a refused identity (docs/quic.md).
const CLOSE_AUTH_FAILED: u32 = 1;

/// A clear error for a connection the broker closed because of who the device is: a TLS alert
/// (QUIC crypto error 0x100 + alert) or the broker's authentication refusal.
pub(crate) fn closed_error(e: &quinn::ConnectionError) -> Option<DeviceError> {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            let alert = u8::try_from(code.checked_sub(0x100)?).ok()?;
            let alert = rustls::AlertDescription::from(alert);
            let reason = String::from_utf8_lossy(&c.reason);
            Some(DeviceError::Tls(format!(
                "the broker refused the TLS handshake with alert {alert:?}{}{reason}",
                if reason.is_empty() { "" } else { ": " }
            )))
        }
        quinn::ConnectionError::ApplicationClosed(a)
            if a.error_code == quinn::VarInt::from_u32(CLOSE_AUTH_FAILED) =>
        {
            Some(DeviceError::Refused(
                String::from_utf8_lossy(&a.reason).into_owned(),
            ))
        }
        _ => None,
    }
}

pub(crate) fn client_tls(
    trust: &Trust,
    identity: &Identity,
) -> Result<rustls::ClientConfig, DeviceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DeviceError::Tls(e.to_string()))?;
    let builder = match trust {
        Trust::Fingerprint(f) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint: pinned_fingerprint(f)?,
                provider,
            })),
        Trust::CaPem(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let bad = |e: &dyn std::fmt::Display| {
                DeviceError::Config(format!("CA file {}: {e}", path.display()))
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?;
            for c in certs {
                let c = c.map_err(|e| bad(&e))?;
                roots.add(c).map_err(|e| bad(&e))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut tls = match identity {
        Identity::Certificate { cert, key } => {
            // Files that cannot be used are the device's configuration, found before any
            // handshake.
            let bad = |what: &str, e: &dyn std::fmt::Display, p: &std::path::Path| {
                DeviceError::Config(format!("{what} {}: {e}", p.display()))
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("client certificate", &e, cert))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad("client certificate", &e, cert))?;
            if chain.is_empty() {
                return Err(bad(
                    "client certificate",
                    &"no certificate in the file",
                    cert,
                ));
            }
            let key_path = key;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| bad("client key", &e, key_path))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                DeviceError::Config(format!(
                    "client certificate {} and key {} do not go together: {e}",
                    cert.display(),
                    key_path.display()
                ))
            })?
        }
        Identity::None | Identity::Token { .. } => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// A pinned fingerprint in the form [`sha256_fingerprint`] gives: any case, with or without the
/// `:` between the pairs; anything else is refused before connecting.
fn pinned_fingerprint(f: &str) -> Result<String, DeviceError> {
    let hex: String = f
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(DeviceError::Config(format!(
            "the pinned fingerprint {f:?} is not a SHA-256 fingerprint (32 hex pairs, as the \
             broker prints it: AB:CD:...)"
        )));
    }
    let pairs: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
    Ok(pairs.join(":"))
}

/// The broker's certificate is not the pinned one.
struct FingerprintMismatch {
    got: String,
    pinned: String,
}

/// rustls shows a certificate error's cause with `Debug`: the sentence, not the struct.
impl std::fmt::Debug for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the broker's certificate has SHA-256 fingerprint {}, not the pinned {}",
            self.got, self.pinned
        )
    }
}

impl std::error::Error for FingerprintMismatch {}

/// SHA-256 of DER bytes as upper-case hex pairs joined by `:`.
pub(crate) fn sha256_fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts only the leaf certificate with the pinned SHA-256; the handshake signature is still
/// verified with that certificate's key.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = sha256_fingerprint(end_entity);
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    FingerprintMismatch {
                        got,
                        pinned: self.fingerprint.clone(),
                    },
                ))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
