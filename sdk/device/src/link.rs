//! What a [`crate::Device`] knows about its current QUIC connection, shared between the
//! background task that owns the connection and the handle that sends datagrams, and the TLS
//! session tickets that let a reconnect resume with 0-RTT.
//!
//! The worker replaces the connection on every reconnect ([`Link::set`]); readers always see the
//! newest one. Tickets (with the TLS configuration they belong to) live in the
//! [`crate::DeviceConfig`] (clones of a config share them), so a device that reconnects, or a new
//! device made from the same config, resumes the TLS session.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::{DeviceError, Identity, Trust};

/// Whether the current connection sent its first requests as 0-RTT early data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroRtt {
    /// A full handshake: no ticket for this broker yet, or 0-RTT is off
    /// ([`crate::DeviceConfig::zero_rtt`]).
    NotTried,
    /// Early data was sent; the handshake has not finished yet.
    Pending,
    /// The broker accepted the early data: the first requests left without waiting a round trip.
    Accepted,
    /// The broker refused the early data (e.g. it restarted and forgot the ticket); the requests
    /// sent early fail and the device reconnects with a full handshake.
    Rejected,
}

#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) conn: Option<quinn::Connection>,
    pub(crate) zero_rtt: ZeroRtt,
}

/// The device's current connection (one per [`crate::Device`]).
#[derive(Clone)]
pub(crate) struct Link(Arc<watch::Sender<Current>>);

impl Default for Link {
    fn default() -> Self {
        Link(Arc::new(
            watch::channel(Current {
                conn: None,
                zero_rtt: ZeroRtt::NotTried,
            })
            .0,
        ))
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    /// Records a new connection; with `early`, watches whether its 0-RTT data is accepted.
    pub(crate) fn set(&self, conn: quinn::Connection, early: Option<quinn::ZeroRttAccepted>) {
        let id = conn.stable_id();
        let zero_rtt = if early.is_some() {
            ZeroRtt::Pending
        } else {
            ZeroRtt::NotTried
        };
        self.0.send_replace(Current {
            conn: Some(conn),
            zero_rtt,
        });
        if let Some(early) = early {
            let link = self.0.clone();
            tokio::spawn(async move {
                let accepted = early.await;
                link.send_if_modified(|c| {
                    // Only if the connection is still the one that tried.
                    let same = c.conn.as_ref().is_some_and(|c| c.stable_id() == id);
                    if same {
                        c.zero_rtt = if accepted {
                            ZeroRtt::Accepted
                        } else {
                            ZeroRtt::Rejected
                        };
                    }
                    same
                });
            });
        }
    }

    /// The current connection, if the device has one.
    pub(crate) fn conn(&self) -> Option<quinn::Connection> {
        self.0.borrow().conn.clone()
    }

    /// The 0-RTT outcome of the current connection, waiting while it is pending.
    pub(crate) async fn zero_rtt(&self) -> ZeroRtt {
        let mut rx = self.0.subscribe();
        match rx.wait_for(|c| c.zero_rtt != ZeroRtt::Pending).await {
            Ok(c) => c.zero_rtt,
            Err(_) => ZeroRtt::NotTried,
        }
    }
}

/// The TLS client configuration of a device and its session tickets, shared by clones of a
/// [`crate::DeviceConfig`]. rustls resumes a session only with the very configuration (verifier and
/// client certificate) that made it, so the configuration is built once and reused while the
/// trust and identity stay the same.
#[derive(Clone, Default)]
pub(crate) struct Tickets(Arc<Mutex<Option<Built>>>);

struct Built {
    trust: Trust,
    identity: Identity,
    config: Arc<quinn::crypto::rustls::QuicClientConfig>,
}

impl Tickets {
    /// The QUIC TLS configuration for `trust` and `identity`, built on first use.
    pub(crate) fn config(
        &self,
        trust: &Trust,
        identity: &Identity,
    ) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>, DeviceError> {
        let mut built = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = built.as_ref()
            && b.trust == *trust
            && b.identity == *identity
        {
            return Ok(b.config.clone());
        }
        let mut tls = crate::session::client_tls(trust, identity)?;
        // A few brokers per device; each broker gives one ticket per connection.
        tls.resumption = rustls::client::Resumption::in_memory_sessions(8);
        // Early data is offered; whether a connection sends any is `DeviceConfig::zero_rtt`.
        tls.enable_early_data = true;
        let config = Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| DeviceError::Tls(e.to_string()))?,
        );
        *built = Some(Built {
            trust: trust.clone(),
            identity: identity.clone(),
            config: config.clone(),
        });
        Ok(config)
    }
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets")
    }
}
