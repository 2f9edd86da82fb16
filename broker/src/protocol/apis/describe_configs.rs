//! DescribeConfigs (key 32): a topic's effective configs in Kafka names and units, each marked
//! as a per-topic override or a broker default; for the broker resource, the `[log]` defaults.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::s;
use crate::protocol::Ctx;

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

pub async fn handle(ctx: Ctx, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let b = &ctx.broker;
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let mut out = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let entries: Vec<(String, String, i8)> = match r.resource_type {
                RESOURCE_TOPIC => match b.catalog.get(&r.resource_name) {
                    Some(t) => b
                        .catalog
                        .effective_configs(&t)
                        .into_iter()
                        .map(|(k, v, o)| (k, v, if o { SOURCE_TOPIC } else { SOURCE_DEFAULT }))
                        .collect(),
                    None => {
                        out.error_code = E::UnknownTopicOrPartition.code();
                        out.error_message = Some(s(format!("unknown topic {}", r.resource_name)));
                        Vec::new()
                    }
                },
                RESOURCE_BROKER => b
                    .config
                    .log
                    .to_topic_configs()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v, SOURCE_STATIC_BROKER))
                    .collect(),
                other => {
                    out.error_code = E::InvalidRequest.code();
                    out.error_message = Some(s(format!("unsupported resource type {other}")));
                    Vec::new()
                }
            };
            out.configs = entries
                .into_iter()
                // Null or an empty list asks for every key, as in Kafka.
                .filter(|(k, _, _)| match &r.configuration_keys {
                    Some(keys) if !keys.is_empty() => keys.iter().any(|w| w.as_str() == k),
                    _ => true,
                })
                .map(|(k, v, source)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                        .with_config_source(source)
                        .with_read_only(r.resource_type == RESOURCE_BROKER)
                })
                .collect();
            out
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
