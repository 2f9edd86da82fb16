//! Envelope (key 58, KIP-590): a request a follower forwards to the leader on behalf of a
//! client (`apis::forward_to_leader`), with the client's principal and address, so that the
//! leader judges it by the client's rights rather than the follower's. Taken only by the leader
//! (a follower answers NOT_CONTROLLER: two brokers that each take the other for the leader do
//! not pass a request back and forth), only from a principal with ClusterAction on the cluster
//! (the followers; else CLUSTER_AUTHORIZATION_FAILED), and only for the requests followers
//! forward: CreateAcls, DeleteAcls, AlterClientQuotas, DescribeClientQuotas,
//! AlterUserScramCredentials (else INVALID_REQUEST). The principal travels as its UTF-8 text (`User:alice`): only Runnel brokers
//! send it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{ApiKey, EnvelopeRequest, EnvelopeResponse};

use crate::acl::Operation;
use crate::protocol::{Ctx, Outcome, Session, auth, frame};

/// What a follower forwards.
const FORWARDED: [ApiKey; 5] = [
    ApiKey::CreateAcls,
    ApiKey::DeleteAcls,
    ApiKey::AlterClientQuotas,
    ApiKey::DescribeClientQuotas,
    ApiKey::AlterUserScramCredentials,
];

pub async fn handle(ctx: Ctx, req: EnvelopeRequest) -> EnvelopeResponse {
    let refused = |e: E| EnvelopeResponse::default().with_error_code(e.code());
    if ctx.follows() {
        return refused(E::NotController);
    }
    if !ctx.allowed_on_cluster(Operation::ClusterAction) {
        return refused(E::ClusterAuthorizationFailed);
    }
    let Some(inner) = unwrap(&ctx, &req) else {
        return refused(E::InvalidRequest);
    };
    let (inner_ctx, request) = inner;
    let api = request.api_key;
    let reply = match ctx.broker.dispatcher.dispatch(inner_ctx, request) {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(?api, error = %e, "a forwarded request cannot be handled");
            return refused(E::InvalidRequest);
        }
    };
    match reply.await {
        // Without its size prefix: the response header and body.
        Outcome::Respond(frame) => {
            EnvelopeResponse::default().with_response_data(Some(frame.slice(4..)))
        }
        Outcome::Silent | Outcome::Close(_) => refused(E::UnknownServerError),
    }
}

/// The client's request and the context it is judged in, or `None` for what a follower does
/// not send.
fn unwrap(ctx: &Ctx, req: &EnvelopeRequest) -> Option<(Ctx, frame::Request)> {
    let principal = std::str::from_utf8(req.request_principal.as_deref()?).ok()?;
    let (kind, name) = principal.split_once(':')?;
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    let host = address(&req.client_host_address)?;
    let request = frame::decode_request(req.request_data.clone()).ok()?;
    if !FORWARDED.contains(&request.api_key) {
        return None;
    }
    let client_id = request
        .header
        .client_id
        .as_deref()
        .unwrap_or_default()
        .to_string();
    let session = Arc::new(Session {
        peer: SocketAddr::new(host, 0),
        listener: ctx.session.listener,
        advertised_host: ctx.session.advertised_host.clone(),
        advertised_port: ctx.session.advertised_port,
        identity: auth::Identity::certified(principal.to_string()),
    });
    tracing::debug!(api = ?request.api_key, principal, %host, "a forwarded request");
    let inner = Ctx {
        broker: ctx.broker.clone(),
        session,
        api_version: request.header.request_api_version,
        client_id: Arc::from(client_id),
        throttle_ms: Arc::default(),
        holding: Arc::default(),
    };
    Some((inner, request))
}

/// An IPv4 or IPv6 address from its 4 or 16 bytes.
fn address(bytes: &Bytes) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(&bytes[..]).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?)),
        _ => None,
    }
}
