//! ListGroups (key 16), with the v4 states filter.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::s;
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: ListGroupsRequest) -> ListGroupsResponse {
    let filter: Vec<String> = req.states_filter.iter().map(|f| f.to_string()).collect();
    let groups = ctx
        .broker
        .groups
        .list_groups(&filter)
        .into_iter()
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(s(g.group_id)))
                .with_protocol_type(s(g.protocol_type))
                .with_group_state(s(g.state.as_str()))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
