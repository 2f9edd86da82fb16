//! CreatePartitions (key 37): grow a topic's partition count. Replica assignments, if given, are
//! one per partition added, each naming every broker (where every partition is), else
//! INVALID_REPLICA_ASSIGNMENT, as Kafka checks them. The client needs Alter on the
//! topic (`crate::acl`), else TOPIC_AUTHORIZATION_FAILED. The partitions added count against
//! the client's `controller_mutation_rate` (`crate::client_quotas`); from v3 a topic asked for
//! while that quota is used up gets THROTTLING_QUOTA_EXCEEDED, once it has passed every other
//! check, as in Kafka.

use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
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
    let twice = super::repeated(req.topics.iter().map(|t| t.name.clone()));
    let mut answered = std::collections::HashSet::new();
    let results = req
        .topics
        .into_iter()
        // One answer for a name given twice, none of its entries applied.
        .filter(|t| !twice.contains(&t.name) || answered.insert(t.name.clone()))
        .map(|t| {
            let mut out = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            if twice.contains(&t.name) {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s("Duplicate topic name."));
                return out;
            }
            if let Some(code) = ctx.controller_refusal() {
                out.error_code = code;
                return out;
            }
            if !ctx.allowed(Operation::Alter, ResourceType::Topic, &t.name) {
                out.error_code = E::TopicAuthorizationFailed.code();
                return out;
            }
            if let Some(why) = assignment_refusal(&ctx, &t) {
                out.error_code = E::InvalidReplicaAssignment.code();
                out.error_message = Some(s(why));
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
                let checked = crate::broker::waiting_for_disk(|| {
                    catalog.create_partitions(&t.name, t.count, true, false, now_ms())
                });
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
            // Opening thousands of partitions waits for the disk.
            let made = crate::broker::waiting_for_disk(|| {
                catalog.create_partitions(&t.name, t.count, req.validate_only, false, now_ms())
            });
            match made {
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

/// Why the replica assignments of the partitions `t` adds cannot be taken (as Kafka checks
/// them): one assignment per new partition, each naming where every partition is.
fn assignment_refusal(ctx: &Ctx, t: &CreatePartitionsTopic) -> Option<String> {
    // (An empty list is taken as none: kafka-protocol's default request carries one.)
    let assignments = t.assignments.as_ref().filter(|a| !a.is_empty())?;
    // An unknown topic or a count that adds nothing is refused for that, as Kafka checks.
    let had = ctx.broker.catalog.get(&t.name)?.partition_count();
    let adding = t.count.checked_sub(had).filter(|&n| n > 0)?;
    if assignments.len() != adding as usize {
        return Some(format!(
            "{} replica assignments for the {adding} partitions added",
            assignments.len()
        ));
    }
    let everyone = ctx.broker.replica_ids();
    assignments.iter().find_map(|a| {
        let ids: Vec<i32> = a.broker_ids.iter().map(|id| id.0).collect();
        misplaced(&ids, &everyone)
    })
}

/// Why a partition cannot have its replicas on `ids`: every partition has one replica on each
/// of `everyone` (sorted), this broker alone or every broker of the cluster.
pub(super) fn misplaced(ids: &[i32], everyone: &[i32]) -> Option<String> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    (sorted != everyone).then(|| {
        format!("every partition has one replica on each broker: {everyone:?}, not {ids:?}")
    })
}
