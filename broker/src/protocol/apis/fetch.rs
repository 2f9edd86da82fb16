//! Fetch (key 1): whole record batches from the partition logs, with long-poll.
//!
//! The response holds at most `max_bytes` (and `partition_max_bytes` per partition), for a
//! consumer no more than `broker.fetch_max_bytes` (Kafka's `fetch.max.bytes`: the answer is
//! built in memory), except that the first non-empty partition always gets at least one whole
//! batch, however large (KIP-74).
//! A fetch that starts in the middle of a batch gets the whole batch; the client skips the
//! records before its offset. When less than `min_bytes` is available the request waits up to
//! `max_wait_ms`, woken early by any append to one of its partitions.
//!
//! Consumers' answers together hold at most `broker.fetch_memory_bytes` until written
//! (`protocol::memory`): one that finds less room gets less, and with none its first
//! batch only.
//!
//! Quota policies with `apis = ["fetch"]` are asked about the built response
//! ([`quota::fetch`]), with the bytes it returns, as Kafka's fetch quotas count them.
//!
//! A consumer under a `consumer_byte_rate` (`crate::client_quotas`) gets at most what its
//! quota has left (the first batch still whole), is charged the record bytes returned and told
//! to wait when that puts it over; one that asks while over its quota is answered at once with
//! no records and the time to wait, as Kafka answers it. Replica fetches are not counted.
//!
//! A topic the client may not Read (`crate::acl`) gets TOPIC_AUTHORIZATION_FAILED on each of
//! its partitions, whether it exists or not.
//!
//! In a cluster (`crate::replication`), consumers fetch from the leader and read below its high
//! watermark; a follower answers them NOT_LEADER_OR_FOLLOWER. A fetch carrying a follower's node
//! id (a replica fetch; it needs ClusterAction on the cluster) reads up to the log end, and
//! tells the leader how far the follower's log reaches.
//!
//! A fetch naming the leader epoch its client knows (v9+, KIP-320) is refused for a partition
//! when that is not this broker's: FENCED_LEADER_EPOCH for an older one (the client refreshes
//! its metadata), UNKNOWN_LEADER_EPOCH for a newer one.
//!
//! Transactions: every partition reports its last stable offset (below the oldest open
//! transaction). A read_committed consumer (isolation level 1) reads below it, and gets the
//! aborted transactions its records overlap, whose records it drops (`storage::txn`).
//!
//! Incremental fetch sessions (KIP-227, v7+): a consumer may have the broker remember its
//! partitions and send, and be sent, only what changed (`protocol::fetch_sessions`).
//!
//! From v13 topics are named by id (KIP-516), so that a consumer never reads a topic deleted
//! and made again under its name for the one it had: inside the broker, and in the fetch
//! sessions, such a topic goes by a name made of its id ([`BY_ID`], [`names_for_ids`]), the
//! topic is found by id, and the answer names it by id again ([`ids_for_names`]); an id no
//! topic here has gets UNKNOWN_TOPIC_ID, and a session can forget it by that id. From v16 (KIP-951) a partition refused with NOT_LEADER_OR_FOLLOWER or
//! FENCED_LEADER_EPOCH names the leader and its epoch, and the answer carries the leader's
//! address.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};
use uuid::Uuid;

use crate::acl::{Operation, ResourceType};
use crate::catalog::Partition;
use crate::client_quotas::{self, Allowance, QuotaKey};
use crate::plugins::quota;
use crate::protocol::Ctx;
use crate::protocol::error::storage_code;
use crate::protocol::fetch_sessions::FetchSessions;
use crate::protocol::memory::Held;
use crate::replication;
use crate::storage::{ReadPlan, StorageError};

/// Upper bound on a long-poll, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

struct Wanted {
    topic: TopicName,
    partition: i32,
    log: Option<Arc<Partition>>,
    /// Refused by the ACLs.
    refused: bool,
    offset: i64,
    max_bytes: usize,
    /// The leader epoch the fetcher knows (v9+; -1 for none).
    current_leader_epoch: i32,
}

/// Who a fetch is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// A consumer: reads below the high watermark.
    Consumer,
    /// A follower broker of this leader: reads to the log end.
    Follower(i32),
    /// Every partition is answered with this error code.
    Refused(i16),
}

pub async fn handle(ctx: Ctx, mut req: FetchRequest) -> FetchResponse {
    names_for_ids(&ctx, &mut req);
    let mut response = answer(&ctx, req).await;
    leaders_named(&ctx, &mut response);
    ids_for_names(&ctx, &mut response);
    response
}

/// What a topic named by id (Fetch v13+) is called inside the broker, and in the fetch
/// sessions, which so keep each topic by its id: no topic can have such a name (a NUL is not
/// allowed in one). A topic deleted and made again under its name is another id, so a session
/// holding the old one is told UNKNOWN_TOPIC_ID, and can forget it.
const BY_ID: &str = "\0topic id ";

/// The topic id in `name` when it is a [`BY_ID`] name of a Fetch v13+ request.
fn id_in(ctx: &Ctx, name: &str) -> Option<Uuid> {
    if ctx.api_version < 13 {
        return None;
    }
    name.strip_prefix(BY_ID)
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// Fetch v13+: each topic of the request (and of its forgotten topics) under its [`BY_ID`]
/// name.
fn names_for_ids(ctx: &Ctx, req: &mut FetchRequest) {
    if ctx.api_version < 13 {
        return;
    }
    let name_of = |id: Uuid| TopicName(super::s(format!("{BY_ID}{id}")));
    for t in &mut req.topics {
        t.topic = name_of(t.topic_id);
    }
    for t in &mut req.forgotten_topics_data {
        t.topic = name_of(t.topic_id);
    }
}

/// The topic a fetch names (by name, or, from v13, by id).
fn topic_named(ctx: &Ctx, name: &str) -> Option<Arc<crate::catalog::Topic>> {
    match id_in(ctx, name) {
        Some(id) => ctx.broker.catalog.get_by_id(id),
        None => ctx.broker.catalog.get(name),
    }
}

/// Fetch v13+: each topic of the answer by its id, without a name; UNKNOWN_TOPIC_ID for the
/// partitions of an id no topic here has.
fn ids_for_names(ctx: &Ctx, response: &mut FetchResponse) {
    if ctx.api_version < 13 {
        return;
    }
    for t in &mut response.responses {
        let name = std::mem::take(&mut t.topic);
        let Some(id) = id_in(ctx, &name) else {
            continue;
        };
        t.topic_id = id;
        let unknown = E::UnknownTopicOrPartition.code();
        // Looked up only when a partition says so: a fetch answered in full asks nothing.
        if t.partitions.iter().any(|p| p.error_code == unknown)
            && ctx.broker.catalog.get_by_id(id).is_none()
        {
            for p in t.partitions.iter_mut().filter(|p| p.error_code == unknown) {
                p.error_code = E::UnknownTopicId.code();
            }
        }
    }
}

/// Fetch v16+ (KIP-951): partitions refused because the client has the wrong leader or an old
/// epoch of it name the leader and its epoch, and the answer carries its address.
fn leaders_named(ctx: &Ctx, response: &mut FetchResponse) {
    if ctx.api_version < 16 {
        return;
    }
    let stale = [E::NotLeaderOrFollower.code(), E::FencedLeaderEpoch.code()];
    let leader = ctx
        .broker
        .cluster
        .as_ref()
        .map_or(ctx.broker.node_id, |c| c.leader);
    let mut any = false;
    for t in &mut response.responses {
        // Looked up only for a topic with a refused partition.
        if !t.partitions.iter().any(|p| stale.contains(&p.error_code)) {
            continue;
        }
        let topic = topic_named(ctx, &t.topic);
        for p in t
            .partitions
            .iter_mut()
            .filter(|p| stale.contains(&p.error_code))
        {
            let epoch = topic
                .as_ref()
                .and_then(|t| t.partition(p.partition_index))
                .map_or(-1, |p| p.leader_epoch());
            p.current_leader = LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(epoch);
            any = true;
        }
    }
    if any {
        response.node_endpoints = super::metadata::brokers(ctx)
            .into_iter()
            .filter(|(id, ..)| *id == leader)
            .map(|(id, host, port)| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(id))
                    .with_host(super::s(host))
                    .with_port(port)
            })
            .collect();
    }
}

/// The answer to a fetch whose topics are named.
async fn answer(ctx: &Ctx, mut req: FetchRequest) -> FetchResponse {
    let consumer = replica_id(ctx, &req) < 0;
    let sessions = &ctx.broker.fetch_sessions;
    let principal = ctx.asker().principal;
    let begun = match sessions.begin(&mut req, ctx.api_version, principal) {
        Ok(begun) => begun,
        Err(code) => return FetchResponse::default().with_error_code(code),
    };
    if consumer {
        // The broker's bound on an answer (Kafka's fetch.max.bytes): it is built in memory.
        let cap = ctx
            .broker
            .config
            .broker
            .fetch_max_bytes
            .min(i32::MAX as u64) as i32;
        req.max_bytes = req.max_bytes.min(cap);
        req.min_bytes = req.min_bytes.min(req.max_bytes);
        match client_quotas::allowance(ctx, QuotaKey::ConsumerByteRate) {
            Allowance::Unlimited => {}
            // Bounded by what the quota has left; the first batch still passes whole.
            Allowance::Bytes(left) => {
                req.max_bytes = req.max_bytes.min(left.min(i32::MAX as u64) as i32);
                req.min_bytes = req.min_bytes.min(req.max_bytes);
            }
            Allowance::Throttled(ms) => return FetchSessions::throttled(&begun, ms as i32),
        }
    }
    let mut response = read(ctx, &req).await;
    quota::fetch(ctx, &mut response, |name| match id_in(ctx, name) {
        Some(id) => ctx.broker.catalog.get_by_id(id).map(|t| t.name.to_string()),
        None => Some(name.to_string()),
    })
    .await;
    // After the quota policies: a partition they refused is answered with its error.
    sessions.finish(begun, &req, principal, &mut response);
    if consumer {
        let bytes: u64 = response
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64))
            .sum();
        let owed = client_quotas::charge(ctx, QuotaKey::ConsumerByteRate, bytes as f64);
        response.throttle_time_ms = response.throttle_time_ms.max(owed);
    }
    response
}

/// The response: whatever the log holds once `min_bytes` are there or the wait is over.
async fn read(ctx: &Ctx, req: &FetchRequest) -> FetchResponse {
    let catalog = &ctx.broker.catalog;
    let reader = reader(ctx, req);
    // A refused replica fetch also says so for the whole request, as Kafka does: a follower
    // must not take an empty answer for an empty leader.
    let top_error = match reader {
        Reader::Refused(code) if replica_id(ctx, req) >= 0 => code,
        _ => 0,
    };
    let mut wanted = Vec::new();
    for t in &req.topics {
        // A topic named by an id no topic has has no name to judge the client's rights on.
        let found = topic_named(ctx, &t.topic);
        let refused = matches!(reader, Reader::Consumer)
            && (found.is_some() || id_in(ctx, &t.topic).is_none())
            && !ctx.allowed(
                Operation::Read,
                ResourceType::Topic,
                found.as_ref().map_or(t.topic.as_str(), |f| &f.name),
            );
        let topic = found.filter(|_| !refused);
        for p in &t.partitions {
            wanted.push(Wanted {
                topic: t.topic.clone(),
                partition: p.partition,
                log: topic.as_ref().and_then(|t| t.partition(p.partition)),
                refused,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                current_leader_epoch: p.current_leader_epoch,
            });
        }
    }
    let max_bytes = req.max_bytes.max(0) as usize;
    let read_committed = req.isolation_level == 1 && matches!(reader, Reader::Consumer);
    let min_bytes = req.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + wait;
    // What a follower says it copied of the committed offsets: its fetch is answered at once
    // while there are changes it lacks.
    let mut offsets_copied = None;
    if let (Reader::Follower(id), Some(cluster)) = (reader, &ctx.broker.cluster) {
        offsets_copied = replication::read_count(
            req.unknown_tagged_fields
                .get(&replication::OFFSETS_COPIED_TAG),
        );
        cluster.copied_offsets(id, offsets_copied);
        let now = crate::broker::now_ms();
        for w in &wanted {
            if let Some(p) = &w.log {
                let end = p.log().log_end_offset();
                replication::follower_fetched(cluster, p, id, w.offset, end, now);
            }
        }
    }

    let follower = matches!(reader, Reader::Follower(_));
    let groups = &ctx.broker.groups;
    let offsets_behind = || offsets_copied.is_some_and(|c| c < groups.offsets_changes());
    // A follower's answer says how many changes of committed offsets there have been, and
    // which groups changed since those it copied.
    let reply = |parts, top_error| {
        let mut response = respond(parts, top_error);
        if follower {
            let tags = &mut response.unknown_tagged_fields;
            let changes = groups.offsets_changes();
            tags.insert(
                replication::OFFSETS_COPIED_TAG,
                replication::count_field(changes),
            );
            let changed = offsets_copied
                .filter(|copied| *copied < changes)
                .and_then(|copied| {
                    groups.groups_changed_since(copied, replication::CHANGED_GROUPS_MOST)
                })
                .and_then(|changed| replication::groups_field(&changed));
            if let Some(changed) = changed {
                tags.insert(replication::CHANGED_GROUPS_TAG, changed);
            }
        }
        response
    };
    // A consumer's answer is bounded by what is left of the broker's fetch memory as well. It
    // takes no more than its partitions may return together.
    let memory = matches!(reader, Reader::Consumer).then_some(&ctx.broker.fetch_memory);
    let most = wanted
        .iter()
        .fold(0usize, |sum, w| sum.saturating_add(w.max_bytes))
        .min(max_bytes);
    let room_of = |held: &Option<Held>| held.as_ref().map_or(max_bytes, Held::bytes);
    loop {
        // Register for wake-ups before reading, so an append between the read and the wait is
        // not missed. A follower's fetch is also woken by a topic or partition made here.
        let mut notified: Vec<_> = wanted
            .iter()
            .filter_map(|w| w.log.as_ref())
            .map(|p| Box::pin(p.appended.notified()))
            .chain(follower.then(|| Box::pin(catalog.added.notified())))
            .chain(follower.then(|| Box::pin(groups.offsets_change())))
            .collect();
        for n in &mut notified {
            n.as_mut().enable();
        }
        let held = memory.map(|m| m.take_up_to(most));
        let room = room_of(&held);
        let (mut parts, total, any_error) = read_all(ctx, reader, &wanted, room, read_committed);
        let unasked = if follower {
            unasked(ctx, &wanted)
        } else {
            Vec::new()
        };
        // As Kafka: `min_bytes` 0 is met by nothing at all, so such a fetch never waits. One
        // the fetch memory gave less room than its `min_bytes` is answered once that room is
        // filled (with no room, once there is a batch).
        let enough = if room < most {
            min_bytes.min(room.max(1))
        } else {
            min_bytes
        };
        let done = total >= enough
            || any_error
            || !unasked.is_empty()
            || offsets_behind()
            || notified.is_empty()
            || tokio::time::Instant::now() >= deadline;
        if done {
            tracing::trace!(bytes = total, partitions = wanted.len(), "fetch answered");
            parts.extend(unasked);
            keep(ctx, held, most, total);
            return reply(parts, top_error);
        }
        // Nothing of this read is kept while waiting.
        drop((parts, held));
        let any_append = poll_fn(|cx| {
            for n in notified.iter_mut() {
                if n.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        });
        if tokio::time::timeout_at(deadline, any_append).await.is_err() {
            let held = memory.map(|m| m.take_up_to(most));
            let (parts, total, _) = read_all(ctx, reader, &wanted, room_of(&held), read_committed);
            tracing::trace!(
                bytes = total,
                waited_ms = wait.as_millis() as u64,
                "fetch answered after max wait"
            );
            keep(ctx, held, most, total);
            return reply(parts, top_error);
        }
    }
}

/// Leaves what a consumer's answer of `total` record bytes holds of the fetch memory with the
/// connection, which gives it back once the answer is written; counts an answer with records
/// that was given less room than the `most` it could have taken.
fn keep(ctx: &Ctx, held: Option<Held>, most: usize, total: usize) {
    if let Some(mut held) = held {
        if held.bytes() < most && total > 0 {
            ctx.broker.fetch_memory.note_short();
        }
        held.resize(total);
        ctx.holding.keep(held);
    }
}

/// For a follower's fetch: every partition here that it did not ask for (a topic or partitions
/// made since it last read the topics), answered without records so that it reads the topics
/// again at once instead of at its next periodic sync, and acks=all writes to a new topic do not
/// wait for that.
fn unasked(ctx: &Ctx, wanted: &[Wanted]) -> Vec<(TopicName, PartitionData)> {
    let asked: std::collections::HashSet<(&str, i32)> = wanted
        .iter()
        .map(|w| (w.topic.as_str(), w.partition))
        .collect();
    let mut out = Vec::new();
    for t in ctx.broker.catalog.list() {
        for p in t.partitions() {
            if !asked.contains(&(&*t.name, p.index)) {
                let name = TopicName(super::s(t.name.to_string()));
                let data = PartitionData::default()
                    .with_partition_index(p.index)
                    .with_records(Some(Bytes::new()));
                out.push((name, data));
            }
        }
    }
    out
}

/// The response of `parts`; `top_error` is the request's own error code (a refused replica
/// fetch).
fn respond(parts: Vec<(TopicName, PartitionData)>, top_error: i16) -> FetchResponse {
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    for (topic, data) in parts {
        match responses.last_mut() {
            Some(last) if last.topic == topic => last.partitions.push(data),
            _ => responses.push(
                FetchableTopicResponse::default()
                    .with_topic(topic)
                    .with_partitions(vec![data]),
            ),
        }
    }
    FetchResponse::default()
        .with_error_code(top_error)
        .with_responses(responses)
}

/// The node id of the broker fetching, -1 for a consumer.
fn replica_id(ctx: &Ctx, req: &FetchRequest) -> i32 {
    if ctx.api_version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    }
}

/// Who the fetch reads for: a consumer, a follower of this leader, or nobody this broker
/// serves.
fn reader(ctx: &Ctx, req: &FetchRequest) -> Reader {
    let replica = replica_id(ctx, req);
    let cluster = ctx.broker.cluster.as_ref();
    if replica < 0 {
        return match cluster {
            Some(c) if !c.is_leader() => Reader::Refused(E::NotLeaderOrFollower.code()),
            _ => Reader::Consumer,
        };
    }
    match cluster {
        Some(c) if c.is_leader() && c.followers().any(|id| id == replica) => {
            if !ctx.allowed_on_cluster(Operation::ClusterAction) {
                Reader::Refused(E::ClusterAuthorizationFailed.code())
            } else if !c.claim_fetches(replica, &ctx.session, crate::broker::now_ms()) {
                Reader::Refused(E::DuplicateBrokerRegistration.code())
            } else {
                Reader::Follower(replica)
            }
        }
        _ => {
            tracing::debug!(
                replica,
                "a replica fetch from a broker that is not a follower here"
            );
            Reader::Refused(E::NotLeaderOrFollower.code())
        }
    }
}

/// Whether `records` holds batches and every one is a data batch with no record: what a filter
/// plugin leaves of a batch it emptied (kept so its producer gets its offsets, and an
/// idempotent one's sequence numbers hold). A consumer given only such batches reads no message, which librdkafka
/// takes for a message too large to fetch: it doubles its fetch size at each, then reports
/// MSG_SIZE_TOO_LARGE at every fetch.
fn only_emptied(records: &[u8]) -> bool {
    let mut any = false;
    for h in crate::storage::headers(records) {
        if h.record_count != 0 || h.is_control() {
            return false;
        }
        any = true;
    }
    any
}

/// Reads on past the emptied batches `records` holds, for a consumer: they go out with the
/// first batch after them that holds records (or a marker), read whole, so the consumer moves
/// past them with it; when the log holds nothing after them yet, with nothing (the consumer
/// asks from the same offset again, as when no record has come). Returns the aborted
/// transactions the later reads may hold, for read_committed.
fn read_past_emptied(
    p: &crate::catalog::Partition,
    records: &mut Bytes,
    below: i64,
    budget: usize,
    read_committed: bool,
) -> Result<Vec<crate::storage::AbortedTxn>, crate::storage::StorageError> {
    let mut aborted = Vec::new();
    let mut gathered = bytes::BytesMut::from(&records[..]);
    // Bounded: a run of emptied batches longer than this many reads is sent as it is.
    for _ in 0..16 {
        let next = crate::storage::headers(&gathered)
            .last()
            .map_or(below, |h| h.next_offset());
        let plan = {
            let log = p.log();
            if read_committed {
                aborted.extend(log.aborted_transactions(next, below));
            }
            log.plan_read_below(next, budget.max(1), below)?
        };
        let more = plan.read()?;
        if more.is_empty() {
            // Nothing after them yet.
            *records = Bytes::new();
            return Ok(aborted);
        }
        gathered.extend_from_slice(&more);
        if !only_emptied(&more) {
            break;
        }
    }
    *records = gathered.freeze();
    Ok(aborted)
}

fn read_all(
    ctx: &Ctx,
    reader: Reader,
    wanted: &[Wanted],
    max_bytes: usize,
    read_committed: bool,
) -> (Vec<(TopicName, PartitionData)>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let mut out = Vec::with_capacity(wanted.len());
    let cluster = ctx.broker.cluster.as_ref();
    for w in wanted {
        let mut data = PartitionData::default().with_partition_index(w.partition);
        // Refused as a whole, or for naming another leader epoch than the partition's here.
        let refused = match (reader, &w.log) {
            (Reader::Refused(code), _) => Err(code),
            (_, Some(p)) => super::check_leader_epoch(p.leader_epoch(), w.current_leader_epoch),
            (_, None) => Ok(()),
        };
        if let Err(code) = refused {
            data.high_watermark = -1;
            data.last_stable_offset = -1;
            data.log_start_offset = -1;
            data.error_code = code;
            data.records = Some(Bytes::new());
            any_error = true;
            out.push((w.topic.clone(), data));
            continue;
        }
        match &w.log {
            None => {
                // No log to describe: -1, as Kafka answers, so that no client takes the
                // partition for an empty one.
                data.high_watermark = -1;
                data.last_stable_offset = -1;
                data.log_start_offset = -1;
                data.error_code = if w.refused {
                    E::TopicAuthorizationFailed.code()
                } else {
                    E::UnknownTopicOrPartition.code()
                };
                any_error = true;
            }
            Some(p) => {
                // Within the partition's and the response's budgets; only the first batch of
                // the response passes whole however large (KIP-74): after it, a partition whose
                // next batch does not fit returns nothing, so that a response is never larger
                // than `max_bytes` or its first batch (clients size their receive buffer by
                // it). Clients rotate the order of their partitions so that none waits for the
                // ones before it to go idle (librdkafka does; so does a follower here).
                let first = total == 0;
                let budget = if first {
                    w.max_bytes.min(max_bytes).max(1)
                } else {
                    w.max_bytes.min(max_bytes.saturating_sub(total))
                };
                let mut aborted = Vec::new();
                let below: i64;
                let plan = {
                    let mut log = p.log();
                    let end = log.log_end_offset();
                    let readable = replication::readable_end(cluster, p, end);
                    let stable = log.last_stable_offset(readable);
                    data.high_watermark = readable;
                    data.last_stable_offset = stable;
                    data.log_start_offset = log.log_start_offset();
                    if let (Reader::Follower(_), Some(cluster)) = (reader, cluster) {
                        // Which deletes the follower's compaction may remove.
                        data.unknown_tagged_fields.insert(
                            replication::COPIED_BY_ALL_TAG,
                            replication::copied_by_all_field(cluster, p),
                        );
                    }
                    below = if read_committed { stable } else { readable };
                    // Taken with the plan, so that both see the log as it was (a compaction
                    // swapped in after it removes no transaction the read may return).
                    if read_committed {
                        aborted = log.aborted_transactions(w.offset, below);
                    }
                    (budget > 0).then(|| match reader {
                        Reader::Follower(_) => log.plan_read(w.offset, budget),
                        _ => log.plan_read_below(w.offset, budget, below),
                    })
                };
                // Read with the log unlocked: appends to the partition go on meanwhile.
                let within = |plan: ReadPlan| if first { plan } else { plan.within_budget() };
                let mut read = plan.map(|plan| plan.map(within).and_then(ReadPlan::read));
                if !matches!(reader, Reader::Follower(_))
                    && let Some(Ok(records)) = &mut read
                    && only_emptied(records)
                {
                    match read_past_emptied(p, records, below, budget, read_committed) {
                        Ok(more) => aborted.extend(more),
                        Err(e) => read = Some(Err(e)),
                    }
                }
                if read_committed {
                    // The aborted transactions that overlap what is returned, as Kafka lists
                    // them: not every one up to the last stable offset.
                    let to = match &read {
                        Some(Ok(records)) => crate::storage::headers(records)
                            .last()
                            .map_or(w.offset, |h| h.next_offset()),
                        _ => w.offset,
                    };
                    let listed = aborted
                        .iter()
                        .filter(|a| a.first_offset < to)
                        .map(|a| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(a.producer_id))
                                .with_first_offset(a.first_offset)
                        })
                        .collect();
                    data.aborted_transactions = Some(listed);
                }
                match read {
                    None => data.records = Some(Bytes::new()),
                    Some(Ok(records)) => {
                        total += records.len();
                        data.records = Some(records);
                    }
                    Some(Err(e)) => {
                        if !matches!(e, StorageError::OffsetOutOfRange { .. }) {
                            tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "fetch failed");
                        }
                        data.error_code = storage_code(&e);
                        data.records = Some(Bytes::new());
                        any_error = true;
                    }
                }
            }
        }
        out.push((w.topic.clone(), data));
    }
    (out, total, any_error)
}
