//! SyncGroup (key 14): the leader hands in assignments; every member waits for its own. The
//! client needs Read on the group (`crate::acl`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::s;
use crate::acl::Operation;
use crate::groups::{SyncAssignment, SyncRequest};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: SyncGroupRequest) -> SyncGroupResponse {
    if let Some(code) = ctx.group_refusal(Operation::Read, &req.group_id) {
        return SyncGroupResponse::default().with_error_code(code);
    }
    let plain = SyncRequest {
        group_id: req.group_id.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        protocol_type: req.protocol_type.map(|p| p.to_string()),
        protocol_name: req.protocol_name.map(|p| p.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| SyncAssignment {
                member_id: a.member_id.to_string(),
                assignment: a.assignment,
            })
            .collect(),
    };
    match ctx.broker.groups.sync(plain).await {
        Ok(r) => SyncGroupResponse::default()
            .with_protocol_type(r.protocol_type.map(s))
            .with_protocol_name(r.protocol_name.map(s))
            .with_assignment(r.assignment),
        Err(e) => SyncGroupResponse::default().with_error_code(e.kafka_code()),
    }
}
