//! LeaveGroup (key 13): one member (v0-2) or a batch of members and static instances (v3+).
//! The client needs Read on the group (`crate::acl`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::s;
use crate::acl::Operation;
use crate::groups::{LeaveRequest, LeavingMember};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let v = ctx.api_version;
    if let Some(code) = ctx.group_refusal(Operation::Read, &req.group_id) {
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let members = if v >= 3 {
        req.members
            .into_iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                reason: m.reason.map(|r| r.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: req.member_id.to_string(),
            group_instance_id: None,
            reason: None,
        }]
    };
    let plain = LeaveRequest {
        group_id: req.group_id.to_string(),
        members,
    };
    match ctx.broker.groups.leave(&plain) {
        Err(e) => LeaveGroupResponse::default().with_error_code(e.kafka_code()),
        Ok(results) if v < 3 => {
            let code = results
                .first()
                .and_then(|r| r.result.as_ref().err())
                .map_or(0, |e| e.kafka_code());
            LeaveGroupResponse::default().with_error_code(code)
        }
        Ok(results) => LeaveGroupResponse::default().with_members(
            results
                .into_iter()
                .map(|r| {
                    MemberResponse::default()
                        .with_member_id(s(r.member_id))
                        .with_group_instance_id(r.group_instance_id.map(s))
                        .with_error_code(r.result.err().map_or(0, |e| e.kafka_code()))
                })
                .collect(),
        ),
    }
}
