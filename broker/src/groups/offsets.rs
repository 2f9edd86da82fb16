//! Committed offsets: the persistence seam ([`OffsetStore`]) and an in-memory store for tests.
//!
//! The coordinator keeps every group's offsets in memory and writes each commit through the store
//! before acknowledging it, so an acknowledged commit survives a restart. At start-up
//! [`GroupCoordinator::new`](super::GroupCoordinator::new) calls [`OffsetStore::load`] once.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::error::StoreError;

/// Longest offset metadata string accepted (Kafka's `offset.metadata.max.bytes` default).
pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;

/// One committed offset of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group will consume.
    pub offset: i64,
    /// Leader epoch the client saw at `offset`; -1 when unknown (OffsetCommit < v6).
    pub leader_epoch: i32,
    /// Free-form client metadata ("" when the client sent null).
    pub metadata: String,
    /// Wall-clock commit time, milliseconds since the Unix epoch.
    pub commit_timestamp_ms: i64,
}

/// Durable storage of committed offsets, implemented by the broker over its metadata database.
///
/// Calls happen outside the coordinator's group lock but are serialized with each other, so an
/// implementation needs no ordering of its own. Errors never panic the coordinator: a failed
/// `commit` fails the affected partitions of that OffsetCommit only.
pub trait OffsetStore: Send + Sync + 'static {
    /// Every committed offset: (group, topic, partition, offset).
    #[allow(clippy::type_complexity)]
    fn load(&self) -> Result<Vec<(String, String, i32, CommittedOffset)>, StoreError>;
    /// Upserts offsets of one group: (topic, partition, offset). Atomic per call.
    fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), StoreError>;
    /// Removes all offsets of a group (DeleteGroups, offset retention).
    fn delete_group(&self, group: &str) -> Result<(), StoreError>;
    /// Removes every group's offsets of a deleted topic. Atomic per call.
    fn delete_topic(&self, topic: &str) -> Result<(), StoreError>;
    /// Removes some offsets of a group: (topic, partition) (OffsetDelete). Atomic per call.
    fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<(), StoreError>;
}

type OffsetKey = (String, String, i32);

/// An [`OffsetStore`] in a `Mutex<BTreeMap>`, for tests. `set_failing(true)` makes every
/// `commit` and `delete_group` fail, to test error paths.
#[derive(Debug, Default)]
pub struct MemoryOffsetStore {
    offsets: Mutex<BTreeMap<OffsetKey, CommittedOffset>>,
    failing: Mutex<bool>,
}

impl MemoryOffsetStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes later `commit`/`delete_group` calls fail (true) or succeed (false).
    pub fn set_failing(&self, failing: bool) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = failing;
    }

    /// Number of stored offsets.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no offset is stored.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<OffsetKey, CommittedOffset>> {
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<(), StoreError> {
        if *self.failing.lock().unwrap_or_else(|e| e.into_inner()) {
            Err(StoreError::new("injected failure"))
        } else {
            Ok(())
        }
    }
}

impl OffsetStore for MemoryOffsetStore {
    fn load(&self) -> Result<Vec<(String, String, i32, CommittedOffset)>, StoreError> {
        Ok(self
            .map()
            .iter()
            .map(|((g, t, p), o)| (g.clone(), t.clone(), *p, o.clone()))
            .collect())
    }

    fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), StoreError> {
        self.check()?;
        let mut map = self.map();
        for (topic, partition, offset) in offsets {
            map.insert(
                (group.to_owned(), topic.clone(), *partition),
                offset.clone(),
            );
        }
        Ok(())
    }

    fn delete_group(&self, group: &str) -> Result<(), StoreError> {
        self.check()?;
        self.map().retain(|(g, _, _), _| g != group);
        Ok(())
    }

    fn delete_topic(&self, topic: &str) -> Result<(), StoreError> {
        self.check()?;
        self.map().retain(|(_, t, _), _| t != topic);
        Ok(())
    }

    fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<(), StoreError> {
        self.check()?;
        let mut map = self.map();
        for (topic, partition) in partitions {
            map.remove(&(group.to_owned(), topic.clone(), *partition));
        }
        Ok(())
    }
}
