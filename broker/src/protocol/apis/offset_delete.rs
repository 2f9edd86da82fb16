//! OffsetDelete (key 47): removes a group's committed offsets for some partitions
//! (`kafka-consumer-groups --delete-offsets`, AdminClient `deleteConsumerGroupOffsets`). Offsets
//! of topics the group's active members subscribe to stay, with GROUP_SUBSCRIBED_TO_TOPIC.

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
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
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(codes.next().unwrap_or(0))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
