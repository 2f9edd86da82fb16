//! EndTxn (key 26): commits or aborts a transactional producer's transaction: a marker in every
//! partition it added, and on commit the consumer offsets it staged stored
//! (`crate::transactions`). Ending it again the same way (a retry) succeeds. In a cluster the
//! answer waits (up to 30 s) for the in-sync followers to have the markers, as acks=all would,
//! so that a transaction answered committed stays committed when the lead moves.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

/// How long EndTxn waits for the followers to copy the markers.
const REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn handle(ctx: Ctx, req: EndTxnRequest) -> EndTxnResponse {
    let id = req.transactional_id.to_string();
    let code = match coordinator_refusal(&ctx, &id) {
        Some(code) => code,
        None => {
            let ended = crate::broker::waiting_for_disk(|| {
                ctx.broker.transactions.end_transaction(
                    &ctx.broker,
                    &id,
                    (req.producer_id.0, req.producer_epoch),
                    req.committed,
                    crate::broker::now_ms(),
                )
            });
            match ended {
                Ok(markers) => {
                    if let Some(c) = &ctx.broker.cluster {
                        let deadline = tokio::time::Instant::now() + REPLICATION_WAIT;
                        for (p, end) in markers {
                            let left =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            let replicated =
                                crate::replication::wait_replicated(c, &p, end, left).await;
                            if replicated != crate::replication::Replicated::Yes {
                                tracing::info!(transactional_id = %id, topic = %p.topic, partition = p.index, ?replicated, "a transaction marker is not on every in-sync follower yet");
                            }
                        }
                    }
                    0
                }
                Err(e) => {
                    tracing::debug!(transactional_id = %id, error = %e, "EndTxn refused");
                    for_version(e.code(), ctx.api_version, 2)
                }
            }
        }
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(req.producer_id)
        .with_producer_epoch(req.producer_epoch)
}

/// PRODUCER_FENCED as a request version from before it (KIP-588) knows it:
/// INVALID_PRODUCER_EPOCH below `since`, as Kafka answers.
pub(crate) fn for_version(code: i16, version: i16, since: i16) -> i16 {
    if version < since && code == E::ProducerFenced.code() {
        E::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// Why this broker does not take a transactional request for `id`: NOT_COORDINATOR on a
/// cluster's follower (the leader coordinates), TRANSACTIONAL_ID_AUTHORIZATION_FAILED when the
/// client may not Write the transactional id.
pub(crate) fn coordinator_refusal(ctx: &Ctx, id: &str) -> Option<i16> {
    if ctx.follows() {
        return Some(E::NotCoordinator.code());
    }
    (!ctx.allowed(Operation::Write, ResourceType::TransactionalId, id))
        .then_some(E::TransactionalIdAuthorizationFailed.code())
}
