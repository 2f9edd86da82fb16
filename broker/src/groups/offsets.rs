//! Committed offsets and group membership: the persistence seam ([`OffsetStore`]) and an
//! in-memory store for tests.
//!
//! The coordinator keeps every group's offsets in memory and writes each commit through the store
//! before acknowledging it, so an acknowledged commit survives a restart. It also saves each
//! group's [`Membership`] when a rebalance completes (and removes it when the group empties),
//! so that after a restart the members' heartbeats are still recognised, as a Kafka
//! coordinator reloads groups from `__consumer_offsets`, and consumers go on without a
//! rebalance. At start-up [`GroupCoordinator::new`](super::GroupCoordinator::new) calls
//! [`OffsetStore::load`] and [`OffsetStore::load_memberships`] once.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::{Buf, BufMut, Bytes};

use super::error::StoreError;

/// A group after its last completed rebalance: what a restarted coordinator needs to go on
/// serving its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub members: Vec<MemberRecord>,
}

/// One member of a [`Membership`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    /// The member's metadata for the group's protocol (its subscription).
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// The first byte of an encoded [`Membership`].
const MEMBERSHIP_FORMAT: u8 = 1;

impl Membership {
    /// The bytes a store keeps: a format byte, then the fields in order, strings and byte
    /// strings with a u32 length (an absent instance id has length `u32::MAX`).
    pub fn encode(&self) -> Vec<u8> {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.put_u32(b.len() as u32);
            out.put_slice(b);
        }
        let mut out = Vec::with_capacity(64);
        out.put_u8(MEMBERSHIP_FORMAT);
        out.put_i32(self.generation);
        bytes(&mut out, self.protocol_type.as_bytes());
        bytes(&mut out, self.protocol_name.as_bytes());
        bytes(&mut out, self.leader.as_bytes());
        out.put_u32(self.members.len() as u32);
        for m in &self.members {
            bytes(&mut out, m.member_id.as_bytes());
            match &m.instance_id {
                Some(i) => bytes(&mut out, i.as_bytes()),
                None => out.put_u32(u32::MAX),
            }
            bytes(&mut out, m.client_id.as_bytes());
            bytes(&mut out, m.client_host.as_bytes());
            out.put_u32(m.session_timeout_ms);
            out.put_u32(m.rebalance_timeout_ms);
            bytes(&mut out, &m.metadata);
            bytes(&mut out, &m.assignment);
        }
        out
    }

    /// Reads [`Membership::encode`]'s bytes; `None` when they are not that.
    pub fn decode(b: &[u8]) -> Option<Membership> {
        fn bytes(b: &mut &[u8]) -> Option<Bytes> {
            let n = (b.remaining() >= 4).then(|| b.get_u32())? as usize;
            (b.remaining() >= n).then(|| b.copy_to_bytes(n))
        }
        fn string(b: &mut &[u8]) -> Option<String> {
            String::from_utf8(bytes(b)?.to_vec()).ok()
        }
        fn u32_(b: &mut &[u8]) -> Option<u32> {
            (b.remaining() >= 4).then(|| b.get_u32())
        }
        let mut b = b;
        if (b.remaining() >= 1).then(|| b.get_u8())? != MEMBERSHIP_FORMAT {
            return None;
        }
        let generation = u32_(&mut b)? as i32;
        let protocol_type = string(&mut b)?;
        let protocol_name = string(&mut b)?;
        let leader = string(&mut b)?;
        let mut members = Vec::new();
        for _ in 0..u32_(&mut b)? {
            let member_id = string(&mut b)?;
            let instance_id = if b.remaining() >= 4 && b[..4] == [0xff; 4] {
                b.advance(4);
                None
            } else {
                Some(string(&mut b)?)
            };
            members.push(MemberRecord {
                member_id,
                instance_id,
                client_id: string(&mut b)?,
                client_host: string(&mut b)?,
                session_timeout_ms: u32_(&mut b)?,
                rebalance_timeout_ms: u32_(&mut b)?,
                metadata: bytes(&mut b)?,
                assignment: bytes(&mut b)?,
            });
        }
        (!b.has_remaining()).then_some(Membership {
            generation,
            protocol_type,
            protocol_name,
            leader,
            members,
        })
    }
}

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
    /// [`OffsetStore::commit`], but durable only once a later [`OffsetStore::sync`] has
    /// returned (a crash before may lose it): commits made at once then share one write to
    /// the disk (group commit). Visible to reads at once.
    fn commit_lazily(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), StoreError> {
        self.commit(group, offsets)
    }
    /// Makes every commit made lazily before it durable; an error when some of them were lost.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Removes all offsets of a group and its membership (DeleteGroups, offset retention).
    fn delete_group(&self, group: &str) -> Result<(), StoreError>;
    /// Removes every group's offsets of a deleted topic. Atomic per call.
    fn delete_topic(&self, topic: &str) -> Result<(), StoreError>;
    /// Removes some offsets of a group: (topic, partition) (OffsetDelete). Atomic per call.
    fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<(), StoreError>;
    /// Every group's saved membership.
    fn load_memberships(&self) -> Result<Vec<(String, Membership)>, StoreError>;
    /// Saves a group's membership, replacing the one saved before; `None` removes it.
    fn save_membership(
        &self,
        group: &str,
        membership: Option<&Membership>,
    ) -> Result<(), StoreError>;
    /// Every saved group of the consumer protocol (KIP-848), as `ConsumerGroup::save` wrote it.
    fn load_consumer_groups(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Saves a group of the consumer protocol, replacing what was saved before; `None` removes
    /// it. `delete_group` removes it too.
    fn save_consumer_group(&self, group: &str, saved: Option<&[u8]>) -> Result<(), StoreError>;
    /// Every group's own configs (`super::config`): key -> milliseconds.
    fn load_group_configs(&self) -> Result<Vec<(String, super::config::Overrides)>, StoreError>;
    /// Saves a group's own configs, replacing those saved before; none removes them.
    /// `delete_group` leaves them (a group's configs outlive it, as in Kafka).
    fn save_group_config(
        &self,
        group: &str,
        configs: &super::config::Overrides,
    ) -> Result<(), StoreError>;
}

type OffsetKey = (String, String, i32);

/// An [`OffsetStore`] in a `Mutex<BTreeMap>`, for tests. `set_failing(true)` makes every
/// `commit` and `delete_group` fail, to test error paths.
#[derive(Debug, Default)]
pub struct MemoryOffsetStore {
    offsets: Mutex<BTreeMap<OffsetKey, CommittedOffset>>,
    memberships: Mutex<BTreeMap<String, Membership>>,
    consumer_groups: Mutex<BTreeMap<String, Vec<u8>>>,
    group_configs: Mutex<BTreeMap<String, super::config::Overrides>>,
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

    fn memberships(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Membership>> {
        self.memberships.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn consumer_groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.consumer_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
        self.memberships().remove(group);
        self.consumer_groups().remove(group);
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

    fn load_memberships(&self) -> Result<Vec<(String, Membership)>, StoreError> {
        Ok(self
            .memberships()
            .iter()
            .map(|(g, m)| (g.clone(), m.clone()))
            .collect())
    }

    fn save_membership(
        &self,
        group: &str,
        membership: Option<&Membership>,
    ) -> Result<(), StoreError> {
        self.check()?;
        let mut saved = self.memberships();
        match membership {
            Some(m) => saved.insert(group.to_owned(), m.clone()),
            None => saved.remove(group),
        };
        Ok(())
    }

    fn load_consumer_groups(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let groups = self.consumer_groups();
        Ok(groups.iter().map(|(g, b)| (g.clone(), b.clone())).collect())
    }

    fn save_consumer_group(&self, group: &str, saved: Option<&[u8]>) -> Result<(), StoreError> {
        self.check()?;
        let mut groups = self.consumer_groups();
        match saved {
            Some(b) => groups.insert(group.to_owned(), b.to_vec()),
            None => groups.remove(group),
        };
        Ok(())
    }

    fn load_group_configs(&self) -> Result<Vec<(String, super::config::Overrides)>, StoreError> {
        let configs = self.group_configs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(configs
            .iter()
            .map(|(g, c)| (g.clone(), c.clone()))
            .collect())
    }

    fn save_group_config(
        &self,
        group: &str,
        configs: &super::config::Overrides,
    ) -> Result<(), StoreError> {
        self.check()?;
        let mut all = self.group_configs.lock().unwrap_or_else(|e| e.into_inner());
        if configs.is_empty() {
            all.remove(group);
        } else {
            all.insert(group.to_owned(), configs.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_reads_back_as_written_and_damage_is_refused() {
        let m = Membership {
            generation: 7,
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            leader: "m-1".into(),
            members: vec![
                MemberRecord {
                    member_id: "m-1".into(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 60_000,
                    metadata: Bytes::from_static(b"\x00\x01sub"),
                    assignment: Bytes::new(),
                },
                MemberRecord {
                    member_id: "m-2".into(),
                    instance_id: Some("pod-2".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.2".into(),
                    session_timeout_ms: 45_000,
                    rebalance_timeout_ms: 300_000,
                    metadata: Bytes::new(),
                    assignment: Bytes::from_static(b"\x00\x01asg"),
                },
            ],
        };
        let bytes = m.encode();
        assert_eq!(Membership::decode(&bytes), Some(m));
        for cut in 0..bytes.len() {
            assert_eq!(Membership::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Membership::decode(&longer), None);
        let mut other_format = bytes;
        other_format[0] = 2;
        assert_eq!(Membership::decode(&other_format), None);
    }
}
