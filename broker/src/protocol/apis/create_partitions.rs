//! CreatePartitions (key 37): grow a topic's partition count. The client needs Alter on the
//! topic (`crate::acl`), else TOPIC_AUTHORIZATION_FAILED. The partitions added count against
//! the client's `controller_mutation_rate` (`crate::client_quotas`); from v3 a topic asked for
//! while that quota is used up gets THROTTLING_QUOTA_EXCEEDED, once it has passed every other
//! check, as in Kafka.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use kafka_protocol::error::ResponseError as E;

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::broker::now_ms;
use crate::client_quotas::{self, QuotaKey};
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

pub async fn handle(ctx: Ctx, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let catalog = &ctx.broker.catalog;
    let strict = ctx.api_version >= 3;
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
            // Under a strict controller_mutation_rate the change is checked, then the partitions
            // it adds are taken from the quota, then it is made, in Kafka's order.
            let mutations = QuotaKey::ControllerMutationRate;
            let limited = strict && !req.validate_only && client_quotas::limits(&ctx, mutations);
            let had = catalog
                .get(&t.name)
                .map_or(0, |topic| topic.partition_count());
            let added = f64::from(t.count.saturating_sub(had).max(0));
            if limited {
                let checked = catalog.create_partitions(&t.name, t.count, true, now_ms());
                match checked.map(|()| client_quotas::take(&ctx, mutations, added)) {
                    Ok(Ok(())) => {}
                    Ok(Err(ms)) => {
                        out.error_code = E::ThrottlingQuotaExceeded.code();
                        out.error_message = Some(s(client_quotas::mutation_refusal(ms)));
                        return out;
                    }
                    Err(e) => {
                        out.error_code = catalog_code(&e);
                        out.error_message = Some(s(e.to_string()));
                        return out;
                    }
                }
            }
            match catalog.create_partitions(&t.name, t.count, req.validate_only, now_ms()) {
                Ok(()) if !strict && !req.validate_only => {
                    client_quotas::charge(&ctx, mutations, added);
                }
                Ok(()) => {}
                Err(e) => {
                    if limited {
                        client_quotas::give_back(&ctx, mutations, added);
                    }
                    out.error_code = catalog_code(&e);
                    out.error_message = Some(s(e.to_string()));
                }
            }
            out
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
