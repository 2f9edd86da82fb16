//! Incremental fetch sessions (Kafka's KIP-227), for Fetch v7 and later.
//!
//! A consumer that fetches the same partitions again and again may have the broker remember
//! them. A full fetch with session epoch 0 makes a session, whose id the response carries. The
//! consumer's next fetches name the session and the epoch after the last one (1, 2, ...) and
//! carry only what changed since: partitions added, or whose fetch offset or size changed
//! (`topics`), and partitions dropped (`forgotten_topics_data`). The broker reads every
//! partition of the session, and answers only those with something new: records, a high
//! watermark, last stable offset or log start offset that moved, or an error. A partition that
//! returned records moves to the end of the session's order, so that the byte budget of later
//! responses goes to the others first.
//!
//! As in Kafka: epoch -1 fetches without a session (closing the one named, if any); epoch 0
//! closes the one named, if any, and makes a new one; an unknown session is
//! FETCH_SESSION_ID_NOT_FOUND and an epoch other than the one expected
//! INVALID_FETCH_SESSION_EPOCH, after which clients start again with a full fetch; an
//! incremental fetch that forgets the session's last partition closes it (session id 0 in the
//! answer). Unlike Kafka, a session is the principal's that made it: another principal naming it
//! gets FETCH_SESSION_ID_NOT_FOUND, so a guessed id cannot disturb someone else's session.
//!
//! Bounds: at most `broker.max_fetch_sessions` sessions (Kafka's
//! `max.incremental.fetch.session.cache.slots`, 1,000 by default; 0 turns sessions off) and
//! [`MAX_PARTITIONS`] partitions in all of them. When either is full, the least recently used
//! session unused for [`EVICTABLE_AFTER`] (Kafka's `min.incremental.fetch.session.eviction.ms`)
//! makes room; if there is none, the full fetch is answered without a session (id 0) and the
//! client goes on with full fetches. Sessions live in memory only: after a restart a client's
//! next incremental fetch gets FETCH_SESSION_ID_NOT_FOUND and it starts a new one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

/// Partitions cached in all sessions together, at most (about 150 bytes each).
pub const MAX_PARTITIONS: usize = 100_000;

/// A session unused this long may be evicted to make room for a new one.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(120);

/// The epoch of a full fetch that makes (or remakes) a session.
const INITIAL_EPOCH: i32 = 0;
/// The epoch of a fetch without a session.
const FINAL_EPOCH: i32 = -1;

/// The sessions of this broker.
pub struct FetchSessions {
    slots: usize,
    inner: Mutex<Inner>,
    evictions: AtomicU64,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<i32, Session>,
    /// Partitions in all sessions.
    partitions: usize,
}

struct Session {
    principal: String,
    /// The epoch the next incremental fetch must carry.
    next_epoch: i32,
    /// In the order they are read.
    partitions: Vec<Cached>,
    last_used: Instant,
}

/// One partition of a session: what the client last asked, and what it was last told.
#[derive(Debug, Clone)]
struct Cached {
    topic: TopicName,
    fetch: FetchPartition,
    told: Told,
}

/// What a partition's last answer told the client besides its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Told {
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

impl Told {
    /// Not told yet: differs from any answer, so the partition is answered at its next read.
    const NEVER: Told = Told {
        high_watermark: -2,
        last_stable_offset: -2,
        log_start_offset: -2,
    };

    /// What `p` tells. After an error, as Kafka does, the partition is answered again at its
    /// next read whatever it holds then.
    fn of(p: &PartitionData) -> Told {
        if p.error_code != 0 {
            return Told::NEVER;
        }
        Told {
            high_watermark: p.high_watermark,
            last_stable_offset: p.last_stable_offset,
            log_start_offset: p.log_start_offset,
        }
    }
}

/// Where a fetch stands with the sessions, from [`FetchSessions::begin`] to
/// [`FetchSessions::finish`].
#[derive(Debug, PartialEq, Eq)]
pub enum Begun {
    /// A full fetch that neither makes nor uses a session.
    Sessionless,
    /// A full fetch that makes a session when it is answered, if there is room.
    Full,
    /// An incremental fetch on session `id`: the request now names every partition of the
    /// session, in its order, and the answer keeps only those with something new.
    Incremental { id: i32, epoch: i32 },
    /// An incremental fetch that forgot the session's last partition: the session is closed and
    /// the answer is empty.
    Closed,
}

impl FetchSessions {
    /// Sessions for `slots` at once; 0 keeps none.
    pub fn new(slots: usize) -> FetchSessions {
        FetchSessions {
            slots,
            inner: Mutex::new(Inner::default()),
            evictions: AtomicU64::new(0),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions open now, and the partitions cached in them.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.sessions.len(), inner.partitions)
    }

    /// Sessions evicted to make room for new ones, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Takes a fetch request of `version` from `principal` into the sessions: closes the session
    /// it names when it asks so, and for an incremental fetch applies its changes to the session
    /// and rewrites `req.topics` to the session's partitions. Fails with the error code of the
    /// answer (which then holds no partitions).
    pub fn begin(
        &self,
        req: &mut FetchRequest,
        version: i16,
        principal: &str,
    ) -> Result<Begun, i16> {
        if version < 7 {
            return Ok(Begun::Sessionless);
        }
        let (id, epoch) = (req.session_id, req.session_epoch);
        if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
            if id != 0 {
                let mut inner = self.inner();
                if inner
                    .sessions
                    .get(&id)
                    .is_some_and(|s| s.principal == principal)
                {
                    inner.remove(id);
                }
            }
            return Ok(if epoch == INITIAL_EPOCH && self.slots > 0 {
                Begun::Full
            } else {
                Begun::Sessionless
            });
        }
        let mut inner = self.inner();
        let Some(session) = inner
            .sessions
            .get_mut(&id)
            .filter(|s| s.principal == principal)
        else {
            return Err(E::FetchSessionIdNotFound.code());
        };
        if epoch != session.next_epoch {
            return Err(E::InvalidFetchSessionEpoch.code());
        }
        let before = session.partitions.len();
        session.update(&req.topics, &req.forgotten_topics_data);
        let after = session.partitions.len();
        session.last_used = Instant::now();
        session.next_epoch = next_epoch(epoch);
        if after == 0 {
            inner.partitions -= before;
            inner.sessions.remove(&id);
            req.topics.clear();
            return Ok(Begun::Closed);
        }
        if inner.partitions + after > MAX_PARTITIONS + before {
            // Grown past the bound: the client starts again, and its full fetch is answered
            // without a session if there is still no room.
            inner.partitions -= before;
            inner.sessions.remove(&id);
            return Err(E::FetchSessionIdNotFound.code());
        }
        inner.partitions = inner.partitions + after - before;
        req.topics = inner.sessions[&id].request_topics();
        Ok(Begun::Incremental { id, epoch })
    }

    /// Completes the answer to a fetch begun with `begun`: for a full fetch, makes its session
    /// if there is room and names it in the answer; for an incremental one, keeps in the answer
    /// only the partitions with something new.
    pub fn finish(
        &self,
        begun: Begun,
        req: &FetchRequest,
        principal: &str,
        response: &mut FetchResponse,
    ) {
        match begun {
            Begun::Sessionless | Begun::Closed => response.session_id = 0,
            Begun::Full => {
                response.session_id = self.create(req, principal, response).unwrap_or(0);
            }
            Begun::Incremental { id, epoch } => {
                let mut inner = self.inner();
                match inner.sessions.get_mut(&id) {
                    // Closed or begun again meanwhile (a client sending two fetches on one
                    // session at once): this answer no longer fits the session.
                    Some(s) if s.next_epoch == next_epoch(epoch) => {
                        s.answer(response);
                        response.session_id = id;
                    }
                    _ => {
                        response.responses.clear();
                        response.error_code = E::InvalidFetchSessionEpoch.code();
                        response.session_id = 0;
                    }
                }
            }
        }
    }

    /// The answer to a throttled fetch: no partitions, and the session it goes on with (a full
    /// fetch makes none).
    pub fn throttled(begun: &Begun, throttle_ms: i32) -> FetchResponse {
        let session_id = match begun {
            Begun::Incremental { id, .. } => *id,
            _ => 0,
        };
        FetchResponse::default()
            .with_throttle_time_ms(throttle_ms)
            .with_session_id(session_id)
    }

    /// Makes a session of a full fetch's partitions, as its answer told them; `None` when there
    /// is no room.
    fn create(&self, req: &FetchRequest, principal: &str, response: &FetchResponse) -> Option<i32> {
        let mut partitions = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in &req.topics {
            let topic = own_name(&t.topic);
            for p in &t.partitions {
                if !seen.insert((t.topic.as_str(), p.partition)) {
                    continue;
                }
                partitions.push(Cached {
                    topic: topic.clone(),
                    fetch: owned(p),
                    told: Told::NEVER,
                });
            }
        }
        if partitions.is_empty() || partitions.len() > MAX_PARTITIONS {
            return None;
        }
        let mut session = Session {
            principal: principal.to_string(),
            next_epoch: next_epoch(INITIAL_EPOCH),
            partitions,
            last_used: Instant::now(),
        };
        session.note(response);
        let mut inner = self.inner();
        let now = Instant::now();
        while inner.sessions.len() >= self.slots
            || inner.partitions + session.partitions.len() > MAX_PARTITIONS
        {
            let stale = inner
                .sessions
                .iter()
                .filter(|(_, s)| now.duration_since(s.last_used) >= EVICTABLE_AFTER)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(&id, _)| id)?;
            inner.remove(stale);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let id = loop {
            let id = (rand_u32() & 0x7fff_ffff) as i32;
            if id != 0 && !inner.sessions.contains_key(&id) {
                break id;
            }
        };
        inner.partitions += session.partitions.len();
        inner.sessions.insert(id, session);
        Some(id)
    }
}

impl Inner {
    fn remove(&mut self, id: i32) {
        if let Some(s) = self.sessions.remove(&id) {
            self.partitions -= s.partitions.len();
        }
    }
}

impl Session {
    /// Applies an incremental fetch's changes: its partitions added or updated, then the
    /// forgotten ones removed, as Kafka does.
    fn update(&mut self, topics: &[FetchTopic], forgotten: &[ForgottenTopic]) {
        if topics.is_empty() && forgotten.is_empty() {
            return;
        }
        let mut at = self.index();
        let mut added = Vec::new();
        let mut updates = Vec::new();
        for t in topics {
            for p in &t.partitions {
                match at.get(&(t.topic.as_str(), p.partition)) {
                    Some(&i) => updates.push((i, p)),
                    None => {
                        at.insert((t.topic.as_str(), p.partition), usize::MAX);
                        added.push((&t.topic, p));
                    }
                }
            }
        }
        let forget: std::collections::HashSet<(&str, i32)> = forgotten
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |&p| (t.topic.as_str(), p)))
            .collect();
        drop(at);
        for (i, p) in updates {
            self.partitions[i].fetch = owned(p);
        }
        let mut names: HashMap<&str, TopicName> = HashMap::new();
        let mut new = Vec::with_capacity(added.len());
        for (topic, p) in added {
            let name = names
                .entry(topic.as_str())
                .or_insert_with(|| own_name(topic))
                .clone();
            new.push(Cached {
                topic: name,
                fetch: owned(p),
                // Answered at its first read.
                told: Told::NEVER,
            });
        }
        self.partitions.extend(new);
        if !forget.is_empty() {
            self.partitions
                .retain(|c| !forget.contains(&(c.topic.as_str(), c.fetch.partition)));
        }
    }

    /// The session's partitions as a request's topics, in its order.
    fn request_topics(&self) -> Vec<FetchTopic> {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for c in &self.partitions {
            match topics.last_mut() {
                Some(last) if last.topic == c.topic => last.partitions.push(c.fetch.clone()),
                _ => topics.push(
                    FetchTopic::default()
                        .with_topic(c.topic.clone())
                        .with_partitions(vec![c.fetch.clone()]),
                ),
            }
        }
        topics
    }

    /// Notes what a full fetch's answer told each partition.
    fn note(&mut self, response: &FetchResponse) {
        let at: HashMap<(&str, i32), usize> = self.index();
        let mut told = Vec::new();
        for t in &response.responses {
            for p in &t.partitions {
                if let Some(&i) = at.get(&(t.topic.as_str(), p.partition_index)) {
                    told.push((i, Told::of(p)));
                }
            }
        }
        drop(at);
        for (i, told) in told {
            self.partitions[i].told = told;
        }
    }

    fn index(&self) -> HashMap<(&str, i32), usize> {
        self.partitions
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.topic.as_str(), c.fetch.partition), i))
            .collect()
    }

    /// Keeps in `response` the partitions with something new since they were last answered,
    /// notes what they are told now, and moves those that returned records to the end of the
    /// session's order.
    fn answer(&mut self, response: &mut FetchResponse) {
        // The answer lists the session's partitions in its order: found by walking both, with
        // a map only if that ever fails.
        let mut next = 0;
        let mut at: Option<HashMap<(&str, i32), usize>> = None;
        let mut told = Vec::new();
        let mut with_records = Vec::new();
        for t in &mut response.responses {
            t.partitions.retain(|p| {
                let key = (t.topic.as_str(), p.partition_index);
                let found = match self.partitions.get(next) {
                    Some(c) if (c.topic.as_str(), c.fetch.partition) == key => Some(next),
                    _ => at.get_or_insert_with(|| self.index()).get(&key).copied(),
                };
                let Some(i) = found else {
                    // Not the session's (a follower's unasked partitions): passed on as is.
                    return true;
                };
                next = i + 1;
                let now = Told::of(p);
                let has_records = p.records.as_ref().is_some_and(|r| !r.is_empty());
                let changed = has_records || p.error_code != 0 || self.partitions[i].told != now;
                if changed {
                    told.push((i, now));
                }
                if has_records {
                    with_records.push(i);
                }
                changed
            });
        }
        response.responses.retain(|t| !t.partitions.is_empty());
        drop(at);
        for (i, now) in told {
            self.partitions[i].told = now;
        }
        if !with_records.is_empty() {
            let mut moved = vec![false; self.partitions.len()];
            for i in with_records {
                moved[i] = true;
            }
            let mut order: Vec<(bool, Cached)> = std::mem::take(&mut self.partitions)
                .into_iter()
                .zip(moved)
                .map(|(c, m)| (m, c))
                .collect();
            // Stable: the others keep their order, and so do the moved ones among themselves.
            order.sort_by_key(|(m, _)| *m);
            self.partitions = order.into_iter().map(|(_, c)| c).collect();
        }
    }
}

/// The epoch after `epoch`: 1 after the largest.
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX { 1 } else { epoch + 1 }
}

/// A partition as the client asked for it, without the unknown tagged fields, whose bytes are
/// slices of the request's frame (a crafted tag would keep a whole frame alive per session).
fn owned(p: &FetchPartition) -> FetchPartition {
    let mut owned = p.clone();
    owned.unknown_tagged_fields = Default::default();
    owned
}

/// A topic name that does not keep the request's frame alive.
fn own_name(name: &TopicName) -> TopicName {
    TopicName(StrBytes::from_string(name.as_str().to_string()))
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // The system's random source; the id only needs to be hard to guess.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ (t.as_secs() as u32);
    }
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::FetchableTopicResponse;

    fn name(t: &str) -> TopicName {
        TopicName(StrBytes::from_string(t.to_string()))
    }

    /// A request of `version` on `session` at `epoch` naming `(topic, partition, offset)`.
    fn request(session: i32, epoch: i32, parts: &[(&str, i32, i64)]) -> FetchRequest {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for &(t, p, offset) in parts {
            let part = FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20);
            match topics.last_mut() {
                Some(last) if last.topic.as_str() == t => last.partitions.push(part),
                _ => topics.push(
                    FetchTopic::default()
                        .with_topic(name(t))
                        .with_partitions(vec![part]),
                ),
            }
        }
        FetchRequest::default()
            .with_session_id(session)
            .with_session_epoch(epoch)
            .with_topics(topics)
    }

    fn forget(mut req: FetchRequest, parts: &[(&str, i32)]) -> FetchRequest {
        req.forgotten_topics_data = parts
            .iter()
            .map(|&(t, p)| {
                ForgottenTopic::default()
                    .with_topic(name(t))
                    .with_partitions(vec![p])
            })
            .collect();
        req
    }

    /// What the request reads, in order.
    fn asked(req: &FetchRequest) -> Vec<(String, i32, i64)> {
        req.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition, p.fetch_offset))
            })
            .collect()
    }

    /// The answer to `req` as read: every partition at high watermark `hw`, with `records`
    /// bytes for those in `with_records`.
    fn read(req: &FetchRequest, hw: i64, with_records: &[(&str, i32)]) -> FetchResponse {
        let responses = req
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let records = if with_records.contains(&(t.topic.as_str(), p.partition)) {
                            bytes::Bytes::from_static(b"batch")
                        } else {
                            bytes::Bytes::new()
                        };
                        PartitionData::default()
                            .with_partition_index(p.partition)
                            .with_high_watermark(hw)
                            .with_last_stable_offset(hw)
                            .with_records(Some(records))
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(partitions)
            })
            .collect();
        FetchResponse::default().with_responses(responses)
    }

    fn answered(r: &FetchResponse) -> Vec<(String, i32)> {
        r.responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition_index))
            })
            .collect()
    }

    /// A session made by a full fetch of `parts` at high watermark 10; returns its id.
    fn open(s: &FetchSessions, parts: &[(&str, i32, i64)]) -> i32 {
        let mut req = request(0, 0, parts);
        let begun = s.begin(&mut req, 12, "User:a").unwrap();
        assert_eq!(begun, Begun::Full);
        let mut resp = read(&req, 10, &[]);
        s.finish(begun, &req, "User:a", &mut resp);
        assert_ne!(resp.session_id, 0);
        assert_eq!(
            answered(&resp).len(),
            parts.len(),
            "a full fetch answers all"
        );
        resp.session_id
    }

    /// One incremental round: begin, read at `hw` with records on `with_records`, finish.
    fn round(
        s: &FetchSessions,
        mut req: FetchRequest,
        hw: i64,
        with_records: &[(&str, i32)],
    ) -> (Vec<(String, i32, i64)>, FetchResponse) {
        let begun = s.begin(&mut req, 12, "User:a").unwrap();
        let read_order = asked(&req);
        let mut resp = read(&req, hw, with_records);
        s.finish(begun, &req, "User:a", &mut resp);
        (read_order, resp)
    }

    #[test]
    fn full_fetches_make_sessions_only_when_asked() {
        let s = FetchSessions::new(10);
        let mut old = request(0, 0, &[("t", 0, 0)]);
        assert_eq!(s.begin(&mut old, 6, "User:a"), Ok(Begun::Sessionless));
        let mut legacy = request(0, -1, &[("t", 0, 0)]);
        assert_eq!(s.begin(&mut legacy, 12, "User:a"), Ok(Begun::Sessionless));
        let off = FetchSessions::new(0);
        let mut req = request(0, 0, &[("t", 0, 0)]);
        assert_eq!(off.begin(&mut req, 12, "User:a"), Ok(Begun::Sessionless));
        let id = open(&s, &[("t", 0, 0), ("t", 1, 0), ("u", 0, 0)]);
        assert_eq!(s.counts(), (1, 3));
        // Epoch -1 naming it closes it and makes none.
        let mut close = request(id, -1, &[("t", 0, 0)]);
        assert_eq!(s.begin(&mut close, 12, "User:a"), Ok(Begun::Sessionless));
        assert_eq!(s.counts(), (0, 0));
    }

    #[test]
    fn an_incremental_fetch_reads_the_session_and_answers_what_changed() {
        let s = FetchSessions::new(10);
        let id = open(&s, &[("t", 0, 5), ("t", 1, 7), ("u", 0, 0)]);
        // Nothing asked, nothing new: every partition read, none answered.
        let (order, resp) = round(&s, request(id, 1, &[]), 10, &[]);
        assert_eq!(
            order,
            [("t".into(), 0, 5), ("t".into(), 1, 7), ("u".into(), 0, 0)]
        );
        assert!(resp.responses.is_empty(), "{resp:?}");
        assert_eq!(resp.session_id, id);
        // Records on t-1 and a higher watermark everywhere: all answered once...
        let (_, resp) = round(&s, request(id, 2, &[("t", 1, 8)]), 11, &[("t", 1)]);
        assert_eq!(answered(&resp).len(), 3);
        // ...and t-1, which returned records, is read last from then on; its new offset kept.
        let (order, resp) = round(&s, request(id, 3, &[]), 11, &[("u", 0)]);
        assert_eq!(
            order,
            [("t".into(), 0, 5), ("u".into(), 0, 0), ("t".into(), 1, 8)]
        );
        assert_eq!(answered(&resp), [("u".to_string(), 0)]);
    }

    #[test]
    fn partitions_are_added_and_forgotten_and_the_last_one_closes_the_session() {
        let s = FetchSessions::new(10);
        let id = open(&s, &[("t", 0, 0)]);
        // An added partition is answered at its first read even without records.
        let (order, resp) = round(&s, request(id, 1, &[("v", 3, 4)]), 10, &[]);
        assert_eq!(order, [("t".into(), 0, 0), ("v".into(), 3, 4)]);
        assert_eq!(answered(&resp), [("v".to_string(), 3)]);
        assert_eq!(s.counts(), (1, 2));
        let (order, _) = round(&s, forget(request(id, 2, &[]), &[("t", 0)]), 10, &[]);
        assert_eq!(order, [("v".into(), 3, 4)]);
        assert_eq!(s.counts(), (1, 1));
        let mut req = forget(request(id, 3, &[]), &[("v", 3)]);
        assert_eq!(s.begin(&mut req, 12, "User:a"), Ok(Begun::Closed));
        assert!(req.topics.is_empty());
        assert_eq!(s.counts(), (0, 0));
        let mut again = request(id, 4, &[]);
        assert_eq!(
            s.begin(&mut again, 12, "User:a"),
            Err(E::FetchSessionIdNotFound.code())
        );
    }

    #[test]
    fn wrong_epochs_unknown_ids_and_other_principals_are_refused() {
        let s = FetchSessions::new(10);
        let id = open(&s, &[("t", 0, 0)]);
        let mut req = request(id, 2, &[]);
        assert_eq!(
            s.begin(&mut req, 12, "User:a"),
            Err(E::InvalidFetchSessionEpoch.code())
        );
        let mut req = request(id + 1, 1, &[]);
        assert_eq!(
            s.begin(&mut req, 12, "User:a"),
            Err(E::FetchSessionIdNotFound.code())
        );
        let mut req = request(id, 1, &[]);
        assert_eq!(
            s.begin(&mut req, 12, "User:b"),
            Err(E::FetchSessionIdNotFound.code())
        );
        // Nor may another principal close it.
        let mut req = request(id, 0, &[("t", 0, 0)]);
        assert_eq!(s.begin(&mut req, 12, "User:b"), Ok(Begun::Full));
        assert_eq!(s.counts().0, 1);
        // The refusals did not move its epoch.
        let (_, resp) = round(&s, request(id, 1, &[]), 10, &[]);
        assert_eq!(resp.session_id, id);
        // Two fetches begun on one epoch: the second is refused, the first answered.
        let mut first = request(id, 2, &[]);
        let begun = s.begin(&mut first, 12, "User:a").unwrap();
        let mut second = request(id, 2, &[]);
        assert_eq!(
            s.begin(&mut second, 12, "User:a"),
            Err(E::InvalidFetchSessionEpoch.code())
        );
        let mut resp = read(&first, 10, &[]);
        s.finish(begun, &first, "User:a", &mut resp);
        assert_eq!((resp.error_code, resp.session_id), (0, id));
    }

    #[test]
    fn an_answer_that_no_longer_fits_its_session_is_refused() {
        let s = FetchSessions::new(10);
        let id = open(&s, &[("t", 0, 0)]);
        let mut req = request(id, 1, &[]);
        let begun = s.begin(&mut req, 12, "User:a").unwrap();
        // The client gave up on it and made the session again meanwhile.
        let mut full = request(id, 0, &[("t", 0, 0)]);
        assert_eq!(s.begin(&mut full, 12, "User:a"), Ok(Begun::Full));
        let mut resp = read(&req, 10, &[("t", 0)]);
        s.finish(begun, &req, "User:a", &mut resp);
        assert_eq!(resp.error_code, E::InvalidFetchSessionEpoch.code());
        assert!(resp.responses.is_empty());
    }

    #[test]
    fn errors_are_always_answered_and_answered_again_once_gone() {
        let s = FetchSessions::new(10);
        let id = open(&s, &[("t", 0, 0)]);
        let mut req = request(id, 1, &[]);
        let begun = s.begin(&mut req, 12, "User:a").unwrap();
        let mut resp = read(&req, 10, &[]);
        resp.responses[0].partitions[0].error_code = E::NotLeaderOrFollower.code();
        s.finish(begun, &req, "User:a", &mut resp);
        assert_eq!(answered(&resp).len(), 1);
        // Back, unchanged at 10: still answered, since the error was the last it heard.
        let (_, resp) = round(&s, request(id, 2, &[]), 10, &[]);
        assert_eq!(answered(&resp).len(), 1);
        let (_, resp) = round(&s, request(id, 3, &[]), 10, &[]);
        assert!(resp.responses.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_only_stale_sessions() {
        let s = FetchSessions::new(1);
        let first = open(&s, &[("t", 0, 0)]);
        // No room and nothing stale: answered without a session.
        let mut req = request(0, 0, &[("t", 1, 0)]);
        let begun = s.begin(&mut req, 12, "User:b").unwrap();
        let mut resp = read(&req, 10, &[]);
        s.finish(begun, &req, "User:b", &mut resp);
        assert_eq!(resp.session_id, 0);
        assert_eq!(answered(&resp).len(), 1, "answered in full all the same");
        assert_eq!(s.evictions(), 0);
        // Once the first is stale, a new session takes its place.
        s.inner().sessions.get_mut(&first).unwrap().last_used -= EVICTABLE_AFTER;
        let second = open(&s, &[("t", 1, 0)]);
        assert_ne!(second, first);
        assert_eq!((s.counts(), s.evictions()), ((1, 1), 1));
    }

    #[test]
    fn a_session_may_not_outgrow_the_partition_bound() {
        let s = FetchSessions::new(10);
        let id = open(&s, &[("t", 0, 0)]);
        let many: Vec<(&str, i32, i64)> =
            (0..MAX_PARTITIONS as i32).map(|p| ("big", p, 0)).collect();
        let mut req = request(id, 1, &many);
        assert_eq!(
            s.begin(&mut req, 12, "User:a"),
            Err(E::FetchSessionIdNotFound.code())
        );
        assert_eq!(s.counts(), (0, 0));
    }

    #[test]
    fn epochs_wrap_to_one() {
        assert_eq!(next_epoch(1), 2);
        assert_eq!(next_epoch(i32::MAX), 1);
    }
}
