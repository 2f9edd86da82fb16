//! The topic catalog: which topics exist, their partitions and per-topic configs.
//!
//! Topics are remembered in redb (`meta`); each partition owns a [`PartitionLog`] in
//! `<data_dir>/<topic>-<partition>/`. A partition's log sits behind a mutex: appends are
//! serialised per partition (offsets must be assigned in order) and reads take the same lock only
//! for as long as it takes to copy the bytes out. Fetchers waiting for data park on the
//! partition's `appended` notifier, which every successful append wakes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::log_budget::{LogBudget, within_budget};
use crate::meta::{MetaError, MetaStore, TopicRecord};
use crate::replication::ReplicaState;
use crate::storage::{self, PartitionLog, StorageError};

/// Longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;
/// Most partitions one topic may have on this broker.
pub const MAX_PARTITIONS: i32 = 10_000;

static OPEN_FILES_REFUSALS: LogBudget = LogBudget::new(6);

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error(
        "topic {name:?} collides with the existing topic {existing:?} ('.' and '_' are the same in metric names)"
    )]
    TopicCollides { name: String, existing: String },
    #[error("invalid partition count {count}: {reason}")]
    InvalidPartitions { count: i32, reason: String },
    #[error(
        "invalid replication factor {given}: every topic has one replica on each of the {brokers} broker(s)"
    )]
    InvalidReplicationFactor { given: i16, brokers: i16 },
    #[error("invalid config {key}={value}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "{partitions} more partition(s) would leave fewer than {kept} of the broker's {limit} open files free ({open} open, one per segment and connection): delete topics, or raise the broker's open-files limit (ulimit -n, systemd's LimitNOFILE)"
    )]
    OpenFiles {
        partitions: i32,
        open: u64,
        limit: u64,
        kept: u64,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Whether `dir` holds a segment file that is not empty: a partition's records. A directory
/// that cannot be read (out of file descriptors, say) is taken to hold some: it is never
/// deleted on a guess.
fn holds_segments(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().any(|e| {
            e.file_name().to_str().is_some_and(|n| n.ends_with(".log"))
                && e.metadata().map_or(true, |m| m.len() > 0)
        }),
        Err(_) => dir.is_dir(),
    }
}

/// Renames `dir` to `<dir>~<why>-<ms>` (`~` is never in a topic's name, so the result cannot be
/// taken for a partition) and returns the new path.
fn set_aside(dir: &Path, why: &str, now_ms: i64) -> std::io::Result<PathBuf> {
    let mut name = dir.as_os_str().to_owned();
    name.push(format!("~{why}-{now_ms}"));
    let aside = PathBuf::from(name);
    std::fs::rename(dir, &aside)?;
    Ok(aside)
}

/// One partition: its log and the notifier that wakes long-polling fetches.
pub struct Partition {
    pub topic: Arc<str>,
    pub index: i32,
    log: Mutex<PartitionLog>,
    /// Woken by every append, and on a cluster's leader when the high watermark moves.
    pub appended: Notify,
    /// Followers' positions and the high watermark (`crate::replication`).
    pub replica: ReplicaState,
    /// The partition's leader epoch: the one this broker leads it at (stamped into its
    /// batches), or, on a follower, the leader's as last read; -1 before either is known.
    leader_epoch: std::sync::atomic::AtomicI32,
}

impl Partition {
    /// The partition's leader epoch (see the field), as Metadata reports it and requests
    /// naming an epoch are checked against.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Leads the partition at `epoch` from now on.
    fn lead_at(&self, epoch: i32) {
        self.log().set_leader_epoch(epoch);
        self.leader_epoch
            .store(epoch, std::sync::atomic::Ordering::SeqCst);
    }

    /// On a follower: the leader's epoch for the partition, as its Metadata says.
    pub fn note_leaders_epoch(&self, epoch: i32) {
        self.leader_epoch
            .store(epoch, std::sync::atomic::Ordering::SeqCst);
    }

    /// Locks the log. A panic while holding the lock would be a bug in storage; the log's own
    /// state is still consistent between calls, so a poisoned lock is recovered.
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On a cluster's leader, refuses every write while it lost records a follower holds
    /// (`crate::replication::lost_records`): they would take offsets that hold other records
    /// there.
    fn check_not_lost(&self) -> Result<(), StorageError> {
        match crate::replication::lost_records(self) {
            None => Ok(()),
            Some(reason) => Err(StorageError::LostRecords { reason }),
        }
    }

    /// Checks produce data as an append would (framing, sizes, every record), without taking
    /// the log's lock for the walk: for the plugin chain, which decodes the records first.
    pub fn check_records(&self, records: &[u8], now_ms: i64) -> Result<(), StorageError> {
        let config = self.log().config().clone();
        storage::check_produce_records(records, &config, false, now_ms)
    }

    /// Appends a producer's record batches and wakes waiting fetches. With `flush = "always"`
    /// the append includes an fsync; on a multi-threaded runtime that wait is moved off the
    /// async worker (`block_in_place`) so other connections keep being served meanwhile.
    pub fn append(&self, records: &[u8], now_ms: i64) -> Result<storage::AppendInfo, StorageError> {
        self.append_with(records, now_ms, false)
    }

    /// [`Partition::append`] of batches the plugin chain rewrote (see
    /// `PartitionLog::append_rewritten`).
    pub fn append_rewritten(
        &self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<storage::AppendInfo, StorageError> {
        self.append_with(records, now_ms, true)
    }

    /// Ends a producer's transaction in this partition with a marker (the transaction
    /// coordinator's write, `crate::transactions`) and wakes waiting fetches: a read_committed
    /// consumer may now read past the transaction.
    pub fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: storage::Marker,
        now_ms: i64,
    ) -> Result<i64, StorageError> {
        self.write_marker(producer_id, epoch, marker, now_ms, false)
    }

    /// A marker a WriteTxnMarkers request asks for (an operator ending a hanging
    /// transaction): as [`Partition::append_marker`], but refused with INVALID_PRODUCER_EPOCH
    /// when `epoch` is older than the producer's here (a newer producer of the id fenced it).
    pub fn append_requested_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: storage::Marker,
        now_ms: i64,
    ) -> Result<i64, StorageError> {
        self.write_marker(producer_id, epoch, marker, now_ms, true)
    }

    /// Writes a marker, refused first when `fenced_if_older` and `epoch` is older than the
    /// producer's (checked under the same lock as the write), and wakes waiting fetches.
    fn write_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: storage::Marker,
        now_ms: i64,
        fenced_if_older: bool,
    ) -> Result<i64, StorageError> {
        self.check_not_lost()?;
        let offset = {
            let mut log = self.log();
            if fenced_if_older
                && let Some(current) = log.producer_epoch(producer_id)
                && epoch < current
            {
                return Err(StorageError::InvalidProducerEpoch {
                    producer_id,
                    epoch,
                    current,
                });
            }
            log.append_marker(producer_id, epoch, marker, now_ms)?
        };
        self.appended.notify_waiters();
        Ok(offset)
    }

    fn append_with(
        &self,
        records: &[u8],
        now_ms: i64,
        rewritten: bool,
    ) -> Result<storage::AppendInfo, StorageError> {
        self.check_not_lost()?;
        // Every record is read (compressed batches decompressed) before the lock is taken, so
        // that appends and fetches of the partition do not wait for the walk. A config change
        // between the two applies from the next append.
        let config = self.log().config().clone();
        storage::check_produce_records(records, &config, rewritten, now_ms)?;
        let run = || self.log().append_walked(records, now_ms, rewritten);
        let result = if matches!(config.flush, storage::FlushPolicy::Always) {
            crate::broker::waiting_for_disk(run)
        } else {
            run()
        };
        if result.as_ref().is_ok_and(|info| !info.duplicate) {
            self.appended.notify_waiters();
        }
        result
    }
}

pub struct Topic {
    pub name: Arc<str>,
    pub id: Uuid,
    pub replication_factor: i16,
    partitions: RwLock<Vec<Arc<Partition>>>,
    configs: RwLock<BTreeMap<String, String>>,
}

impl Topic {
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let parts = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        usize::try_from(index)
            .ok()
            .and_then(|i| parts.get(i).cloned())
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len() as i32
    }

    /// Per-topic overrides by Kafka config name.
    pub fn configs(&self) -> BTreeMap<String, String> {
        self.configs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The topics by name, and by id (Fetch v13+ names topics by id).
#[derive(Default)]
struct TopicMap {
    by_name: BTreeMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl TopicMap {
    fn insert(&mut self, name: String, topic: Arc<Topic>) {
        if let Some(old) = self.by_name.insert(name, topic.clone()) {
            self.by_id.remove(&old.id);
        }
        self.by_id.insert(topic.id, topic);
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Topic>> {
        let topic = self.by_name.remove(name)?;
        if self
            .by_id
            .get(&topic.id)
            .is_some_and(|t| Arc::ptr_eq(t, &topic))
        {
            self.by_id.remove(&topic.id);
        }
        Some(topic)
    }
}

pub struct Catalog {
    data_dir: PathBuf,
    defaults: edge_config::LogConfig,
    meta: MetaStore,
    topics: RwLock<TopicMap>,
    /// Brokers holding a copy of every topic: the only replication factor there is.
    replicas: i16,
    /// Woken when a topic or partitions are added (federation links pick them up at once).
    pub added: Notify,
    /// Held by every change of the topics (create, delete, more partitions) from its first look
    /// to its last rename, so that a topic made while one of its name is being deleted does
    /// not have its directories renamed and removed by that deletion.
    changing: Mutex<()>,
    /// The partitions' leader epoch: the one this broker leads at, stamped into every batch it
    /// appends ([`Catalog::lead_at_epoch`]), or, on a follower, its leader's as last heard;
    /// -1 before either is known.
    leader_epoch: std::sync::atomic::AtomicI32,
    /// Whether the logs stamp `leader_epoch` (this broker leads).
    leads: std::sync::atomic::AtomicBool,
    /// Whether the epochs of topics made while the broker runs come from the clock (a
    /// cluster's leader: `crate::broker`).
    clock_epochs: std::sync::atomic::AtomicBool,
    /// The leader epochs of topics deleted since the start, by name: a topic made again under
    /// the name leads at a later one ([`Catalog::new_topic_epoch`]).
    deleted_epochs: Mutex<HashMap<String, i32>>,
    /// [`Catalog::unknown_dirs_at_open`].
    unknown_dirs: usize,
}

impl Catalog {
    /// Opens every topic remembered in `meta`, recovering each partition's log.
    pub fn open(
        data_dir: &Path,
        defaults: edge_config::LogConfig,
        meta: MetaStore,
        replicas: i16,
        now_ms: i64,
    ) -> Result<Self, CatalogError> {
        let mut catalog = Catalog {
            data_dir: data_dir.to_path_buf(),
            defaults,
            meta,
            topics: RwLock::new(TopicMap::default()),
            replicas,
            added: Notify::new(),
            changing: Mutex::new(()),
            leader_epoch: std::sync::atomic::AtomicI32::new(-1),
            leads: std::sync::atomic::AtomicBool::new(false),
            clock_epochs: std::sync::atomic::AtomicBool::new(false),
            deleted_epochs: Mutex::new(HashMap::new()),
            unknown_dirs: 0,
        };
        let records = catalog.meta.topics()?;
        catalog.unknown_dirs = catalog.look_over_data_dir(&records);
        for (name, rec) in records {
            let id = Uuid::parse_str(&rec.id).unwrap_or_else(|_| Uuid::new_v4());
            let config = catalog.log_config(&rec.configs)?;
            let name: Arc<str> = name.into();
            let mut parts = Vec::new();
            for p in 0..rec.partitions {
                let dir = catalog.partition_dir(&name, p);
                if !dir.exists() {
                    tracing::warn!(dir = %dir.display(), topic = %name, partition = p, "a partition directory is missing: the partition starts again, empty, at offset 0 (its records are gone)");
                }
                parts.push(catalog.open_partition(&name, p, config.clone(), now_ms, None)?);
            }
            let topic = Topic {
                name: name.clone(),
                id,
                replication_factor: rec.replication_factor,
                partitions: RwLock::new(parts),
                configs: RwLock::new(rec.configs),
            };
            catalog.write().insert(name.to_string(), Arc::new(topic));
        }
        Ok(catalog)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TopicMap> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TopicMap> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir.join(format!("{topic}-{partition}"))
    }

    /// At start: finishes deletions a stop interrupted (directories set aside as
    /// `<dir>~deleted-<ms>`; `~` is never in a topic's name) after the metadata forgot their
    /// topic, and puts back those of a deletion the stop came before (the metadata still knows
    /// the topic: the deletion was never answered), and warns of partition directories
    /// the metadata does not know (a metadata database lost or replaced): they are left as they
    /// are, and a topic made again under their name sets them aside instead of reusing or
    /// deleting them; such a directory without a record (a creation a stop cut short) is
    /// removed. Returns how many directories holding records there are.
    fn look_over_data_dir(&self, known: &[(String, TopicRecord)]) -> usize {
        let known: std::collections::HashSet<String> = known
            .iter()
            .flat_map(|(name, rec)| (0..rec.partitions).map(move |p| format!("{name}-{p}")))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return 0;
        };
        let mut unknown = Vec::new();
        let mut empty = Vec::new();
        let mut set_aside_dirs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !path.is_dir() {
                continue;
            }
            if name.contains('~') {
                let deleted = name.rsplit_once("~deleted-").is_some_and(|(_, ms)| {
                    !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit())
                });
                let was = name.split_once('~').map_or("", |(dir, _)| dir);
                if deleted && known.contains(was) && !self.data_dir.join(was).exists() {
                    let back = self.data_dir.join(was);
                    match std::fs::rename(&path, &back) {
                        Ok(()) => {
                            tracing::warn!(dir = %back.display(), "a partition directory a stopped deletion had set aside is put back: the metadata still knows its topic")
                        }
                        Err(e) => {
                            tracing::warn!(dir = %path.display(), error = %e, "cannot put back a partition directory a stopped deletion had set aside")
                        }
                    }
                } else if deleted {
                    match std::fs::remove_dir_all(&path) {
                        Ok(()) => {
                            tracing::info!(dir = %path.display(), "removed the directory of a partition whose deletion a stop interrupted")
                        }
                        Err(e) => {
                            tracing::warn!(dir = %path.display(), error = %e, "cannot remove a deleted partition's directory")
                        }
                    }
                } else if name.contains("~orphaned-") {
                    set_aside_dirs.push(name);
                }
                continue;
            }
            let is_partition = name
                .rsplit_once('-')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_partition && !known.contains(&name) {
                if holds_segments(&path) {
                    unknown.push(name);
                } else {
                    // No record in it: a topic creation or partition increase a stop cut short
                    // before the metadata took it.
                    empty.push(name);
                    if let Err(e) = std::fs::remove_dir_all(&path) {
                        tracing::warn!(dir = %path.display(), error = %e, "cannot remove an empty partition directory the metadata does not know");
                    }
                }
            }
        }
        if !empty.is_empty() {
            empty.sort();
            tracing::info!(
                count = empty.len(),
                dirs = %empty.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
                "removed empty partition directories the metadata does not know (a topic creation a stop cut short)"
            );
        }
        if !set_aside_dirs.is_empty() {
            set_aside_dirs.sort();
            tracing::warn!(
                data_dir = %self.data_dir.display(),
                count = set_aside_dirs.len(),
                dirs = %set_aside_dirs.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
                "directories with records were set aside when topics were made again under their names: the broker does not read them; remove them once they are not needed"
            );
        }
        if unknown.is_empty() {
            return 0;
        }
        unknown.sort();
        const SHOWN: usize = 10;
        tracing::warn!(
            data_dir = %self.data_dir.display(),
            count = unknown.len(),
            dirs = %unknown.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "),
            "partition directories holding records are not in the metadata database (meta.redb lost or replaced?): they are left as they are, and a topic made under their name sets them aside as <dir>~orphaned-<ms>"
        );
        unknown.len()
    }

    /// Partition directories holding records that the metadata database did not know at start.
    pub fn unknown_dirs_at_open(&self) -> usize {
        self.unknown_dirs
    }

    /// Whether this broker holds any topic.
    pub fn holds_topics(&self) -> bool {
        !self.read().by_name.is_empty()
    }

    /// Makes sure a new partition starts empty: a directory already at its place (records of
    /// an earlier topic of the name that the metadata forgot, or that a stop interrupted the
    /// deletion of) is set aside as `<dir>~orphaned-<ms>`, never deleted.
    fn clear_place(&self, topic: &str, partition: i32, now_ms: i64) -> Result<(), CatalogError> {
        let dir = self.partition_dir(topic, partition);
        if !holds_segments(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        let aside = set_aside(&dir, "orphaned", now_ms).map_err(|e| StorageError::Io {
            path: dir.clone(),
            source: e,
        })?;
        tracing::warn!(dir = %dir.display(), kept_as = %aside.display(), "a directory with records was in the way of a new partition: it is kept aside, not deleted");
        Ok(())
    }

    /// Makes every partition a leader's at `epoch` (`PartitionLog::set_leader_epoch`), and
    /// every topic made from now on a leader's at a later one ([`Catalog::new_topic_epoch`]);
    /// with `clock`, at least the seconds since 2024 then (a cluster's leader).
    pub fn lead_at_epoch(&self, epoch: i32, clock: bool) {
        use std::sync::atomic::Ordering;
        // No partition is made meanwhile, unstamped and missed by the loop below.
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        self.leader_epoch.store(epoch, Ordering::SeqCst);
        self.clock_epochs.store(clock, Ordering::SeqCst);
        self.leads.store(true, Ordering::SeqCst);
        for topic in self.list() {
            for p in topic.partitions() {
                p.lead_at(epoch);
            }
        }
    }

    /// The epoch a topic `name` made now leads at, on a leader (`None` on a follower): later
    /// than the one a topic of that name deleted while the broker ran had, so that a client
    /// reading a topic deleted and made again under its name sees its leader epoch change and
    /// checks its position against the new topic (which sends it back to the start), as a
    /// topic made again in Kafka starts at another epoch. A broker alone counts on from its
    /// latest epoch; a cluster's leader takes the seconds since 2024 (rounded up), so that
    /// making many topics does not run its epochs ahead of the clock the other broker's start
    /// goes by (`crate::broker`). Kept in the metadata database first. Called with `changing`
    /// held.
    fn new_topic_epoch(&self, name: &str) -> Result<Option<i32>, CatalogError> {
        use std::sync::atomic::Ordering;
        if !self.leads.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let before = self
            .deleted_epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .unwrap_or(-1);
        let epoch = if self.clock_epochs.load(Ordering::SeqCst) {
            crate::broker::epoch_from_clock(crate::broker::now_ms())
        } else {
            self.leader_epoch().saturating_add(1)
        }
        .max(before.saturating_add(1));
        self.meta.raise_leader_epoch(epoch)?;
        self.leader_epoch.fetch_max(epoch, Ordering::SeqCst);
        Ok(Some(epoch))
    }

    /// On a follower: the leader's epoch (the largest of its partitions'), for the metrics.
    pub fn note_leaders_epoch(&self, epoch: i32) {
        self.leader_epoch
            .store(epoch, std::sync::atomic::Ordering::SeqCst);
    }

    /// The broker's leader epoch: the latest it leads a partition at, or, on a follower, the
    /// latest of its leader's as last read; -1 when not known yet.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The largest leader epoch in any batch of any partition (-1 for none).
    pub fn max_epoch_seen(&self) -> i32 {
        self.list()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| p.log().max_epoch_seen())
            .max()
            .unwrap_or(-1)
    }

    /// Opens partition `index` of `topic`, led at `epoch` if this broker leads it.
    fn open_partition(
        &self,
        topic: &Arc<str>,
        index: i32,
        config: storage::LogConfig,
        now_ms: i64,
        epoch: Option<i32>,
    ) -> Result<Arc<Partition>, CatalogError> {
        let mut log = PartitionLog::open(self.partition_dir(topic, index), config, now_ms)?;
        if let Some(epoch) = epoch {
            log.set_leader_epoch(epoch);
        }
        Ok(Arc::new(Partition {
            leader_epoch: std::sync::atomic::AtomicI32::new(epoch.unwrap_or(-1)),
            topic: topic.clone(),
            index,
            replica: ReplicaState::new(log.log_end_offset(), now_ms),
            log: Mutex::new(log),
            appended: Notify::new(),
        }))
    }

    /// The storage settings for a topic: the broker's `[log]` defaults with the topic's Kafka
    /// config overrides applied.
    pub fn log_config(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<storage::LogConfig, CatalogError> {
        let mut cfg = self.defaults.clone();
        for (key, value) in overrides {
            cfg.apply_topic_override(key, value)
                .map_err(|e| CatalogError::InvalidConfig {
                    key: key.clone(),
                    value: value.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(to_storage_config(&cfg))
    }

    /// The effective config of a topic in Kafka names and units (DescribeConfigs), each marked
    /// whether it is a per-topic override.
    pub fn effective_configs(&self, topic: &Topic) -> Vec<(String, String, bool)> {
        let overrides = topic.configs();
        let mut cfg = self.defaults.clone();
        for (k, v) in &overrides {
            let _ = cfg.apply_topic_override(k, v);
        }
        cfg.to_topic_configs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v, overrides.contains_key(k)))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().by_name.get(name).cloned()
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.read().by_id.get(&id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.read().by_name.values().cloned().collect()
    }

    /// Brokers holding a copy of every topic (1 for a broker alone).
    pub fn replicas(&self) -> i16 {
        self.replicas
    }

    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        now_ms: i64,
    ) -> Result<Arc<Topic>, CatalogError> {
        if replication_factor != self.replicas {
            return Err(CatalogError::InvalidReplicationFactor {
                given: replication_factor,
                brokers: self.replicas,
            });
        }
        self.create(name, None, partitions, configs, validate_only, now_ms)
    }

    /// A follower's copy of a topic of the leader, with the leader's id.
    pub fn create_replica_topic(
        &self,
        name: &str,
        id: Uuid,
        partitions: i32,
        configs: BTreeMap<String, String>,
        now_ms: i64,
    ) -> Result<Arc<Topic>, CatalogError> {
        self.create(name, Some(id), partitions, configs, false, now_ms)
    }

    fn create(
        &self,
        name: &str,
        id: Option<Uuid>,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
        now_ms: i64,
    ) -> Result<Arc<Topic>, CatalogError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let replication_factor = self.replicas;
        validate_topic_name(name)?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(CatalogError::InvalidPartitions {
                count: partitions,
                reason: format!("allowed 1..={MAX_PARTITIONS}"),
            });
        }
        let config = self.log_config(&configs)?;
        // A follower copies what its leader took, whatever its own count says.
        if id.is_none() {
            self.room_for(partitions)?;
        }
        // Checked and made under `changing` only, so that clients of other topics are not held
        // up while thousands of partitions are opened; the map is locked to add it. Sound
        // because every insertion into the map is made under `changing`.
        {
            let topics = self.read();
            if topics.by_name.contains_key(name) {
                return Err(CatalogError::TopicExists(name.to_string()));
            }
            // As in Kafka: names that differ only in '.' against '_' would share metric names.
            let folded = |n: &str| n.replace('.', "_");
            if let Some(existing) = topics.by_name.keys().find(|t| folded(t) == folded(name)) {
                return Err(CatalogError::TopicCollides {
                    name: name.to_string(),
                    existing: existing.to_string(),
                });
            }
        }
        // The epoch it leads at, kept in the metadata database before the topic is made;
        // nothing else makes or deletes a topic meanwhile (`changing`).
        let epoch = match validate_only {
            true => None,
            false => self.new_topic_epoch(name)?,
        };
        let name: Arc<str> = name.into();
        let id = id.unwrap_or_else(Uuid::new_v4);
        if validate_only {
            return Ok(Arc::new(Topic {
                name,
                id,
                replication_factor,
                partitions: RwLock::new(Vec::new()),
                configs: RwLock::new(configs),
            }));
        }
        let mut parts = Vec::with_capacity(partitions as usize);
        // The directories made for it, removed again if the topic cannot be made (a full disk,
        // too many open files): a failed CreateTopics leaves nothing behind.
        let mut made = Vec::new();
        let mut make = || -> Result<(), CatalogError> {
            for p in 0..partitions {
                // A directory left over from an earlier topic of the same name would resurrect
                // its records; a new topic starts empty.
                self.clear_place(&name, p, now_ms)?;
                made.push(self.partition_dir(&name, p));
                let partition = self.open_partition(&name, p, config.clone(), now_ms, epoch)?;
                partition.replica.made_at(now_ms);
                parts.push(partition);
            }
            let record = TopicRecord {
                id: id.simple().to_string(),
                partitions,
                replication_factor,
                configs: configs.clone(),
            };
            Ok(self.meta.put_topic(&name, &record)?)
        };
        if let Err(e) = make() {
            drop(parts);
            for dir in made {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e);
        }
        self.opened(partitions);
        let topic = Arc::new(Topic {
            name: name.clone(),
            id,
            replication_factor,
            partitions: RwLock::new(parts),
            configs: RwLock::new(configs),
        });
        self.write().insert(name.to_string(), topic.clone());
        self.added.notify_waiters();
        tracing::info!(topic = %name, partitions, "topic created");
        Ok(topic)
    }

    /// Refuses `partitions` new partitions when they would leave less than a tenth of the
    /// process's open-files limit free (`storage::open_files`: a request auto-creating
    /// thousands of topics, say, would otherwise leave the broker unable to accept a
    /// connection, then to open its partitions at the next start). One file a partition.
    fn room_for(&self, partitions: i32) -> Result<(), CatalogError> {
        let wanted = u64::try_from(partitions).unwrap_or(0);
        storage::open_files::room_for(wanted).map_err(|no| {
            let refused = CatalogError::OpenFiles {
                partitions,
                open: no.open,
                limit: no.limit,
                kept: no.kept,
            };
            within_budget!(
                OPEN_FILES_REFUSALS,
                warn,
                "new partitions refused: {refused}"
            );
            refused
        })
    }

    /// Counts `partitions` made as files opened.
    fn opened(&self, partitions: i32) {
        storage::open_files::opened(u64::try_from(partitions).unwrap_or(0));
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), CatalogError> {
        let changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .write()
            .remove(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        if let Some(epoch) = topic.partitions().iter().map(|p| p.leader_epoch()).max() {
            let mut deleted = self
                .deleted_epochs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let kept = deleted.entry(name.to_string()).or_insert(epoch);
            *kept = (*kept).max(epoch);
        }
        // Every directory is set aside before the metadata forgets the topic, so that a stop
        // at any point leaves either the topic whole or directories the next start finishes
        // deleting, never directories taken for partitions nobody knows.
        let now = crate::broker::now_ms();
        let doomed: Vec<(PathBuf, PathBuf)> = topic
            .partitions()
            .iter()
            .map(|p| {
                let dir = self.partition_dir(name, p.index);
                let aside = set_aside(&dir, "deleted", now).unwrap_or_else(|_| dir.clone());
                (dir, aside)
            })
            .collect();
        if let Err(e) = self.meta.delete_topic(name) {
            for (dir, aside) in &doomed {
                let _ = std::fs::rename(aside, dir);
            }
            self.write().insert(name.to_string(), topic);
            return Err(e.into());
        }
        // Renamed and forgotten: a topic of the name may be made again while they go.
        drop(changing);
        for (_, aside) in doomed {
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                tracing::warn!(dir = %aside.display(), error = %e, "cannot remove partition directory");
            }
        }
        // Wake fetchers so they notice the topic is gone.
        for p in topic.partitions() {
            p.appended.notify_waiters();
        }
        tracing::info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Grows topic `name` to `count` partitions. `replica`: a follower copying its leader's
    /// count, which the open-files guard does not hold back.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
        replica: bool,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count();
        if count <= current || count > MAX_PARTITIONS {
            let reason = if count <= current {
                format!("topic {name} has {current}: partitions can be added, not removed")
            } else {
                format!("a topic has at most {MAX_PARTITIONS}")
            };
            return Err(CatalogError::InvalidPartitions { count, reason });
        }
        if !replica {
            self.room_for(count - current)?;
        }
        if validate_only {
            return Ok(());
        }
        let config = self.log_config(&topic.configs())?;
        // New partitions lead at their topic's epoch.
        let epoch = match self.leads.load(std::sync::atomic::Ordering::SeqCst) {
            true => match topic.partitions().first().map(|p| p.leader_epoch()) {
                Some(epoch) if epoch >= 0 => Some(epoch),
                _ => self.new_topic_epoch(name)?,
            },
            false => None,
        };
        let mut added = Vec::new();
        for p in current..count {
            self.clear_place(name, p, now_ms)?;
            let partition = self.open_partition(&topic.name, p, config.clone(), now_ms, epoch)?;
            partition.replica.made_at(now_ms);
            added.push(partition);
        }
        self.meta.put_topic(
            name,
            &TopicRecord {
                id: topic.id.simple().to_string(),
                partitions: count,
                replication_factor: topic.replication_factor,
                configs: topic.configs(),
            },
        )?;
        topic
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(added);
        self.opened(count - current);
        self.added.notify_waiters();
        Ok(())
    }

    /// Replaces (`incremental == false`) or updates a topic's overrides. Under `changing`, as
    /// every other change of the topics: changes sent at once build on each other (none is
    /// lost), and a topic deleted meanwhile is not written back.
    pub fn alter_configs(
        &self,
        name: &str,
        changes: Vec<ConfigChange>,
        incremental: bool,
        validate_only: bool,
    ) -> Result<(), CatalogError> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let mut next = if incremental {
            topic.configs()
        } else {
            BTreeMap::new()
        };
        for change in changes {
            match change {
                ConfigChange::Set(k, v) => {
                    next.insert(k, v);
                }
                ConfigChange::Delete(k) => {
                    next.remove(&k);
                }
                ConfigChange::Append(k, items) => {
                    self.edit_list_config(&mut next, k, &items, true)?
                }
                ConfigChange::Subtract(k, items) => {
                    self.edit_list_config(&mut next, k, &items, false)?
                }
            }
        }
        let config = self.log_config(&next)?;
        if validate_only {
            return Ok(());
        }
        self.meta.put_topic(
            name,
            &TopicRecord {
                id: topic.id.simple().to_string(),
                partitions: topic.partition_count(),
                replication_factor: topic.replication_factor,
                configs: next.clone(),
            },
        )?;
        for p in topic.partitions() {
            p.log().set_config(config.clone());
        }
        *topic.configs.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// APPEND (`append`) or SUBTRACT `items` to list config `key` in `overrides`: to its value
    /// there, else the broker's.
    fn edit_list_config(
        &self,
        overrides: &mut BTreeMap<String, String>,
        key: String,
        items: &str,
        append: bool,
    ) -> Result<(), CatalogError> {
        let current = match overrides.get(&key) {
            Some(v) => v.clone(),
            None => self
                .defaults
                .to_topic_configs()
                .into_iter()
                .find_map(|(k, v)| (k == key).then_some(v))
                .unwrap_or_default(),
        };
        match edit_list(&current, items, append) {
            Some(edited) => {
                overrides.insert(key, edited);
                Ok(())
            }
            None => Err(CatalogError::InvalidConfig {
                reason: format!("subtracting {items} from {current} would leave {key} empty"),
                key,
                value: items.to_string(),
            }),
        }
    }
}

/// One change of a topic's config overrides (AlterConfigs, IncrementalAlterConfigs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set(String, String),
    /// Back to the broker's value.
    Delete(String),
    /// Items added to a list config (`cleanup.policy`), each once.
    Append(String, String),
    /// Items taken out of a list config.
    Subtract(String, String),
}

/// The topic configs Kafka types INT, whose values a client may set up to `i32::MAX`.
const KAFKA_INT_CONFIGS: [&str; 3] = ["segment.bytes", "max.message.bytes", "index.interval.bytes"];

/// Why a client may not set topic config `name` to `value`: a number past a Kafka INT config's
/// range (the broker's own ranges reach 2 GiB, one more, which stays readable where an earlier
/// build stored it). Checked where clients create topics and alter configs; a follower copies
/// its leader's values as they are.
pub fn kafka_int_refusal(name: &str, value: &str) -> Option<CatalogError> {
    let n: i64 = value.trim().parse().ok()?;
    (KAFKA_INT_CONFIGS.contains(&name) && n > i64::from(i32::MAX)).then(|| {
        CatalogError::InvalidConfig {
            key: name.to_string(),
            value: value.to_string(),
            reason: format!("not a number of type INT: at most {}", i32::MAX),
        }
    })
}

/// `current` (comma-separated) with the items of `value` appended (each once) or removed;
/// `None` when nothing is left.
fn edit_list(current: &str, value: &str, append: bool) -> Option<String> {
    let items = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut list = items(current);
    for item in items(value) {
        if append {
            if !list.contains(&item) {
                list.push(item);
            }
        } else {
            list.retain(|i| *i != item);
        }
    }
    (!list.is_empty()).then(|| list.join(","))
}

/// Whether a topic of this name can be made: Kafka's rule (1..=249 of `[a-zA-Z0-9._-]`, not
/// `.` or `..`), and not the name of one of Kafka's internal topics.
pub fn validate_topic_name(name: &str) -> Result<(), CatalogError> {
    let bad = |reason| {
        Err(CatalogError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })
    };
    check_topic_name_syntax(name)?;
    if name == "__consumer_offsets" || name == "__transaction_state" {
        return bad("the name of one of Kafka's internal topics");
    }
    Ok(())
}

/// Kafka's rule for the characters and length of a topic's name (`Topic.validate`), which
/// Kafka's internal topics' names keep: whether a topic of the name could be made at all is
/// [`validate_topic_name`].
pub fn check_topic_name_syntax(name: &str) -> Result<(), CatalogError> {
    let bad = |reason| {
        Err(CatalogError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_TOPIC_NAME {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Maps the configuration crate's `[log]` section to the storage layer's settings.
pub fn to_storage_config(cfg: &edge_config::LogConfig) -> storage::LogConfig {
    use edge_config::FlushPolicy as F;
    storage::LogConfig {
        segment_bytes: cfg.segment_bytes,
        segment_age_ms: cfg.segment_age.as_millis() as i64,
        retention_ms: cfg.retention.map(|d| d.as_millis() as i64),
        retention_bytes: cfg.retention_bytes,
        index_interval_bytes: cfg.index_interval_bytes,
        flush: match cfg.flush {
            F::Never => storage::FlushPolicy::Never,
            F::Interval => storage::FlushPolicy::Interval(cfg.flush_interval),
            F::Always => storage::FlushPolicy::Always,
        },
        compact: cfg.cleanup_policy.compact(),
        delete: cfg.cleanup_policy.delete(),
        log_append_time: cfg.timestamp_type == edge_config::TimestampType::LogAppendTime,
        max_message_bytes: cfg.max_message_bytes,
        delete_retention_ms: cfg.delete_retention.as_millis() as i64,
        min_cleanable_dirty_ratio: cfg.min_cleanable_dirty_ratio,
        timestamp_before_max_ms: cfg.timestamp_before_max.map(millis),
        timestamp_after_max_ms: cfg.timestamp_after_max.map(millis),
        min_insync_replicas: cfg.min_insync_replicas,
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_items_are_appended_once_and_subtracted() {
        assert_eq!(
            edit_list("delete", "compact", true).as_deref(),
            Some("delete,compact")
        );
        assert_eq!(
            edit_list("delete", "delete", true).as_deref(),
            Some("delete")
        );
        assert_eq!(
            edit_list("compact,delete", "delete", false).as_deref(),
            Some("compact")
        );
        assert_eq!(edit_list("compact", "compact", false), None);
        assert_eq!(
            edit_list("compact", "delete, compact", true).as_deref(),
            Some("compact,delete")
        );
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("sensors.temp_1-a").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "tópico",
            "__consumer_offsets",
            "__transaction_state",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }

    /// Records the metadata does not know (its database lost) are never deleted: a topic made
    /// again under their name sets them aside; a deletion a stop interrupted is finished at the
    /// next start.
    #[test]
    fn records_the_metadata_does_not_know_are_set_aside_never_deleted() {
        use crate::storage::testutil::{encode_batch, kv};
        const NOW: i64 = 1_700_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let open = |meta: &str| {
            let meta = MetaStore::open(&dir.path().join(meta)).unwrap();
            Catalog::open(&data, edge_config::LogConfig::default(), meta, 1, NOW).unwrap()
        };
        let entries = |prefix: &str| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&data)
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect();
            names.sort();
            names
        };
        let catalog = open("meta-1.redb");
        let topic = catalog
            .create_topic("k", 2, 1, BTreeMap::new(), false, NOW)
            .unwrap();
        let none = kafka_protocol::records::Compression::None;
        let batch = encode_batch(&[kv("a", "1", NOW)], none, -1, -1, -1);
        topic.partition(0).unwrap().append(&batch, NOW).unwrap();
        drop((topic, catalog));

        // Another metadata database over the same data dir: k is unknown, its records stay;
        // its partition without a record goes (a creation a stop cut short looks the same).
        let catalog = open("meta-2.redb");
        assert!(catalog.get("k").is_none());
        assert_eq!(entries("k-"), ["k-0"]);
        let topic = catalog
            .create_topic("k", 2, 1, BTreeMap::new(), false, NOW)
            .unwrap();
        assert_eq!(topic.partition(0).unwrap().log().log_end_offset(), 0);
        let aside = entries("k-0~orphaned-");
        assert_eq!(aside.len(), 1, "{:?}", entries(""));
        assert!(holds_segments(&data.join(&aside[0])));

        // Deleting leaves nothing of the topic behind.
        drop(topic);
        catalog.delete_topic("k").unwrap();
        assert_eq!(entries("k-"), aside);
        // A deletion a stop interrupted after the metadata forgot the topic is finished at the
        // next start; one it interrupted before (the topic still known) is undone.
        let interrupted = data.join("gone-0~deleted-5");
        std::fs::create_dir_all(&interrupted).unwrap();
        std::fs::write(interrupted.join("00000000000000000000.log"), b"x").unwrap();
        let kept = catalog
            .create_topic("kept", 1, 1, BTreeMap::new(), false, NOW)
            .unwrap();
        kept.partition(0).unwrap().append(&batch, NOW).unwrap();
        drop((kept, catalog));
        std::fs::rename(data.join("kept-0"), data.join("kept-0~deleted-6")).unwrap();
        let catalog = open("meta-2.redb");
        assert!(!interrupted.exists());
        let kept = catalog.get("kept").unwrap().partition(0).unwrap();
        assert_eq!(kept.log().log_end_offset(), 1, "put back with its record");
        assert!(!data.join("kept-0~deleted-6").exists());
        assert_eq!(entries("k-"), aside, "kept aside across starts");

        // A topic that cannot be made (here a file is in the way of its second partition)
        // leaves no directory behind.
        std::fs::write(data.join("t-1"), b"").unwrap();
        let failed = catalog.create_topic("t", 3, 1, BTreeMap::new(), false, NOW);
        assert!(failed.is_err());
        assert_eq!(entries("t-"), ["t-1"], "only the file that was in the way");
        assert!(catalog.get("t").is_none());
    }
}
