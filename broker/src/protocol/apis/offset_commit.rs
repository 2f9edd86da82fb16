//! OffsetCommit (key 8): a group's committed positions, durable in redb before the reply.
//! Partitions of topics this broker does not have get UNKNOWN_TOPIC_OR_PARTITION, as in Kafka.
//! The client needs Read on the group and on each topic (`crate::acl`): without the first every
//! partition gets GROUP_AUTHORIZATION_FAILED, without the second the topic's partitions get
//! TOPIC_AUTHORIZATION_FAILED.
//!
//! Versions 2-8 go through the codec; version 1, which the codec no longer reads (Kafka 4.0
//! dropped it), is read here ([`handle_v1`]): sarama before 1.41 commits with it unless
//! `Consumer.Offsets.Retention` is set, and Go gateways run such sarama builds for years.

use std::collections::HashSet;

use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::groups::{OffsetCommitPartition, OffsetCommitRequest as Plain, OffsetCommitTopic};
use crate::log_budget::{LogBudget, client_text, within_budget};
use crate::protocol::{Ctx, DispatchError, Reply, encode_response, frame};

/// OffsetCommit v1. Its request differs from v2's in a commit timestamp per partition
/// (ignored: the broker stamps every commit with its own clock, as Kafka 2.1+ does) and no
/// retention time; its response is v2's byte for byte, so it is written with the v2 encoder.
pub fn handle_v1(ctx: Ctx, req: frame::Request) -> Result<Reply, DispatchError> {
    let correlation_id = req.header.correlation_id;
    let decoded = decode_v1(req.body).ok_or_else(|| DispatchError::BadBody {
        api: ApiKey::OffsetCommit,
        version: 1,
        reason: "truncated or malformed".to_string(),
    })?;
    Ok(Box::pin(async move {
        let response = handle(ctx, decoded).await;
        encode_response(ApiKey::OffsetCommit, 2, correlation_id, &response)
    }))
}

/// Reads an OffsetCommit v1 body: group id, generation, member id, then per topic its name
/// and per partition (index, offset, commit timestamp, metadata); `None` when malformed.
fn decode_v1(mut b: Bytes) -> Option<OffsetCommitRequest> {
    fn string(b: &mut Bytes) -> Option<Option<StrBytes>> {
        let len = (b.remaining() >= 2).then(|| b.get_i16())?;
        if len < 0 {
            return Some(None);
        }
        let len = len as usize;
        if b.remaining() < len {
            return None;
        }
        StrBytes::from_utf8(b.split_to(len)).ok().map(Some)
    }
    fn i32(b: &mut Bytes) -> Option<i32> {
        (b.remaining() >= 4).then(|| b.get_i32())
    }
    fn i64(b: &mut Bytes) -> Option<i64> {
        (b.remaining() >= 8).then(|| b.get_i64())
    }
    fn count(b: &mut Bytes) -> Option<usize> {
        usize::try_from(i32(b)?).ok()
    }
    let group_id = string(&mut b)??;
    let generation = i32(&mut b)?;
    let member_id = string(&mut b)??;
    let mut topics = Vec::new();
    for _ in 0..count(&mut b)? {
        let name = string(&mut b)??;
        let mut partitions = Vec::new();
        for _ in 0..count(&mut b)? {
            let index = i32(&mut b)?;
            let offset = i64(&mut b)?;
            let _commit_timestamp = i64(&mut b)?;
            let metadata = string(&mut b)?;
            partitions.push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(index)
                    .with_committed_offset(offset)
                    .with_committed_metadata(metadata),
            );
        }
        topics.push(
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(name))
                .with_partitions(partitions),
        );
    }
    if b.has_remaining() {
        return None;
    }
    Some(
        OffsetCommitRequest::default()
            .with_group_id(group_id.into())
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(member_id)
            .with_retention_time_ms(-1)
            .with_topics(topics),
    )
}

pub async fn handle(ctx: Ctx, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let catalog = &ctx.broker.catalog;
    // Partitions not committed, by topic, with the error each gets.
    let mut failed: Vec<(TopicName, Vec<i32>, i16)> = Vec::new();
    let mut topics = Vec::new();
    let group_refused = ctx
        .group_refusal(Operation::Read, &req.group_id)
        .or_else(|| {
            // As Kafka: a member of the consumer protocol commits with v9 or later, which
            // carries its member epoch (librdkafka and the Java client do). A classic member
            // the group hosts (a consumer of the classic protocol joining it, or one not yet
            // moved over) commits with its older version, at its generation.
            (ctx.api_version < 9
                && ctx
                    .broker
                    .groups
                    .is_consumer_protocol_member(&req.group_id, &req.member_id))
            .then_some(E::UnsupportedVersion.code())
        });
    for t in req.topics {
        let refused = if group_refused.is_some() {
            group_refused
        } else if !ctx.allowed(Operation::Read, ResourceType::Topic, &t.name) {
            Some(E::TopicAuthorizationFailed.code())
        } else {
            None
        };
        if let Some(code) = refused {
            let parts = t.partitions.iter().map(|p| p.partition_index).collect();
            failed.push((t.name, parts, code));
            continue;
        }
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
            failed.push((t.name.clone(), missing, E::UnknownTopicOrPartition.code()));
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
        let groups = &ctx.broker.groups;
        let (mut results, ticket) =
            ctx.broker
                .transactions
                .plain_commit(&ctx.broker, &plain.group_id, || {
                    let (results, ticket) = groups.commit_offsets_lazily(&plain);
                    let stored: HashSet<(String, i32)> = results
                        .iter()
                        .flat_map(|t| {
                            let stored = t.partitions.iter().filter(|p| p.result.is_ok());
                            stored.map(|p| (t.name.clone(), p.partition))
                        })
                        .collect();
                    ((results, ticket), stored)
                });
        let stored = results
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.result.is_ok());
        // On disk (with the commits made meanwhile: one sync for them all) and on the
        // followers, both at once.
        let (durable, copied) = tokio::join!(
            tokio::time::timeout(REPLICATION_WAIT, groups.durable(ticket)),
            async { !stored || followers_copied(&ctx, &plain.group_id).await }
        );
        // Not on disk within the commit timeout: answered REQUEST_TIMED_OUT, as Kafka answers
        // an append to its offsets topic that did not complete in time.
        let copied = copied && durable.is_ok();
        if let Ok(Err(e)) = durable {
            for p in results.iter_mut().flat_map(|t| &mut t.partitions) {
                if p.result.is_ok() {
                    p.result = Err(crate::groups::GroupError::Store(e.clone()));
                }
            }
        }
        results
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
                                    .with_error_code(match p.result {
                                        Ok(()) if copied => 0,
                                        Ok(()) => E::RequestTimedOut.code(),
                                        Err(e) => commit_error_code(&e, ctx.api_version),
                                    })
                            })
                            .collect(),
                    )
            })
            .collect()
    };
    for (name, parts, code) in failed {
        out.push(
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code)
                        })
                        .collect(),
                ),
        );
    }
    OffsetCommitResponse::default().with_topics(out)
}

/// Commits the followers did not copy in time, said a minute.
static NOT_COPIED: LogBudget = LogBudget::new(4);

/// How long a commit waits for the followers to copy it (Kafka's `offsets.commit.timeout.ms`).
const REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// In a cluster, waits until the followers fetching from this leader have copied the offsets
/// committed so far, as Kafka answers a commit once its offsets topic's in-sync replicas have
/// it: a commit answered stays when the lead moves. False when they did not within
/// [`REPLICATION_WAIT`]; the commit is then answered REQUEST_TIMED_OUT, as Kafka's is, and the
/// client commits again.
async fn followers_copied(ctx: &Ctx, group: &str) -> bool {
    let Some(cluster) = ctx.broker.cluster.as_ref().filter(|c| c.is_leader()) else {
        return true;
    };
    let changes = ctx.broker.groups.offsets_changes();
    let copied = cluster.wait_offsets_copied(changes, REPLICATION_WAIT).await;
    if !copied {
        within_budget!(NOT_COPIED, warn, group = %client_text(group),
            "a commit was not copied by every follower fetching in 5 s: answered REQUEST_TIMED_OUT (a follower stuck? it stops counting after cluster.replica_lag_time_max)");
    }
    copied
}

/// A refused commit's error code. A commit with a generation to a group that does not exist
/// (the coordinator's ILLEGAL_GENERATION with no current generation) is GROUP_ID_NOT_FOUND
/// from v9 on, as Kafka answers it; older versions keep ILLEGAL_GENERATION.
fn commit_error_code(e: &crate::groups::GroupError, version: i16) -> i16 {
    match e {
        crate::groups::GroupError::IllegalGeneration { current: -1, .. } if version >= 9 => {
            E::GroupIdNotFound.code()
        }
        e => e.kafka_code(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    fn v1_body() -> BytesMut {
        let mut b = BytesMut::new();
        for (i, part) in [&b"g"[..], b"", b"t"].iter().enumerate() {
            b.put_i16(part.len() as i16);
            b.put_slice(part);
            match i {
                0 => b.put_i32(3), // generation
                1 => b.put_i32(1), // one topic
                _ => b.put_i32(1), // one partition
            }
        }
        b.put_i32(2); // partition
        b.put_i64(40); // offset
        b.put_i64(-1); // commit timestamp
        b.put_i16(-1); // no metadata
        b
    }

    #[test]
    fn a_v1_body_reads_as_the_v2_request() {
        let r = decode_v1(v1_body().freeze()).unwrap();
        assert_eq!(
            (
                r.group_id.as_str(),
                r.generation_id_or_member_epoch,
                r.member_id.as_str()
            ),
            ("g", 3, "")
        );
        let p = &r.topics[0].partitions[0];
        assert_eq!(r.topics[0].name.as_str(), "t");
        assert_eq!(
            (
                p.partition_index,
                p.committed_offset,
                p.committed_metadata.clone()
            ),
            (2, 40, None)
        );
    }

    #[test]
    fn a_truncated_or_overlong_v1_body_is_malformed() {
        let whole = v1_body();
        for cut in 0..whole.len() {
            assert!(
                decode_v1(whole.clone().freeze().slice(..cut)).is_none(),
                "cut at {cut}"
            );
        }
        let mut longer = whole.clone();
        longer.put_u8(0);
        assert!(decode_v1(longer.freeze()).is_none());
    }
}
