//! CreateAcls (key 30): adds ACLs (`crate::acl`), for `kafka-acls --add` and
//! `AdminClient.createAcls`. The client needs Alter on the cluster. Each entry is checked
//! alone (a bad one gets INVALID_REQUEST with the reason, the others are made), and the valid
//! ones are kept in one metadata transaction. An ACL already in force is not made twice.
//! With `acls.enabled = false` every entry gets SECURITY_DISABLED, as Kafka without an authorizer.
//! In a cluster the leader keeps the ACLs: a follower checks the client's rights with its copy,
//! then forwards the request to the leader (`apis::forward_to_leader`) and copies the leader's
//! ACLs again before it answers.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};

use super::s;
use crate::acl::{Acl, AclError, Operation};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: CreateAclsRequest) -> CreateAclsResponse {
    let refused = |code: E, message: &str| {
        let results = req
            .creations
            .iter()
            .map(|_| {
                AclCreationResult::default()
                    .with_error_code(code.code())
                    .with_error_message(Some(s(message)))
            })
            .collect();
        CreateAclsResponse::default().with_results(results)
    };
    if !ctx.broker.acls.enabled() {
        return refused(E::SecurityDisabled, super::ACLS_OFF);
    }
    if !ctx.allowed_on_cluster(Operation::Alter) {
        return refused(
            E::ClusterAuthorizationFailed,
            "creating ACLs needs Alter on the cluster",
        );
    }
    // In a cluster the leader keeps the ACLs and its followers copy them.
    match super::forward_acl_change(&ctx, &req).await {
        None => {}
        Some(Ok(answer)) => return answer,
        Some(Err(why)) => return refused(E::NotController, &why),
    }
    let checked: Vec<Result<Acl, AclError>> = req
        .creations
        .iter()
        .map(|c| {
            Acl::new(
                (c.resource_type, &c.resource_name, c.resource_pattern_type),
                &c.principal,
                &c.host,
                c.operation,
                c.permission_type,
            )
        })
        .collect();
    let valid: Vec<Acl> = checked.iter().filter_map(|r| r.clone().ok()).collect();
    let valid_count = valid.len();
    let broker = ctx.broker.clone();
    let stored = match tokio::task::spawn_blocking(move || broker.acls.create(&valid)).await {
        Ok(result) => result,
        Err(e) => Err(AclError::Store(e.to_string())),
    };
    if stored.is_ok() {
        tracing::info!(
            count = valid_count,
            principal = ctx.asker().principal,
            "ACLs created"
        );
    }
    let results = checked
        .into_iter()
        .map(|r| {
            let error = match (r, &stored) {
                (Err(e), _) => Some((E::InvalidRequest, e.to_string())),
                (Ok(_), Err(e)) => Some((E::UnknownServerError, e.to_string())),
                (Ok(acl), Ok(())) => {
                    tracing::debug!(?acl, "ACL created");
                    None
                }
            };
            match error {
                None => AclCreationResult::default(),
                Some((code, message)) => AclCreationResult::default()
                    .with_error_code(code.code())
                    .with_error_message(Some(s(message))),
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}
