//! ListTransactions (key 66, v0-1): the transactional ids this broker coordinates that the
//! client may Describe, with their producer id and state (`kafka-transactions.sh list`),
//! filtered by state names, producer ids and (v1) how long the transaction has been running.
//! A state filter that names no state comes back in `unknown_state_filters`. A cluster's
//! follower coordinates none and lists none.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::s;
use crate::acl::ResourceType;
use crate::protocol::Ctx;
use crate::transactions::TxnStatus;

const STATES: [TxnStatus; 6] = [
    TxnStatus::Empty,
    TxnStatus::Ongoing,
    TxnStatus::PrepareCommit,
    TxnStatus::PrepareAbort,
    TxnStatus::CompleteCommit,
    TxnStatus::CompleteAbort,
];

pub async fn handle(ctx: Ctx, req: ListTransactionsRequest) -> ListTransactionsResponse {
    let unknown = req
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|st| st.name() == f.as_str()))
        .cloned()
        .collect();
    let now = crate::broker::now_ms();
    let running = |status: TxnStatus| {
        matches!(
            status,
            TxnStatus::Ongoing | TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
        )
    };
    let listed = if ctx.follows() {
        Vec::new()
    } else {
        let txns = &ctx.broker.transactions;
        crate::broker::waiting_for_disk(|| txns.snapshot())
            .into_iter()
            .filter(|(id, t)| {
                let state_ok = req.state_filters.is_empty()
                    || req
                        .state_filters
                        .iter()
                        .any(|f| f.as_str() == t.status.name());
                let producer_ok = req.producer_id_filters.is_empty()
                    || req.producer_id_filters.contains(&ProducerId(t.producer_id));
                let duration_ok = req.duration_filter < 0
                    || (running(t.status) && now - t.started_ms >= req.duration_filter);
                state_ok
                    && producer_ok
                    && duration_ok
                    && ctx.sees(ResourceType::TransactionalId, id)
            })
            .map(|(id, t)| {
                TransactionState::default()
                    .with_transactional_id(TransactionalId(s(id)))
                    .with_producer_id(ProducerId(t.producer_id))
                    .with_transaction_state(s(t.status.name()))
            })
            .collect()
    };
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}
