//! Metadata (key 3): this broker, the topics asked for (or all), their partitions.
//!
//! This broker is every partition's leader and only replica. With `allow_auto_topic_creation`
//! (v4+; always for older versions) and `broker.auto_create_topics`, unknown topics are created
//! with the default partition count, as Kafka does. Asked for (v8+), the operations allowed on
//! each topic and the cluster are every one there is ([`authorized`]).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::{authorized, s};
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
        None => topics.extend(b.catalog.list().iter().map(|t| describe(t, node))),
        Some(list) if list.is_empty() && ctx.api_version == 0 => {
            topics.extend(b.catalog.list().iter().map(|t| describe(t, node)))
        }
        Some(list) => {
            for wanted in list {
                let topic = match (&wanted.name, wanted.topic_id.is_nil()) {
                    (Some(name), _) => lookup(&ctx, name, auto_create),
                    (None, false) => b
                        .catalog
                        .get_by_id(wanted.topic_id)
                        .ok_or(E::UnknownTopicId.code()),
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
    if req.include_topic_authorized_operations {
        for t in topics.iter_mut().filter(|t| t.error_code == 0) {
            t.topic_authorized_operations = authorized::TOPIC;
        }
    }
    let cluster_operations = if req.include_cluster_authorized_operations {
        authorized::CLUSTER
    } else {
        authorized::NOT_ASKED
    };
    MetadataResponse::default()
        .with_cluster_authorized_operations(cluster_operations)
        .with_brokers(vec![broker])
        .with_cluster_id(Some(s(b.cluster_id.clone())))
        .with_controller_id(node)
        .with_topics(topics)
}

fn lookup(ctx: &Ctx, name: &TopicName, auto_create: bool) -> Result<std::sync::Arc<Topic>, i16> {
    let b = &ctx.broker;
    if let Some(t) = b.catalog.get(name) {
        return Ok(t);
    }
    if !auto_create {
        return Err(E::UnknownTopicOrPartition.code());
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
