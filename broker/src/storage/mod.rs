//! The partition log: one Kafka partition's append-only commit log in a directory.
//!
//! Map of the module (one responsibility per file):
//!
//! | file | owns |
//! | --- | --- |
//! | `batch.rs` | zero-copy record batch v2 header parser, CRC check, in-place patches, constants |
//! | `error.rs` | [`StorageError`] and [`BatchError`] (structured, mapped to Kafka codes upstream) |
//! | `records.rs` | the records inside a produced batch, walked (decompressed as a stream) before it is stored |
//! | `index.rs` | sparse offset and time indexes (memory image + file format) |
//! | `segment.rs` | one `.log` file: scan/recovery, append with rollback, positional reads |
//! | `producer.rs` | idempotent-producer sequence/epoch state |
//! | `txn.rs` | open and aborted transactions, the last stable offset, transaction markers |
//! | `log.rs` | [`PartitionLog`]: open, validate, append, read, roll, flush, lookups |
//! | `replica.rs` | a follower's appends of the leader's batches, and its cuts |
//! | `retention.rs` | time/size retention and DeleteRecords |
//! | `compaction.rs` | key-based compaction of sealed segments |
//! | `epochs.rs` | where each leader epoch began, for OffsetForLeaderEpoch |
//!
//! Directory layout: `<dir>/{base:020}.log|.index|.timeindex` per segment, plus
//! `log-start-offset` (written when DeleteRecords moves the log start inside a segment) and
//! `leader-epochs-from` (the offset from which batches carry this broker's leader epochs).
//!
//! Invariants kept by [`PartitionLog`]:
//! * there is always at least one segment; the last one is *active* and the only one appended
//!   to; all others are *sealed*: once a roll's seal has run ([`PartitionLog::start_seals`],
//!   without the log's lock), fsynced with their index files written. A restart finds a segment
//!   whose seal never ran without index files, and scans it whole;
//! * batches are stored as the producer sent them except baseOffset and, on a leader,
//!   partitionLeaderEpoch (always; neither is covered by the CRC), and for LogAppendTime topics
//!   the timestamp-type bit, maxTimestamp and CRC;
//! * offsets strictly increase across batches and segments; gaps are allowed (compaction,
//!   truncated tails);
//! * `log_start_offset <= log_end_offset`, and reads below the start are refused;
//! * storage never reads the clock: every time-dependent call takes `now_ms`.

mod batch;
mod compaction;
mod epochs;
mod error;
mod index;
mod log;
pub mod open_files;
mod producer;
pub(crate) mod record_spans;
mod records;
mod replica;
mod retention;
mod segment;
#[cfg(test)]
pub(crate) mod testutil;
mod txn;

use std::time::Duration;

pub use batch::*;
pub(crate) use compaction::empty_batch;
pub use compaction::{CompactionOutcome, CompactionPass};
pub(crate) use error::limit_hint;
pub use error::{BatchError, StorageError};
pub(crate) use index::write_file_atomic;
pub use log::{PartitionLog, PendingFlush, PendingSeal, ReadPlan, check_produce_records};
pub use txn::{AbortedTxn, Marker};

/// When appended data is fsynced.
///
/// * `Always`: fsync (fdatasync) the segment after every append, before it returns. Nothing
///   acknowledged is lost on power failure; costs one disk flush per produce request (~0.1 ms on
///   NVMe, several ms on SD cards and eMMC, which are common on gateways).
/// * `Interval(d)` (default, 1 s): when [`PartitionLog::needs_flush`] says so the caller calls
///   [`PartitionLog::start_flush`] and fsyncs the file it returns after releasing the log, so
///   appends are not held up by the disk; up to `d` of acknowledged data can be lost on power
///   failure (not on a process crash: the page cache survives that). The broker runs the seals
///   of rolled segments just before, on the same check; partitions are checked one after the
///   other, so with many large seals or slow disks the window is `d` plus that check's time.
/// * `Never`: fsync only when a rolled segment is sealed and on [`PartitionLog::close`]; the
///   kernel writes back on its own schedule. Cheapest, loses the most on power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    Never,
    Interval(Duration),
    Always,
}

/// Per-topic log settings (Kafka topic config names in the field docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this. Default 1 GiB.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment older than this. Default 7 days.
    pub segment_age_ms: i64,
    /// `retention.ms`: delete sealed segments whose largest timestamp is older. Default 7 days.
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: delete oldest sealed segments while the log is larger. Default none.
    pub retention_bytes: Option<u64>,
    /// `index.interval.bytes`: bytes between sparse index entries. Default 4096.
    pub index_interval_bytes: u64,
    /// `flush.messages`/`flush.ms` as one policy. Default `Interval(1s)`.
    pub flush: FlushPolicy,
    /// `cleanup.policy` contains `compact`. Default false.
    pub compact: bool,
    /// `cleanup.policy` contains `delete`. Default true.
    pub delete: bool,
    /// `message.timestamp.type = LogAppendTime`. Default false (CreateTime).
    pub log_append_time: bool,
    /// `max.message.bytes`: largest accepted batch. Default 1048588.
    pub max_message_bytes: u64,
    /// `delete.retention.ms`: how long tombstones survive compaction. Default 1 day.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: the share of sealed data new since the last cleaning at
    /// which a compacted log is cleaned again. Default 0.5, Kafka's (0: whenever a segment was
    /// sealed since).
    pub min_cleanable_dirty_ratio: f64,
    /// `message.timestamp.before.max.ms` / `after.max.ms`: how far a CreateTime record's own
    /// timestamp may be behind or ahead of the append's `now_ms`. Default none (no bound).
    pub timestamp_before_max_ms: Option<i64>,
    pub timestamp_after_max_ms: Option<i64>,
    /// `min.insync.replicas`: kept with the topic's other configs, used by replication, not
    /// here. Default 1.
    pub min_insync_replicas: i32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_age_ms: 7 * 24 * 3600 * 1000,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            index_interval_bytes: 4096,
            flush: FlushPolicy::Interval(Duration::from_secs(1)),
            compact: false,
            delete: true,
            log_append_time: false,
            max_message_bytes: 1_048_588,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            timestamp_before_max_ms: None,
            timestamp_after_max_ms: None,
            min_insync_replicas: 1,
        }
    }
}

/// Result of [`PartitionLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record written (or of the duplicate batch first written).
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The stamped time for LogAppendTime topics, -1 otherwise.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// The batch was a retry of one already in the log: nothing was written.
    pub duplicate: bool,
    /// Records written (sum of recordCount), 0 for a duplicate.
    pub record_count: i64,
}

/// What [`PartitionLog::maintenance`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub segments_compacted: usize,
    pub records_removed: u64,
    pub log_start_offset: i64,
}

#[cfg(test)]
mod log_tests;
