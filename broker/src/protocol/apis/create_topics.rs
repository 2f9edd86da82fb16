//! CreateTopics (key 19). Partition count and replication factor -1 mean the broker defaults.
//! Manual replica assignments are accepted only when each partition's names every broker
//! (this one alone, or every broker of the cluster): that is where every partition is; as in
//! Kafka they must cover partitions 0, 1, 2... in order (else INVALID_REPLICA_ASSIGNMENT) and
//! come without a partition count or replication factor that contradicts them (else
//! INVALID_REQUEST). The client
//! needs Create on the cluster or on the topic (`crate::acl`), else TOPIC_AUTHORIZATION_FAILED;
//! the topic's configs come back only if it may DescribeConfigs the topic.
//!
//! The partitions created count against the client's `controller_mutation_rate`
//! (`crate::client_quotas`); from v6 a topic asked for while that quota is used up gets
//! THROTTLING_QUOTA_EXCEEDED, once it has passed every other check, as in Kafka.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::broker::now_ms;
use crate::client_quotas::{self, QuotaKey};
use crate::protocol::Ctx;
use crate::protocol::error::catalog_code;

/// DescribeConfigs/CreateTopics config source: a per-topic override.
const SOURCE_TOPIC: i8 = 1;
/// Config source: the broker's config file (a value other than Kafka's default).
const SOURCE_STATIC_BROKER: i8 = 4;
/// Config source: Kafka's default.
const SOURCE_DEFAULT: i8 = 5;

pub async fn handle(ctx: Ctx, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let b = &ctx.broker;
    let strict = ctx.api_version >= 6;
    let mut results = Vec::new();
    let twice = super::repeated(req.topics.iter().map(|t| t.name.clone()));
    let mut answered = std::collections::HashSet::new();
    for t in req.topics {
        let mut out = CreatableTopicResult::default().with_name(t.name.clone());
        if twice.contains(&t.name) {
            // One answer for the name, none of its entries made.
            if answered.insert(t.name.clone()) {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s("Duplicate topic name."));
                results.push(out);
            }
            continue;
        }
        if let Some(c) = t.configs.iter().find(|c| c.value.is_none()) {
            out.error_code = E::InvalidConfig.code();
            out.error_message = Some(s(format!(
                "Null value not supported for topic configs: {}",
                c.name.as_str()
            )));
            results.push(out);
            continue;
        }
        if let Some(code) = ctx.controller_refusal() {
            out.error_code = code;
            results.push(out);
            continue;
        }
        if !super::metadata::may_create(&ctx, &t.name) {
            out.error_code = E::TopicAuthorizationFailed.code();
            out.error_message = Some(s(
                "creating a topic needs Create on the cluster or the topic",
            ));
            results.push(out);
            continue;
        }
        let partitions = if !t.assignments.is_empty() {
            t.assignments.len() as i32
        } else if t.num_partitions == -1 {
            b.config.broker.default_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            b.catalog.replicas()
        } else {
            t.replication_factor
        };
        let everyone = b.replica_ids();
        // Kafka asks for -1 beside assignments; a client that repeats what the assignments say
        // (their count, their replicas) is taken too, one that contradicts them is not.
        let contradicts = !t.assignments.is_empty()
            && ((t.num_partitions != -1 && t.num_partitions as usize != t.assignments.len())
                || (t.replication_factor != -1
                    && t.assignments
                        .iter()
                        .any(|a| a.broker_ids.len() != t.replication_factor as usize)));
        let refusal = if contradicts {
            Some((
                E::InvalidRequest,
                "numPartitions and replicationFactor must be -1 (or what the replica \
                 assignments say) when assignments are given"
                    .to_string(),
            ))
        } else if t
            .assignments
            .iter()
            .enumerate()
            .any(|(i, a)| a.partition_index != i as i32)
        {
            Some((
                E::InvalidReplicaAssignment,
                "the assignments' partitions must be 0, 1, 2 and so on, in order".to_string(),
            ))
        } else {
            t.assignments
                .iter()
                .find_map(|a| {
                    let ids: Vec<i32> = a.broker_ids.iter().map(|id| id.0).collect();
                    super::create_partitions::misplaced(&ids, &everyone)
                })
                .map(|why| (E::InvalidReplicaAssignment, why))
        };
        if let Some((code, why)) = refusal {
            out.error_code = code.code();
            out.error_message = Some(s(why));
            results.push(out);
            continue;
        }
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        if let Some(e) = configs
            .iter()
            .find_map(|(k, v)| crate::catalog::kafka_int_refusal(k, v))
        {
            out.error_code = catalog_code(&e);
            out.error_message = Some(s(e.to_string()));
            results.push(out);
            continue;
        }
        // Under a strict controller_mutation_rate the topic is checked, then its partitions are
        // taken from the quota, then it is made, in Kafka's order.
        let mutations = QuotaKey::ControllerMutationRate;
        let limited = strict && !req.validate_only && client_quotas::limits(&ctx, mutations);
        if limited {
            let checked = crate::broker::waiting_for_disk(|| {
                b.catalog
                    .create_topic(&t.name, partitions, rf, configs.clone(), true, now_ms())
            });
            let taken =
                checked.map(|_| client_quotas::take(&ctx, mutations, f64::from(partitions)));
            match taken {
                Ok(Ok(())) => {}
                Ok(Err(ms)) => {
                    out.error_code = E::ThrottlingQuotaExceeded.code();
                    out.error_message = Some(s(client_quotas::mutation_refusal(ms)));
                    results.push(out);
                    continue;
                }
                Err(e) => {
                    out.error_code = catalog_code(&e);
                    out.error_message = Some(s(e.to_string()));
                    results.push(out);
                    continue;
                }
            }
        }
        // Opening thousands of partitions waits for the disk.
        let created = crate::broker::waiting_for_disk(|| {
            b.catalog.create_topic(
                &t.name,
                partitions,
                rf,
                configs,
                req.validate_only,
                now_ms(),
            )
        });
        if created.is_err() && limited {
            client_quotas::give_back(&ctx, mutations, f64::from(partitions));
        }
        match created {
            Ok(topic) => {
                if !strict && !req.validate_only {
                    client_quotas::charge(&ctx, mutations, f64::from(partitions));
                }
                out.topic_id = topic.id;
                out.num_partitions = partitions;
                out.replication_factor = rf;
                let who = ctx.asker();
                if !b.acls.allowed(
                    who,
                    Operation::DescribeConfigs,
                    ResourceType::Topic,
                    &t.name,
                ) {
                    out.topic_config_error_code = E::TopicAuthorizationFailed.code();
                    results.push(out);
                    continue;
                }
                // Sources as DescribeConfigs gives them.
                let kafka_defaults = edge_config::LogConfig::default().to_topic_configs();
                let source = |name: &str, value: &str, is_override: bool| {
                    if is_override {
                        SOURCE_TOPIC
                    } else if kafka_defaults.iter().any(|(n, v)| *n == name && v == value) {
                        SOURCE_DEFAULT
                    } else {
                        SOURCE_STATIC_BROKER
                    }
                };
                out.configs = Some(
                    b.catalog
                        .effective_configs(&topic)
                        .into_iter()
                        .map(|(name, value, is_override)| {
                            let source = source(&name, &value, is_override);
                            CreatableTopicConfigs::default()
                                .with_name(s(name))
                                .with_value(Some(s(value)))
                                .with_config_source(source)
                        })
                        .collect(),
                );
            }
            Err(e) => {
                out.error_code = catalog_code(&e);
                out.error_message = Some(s(e.to_string()));
            }
        }
        results.push(out);
    }
    CreateTopicsResponse::default().with_topics(results)
}
