//! OffsetForLeaderEpoch (key 23, KIP-101, KIP-320): for a leader epoch a client read records
//! of, the largest epoch at or below it that wrote to the partition and the offset after that
//! epoch's last record here (`storage::epochs`). A consumer whose position is past that offset
//! read records this log no longer holds (the lead moved to a broker without them), and clients
//! check it after the leader epoch changes (librdkafka, the Java client). For the leader's
//! current epoch the answer is the log's end; for an epoch newer than any here, -1 and -1.
//!
//! Answered by the leader: a follower says NOT_LEADER_OR_FOLLOWER, as it does for fetches. A
//! client needs Describe on the topic (else TOPIC_AUTHORIZATION_FAILED), a broker asking for a
//! replica (replica id 0 or more) ClusterAction on the cluster (else
//! CLUSTER_AUTHORIZATION_FAILED). A request naming a leader epoch other than this broker's is
//! refused for the partition (FENCED_LEADER_EPOCH or UNKNOWN_LEADER_EPOCH).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let catalog = &ctx.broker.catalog;
    let for_replica = ctx.api_version >= 3 && req.replica_id.0 >= 0;
    let cluster_refused = for_replica && !ctx.allowed_on_cluster(Operation::ClusterAction);
    let follows = ctx.follows();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let refused = cluster_refused
                || (!for_replica
                    && !ctx.allowed(Operation::Describe, ResourceType::Topic, &t.topic));
            let topic = catalog.get(&t.topic);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let out = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let error = if cluster_refused {
                        E::ClusterAuthorizationFailed
                    } else if refused {
                        E::TopicAuthorizationFailed
                    } else if follows {
                        E::NotLeaderOrFollower
                    } else {
                        let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition))
                        else {
                            return out.with_error_code(E::UnknownTopicOrPartition.code());
                        };
                        if let Err(code) =
                            super::check_leader_epoch(part.leader_epoch(), p.current_leader_epoch)
                        {
                            return out.with_error_code(code);
                        }
                        let (epoch, end) = part.log().end_offset_for_epoch(p.leader_epoch);
                        return out.with_leader_epoch(epoch).with_end_offset(end);
                    };
                    out.with_error_code(error.code())
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
