//! DescribeTransactions (key 65): what the transaction coordinator holds of each transactional
//! id asked (`crate::transactions`): state, producer id and epoch, timeout, when the
//! transaction in progress started and the partitions it added (`kafka-transactions.sh
//! describe`). An id the client may not Describe gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED, an
//! unknown one TRANSACTIONAL_ID_NOT_FOUND; a cluster's follower answers NOT_COORDINATOR.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;
use crate::transactions::TxnStatus;

pub async fn handle(ctx: Ctx, req: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let txns = &ctx.broker.transactions;
    let known: BTreeMap<String, _> = crate::broker::waiting_for_disk(|| txns.snapshot())
        .into_iter()
        .collect();
    let states = super::first_of_each(req.transactional_ids, |id| id.clone())
        .into_iter()
        .map(|id| {
            let mut out = TransactionState::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(s(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            if ctx.follows() {
                out.error_code = E::NotCoordinator.code();
                return out;
            }
            if !ctx.allowed(Operation::Describe, ResourceType::TransactionalId, &id) {
                out.error_code = E::TransactionalIdAuthorizationFailed.code();
                return out;
            }
            let Some(t) = known.get(id.as_str()) else {
                out.error_code = E::TransactionalIdNotFound.code();
                return out;
            };
            let mut topics: Vec<TopicData> = Vec::new();
            for (topic, partition) in &t.partitions {
                match topics.last_mut() {
                    Some(last) if last.topic.as_str() == topic => last.partitions.push(*partition),
                    _ => topics.push(
                        TopicData::default()
                            .with_topic(TopicName(s(topic.clone())))
                            .with_partitions(vec![*partition]),
                    ),
                }
            }
            let started = matches!(
                t.status,
                TxnStatus::Ongoing | TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
            );
            out.with_transaction_state(s(t.status.name()))
                .with_transaction_timeout_ms(t.timeout_ms)
                .with_transaction_start_time_ms(if started { t.started_ms } else { -1 })
                .with_producer_id(ProducerId(t.producer_id))
                .with_producer_epoch(t.epoch)
                .with_topics(topics)
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}
