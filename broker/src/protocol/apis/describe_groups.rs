//! DescribeGroups (key 15): state, protocol and members of each group, and when asked (v3+)
//! the operations allowed on it ([`authorized`]).

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::{authorized, s};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let operations = if req.include_authorized_operations {
        authorized::GROUP
    } else {
        authorized::NOT_ASKED
    };
    let groups = req
        .groups
        .into_iter()
        .map(|id| match ctx.broker.groups.describe_group(&id) {
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
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
