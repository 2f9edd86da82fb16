//! Metadata in redb: the small, mutable, crash-safe state of the broker.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `topics` | topic name | [`TopicRecord`] as TOML text |
//! | `group_offsets` | (group, topic, partition) | (offset, leader epoch, metadata, commit time ms) |
//! | `counters` | name | i64 (`next_producer_id`) |
//!
//! The segment log lives in plain files (see `storage`); only what must change in place lives
//! here. Every write is its own redb transaction committed with immediate durability, so a
//! topic, an offset commit or a producer-id block survives a crash once the call returns.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::groups::{CommittedOffset, Membership, OffsetStore, StoreError};

const TOPICS: TableDefinition<&str, &str> = TableDefinition::new("topics");
/// (group, topic, partition) -> (offset, leader epoch, metadata, commit time ms).
type OffsetRow =
    TableDefinition<'static, (&'static str, &'static str, i32), (i64, i32, &'static str, i64)>;
const GROUP_OFFSETS: OffsetRow = TableDefinition::new("group_offsets");
type OffsetTable<'tx> =
    redb::Table<'tx, (&'static str, &'static str, i32), (i64, i32, &'static str, i64)>;
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("counters");
/// Group id -> its membership after the last completed rebalance ([`Membership::encode`]).
const GROUP_MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("group_members");

/// How many producer ids one redb write reserves; ids in a reserved block that were never handed
/// out are skipped after a restart, which Kafka allows (ids only need to be unique).
const PRODUCER_ID_BLOCK: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    #[error("metadata record for topic {topic} is unreadable: {reason}")]
    BadRecord { topic: String, reason: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::Db(e.into()) }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A topic as remembered across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Kafka topic id (UUID), as 32 hex digits.
    pub id: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Per-topic overrides by Kafka config name (`retention.ms`, `cleanup.policy`, ...).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// Cheap to clone handle on the metadata database.
#[derive(Clone)]
pub struct MetaStore {
    db: std::sync::Arc<Database>,
    producer_ids: std::sync::Arc<std::sync::Mutex<(i64, i64)>>,
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let db = Database::create(path).map_err(|source| MetaError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let tx = db.begin_write()?;
        tx.open_table(TOPICS)?;
        tx.open_table(GROUP_OFFSETS)?;
        tx.open_table(COUNTERS)?;
        tx.open_table(GROUP_MEMBERS)?;
        tx.commit()?;
        Ok(MetaStore {
            db: std::sync::Arc::new(db),
            producer_ids: std::sync::Arc::new(std::sync::Mutex::new((0, 0))),
        })
    }

    pub fn topics(&self) -> Result<Vec<(String, TopicRecord)>, MetaError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOPICS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let name = k.value().to_string();
            let rec: TopicRecord = toml::from_str(v.value()).map_err(|e| MetaError::BadRecord {
                topic: name.clone(),
                reason: e.to_string(),
            })?;
            out.push((name, rec));
        }
        Ok(out)
    }

    pub fn put_topic(&self, name: &str, rec: &TopicRecord) -> Result<(), MetaError> {
        let text = toml::to_string(rec).map_err(|e| MetaError::BadRecord {
            topic: name.to_string(),
            reason: e.to_string(),
        })?;
        let tx = self.db.begin_write()?;
        tx.open_table(TOPICS)?.insert(name, text.as_str())?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        tx.open_table(TOPICS)?.remove(name)?;
        // Committed offsets of a deleted topic go with it, as in Kafka.
        tx.open_table(GROUP_OFFSETS)?
            .retain(|(_, topic, _), _| topic != name)?;
        tx.commit()?;
        Ok(())
    }

    /// Hands out a fresh producer id. Ids are reserved from redb in blocks so that an
    /// idempotent producer's start-up costs no disk write most of the time.
    pub fn next_producer_id(&self) -> Result<i64, MetaError> {
        let mut ids = self.producer_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.0 >= ids.1 {
            let tx = self.db.begin_write()?;
            let start = {
                let mut table = tx.open_table(COUNTERS)?;
                let start = table
                    .get("next_producer_id")?
                    .map(|v| v.value())
                    .unwrap_or(0);
                table.insert("next_producer_id", start + PRODUCER_ID_BLOCK)?;
                start
            };
            tx.commit()?;
            *ids = (start, start + PRODUCER_ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }
}

impl OffsetStore for MetaStore {
    fn load(&self) -> Result<Vec<(String, String, i32, CommittedOffset)>, StoreError> {
        let run = || -> Result<_, MetaError> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(GROUP_OFFSETS)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                let (group, topic, partition) = k.value();
                let (offset, leader_epoch, metadata, commit_timestamp_ms) = v.value();
                out.push((
                    group.to_string(),
                    topic.to_string(),
                    partition,
                    CommittedOffset {
                        offset,
                        leader_epoch,
                        metadata: metadata.to_string(),
                        commit_timestamp_ms,
                    },
                ));
            }
            Ok(out)
        };
        run().map_err(StoreError::new)
    }

    fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), StoreError> {
        self.write_offsets(|table| {
            for (topic, partition, c) in offsets {
                table.insert(
                    (group, topic.as_str(), *partition),
                    (
                        c.offset,
                        c.leader_epoch,
                        c.metadata.as_str(),
                        c.commit_timestamp_ms,
                    ),
                )?;
            }
            Ok(())
        })
    }

    fn delete_group(&self, group: &str) -> Result<(), StoreError> {
        self.write_groups(|tx| {
            tx.open_table(GROUP_OFFSETS)?
                .retain(|(g, _, _), _| g != group)?;
            tx.open_table(GROUP_MEMBERS)?.remove(group)?;
            Ok(())
        })
    }

    fn delete_topic(&self, topic: &str) -> Result<(), StoreError> {
        self.write_offsets(|table| Ok(table.retain(|(_, t, _), _| t != topic)?))
    }

    fn delete_offsets(&self, group: &str, partitions: &[(String, i32)]) -> Result<(), StoreError> {
        self.write_offsets(|table| {
            for (topic, partition) in partitions {
                table.remove((group, topic.as_str(), *partition))?;
            }
            Ok(())
        })
    }

    fn load_memberships(&self) -> Result<Vec<(String, Membership)>, StoreError> {
        let run = || -> Result<_, MetaError> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(GROUP_MEMBERS)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                match Membership::decode(v.value()) {
                    Some(m) => out.push((k.value().to_string(), m)),
                    // Members rejoin, as after a restart without it.
                    None => {
                        tracing::warn!(group = k.value(), "unreadable group membership; ignored")
                    }
                }
            }
            Ok(out)
        };
        run().map_err(StoreError::new)
    }

    fn save_membership(
        &self,
        group: &str,
        membership: Option<&Membership>,
    ) -> Result<(), StoreError> {
        self.write_groups(|tx| {
            let mut table = tx.open_table(GROUP_MEMBERS)?;
            match membership {
                Some(m) => table.insert(group, m.encode().as_slice())?,
                None => table.remove(group)?,
            };
            Ok(())
        })
    }
}

impl MetaStore {
    /// Runs `change` on the committed-offsets table in one write transaction.
    fn write_offsets(
        &self,
        change: impl FnOnce(&mut OffsetTable<'_>) -> Result<(), MetaError>,
    ) -> Result<(), StoreError> {
        self.write_groups(|tx| change(&mut tx.open_table(GROUP_OFFSETS)?))
    }

    /// Runs `change` in one write transaction of the group tables, for the coordinator.
    fn write_groups(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), MetaError>,
    ) -> Result<(), StoreError> {
        let run = || -> Result<(), MetaError> {
            let tx = self.db.begin_write()?;
            change(&tx)?;
            tx.commit()?;
            Ok(())
        };
        run().map_err(StoreError::new)
    }
}
