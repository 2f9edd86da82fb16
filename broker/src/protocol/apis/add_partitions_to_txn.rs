//! AddPartitionsToTxn (key 24, v0-3): names the partitions a transactional producer is about to
//! write, starting its transaction (`crate::transactions`). Either all of them are added or
//! none: a partition that does not exist gets UNKNOWN_TOPIC_OR_PARTITION, one of a topic the
//! client may not Write TOPIC_AUTHORIZATION_FAILED, and the others OPERATION_NOT_ATTEMPTED.
//! The producer's own errors (PRODUCER_FENCED, INVALID_PRODUCER_ID_MAPPING,
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, NOT_COORDINATOR on a cluster's follower) go to every
//! partition.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use crate::acl::{Operation, ResourceType};
use crate::log_budget::client_text;
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: AddPartitionsToTxnRequest) -> AddPartitionsToTxnResponse {
    let id = req.v3_and_below_transactional_id.to_string();
    let producer = (
        req.v3_and_below_producer_id.0,
        req.v3_and_below_producer_epoch,
    );
    let topics = req.v3_and_below_topics;
    // Per partition: (topic, partition, its own refusal).
    let mut wanted = Vec::new();
    for t in &topics {
        let writable = ctx.allowed(Operation::Write, ResourceType::Topic, &t.name);
        let topic = ctx.broker.catalog.get(&t.name);
        for &p in &t.partitions {
            let refusal = if !writable {
                Some(E::TopicAuthorizationFailed.code())
            } else if topic.as_ref().and_then(|t| t.partition(p)).is_none() {
                Some(E::UnknownTopicOrPartition.code())
            } else {
                None
            };
            wanted.push((t.name.clone(), p, refusal));
        }
    }
    let whole = match super::coordinator_refusal(&ctx, &id) {
        Some(code) => Some(code),
        None if wanted.iter().any(|w| w.2.is_some()) => None,
        None => {
            let partitions: Vec<(String, i32)> =
                wanted.iter().map(|(t, p, _)| (t.to_string(), *p)).collect();
            let added = crate::broker::waiting_for_disk(|| {
                ctx.broker.transactions.add_partitions(
                    &ctx.broker,
                    &id,
                    producer,
                    &partitions,
                    crate::broker::now_ms(),
                )
            });
            match added {
                Ok(()) => Some(0),
                Err(e) => {
                    tracing::debug!(transactional_id = %client_text(&id), error = %e, "AddPartitionsToTxn refused");
                    Some(super::for_version(e.code(), ctx.api_version, 2))
                }
            }
        }
    };
    let mut results: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for (topic, p, refusal) in wanted {
        let code = whole.unwrap_or_else(|| refusal.unwrap_or(E::OperationNotAttempted.code()));
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(p)
            .with_partition_error_code(code);
        match results.iter_mut().find(|r| r.name == topic) {
            Some(r) => r.results_by_partition.push(result),
            None => results.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic)
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}
