//! ListGroups (key 16), with the v4 states filter and the v5 types filter ("classic", or
//! "consumer" for groups of the KIP-848 protocol). A client that may not Describe the cluster
//! sees only the groups it may Describe (`crate::acl`).

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::s;
use crate::acl::{CLUSTER_NAME, Operation, ResourceType};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: ListGroupsRequest) -> ListGroupsResponse {
    let filter: Vec<String> = req.states_filter.iter().map(|f| f.to_string()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|t| t.to_lowercase()).collect();
    if ctx.follows() {
        // The leader coordinates every group: a follower lists none, as a Kafka broker lists
        // only the groups it coordinates (admin clients ask every broker).
        return ListGroupsResponse::default();
    }
    let all = ctx.broker.acls.allowed(
        ctx.asker(),
        Operation::Describe,
        ResourceType::Cluster,
        CLUSTER_NAME,
    );
    let groups = ctx
        .broker
        .groups
        .list_groups(&filter)
        .into_iter()
        .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
        .filter(|g| all || ctx.sees(ResourceType::Group, &g.group_id))
        // Before v3 an id is a string of a 2-byte length: a longer one (made by an earlier
        // build) cannot be said, and would make the whole answer fail.
        .filter(|g| ctx.api_version >= 3 || g.group_id.len() <= crate::groups::GROUP_ID_MOST_BYTES)
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(s(g.group_id)))
                .with_protocol_type(s(g.protocol_type))
                .with_group_state(s(g.state.as_str()))
                .with_group_type(s(g.group_type))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
