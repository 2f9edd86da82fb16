//! OffsetCommit (key 8): a group's committed positions, durable in redb before the reply.
//! Partitions of topics this broker does not have get UNKNOWN_TOPIC_OR_PARTITION, as in Kafka.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse, TopicName};

use super::s;
use crate::groups::{OffsetCommitPartition, OffsetCommitRequest as Plain, OffsetCommitTopic};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let catalog = &ctx.broker.catalog;
    let mut unknown: Vec<(TopicName, Vec<i32>)> = Vec::new();
    let mut topics = Vec::new();
    for t in req.topics {
        let known = catalog.get(&t.name);
        let mut parts = Vec::new();
        let mut missing = Vec::new();
        for p in t.partitions {
            if known
                .as_ref()
                .is_some_and(|k| k.partition(p.partition_index).is_some())
            {
                parts.push(OffsetCommitPartition {
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if ctx.api_version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.map(|m| m.to_string()),
                    commit_timestamp_ms: None,
                });
            } else {
                missing.push(p.partition_index);
            }
        }
        if !missing.is_empty() {
            unknown.push((t.name.clone(), missing));
        }
        if !parts.is_empty() {
            topics.push(OffsetCommitTopic {
                name: t.name.to_string(),
                partitions: parts,
            });
        }
    }
    let plain = Plain {
        group_id: req.group_id.to_string(),
        generation_id: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|i| i.to_string()),
        topics,
    };
    let mut out: Vec<OffsetCommitResponseTopic> = if plain.topics.is_empty() {
        Vec::new()
    } else {
        ctx.broker
            .groups
            .commit_offsets(&plain)
            .into_iter()
            .map(|t| {
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(s(t.name)))
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition)
                                    .with_error_code(p.result.err().map_or(0, |e| e.kafka_code()))
                            })
                            .collect(),
                    )
            })
            .collect()
    };
    for (name, parts) in unknown {
        out.push(
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(E::UnknownTopicOrPartition.code())
                        })
                        .collect(),
                ),
        );
    }
    OffsetCommitResponse::default().with_topics(out)
}
