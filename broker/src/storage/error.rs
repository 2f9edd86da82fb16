//! Errors of the storage layer.
//!
//! Structural damage to a record batch is a [`BatchError`] (it names the exact field that is
//! wrong); everything the log can fail with is a [`StorageError`]. The protocol layer maps them
//! to Kafka error codes:
//!
//! | variant | Kafka error code |
//! | --- | --- |
//! | `CorruptRecord` | CORRUPT_MESSAGE (2) |
//! | `InvalidRecord` | INVALID_RECORD (87) |
//! | `MessageTooLarge` | MESSAGE_TOO_LARGE (10) |
//! | `LargerThanSegment` | RECORD_LIST_TOO_LARGE (18) |
//! | `OffsetOutOfRange` | OFFSET_OUT_OF_RANGE (1) |
//! | `OutOfOrderSequence` | OUT_OF_ORDER_SEQUENCE_NUMBER (45) |
//! | `InvalidProducerEpoch` | INVALID_PRODUCER_EPOCH (47) |
//! | `OutsideTransaction` | INVALID_TXN_STATE (48) |
//! | `Io`, `Codec` | KAFKA_STORAGE_ERROR (56) / UNKNOWN_SERVER_ERROR (-1) |

use std::io;
use std::path::PathBuf;

/// What is structurally wrong with a record batch (magic v2 framing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a v2 batch header (61) are left.
    #[error("only {len} bytes left, a record batch header needs 61")]
    TooShort { len: usize },
    /// The batchLength field is smaller than the fixed header part that it covers.
    #[error("batchLength {batch_length} is below the minimum of 49")]
    InvalidLength { batch_length: i32 },
    /// The batchLength field points past the end of the buffer or file.
    #[error("batch needs {needed} bytes but only {available} are present")]
    Truncated { needed: u64, available: u64 },
    /// The magic byte is not 2 (older message formats are not accepted).
    #[error("unsupported magic {magic}, only record batch v2 is accepted")]
    BadMagic { magic: i8 },
    /// The CRC32C over attributes..end does not match the stored one.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// A record inside the batch does not decode: undecodable compression, a field that does
    /// not fit its record, or records that do not number recordCount.
    #[error("{reason}")]
    BadRecords { reason: String },
    /// On disk: a batch whose offsets go backwards or whose lastOffsetDelta is negative.
    #[error(
        "batch offsets [{base_offset}, {last_offset}] do not follow offset {expected_at_least}"
    )]
    OffsetsOutOfOrder {
        base_offset: i64,
        last_offset: i64,
        expected_at_least: i64,
    },
}

/// Errors returned by [`PartitionLog`](super::PartitionLog).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A batch in produce data (or on disk) is damaged. `position` is the byte offset of the
    /// batch within the buffer that was handed in.
    #[error("corrupt record batch at byte {position}: {source}")]
    CorruptRecord {
        position: usize,
        #[source]
        source: BatchError,
    },
    /// The batch is well formed but not acceptable (count mismatch, null key on a compacted
    /// topic, control batch from a client, empty produce data).
    #[error("invalid record: {reason}")]
    InvalidRecord { reason: String },
    /// A record's own timestamp is further from the broker's clock than the topic's
    /// `message.timestamp.before.max.ms` / `after.max.ms` allow.
    #[error("invalid timestamp: {reason}")]
    InvalidTimestamp { reason: String },
    /// One batch is larger than `max.message.bytes`.
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: u64, max: u64 },
    /// A partition's produce data is larger than the topic's `segment.bytes`: no segment could
    /// hold it (Kafka refuses it the same way).
    #[error("record batches of {size} bytes exceed the topic's segment.bytes {segment_bytes}")]
    LargerThanSegment { size: u64, segment_bytes: u64 },
    /// A segment roll would leave too little of the process's open-files limit free
    /// (`storage::open_files`).
    #[error(
        "a new segment would leave fewer than {kept} of the broker's {limit} open files free ({open} open, one per segment and connection): raise the open-files limit (ulimit -n, systemd's LimitNOFILE), or give the topic a larger segment.bytes or a shorter retention"
    )]
    OpenFiles { open: u64, limit: u64, kept: u64 },
    /// A read or DeleteRecords below the log start or past the log end.
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    /// An idempotent producer skipped or reused a sequence number.
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// An idempotent producer was fenced by a newer epoch.
    #[error("producer {producer_id}: epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// A batch outside a transaction from a producer with a transaction open here.
    #[error(
        "producer {producer_id} has a transaction open in this partition: its batches must be transactional until it ends"
    )]
    OutsideTransaction { producer_id: i64 },
    /// A cluster's leader lost records its followers hold (`crate::replication::lost_records`):
    /// the partition takes no writes until the lead moves.
    #[error("{reason}")]
    LostRecords { reason: String },
    /// An fsync of a segment's data failed: what was written since the last one that succeeded
    /// may not be on the disk, whatever a later fsync says (Linux may drop the pages it could
    /// not write and report success the next time).
    #[error("fsync of {} failed: {source}{}", path.display(), limit_hint(source))]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The partition's log had an fsync fail ([`StorageError::Sync`]): it takes no writes and
    /// serves no reads until the broker reads it back from the disk at its next start.
    #[error(
        "the partition's storage failed ({reason}): it takes no writes and serves no reads until the broker is restarted, which reads its log back from the disk"
    )]
    Failed { reason: String },
    /// A file operation failed; in-memory state was restored to what is on disk.
    #[error("i/o error on {}: {source}{}", path.display(), limit_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Decoding or re-encoding records (compaction, key checks) failed.
    #[error("record codec error in {context}: {reason}")]
    Codec {
        context: &'static str,
        reason: String,
    },
}

/// What to do about running out of file descriptors (one per segment, one per connection).
pub(crate) fn limit_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            " (the process's open-files limit: raise it, e.g. LimitNOFILE= in the systemd unit or ulimit -n)"
        }
        Some(libc::ENFILE) => " (the system's open-files limit: raise fs.file-max)",
        _ => "",
    }
}

/// Attach a path to an `io::Error`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { path, source }
}
