//! ListGroups (key 16), with the v4 states filter and the v5 types filter. Every group here is
//! a `classic` one (the KIP-848 `consumer` protocol is not served), so a types filter without
//! `classic` lists none, as Kafka 4.0 lists no classic group for it. A client that may not
//! Describe the cluster sees only the groups it may Describe (`crate::acl`).

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::s;
use crate::acl::{CLUSTER_NAME, Operation, ResourceType};
use crate::protocol::Ctx;

/// The type of every group this broker keeps.
const CLASSIC: &str = "classic";

pub async fn handle(ctx: Ctx, req: ListGroupsRequest) -> ListGroupsResponse {
    let filter: Vec<String> = req.states_filter.iter().map(|f| f.to_string()).collect();
    let typed_out = !req.types_filter.is_empty()
        && !req
            .types_filter
            .iter()
            .any(|t| t.as_str().eq_ignore_ascii_case(CLASSIC));
    if typed_out {
        return ListGroupsResponse::default();
    }
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
        .filter(|g| all || ctx.sees(ResourceType::Group, &g.group_id))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(s(g.group_id)))
                .with_protocol_type(s(g.protocol_type))
                .with_group_state(s(g.state.as_str()))
                .with_group_type(s(CLASSIC))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
