//! OffsetDelete (key 47): removes a group's committed offsets for some partitions
//! (`kafka-consumer-groups --delete-offsets`, AdminClient `deleteConsumerGroupOffsets`). Offsets
//! of topics the group's active members subscribe to stay, with GROUP_SUBSCRIBED_TO_TOPIC;
//! partitions this broker does not have get UNKNOWN_TOPIC_OR_PARTITION. The client needs Delete
//! on the group (`crate::acl`), else GROUP_AUTHORIZATION_FAILED, and Read on each topic, else
//! its partitions get TOPIC_AUTHORIZATION_FAILED and keep their offsets.

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use kafka_protocol::error::ResponseError;

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    // As in Kafka, partitions this broker does not have are answered UNKNOWN_TOPIC_OR_PARTITION
    // and not asked of the group.
    let catalog = &ctx.broker.catalog;
    if let Some(code) = ctx.group_refusal(Operation::Delete, &req.group_id) {
        return OffsetDeleteResponse::default().with_error_code(code);
    }
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| ctx.allowed(Operation::Read, ResourceType::Topic, &t.name))
        .collect();
    let known: Vec<Vec<bool>> = req
        .topics
        .iter()
        .zip(&readable)
        .map(|(t, readable)| {
            let topic = catalog.get(&t.name).filter(|_| *readable);
            t.partitions
                .iter()
                .map(|p| {
                    topic
                        .as_ref()
                        .is_some_and(|k| k.partition(p.partition_index).is_some())
                })
                .collect()
        })
        .collect();
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .zip(&known)
        .flat_map(|(t, known)| {
            t.partitions
                .iter()
                .zip(known)
                .filter(|(_, k)| **k)
                .map(|(p, _)| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let codes = match ctx.broker.groups.delete_offsets(&req.group_id, &partitions) {
        Ok(codes) => codes,
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.kafka_code()),
    };
    let mut codes = codes.into_iter();
    let topics = req
        .topics
        .into_iter()
        .zip(known)
        .zip(readable)
        .map(|((t, known), readable)| {
            let partitions = t
                .partitions
                .iter()
                .zip(known)
                .map(|(p, known)| {
                    let code = if known {
                        codes.next().unwrap_or(0)
                    } else if !readable {
                        ResponseError::TopicAuthorizationFailed.code()
                    } else {
                        ResponseError::UnknownTopicOrPartition.code()
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
