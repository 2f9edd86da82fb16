//! SaslHandshake (key 17) and SaslAuthenticate (key 36), checked against the listener's
//! credentials: a Kafka listener's `sasl_plain_file` (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512)
//! and, with `sasl_oauthbearer`, the identity provider's tokens (OAUTHBEARER), or QUIC device
//! tokens (PLAIN) (`protocol::auth`, `protocol::scram`, `protocol::oauth`).
//!
//! Only handshake v1 is served: v0 would switch the connection to raw SASL frames, so a v0
//! handshake is answered with UNSUPPORTED_VERSION. v0 is still advertised, because librdkafka
//! up to at least 2.0 (Debian's kcat) starts SASL only with a broker that lists handshake v0,
//! and then sends v1 when SaslAuthenticate is listed too. The handshake's mechanism is the one
//! the following SaslAuthenticate messages use; one it does not serve is answered
//! UNSUPPORTED_SASL_MECHANISM with the list, and the connection closed, as is a handshake in the
//! middle of a SCRAM exchange (ILLEGAL_SASL_STATE) and a SaslAuthenticate before any handshake
//! (ILLEGAL_SASL_STATE; Kafka closes such a connection without an answer). A listener without
//! credentials answers the handshake with UNSUPPORTED_SASL_MECHANISM and an empty list, and
//! SaslAuthenticate (like one after success) with ILLEGAL_SASL_STATE.
//!
//! A login with an end (`broker.connections_max_reauth`, an OAUTHBEARER token's expiry) is told
//! to the client by SaslAuthenticate v1+ (`session_lifetime_ms`), and a handshake after it
//! starts a re-authentication (KIP-368), whose SaslAuthenticate must be of the login's
//! mechanism and principal, else SASL_AUTHENTICATION_FAILED with the reason and the connection
//! closed (as Kafka answers a changed mechanism: at the SaslAuthenticate, with a message). A
//! login without an end is made once: a handshake after it is answered ILLEGAL_SASL_STATE. A failed authentication is answered with
//! SASL_AUTHENTICATION_FAILED and its reason, 100 ms later (Kafka's
//! `connection.failed.authentication.delay.ms`), and the connection is then closed with that
//! reason ([`crate::protocol::auth::Identity::close`]).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};

use super::s;
use crate::log_budget::{LogBudget, client_text, within_budget};
use crate::protocol::Ctx;
use crate::protocol::auth::{AuthError, Authenticated, HandshakeRefused};

/// How long a failed authentication waits before it is answered (Kafka's default 100 ms).
const FAILED_LOGIN_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

pub async fn handshake(ctx: Ctx, req: SaslHandshakeRequest) -> SaslHandshakeResponse {
    if ctx.api_version < 1 {
        return SaslHandshakeResponse::default().with_error_code(E::UnsupportedVersion.code());
    }
    let identity = &ctx.session.identity;
    if !identity.uses_sasl() {
        return SaslHandshakeResponse::default()
            .with_error_code(E::UnsupportedSaslMechanism.code());
    }
    let out = SaslHandshakeResponse::default()
        .with_mechanisms(identity.mechanisms().iter().map(|m| s(*m)).collect());
    match identity.choose_mechanism(&req.mechanism) {
        Ok(()) => out,
        // As Kafka without connections.max.reauth.ms: a connection logs in once.
        Err(HandshakeRefused::LoggedIn) => out.with_error_code(E::IllegalSaslState.code()),
        Err(HandshakeRefused::Unsupported) => {
            // As Kafka, the connection ends: the client is told which mechanisms there are.
            let reason = format!(
                "SASL mechanism {:?} is not served here",
                req.mechanism.as_str()
            );
            refuse(&ctx, reason);
            out.with_error_code(E::UnsupportedSaslMechanism.code())
        }
        Err(HandshakeRefused::MidExchange) => {
            // As Kafka: anything but the exchange's next message ends the connection.
            let reason = "a SASL handshake in the middle of a SCRAM exchange".to_string();
            refuse(&ctx, reason);
            out.with_error_code(E::IllegalSaslState.code())
        }
    }
}

pub async fn authenticate(ctx: Ctx, req: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
    let session = &ctx.session;
    let out = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::new());
    let again = session.identity.principal().is_some();
    match session.identity.authenticate(&req.auth_bytes) {
        Ok(Authenticated::Continue(challenge)) => out.with_auth_bytes(Bytes::from(challenge)),
        Ok(Authenticated::Done {
            principal,
            reply,
            lifetime_ms,
        }) => {
            ctx.broker.metrics.count_authenticated(&principal);
            let (peer, listener) = (session.peer, session.listener.name());
            if again {
                tracing::debug!(%peer, listener, %principal, client_id = %client_text(&ctx.client_id), lifetime_ms, "authenticated again");
            } else {
                tracing::info!(%peer, listener, %principal, client_id = %client_text(&ctx.client_id), lifetime_ms, "authenticated");
            }
            out.with_auth_bytes(Bytes::from(reply))
                .with_session_lifetime_ms(lifetime_ms)
        }
        Err(e @ (AuthError::AlreadyAuthenticated | AuthError::NotEnabled)) => out
            .with_error_code(E::IllegalSaslState.code())
            .with_error_message(Some(s(e.to_string()))),
        Err(e @ AuthError::NoHandshake) => {
            // As Kafka, which closes such a connection (it takes nothing but ApiVersions and
            // SaslHandshake first); the client is told why.
            refuse(&ctx, e.to_string());
            out.with_error_code(E::IllegalSaslState.code())
                .with_error_message(Some(s(e.to_string())))
        }
        Err(e) => {
            let reason = format!("authentication failed: {e}");
            // As Kafka (`connection.failed.authentication.delay.ms`): a failed login is answered
            // after a pause, so that guessing passwords or tokens is slow.
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            refuse(&ctx, reason.clone());
            out.with_error_code(E::SaslAuthenticationFailed.code())
                .with_error_message(Some(s(reason)))
        }
    }
}

/// Refused logins said a minute (a client guessing passwords makes one a second per
/// connection, and may open many).
static REFUSED: LogBudget = LogBudget::new(60);

/// Counts a refused authentication and closes the connection once the answer is sent.
fn refuse(ctx: &Ctx, reason: String) {
    let session = &ctx.session;
    within_budget!(REFUSED, info, peer = %session.peer, listener = session.listener.name(), client_id = %client_text(&ctx.client_id), %reason, "closing connection");
    ctx.broker
        .metrics
        .auth_failures
        .fetch_add(1, Ordering::Relaxed);
    session.identity.close(reason, true);
}
