//! DescribeClientQuotas (key 48, KIP-546): the client quotas set (`crate::client_quotas`), for
//! `kafka-configs --describe --entity-type users|clients` and `AdminClient.describeClientQuotas`.
//! A filter component matches a name exactly (match type 0), the default entity (1) or any
//! entity of its type (2); a strict filter leaves out entities with parts it does not name. The
//! client needs DescribeConfigs on the cluster (`crate::acl`), else
//! CLUSTER_AUTHORIZATION_FAILED; a bad filter gets INVALID_REQUEST with the reason. In a cluster
//! the leader keeps the quotas: a follower forwards the request to it (`Cluster::forward`), or
//! answers NOT_CONTROLLER when it cannot reach it.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::{DescribeClientQuotasRequest, DescribeClientQuotasResponse};

use super::s;
use crate::acl::Operation;
use crate::client_quotas::{Filter, Match};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DescribeClientQuotasRequest) -> DescribeClientQuotasResponse {
    let refuse = |code: E, message: String| {
        DescribeClientQuotasResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(s(message)))
            .with_entries(None)
    };
    if !ctx.allowed_on_cluster(Operation::DescribeConfigs) {
        return refuse(
            E::ClusterAuthorizationFailed,
            "describing client quotas needs DescribeConfigs on the cluster".into(),
        );
    }
    match super::forward_to_leader(&ctx, &req).await {
        None => {}
        Some(Ok(answer)) => return answer,
        Some(Err(why)) => return refuse(E::NotController, why),
    }
    let mut components = Vec::new();
    for c in &req.components {
        let m = match (c.match_type, &c._match) {
            (0, Some(name)) => Match::Exact(name.to_string()),
            (0, None) => {
                return refuse(
                    E::InvalidRequest,
                    format!(
                        "an exact match on {} names no entity",
                        c.entity_type.as_str()
                    ),
                );
            }
            (1, None) => Match::Default,
            (1, Some(_)) => {
                return refuse(
                    E::InvalidRequest,
                    format!(
                        "a match on the default {} names no entity (match must be null)",
                        c.entity_type.as_str()
                    ),
                );
            }
            (2, _) => Match::Any,
            (other, _) => {
                return refuse(
                    E::InvalidRequest,
                    format!("{other} is not a match type (0 exact, 1 default, 2 any)"),
                );
            }
        };
        components.push((c.entity_type.to_string(), m));
    }
    let filter = Filter {
        components,
        strict: req.strict,
    };
    if let Err(reason) = filter.check() {
        return refuse(E::InvalidRequest, reason);
    }
    let entries = ctx
        .broker
        .client_quotas
        .describe(&filter)
        .into_iter()
        .map(|(entity, values)| {
            let entity = entity
                .components()
                .into_iter()
                .map(|(kind, name)| {
                    EntityData::default()
                        .with_entity_type(s(kind))
                        .with_entity_name(name.map(s))
                })
                .collect();
            let values = values
                .into_iter()
                .map(|(key, value)| {
                    ValueData::default()
                        .with_key(s(key.name()))
                        .with_value(value)
                })
                .collect();
            EntryData::default().with_entity(entity).with_values(values)
        })
        .collect();
    DescribeClientQuotasResponse::default()
        .with_error_message(None)
        .with_entries(Some(entries))
}
