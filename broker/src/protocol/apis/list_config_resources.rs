//! ListConfigResources (key 74; v0 was ListClientMetricsResources, KIP-714; v1 is Kafka 4.1's,
//! KIP-1142): the resources DescribeConfigs can describe, by type: every topic, every broker
//! (for its configs and its loggers), and the groups with configs of their own
//! (`crate::groups::config`), which need not exist, so that `kafka-configs --describe
//! --entity-type groups` finds a group configured before its first member. No client-metrics
//! subscription exists here (v0 lists those only: none). The client needs DescribeConfigs on
//! the cluster, as in Kafka.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::list_config_resources_response::ConfigResource;
use kafka_protocol::messages::{ListConfigResourcesRequest, ListConfigResourcesResponse};

use super::describe_configs::{
    RESOURCE_BROKER, RESOURCE_BROKER_LOGGER, RESOURCE_GROUP, RESOURCE_TOPIC,
};
use super::s;
use crate::protocol::Ctx;

const RESOURCE_CLIENT_METRICS: i8 = 16;
/// What an empty list of types asks for, in the order answered.
const EVERY_TYPE: [i8; 5] = [
    RESOURCE_CLIENT_METRICS,
    RESOURCE_TOPIC,
    RESOURCE_BROKER,
    RESOURCE_BROKER_LOGGER,
    RESOURCE_GROUP,
];

pub async fn handle(ctx: Ctx, req: ListConfigResourcesRequest) -> ListConfigResourcesResponse {
    if !ctx.allowed_on_cluster(crate::acl::Operation::DescribeConfigs) {
        return ListConfigResourcesResponse::default()
            .with_error_code(E::ClusterAuthorizationFailed.code());
    }
    // Version 0 lists client-metrics resources only, whatever the request says.
    let types: Vec<i8> = if ctx.api_version == 0 {
        vec![RESOURCE_CLIENT_METRICS]
    } else if req.resource_types.is_empty() {
        EVERY_TYPE.to_vec()
    } else {
        req.resource_types.clone()
    };
    // A type it cannot list is refused whole (the response has no room for a reason).
    if types.iter().any(|t| !EVERY_TYPE.contains(t)) {
        return ListConfigResourcesResponse::default()
            .with_error_code(E::UnsupportedVersion.code());
    }
    let b = &ctx.broker;
    let mut resources = Vec::new();
    let mut add = |resource_type: i8, name: String| {
        resources.push(
            ConfigResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(s(name)),
        )
    };
    for t in EVERY_TYPE.into_iter().filter(|t| types.contains(t)) {
        match t {
            RESOURCE_TOPIC => {
                let mut names: Vec<String> = b
                    .catalog
                    .list()
                    .iter()
                    .map(|t| t.name.to_string())
                    .collect();
                names.sort();
                names.into_iter().for_each(|n| add(t, n));
            }
            RESOURCE_BROKER | RESOURCE_BROKER_LOGGER => super::metadata::brokers(&ctx)
                .into_iter()
                .for_each(|(id, _, _)| add(t, id.to_string())),
            RESOURCE_GROUP => b
                .groups
                .group_configs()
                .into_iter()
                .for_each(|(group, _)| add(t, group)),
            _ => {}
        }
    }
    ListConfigResourcesResponse::default().with_config_resources(resources)
}
