//! Metadata (key 3): this broker, the topics asked for (or all), their partitions.
//!
//! A broker alone is every partition's leader and only replica. In a cluster
//! (`crate::replication`) every broker of `cluster.brokers` is listed, the leader leads every
//! partition and is the controller, every broker is a replica, and the in-sync set is the
//! leader's (a follower tells what it last heard); a follower creates no topic itself: it asks the leader to
//! auto-create it and answers LEADER_NOT_AVAILABLE, which clients retry. With `allow_auto_topic_creation`
//! (v4+; always for older versions) and `broker.auto_create_topics`, unknown topics are created
//! with the default partition count, as Kafka does.
//!
//! ACLs (`crate::acl`): a request for all topics lists those the client may Describe; a topic
//! asked for by name or id that it may not Describe, or an unknown one it may not Create (on the
//! topic or the cluster) when it would be auto-created, gets TOPIC_AUTHORIZATION_FAILED. Asked
//! for (v8+), the operations the client may perform on each topic and on the cluster.
//!
//! Each partition names its leader epoch (v7+, `storage::epochs`): the one this broker leads
//! it at, or, on a follower, its leader's as last read. v13's top-level error (KIP-1102: a
//! cluster asking its clients to bootstrap again) is never set: the brokers a client was
//! given stay the cluster's.

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
use crate::replication;

pub async fn handle(ctx: Ctx, req: MetadataRequest) -> MetadataResponse {
    let b = &ctx.broker;
    let node = BrokerId(b.node_id);
    let brokers = brokers(&ctx)
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(s(host))
                .with_port(port)
        })
        .collect();
    let leader = b.cluster.as_ref().map_or(node, |c| BrokerId(c.leader));
    let auto_create = b.config.broker.auto_create_topics
        && (ctx.api_version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match req.topics {
        // v1+: null means all topics; v0: an empty list means all topics.
        None => topics.extend(visible(&ctx)),
        Some(list) if list.is_empty() && ctx.api_version == 0 => topics.extend(visible(&ctx)),
        Some(list) => {
            let list = super::first_of_each(list, |t| (t.name.clone(), t.topic_id));
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
                    Ok(t) => describe(&ctx, &t),
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
    MetadataResponse::default()
        .with_cluster_authorized_operations(cluster_operations(
            &ctx,
            req.include_cluster_authorized_operations,
        ))
        .with_brokers(brokers)
        .with_cluster_id(Some(s(b.cluster_id())))
        .with_controller_id(leader)
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
    if b.cluster.as_ref().is_some_and(|c| !c.is_leader()) {
        if may_create(ctx, name) {
            replication::follower::ask_leader_to_create(b, name);
        }
        return Err(E::LeaderNotAvailable.code());
    }
    if !may_create(ctx, name) {
        return Err(E::TopicAuthorizationFailed.code());
    }
    let cfg = &b.config.broker;
    let created = crate::broker::waiting_for_disk(|| {
        b.catalog.create_topic(
            name,
            cfg.default_partitions,
            b.catalog.replicas(),
            Default::default(),
            false,
            now_ms(),
        )
    });
    match created {
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
fn visible(ctx: &Ctx) -> Vec<MetadataResponseTopic> {
    let list = ctx.broker.catalog.list();
    list.iter()
        .filter(|t| ctx.sees(ResourceType::Topic, &t.name))
        .map(|t| describe(ctx, t))
        .collect()
}

fn describe(ctx: &Ctx, t: &Topic) -> MetadataResponseTopic {
    let b = &ctx.broker;
    let now = now_ms();
    let partitions = t
        .partitions()
        .iter()
        .map(|p| {
            let (leader, replicas, isr) = match &b.cluster {
                None => (b.node_id, vec![b.node_id], vec![b.node_id]),
                Some(c) => (c.leader, c.replicas(), replication::isr(c, p, now)),
            };
            let ids = |v: Vec<i32>| v.into_iter().map(BrokerId).collect();
            MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(p.leader_epoch())
                .with_replica_nodes(ids(replicas))
                .with_isr_nodes(ids(isr))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(s(t.name.to_string()))))
        .with_topic_id(t.id)
        .with_partitions(partitions)
}

/// The operations the client may perform on the cluster, when `asked`: none (0) without
/// Describe on it, as Kafka answers Metadata and DescribeCluster.
pub(crate) fn cluster_operations(ctx: &Ctx, asked: bool) -> i32 {
    let name = crate::acl::CLUSTER_NAME;
    if asked && !ctx.sees(ResourceType::Cluster, name) {
        return 0;
    }
    ctx.operations(asked, ResourceType::Cluster, name)
}

/// Every broker as clients of this connection's listener reach it: node id, host and port.
/// This broker is where the client is; the others of a cluster are at the addresses of
/// `cluster.brokers` (or `cluster.tls_brokers` for a TLS listener).
pub(crate) fn brokers(ctx: &Ctx) -> Vec<(i32, String, i32)> {
    let b = &ctx.broker;
    let this = (
        b.node_id,
        ctx.session.advertised_host.clone(),
        ctx.session.advertised_port,
    );
    let Some(c) = &b.cluster else {
        return vec![this];
    };
    c.brokers
        .iter()
        .map(|peer| {
            if peer.node_id == b.node_id {
                return this.clone();
            }
            let address = c
                .address_of(peer.node_id, ctx.session.listener)
                .unwrap_or(&peer.address);
            let (host, port) = split_address(address);
            (peer.node_id, host.to_string(), port)
        })
        .collect()
}

/// `host:port` (or `[v6]:port`) as Metadata gives it: the host and the port.
pub(crate) fn split_address(address: &str) -> (&str, i32) {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "9092"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port.parse().unwrap_or(9092))
}
