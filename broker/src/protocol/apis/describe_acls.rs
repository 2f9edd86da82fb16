//! DescribeAcls (key 29): the ACLs a filter selects (`crate::acl::AclFilter`), grouped by
//! resource, for `kafka-acls --list` and `AdminClient.describeAcls`. The client needs Describe
//! on the cluster. With `acls.enabled = false` the answer is SECURITY_DISABLED.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};

use super::s;
use crate::acl::{AclFilter, Operation};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DescribeAclsRequest) -> DescribeAclsResponse {
    let error = |code: E, message: String| {
        DescribeAclsResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(s(message)))
    };
    if !ctx.broker.acls.enabled() {
        return error(E::SecurityDisabled, super::ACLS_OFF.into());
    }
    if !ctx.allowed_on_cluster(Operation::Describe) {
        return error(
            E::ClusterAuthorizationFailed,
            "listing ACLs needs Describe on the cluster".into(),
        );
    }
    let filter = match AclFilter::new(
        (
            req.resource_type_filter,
            req.resource_name_filter.as_deref(),
            req.pattern_type_filter,
        ),
        req.principal_filter.as_deref(),
        req.host_filter.as_deref(),
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(e) => return error(E::InvalidRequest, e.to_string()),
    };
    let acls = ctx.broker.acls.acls();
    let mut resources: BTreeMap<_, Vec<AclDescription>> = BTreeMap::new();
    for acl in acls.iter().filter(|a| filter.selects(a)) {
        resources
            .entry((acl.resource_type, acl.name.as_str(), acl.pattern))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(s(acl.principal.as_str()))
                    .with_host(s(acl.host.as_str()))
                    .with_operation(acl.operation.code())
                    .with_permission_type(acl.permission.code()),
            );
    }
    let resources = resources
        .into_iter()
        .map(|((resource_type, name, pattern), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(resource_type.code())
                .with_resource_name(s(name))
                .with_pattern_type(pattern.code())
                .with_acls(acls)
        })
        .collect();
    DescribeAclsResponse::default().with_resources(resources)
}
