//! The transaction coordinator: Kafka's exactly-once producers (`transactional.id`).
//!
//! One coordinator per broker (a cluster's leader; followers answer NOT_COORDINATOR), holding
//! per transactional id: the producer id and epoch it was given, its timeout, and the
//! transaction in progress (the partitions and groups added to it, the offsets its
//! TxnOffsetCommits staged). Every change is stored in redb (`transactions` table) before it is
//! answered, so a restart finds open transactions open and completes ones it was ending.
//!
//! The life of a transaction, as in Kafka:
//! - **InitProducerId** with the id: a first one gets a new producer id, epoch 0; a later one
//!   bumps the epoch, which fences the previous producer of the id (its requests get
//!   PRODUCER_FENCED, its batches INVALID_PRODUCER_EPOCH); a transaction it left open is
//!   aborted first;
//! - **AddPartitionsToTxn** / **AddOffsetsToTxn** start it (state Ongoing) and name what it
//!   writes; a transactional batch is appended only to a partition added to the producer's
//!   ongoing transaction, checked under this coordinator's lock so that no batch lands after
//!   its transaction's marker ([`Transactions::append_verified`]);
//! - **TxnOffsetCommit** stages a consumer group's offsets in it;
//! - **EndTxn** writes a COMMIT or ABORT marker to every partition added (`storage::txn`) and,
//!   on commit, stores the staged offsets; then the transaction is complete;
//! - a transaction open longer than its timeout is aborted and the epoch bumped, fencing the
//!   stalled producer, as Kafka's coordinator does.
//!
//! A marker that cannot be written (a full disk) leaves the transaction in PrepareCommit or
//! PrepareAbort; the end is tried again by the client's retry, the periodic check and at start.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use kafka_protocol::error::ResponseError as E;
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::groups::CommittedOffset;
use crate::log_budget::client_text;
use crate::storage::Marker;

/// The longest transaction timeout a producer may ask for (Kafka's
/// `transaction.max.timeout.ms` default, 15 minutes).
pub const MAX_TIMEOUT_MS: i32 = 900_000;

/// How long a transactional id with no transaction in progress is kept unused before it is
/// forgotten (Kafka's `transactional.id.expiration.ms` default, 7 days); a producer using it
/// later starts again with a new producer id.
pub const EXPIRATION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Where a transactional id's transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// No transaction since the producer id was handed out.
    Empty,
    Ongoing,
    /// Ending: markers being written.
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    /// Kafka's name of the state (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }
}

/// An offset a TxnOffsetCommit staged, stored when the transaction commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// One transactional id, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// The partitions added to the transaction in progress (or being ended).
    pub partitions: BTreeSet<(String, i32)>,
    pub groups: BTreeSet<String>,
    pub offsets: Vec<StagedOffset>,
    /// When the transaction in progress started (its first add), ms since the epoch.
    pub started_ms: i64,
    /// When the id's producer last began, added to or ended a transaction, or got its id.
    #[serde(default)]
    pub used_ms: i64,
    /// The epoch a producer last bumped its own epoch from (InitProducerId naming its producer
    /// id and epoch): a retry of that request (its answer lost) gets the same answer again
    /// instead of being fenced.
    #[serde(default)]
    pub previous_epoch: Option<i16>,
}

/// Why a transactional request is refused; each maps to Kafka's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error(
        "producer epoch {given} of transactional id {id} was fenced: epoch {current} is current"
    )]
    Fenced {
        id: String,
        given: i16,
        current: i16,
    },
    #[error("producer id {producer_id} is not the one of transactional id {id}")]
    UnknownProducer { id: String, producer_id: i64 },
    #[error("{0}")]
    InvalidState(String),
    #[error("transaction timeout {0} ms is not within 1..={MAX_TIMEOUT_MS} ms")]
    InvalidTimeout(i32),
    #[error("the transaction is being ended; try again")]
    Concurrent,
    #[error("{0}")]
    Storage(String),
}

impl TxnError {
    pub fn code(&self) -> i16 {
        match self {
            TxnError::Fenced { .. } => E::ProducerFenced.code(),
            TxnError::UnknownProducer { .. } => E::InvalidProducerIdMapping.code(),
            TxnError::InvalidState(_) => E::InvalidTxnState.code(),
            TxnError::InvalidTimeout(_) => E::InvalidTransactionTimeout.code(),
            TxnError::Concurrent => E::ConcurrentTransactions.code(),
            TxnError::Storage(_) => E::CoordinatorNotAvailable.code(),
        }
    }
}

/// Transaction markers written: each partition with the offset after its marker.
pub type Markers = Vec<(std::sync::Arc<crate::catalog::Partition>, i64)>;

/// Why a transactional batch may not be appended ([`Transactions::append_verified`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchRefusal {
    #[error("producer id {0} is not the producer of the request's transactional id")]
    UnknownProducer(i64),
    #[error("producer {producer_id} epoch {given} was fenced: epoch {current} is current")]
    Fenced {
        producer_id: i64,
        given: i16,
        current: i16,
    },
    #[error("{topic}-{partition} was not added to producer {producer_id}'s ongoing transaction")]
    NotInTransaction {
        producer_id: i64,
        topic: String,
        partition: i32,
    },
}

impl BatchRefusal {
    pub fn code(&self) -> i16 {
        match self {
            BatchRefusal::UnknownProducer(_) => E::InvalidProducerIdMapping.code(),
            BatchRefusal::Fenced { .. } => E::InvalidProducerEpoch.code(),
            BatchRefusal::NotInTransaction { .. } => E::InvalidTxnState.code(),
        }
    }
}

#[derive(Default)]
struct Inner {
    txns: HashMap<String, Txn>,
    /// Producer id -> its transactional id.
    by_producer: HashMap<i64, String>,
}

/// The coordinator. Its lock is taken before a partition's, never after.
#[derive(Default)]
pub struct Transactions {
    inner: Mutex<Inner>,
    /// Transactions ended, since the start (`runnel_transactions_*_total`).
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub timed_out: AtomicU64,
}

impl Transactions {
    /// The coordinator with what redb holds; a record that cannot be read is skipped with a
    /// warning (its producer then starts again with a new id).
    pub fn load(meta: &crate::meta::MetaStore) -> Result<Transactions, crate::meta::MetaError> {
        let mut inner = Inner::default();
        for (id, json) in meta.transactions()? {
            match serde_json::from_str::<Txn>(&json) {
                Ok(t) => {
                    inner.by_producer.insert(t.producer_id, id.clone());
                    inner.txns.insert(id, t);
                }
                Err(e) => {
                    tracing::warn!(transactional_id = %client_text(&id), error = %e, "an unreadable transaction record is skipped")
                }
            }
        }
        Ok(Transactions {
            inner: Mutex::new(inner),
            ..Transactions::default()
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of every transactional id's state (DescribeTransactions, ListTransactions).
    pub fn snapshot(&self) -> Vec<(String, Txn)> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .txns
            .iter()
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Transactions in progress (Ongoing, or being ended).
    pub fn ongoing(&self) -> usize {
        self.lock()
            .txns
            .values()
            .filter(|t| {
                matches!(
                    t.status,
                    TxnStatus::Ongoing | TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
                )
            })
            .count()
    }

    /// The (group, topic, partition) of every offset an ongoing transaction has staged
    /// (OffsetFetch's `require_stable`).
    pub fn staged_offsets(&self) -> HashSet<(String, String, i32)> {
        self.lock()
            .txns
            .values()
            .filter(|t| matches!(t.status, TxnStatus::Ongoing | TxnStatus::PrepareCommit))
            .flat_map(|t| &t.offsets)
            .map(|o| (o.group.clone(), o.topic.clone(), o.partition))
            .collect()
    }

    /// A plain OffsetCommit of `group`: `commit` stores it and returns the partitions it
    /// stored. What an open transaction staged for them before is then not stored when it
    /// commits, as in Kafka, where a transaction's offset counts only if it was written after
    /// the group's committed one (an offset reset while a transaction is open stays). While a
    /// transaction has offsets of the group staged, the commit runs under the coordinator's
    /// lock, so that no end of that transaction falls between it and the staged offsets going
    /// (the lock is taken before the groups', as an end takes them). A failed store of the
    /// transaction is logged; a restart then keeps its staged offsets.
    pub fn plain_commit<R>(
        &self,
        broker: &Broker,
        group: &str,
        commit: impl FnOnce() -> (R, HashSet<(String, i32)>),
    ) -> R {
        let mut inner = self.lock();
        let open = |t: &Txn| matches!(t.status, TxnStatus::Ongoing | TxnStatus::PrepareCommit);
        let staged_here = inner
            .txns
            .values()
            .any(|t| open(t) && t.offsets.iter().any(|o| o.group == group));
        if !staged_here {
            drop(inner);
            return commit().0;
        }
        let (result, stored) = commit();
        for (id, t) in inner.txns.iter_mut() {
            let staged = |o: &StagedOffset| {
                o.group == group
                    && stored
                        .iter()
                        .any(|(topic, p)| *p == o.partition && *topic == o.topic)
            };
            if !open(t) || !t.offsets.iter().any(staged) {
                continue;
            }
            t.offsets.retain(|o| !staged(o));
            if let Err(e) = store(broker, id, t) {
                tracing::warn!(transactional_id = %id, error = %e, "cannot store a transaction whose staged offsets a plain commit replaced");
            }
        }
        result
    }

    /// InitProducerId for `id`: (producer id, epoch). `expected` is the producer id and epoch
    /// the client says it had (v3+), `None` for a new producer.
    pub fn init_producer(
        &self,
        broker: &Broker,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
    ) -> Result<(i64, i16), TxnError> {
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(TxnError::InvalidTimeout(timeout_ms));
        }
        let mut inner = self.lock();
        let mut txn = match inner.txns.get(id) {
            None => {
                let n = broker
                    .meta
                    .next_producer_id()
                    .map_err(|e| TxnError::Storage(e.to_string()))?;
                Txn {
                    producer_id: crate::replication::producer_id(broker.cluster.as_ref(), n),
                    epoch: 0,
                    timeout_ms,
                    status: TxnStatus::Empty,
                    partitions: BTreeSet::new(),
                    groups: BTreeSet::new(),
                    offsets: Vec::new(),
                    started_ms: now_ms,
                    used_ms: now_ms,
                    previous_epoch: None,
                }
            }
            Some(t) => {
                let mut t = t.clone();
                let retried = expected.is_some_and(|(pid, epoch)| {
                    pid == t.producer_id
                        && Some(epoch) == t.previous_epoch
                        && t.status != TxnStatus::Ongoing
                });
                if retried {
                    return Ok((t.producer_id, t.epoch));
                }
                if let Some((pid, epoch)) = expected
                    && (pid != t.producer_id || epoch != t.epoch)
                {
                    return Err(TxnError::Fenced {
                        id: id.to_string(),
                        given: epoch,
                        current: t.epoch,
                    });
                }
                let before = (t.producer_id, t.epoch);
                let ended = match t.status {
                    // The previous producer left it open: abort it under the new epoch, which
                    // the markers carry to the partitions (fencing it there too).
                    TxnStatus::Ongoing => self.fence_and_abort(broker, id, &mut t, now_ms),
                    TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                        let commit = t.status == TxnStatus::PrepareCommit;
                        self.end(broker, id, &mut t, commit, now_ms, &mut Vec::new())
                            .and_then(|()| bump(broker, &mut t))
                    }
                    _ => bump(broker, &mut t),
                };
                if let Err(e) = ended {
                    // What was done stays done (a bumped epoch fences the old producer; an end
                    // left halfway is finished by the next try or the periodic check).
                    let previous = inner.txns.insert(id.to_string(), t.clone());
                    if let Some(p) = previous.filter(|p| p.producer_id != t.producer_id) {
                        inner.by_producer.remove(&p.producer_id);
                    }
                    inner.by_producer.insert(t.producer_id, id.to_string());
                    return Err(e);
                }
                // Only a producer bumping its own epoch may retry; a new producer of the id
                // fences every earlier epoch, so a zombie cannot pass for a retry.
                t.previous_epoch =
                    (expected.is_some() && t.producer_id == before.0).then_some(before.1);
                t
            }
        };
        txn.timeout_ms = timeout_ms;
        txn.used_ms = now_ms;
        store(broker, id, &txn)?;
        let previous = inner.txns.insert(id.to_string(), txn.clone());
        if let Some(p) = previous.filter(|p| p.producer_id != txn.producer_id) {
            inner.by_producer.remove(&p.producer_id);
        }
        inner.by_producer.insert(txn.producer_id, id.to_string());
        Ok((txn.producer_id, txn.epoch))
    }

    /// AddPartitionsToTxn: starts the transaction if none is in progress.
    pub fn add_partitions(
        &self,
        broker: &Broker,
        id: &str,
        (producer_id, epoch): (i64, i16),
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Result<(), TxnError> {
        self.change(broker, id, (producer_id, epoch), now_ms, |t| {
            t.partitions.extend(partitions.iter().cloned());
            Ok(())
        })
    }

    /// AddOffsetsToTxn: the transaction will commit offsets of `group`.
    pub fn add_group(
        &self,
        broker: &Broker,
        id: &str,
        (producer_id, epoch): (i64, i16),
        group: &str,
        now_ms: i64,
    ) -> Result<(), TxnError> {
        self.change(broker, id, (producer_id, epoch), now_ms, |t| {
            t.groups.insert(group.to_string());
            Ok(())
        })
    }

    /// TxnOffsetCommit: stages `offsets` of `group` (a later one for a partition replaces the
    /// earlier).
    pub fn stage_offsets(
        &self,
        broker: &Broker,
        id: &str,
        (producer_id, epoch): (i64, i16),
        group: &str,
        offsets: Vec<StagedOffset>,
    ) -> Result<(), TxnError> {
        let mut inner = self.lock();
        let t = checked(&mut inner, id, producer_id, epoch)?;
        if t.status != TxnStatus::Ongoing || !t.groups.contains(group) {
            return Err(TxnError::InvalidState(format!(
                "group {group} was not added to transactional id {id}'s transaction (AddOffsetsToTxn)"
            )));
        }
        let mut next = t.clone();
        for o in offsets {
            next.offsets
                .retain(|s| (&s.group, &s.topic, s.partition) != (&o.group, &o.topic, o.partition));
            next.offsets.push(o);
        }
        store(broker, id, &next)?;
        *t = next;
        Ok(())
    }

    /// EndTxn: commits or aborts the transaction in progress, and returns the markers written
    /// (partition, offset after the marker): in a cluster the answer waits for the followers
    /// to have them. Ending one already ended the same way (a retry) succeeds; ending when none
    /// was started is INVALID_TXN_STATE, as in Kafka (clients do not send it then).
    pub fn end_transaction(
        &self,
        broker: &Broker,
        id: &str,
        (producer_id, epoch): (i64, i16),
        commit: bool,
        now_ms: i64,
    ) -> Result<Markers, TxnError> {
        let mut inner = self.lock();
        let t = checked(&mut inner, id, producer_id, epoch)?;
        let mut next = t.clone();
        let mut written = Vec::new();
        let result = match (t.status, commit) {
            (TxnStatus::Ongoing, _)
            | (TxnStatus::PrepareCommit, true)
            | (TxnStatus::PrepareAbort, false) => {
                self.end(broker, id, &mut next, commit, now_ms, &mut written)
            }
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => Ok(()),
            (status, _) => Err(TxnError::InvalidState(format!(
                "cannot {} transactional id {id}'s transaction: it is {}",
                if commit { "commit" } else { "abort" },
                status.name()
            ))),
        };
        *t = next;
        result.map(|()| written)
    }

    /// Appends `append`'s transactional batches of producer `producer_id` to `topic`-`partition`
    /// if the producer is transactional id `id`'s (the one the request names, which the ACLs
    /// let the client write) and the partition was added to its ongoing transaction, with this
    /// coordinator locked, so that the transaction cannot end between the check and the
    /// append.
    pub fn append_verified<R>(
        &self,
        id: &str,
        (producer_id, epoch): (i64, i16),
        (topic, partition): (&str, i32),
        append: impl FnOnce() -> R,
    ) -> Result<R, BatchRefusal> {
        let inner = self.lock();
        let t = inner
            .txns
            .get(id)
            .filter(|t| t.producer_id == producer_id)
            .ok_or(BatchRefusal::UnknownProducer(producer_id))?;
        if epoch != t.epoch {
            return Err(BatchRefusal::Fenced {
                producer_id,
                given: epoch,
                current: t.epoch,
            });
        }
        let added = t.status == TxnStatus::Ongoing
            && t.partitions.contains(&(topic.to_string(), partition));
        if !added {
            return Err(BatchRefusal::NotInTransaction {
                producer_id,
                topic: topic.to_string(),
                partition,
            });
        }
        Ok(append())
    }

    /// The periodic check: aborts the transactions open longer than their timeout (bumping the
    /// epoch, so the stalled producer is fenced), finishes ends a failed write left halfway, and
    /// forgets the ids unused for [`EXPIRATION_MS`].
    pub fn tick(&self, broker: &Broker, now_ms: i64) {
        let mut inner = self.lock();
        let ids: Vec<String> = inner.txns.keys().cloned().collect();
        for id in ids {
            let Some(t) = inner.txns.get_mut(&id) else {
                continue;
            };
            let idle = matches!(
                t.status,
                TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
            );
            if idle && now_ms - t.used_ms > EXPIRATION_MS {
                match broker.meta.put_transaction(&id, None) {
                    Ok(()) => {
                        tracing::info!(transactional_id = %client_text(&id), "a transactional id unused for 7 days is forgotten");
                        inner.txns.remove(&id);
                    }
                    Err(e) => {
                        tracing::warn!(transactional_id = %client_text(&id), error = %e, "cannot forget an unused transactional id")
                    }
                }
                continue;
            }
            let mut next = t.clone();
            let result = match t.status {
                TxnStatus::Ongoing if now_ms - t.started_ms > i64::from(t.timeout_ms) => {
                    tracing::info!(transactional_id = %client_text(&id), producer_id = t.producer_id, timeout_ms = t.timeout_ms, "a transaction open past its timeout is aborted");
                    self.timed_out.fetch_add(1, Ordering::Relaxed);
                    self.fence_and_abort(broker, &id, &mut next, now_ms)
                }
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                    let commit = t.status == TxnStatus::PrepareCommit;
                    self.end(broker, &id, &mut next, commit, now_ms, &mut Vec::new())
                }
                _ => continue,
            };
            if let Err(e) = &result {
                tracing::warn!(transactional_id = %client_text(&id), error = %e, "ending a transaction failed; tried again at the next check");
            }
            *t = next;
        }
        // An epoch bump may have given a producer a new id.
        inner.by_producer = inner
            .txns
            .iter()
            .map(|(id, t)| (t.producer_id, id.clone()))
            .collect();
    }

    /// At the start of a coordinator: every transaction open in a partition log that no
    /// ongoing transaction here accounts for is ended there, so that it does not hold back
    /// read_committed consumers for ever. One its producer's stored state says committed (the
    /// marker was lost with the unflushed tail of the log at a power cut, the state being
    /// stored durably) is committed; any other (its state lost, or begun under another leader)
    /// is aborted.
    pub fn abort_orphans(&self, broker: &Broker, now_ms: i64) {
        let inner = self.lock();
        for topic in broker.catalog.list() {
            for p in topic.partitions() {
                let open = p.log().open_transactions();
                for (producer_id, epoch) in open {
                    let state = inner
                        .by_producer
                        .get(&producer_id)
                        .and_then(|id| inner.txns.get(id))
                        .filter(|t| t.producer_id == producer_id);
                    let here = (topic.name.to_string(), p.index);
                    let (marker, epoch) = match state {
                        Some(t)
                            if t.status == TxnStatus::Ongoing && t.partitions.contains(&here) =>
                        {
                            continue;
                        }
                        Some(t) if t.status == TxnStatus::CompleteCommit => {
                            (Marker::Commit, t.epoch)
                        }
                        _ => (Marker::Abort, epoch),
                    };
                    tracing::warn!(topic = %topic.name, partition = p.index, producer_id, ?marker, "a transaction open in the log that the coordinator does not account for is ended");
                    if let Err(e) = p.append_marker(producer_id, epoch, marker, now_ms) {
                        tracing::warn!(topic = %topic.name, partition = p.index, error = %e, "cannot end a transaction left open in the log");
                    }
                }
            }
        }
    }

    /// Ends `t`'s transaction: Prepare stored, a marker to each partition, the staged offsets
    /// stored on commit, Complete stored. A partition whose marker fails stays in `t` for the next
    /// try; a deleted one is skipped.
    fn end(
        &self,
        broker: &Broker,
        id: &str,
        t: &mut Txn,
        commit: bool,
        now_ms: i64,
        written: &mut Markers,
    ) -> Result<(), TxnError> {
        t.status = if commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        t.used_ms = now_ms;
        store(broker, id, t)?;
        let marker = if commit {
            Marker::Commit
        } else {
            Marker::Abort
        };
        let mut failed = None;
        let partitions = std::mem::take(&mut t.partitions);
        for (topic, index) in partitions {
            let Some(p) = broker.catalog.get(&topic).and_then(|x| x.partition(index)) else {
                continue;
            };
            match p.append_marker(t.producer_id, t.epoch, marker, now_ms) {
                Ok(offset) => {
                    if let Some(c) = &broker.cluster {
                        crate::replication::advance(c, &p, offset + 1, now_ms);
                    }
                    written.push((p, offset + 1));
                }
                Err(e) => {
                    tracing::warn!(%topic, partition = index, error = %e, "a transaction marker could not be written");
                    failed = Some(e.to_string());
                    t.partitions.insert((topic, index));
                }
            }
        }
        if let Some(e) = failed {
            store(broker, id, t)?;
            return Err(TxnError::Storage(format!(
                "a transaction marker could not be written: {e}"
            )));
        }
        if commit {
            let mut by_group: HashMap<String, Vec<(String, i32, CommittedOffset)>> = HashMap::new();
            for o in std::mem::take(&mut t.offsets) {
                by_group.entry(o.group).or_default().push((
                    o.topic,
                    o.partition,
                    CommittedOffset {
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata,
                        commit_timestamp_ms: now_ms,
                    },
                ));
            }
            for (group, offsets) in by_group {
                if let Err(e) = broker.groups.commit_transactional(&group, offsets.clone()) {
                    // Put back for the next try; the markers are written.
                    t.offsets
                        .extend(
                            offsets
                                .into_iter()
                                .map(|(topic, partition, o)| StagedOffset {
                                    group: group.clone(),
                                    topic,
                                    partition,
                                    offset: o.offset,
                                    leader_epoch: o.leader_epoch,
                                    metadata: o.metadata,
                                }),
                        );
                    store(broker, id, t)?;
                    return Err(TxnError::Storage(format!(
                        "the transaction's offsets of group {group} could not be stored: {e}"
                    )));
                }
            }
        }
        t.status = if commit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        t.groups.clear();
        t.offsets.clear();
        store(broker, id, t)?;
        let ended = if commit {
            &self.committed
        } else {
            &self.aborted
        };
        ended.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Aborts `t`'s transaction in progress and fences its producer: the markers carry the next
    /// epoch; when the producer id's epochs are used up, they carry the last one (so the partitions
    /// close the transaction of that producer id) and the id gets a new producer id afterwards,
    /// which fences the old one as well.
    fn fence_and_abort(
        &self,
        broker: &Broker,
        id: &str,
        t: &mut Txn,
        now_ms: i64,
    ) -> Result<(), TxnError> {
        // A fenced producer's earlier epochs are no retries.
        t.previous_epoch = None;
        if t.epoch < i16::MAX - 1 {
            t.epoch += 1;
            return self.end(broker, id, t, false, now_ms, &mut Vec::new());
        }
        self.end(broker, id, t, false, now_ms, &mut Vec::new())?;
        bump(broker, t)?;
        store(broker, id, t)
    }

    /// Runs `f` on `id`'s transaction after the producer checks, starting a transaction if
    /// none is in progress, and stores the result.
    fn change(
        &self,
        broker: &Broker,
        id: &str,
        (producer_id, epoch): (i64, i16),
        now_ms: i64,
        f: impl FnOnce(&mut Txn) -> Result<(), TxnError>,
    ) -> Result<(), TxnError> {
        let mut inner = self.lock();
        let t = checked(&mut inner, id, producer_id, epoch)?;
        let mut next = t.clone();
        match next.status {
            TxnStatus::Ongoing => {}
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                return Err(TxnError::Concurrent);
            }
            _ => {
                next.status = TxnStatus::Ongoing;
                next.partitions.clear();
                next.groups.clear();
                next.offsets.clear();
                next.started_ms = now_ms;
            }
        }
        next.used_ms = now_ms;
        f(&mut next)?;
        store(broker, id, &next)?;
        *t = next;
        Ok(())
    }
}

/// `id`'s state, if `producer_id` and `epoch` are its producer's.
fn checked<'a>(
    inner: &'a mut Inner,
    id: &str,
    producer_id: i64,
    epoch: i16,
) -> Result<&'a mut Txn, TxnError> {
    let t = inner
        .txns
        .get_mut(id)
        .filter(|t| t.producer_id == producer_id)
        .ok_or_else(|| TxnError::UnknownProducer {
            id: id.to_string(),
            producer_id,
        })?;
    if t.epoch != epoch {
        return Err(TxnError::Fenced {
            id: id.to_string(),
            given: epoch,
            current: t.epoch,
        });
    }
    Ok(t)
}

/// The next epoch of `t`'s producer; a new producer id once the epochs run out.
fn bump(broker: &Broker, t: &mut Txn) -> Result<(), TxnError> {
    if t.epoch < i16::MAX - 1 {
        t.epoch += 1;
        return Ok(());
    }
    let n = broker
        .meta
        .next_producer_id()
        .map_err(|e| TxnError::Storage(e.to_string()))?;
    t.producer_id = crate::replication::producer_id(broker.cluster.as_ref(), n);
    t.epoch = 0;
    Ok(())
}

fn store(broker: &Broker, id: &str, t: &Txn) -> Result<(), TxnError> {
    let json = serde_json::to_string(t).map_err(|e| TxnError::Storage(e.to_string()))?;
    broker
        .meta
        .put_transaction(id, Some(&json))
        .map_err(|e| TxnError::Storage(format!("cannot store the transaction state: {e}")))
}
