//! EndTxn (key 26): commits or aborts a transactional producer's transaction: a marker in every
//! partition it added, and on commit the consumer offsets it staged stored
//! (`crate::transactions`). Ending it again the same way (a retry) succeeds. In a cluster the
//! answer waits (up to 30 s) for the in-sync followers to have the markers, as acks=all would,
//! so that a transaction answered committed stays committed when the lead moves; past that it
//! answers anyway (the markers are on the leader, and read_committed consumers do not read the
//! transaction until the followers have them, `storage::txn`), and a move of the lead before
//! they do aborts it. A commit also waits, within the same 30 s, for the followers to copy the
//! consumer offsets it stored.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use crate::log_budget::client_text;
use crate::protocol::Ctx;

/// How long EndTxn waits for the followers to copy the markers.
const REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn handle(ctx: Ctx, req: EndTxnRequest) -> EndTxnResponse {
    let id = req.transactional_id.to_string();
    let code = match super::coordinator_refusal(&ctx, &id) {
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
                                crate::replication::wait_copied_in_sync(c, &p, end, left).await;
                            if replicated != crate::replication::Replicated::Yes {
                                tracing::info!(transactional_id = %client_text(&id), topic = %p.topic, partition = p.index, ?replicated, "a transaction marker is not on every in-sync follower yet");
                            }
                        }
                        // And its consumer offsets, which a transaction commits with its records.
                        let changes = ctx.broker.groups.offsets_changes();
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        if req.committed && !c.wait_offsets_copied(changes, left).await {
                            tracing::info!(transactional_id = %client_text(&id), "a transaction's offsets are not on every follower yet");
                        }
                    }
                    0
                }
                Err(e) => {
                    tracing::debug!(transactional_id = %client_text(&id), error = %e, "EndTxn refused");
                    super::for_version(e.code(), ctx.api_version, 2)
                }
            }
        }
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(req.producer_id)
        .with_producer_epoch(req.producer_epoch)
}
