//! DeleteGroups (key 42): only empty groups; their committed offsets go with them. The client
//! needs Delete on the group (`crate::acl`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::acl::Operation;
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = req
        .groups_names
        .into_iter()
        .map(|id| {
            let code = if let Some(code) = ctx.group_refusal(Operation::Delete, &id) {
                code
            } else {
                match ctx.broker.groups.delete_group(&id) {
                    Ok(()) => 0,
                    Err(e) => e.kafka_code(),
                }
            };
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code)
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
