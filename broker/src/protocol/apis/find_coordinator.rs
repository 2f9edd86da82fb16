//! FindCoordinator (key 10): this broker coordinates every group (key type 0). Transaction
//! coordinators (key type 1) are refused, since transactions are not supported, with
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED and a message saying so: the one answer every client
//! takes as final (librdkafka retried any other error code until `init_transactions` timed out;
//! the Java client and kafka-python fail at once too). A group the client may not Describe
//! (`crate::acl`) gets GROUP_AUTHORIZATION_FAILED.

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
        .and_then(|c| c.address_of(c.leader).map(|a| (c.leader, a)));
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
    let (error, message) = match req.key_type {
        GROUP => (0, None),
        TRANSACTION => (
            E::TransactionalIdAuthorizationFailed.code(),
            Some(s("transactions are not supported by this broker (Runnel)")),
        ),
        _ => (
            E::InvalidRequest.code(),
            Some(s("only group coordinators exist on this broker")),
        ),
    };
    let refused =
        |key: &str| error == 0 && !ctx.allowed(Operation::Describe, ResourceType::Group, key);
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
                        .with_error_code(E::GroupAuthorizationFailed.code());
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
        (E::GroupAuthorizationFailed.code(), None)
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
