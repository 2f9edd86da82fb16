//! ListOffsets (key 2): earliest (-2), latest (-1), max timestamp (-3, v7+), earliest local
//! (-4, v8+: the log start, as nothing is tiered), latest tiered (-5, v9+: none, offset -1, as
//! Kafka answers without tiered storage) or the first offset at or after a timestamp. With
//! isolation level read_committed (v2+) "latest" is the last stable offset (below the oldest
//! open transaction), as a read_committed consumer sees the partition's end. A topic the client
//! may not Describe (`crate::acl`) gets TOPIC_AUTHORIZATION_FAILED; a partition named twice,
//! INVALID_REQUEST at each mention, as in Kafka. v10's timeout (for tiered lookups) has nothing
//! to wait for.
//!
//! Each offset found comes with the leader epoch that wrote it (v4+; for "latest", the log's
//! latest epoch, as Kafka answers), and a request naming a leader epoch other than this
//! broker's is refused for the partition (FENCED_LEADER_EPOCH or UNKNOWN_LEADER_EPOCH).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;
use crate::protocol::error::storage_code;
use crate::replication;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn handle(ctx: Ctx, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let catalog = &ctx.broker.catalog;
    let read_committed = req.isolation_level == 1;
    let follows = ctx.broker.cluster.as_ref().is_some_and(|c| !c.is_leader());
    let twice = super::repeated(req.topics.iter().flat_map(|t| {
        t.partitions
            .iter()
            .map(|p| (t.name.clone(), p.partition_index))
    }));
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let refused = !ctx.allowed(Operation::Describe, ResourceType::Topic, &t.name);
            let topic = catalog.get(&t.name);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut out = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    if refused {
                        out.error_code = E::TopicAuthorizationFailed.code();
                        return out;
                    }
                    if twice.contains(&(t.name.clone(), p.partition_index)) {
                        out.error_code = E::InvalidRequest.code();
                        return out;
                    }
                    if follows {
                        out.error_code = E::NotLeaderOrFollower.code();
                        return out;
                    }
                    let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        out.error_code = E::UnknownTopicOrPartition.code();
                        return out;
                    };
                    if let Err(code) =
                        super::check_leader_epoch(part.leader_epoch(), p.current_leader_epoch)
                    {
                        out.error_code = code;
                        return out;
                    }
                    let mut log = part.log();
                    // What consumers may read: below the high watermark in a cluster. A
                    // timestamp found at or above it is not there yet.
                    let mut readable = replication::readable_end(
                        ctx.broker.cluster.as_ref(),
                        &part,
                        log.log_end_offset(),
                    );
                    if read_committed {
                        readable = log.last_stable_offset(readable);
                    }
                    match p.timestamp {
                        LATEST => {
                            out.offset = readable;
                            out.leader_epoch = log.latest_epoch();
                        }
                        EARLIEST | EARLIEST_LOCAL => {
                            out.offset = log.log_start_offset();
                            out.leader_epoch = log.epoch_at(out.offset);
                        }
                        LATEST_TIERED => {}
                        MAX_TIMESTAMP => {
                            if let Ok(Some((ts, offset))) = log.max_timestamp()
                                && offset < readable
                            {
                                out.timestamp = ts;
                                out.offset = offset;
                                out.leader_epoch = log.epoch_at(offset);
                            }
                        }
                        ts if ts >= 0 => match log.offset_for_timestamp(ts) {
                            Ok(Some((offset, found))) if offset < readable => {
                                out.offset = offset;
                                out.timestamp = found;
                                out.leader_epoch = log.epoch_at(offset);
                            }
                            Ok(_) => {}
                            Err(e) => out.error_code = storage_code(&e),
                        },
                        _ => out.error_code = E::InvalidRequest.code(),
                    }
                    if ctx.api_version < 4 {
                        // Not in the older answers.
                        out.leader_epoch = -1;
                    }
                    out
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
