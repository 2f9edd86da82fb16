//! ConsumerGroupHeartbeat (key 68, v0-v1): the consumer group protocol of KIP-848
//! (`group.protocol=consumer` in librdkafka 2.12+ and the Java client 4.x). The coordinator
//! assigns partitions itself (`crate::groups::consumer`); a member joins with epoch 0, heartbeats
//! with its epoch and the partitions it holds, and leaves with -1. The client needs Read on the
//! group and Describe on each topic it names, as in Kafka.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::groups::{ConsumerHeartbeat, TopicView};
use crate::protocol::Ctx;

pub async fn handle(
    ctx: Ctx,
    req: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let refuse = |code: i16, message: String| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code)
            .with_error_message(Some(s(message)))
    };
    if let Some(code) = ctx.group_refusal(Operation::Read, &req.group_id) {
        return ConsumerGroupHeartbeatResponse::default().with_error_code(code);
    }
    if let Some(names) = &req.subscribed_topic_names {
        let refused: Vec<&str> = names
            .iter()
            .map(|n| n.as_str())
            .filter(|n| !ctx.allowed(Operation::Describe, ResourceType::Topic, n))
            .collect();
        if !refused.is_empty() {
            return refuse(
                E::TopicAuthorizationFailed.code(),
                format!("not authorized to describe topics {refused:?}"),
            );
        }
    }
    if ctx.api_version >= 1 && req.member_epoch == 0 && req.member_id.is_empty() {
        return refuse(
            E::InvalidRequest.code(),
            "MemberId can't be empty in version 1 and later".to_string(),
        );
    }
    // Compiled here, before the coordinator's lock is taken: a costly regex holds up only
    // its own request.
    let compiled_regex = match req.subscribed_topic_regex.as_deref() {
        Some(p) if !p.is_empty() => match crate::groups::consumer::compile_regex(p) {
            Ok(re) => Some(re),
            Err(e) => return refuse(e.kafka_code(), e.to_string()),
        },
        _ => None,
    };
    let view = topic_view(&ctx);
    let plain = ConsumerHeartbeat {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|i| i.to_string()),
        rack_id: req.rack_id.map(|r| r.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.to_string()).collect()),
        subscribed_topic_regex: req.subscribed_topic_regex.map(|r| r.to_string()),
        compiled_regex,
        server_assignor: req.server_assignor.map(|a| a.to_string()),
        owned: req.topic_partitions.map(|topics| {
            let mut owned = crate::groups::Assignment::new();
            for t in topics {
                owned
                    .entry(t.topic_id)
                    .or_default()
                    .extend(t.partitions.iter().copied());
            }
            owned
        }),
        client_id: ctx.client_id.to_string(),
        client_host: format!("/{}", ctx.session.peer.ip()),
    };
    let may_describe = |topic: &str| ctx.sees(ResourceType::Topic, topic);
    // A heartbeat that changes the group saves it (a redb write) before the answer.
    let reply = crate::broker::waiting_for_disk(|| {
        ctx.broker
            .groups
            .consumer_heartbeat(plain, &view, &may_describe)
    });
    match reply {
        Ok(reply) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(s(reply.member_id)))
            .with_member_epoch(reply.member_epoch)
            .with_heartbeat_interval_ms(reply.heartbeat_interval_ms)
            .with_assignment(reply.assignment.map(|a| {
                Assignment::default().with_topic_partitions(
                    a.into_iter()
                        .map(|(topic_id, partitions)| {
                            TopicPartitions::default()
                                .with_topic_id(topic_id)
                                .with_partitions(partitions.into_iter().collect())
                        })
                        .collect(),
                )
            })),
        Err(e) => refuse(e.kafka_code(), e.to_string()),
    }
}

/// Every topic, with its id and partition count: what a group of the consumer protocol may
/// subscribe to.
pub(super) fn topic_view(ctx: &Ctx) -> TopicView {
    ctx.broker
        .catalog
        .list()
        .into_iter()
        .map(|t| (t.name.to_string(), (t.id, t.partition_count())))
        .collect()
}
