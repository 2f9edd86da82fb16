//! IncrementalAlterConfigs (key 44): set (0) or delete (1) single topic overrides, a consumer
//! group's own configs (GROUP, `crate::groups::config`), or the broker's log levels
//! (BROKER_LOGGER, `crate::logging`); append (2) and
//! subtract (3) items of a list-valued config, of which topics here have one, `cleanup.policy`
//! (`kafka-configs --add-config cleanup.policy=[compact,delete]`). Appending or subtracting on
//! any other config is INVALID_CONFIG, as in Kafka. A resource given twice, a key given twice
//! or a SET without a value is refused (INVALID_REQUEST), as in Kafka.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource as Resource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::describe_configs::{
    RESOURCE_BROKER_LOGGER, RESOURCE_GROUP, RESOURCE_TOPIC, other_broker,
};
use super::s;
use crate::catalog::ConfigChange;
use crate::log_budget::client_text;
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;
/// The one list-valued topic config.
const LIST_CONFIG: &str = "cleanup.policy";

pub async fn handle(
    ctx: Ctx,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
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
                    .filter(|c| c.config_operation != DELETE && c.value.is_none())
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
            // Each broker sets its own log levels, a follower too.
            if r.resource_type == RESOURCE_BROKER_LOGGER {
                return alter_loggers(&ctx, r, req.validate_only, out);
            }
            if let Some(code) = ctx.controller_refusal() {
                out.error_code = code;
                return out;
            }
            let group = r.resource_type == RESOURCE_GROUP;
            if !group && r.resource_type != RESOURCE_TOPIC {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s(NOT_ALTERABLE));
                return out;
            }
            let mut changes: Vec<ConfigChange> = Vec::new();
            for c in r.configs {
                let name = c.name.to_string();
                match c.config_operation {
                    SET => {
                        let value = c.value.map(|v| v.to_string()).unwrap_or_default();
                        if let Some(e) = crate::catalog::kafka_int_refusal(&name, &value) {
                            out.error_code = E::InvalidConfig.code();
                            out.error_message = Some(s(e.to_string()));
                            return out;
                        }
                        changes.push(ConfigChange::Set(name, value));
                    }
                    DELETE => changes.push(ConfigChange::Delete(name)),
                    op @ (APPEND | SUBTRACT) => {
                        if group || name != LIST_CONFIG {
                            let applies = if group {
                                "to no group config"
                            } else {
                                "to cleanup.policy"
                            };
                            out.error_code = E::InvalidConfig.code();
                            out.error_message = Some(s(format!(
                                "{} is not a list: append and subtract apply {applies}",
                                client_text(&name)
                            )));
                            return out;
                        }
                        // Applied to the value as the topic has it when the change is made.
                        let items = c.value.map(|v| v.to_string()).unwrap_or_default();
                        changes.push(match op {
                            APPEND => ConfigChange::Append(name, items),
                            _ => ConfigChange::Subtract(name, items),
                        });
                    }
                    op => {
                        out.error_code = E::InvalidRequest.code();
                        out.error_message =
                            Some(s(format!("config operation {op} is not supported")));
                        return out;
                    }
                }
            }
            if group {
                // Groups' configs have no APPEND or SUBTRACT (refused above): none is here.
                let changes: Vec<(String, Option<String>)> = changes
                    .into_iter()
                    .filter_map(|c| match c {
                        ConfigChange::Set(k, v) => Some((k, Some(v))),
                        ConfigChange::Delete(k) => Some((k, None)),
                        ConfigChange::Append(..) | ConfigChange::Subtract(..) => None,
                    })
                    .collect();
                if let Some((code, why)) =
                    alter_group(&ctx, &r.resource_name, &changes, false, req.validate_only)
                {
                    out.error_code = code;
                    out.error_message = Some(s(why));
                }
            } else if let Err(e) = crate::broker::waiting_for_disk(|| {
                // Waits for any topic being made or deleted (thousands of partitions, say).
                catalog.alter_configs(&r.resource_name, changes, true, req.validate_only)
            }) {
                out.error_code = catalog_code(&e);
                out.error_message = Some(s(e.to_string()));
            }
            out
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Why a resource of another type is refused.
const NOT_ALTERABLE: &str =
    "only topic, group and broker logger configs can be altered at run time";

/// Changes group `group`'s own configs (AlterConfigs: `replace` them all): the refusal's error
/// code and message, if refused.
pub(crate) fn alter_group(
    ctx: &Ctx,
    group: &str,
    changes: &[(String, Option<String>)],
    replace: bool,
    validate_only: bool,
) -> Option<(i16, String)> {
    use crate::groups::GroupConfigError as G;
    match ctx
        .broker
        .groups
        .alter_group_config(group, changes, replace, validate_only)
    {
        Ok(changed) => {
            if changed {
                let now = ctx.broker.groups.group_config(group);
                let said: Vec<String> = now.iter().map(|(k, v)| format!("{k}={v}")).collect();
                tracing::info!(
                    principal = ctx.asker().principal,
                    group = %crate::log_budget::client_text(group),
                    configs = %said.join(","),
                    "group configs changed"
                );
            }
            None
        }
        Err(e) => {
            let code = match e {
                G::InvalidConfig(_) => E::InvalidConfig,
                G::InvalidRequest(_) => E::InvalidRequest,
                G::Store(_) => E::UnknownServerError,
            };
            Some((code.code(), e.to_string()))
        }
    }
}

/// Sets (SET) or removes (DELETE: back to the root's level) the levels of this broker's loggers,
/// as Kafka's brokers take `kafka-configs --entity-type broker-loggers`.
fn alter_loggers(
    ctx: &Ctx,
    r: Resource,
    validate_only: bool,
    mut out: AlterConfigsResourceResponse,
) -> AlterConfigsResourceResponse {
    let node_id = ctx.broker.config.broker.node_id;
    if let Some(why) = other_broker(r.resource_type, &r.resource_name, node_id) {
        out.error_code = E::InvalidRequest.code();
        out.error_message = Some(s(why));
        return out;
    }
    let mut changes = Vec::new();
    for c in r.configs {
        let op = match c.config_operation {
            SET => c.value.map(|v| v.to_string()),
            DELETE => None,
            op => {
                let name = match op {
                    APPEND => "APPEND".to_string(),
                    SUBTRACT => "SUBTRACT".to_string(),
                    other => other.to_string(),
                };
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s(format!(
                    "{name} operation is not allowed for the BROKER_LOGGER resource"
                )));
                return out;
            }
        };
        changes.push((c.name.to_string(), op));
    }
    match crate::logging::apply(&changes, validate_only) {
        Ok(()) if !validate_only => {
            let said: Vec<String> = changes
                .iter()
                .map(|(l, v)| format!("{l}={}", v.as_deref().unwrap_or("(root's)")))
                .collect();
            tracing::info!(
                principal = ctx.asker().principal,
                changes = %said.join(","),
                "log levels changed"
            );
        }
        Ok(()) => {}
        Err(e) => {
            out.error_code = match e {
                crate::logging::LoggerError::Level { .. }
                | crate::logging::LoggerError::Name(_) => E::InvalidConfig.code(),
                _ => E::InvalidRequest.code(),
            };
            out.error_message = Some(s(e.to_string()));
        }
    }
    out
}
