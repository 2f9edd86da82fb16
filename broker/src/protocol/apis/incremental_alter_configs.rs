//! IncrementalAlterConfigs (key 44): set (0) or delete (1) single topic overrides. APPEND and
//! SUBTRACT (2, 3) apply to list-valued configs, of which topics here have none but
//! `cleanup.policy`; they are refused with INVALID_REQUEST.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::describe_configs::RESOURCE_TOPIC;
use super::s;
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

const SET: i8 = 0;
const DELETE: i8 = 1;

pub async fn handle(
    ctx: Ctx,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let catalog = &ctx.broker.catalog;
    let responses = req
        .resources
        .into_iter()
        .map(|r| {
            let mut out = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            if r.resource_type != RESOURCE_TOPIC {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s("only topic configs can be altered at run time"));
                return out;
            }
            let mut changes = Vec::new();
            for c in r.configs {
                match c.config_operation {
                    SET => changes.push((c.name.to_string(), c.value.map(|v| v.to_string()))),
                    DELETE => changes.push((c.name.to_string(), None)),
                    op => {
                        out.error_code = E::InvalidRequest.code();
                        out.error_message =
                            Some(s(format!("config operation {op} is not supported")));
                        return out;
                    }
                }
            }
            if let Err(e) =
                catalog.alter_configs(&r.resource_name, changes, true, req.validate_only)
            {
                out.error_code = catalog_code(&e);
                out.error_message = Some(s(e.to_string()));
            }
            out
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
