//! DescribeGroups (key 15): state, protocol and members of each group, and when asked (v3+)
//! the operations the client may perform on it. A group the client may not Describe gets
//! GROUP_AUTHORIZATION_FAILED (`crate::acl`).

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = super::first_of_each(req.groups, |g| g.clone())
        .into_iter()
        .map(|id| {
            if let Some(code) = ctx.group_refusal(Operation::Describe, &id) {
                return DescribedGroup::default()
                    .with_group_id(id)
                    .with_error_code(code)
                    .with_authorized_operations(super::OPERATIONS_NOT_ASKED);
            }
            let operations =
                ctx.operations(req.include_authorized_operations, ResourceType::Group, &id);
            describe(&ctx, id, operations)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

fn describe(ctx: &Ctx, id: kafka_protocol::messages::GroupId, operations: i32) -> DescribedGroup {
    match ctx.broker.groups.describe_group(&id) {
        Ok(d) => DescribedGroup::default()
            .with_group_id(id)
            .with_group_state(s(d.state.as_str()))
            .with_protocol_type(s(d.protocol_type))
            .with_protocol_data(s(d.protocol))
            .with_authorized_operations(operations)
            .with_members(
                d.members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(s(m.member_id))
                            .with_group_instance_id(m.group_instance_id.map(s))
                            .with_client_id(s(m.client_id))
                            .with_client_host(s(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect(),
            ),
        Err(e) => DescribedGroup::default()
            .with_group_id(id)
            .with_error_code(e.kafka_code())
            .with_error_message(Some(s(e.to_string()))),
    }
}
