//! DeleteTopics (key 20): by name (v1-5) or by name or topic id (v6). The client needs Delete
//! on the topic (`crate::acl`), else TOPIC_AUTHORIZATION_FAILED, whether it exists or not.
//! The partitions deleted count against the client's `controller_mutation_rate`
//! (`crate::client_quotas`); from v5 a topic asked for while that quota is used up gets
//! THROTTLING_QUOTA_EXCEEDED, as in Kafka. As Kafka's controller does, a topic named by both
//! its name and an id (which may be a stale one), by neither, or twice is refused
//! (INVALID_REQUEST) and not deleted.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::client_quotas::{self, QuotaKey};
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

pub async fn handle(ctx: Ctx, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let catalog = &ctx.broker.catalog;
    let strict = ctx.api_version >= 5;
    let mut wanted: Vec<(Option<TopicName>, uuid::Uuid)> = req
        .topic_names
        .into_iter()
        .map(|n| (Some(n), uuid::Uuid::nil()))
        .collect();
    wanted.extend(req.topics.into_iter().map(|t| (t.name, t.topic_id)));
    // Duplicates among the entries that name a topic one way only, as Kafka's controller counts
    // them (an entry with both is refused for that).
    let names_twice = super::repeated(
        wanted
            .iter()
            .filter(|(_, id)| id.is_nil())
            .filter_map(|(n, _)| n.clone()),
    );
    let ids_twice = super::repeated(
        wanted
            .iter()
            .filter(|(n, id)| n.is_none() && !id.is_nil())
            .map(|(_, id)| *id),
    );
    let mut answered = std::collections::HashSet::new();
    let responses = wanted
        .into_iter()
        // One answer for a topic given twice, which is not deleted.
        .filter(|(name, id)| match name {
            Some(n) if id.is_nil() && names_twice.contains(n) => {
                answered.insert((Some(n.clone()), uuid::Uuid::nil()))
            }
            None if ids_twice.contains(id) => answered.insert((None, *id)),
            _ => true,
        })
        .map(|(name, id)| {
            let mut out = DeletableTopicResult::default()
                .with_name(name.clone())
                .with_topic_id(id);
            // As Kafka's controller checks them: a topic is named by its name or its id.
            let refusal = match &name {
                Some(n) if id.is_nil() && names_twice.contains(n) => Some("Duplicate topic name."),
                None if ids_twice.contains(&id) => Some("Duplicate topic id."),
                Some(_) if !id.is_nil() => {
                    Some("You may not specify both topic name and topic id.")
                }
                None if id.is_nil() => Some("Neither topic name nor id were specified."),
                _ => None,
            };
            if let Some(why) = refusal {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s(why));
                return out;
            }
            if let Some(code) = ctx.controller_refusal() {
                out.error_code = code;
                return out;
            }
            if let Some(n) = &name
                && !ctx.allowed(Operation::Delete, ResourceType::Topic, n)
            {
                out.error_code = E::TopicAuthorizationFailed.code();
                return out;
            }
            let topic = match &name {
                Some(n) => catalog.get(n),
                None => catalog.get_by_id(id),
            };
            match topic {
                Some(t)
                    if name.is_none()
                        && !ctx.allowed(Operation::Delete, ResourceType::Topic, &t.name) =>
                {
                    // Named only to a client that may see it, as Kafka does.
                    if ctx.sees(ResourceType::Topic, &t.name) {
                        out.name = Some(TopicName(s(t.name.to_string())));
                    }
                    out.error_code = E::TopicAuthorizationFailed.code();
                }
                None => {
                    out.error_code = if name.is_some() {
                        E::UnknownTopicOrPartition.code()
                    } else {
                        E::UnknownTopicId.code()
                    }
                }
                Some(t) => {
                    out.name = Some(TopicName(s(t.name.to_string())));
                    out.topic_id = t.id;
                    let mutations = QuotaKey::ControllerMutationRate;
                    let deleted = f64::from(t.partition_count());
                    if strict && let Err(ms) = client_quotas::take(&ctx, mutations, deleted) {
                        out.error_code = E::ThrottlingQuotaExceeded.code();
                        out.error_message = Some(s(client_quotas::mutation_refusal(ms)));
                        return out;
                    }
                    match crate::broker::waiting_for_disk(|| catalog.delete_topic(&t.name)) {
                        Ok(()) => {
                            ctx.broker.groups.topic_deleted(&t.name);
                            if !strict {
                                client_quotas::charge(&ctx, mutations, deleted);
                            }
                        }
                        Err(e) => {
                            if strict {
                                client_quotas::give_back(&ctx, mutations, deleted);
                            }
                            out.error_code = catalog_code(&e);
                            out.error_message = Some(s(e.to_string()));
                        }
                    }
                }
            }
            out
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
