//! TxnOffsetCommit (key 28): a consumer group's offsets staged in a transaction, stored when it
//! commits and dropped when it aborts (`crate::transactions`). The group must have been added
//! with AddOffsetsToTxn (else INVALID_TXN_STATE). From v3 the sending member is checked against
//! the group's generation as an OffsetCommit's would be (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
//! FENCED_INSTANCE_ID), so a zombie of a rebalanced group cannot commit. Needs Read on the group
//! and on each topic, and Write on the transactional id.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use crate::acl::{Operation, ResourceType};
use crate::log_budget::client_text;
use crate::protocol::Ctx;
use crate::transactions::StagedOffset;

pub async fn handle(ctx: Ctx, req: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
    let id = req.transactional_id.to_string();
    let group = req.group_id.to_string();
    let whole = if let Some(code) = super::coordinator_refusal(&ctx, &id) {
        Some(code)
    } else if !crate::groups::group_id_makeable(&group) {
        Some(E::InvalidGroupId.code())
    } else if !ctx.allowed(Operation::Read, ResourceType::Group, &group) {
        Some(E::GroupAuthorizationFailed.code())
    } else if ctx.api_version >= 3 {
        ctx.broker
            .groups
            .check_transactional_commit(
                &group,
                req.generation_id,
                &req.member_id,
                req.group_instance_id.as_deref(),
            )
            .err()
            .map(|e| e.kafka_code())
    } else {
        None
    };
    // Per topic: whether the client may Read it.
    let readable: Vec<bool> = req
        .topics
        .iter()
        .map(|t| whole.is_some() || ctx.allowed(Operation::Read, ResourceType::Topic, &t.name))
        .collect();
    let code = match whole {
        Some(code) => code,
        None => {
            let offsets = req
                .topics
                .iter()
                .zip(&readable)
                .filter(|(_, readable)| **readable)
                .flat_map(|(t, _)| {
                    t.partitions.iter().map(|p| StagedOffset {
                        group: group.clone(),
                        topic: t.name.to_string(),
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map_or(String::new(), |m| m.to_string()),
                    })
                })
                .collect();
            let staged = crate::broker::waiting_for_disk(|| {
                ctx.broker.transactions.stage_offsets(
                    &ctx.broker,
                    &id,
                    (req.producer_id.0, req.producer_epoch),
                    &group,
                    offsets,
                )
            });
            match staged {
                Ok(()) => 0,
                Err(e) => {
                    tracing::debug!(transactional_id = %client_text(&id), group = %client_text(&group), error = %e, "TxnOffsetCommit refused");
                    super::for_version(e.code(), ctx.api_version, 3)
                }
            }
        }
    };
    let topics = req
        .topics
        .into_iter()
        .zip(readable)
        .map(|(t, readable)| {
            let code = if readable {
                code
            } else {
                E::TopicAuthorizationFailed.code()
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}
