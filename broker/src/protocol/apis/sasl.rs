//! SaslHandshake (key 17) and SaslAuthenticate (key 36): the PLAIN mechanism, checked against
//! the listener's credentials: QUIC device tokens, or a Kafka listener's `sasl_plain_file`
//! (`protocol::auth`).
//!
//! Only handshake v1 is served: v0 would switch the connection to raw SASL frames, so a v0
//! handshake is answered with UNSUPPORTED_VERSION. v0 is still advertised, because librdkafka
//! up to at least 2.0 (Debian's kcat) starts SASL only with a broker that lists handshake v0,
//! and then sends v1 when SaslAuthenticate is listed too. A listener
//! without tokens answers the handshake with UNSUPPORTED_SASL_MECHANISM and an empty list, and
//! SaslAuthenticate (like a second one after success) with ILLEGAL_SASL_STATE. A
//! failed authentication is answered with SASL_AUTHENTICATION_FAILED and its reason, and the
//! connection is then closed with that reason ([`crate::protocol::auth::Identity::close`]).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};

use super::s;
use crate::protocol::Ctx;
use crate::protocol::auth::{AuthError, PLAIN};

pub async fn handshake(ctx: Ctx, req: SaslHandshakeRequest) -> SaslHandshakeResponse {
    if ctx.api_version < 1 {
        return SaslHandshakeResponse::default().with_error_code(E::UnsupportedVersion.code());
    }
    let identity = &ctx.session.identity;
    if !identity.uses_sasl() {
        return SaslHandshakeResponse::default()
            .with_error_code(E::UnsupportedSaslMechanism.code());
    }
    let mut out = SaslHandshakeResponse::default().with_mechanisms(vec![s(PLAIN)]);
    if *req.mechanism != *PLAIN {
        out.error_code = E::UnsupportedSaslMechanism.code();
    }
    out
}

pub async fn authenticate(ctx: Ctx, req: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
    let session = &ctx.session;
    let out = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::new());
    match session.identity.authenticate_plain(&req.auth_bytes) {
        Ok(principal) => {
            ctx.broker.metrics.count_authenticated(&principal);
            tracing::info!(peer = %session.peer, listener = session.listener.name(), %principal, client_id = %ctx.client_id, "authenticated");
            out
        }
        Err(e @ (AuthError::AlreadyAuthenticated | AuthError::NotEnabled)) => out
            .with_error_code(E::IllegalSaslState.code())
            .with_error_message(Some(s(e.to_string()))),
        Err(e) => {
            let reason = format!("authentication failed: {e}");
            tracing::info!(peer = %session.peer, listener = session.listener.name(), client_id = %ctx.client_id, %reason, "closing connection");
            ctx.broker
                .metrics
                .auth_failures
                .fetch_add(1, Ordering::Relaxed);
            session.identity.close(reason.clone(), true);
            out.with_error_code(E::SaslAuthenticationFailed.code())
                .with_error_message(Some(s(reason)))
        }
    }
}
