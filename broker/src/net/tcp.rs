//! The TCP accept loop, shared by the plaintext and the TLS Kafka listener.
//!
//! A listener with a `sasl_plain_file` or `sasl_oauthbearer` makes every connection
//! authenticate with SASL (PLAIN, SCRAM or OAUTHBEARER)
//! before anything else (`protocol::auth`); a failed authentication is answered and the
//! connection then closed (`net::conn`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::log_budget::{LogBudget, within_budget};
use crate::protocol::auth::{Identity, TokenFile};
use crate::protocol::oauth::OAuthValidator;
use crate::protocol::{ListenerKind, Session};

/// The listener's SASL users (PLAIN and SCRAM): `None` when `path` is empty (no authentication);
/// a file that cannot be read or parsed is an error naming `key` and the line.
pub fn sasl_file(path: &Path, key: &str) -> anyhow::Result<Option<Arc<TokenFile>>> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let file = TokenFile::open_users(path).with_context(|| key.to_string())?;
    Ok(Some(Arc::new(file)))
}

/// Failed accepts logged per minute (out of file descriptors, every try fails).
static ACCEPT_ERRORS: LogBudget = LogBudget::new(6);
/// Connections closed for their address's `max_connections_per_ip`, said a minute.
static OVER_IP_LIMIT: LogBudget = LogBudget::new(10);

/// How a listener's clients authenticate with SASL: none of the two, and they do not.
#[derive(Clone, Default)]
pub struct Sasl {
    /// `sasl_plain_file`: users for PLAIN and SCRAM.
    pub users: Option<Arc<TokenFile>>,
    /// `sasl_oauthbearer`: the token checker.
    pub oauth: Option<Arc<OAuthValidator>>,
}

impl Sasl {
    fn required(&self) -> bool {
        self.users.is_some() || self.oauth.is_some()
    }
}

/// Binds `addr` and spawns the accept loop. Returns the bound address (port 0 picks one).
pub async fn listen(
    broker: Arc<Broker>,
    addr: SocketAddr,
    tls: Option<super::tls::TlsServer>,
    sasl: Sasl,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind Kafka listener on {addr}"))?;
    let bound = listener.local_addr()?;
    let kind = if tls.is_some() {
        ListenerKind::Tls
    } else {
        ListenerKind::Plaintext
    };
    tracing::info!(listener = kind.name(), address = %bound, "listening");
    let task = tokio::spawn(accept_loop(
        broker, listener, bound, tls, sasl, kind, shutdown,
    ));
    Ok((bound, task))
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    bound: SocketAddr,
    tls: Option<super::tls::TlsServer>,
    sasl: Sasl,
    kind: ListenerKind,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(broker.config.broker.max_connections));
    // Without advertised_host, the bound address; for a wildcard (0.0.0.0, ::), which no client
    // can connect to, the address each client reached (below).
    let configured = &broker.config.broker.advertised_host;
    let wildcard = configured.is_empty() && bound.ip().is_unspecified();
    let advertised_host = if configured.is_empty() {
        bound.ip().to_string()
    } else {
        configured.clone()
    };
    let handshake_timeout = broker.config.broker.handshake_timeout;
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and say so a few times
                    // a minute, not twenty times a second.
                    within_budget!(ACCEPT_ERRORS, warn, error = %e, "accept failed{}", crate::storage::limit_hint(&e));
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let ip_slot = match broker.connections_per_ip.take(peer.ip()) {
            Ok(slot) => slot,
            Err(limit) => {
                broker
                    .metrics
                    .connections_over_ip_limit
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                within_budget!(OVER_IP_LIMIT, info, %peer, listener = kind.name(), limit, "connection closed: its address has broker.max_connections_per_ip connections open");
                drop(stream);
                continue;
            }
        };
        if let Err(ms) = crate::client_quotas::admit_connection(&broker, peer, kind.name()) {
            hold_then_close(stream, ms);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let advertised_host = match stream.local_addr() {
            Ok(local) if wildcard => local.ip().to_canonical().to_string(),
            _ => advertised_host.clone(),
        };
        let session = Session {
            peer,
            listener: kind,
            advertised_host,
            advertised_port: bound.port() as i32,
            // SASL names the client; without it a verified certificate may (below).
            identity: if sasl.required() {
                Identity::sasl_listener(
                    sasl.users.clone(),
                    broker.scram.clone(),
                    sasl.oauth.clone(),
                    Some(broker.config.broker.connections_max_reauth),
                )
            } else {
                Identity::anonymous()
            },
        };

        let broker = broker.clone();
        let tls = tls.clone();
        let sasl = sasl.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ip_slot = ip_slot;
            match tls {
                None => super::conn::serve(broker, stream, session, shutdown).await,
                Some(tls) => {
                    let accepted =
                        tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(tls_stream)) => {
                            // With `client_ca` set, the verified certificate names the client
                            // (unless it logs in with SASL); one that names no one client is
                            // refused, as Kafka refuses a principal it cannot build.
                            let principal = tls_stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .filter(|_| !sasl.required())
                                .map(|leaf| tls.naming.principal(leaf));
                            let session = match principal {
                                Some(Ok(p)) => {
                                    broker.metrics.count_authenticated(&p);
                                    Session {
                                        identity: Identity::certified(p),
                                        ..session
                                    }
                                }
                                Some(Err(reason)) => {
                                    broker
                                        .metrics
                                        .auth_failures
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    within_budget!(CERT_REFUSED, info, %peer, reason, "closing connection");
                                    return;
                                }
                                None => session,
                            };
                            super::conn::serve(broker, tls_stream, session, shutdown).await
                        }
                        Ok(Err(e)) => {
                            // A refused client certificate is a failed authentication.
                            let refused_cert = e
                                .get_ref()
                                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                                .is_some_and(|r| {
                                    matches!(
                                        r,
                                        rustls::Error::InvalidCertificate(_)
                                            | rustls::Error::NoCertificatesPresented
                                    )
                                });
                            if refused_cert {
                                broker
                                    .metrics
                                    .auth_failures
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            within_budget!(HANDSHAKE_FAILED, info, %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            within_budget!(HANDSHAKE_FAILED, info, %peer, "TLS handshake timed out")
                        }
                    }
                }
            }
        });
    }
}

/// Failed TLS handshakes said a minute (anyone who can reach the port can fail one).
static HANDSHAKE_FAILED: LogBudget = LogBudget::new(60);

/// Client certificates refused for the principal they name, said a minute.
static CERT_REFUSED: LogBudget = LogBudget::new(60);

/// Connections over their address's connection_creation_rate held open before they are closed.
static HELD_OVER_RATE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// At most this many of them are held; beyond, one is closed at once.
const MAX_HELD_OVER_RATE: usize = 1024;

/// Closes a connection its address's connection_creation_rate turned away once the throttle
/// (`ms`, at most a second) has passed, as Kafka delays the close: a client does not come back
/// in a tight loop. It holds no `max_connections` slot meanwhile.
fn hold_then_close(stream: tokio::net::TcpStream, ms: u32) {
    use std::sync::atomic::Ordering;
    if HELD_OVER_RATE.fetch_add(1, Ordering::Relaxed) >= MAX_HELD_OVER_RATE {
        HELD_OVER_RATE.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(ms.min(1000)))).await;
        drop(stream);
        HELD_OVER_RATE.fetch_sub(1, Ordering::Relaxed);
    });
}
