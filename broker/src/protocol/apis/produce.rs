//! Produce (key 0): validate and append record batches, acks 0, 1 and all.
//!
//! Batches are stored as the producer sent them, unless the topic has a plugin chain
//! ([`plugins::run_chain`] may drop, rewrite or route records and re-encode the batch; records
//! routed to other topics are checked as their partitions' appends would check them before
//! anything is written, so that records no append could store (too large for a dead-letter
//! topic, say) refuse the produce with POLICY_VIOLATION rather than being lost after it, and
//! appended after the produced partition's own append succeeded and was not a retried
//! duplicate, so a retry does not route them twice); storage checks CRC,
//! magic and sizes, enforces idempotent-producer sequences and stamps offsets. On a broker alone
//! acks=all is acknowledged once the append (and, with `flush = "always"`, its fsync) is done,
//! exactly when acks=1 is. In a cluster (`crate::replication`) only the leader takes writes (a
//! follower answers NOT_LEADER_OR_FOLLOWER); acks=all needs the topic's `min.insync.replicas`
//! (by default `cluster.min_insync_replicas`) brokers in sync before anything is written (else
//! NOT_ENOUGH_REPLICAS) and is answered once every in-sync follower has the records (else
//! REQUEST_TIMED_OUT after the request's timeout, the records staying written, as in Kafka).
//! From v10 (KIP-951) a follower's NOT_LEADER_OR_FOLLOWER names the leader and its epoch, and
//! the answer carries the leader's address, so that the producer goes there without asking for
//! metadata first. Produce v0-2 are advertised (see `protocol::Dispatcher::advertised`) but
//! answered with UNSUPPORTED_VERSION by [`refuse_legacy`].
//!
//! A topic the client may not Write (`crate::acl`) gets TOPIC_AUTHORIZATION_FAILED on each of
//! its partitions, whether it exists or not, and nothing of it is written.
//!
//! A transactional producer's batches are appended only to partitions added to its ongoing
//! transaction (`crate::transactions`): otherwise INVALID_TXN_STATE, INVALID_PRODUCER_EPOCH for
//! a fenced epoch, INVALID_PRODUCER_ID_MAPPING for a producer id that is not the one of the
//! request's transactional id. A request with transactional batches and no transactional id,
//! or one the client may not Write (`crate::acl`), gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED on
//! every partition, and nothing of it is written. A
//! plugin chain may filter and transform them, not route them to other topics (where they
//! would not be part of the transaction): POLICY_VIOLATION.
//!
//! Quota policies (`[[plugins.quotas]]`, [`quota::produce`]) are asked once per topic before
//! anything is appended: a rejected topic's partitions get POLICY_VIOLATION and the policy's
//! reason, and nothing of that topic is written; a throttle is accepted and answered with
//! `throttle_time_ms` (the connection is muted that long). A client over its
//! `producer_byte_rate` (`crate::client_quotas`) is answered the same way, after its records
//! are written; the longer throttle of the two is the one given.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::broker::{Broker, now_ms};
use crate::catalog::CatalogError;
use crate::client_quotas::{self, QuotaKey};
use crate::log_budget::{LogBudget, client_text, within_budget};
use crate::plugins::quota::{self, Decision};
use crate::plugins::{self, ChainOutput, ProduceFilterError};
use crate::protocol::error::storage_code;
use crate::protocol::{Ctx, Outcome, Reply, frame};
use crate::replication::{self, Replicated};
use crate::storage::StorageError;

pub async fn handle(ctx: Ctx, req: ProduceRequest) -> ProduceResponse {
    let catalog = &ctx.broker.catalog;
    // One snapshot for the whole request: a plugin reload meanwhile does not split it.
    let plugin_set = ctx.broker.plugins.current();
    let decisions = quota::produce(&ctx, &req).await;
    let cluster = ctx.broker.cluster.as_ref();
    let follows = cluster.is_some_and(|c| !c.is_leader());
    let all_acks = req.acks == -1;
    // Transactional batches need the request's transactional id, and Write on it: else nothing
    // of the request is written (Kafka refuses the whole request the same way).
    let transactional_id = req.transactional_id.as_ref().map(|t| t.to_string());
    let carries_transaction = req.topic_data.iter().any(|t| {
        t.partition_data.iter().any(|p| {
            p.records
                .as_ref()
                .is_some_and(|r| transaction_of(r) != Ok(None))
        })
    });
    let transaction_refused = carries_transaction
        && !transactional_id
            .as_deref()
            .is_some_and(|id| ctx.allowed(Operation::Write, ResourceType::TransactionalId, id));
    let timeout = std::time::Duration::from_millis(req.timeout_ms.max(0) as u64);
    let produced_bytes: u64 = req
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64))
        .sum();
    // Appended partitions whose acks=all answer waits for the followers: (topic, partition
    // response, the partition, the log end to reach).
    let mut waits = Vec::new();
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for (t, topic_data) in req.topic_data.into_iter().enumerate() {
        let topic = catalog.get(&topic_data.name);
        let rejected = match decisions.as_ref().map(|d| &d[t]) {
            Some(Decision::Reject(reason)) => Some(reason),
            _ => None,
        };
        // What every partition of the topic gets when the ACLs or a quota policy refuse it.
        let refusal = if follows {
            let leader = cluster.map_or(0, |c| c.leader);
            let why = format!("this broker follows broker {leader}, which takes the writes");
            Some((E::NotLeaderOrFollower.code(), Some(why)))
        } else if transaction_refused {
            let why = match &transactional_id {
                None => "transactional batches need the request's transactional id",
                Some(_) => "the client may not write the request's transactional id",
            };
            Some((
                E::TransactionalIdAuthorizationFailed.code(),
                Some(why.to_string()),
            ))
        } else if !ctx.allowed(Operation::Write, ResourceType::Topic, &topic_data.name) {
            Some((E::TopicAuthorizationFailed.code(), None))
        } else if !matches!(req.acks, -1..=1) {
            // As Kafka: nothing is written, whatever a broker could have made of it.
            let why = format!("acks must be -1 (all), 0 or 1, not {}", req.acks);
            Some((E::InvalidRequiredAcks.code(), Some(why)))
        } else {
            rejected.map(|reason| {
                let why = format!("rejected by a quota policy: {reason}");
                (E::PolicyViolation.code(), Some(why))
            })
        };
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for pd in topic_data.partition_data {
            let mut out = PartitionProduceResponse::default()
                .with_index(pd.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            if let Some((code, why)) = &refusal {
                out.error_code = *code;
                out.error_message = why.clone().map(|why| s(capped(why)));
                if follows && ctx.api_version >= 10 {
                    let epoch = topic
                        .as_ref()
                        .and_then(|t| t.partition(pd.index))
                        .map_or(-1, |p| p.leader_epoch());
                    out.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(cluster.map_or(-1, |c| c.leader)))
                        .with_leader_epoch(epoch);
                }
                count_error(&ctx);
                partitions.push(out);
                continue;
            }
            let Some(partition) = topic.as_ref().and_then(|t| t.partition(pd.index)) else {
                out.error_code = E::UnknownTopicOrPartition.code();
                count_error(&ctx);
                partitions.push(out);
                continue;
            };
            // A leader that lost records says so before anything else (its followers holding
            // them are out of its in-sync set, which would otherwise be the reason given).
            if cluster.is_some()
                && let Some(why) = replication::lost_records(&partition)
            {
                fail(&mut out, &ctx, E::KafkaStorageError.code(), why);
                partitions.push(out);
                continue;
            }
            if all_acks
                && let Some(why) = replication::too_few_in_sync(cluster, &partition, now_ms())
            {
                fail(&mut out, &ctx, E::NotEnoughReplicas.code(), why);
                partitions.push(out);
                continue;
            }
            let Some(records) = pd.records.filter(|r| !r.is_empty()) else {
                let why = "produce request without records".to_string();
                fail(&mut out, &ctx, E::CorruptMessage.code(), why);
                partitions.push(out);
                continue;
            };
            // Produce v3 and later carry one record batch per partition (Kafka's LogValidator
            // refuses more); no client sends more.
            let batches = crate::storage::headers(&records).count();
            if batches > 1 {
                let why = format!(
                    "produce data for a partition must be one record batch; it holds {batches}"
                );
                fail(&mut out, &ctx, E::InvalidRecord.code(), why);
                partitions.push(out);
                continue;
            }
            let chained = match plugin_set.chain(&partition.topic) {
                None => ChainOutput {
                    records,
                    ..ChainOutput::default()
                },
                Some(chain) => {
                    // The chain decodes the records: refuse what an append would refuse (a
                    // batch that inflates past its bound included) before it does.
                    if let Err(e) = partition.check_records(&records, now_ms()) {
                        refuse(&mut out, &ctx, &e);
                        partitions.push(out);
                        continue;
                    }
                    let topic = partition.topic.clone();
                    let index = pd.index;
                    let broker = ctx.broker.clone();
                    let filtered = tokio::task::spawn_blocking(move || {
                        let partitions = |name: &str| routed_partitions(&broker, name);
                        plugins::run_chain(&chain, &topic, index, &records, &partitions)
                    })
                    .await;
                    match filtered {
                        Ok(Ok(chained)) => chained,
                        Ok(Err(e)) => {
                            let code = match e {
                                ProduceFilterError::Plugin(_)
                                | ProduceFilterError::Idempotent { .. } => {
                                    E::PolicyViolation.code()
                                }
                                ProduceFilterError::Overloaded(_) => E::RequestTimedOut.code(),
                                ProduceFilterError::Corrupt(_) => E::CorruptMessage.code(),
                            };
                            fail(&mut out, &ctx, code, e.to_string());
                            partitions.push(out);
                            continue;
                        }
                        Err(join) => {
                            tracing::error!(error = %join, "plugin task failed");
                            out.error_code = E::UnknownServerError.code();
                            count_error(&ctx);
                            partitions.push(out);
                            continue;
                        }
                    }
                }
            };
            let records = chained.records;
            // A transactional producer's batches go only to a partition added to its ongoing
            // transaction (checked with the coordinator held, `crate::transactions`).
            let transactional = match transaction_of(&records) {
                Ok(t) => t,
                Err(why) => {
                    fail(&mut out, &ctx, E::InvalidRecord.code(), why.to_string());
                    partitions.push(out);
                    continue;
                }
            };
            if transactional.is_some() && !chained.routed.is_empty() {
                let why = "a plugin routed records of a transaction to other topics, where they would not be part of it";
                fail(&mut out, &ctx, E::PolicyViolation.code(), why.to_string());
                partitions.push(out);
                continue;
            }
            let routed = match plan_routed(&ctx.broker, chained.routed) {
                Ok(routed) => routed,
                Err(why) => {
                    fail(&mut out, &ctx, E::PolicyViolation.code(), why);
                    partitions.push(out);
                    continue;
                }
            };
            let append = || {
                if chained.rewritten {
                    partition.append_rewritten(&records, now_ms())
                } else {
                    partition.append(&records, now_ms())
                }
            };
            let result = match transactional {
                None => append(),
                Some(producer) => {
                    let at = (&*partition.topic, pd.index);
                    // Present: a request without one was refused above.
                    let id = transactional_id.as_deref().unwrap_or_default();
                    // The coordinator may be held by a transaction's end writing its state.
                    let verified = crate::broker::waiting_for_disk(|| {
                        ctx.broker
                            .transactions
                            .append_verified(id, producer, at, append)
                    });
                    match verified {
                        Ok(result) => result,
                        Err(refusal) => {
                            tracing::debug!(topic = %partition.topic, partition = pd.index, error = %refusal, "transactional produce refused");
                            fail(&mut out, &ctx, refusal.code(), refusal.to_string());
                            partitions.push(out);
                            continue;
                        }
                    }
                }
            };
            match result {
                Ok(info) => {
                    // A copy that fails now (checked above, so not for a reason the records
                    // carry) is counted and logged. It is reported only when the plugins left
                    // none of the producer's records here (every one routed elsewhere): they
                    // are lost unless the producer hears of it (see `append_routed`).
                    if !info.duplicate
                        && let Err(why) = append_routed(&ctx.broker, routed)
                        && info.record_count == 0
                    {
                        fail(&mut out, &ctx, E::KafkaStorageError.code(), why);
                        partitions.push(out);
                        continue;
                    }
                    out.base_offset = info.base_offset;
                    out.log_append_time_ms = info.log_append_time;
                    out.log_start_offset = info.log_start_offset;
                    if let Some(c) = cluster {
                        let end = info.last_offset + 1;
                        replication::advance(c, &partition, end, now_ms());
                        if all_acks {
                            waits.push((responses.len(), partitions.len(), partition.clone(), end));
                        }
                    }
                    if !info.duplicate {
                        ctx.broker
                            .metrics
                            .records_in
                            .fetch_add(info.record_count as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = %partition.topic, partition = pd.index, error = %e, "produce refused");
                    refuse(&mut out, &ctx, &e);
                }
            }
            partitions.push(out);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partitions),
        );
    }
    if let Some(c) = cluster {
        let deadline = tokio::time::Instant::now() + timeout;
        for (t, p, partition, end) in waits {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let code = match replication::wait_replicated(c, &partition, end, left).await {
                Replicated::Yes => continue,
                Replicated::TooFewInSync => E::NotEnoughReplicasAfterAppend,
                Replicated::TimedOut => E::RequestTimedOut,
            };
            responses[t].partition_responses[p].error_code = code.code();
            count_error(&ctx);
        }
    }
    let policy_throttle = decisions.map_or(0, |d| quota::throttle(&ctx, &d));
    let quota_throttle =
        client_quotas::charge(&ctx, QuotaKey::ProducerByteRate, produced_bytes as f64);
    let throttle_time_ms = policy_throttle.max(quota_throttle);
    let mut response = ProduceResponse::default()
        .with_responses(responses)
        .with_throttle_time_ms(throttle_time_ms);
    if follows && ctx.api_version >= 10 {
        response.node_endpoints = leader_endpoint(&ctx);
    }
    response
}

/// The leader's address as clients of this connection's listener reach it (KIP-951).
fn leader_endpoint(ctx: &Ctx) -> Vec<NodeEndpoint> {
    let Some(leader) = ctx.broker.cluster.as_ref().map(|c| c.leader) else {
        return Vec::new();
    };
    super::metadata::brokers(ctx)
        .into_iter()
        .filter(|(id, ..)| *id == leader)
        .map(|(id, host, port)| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(id))
                .with_host(s(host))
                .with_port(port)
        })
        .collect()
}

/// Refused acks=0 produces said a minute (a client can send thousands a second).
static ACKS0_REFUSED: LogBudget = LogBudget::new(20);

/// How a produce with acks=0 ends: silently when every partition took its records; otherwise
/// the connection is closed, as Kafka does, since the producer cannot be answered: it sees the
/// connection drop, reconnects and refreshes its metadata instead of sending into a void. The
/// partitions and their reasons are logged.
pub fn unacknowledged_end(response: &ProduceResponse) -> Outcome {
    let mut failed = String::new();
    let mut listed = 0;
    for t in &response.responses {
        for p in t.partition_responses.iter().filter(|p| p.error_code != 0) {
            if !failed.is_empty() {
                failed.push_str("; ");
            }
            let code = E::try_from_code(p.error_code).map(|e| e.to_string());
            let why = p.error_message.as_deref().unwrap_or("");
            listed += 1;
            if listed > 10 {
                continue;
            }
            failed.push_str(&format!(
                "{}-{}: {} {}",
                client_text(t.name.as_str()),
                p.index,
                code.unwrap_or_default(),
                client_text(why)
            ));
        }
    }
    if failed.is_empty() {
        return Outcome::Silent;
    }
    if listed > 10 {
        failed.push_str(&format!("; and {} more", listed - 10));
    }
    within_budget!(ACKS0_REFUSED, info, partitions = %failed.trim_end(), "a produce with acks=0 was refused");
    Outcome::Close("a produce with acks=0 was refused (the close is its only answer, as in Kafka)")
}

/// The producer (id, epoch) whose transaction the batches of one partition's data belong to,
/// `None` when no batch is transactional. Every batch is looked at: data that mixes
/// transactional batches with others, or holds batches of two producers, is refused (Kafka
/// takes one batch per partition), so that no batch slips past the coordinator's checks
/// behind another. A damaged tail ends the walk; the append refuses it.
fn transaction_of(records: &[u8]) -> Result<Option<(i64, i16)>, &'static str> {
    let mut producer = None;
    let mut plain = false;
    let mut pos = 0;
    while let Some(Ok(h)) = records.get(pos..).map(crate::storage::BatchHeader::parse) {
        if h.is_transactional() {
            let p = (h.producer_id, h.producer_epoch);
            if producer.is_some_and(|q| q != p) || !h.has_producer_id() {
                return Err("transactional batches of more than one producer, or of none");
            }
            producer = Some(p);
        } else {
            plain = true;
        }
        pos += h.total_size();
    }
    if producer.is_some() && plain {
        return Err("transactional batches mixed with batches outside the transaction");
    }
    Ok(producer)
}

/// Answers a partition with the storage layer's refusal, counted in
/// `runnel_produce_errors_total`.
fn refuse(out: &mut PartitionProduceResponse, ctx: &Ctx, e: &crate::storage::StorageError) {
    fail(out, ctx, storage_code(e), e.to_string());
}

/// Answers a partition with `code` and `message`, counted in `runnel_produce_errors_total`.
fn fail(out: &mut PartitionProduceResponse, ctx: &Ctx, code: i16, message: String) {
    out.error_code = code;
    out.error_message = Some(s(capped(message)));
    count_error(ctx);
}

/// `message` cut to [`ERROR_MESSAGE_MAX`] bytes: a reason a plugin gave may be long, and a
/// response string over 32 KiB cannot be encoded in the older versions (the connection would
/// close unanswered); no client shows more anyway.
fn capped(mut message: String) -> String {
    if message.len() > ERROR_MESSAGE_MAX {
        let mut end = ERROR_MESSAGE_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [cut]");
    }
    message
}

/// The longest error message a partition's answer carries, in bytes.
const ERROR_MESSAGE_MAX: usize = 4096;

/// Counts a partition answered with an error in `runnel_produce_errors_total`.
fn count_error(ctx: &Ctx) {
    ctx.broker
        .metrics
        .produce_errors
        .fetch_add(1, Ordering::Relaxed);
}

/// The partition count of `name` for records a plugin routes there, creating the topic (with
/// `broker.default_partitions`) when the broker auto-creates topics; `None` when it does not
/// exist and is not created.
fn routed_partitions(broker: &Broker, name: &str) -> Option<i32> {
    if let Some(t) = broker.catalog.get(name) {
        return Some(t.partition_count());
    }
    let cfg = &broker.config.broker;
    if !cfg.auto_create_topics {
        return None;
    }
    match broker.catalog.create_topic(
        name,
        cfg.default_partitions,
        broker.catalog.replicas(),
        Default::default(),
        false,
        now_ms(),
    ) {
        Ok(t) => Some(t.partition_count()),
        Err(CatalogError::TopicExists(_)) => broker.catalog.get(name).map(|t| t.partition_count()),
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "cannot create the topic a plugin routes records to");
            None
        }
    }
}

/// The batches a chain routed to other topics, made ready to append, each with its partition:
/// checked as that partition's append checks records, and a batch over its topic's
/// `max.message.bytes` (say, records that a dead-letter copy made larger with its headers)
/// split in halves until its parts fit. Records no append could store refuse the produce, with
/// the reason, before anything is written.
fn plan_routed(
    broker: &Arc<Broker>,
    routed: Vec<plugins::RoutedBatch>,
) -> Result<Vec<(Arc<crate::catalog::Partition>, plugins::RoutedBatch)>, String> {
    let mut planned = Vec::new();
    let mut queue: std::collections::VecDeque<plugins::RoutedBatch> = routed.into();
    while let Some(batch) = queue.pop_front() {
        let refused = |why: &dyn std::fmt::Display| {
            format!(
                "the plugin chain routed records to {}-{}, which cannot store them: {why}; nothing was written",
                batch.topic, batch.partition
            )
        };
        let Some(partition) = broker
            .catalog
            .get(&batch.topic)
            .and_then(|t| t.partition(batch.partition))
        else {
            return Err(refused(&"no such topic or partition"));
        };
        match partition.check_records(&batch.records, now_ms()) {
            Ok(()) => planned.push((partition, batch)),
            Err(
                e @ (StorageError::MessageTooLarge { .. } | StorageError::LargerThanSegment { .. }),
            ) => match batch.halves() {
                Some([a, b]) => {
                    queue.push_front(b);
                    queue.push_front(a);
                }
                None => return Err(refused(&e)),
            },
            Err(e) => return Err(refused(&e)),
        }
    }
    Ok(planned)
}

/// Appends routed batches [`plan_routed`] made ready. A failure now (a disk's) is counted and
/// logged (`runnel_produce_errors_total`), and the first is returned: a produce whose own
/// partition keeps nothing (every record went elsewhere) reports it; one whose records are
/// stored does not, as its producer can do nothing about a copy.
fn append_routed(
    broker: &Arc<Broker>,
    routed: Vec<(Arc<crate::catalog::Partition>, plugins::RoutedBatch)>,
) -> Result<(), String> {
    let mut first_error = Ok(());
    for (partition, batch) in routed {
        match partition.append(&batch.records, now_ms()) {
            Ok(info) => {
                broker
                    .metrics
                    .records_in
                    .fetch_add(info.record_count as u64, Ordering::Relaxed);
            }
            Err(e) => routed_failed(broker, &batch, &e.to_string(), &mut first_error),
        }
    }
    first_error
}

/// Routed records that could not be appended: counted, logged (within a budget) and kept as
/// the first failure.
fn routed_failed(
    broker: &Broker,
    batch: &plugins::RoutedBatch,
    error: &str,
    first_error: &mut Result<(), String>,
) {
    within_budget!(ROUTED_FAILED, warn, topic = %batch.topic, partition = batch.partition, error, "records a plugin routed could not be appended");
    broker
        .metrics
        .produce_errors
        .fetch_add(1, Ordering::Relaxed);
    if first_error.is_ok() {
        *first_error = Err(format!(
            "records a plugin routed to {}-{} could not be appended: {error}",
            batch.topic, batch.partition
        ));
    }
}

/// Routed appends that failed, said a minute.
static ROUTED_FAILED: LogBudget = LogBudget::new(10);

/// Answers a produce v0-2 request with UNSUPPORTED_VERSION for every partition it names. The
/// kafka-protocol crate no longer carries these versions, so the small v0-2 layout is read and
/// written here.
pub fn refuse_legacy(req: frame::Request) -> Reply {
    let version = req.header.request_api_version;
    let correlation_id = req.header.correlation_id;
    let outcome = match legacy_response(req.body, version, correlation_id) {
        Some(LegacyReply::Frame(f)) => Outcome::Respond(f),
        Some(LegacyReply::NoAcks) => {
            Outcome::Close("produce v0-2 (acks=0) is not supported: use v3 or newer")
        }
        // Logged with the close, within the log budget.
        None => Outcome::Close("malformed produce v0-2 request"),
    };
    Box::pin(async move { outcome })
}

enum LegacyReply {
    Frame(Bytes),
    NoAcks,
}

/// The v0-2 reply, or `None` when the request is malformed.
fn legacy_response(mut body: Bytes, version: i16, correlation_id: i32) -> Option<LegacyReply> {
    fn string(b: &mut Bytes) -> Option<Bytes> {
        let len = (b.remaining() >= 2).then(|| b.get_i16())?;
        let len = usize::try_from(len).ok()?;
        (b.remaining() >= len).then(|| b.split_to(len))
    }
    fn count(b: &mut Bytes) -> Option<usize> {
        let n = (b.remaining() >= 4).then(|| b.get_i32())?;
        usize::try_from(n).ok()
    }
    let acks = (body.remaining() >= 6).then(|| body.get_i16())?;
    body.advance(4); // timeout
    let mut topics = Vec::new();
    for _ in 0..count(&mut body)? {
        let name = string(&mut body)?;
        let mut parts = Vec::new();
        for _ in 0..count(&mut body)? {
            let index = (body.remaining() >= 4).then(|| body.get_i32())?;
            let len = (body.remaining() >= 4).then(|| body.get_i32())?;
            let len = usize::try_from(len).unwrap_or(0);
            if body.remaining() < len {
                return None;
            }
            body.advance(len);
            parts.push(index);
        }
        topics.push((name, parts));
    }
    if acks == 0 {
        return Some(LegacyReply::NoAcks);
    }
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(correlation_id);
    out.put_i32(topics.len() as i32);
    for (name, parts) in topics {
        out.put_i16(name.len() as i16);
        out.put_slice(&name);
        out.put_i32(parts.len() as i32);
        for p in parts {
            out.put_i32(p);
            out.put_i16(E::UnsupportedVersion.code());
            out.put_i64(-1);
            if version >= 2 {
                out.put_i64(-1);
            }
        }
    }
    if version >= 1 {
        out.put_i32(0);
    }
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(LegacyReply::Frame(out.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_produce_gets_unsupported_version_per_partition() {
        let mut body = BytesMut::new();
        body.put_i16(1); // acks
        body.put_i32(1000);
        body.put_i32(1);
        body.put_i16(3);
        body.put_slice(b"abc");
        body.put_i32(1);
        body.put_i32(2); // partition
        body.put_i32(3);
        body.put_slice(b"xyz");
        let Some(LegacyReply::Frame(out)) = legacy_response(body.clone().freeze(), 2, 77) else {
            panic!("a reply frame");
        };
        let mut r = out.clone();
        assert_eq!(r.get_i32() as usize, out.len() - 4);
        assert_eq!(r.get_i32(), 77);
        assert_eq!(r.get_i32(), 1);
        assert_eq!(r.get_i16(), 3);
        r.advance(3);
        assert_eq!(r.get_i32(), 1);
        assert_eq!(r.get_i32(), 2);
        assert_eq!(r.get_i16(), 35);
        assert_eq!(r.get_i64(), -1);
        assert_eq!(r.get_i64(), -1);
        assert_eq!(r.get_i32(), 0);
        assert!(!r.has_remaining());
        // Truncations never panic.
        let full = body.freeze();
        for cut in 0..full.len() {
            let _ = legacy_response(full.slice(..cut), 2, 1);
        }
    }
}
