//! Metadata (key 3): this broker, the topics asked for (or all), their partitions.
//!
//! This broker is every partition's leader and only replica. With `allow_auto_topic_creation`
//! (v4+; always for older versions) and `broker.auto_create_topics`, unknown topics are created
//! with the default partition count, as Kafka does.
//!
//! ACLs (`crate::acl`): a request for all topics lists those the client may Describe; a topic
//! asked for by name or id that it may not Describe, or an unknown one it may not Create (on the
//! topic or the cluster) when it would be auto-created, gets TOPIC_AUTHORIZATION_FAILED. Asked
//! for (v8+), the operations the client may perform on each topic and on the cluster.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::broker::now_ms;
use crate::catalog::Topic;
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

pub async fn handle(ctx: Ctx, req: MetadataRequest) -> MetadataResponse {
    let b = &ctx.broker;
    let node = BrokerId(b.node_id);
    let broker = MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(s(ctx.session.advertised_host.clone()))
        .with_port(ctx.session.advertised_port);
    let auto_create = b.config.broker.auto_create_topics
        && (ctx.api_version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match req.topics {
        // v1+: null means all topics; v0: an empty list means all topics.
        None => topics.extend(visible(&ctx, node)),
        Some(list) if list.is_empty() && ctx.api_version == 0 => topics.extend(visible(&ctx, node)),
        Some(list) => {
            for wanted in list {
                let topic = match (&wanted.name, wanted.topic_id.is_nil()) {
                    (Some(name), _) => lookup(&ctx, name, auto_create),
                    (None, false) => match b.catalog.get_by_id(wanted.topic_id) {
                        Some(t)
                            if !ctx.allowed(Operation::Describe, ResourceType::Topic, &t.name) =>
                        {
                            Err(E::TopicAuthorizationFailed.code())
                        }
                        Some(t) => Ok(t),
                        None => Err(E::UnknownTopicId.code()),
                    },
                    (None, true) => Err(E::InvalidRequest.code()),
                };
                topics.push(match topic {
                    Ok(t) => describe(&t, node),
                    Err(code) => MetadataResponseTopic::default()
                        .with_error_code(code)
                        .with_name(wanted.name.clone())
                        .with_topic_id(wanted.topic_id),
                });
            }
        }
    }
    for t in topics.iter_mut().filter(|t| t.error_code == 0) {
        let name = t.name.as_deref().map(|n| n.as_str()).unwrap_or_default();
        t.topic_authorized_operations = ctx.operations(
            req.include_topic_authorized_operations,
            ResourceType::Topic,
            name,
        );
    }
    let cluster_operations = ctx.operations(
        req.include_cluster_authorized_operations,
        ResourceType::Cluster,
        crate::acl::CLUSTER_NAME,
    );
    MetadataResponse::default()
        .with_cluster_authorized_operations(cluster_operations)
        .with_brokers(vec![broker])
        .with_cluster_id(Some(s(b.cluster_id.clone())))
        .with_controller_id(node)
        .with_topics(topics)
}

fn lookup(ctx: &Ctx, name: &TopicName, auto_create: bool) -> Result<std::sync::Arc<Topic>, i16> {
    let b = &ctx.broker;
    if !ctx.allowed(Operation::Describe, ResourceType::Topic, name) {
        return Err(E::TopicAuthorizationFailed.code());
    }
    if let Some(t) = b.catalog.get(name) {
        return Ok(t);
    }
    if !auto_create {
        return Err(E::UnknownTopicOrPartition.code());
    }
    if !may_create(ctx, name) {
        return Err(E::TopicAuthorizationFailed.code());
    }
    let cfg = &b.config.broker;
    match b.catalog.create_topic(
        name,
        cfg.default_partitions,
        1,
        Default::default(),
        false,
        now_ms(),
    ) {
        Ok(t) => Ok(t),
        // Another connection created it between our look-up and our create.
        Err(crate::catalog::CatalogError::TopicExists(_)) => {
            b.catalog.get(name).ok_or(E::UnknownTopicOrPartition.code())
        }
        Err(e) => Err(catalog_code(&e)),
    }
}

/// Whether the client may create the topic `name`: Create on the cluster or on the topic.
pub(crate) fn may_create(ctx: &Ctx, name: &str) -> bool {
    let who = ctx.asker();
    let acls = &ctx.broker.acls;
    let allowed = acls.allowed(
        who,
        Operation::Create,
        ResourceType::Cluster,
        crate::acl::CLUSTER_NAME,
    ) || acls.allowed(who, Operation::Create, ResourceType::Topic, name);
    if !allowed {
        ctx.refused(Operation::Create, ResourceType::Topic, name);
    }
    allowed
}

/// Every topic the client may Describe.
fn visible(ctx: &Ctx, node: BrokerId) -> Vec<MetadataResponseTopic> {
    let list = ctx.broker.catalog.list();
    list.iter()
        .filter(|t| ctx.sees(ResourceType::Topic, &t.name))
        .map(|t| describe(t, node))
        .collect()
}

fn describe(t: &Topic, node: BrokerId) -> MetadataResponseTopic {
    let partitions = (0..t.partition_count())
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(node)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(s(t.name.to_string()))))
        .with_topic_id(t.id)
        .with_partitions(partitions)
}
