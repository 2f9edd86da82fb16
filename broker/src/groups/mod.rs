//! The consumer-group coordinator: Kafka's classic group protocol (clients assign partitions)
//! and KIP-848's consumer protocol (the coordinator assigns).
//!
//! # Map
//! - `mod.rs` (this file): [`GroupConfig`], [`Clock`], and [`GroupCoordinator`], the cheap `Clone`
//!   handle every connection shares. It owns the lock, the offset store calls and the timers.
//! - [`types`]: the plain request/response structs the protocol layer converts Kafka messages to
//!   and from (JoinGroup v0-v9, SyncGroup v0-v5, Heartbeat v0-v4, LeaveGroup v0-v5, OffsetCommit
//!   v0-v9, OffsetFetch v0-v9, ListGroups v0-v5, DescribeGroups v0-v5, DeleteGroups v0-v2).
//! - `group.rs`: one group's state machine, no locks, no I/O, time passed in.
//! - [`consumer`]: a group's members under the consumer protocol (ConsumerGroupHeartbeat v0-v1,
//!   ConsumerGroupDescribe v0-v1): epochs, the target assignment, reconciliation. A group is of
//!   one protocol at a time; its offsets are the same either way.
//! - [`offsets`]: [`OffsetStore`] (the broker implements it over redb) and [`MemoryOffsetStore`]:
//!   committed offsets, and each group's members ([`Membership`] after a classic group's last
//!   completed rebalance; a consumer-protocol group as [`consumer::ConsumerGroup::save`] writes
//!   it), saved as they change and restored at start so that members go on.
//! - [`config`]: a group's own configs (Kafka's group configs: `consumer.session.timeout.ms`,
//!   `consumer.heartbeat.interval.ms`), checked against [`ConsumerBounds`].
//! - [`error`]: [`GroupError`] with [`GroupError::kafka_code`].
//!
//! # Concurrency
//! One `std::sync::Mutex` guards all groups; it is never held across an `.await` or a store call.
//! `join` and `sync` register a oneshot sender in the group and await the receiver after the lock
//! is released. A client that disconnects drops its receiver: the send at completion fails and
//! is ignored; the member then expires by session timeout. Offset store calls are serialized by a
//! second mutex (`store_lock`, always taken before the group lock) so that the store and the
//! in-memory offsets see commits and deletes in the same order. A third (`group_configs`, each
//! group's own configs) is taken alone, or after `store_lock`, and never with the group lock.
//!
//! # Time
//! All deadlines are [`tokio::time::Instant`]s read from a [`Clock`]: the tokio clock in
//! production (so `tokio::time::pause` works where test-util is enabled), or a [`ManualClock`]
//! that tests advance by hand before calling [`GroupCoordinator::tick`]. Deadlines are applied
//! lazily before each operation on a group and by `tick`, which [`GroupCoordinator::spawn_timers`]
//! calls every 100 ms.

pub mod config;
pub mod consumer;
pub mod error;
mod group;
pub mod offsets;
pub mod types;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

pub use config::{ConsumerBounds, GroupConfigError};
pub use consumer::{
    Assignment, ConsumerGroupDescription, ConsumerHeartbeat, ConsumerHeartbeatReply,
    ConsumerMemberDescription, ConsumerSettings, TopicView,
};
pub use error::{GroupError, StartError, StoreError};
use group::{Group, Outcome};
pub use offsets::{
    CommittedOffset, MemberRecord, Membership, MemoryOffsetStore, OFFSET_METADATA_MAX_BYTES,
    OffsetStore,
};
pub use types::*;

use crate::log_budget::client_text;

/// How often the timer task applies deadlines.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// How often a live group's offsets of topics it no longer subscribes to are looked at (Kafka's
/// `offsets.retention.check.interval.ms` is 10 minutes).
const UNSUBSCRIBED_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How long an Empty group without offsets is kept before it is forgotten (Kafka removes such
/// groups on its offset-expiration pass, every 10 minutes by default).
pub const EMPTY_GROUP_RETENTION: Duration = Duration::from_secs(600);

/// Coordinator settings (Kafka's `group.*` and `offsets.retention.minutes` broker configs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Smallest session timeout a member may ask for (Kafka default 6 s).
    pub min_session_timeout: Duration,
    /// Largest session timeout a member may ask for (Kafka default 30 min).
    pub max_session_timeout: Duration,
    /// How long the first rebalance of an empty group waits for more members, extended by each
    /// new member up to the rebalance timeout (Kafka default 3 s; 0 completes at once).
    pub initial_rebalance_delay: Duration,
    /// How long the offsets of an Empty group are kept after it became empty and after its last
    /// commit, and in a Stable group of consumers those of topics no member subscribes to any
    /// more after their commit (KIP-496) (Kafka default 7 days). Zero keeps them forever.
    pub offsets_retention: Duration,
    /// Session timeout and heartbeat interval of the consumer protocol's members (KIP-848).
    pub consumer: ConsumerSettings,
    /// The values a group's own configs may give those two ([`config`]); `consumer`'s are
    /// allowed whatever these say.
    pub consumer_bounds: ConsumerBounds,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            consumer: ConsumerSettings::default(),
            consumer_bounds: ConsumerBounds::default(),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            initial_rebalance_delay: Duration::from_secs(3),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Where the coordinator reads the time.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `tokio::time::Instant::now()` (follows `tokio::time::pause`/`advance` in tests that enable
    /// tokio's test-util).
    #[default]
    Tokio,
    /// A clock that moves only when told to.
    Manual(ManualClock),
}

impl Clock {
    /// The current time.
    pub fn now(&self) -> Instant {
        match self {
            Clock::Tokio => Instant::now(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// The wall-clock time, milliseconds since the Unix epoch (offset commit timestamps).
    pub fn wall_ms(&self) -> i64 {
        match self {
            Clock::Tokio => wall_clock_ms(),
            Clock::Manual(m) => m.wall_ms(),
        }
    }
}

/// A hand-driven clock for deterministic tests; clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
    /// When the clock was made, on both clocks: its wall time moves with it.
    origin: (Instant, i64),
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock stopped at the current instant.
    pub fn new() -> Self {
        let now = Instant::now();
        ManualClock {
            now: Arc::new(Mutex::new(now)),
            origin: (now, wall_clock_ms()),
        }
    }

    /// The clock's time.
    pub fn now(&self) -> Instant {
        *lock(&self.now)
    }

    /// The clock's wall time, milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> i64 {
        let (instant, wall) = self.origin;
        wall + self.now().duration_since(instant).as_millis() as i64
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *lock(&self.now) += by;
    }
}

/// The shared coordinator handle. Cloning is cheap; all clones see the same groups.
#[derive(Clone)]
pub struct GroupCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    config: GroupConfig,
    store: Arc<dyn OffsetStore>,
    clock: Clock,
    groups: Mutex<HashMap<String, Group>>,
    /// Each group's own configs ([`config`]), of the groups that have any; a group need not
    /// exist to have them. Never locked together with `groups`.
    group_configs: Mutex<HashMap<String, config::Overrides>>,
    /// Serializes store calls with the in-memory offset updates that follow them.
    store_lock: Mutex<()>,
    /// Saves of consumer-protocol groups asked for, and how many of them a save has covered:
    /// a caller's change is in memory before it takes its ticket, and a save covers every
    /// ticket taken before it looked at the groups, so a caller queued behind a save that
    /// started after its ticket has nothing left to write (group commit: a burst of joins
    /// serializes a large group once per save, not once per join).
    consumer_save_tickets: std::sync::atomic::AtomicU64,
    consumer_saved_through: std::sync::atomic::AtomicU64,
    /// When [`GroupCoordinator::expire_unsubscribed_offsets`] runs next.
    next_unsubscribed_check: Mutex<Instant>,
    /// When a failed membership save was last logged: the save is tried again every tick, the
    /// warning written at most every [`STORE_WARNING_EVERY`].
    store_warned: Mutex<Option<std::time::Instant>>,
    /// Changes of committed offsets (commits, deletions, expiries) counted, with the groups
    /// of the last ones, and told as they happen: a cluster's leader has its followers copy
    /// them before a commit is answered (`crate::replication`).
    offsets_changes: std::sync::atomic::AtomicU64,
    recent_changes: Mutex<RecentChanges>,
    offsets_changed: tokio::sync::Notify,
    /// Commits stored lazily ([`GroupCoordinator::commit_offsets_lazily`]), counted: each
    /// one's count is its ticket, taken once it is in the store.
    lazy_commits: std::sync::atomic::AtomicU64,
    /// How far the lazy commits are durable, and told as a sync ends.
    syncs: Mutex<Syncs>,
    synced: tokio::sync::Notify,
}

/// Where the syncs of lazy commits stand (group commit: one write to the disk for every
/// commit made while the last one ran).
#[derive(Debug, Default)]
struct Syncs {
    /// Lazy commits up to this ticket were synced, or lost (below).
    through: u64,
    /// Whether a sync runs now.
    running: bool,
    /// Tickets whose sync failed, with why: the last few ranges.
    lost: std::collections::VecDeque<(u64, u64, StoreError)>,
}

/// Syncs the store, which makes every lazy commit counted before it durable, and tells the
/// waiters ([`GroupCoordinator::durable`]).
fn sync_lazy_commits(inner: &Inner) {
    let covers = inner.lazy_commits.load(Ordering::Acquire);
    // However it ends, it says so: a sync that never cleared `running` would hold every
    // commit after it.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.store.sync()))
        .unwrap_or_else(|_| Err(StoreError::new("the sync to disk panicked")));
    let mut syncs = lock(&inner.syncs);
    if let Err(e) = result {
        warn!(error = %e, "offset commits could not be made durable: they are answered with the error");
        let from = syncs.through + 1;
        if syncs.lost.len() == 16 {
            syncs.lost.pop_front();
        }
        syncs.lost.push_back((from, covers, e));
    }
    syncs.through = syncs.through.max(covers);
    syncs.running = false;
    drop(syncs);
    inner.synced.notify_waiters();
}

/// The groups of the last changes of committed offsets, with each change's count.
#[derive(Debug, Default)]
struct RecentChanges {
    groups: std::collections::VecDeque<(u64, String)>,
    /// Changes up to this count are not all listed (dropped from the list, or a change of
    /// every group's offsets).
    unlisted_through: u64,
}

/// How many changes [`RecentChanges`] lists.
const RECENT_CHANGES: usize = 1024;

/// The longest group id a group may be made with, in bytes: Kafka's group ids are stored and
/// listed (ListGroups v0-v2, OffsetFetch and DescribeGroups before their flexible versions) as
/// strings of a 2-byte length, so a longer one could never be said to every client.
pub const GROUP_ID_MOST_BYTES: usize = i16::MAX as usize;

/// Whether a group may be made with this id: not empty, and at most [`GROUP_ID_MOST_BYTES`].
pub fn group_id_makeable(id: &str) -> bool {
    !id.is_empty() && id.len() <= GROUP_ID_MOST_BYTES
}

const STORE_WARNING_EVERY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random UUID-formatted string for member ids (not cryptographic; ids are not secrets).
fn uuid_like() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    let mut h = state.build_hasher();
    h.write_u64(n);
    let a = h.finish();
    h.write_u64(!n);
    let b = h.finish();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

impl GroupCoordinator {
    /// Builds the coordinator on the tokio clock and loads every committed offset from `store`.
    pub fn new(config: GroupConfig, store: Arc<dyn OffsetStore>) -> Result<Self, StartError> {
        Self::with_clock(config, store, Clock::Tokio)
    }

    /// As [`new`](Self::new), reading time from `clock`.
    pub fn with_clock(
        config: GroupConfig,
        store: Arc<dyn OffsetStore>,
        clock: Clock,
    ) -> Result<Self, StartError> {
        if config.min_session_timeout > config.max_session_timeout {
            return Err(StartError::Config(format!(
                "min_session_timeout ({:?}) is greater than max_session_timeout ({:?})",
                config.min_session_timeout, config.max_session_timeout
            )));
        }
        let now = clock.now();
        let bounds = config.consumer_bounds.holding(config.consumer);
        let group_configs: HashMap<String, config::Overrides> = store
            .load_group_configs()?
            .into_iter()
            .filter_map(|(group, saved)| {
                let (fitted, changed) = config::evaluate(&saved, config.consumer, bounds);
                if !changed.is_empty() {
                    warn!(group = %client_text(&group), changes = %changed.join(", "),
                        "the group's own configs are out of the bounds the broker now allows; it runs with them fitted");
                }
                (!fitted.is_empty()).then_some((group, fitted))
            })
            .collect();
        let settings_of = |group: &str| {
            group_configs
                .get(group)
                .map_or(config.consumer, |o| config::effective(o, config.consumer))
        };
        let mut groups: HashMap<String, Group> = HashMap::new();
        for (group, topic, partition, offset) in store.load()? {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group, config.initial_rebalance_delay, now));
            g.offsets
                .entry(topic)
                .or_default()
                .insert(partition, offset);
        }
        for (group, membership) in store.load_memberships()? {
            groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group, config.initial_rebalance_delay, now))
                .restore(membership, now);
        }
        for (group, saved) in store.load_consumer_groups()? {
            let Some(consumer) =
                consumer::ConsumerGroup::restore(group.clone(), &saved, settings_of(&group), now)
            else {
                // Its members join again, as after a restart without it.
                warn!(group = %client_text(&group), "unreadable consumer-protocol group; ignored");
                continue;
            };
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group, config.initial_rebalance_delay, now));
            if !consumer.is_empty() && !g.members.is_empty() {
                // Both saved, non-empty: a stop while a member of the consumer protocol took
                // the classic group over; the classic membership is the older one.
                g.dismiss(now);
            }
            if g.members.is_empty() {
                g.consumer = consumer;
            } else {
                // The group is a classic one now: what was saved of it goes at the first tick.
                g.consumer.mark_dirty();
            }
        }
        Ok(GroupCoordinator {
            inner: Arc::new(Inner {
                config,
                store,
                clock,
                groups: Mutex::new(groups),
                group_configs: Mutex::new(group_configs),
                store_lock: Mutex::new(()),
                consumer_save_tickets: Default::default(),
                consumer_saved_through: Default::default(),
                next_unsubscribed_check: Mutex::new(now),
                store_warned: Mutex::new(None),
                offsets_changes: Default::default(),
                recent_changes: Mutex::default(),
                offsets_changed: tokio::sync::Notify::new(),
                lazy_commits: Default::default(),
                syncs: Mutex::default(),
                synced: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &GroupConfig {
        &self.inner.config
    }

    fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    /// The session timeout and heartbeat interval `group_id`'s members of the consumer protocol
    /// run with: its own configs over the coordinator's.
    pub fn consumer_settings(&self, group_id: &str) -> ConsumerSettings {
        let own = self.inner.config.consumer;
        lock(&self.inner.group_configs)
            .get(group_id)
            .map_or(own, |o| config::effective(o, own))
    }

    /// The configs `group_id` sets itself: key -> milliseconds (DescribeConfigs).
    pub fn group_config(&self, group_id: &str) -> config::Overrides {
        lock(&self.inner.group_configs)
            .get(group_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every group that sets configs of its own, with them.
    pub fn group_configs(&self) -> Vec<(String, config::Overrides)> {
        let mut all: Vec<_> = lock(&self.inner.group_configs)
            .iter()
            .map(|(g, o)| (g.clone(), o.clone()))
            .collect();
        all.sort();
        all
    }

    /// Changes `group_id`'s own configs (IncrementalAlterConfigs; AlterConfigs with `replace`):
    /// checked as [`config::apply`] says, saved, then in force at each member's next heartbeat.
    /// With `validate_only`, checked and nothing changed. Returns whether anything changed.
    pub fn alter_group_config(
        &self,
        group_id: &str,
        changes: &[(String, Option<String>)],
        replace: bool,
        validate_only: bool,
    ) -> Result<bool, GroupConfigError> {
        if group_id.is_empty() {
            return Err(GroupConfigError::InvalidRequest(
                "a group config needs a group id".to_string(),
            ));
        }
        let own = self.inner.config.consumer;
        let bounds = self.inner.config.consumer_bounds.holding(own);
        let _store_guard = lock(&self.inner.store_lock);
        let current = self.group_config(group_id);
        let next = config::apply(&current, changes, replace, own, bounds)?;
        if validate_only || next == current {
            return Ok(false);
        }
        self.set_group_config(group_id, next)
            .map(|()| true)
            .map_err(|e| GroupConfigError::Store(e.message))
    }

    /// Makes `group_id`'s own configs `overrides` (a follower copying its leader's), fitted to
    /// this coordinator's bounds ([`config::evaluate`]: the leader checked them against its
    /// own).
    pub fn replace_group_config(
        &self,
        group_id: &str,
        overrides: config::Overrides,
    ) -> Result<(), StoreError> {
        let own = self.inner.config.consumer;
        let bounds = self.inner.config.consumer_bounds.holding(own);
        let (overrides, _) = config::evaluate(&overrides, own, bounds);
        let _store_guard = lock(&self.inner.store_lock);
        if self.group_config(group_id) == overrides {
            return Ok(());
        }
        self.set_group_config(group_id, overrides)
    }

    /// Saves, then keeps, `group_id`'s overrides (none: forgotten). Called with `store_lock`.
    fn set_group_config(
        &self,
        group_id: &str,
        overrides: config::Overrides,
    ) -> Result<(), StoreError> {
        self.inner.store.save_group_config(group_id, &overrides)?;
        let mut all = lock(&self.inner.group_configs);
        if overrides.is_empty() {
            all.remove(group_id);
        } else {
            all.insert(group_id.to_string(), overrides);
        }
        Ok(())
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        lock(&self.inner.groups)
    }

    /// How many changes of committed offsets there have been since start.
    pub fn offsets_changes(&self) -> u64 {
        self.inner.offsets_changes.load(Ordering::Acquire)
    }

    /// Completes at the next change of committed offsets.
    pub fn offsets_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.offsets_changed.notified()
    }

    /// The groups whose committed offsets changed after the first `since` changes, if they
    /// are still listed and no more than `most`.
    pub fn groups_changed_since(&self, since: u64, most: usize) -> Option<Vec<String>> {
        let recent = lock(&self.inner.recent_changes);
        if since < recent.unlisted_through {
            return None;
        }
        let mut groups: Vec<String> = Vec::new();
        for (_, g) in recent.groups.iter().rev().take_while(|(n, _)| *n > since) {
            if !groups.contains(g) {
                if groups.len() == most {
                    return None;
                }
                groups.push(g.clone());
            }
        }
        Some(groups)
    }

    /// Counts and tells a change of `group`'s committed offsets (`None`: of every group's),
    /// once it is in the store and in memory.
    fn offsets_changed(&self, group: Option<&str>) {
        let mut recent = lock(&self.inner.recent_changes);
        let n = self.inner.offsets_changes.fetch_add(1, Ordering::AcqRel) + 1;
        match group {
            Some(g) => {
                if recent.groups.len() == RECENT_CHANGES
                    && let Some((dropped, _)) = recent.groups.pop_front()
                {
                    recent.unlisted_through = dropped;
                }
                recent.groups.push_back((n, g.to_string()));
            }
            None => {
                recent.groups.clear();
                recent.unlisted_through = n;
            }
        }
        drop(recent);
        self.inner.offsets_changed.notify_waiters();
    }

    /// JoinGroup. Waits (without holding any lock) until the rebalance completes. A group of
    /// the consumer protocol with members takes a member of the classic protocol in and answers
    /// at once ([`consumer::ConsumerGroup::classic_join`]); `view` is every topic, for it.
    pub async fn join(
        &self,
        req: JoinRequest,
        view: &TopicView,
    ) -> Result<JoinResponse, GroupError> {
        let rx = {
            if !group_id_makeable(&req.group_id) {
                return Err(GroupError::InvalidGroupId);
            }
            let cfg = &self.inner.config;
            let settings = self.consumer_settings(&req.group_id);
            let timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
            if req.session_timeout_ms < 0
                || timeout < cfg.min_session_timeout
                || timeout > cfg.max_session_timeout
            {
                return Err(GroupError::InvalidSessionTimeout {
                    timeout_ms: req.session_timeout_ms,
                    min_ms: cfg.min_session_timeout.as_millis() as u64,
                    max_ms: cfg.max_session_timeout.as_millis() as u64,
                });
            }
            let now = self.now();
            let mut groups = self.groups();
            let group_id = req.group_id.clone();
            let group = match groups.get_mut(&group_id) {
                Some(g) => g,
                None if req.member_id.is_empty() => {
                    groups.entry(group_id.clone()).or_insert_with(|| {
                        Group::new(group_id.clone(), cfg.initial_rebalance_delay, now)
                    })
                }
                None => return Err(GroupError::UnknownMemberId),
            };
            group.poll(now);
            if !group.consumer.is_empty() {
                // Hosted by the group of the consumer protocol, as Kafka's groups host classic
                // members while consumers move from one protocol to the other: of the consumer
                // protocol's type and metadata only (checked before a member id is handed out).
                let readable = req
                    .protocols
                    .first()
                    .and_then(|p| consumer::read_subscription(&p.metadata));
                if req.protocol_type != "consumer" || readable.is_none() {
                    return Err(GroupError::InconsistentGroupProtocol);
                }
                let member_id = if req.member_id.is_empty() {
                    let prefix = req.group_instance_id.as_deref().unwrap_or(&req.client_id);
                    let id = format!("{prefix}-{}", uuid_like());
                    if req.require_known_member_id && req.group_instance_id.is_none() {
                        return Err(GroupError::MemberIdRequired { member_id: id });
                    }
                    id
                } else {
                    req.member_id.clone()
                };
                let joined = group
                    .consumer
                    .classic_join(&req, member_id, view, settings, now);
                drop(groups);
                self.save_consumer_groups();
                return joined;
            }
            if group.uses_consumer_protocol() {
                // An empty group of the consumer protocol becomes a classic one.
                group.consumer = consumer::ConsumerGroup::new(group_id.clone());
                // Whatever was saved of it goes at the next tick.
                group.consumer.mark_dirty();
            }
            let outcome = group.join(req, uuid_like(), now);
            group.poll(now);
            if group.is_idle_and_empty() && group.members.is_empty() && group.generation == 0 {
                // Created for a join that failed at once.
                groups.remove(&group_id);
            }
            match outcome {
                Outcome::Now(result) => return result,
                Outcome::Wait(rx) => rx,
            }
        };
        rx.await.unwrap_or(Err(GroupError::CoordinatorNotAvailable))
    }

    /// SyncGroup. Followers wait (without holding any lock) for the leader's assignment.
    pub async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, GroupError> {
        let outcome = {
            if req.group_id.is_empty() {
                return Err(GroupError::InvalidGroupId);
            }
            let now = self.now();
            let mut groups = self.groups();
            let Some(group) = groups.get_mut(&req.group_id) else {
                return Err(GroupError::UnknownMemberId);
            };
            group.poll(now);
            if group.uses_consumer_protocol() {
                return group.consumer.classic_sync(&req, now);
            }
            let outcome = group.sync(req, now);
            group.poll(now);
            outcome
        };
        // The leader's SyncGroup completes the rebalance: saved before its own answer returns
        // (the followers have theirs already).
        self.save_memberships();
        match outcome {
            Outcome::Now(result) => result,
            Outcome::Wait(rx) => rx.await.unwrap_or(Err(GroupError::CoordinatorNotAvailable)),
        }
    }

    /// Forgets every group's members, keeping the committed offsets, and the memberships saved
    /// for a restart: for a broker that starts as a follower. What it saved while it led
    /// belongs to a coordinator it no longer is; kept, those members would hold their groups
    /// until their sessions ran out, and the leader's offsets, copied as commits without a
    /// generation (which only an empty group takes), would be refused meanwhile.
    pub fn forget_members(&self) {
        let now = self.now();
        let mut forgotten = 0;
        for group in self.groups().values_mut() {
            forgotten += usize::from(group.members_len() > 0);
            group.dismiss(now);
        }
        if forgotten > 0 {
            tracing::info!(
                groups = forgotten,
                "group members restored are forgotten: this broker follows, the leader coordinates"
            );
        }
        self.save_memberships();
    }

    /// Saves the membership of every group whose rebalance completed or that emptied since the
    /// last call. The snapshots are taken and written under the store lock, so they reach the
    /// store in the order the groups changed. A failed write is logged and tried again on the
    /// next call (the next tick at the latest); meanwhile the store holds the one before.
    fn save_memberships(&self) {
        self.save_consumer_groups();
        if !self.groups().values().any(|g| g.membership_changed()) {
            return;
        }
        let _store_guard = lock(&self.inner.store_lock);
        let changes: Vec<(String, Option<Membership>)> = self
            .groups()
            .iter_mut()
            .filter_map(|(id, g)| Some((id.clone(), g.take_membership_change()?)))
            .collect();
        let mut failed = Vec::new();
        for (group, membership) in changes {
            let saved = self
                .inner
                .store
                .save_membership(&group, membership.as_ref());
            if let Err(e) = saved {
                let mut warned = lock(&self.inner.store_warned);
                if warned.is_none_or(|t| t.elapsed() >= STORE_WARNING_EVERY) {
                    warn!(group = %client_text(&group), error = %e, "saving the group membership failed; retried every tick (this line at most every 10 s)");
                    *warned = Some(std::time::Instant::now());
                }
                failed.push(group);
            }
        }
        let mut groups = self.groups();
        for group in failed {
            if let Some(g) = groups.get_mut(&group) {
                g.mark_membership_unsaved();
            }
        }
    }

    /// Saves the groups of the consumer protocol that changed since the last tick (members,
    /// epochs, assignments; not heartbeats alone), so that a restarted coordinator knows their
    /// members. A failed save is tried again at the next tick.
    fn save_consumer_groups(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        // Nothing to write, and no save under way that may hold this caller's change (one that
        // took it from the groups but has not stored it yet has a ticket not yet covered).
        if !self.groups().values().any(|g| g.consumer.is_dirty())
            && self.inner.consumer_saved_through.load(SeqCst)
                >= self.inner.consumer_save_tickets.load(SeqCst)
        {
            return;
        }
        let ticket = self.inner.consumer_save_tickets.fetch_add(1, SeqCst) + 1;
        let _store_guard = lock(&self.inner.store_lock);
        if self.inner.consumer_saved_through.load(SeqCst) >= ticket {
            // A save that started after this caller's change wrote it.
            return;
        }
        let covers = self.inner.consumer_save_tickets.load(SeqCst);
        let changes: Vec<(String, Option<Vec<u8>>)> = self
            .groups()
            .iter_mut()
            .filter_map(|(id, g)| {
                g.consumer
                    .take_dirty()
                    .then(|| (id.clone(), g.consumer.save()))
            })
            .collect();
        let mut all_saved = true;
        for (group, saved) in changes {
            if let Err(e) = self
                .inner
                .store
                .save_consumer_group(&group, saved.as_deref())
            {
                let mut warned = lock(&self.inner.store_warned);
                if warned.is_none_or(|t| t.elapsed() >= STORE_WARNING_EVERY) {
                    warn!(group = %client_text(&group), error = %e, "saving the group's members failed; retried every tick (this line at most every 10 s)");
                    *warned = Some(std::time::Instant::now());
                }
                if let Some(g) = self.groups().get_mut(&group) {
                    g.consumer.mark_dirty();
                }
                all_saved = false;
            }
        }
        if all_saved {
            self.inner.consumer_saved_through.fetch_max(covers, SeqCst);
        }
    }

    /// Saves what changed of the groups' members (both protocols) now: at shutdown, so that
    /// nothing of the last 100 ms is lost.
    pub fn flush(&self) {
        self.save_memberships();
    }

    /// Heartbeat: keeps the member's session alive; REBALANCE_IN_PROGRESS asks it to rejoin.
    pub fn heartbeat(&self, req: &HeartbeatRequest) -> Result<(), GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let now = self.now();
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(&req.group_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        group.poll(now);
        let result = if group.uses_consumer_protocol() {
            group.consumer.classic_heartbeat(req, now)
        } else {
            group.heartbeat(req, now)
        };
        group.poll(now);
        result
    }

    /// LeaveGroup. `Err` is the top-level error (v3+); per-member outcomes are in the `Ok` list.
    pub fn leave(&self, req: &LeaveRequest) -> Result<Vec<LeaveMemberResult>, GroupError> {
        let result = self.leave_locked(req);
        // The last member gone: the group's saved membership goes too.
        self.save_memberships();
        self.save_consumer_groups();
        result
    }

    fn leave_locked(&self, req: &LeaveRequest) -> Result<Vec<LeaveMemberResult>, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let now = self.now();
        let mut groups = self.groups();
        let group = groups.get_mut(&req.group_id);
        let Some(group) = group else {
            return Ok(req
                .members
                .iter()
                .map(|m| LeaveMemberResult {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    result: Err(GroupError::UnknownMemberId),
                })
                .collect());
        };
        group.poll(now);
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        let results = req
            .members
            .iter()
            .map(|m| LeaveMemberResult {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                result: if group.uses_consumer_protocol() {
                    group.consumer.classic_leave(m)
                } else {
                    group.leave(m, now)
                },
            })
            .collect();
        group.poll(now);
        Ok(results)
    }

    /// OffsetCommit, durable when it returns. Every error is per partition, as in Kafka's
    /// response.
    pub fn commit_offsets(&self, req: &OffsetCommitRequest) -> Vec<OffsetCommitTopicResult> {
        self.commit_offsets_as(req, false).0
    }

    /// [`GroupCoordinator::commit_offsets`], stored and in memory when it returns but durable
    /// only once [`GroupCoordinator::durable`] of the ticket returned (0: nothing stored) has
    /// completed: commits made meanwhile share one write to the disk (group commit), rather
    /// than one sync each.
    pub fn commit_offsets_lazily(
        &self,
        req: &OffsetCommitRequest,
    ) -> (Vec<OffsetCommitTopicResult>, u64) {
        self.commit_offsets_as(req, true)
    }

    /// Waits until the lazy commit of `ticket` ([`GroupCoordinator::commit_offsets_lazily`])
    /// is durable, starting a sync of every lazy commit so far if none runs; an error when the
    /// sync failed (the commit may be lost in a crash).
    pub async fn durable(&self, ticket: u64) -> Result<(), StoreError> {
        if ticket == 0 {
            return Ok(());
        }
        loop {
            let synced = self.inner.synced.notified();
            tokio::pin!(synced);
            synced.as_mut().enable();
            {
                let mut syncs = lock(&self.inner.syncs);
                if let Some((.., e)) = syncs
                    .lost
                    .iter()
                    .find(|(from, to, _)| (*from..=*to).contains(&ticket))
                {
                    return Err(e.clone());
                }
                if syncs.through >= ticket {
                    return Ok(());
                }
                if !syncs.running {
                    syncs.running = true;
                    // Its own task: it ends, and tells every waiter, whoever stops waiting.
                    let inner = self.inner.clone();
                    tokio::task::spawn_blocking(move || sync_lazy_commits(&inner));
                }
            }
            synced.await;
        }
    }

    fn commit_offsets_as(
        &self,
        req: &OffsetCommitRequest,
        lazily: bool,
    ) -> (Vec<OffsetCommitTopicResult>, u64) {
        let now = self.now();
        let _store_guard = lock(&self.inner.store_lock);
        let check = {
            let mut groups = self.groups();
            match groups.get_mut(&req.group_id) {
                Some(group) => {
                    group.poll(now);
                    group.check_commit(req, now)
                }
                // A simple consumer (no generation) may commit to a group that does not
                // exist, which makes it; the empty id too, as Kafka allows for old clients.
                None if req.group_id.len() > GROUP_ID_MOST_BYTES => Err(GroupError::InvalidGroupId),
                None if req.generation_id < 0 => Ok(()),
                None => Err(GroupError::IllegalGeneration {
                    given: req.generation_id,
                    current: -1,
                }),
            }
        };
        let fill = |f: &mut dyn FnMut(&OffsetCommitPartition) -> Result<(), GroupError>| {
            req.topics
                .iter()
                .map(|t| OffsetCommitTopicResult {
                    name: t.name.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| PartitionResult {
                            partition: p.partition,
                            result: f(p),
                        })
                        .collect(),
                })
                .collect::<Vec<_>>()
        };
        if let Err(e) = check {
            return (fill(&mut |_| Err(e.clone())), 0);
        }
        let wall = self.inner.clock.wall_ms();
        let mut batch: Vec<(String, i32, CommittedOffset)> = Vec::new();
        for t in &req.topics {
            for p in &t.partitions {
                let metadata = p.metadata.clone().unwrap_or_default();
                if metadata.len() <= OFFSET_METADATA_MAX_BYTES {
                    let commit_timestamp_ms =
                        p.commit_timestamp_ms.filter(|ts| *ts >= 0).unwrap_or(wall);
                    batch.push((
                        t.name.clone(),
                        p.partition,
                        CommittedOffset {
                            offset: p.offset,
                            leader_epoch: p.leader_epoch,
                            metadata,
                            commit_timestamp_ms,
                        },
                    ));
                }
            }
        }
        let mut ticket = 0;
        let stored = if batch.is_empty() {
            Ok(())
        } else if lazily {
            self.inner.store.commit_lazily(&req.group_id, &batch)
        } else {
            self.inner.store.commit(&req.group_id, &batch)
        };
        if let Err(e) = &stored {
            warn!(group = %client_text(&req.group_id), error = %e, "offset commit failed in the store");
        } else if !batch.is_empty() {
            if lazily {
                // In the store: a sync from now on covers it.
                ticket = self.inner.lazy_commits.fetch_add(1, Ordering::AcqRel) + 1;
            }
            self.remember_offsets(&req.group_id, batch, now);
        }
        let results = fill(&mut |p| {
            let size = p.metadata.as_ref().map_or(0, |m| m.len());
            if size > OFFSET_METADATA_MAX_BYTES {
                Err(GroupError::OffsetMetadataTooLarge {
                    size,
                    max: OFFSET_METADATA_MAX_BYTES,
                })
            } else {
                stored.clone().map_err(GroupError::Store)
            }
        });
        (results, ticket)
    }

    /// TxnOffsetCommit v3+'s membership check: a member of the group's current generation, as
    /// an OffsetCommit would be checked (a group unknown here, or a request without a
    /// generation, passes). Nothing is stored: the offsets wait for the transaction's commit.
    pub fn check_transactional_commit(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        let now = self.now();
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(group_id) else {
            return Ok(());
        };
        group.poll(now);
        if generation_id < 0 && member_id.is_empty() && group_instance_id.is_none() {
            return Ok(());
        }
        let req = OffsetCommitRequest {
            group_id: group_id.to_string(),
            generation_id,
            member_id: member_id.to_string(),
            group_instance_id: group_instance_id.map(str::to_string),
            topics: Vec::new(),
        };
        group.check_commit(&req, now)
    }

    /// Stores the offsets a transaction committed (its TxnOffsetCommits, applied when it
    /// commits), whatever the group's members are doing meanwhile, as Kafka does.
    pub fn commit_transactional(
        &self,
        group_id: &str,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let _store_guard = lock(&self.inner.store_lock);
        self.inner
            .store
            .commit(group_id, &offsets)
            .map_err(GroupError::Store)?;
        self.remember_offsets(group_id, offsets, now);
        Ok(())
    }

    /// Offsets just stored, made the group's (which is made if it does not exist).
    fn remember_offsets(
        &self,
        group_id: &str,
        offsets: Vec<(String, i32, CommittedOffset)>,
        now: Instant,
    ) {
        let cfg = &self.inner.config;
        let mut groups = self.groups();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string(), cfg.initial_rebalance_delay, now));
        for (topic, partition, offset) in offsets {
            group
                .offsets
                .entry(topic)
                .or_default()
                .insert(partition, offset);
        }
        group.last_commit = now;
        drop(groups);
        self.offsets_changed(Some(group_id));
    }

    /// OffsetFetch for one group (the multi-group form of v8 calls this per group). `None`
    /// topics returns every committed partition of the group.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<&[OffsetFetchTopic]>,
    ) -> Result<Vec<FetchedTopic>, GroupError> {
        let groups = self.groups();
        let offsets = groups
            .get(group_id)
            .filter(|g| g.state != GroupState::Dead)
            .map(|g| &g.offsets);
        let fetched = |name: &str, partition: i32| match offsets
            .and_then(|o| o.get(name))
            .and_then(|t| t.get(&partition))
        {
            Some(o) => FetchedPartition {
                partition,
                offset: o.offset,
                leader_epoch: o.leader_epoch,
                metadata: o.metadata.clone(),
            },
            None => FetchedPartition {
                partition,
                offset: -1,
                leader_epoch: -1,
                metadata: String::new(),
            },
        };
        Ok(match topics {
            Some(topics) => topics
                .iter()
                .map(|t| FetchedTopic {
                    name: t.name.clone(),
                    partitions: t.partitions.iter().map(|p| fetched(&t.name, *p)).collect(),
                })
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|(name, parts)| FetchedTopic {
                    name: name.clone(),
                    partitions: parts.keys().map(|p| fetched(name, *p)).collect(),
                })
                .collect(),
        })
    }

    /// ListGroups. `states_filter` (v4+) matches state names case-insensitively; empty = all.
    pub fn list_groups(&self, states_filter: &[String]) -> Vec<ListedGroup> {
        let now = self.now();
        let mut groups = self.groups();
        let mut listed: Vec<ListedGroup> = groups
            .values_mut()
            .filter_map(|g| {
                g.poll(now);
                let wanted = states_filter.is_empty()
                    || states_filter
                        .iter()
                        .any(|s| GroupState::parse(s) == Some(g.listed_state()));
                let consumer = g.uses_consumer_protocol();
                (wanted && g.state != GroupState::Dead).then(|| ListedGroup {
                    group_id: g.id.clone(),
                    protocol_type: if consumer {
                        "consumer".to_string()
                    } else {
                        g.protocol_type.clone().unwrap_or_default()
                    },
                    state: g.listed_state(),
                    group_type: if consumer { "consumer" } else { "classic" },
                })
            })
            .collect();
        listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        listed
    }

    /// ConsumerGroupHeartbeat (KIP-848): joins, leaves, or keeps a member of a group of the
    /// consumer protocol alive, and tells it its assignment. `view` is every topic the group may
    /// subscribe to, `may_describe` says which of them the member's principal may see. A member
    /// joining a classic group of the consumer protocol type takes the group over with its
    /// members, which stay as they are until told to join again (Kafka's online upgrade); a
    /// classic group of another protocol type refuses it (GROUP_ID_NOT_FOUND). A change to the
    /// group (members, epochs, assignments) is saved before the answer, so that a restarted
    /// coordinator knows what its members were told.
    pub fn consumer_heartbeat(
        &self,
        req: ConsumerHeartbeat,
        view: &TopicView,
        may_describe: &dyn Fn(&str) -> bool,
    ) -> Result<ConsumerHeartbeatReply, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidRequest(
                "GroupId can't be empty".to_string(),
            ));
        }
        if !group_id_makeable(&req.group_id) {
            return Err(GroupError::InvalidGroupId);
        }
        let group_id = req.group_id.clone();
        let mut handed_over = false;
        let settings = self.consumer_settings(&group_id);
        let reply = {
            let now = self.now();
            let mut groups = self.groups();
            let cfg = &self.inner.config;
            let group = match groups.get_mut(&group_id) {
                Some(g) => g,
                None if req.member_epoch == 0 => {
                    groups.entry(group_id.clone()).or_insert_with(|| {
                        Group::new(group_id.clone(), cfg.initial_rebalance_delay, now)
                    })
                }
                None => return Err(GroupError::UnknownMemberId),
            };
            group.poll(now);
            if group.state == GroupState::Dead {
                return Err(GroupError::GroupIdNotFound);
            }
            if !group.members.is_empty() {
                // The request is checked before the group changes: a refused heartbeat takes
                // nothing over.
                consumer::check_request(&req)?;
                let handed = if req.member_epoch == 0 {
                    group.hand_over_to_consumer_protocol(now)
                } else {
                    Err("the member is not joining (epoch 0)".to_string())
                };
                let (generation, seeds) = handed.map_err(|why| {
                    GroupError::OtherProtocol(format!(
                        "group {} has {} member(s) of the classic protocol, which consumers of \
                         group.protocol=consumer cannot join: {why}",
                        client_text(&group.id),
                        group.members.len(),
                    ))
                })?;
                group
                    .consumer
                    .host_classic_members(generation, seeds, view, now);
                handed_over = true;
            }
            let reply = group
                .consumer
                .heartbeat(req, view, may_describe, settings, now);
            if group.consumer.is_empty() {
                group.empty_since = now;
            }
            if group.is_idle_and_empty() && !group.consumer.used() {
                // Made for a first heartbeat that failed at once.
                groups.remove(&group_id);
            }
            reply
        };
        if handed_over {
            // The consumer group, then the classic membership's removal; a restart between the
            // two finds both, and takes the consumer group's members (see `with_clock`).
            self.save_memberships();
        }
        self.save_consumer_groups();
        reply
    }

    /// Whether `group_id` is a group of the consumer protocol (KIP-848).
    pub fn uses_consumer_protocol(&self, group_id: &str) -> bool {
        self.groups()
            .get(group_id)
            .is_some_and(|g| g.uses_consumer_protocol())
    }

    /// Whether `member_id` is a member of `group_id` that uses the consumer protocol itself,
    /// not a classic member the group hosts: such a member commits with OffsetCommit v9 or
    /// later, as Kafka requires.
    pub fn is_consumer_protocol_member(&self, group_id: &str, member_id: &str) -> bool {
        self.groups()
            .get(group_id)
            .is_some_and(|g| g.uses_consumer_protocol() && g.consumer.has_own_member(member_id))
    }

    /// OffsetFetch v9's check of a consumer-protocol member, as Kafka's: none named (an admin
    /// client) passes; a named one must be a member at the epoch given (UNKNOWN_MEMBER_ID,
    /// STALE_MEMBER_EPOCH). Classic groups and unknown ones pass.
    pub fn check_fetch_member(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        let now = self.now();
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group_id) else {
            return Ok(());
        };
        g.poll(now);
        match member_id {
            // With no partitions named, only the member's own epoch passes.
            Some(id) if g.uses_consumer_protocol() => {
                g.consumer.check_commit(id, member_epoch, &[])
            }
            _ => Ok(()),
        }
    }

    /// ConsumerGroupDescribe for one group: GROUP_ID_NOT_FOUND for a group that does not
    /// exist or is a classic one.
    pub fn consumer_describe(
        &self,
        group_id: &str,
    ) -> Result<ConsumerGroupDescription, GroupError> {
        let now = self.now();
        let mut groups = self.groups();
        match groups.get_mut(group_id) {
            Some(g) if g.uses_consumer_protocol() && g.state != GroupState::Dead => {
                g.poll(now);
                Ok(g.consumer.describe())
            }
            _ => Err(GroupError::GroupIdNotFound),
        }
    }

    /// DescribeGroups for one group. Unknown groups are described as Dead, as Kafka does.
    pub fn describe_group(&self, group_id: &str) -> Result<GroupDescription, GroupError> {
        let now = self.now();
        let mut groups = self.groups();
        Ok(match groups.get_mut(group_id) {
            Some(g) if g.uses_consumer_protocol() => {
                g.poll(now);
                let (protocol, members) = g.consumer.classic_view();
                GroupDescription {
                    group_id: group_id.to_owned(),
                    state: g.listed_state(),
                    protocol_type: "consumer".to_string(),
                    protocol,
                    members,
                }
            }
            Some(g) => {
                g.poll(now);
                g.describe()
            }
            None => GroupDescription {
                group_id: group_id.to_owned(),
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        })
    }

    /// A topic was deleted: every group forgets its offsets for it, as in Kafka, so a topic
    /// made again under the same name starts with no committed position and consumers follow
    /// `auto.offset.reset`. The store forgets them too, under the store lock, so that an
    /// OffsetCommit racing with the deletion cannot leave one behind for a restart to load (the
    /// catalog already removed them with the topic, which covers a crash before this call).
    pub fn topic_deleted(&self, topic: &str) {
        let _store_guard = lock(&self.inner.store_lock);
        if let Err(e) = self.inner.store.delete_topic(topic) {
            warn!(%topic, error = %e, "deleting a deleted topic's offsets failed in the store");
        }
        for g in self.groups().values_mut() {
            g.offsets.remove(topic);
        }
        self.offsets_changed(None);
    }

    /// OffsetDelete for one group: removes the committed offsets of `partitions` and returns
    /// each partition's error code (0, or GROUP_SUBSCRIBED_TO_TOPIC for a topic the group's
    /// members subscribe to, whose offsets stay). An unknown group is GROUP_ID_NOT_FOUND.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<i16>, GroupError> {
        let now = self.now();
        let _store_guard = lock(&self.inner.store_lock);
        let codes: Vec<i16> = {
            let mut groups = self.groups();
            let Some(group) = groups.get_mut(group_id) else {
                return Err(GroupError::GroupIdNotFound);
            };
            group.poll(now);
            if group.state == GroupState::Dead {
                return Err(GroupError::GroupIdNotFound);
            }
            let subscribed = group.subscribed_topics();
            partitions
                .iter()
                .map(|(topic, _)| match &subscribed {
                    Some(topics) if !topics.contains(topic) => 0,
                    _ => GroupError::GroupSubscribedToTopic.kafka_code(),
                })
                .collect()
        };
        let deletable: Vec<(String, i32)> = partitions
            .iter()
            .zip(&codes)
            .filter(|(_, c)| **c == 0)
            .map(|(p, _)| p.clone())
            .collect();
        if let Err(e) = self.inner.store.delete_offsets(group_id, &deletable) {
            warn!(group = %client_text(group_id), error = %e, "deleting offsets failed in the store");
            let failed = GroupError::Store(e).kafka_code();
            return Ok(codes
                .iter()
                .map(|c| if *c == 0 { failed } else { *c })
                .collect());
        }
        if let Some(group) = self.groups().get_mut(group_id) {
            group.forget_offsets(&deletable);
        }
        self.offsets_changed(Some(group_id));
        Ok(codes)
    }

    /// DeleteGroups for one group: only an Empty group; its offsets go too.
    pub fn delete_group(&self, group_id: &str) -> Result<(), GroupError> {
        self.remove_empty_group(group_id, |_| Ok(()))
    }

    /// Marks an Empty group Dead, deletes its offsets from the store, then forgets it. `check`
    /// may veto (offset retention uses it to re-check expiry under the lock).
    fn remove_empty_group(
        &self,
        group_id: &str,
        check: impl Fn(&Group) -> Result<(), GroupError>,
    ) -> Result<(), GroupError> {
        let now = self.now();
        let _store_guard = lock(&self.inner.store_lock);
        {
            let mut groups = self.groups();
            let Some(group) = groups.get_mut(group_id) else {
                return Err(GroupError::GroupIdNotFound);
            };
            group.poll(now);
            if !group.consumer.is_empty() {
                return Err(GroupError::NonEmptyGroup);
            }
            match group.state {
                GroupState::Empty => {}
                GroupState::Dead => return Err(GroupError::GroupIdNotFound),
                _ => return Err(GroupError::NonEmptyGroup),
            }
            check(group)?;
            group.mark_dead(now);
        }
        // Offsets, and a saved membership the group may still have (it emptied since).
        let deleted = self.inner.store.delete_group(group_id);
        let mut groups = self.groups();
        match deleted {
            Ok(()) => {
                groups.remove(group_id);
                drop(groups);
                self.offsets_changed(Some(group_id));
                Ok(())
            }
            Err(e) => {
                warn!(group = %client_text(group_id), error = %e, "deleting group offsets failed in the store");
                if let Some(g) = groups.get_mut(group_id) {
                    g.revive(now);
                }
                Err(GroupError::Store(e))
            }
        }
    }

    /// Applies every passed deadline: session expiries, rebalance and sync timeouts, pending
    /// member ids, offset retention of Empty groups, and (once a minute) of live groups' topics
    /// they no longer subscribe to. Called by [`spawn_timers`](Self::spawn_timers).
    pub fn tick(&self) {
        let now = self.now();
        let retention = self.inner.config.offsets_retention;
        // Empty consumer-protocol groups forgotten here, whose saved rows go too.
        let mut forgotten = Vec::new();
        let expired: Vec<String> = {
            let mut groups = self.groups();
            for g in groups.values_mut() {
                g.poll(now);
            }
            groups.retain(|id, g| {
                let forget = g.is_idle_and_empty() && now >= g.empty_since + EMPTY_GROUP_RETENTION;
                if forget && g.consumer.used() {
                    forgotten.push(id.clone());
                }
                !forget
            });
            if retention.is_zero() {
                Vec::new()
            } else {
                groups
                    .values()
                    .filter(|g| offsets_expired(g, now, retention))
                    .map(|g| g.id.clone())
                    .collect()
            }
        };
        if !forgotten.is_empty() {
            let _store_guard = lock(&self.inner.store_lock);
            for id in forgotten {
                // Unless a member joined it again meanwhile (its save holds the store lock too).
                if self.groups().get(&id).is_some_and(|g| g.consumer.used()) {
                    continue;
                }
                if let Err(e) = self.inner.store.save_consumer_group(&id, None) {
                    warn!(group = %client_text(&id), error = %e, "forgetting an empty group's saved members failed");
                }
            }
        }
        if !retention.is_zero() && now >= *lock(&self.inner.next_unsubscribed_check) {
            *lock(&self.inner.next_unsubscribed_check) = now + UNSUBSCRIBED_CHECK_INTERVAL;
            self.expire_unsubscribed_offsets(retention);
        }
        for id in expired {
            let result = self.remove_empty_group(&id, |g| {
                if offsets_expired(g, now, retention) {
                    Ok(())
                } else {
                    Err(GroupError::NonEmptyGroup)
                }
            });
            if result.is_ok() {
                tracing::info!(group = %client_text(&id), "offsets expired; group removed");
            }
        }
        self.save_memberships();
    }

    /// KIP-496: in a Stable group of consumers, the offsets of topics no member subscribes to
    /// any more expire `retention` after they were committed, as in Kafka since 2.4 (those of
    /// an Empty group go with the group, above). A group whose subscriptions cannot be read
    /// keeps everything. A group without members or a protocol type (a standalone consumer's
    /// commits) loses each offset `retention` after its commit.
    fn expire_unsubscribed_offsets(&self, retention: Duration) {
        let cutoff = self
            .inner
            .clock
            .wall_ms()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        // Held throughout, so that no commit lands between the choice and the deletion.
        let _store_guard = lock(&self.inner.store_lock);
        let due: Vec<(String, Vec<(String, i32)>)> = self
            .groups()
            .values()
            .filter_map(|g| {
                let classic = g.state == GroupState::Stable
                    && !g.members.is_empty()
                    && g.protocol_type.as_deref() == Some("consumer");
                let consumer = g.uses_consumer_protocol() && !g.consumer.is_empty();
                // A group that only commits (a consumer that assigns itself partitions) has
                // no members and no protocol: as in Kafka, each offset expires `retention`
                // after its commit, whatever the others do.
                let standalone = g.state == GroupState::Empty
                    && g.members.is_empty()
                    && g.protocol_type.is_none()
                    && !g.uses_consumer_protocol();
                let subscribed = match (classic || consumer, standalone) {
                    (true, _) => g.subscribed_topics()?,
                    (false, true) => std::collections::HashSet::new(),
                    (false, false) => return None,
                };
                let parts: Vec<(String, i32)> = g
                    .offsets
                    .iter()
                    .filter(|(topic, _)| !subscribed.contains(*topic))
                    .flat_map(|(topic, parts)| {
                        parts
                            .iter()
                            .filter(|(_, o)| o.commit_timestamp_ms <= cutoff)
                            .map(|(p, _)| (topic.clone(), *p))
                    })
                    .collect();
                (!parts.is_empty()).then(|| (g.id.clone(), parts))
            })
            .collect();
        for (id, parts) in due {
            if let Err(e) = self.inner.store.delete_offsets(&id, &parts) {
                warn!(group = %client_text(&id), error = %e, "expiring offsets failed in the store");
                continue;
            }
            if let Some(g) = self.groups().get_mut(&id) {
                g.forget_offsets(&parts);
            }
            self.offsets_changed(Some(&id));
            tracing::info!(group = %client_text(&id), partitions = parts.len(), "offsets expired (committed longer than the retention ago, of topics the group does not subscribe to)");
        }
    }

    /// Spawns the task that calls [`tick`](Self::tick) every [`TICK_INTERVAL`]. The task ends
    /// when the last handle to the coordinator is dropped.
    pub fn spawn_timers(&self) -> JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                GroupCoordinator { inner }.tick();
            }
        })
    }
}

fn offsets_expired(g: &Group, now: Instant, retention: Duration) -> bool {
    g.state == GroupState::Empty
        && g.consumer.is_empty()
        && !g.offsets.is_empty()
        && now >= g.empty_since + retention
        && now >= g.last_commit + retention
}
