//! A follower's connection to its leader: Kafka requests over TCP or TLS (`cluster.tls`),
//! encoded and decoded with the kafka-protocol crate, one at a time, after a SASL login when
//! the cluster has one (`cluster.sasl_mechanism`). The command line's requests that no
//! librdkafka API sends (`runnel quotas`) go the same way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::protocol::scram::{Scram, ScramClient};

/// A follower's SASL login to its leader (`cluster.sasl_*`).
#[derive(Clone)]
pub struct Login {
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Login")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Largest response taken from a leader: a fetch asks for at most
/// [`super::follower::FETCH_MAX_BYTES`], plus one batch over that (KIP-74).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// A connection to a broker: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub(crate) struct Peer {
    stream: BufReader<Box<dyn Stream>>,
    correlation_id: i32,
    client_id: StrBytes,
    /// How errors name the other side: "the leader", "the broker".
    who: &'static str,
    /// Longest a request may take, its answer included (Kafka's `replica.socket.timeout.ms`):
    /// a leader whose machine went away without closing the connection is noticed.
    timeout: Duration,
}

impl Peer {
    /// Connects to `address` as `client_id`, over TLS when `tls` is given (its config and the
    /// name the broker's certificate must carry); errors call the broker `who`.
    pub(crate) async fn connect_as(
        address: &str,
        client_id: &str,
        who: &'static str,
        tls: Option<(
            Arc<rustls::ClientConfig>,
            rustls_pki_types::ServerName<'static>,
        )>,
        timeout: Duration,
    ) -> anyhow::Result<Peer> {
        let connecting = async {
            let tcp = TcpStream::connect(address)
                .await
                .with_context(|| format!("cannot connect to {address}"))?;
            tcp.set_nodelay(true)?;
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some((config, name)) => Box::new(
                    tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .with_context(|| format!("TLS handshake with {address} failed"))?,
                ),
            };
            anyhow::Ok(stream)
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {address} in {timeout:?}"))??;
        Ok(Peer {
            stream: BufReader::new(stream),
            correlation_id: 0,
            client_id: StrBytes::from_string(client_id.to_string()),
            who,
            timeout,
        })
    }

    /// Logs in with SASL (SaslHandshake, then SaslAuthenticate once for PLAIN, twice for SCRAM,
    /// whose server signature is checked).
    pub(crate) async fn login(&mut self, login: &Login) -> anyhow::Result<()> {
        let handshake = self
            .call(
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_string(login.mechanism.clone())),
                1,
            )
            .await?;
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            bail!(
                "{} does not take SASL {} (it offers {offered:?})",
                self.who,
                login.mechanism
            );
        }
        match Scram::from_name(&login.mechanism) {
            None => {
                let plain = format!("\0{}\0{}", login.username, login.password);
                self.authenticate(plain.into_bytes()).await?;
            }
            Some(mechanism) => {
                let mut client = ScramClient::new(mechanism, &login.username, &login.password)?;
                let server_first = self.authenticate(client.first()).await?;
                let last = client.last(&server_first)?;
                let server_final = self.authenticate(last).await?;
                client.verify(&server_final)?;
            }
        }
        Ok(())
    }

    async fn authenticate(&mut self, bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let response = self
            .call(
                &SaslAuthenticateRequest::default().with_auth_bytes(bytes.into()),
                2,
            )
            .await?;
        if response.error_code != 0 {
            bail!(
                "{} refused the login: {}",
                self.who,
                response
                    .error_message
                    .as_ref()
                    .map_or("no reason given", |m| m.as_str())
            );
        }
        Ok(response.auth_bytes.to_vec())
    }

    /// Sends `req` at `version` and reads its response.
    pub(crate) async fn call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> anyhow::Result<R::Response> {
        let (timeout, who) = (self.timeout, self.who);
        tokio::time::timeout(timeout, self.exchange(req, version))
            .await
            .map_err(|_| anyhow::anyhow!("{who} did not answer in {timeout:?}"))?
    }

    async fn exchange<R: Request>(&mut self, req: &R, version: i16) -> anyhow::Result<R::Response> {
        let api = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("API key {}", R::KEY))?;
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()))
            .encode(&mut buf, api.request_header_version(version))?;
        req.encode(&mut buf, version)?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        let who = self.who;
        let writer = self.stream.get_mut();
        writer.write_all(&buf).await?;
        writer.flush().await?;

        let size = self
            .stream
            .read_i32()
            .await
            .with_context(|| format!("{who} closed the connection"))?;
        if size < 0 || size as usize > MAX_RESPONSE_BYTES {
            // A TLS record (an alert: 0x15, version 3.x) where a Kafka frame was expected.
            if (size as u32) >> 16 == 0x1503 {
                bail!("{who} answered with TLS: that address is a TLS listener");
            }
            bail!("{who} sent a response frame of {size} bytes");
        }
        let mut frame = BytesMut::zeroed(size as usize);
        self.stream.read_exact(&mut frame).await?;
        let mut frame = frame.freeze();
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "{who} answered correlation id {} to request {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        R::Response::decode(&mut frame, version)
    }
}
