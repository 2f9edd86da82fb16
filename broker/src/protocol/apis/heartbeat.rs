//! Heartbeat (key 12): keeps a member alive; REBALANCE_IN_PROGRESS tells it to rejoin. The
//! client needs Read on the group (`crate::acl`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::acl::Operation;
use crate::groups::HeartbeatRequest as Plain;
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: HeartbeatRequest) -> HeartbeatResponse {
    if let Some(code) = ctx.group_refusal(Operation::Read, &req.group_id) {
        return HeartbeatResponse::default().with_error_code(code);
    }
    let plain = Plain {
        group_id: req.group_id.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
    };
    let code = match ctx.broker.groups.heartbeat(&plain) {
        Ok(()) => 0,
        Err(e) => e.kafka_code(),
    };
    HeartbeatResponse::default().with_error_code(code)
}
