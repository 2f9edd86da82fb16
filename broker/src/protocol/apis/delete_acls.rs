//! DeleteAcls (key 31): removes every ACL one of the filters selects (`crate::acl::AclFilter`)
//! and answers, per filter, those it removed, for `kafka-acls --remove` and
//! `AdminClient.deleteAcls`. The client needs Alter on the cluster. A bad filter gets
//! INVALID_REQUEST and removes nothing; the others are applied in one metadata transaction.
//! With `acls.enabled = false` every filter gets SECURITY_DISABLED. In a cluster a follower
//! forwards the request to the leader, which keeps the ACLs, as CreateAcls does.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};

use super::s;
use crate::acl::{AclError, AclFilter, Operation};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DeleteAclsRequest) -> DeleteAclsResponse {
    let failed = |code: E, message: &str| {
        DeleteAclsFilterResult::default()
            .with_error_code(code.code())
            .with_error_message(Some(s(message)))
    };
    let refused = |code: E, message: &str| {
        let results = req.filters.iter().map(|_| failed(code, message)).collect();
        DeleteAclsResponse::default().with_filter_results(results)
    };
    if !ctx.broker.acls.enabled() {
        return refused(E::SecurityDisabled, super::ACLS_OFF);
    }
    if !ctx.allowed_on_cluster(Operation::Alter) {
        return refused(
            E::ClusterAuthorizationFailed,
            "deleting ACLs needs Alter on the cluster",
        );
    }
    // In a cluster the leader keeps the ACLs and its followers copy them.
    match super::forward_acl_change(&ctx, &req).await {
        None => {}
        Some(Ok(answer)) => return answer,
        Some(Err(why)) => return refused(E::NotController, &why),
    }
    let checked: Vec<Result<AclFilter, AclError>> = req
        .filters
        .iter()
        .map(|f| {
            AclFilter::new(
                (
                    f.resource_type_filter,
                    f.resource_name_filter.as_deref(),
                    f.pattern_type_filter,
                ),
                f.principal_filter.as_deref(),
                f.host_filter.as_deref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclFilter> = checked.iter().filter_map(|r| r.clone().ok()).collect();
    let broker = ctx.broker.clone();
    let deleted = match tokio::task::spawn_blocking(move || broker.acls.delete(&valid)).await {
        Ok(result) => result,
        Err(e) => Err(AclError::Store(e.to_string())),
    };
    let mut deleted = match deleted {
        Ok(lists) => {
            let count: usize = lists.iter().map(Vec::len).sum();
            tracing::info!(count, principal = ctx.asker().principal, "ACLs deleted");
            lists.into_iter()
        }
        Err(e) => return refused(E::UnknownServerError, &e.to_string()),
    };
    let results = checked
        .into_iter()
        .map(|r| match r {
            Err(e) => failed(E::InvalidRequest, &e.to_string()),
            Ok(_) => {
                let matching = deleted
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|acl| {
                        tracing::debug!(?acl, "ACL deleted");
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(acl.resource_type.code())
                            .with_resource_name(s(acl.name))
                            .with_pattern_type(acl.pattern.code())
                            .with_principal(s(acl.principal))
                            .with_host(s(acl.host))
                            .with_operation(acl.operation.code())
                            .with_permission_type(acl.permission.code())
                    })
                    .collect();
                DeleteAclsFilterResult::default().with_matching_acls(matching)
            }
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
