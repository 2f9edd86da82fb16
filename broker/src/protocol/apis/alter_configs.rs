//! AlterConfigs (key 33): replace a topic's overrides, or a consumer group's own configs
//! (`crate::groups::config`), with the given set. A resource given twice, a key given twice or
//! a null value is refused (INVALID_REQUEST), as in Kafka.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_configs_request::AlterConfigsResource as Resource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::describe_configs::{RESOURCE_GROUP, RESOURCE_TOPIC};
use super::incremental_alter_configs::alter_group;
use super::s;
use crate::catalog::ConfigChange;
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

pub async fn handle(ctx: Ctx, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let catalog = &ctx.broker.catalog;
    let key = |r: &Resource| (r.resource_type, r.resource_name.clone());
    let twice = super::repeated(req.resources.iter().map(key));
    let mut answered = std::collections::HashSet::new();
    let responses = req
        .resources
        .into_iter()
        // One answer for a resource given twice, none of its entries applied.
        .filter(|r| !twice.contains(&key(r)) || answered.insert(key(r)))
        .map(|r| {
            let mut out = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            // As Kafka's brokers check a request before its resources.
            let refusal = super::config_resource_refusal(
                twice.contains(&key(&r)),
                r.configs.iter().map(|c| c.name.as_str()),
                r.configs
                    .iter()
                    .filter(|c| c.value.is_none())
                    .map(|c| c.name.as_str()),
            );
            if let Some(why) = refusal {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s(why));
                return out;
            }
            if let Some(code) = super::describe_configs::refused(
                &ctx,
                crate::acl::Operation::AlterConfigs,
                r.resource_type,
                &r.resource_name,
            ) {
                out.error_code = code;
                out.error_message = None;
                return out;
            }
            if r.resource_type == super::describe_configs::RESOURCE_BROKER_LOGGER {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s(
                    "AlterConfigs is deprecated and does not support the resource type \
                     BROKER_LOGGER: use IncrementalAlterConfigs",
                ));
                return out;
            }
            if let Some(code) = ctx.controller_refusal() {
                out.error_code = code;
                return out;
            }
            if r.resource_type == RESOURCE_GROUP {
                let changes: Vec<_> = r
                    .configs
                    .into_iter()
                    .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
                    .collect();
                if let Some((code, why)) =
                    alter_group(&ctx, &r.resource_name, &changes, true, req.validate_only)
                {
                    out.error_code = code;
                    out.error_message = Some(s(why));
                }
                return out;
            }
            if r.resource_type != RESOURCE_TOPIC {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s("only topic and group configs can be altered"));
                return out;
            }
            let changes: Vec<ConfigChange> = r
                .configs
                .into_iter()
                .map(|c| match c.value {
                    Some(v) => ConfigChange::Set(c.name.to_string(), v.to_string()),
                    None => ConfigChange::Delete(c.name.to_string()),
                })
                .collect();
            if let Some(e) = changes.iter().find_map(|c| match c {
                ConfigChange::Set(k, v) => crate::catalog::kafka_int_refusal(k, v),
                _ => None,
            }) {
                out.error_code = catalog_code(&e);
                out.error_message = Some(s(e.to_string()));
                return out;
            }
            // Waits for any topic being made or deleted (thousands of partitions, say).
            let altered = crate::broker::waiting_for_disk(|| {
                catalog.alter_configs(&r.resource_name, changes, false, req.validate_only)
            });
            if let Err(e) = altered {
                out.error_code = catalog_code(&e);
                out.error_message = Some(s(e.to_string()));
            }
            out
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}
