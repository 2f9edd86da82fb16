//! OffsetFetch (key 9): committed offsets of one group (v1-7) or several (v8). A null topic
//! list means every partition the group has committed; never-committed partitions answer -1.
//! The client needs Describe on the group (`crate::acl`), else GROUP_AUTHORIZATION_FAILED (in
//! v0-1, which have no top-level error code, on each partition asked for, as Kafka does); a
//! topic it may not Describe gets TOPIC_AUTHORIZATION_FAILED when named, and is left out of a
//! request for every partition.
//!
//! With `require_stable` (v7+, KIP-447; librdkafka's read_committed consumers set it) a
//! partition whose offset an ongoing transaction has staged (`crate::transactions`) answers
//! UNSTABLE_OFFSET_COMMIT, which the client retries, so that it does not start from the offset
//! the transaction is about to replace.

use kafka_protocol::error::ResponseError as E;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::groups::{FetchedPartition, FetchedTopic, GroupError, OffsetFetchTopic};
use crate::protocol::Ctx;

/// The group's offsets of `topics` (all when `None`), each topic with the error code its
/// partitions get; or the error code of the whole group.
fn fetch(
    ctx: &Ctx,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Vec<(FetchedTopic, i16)>, i16> {
    if let Some(code) = ctx.group_refusal(Operation::Describe, group) {
        return Err(code);
    }
    let mut refused = Vec::new();
    let plain: Option<Vec<OffsetFetchTopic>> = topics.map(|ts| {
        ts.into_iter()
            .filter_map(|(name, partitions)| {
                if ctx.allowed(Operation::Describe, ResourceType::Topic, &name) {
                    return Some(OffsetFetchTopic {
                        name: name.to_string(),
                        partitions,
                    });
                }
                let partitions = partitions
                    .into_iter()
                    .map(|partition| FetchedPartition {
                        partition,
                        offset: -1,
                        leader_epoch: -1,
                        metadata: String::new(),
                    })
                    .collect();
                refused.push(FetchedTopic {
                    name: name.to_string(),
                    partitions,
                });
                None
            })
            .collect()
    });
    let every = plain.is_none();
    let fetched = ctx
        .broker
        .groups
        .fetch_offsets(group, plain.as_deref())
        .map_err(|e: GroupError| e.kafka_code())?;
    let mut out: Vec<(FetchedTopic, i16)> = fetched
        .into_iter()
        .filter(|t| !every || ctx.sees(ResourceType::Topic, &t.name))
        .map(|t| (t, 0))
        .collect();
    out.extend(
        refused
            .into_iter()
            .map(|t| (t, E::TopicAuthorizationFailed.code())),
    );
    Ok(out)
}

pub async fn handle(ctx: Ctx, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let staged = if req.require_stable {
        let txns = &ctx.broker.transactions;
        crate::broker::waiting_for_disk(|| txns.staged_offsets())
    } else {
        Default::default()
    };
    // (offset, error code) of a partition: no offset and UNSTABLE_OFFSET_COMMIT while a
    // transaction has one staged and the client asked for stable offsets only.
    let stable = |group: &str, topic: &str, p: &FetchedPartition, code: i16| {
        let key = (group.to_string(), topic.to_string(), p.partition);
        if code == 0 && staged.contains(&key) {
            (-1, E::UnstableOffsetCommit.code())
        } else {
            (p.offset, code)
        }
    };
    if ctx.api_version >= 8 {
        let groups = super::first_of_each(req.groups, |g| {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                    .collect::<Vec<_>>()
            });
            (
                g.group_id.clone(),
                g.member_id.clone(),
                g.member_epoch,
                topics,
            )
        })
        .into_iter()
        .map(|g| {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            });
            let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            // v9: a consumer-protocol member names itself and its epoch, checked as Kafka
            // checks them (after the ACLs, which `fetch` applies).
            let member = g.member_id.as_deref();
            let checked = |topics| {
                ctx.broker
                    .groups
                    .check_fetch_member(&g.group_id, member, g.member_epoch)
                    .map(|()| topics)
                    .map_err(|e| e.kafka_code())
            };
            match fetch(&ctx, &g.group_id, topics).and_then(checked) {
                Ok(topics) => {
                    out.topics = topics
                        .into_iter()
                        .map(|(t, code)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(s(t.name.clone())))
                                .with_partitions(
                                    t.partitions
                                        .into_iter()
                                        .map(|p| {
                                            let (offset, code) =
                                                stable(&g.group_id, &t.name, &p, code);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p.partition)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(p.leader_epoch)
                                                .with_metadata(Some(s(p.metadata)))
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect()
                }
                Err(code) => out.error_code = code,
            }
            out
        })
        .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics: Option<Vec<(TopicName, Vec<i32>)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    // v0-1 have no top-level error code: as Kafka, a refusal of the group goes to each
    // partition asked for.
    let asked = (ctx.api_version < 2).then(|| topics.clone().unwrap_or_default());
    match fetch(&ctx, &req.group_id, topics) {
        Ok(topics) => OffsetFetchResponse::default().with_topics(
            topics
                .into_iter()
                .map(|(t, code)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(t.name.clone())))
                        .with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    let (offset, code) = stable(&req.group_id, &t.name, &p, code);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p.partition)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(p.leader_epoch)
                                        .with_metadata(Some(s(p.metadata)))
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(code) => match asked {
            None => OffsetFetchResponse::default().with_error_code(code),
            Some(asked) => OffsetFetchResponse::default().with_topics(
                asked
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(name)
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(-1)
                                            .with_metadata(Some(s("")))
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        },
    }
}
