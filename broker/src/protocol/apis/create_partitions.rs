//! CreatePartitions (key 37): grow a topic's partition count. The client needs Alter on the
//! topic (`crate::acl`), else TOPIC_AUTHORIZATION_FAILED.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use kafka_protocol::error::ResponseError as E;

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::broker::now_ms;
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

pub async fn handle(ctx: Ctx, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let catalog = &ctx.broker.catalog;
    let results = req
        .topics
        .into_iter()
        .map(|t| {
            let mut out = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            if let Some(code) = ctx.controller_refusal() {
                out.error_code = code;
                return out;
            }
            if !ctx.allowed(Operation::Alter, ResourceType::Topic, &t.name) {
                out.error_code = E::TopicAuthorizationFailed.code();
                return out;
            }
            if let Err(e) = catalog.create_partitions(&t.name, t.count, req.validate_only, now_ms())
            {
                out.error_code = catalog_code(&e);
                out.error_message = Some(s(e.to_string()));
            }
            out
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
