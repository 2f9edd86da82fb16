//! DeleteRecords (key 21): advance a partition's log start offset (-1 means the high watermark).
//! The client needs Delete on the topic (`crate::acl`), else TOPIC_AUTHORIZATION_FAILED; a topic
//! without the `delete` cleanup policy (compact only) answers POLICY_VIOLATION, as in Kafka.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;
use crate::protocol::error::storage_code;

pub async fn handle(ctx: Ctx, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let catalog = &ctx.broker.catalog;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let refused = !ctx.allowed(Operation::Delete, ResourceType::Topic, &t.name);
            let topic = catalog.get(&t.name).filter(|_| !refused);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut out = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1);
                    match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                        Some(_) if ctx.follows() => out.error_code = E::NotLeaderOrFollower.code(),
                        None if refused => out.error_code = E::TopicAuthorizationFailed.code(),
                        None => out.error_code = E::UnknownTopicOrPartition.code(),
                        Some(part) => {
                            let mut log = part.log();
                            // Up to what consumers can read (the high watermark in a
                            // cluster); -1 is all of it.
                            let readable = crate::replication::readable_end(
                                ctx.broker.cluster.as_ref(),
                                &part,
                                log.log_end_offset(),
                            );
                            let target = if p.offset == -1 { readable } else { p.offset };
                            if !log.config().delete {
                                // As Kafka: a compacted topic keeps each key's latest value;
                                // records go from it only by compaction.
                                out.error_code = E::PolicyViolation.code();
                            } else if target < 0 || target > readable {
                                out.error_code = E::OffsetOutOfRange.code();
                            } else {
                                match log.delete_records_before(target) {
                                    Ok(low) => out.low_watermark = low,
                                    Err(e) => out.error_code = storage_code(&e),
                                }
                            }
                        }
                    }
                    out
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
