//! FindCoordinator (key 10): this broker (a cluster's leader) coordinates every group (key type
//! 0) and every transactional id (key type 1). A group the client may not Describe
//! (`crate::acl`) gets GROUP_AUTHORIZATION_FAILED, a transactional id it may not Describe
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

pub async fn handle(ctx: Ctx, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    // In a cluster the leader coordinates every group.
    let leader = ctx
        .broker
        .cluster
        .as_ref()
        .filter(|c| c.leader != ctx.broker.node_id)
        .and_then(|c| {
            c.address_of(c.leader, ctx.session.listener)
                .map(|a| (c.leader, a))
        });
    let (node, host, port) = match leader {
        Some((id, address)) => {
            let (host, port) = super::metadata::split_address(address);
            (BrokerId(id), s(host.to_string()), port)
        }
        None => (
            BrokerId(ctx.broker.node_id),
            s(ctx.session.advertised_host.clone()),
            ctx.session.advertised_port,
        ),
    };
    let (error, message, resource, refusal) = match req.key_type {
        GROUP => (0, None, ResourceType::Group, E::GroupAuthorizationFailed),
        TRANSACTION => (
            0,
            None,
            ResourceType::TransactionalId,
            E::TransactionalIdAuthorizationFailed,
        ),
        _ => (
            E::InvalidRequest.code(),
            Some(s("only group and transaction coordinators exist")),
            ResourceType::Group,
            E::GroupAuthorizationFailed,
        ),
    };
    let refused = |key: &str| error == 0 && !ctx.allowed(Operation::Describe, resource, key);
    if ctx.api_version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                if refused(&key) {
                    return Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_host(s(""))
                        .with_port(-1)
                        .with_error_code(refusal.code());
                }
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(if error == 0 { node } else { BrokerId(-1) })
                    .with_host(if error == 0 { host.clone() } else { s("") })
                    .with_port(if error == 0 { port } else { -1 })
                    .with_error_code(error)
                    .with_error_message(message.clone())
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (error, message) = if refused(&req.key) {
        (refusal.code(), None)
    } else {
        (error, message)
    };
    if error != 0 {
        return FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_error_message(message)
            .with_node_id(BrokerId(-1))
            .with_host(s(""))
            .with_port(-1);
    }
    FindCoordinatorResponse::default()
        .with_node_id(node)
        .with_host(host)
        .with_port(port)
}
