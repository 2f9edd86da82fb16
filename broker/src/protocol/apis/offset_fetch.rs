//! OffsetFetch (key 9): committed offsets of one group (v1-7) or several (v8). A null topic
//! list means every partition the group has committed; never-committed partitions answer -1.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::s;
use crate::groups::{FetchedTopic, GroupError, OffsetFetchTopic};
use crate::protocol::Ctx;

fn fetch(
    ctx: &Ctx,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Vec<FetchedTopic>, GroupError> {
    let plain: Option<Vec<OffsetFetchTopic>> = topics.map(|ts| {
        ts.into_iter()
            .map(|(name, partitions)| OffsetFetchTopic {
                name: name.to_string(),
                partitions,
            })
            .collect()
    });
    ctx.broker.groups.fetch_offsets(group, plain.as_deref())
}

pub async fn handle(ctx: Ctx, req: OffsetFetchRequest) -> OffsetFetchResponse {
    if ctx.api_version >= 8 {
        let groups = req
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                match fetch(&ctx, &g.group_id, topics) {
                    Ok(topics) => {
                        out.topics = topics
                            .into_iter()
                            .map(|t| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(s(t.name)))
                                    .with_partitions(
                                        t.partitions
                                            .into_iter()
                                            .map(|p| {
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p.partition)
                                                    .with_committed_offset(p.offset)
                                                    .with_committed_leader_epoch(p.leader_epoch)
                                                    .with_metadata(Some(s(p.metadata)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect()
                    }
                    Err(e) => out.error_code = e.kafka_code(),
                }
                out
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    match fetch(&ctx, &req.group_id, topics) {
        Ok(topics) => OffsetFetchResponse::default().with_topics(
            topics
                .into_iter()
                .map(|t| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(t.name)))
                        .with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p.partition)
                                        .with_committed_offset(p.offset)
                                        .with_committed_leader_epoch(p.leader_epoch)
                                        .with_metadata(Some(s(p.metadata)))
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(e) => OffsetFetchResponse::default().with_error_code(e.kafka_code()),
    }
}
