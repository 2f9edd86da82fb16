//! AddOffsetsToTxn (key 25): a transactional producer will commit offsets of a consumer group in
//! its transaction (`crate::transactions`); the offsets follow with TxnOffsetCommit. Needs Read
//! on the group (else GROUP_AUTHORIZATION_FAILED) besides Write on the transactional id.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use crate::acl::{Operation, ResourceType};
use crate::log_budget::client_text;
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
    let id = req.transactional_id.to_string();
    let code = if let Some(code) = super::coordinator_refusal(&ctx, &id) {
        code
    } else if !ctx.allowed(Operation::Read, ResourceType::Group, &req.group_id) {
        E::GroupAuthorizationFailed.code()
    } else {
        let added = crate::broker::waiting_for_disk(|| {
            ctx.broker.transactions.add_group(
                &ctx.broker,
                &id,
                (req.producer_id.0, req.producer_epoch),
                &req.group_id,
                crate::broker::now_ms(),
            )
        });
        match added {
            Ok(()) => 0,
            Err(e) => {
                tracing::debug!(transactional_id = %client_text(&id), error = %e, "AddOffsetsToTxn refused");
                super::for_version(e.code(), ctx.api_version, 2)
            }
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}
