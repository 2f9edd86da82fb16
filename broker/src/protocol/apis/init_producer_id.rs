//! InitProducerId (key 22): a producer id for idempotent and transactional producers.
//!
//! With a transactional id the transaction coordinator answers (`crate::transactions`): the
//! id's producer id with its epoch bumped, which fences the previous producer of the id, after
//! aborting a transaction it left open. That needs Write on the transactional id (else
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED); a cluster's follower answers NOT_COORDINATOR.
//! An idempotent producer that asks again (v3+, after an unknown-producer error) gets a fresh id.
//! With ACLs (`crate::acl`), the client needs IdempotentWrite on the cluster or Write on some
//! topic (KIP-679), else CLUSTER_AUTHORIZATION_FAILED.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::acl::{Operation, ResourceType};
use crate::log_budget::client_text;
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut out = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.as_ref().is_some_and(|t| t.is_empty()) {
        // Kafka's answer: an empty id is neither a transactional id nor none.
        out.error_code = E::InvalidRequest.code();
        return out;
    }
    if let Some(id) = &req.transactional_id {
        if ctx.follows() {
            out.error_code = E::NotCoordinator.code();
            return out;
        }
        if !ctx.allowed(Operation::Write, ResourceType::TransactionalId, id) {
            out.error_code = E::TransactionalIdAuthorizationFailed.code();
            return out;
        }
        let expected = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
        let result = crate::broker::waiting_for_disk(|| {
            ctx.broker.transactions.init_producer(
                &ctx.broker,
                id,
                req.transaction_timeout_ms,
                expected,
                crate::broker::now_ms(),
            )
        });
        match result {
            Ok((producer_id, epoch)) => {
                out.producer_id = ProducerId(producer_id);
                out.producer_epoch = epoch;
            }
            Err(e) => {
                tracing::debug!(transactional_id = %client_text(id.as_str()), error = %e, "InitProducerId refused");
                out.error_code = super::for_version(e.code(), ctx.api_version, 4);
            }
        }
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
