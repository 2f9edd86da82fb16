//! JoinGroup (key 11): converts to the coordinator's plain types and back. The call waits until
//! the rebalance completes (or the member gets MEMBER_ID_REQUIRED). The client needs Read on the
//! group (`crate::acl`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::s;
use crate::acl::Operation;
use crate::groups::{GroupError, JoinProtocol, JoinRequest};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: JoinGroupRequest) -> JoinGroupResponse {
    let v = ctx.api_version;
    if let Some(code) = ctx.group_refusal(Operation::Read, &req.group_id) {
        return failed(v, code, String::new());
    }
    let plain = JoinRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        client_id: ctx.client_id.to_string(),
        client_host: format!("/{}", ctx.session.peer.ip()),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if v >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| JoinProtocol {
                name: p.name.to_string(),
                metadata: p.metadata,
            })
            .collect(),
        require_known_member_id: v >= 4,
        supports_skip_assignment: v >= 9,
        reason: req.reason.map(|r| r.to_string()),
    };
    // For a group of the consumer protocol, which hosts classic members.
    let view = super::consumer_group_heartbeat::topic_view(&ctx);
    match ctx.broker.groups.join(plain, &view).await {
        Ok(r) => JoinGroupResponse::default()
            .with_generation_id(r.generation_id)
            .with_protocol_type(r.protocol_type.map(s))
            .with_protocol_name(r.protocol_name.map(s))
            .with_leader(s(r.leader))
            .with_skip_assignment(r.skip_assignment)
            .with_member_id(s(r.member_id))
            .with_members(
                r.members
                    .into_iter()
                    .map(|m| {
                        JoinGroupResponseMember::default()
                            .with_member_id(s(m.member_id))
                            .with_group_instance_id(m.group_instance_id.map(s))
                            .with_metadata(m.metadata)
                    })
                    .collect(),
            ),
        Err(e) => {
            let member_id = match &e {
                GroupError::MemberIdRequired { member_id } => member_id.clone(),
                _ => String::new(),
            };
            failed(v, e.kafka_code(), member_id)
        }
    }
}

/// The answer of a join that failed with `code`, for version `v`.
fn failed(v: i16, code: i16, member_id: String) -> JoinGroupResponse {
    // v0-6 responses carry a non-null protocol name; leave it empty on error.
    let protocol_name = if v >= 7 { None } else { Some(s("")) };
    JoinGroupResponse::default()
        .with_error_code(code)
        .with_generation_id(-1)
        .with_protocol_name(protocol_name)
        .with_member_id(s(member_id))
}
