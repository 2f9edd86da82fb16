//! InitProducerId (key 22): a producer id for idempotent producers.
//!
//! Transactions are not supported: a request with a transactional id is refused with
//! INVALID_REQUEST (non-retriable, so the client fails fast instead of retrying) and a log line.
//! An idempotent producer that asks again (v3+, after an unknown-producer error) gets a fresh id.
//! With ACLs (`crate::acl`), the client needs IdempotentWrite on the cluster or Write on some
//! topic (KIP-679), else CLUSTER_AUTHORIZATION_FAILED.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut out = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
        tracing::info!(client_id = %ctx.client_id, "transactional producer refused: transactions are not supported");
        out.error_code = E::InvalidRequest.code();
        return out;
    }
    if !ctx.broker.acls.may_write_idempotently(ctx.asker()) {
        ctx.refused(
            crate::acl::Operation::IdempotentWrite,
            crate::acl::ResourceType::Cluster,
            crate::acl::CLUSTER_NAME,
        );
        out.error_code = E::ClusterAuthorizationFailed.code();
        return out;
    }
    match ctx.broker.meta.next_producer_id() {
        Ok(n) => {
            let id = crate::replication::producer_id(ctx.broker.cluster.as_ref(), n);
            out.producer_id = ProducerId(id);
            out.producer_epoch = 0;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            out.error_code = E::KafkaStorageError.code();
        }
    }
    out
}
