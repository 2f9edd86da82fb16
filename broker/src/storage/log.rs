//! [`PartitionLog`]: open/recover, validate and append, read, roll, flush, timestamp lookups.
//!
//! Open (recovery):
//! 1. a compaction swap a crash interrupted after its commit (`*.log.swap`) is completed, and
//!    leftovers of interrupted operations (`*.cleaned`, `*.tmp`, index files without a `.log`)
//!    are deleted;
//! 2. sealed segments are opened from their index files (only the batches after the last index
//!    entry are re-scanned); missing, corrupt or inconsistent index files are rebuilt by a full
//!    scan, which also truncates a torn tail (a segment rolled but not yet sealed at a crash),
//!    then the data is fsynced before the new index files are written;
//! 3. the last segment is scanned batch by batch with CRC checks and truncated at the first
//!    incomplete or corrupt batch (a `tracing` warning names the file and byte counts; what is
//!    cut is first copied to `<segment>.log.discarded-<ms>`, deleted with the segment);
//! 4. producer state is rebuilt by replaying the batch headers of **all** segments (one 61-byte
//!    positional read per batch; Kafka's snapshot files would bound this, not done yet).
//!
//! Appends are all-or-nothing: every batch of the produce data is validated (every record read,
//! see `records.rs`; the broker does that before taking the log's lock and appends with
//! [`PartitionLog::append_walked`]) and sequence-checked before one positional write of the patched batches; a failed write is truncated away and no
//! in-memory state changes (see `segment.rs`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::batch::{
    BatchHeader, NO_TIMESTAMP, check_batch, clear_delete_horizon, set_base_offset,
    set_log_append_time,
};
use super::compaction::CompactionState;
use super::epochs::LeaderEpochs;
use super::error::{StorageError, io_err};
use super::index::write_file_atomic;
use super::producer::{ProducerStates, SeqCheck};
use super::records::check_stored_records;
use super::segment::{IndexStart, OpenMode, Segment, SegmentView};
use super::txn::{AbortedTxn, Marker, TxnState, marker_batch, marker_of};
use super::{AppendInfo, FlushPolicy, LogConfig, MaintenanceReport};

/// File holding the log start offset set by DeleteRecords (decimal text).
pub(crate) const LOG_START_FILE: &str = "log-start-offset";

/// File holding the offset from which the batches' leader epochs are this broker's (decimal
/// text): the log's end when it was first opened by a build that stamps them. Batches below it
/// carry what their producers wrote there (any number), which says nothing of leaders.
pub(crate) const EPOCHS_FROM_FILE: &str = "leader-epochs-from";

/// The active segment's file, to be fsynced without holding the log
/// ([`PartitionLog::start_flush`]).
pub struct PendingFlush(SegmentView);

impl PendingFlush {
    pub fn sync(&self) -> Result<(), StorageError> {
        self.0.sync()
    }
}

/// A rolled segment to be made durable without the log's lock ([`PartitionLog::start_seals`]):
/// its data fsynced, then its index files written. Until then a crash can lose its unsynced tail
/// (as it can the active segment's), and a restart without its index files scans it whole.
pub struct PendingSeal {
    base_offset: i64,
    data: SegmentView,
    index_files: [(PathBuf, Vec<u8>); 2],
}

impl PendingSeal {
    pub fn run(&self) -> Result<(), StorageError> {
        self.data.sync()?;
        if !self.data.still_at_its_path() {
            // Deleted meanwhile (or its topic was, and maybe made again): no index files to
            // write, and none to leave beside another log.
            return Ok(());
        }
        for (path, bytes) in &self.index_files {
            write_file_atomic(path, bytes).map_err(io_err(path))?;
        }
        Ok(())
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }
}

/// A read planned under the log's lock ([`PartitionLog::plan_read`]) and done without it.
pub struct ReadPlan {
    fetch_offset: i64,
    max_bytes: usize,
    /// Whether the first batch is read whatever its size (KIP-74), as by default.
    first_whole: bool,
    /// Views of the segments to look in, in order, each with where to look from.
    segments: Vec<(SegmentView, IndexStart)>,
}

impl ReadPlan {
    /// This read within `max_bytes` even for its first batch: none when that is larger. For
    /// the partitions of a fetch response after its first non-empty one, as Kafka reads them.
    pub fn within_budget(mut self) -> ReadPlan {
        self.first_whole = false;
        self
    }

    /// The batches, as [`PartitionLog::read`] returns them.
    pub fn read(self) -> Result<Bytes, StorageError> {
        for (seg, from) in &self.segments {
            let from = seg.start_position(*from);
            if let Some(pos) = seg.find_position(from, self.fetch_offset)? {
                let batches = seg.read_batches(pos, self.max_bytes, self.first_whole)?;
                return Ok(Bytes::from(batches));
            }
        }
        Ok(Bytes::new())
    }
}

/// What a partition keeps of one producer (DescribeProducers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub epoch: i16,
    /// The sequence of its last record here; -1 when none is kept.
    pub last_sequence: i32,
    /// The largest timestamp of its last batch or transaction marker.
    pub last_timestamp: i64,
    /// The first offset of its transaction open here, if one is.
    pub transaction_start: Option<i64>,
}

/// One partition's log. See the module docs of `storage` for the invariants.
pub struct PartitionLog {
    pub(super) dir: PathBuf,
    pub(super) config: LogConfig,
    /// Ordered by base offset; never empty; the last one is active.
    pub(super) segments: Vec<Segment>,
    pub(super) log_start_offset: i64,
    pub(super) producers: ProducerStates,
    /// Transactions open in this partition, and the aborted ones (`txn.rs`).
    pub(super) txns: TxnState,
    /// `now_ms` of the last fsync of the active segment.
    last_flush_ms: i64,
    /// Appended data not yet fsynced.
    unflushed: bool,
    /// What the last compaction run covered (to skip idle runs).
    pub(super) compaction: CompactionState,
    /// Base offsets of rolled segments not yet fsynced, nor their index files written.
    pub(super) unsealed: Vec<i64>,
    /// Why an fsync of this log's data failed, if one did ([`StorageError::Sync`]): what was
    /// written since the last good one may be lost whatever a later fsync says, so the log
    /// takes no writes and serves no reads (which could hand out records a restart will not
    /// find) until the broker reads it back from the disk at its next start, as Kafka takes a
    /// log directory offline.
    pub(super) failed: Option<String>,
    /// Where each leader epoch began (`epochs.rs`), from the batches at or after
    /// `epochs_from`.
    pub(super) epochs: LeaderEpochs,
    epochs_from: i64,
    /// The largest epoch in any batch header, below `epochs_from` too: a leader takes a larger
    /// one, so that no client's position names an epoch above the leader's.
    max_epoch_seen: i32,
    /// The epoch stamped into every batch appended as a leader; -1 stamps none (a follower's
    /// log, whose batches come stamped, and the storage tests').
    pub(super) leader_epoch: i32,
}

impl PartitionLog {
    /// Open (creating if needed) the log in `dir`, recovering a torn tail.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<PartitionLog, StorageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        super::compaction::complete_interrupted_swaps(&dir)?;
        let mut bases = Vec::new();
        let mut index_files = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            if name.ends_with(".cleaned") || name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let Some((stem, ext)) = name.split_once('.') else {
                continue;
            };
            let Some(base) = parse_base(stem) else {
                continue;
            };
            match ext {
                "log" => bases.push(base),
                "index" | "timeindex" => index_files.push((base, path)),
                _ => {}
            }
        }
        bases.sort_unstable();
        for (base, path) in index_files {
            if bases.binary_search(&base).is_err() {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        let checkpoint = read_log_start(&dir)?;
        let interval = config.index_interval_bytes;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            let mode = if i + 1 == bases.len() {
                OpenMode::Recover
            } else {
                OpenMode::Sealed
            };
            segments.push(Segment::open(&dir, base, interval, mode, now_ms)?);
        }
        if segments.is_empty() {
            segments.push(Segment::create(
                &dir,
                checkpoint.unwrap_or(0),
                interval,
                now_ms,
            )?);
        }
        // Only compaction (which drops a segment left empty) and a damaged segment's cut tail
        // leave offsets in no segment; a removed file does too, and must not go unsaid.
        if !config.compact {
            for missing in offsets_in_no_segment(&segments) {
                tracing::warn!(
                    dir = %dir.display(),
                    from = missing.start(),
                    to = missing.end(),
                    "offsets {}..={} are in no segment file (one removed, or cut short?): consumers skip them",
                    missing.start(),
                    missing.end()
                );
            }
        }
        let log_end = segments.last().map(|s| s.next_offset).unwrap_or(0);
        if let Some(start) = checkpoint.filter(|&start| start > log_end) {
            tracing::warn!(
                dir = %dir.display(),
                log_start = start,
                log_end,
                "the log-start-offset file is past the log's end: every record is hidden, and the next is written at {log_end}"
            );
        }
        let log_start = segments[0]
            .base_offset
            .max(checkpoint.unwrap_or(0))
            .min(log_end);
        let epochs_from = epochs_from(&dir, log_end)?;
        let mut epochs = LeaderEpochs::default();
        let mut max_epoch_seen = -1;
        let mut producers = ProducerStates::default();
        let mut txns = TxnState::default();
        for seg in &segments {
            let mut failed = None;
            seg.for_each_header(0, |pos, h| {
                producers.replay(h);
                max_epoch_seen = max_epoch_seen.max(h.partition_leader_epoch);
                if h.base_offset >= epochs_from {
                    epochs.observe(h.partition_leader_epoch, h.base_offset);
                }
                // A marker is read whole (78 bytes): whether it commits or aborts is in its
                // record.
                let marker = if h.is_control() && h.is_transactional() {
                    match seg.read_range(pos, pos + h.total_size() as u64) {
                        Ok(b) => marker_of(&b),
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    }
                } else {
                    None
                };
                txns.observe(h, marker);
                true
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(PartitionLog {
            dir,
            config,
            segments,
            log_start_offset: log_start,
            producers,
            txns,
            last_flush_ms: now_ms,
            unflushed: false,
            compaction: CompactionState::default(),
            unsealed: Vec::new(),
            failed: None,
            epochs,
            epochs_from,
            max_epoch_seen,
            leader_epoch: -1,
        })
    }

    /// Makes this log a leader's at `epoch`: every batch appended from now on carries it, and
    /// the epoch begins at the log's end (OffsetForLeaderEpoch answers for it before anything
    /// is written, as Kafka's leaders do).
    pub fn set_leader_epoch(&mut self, epoch: i32) {
        self.leader_epoch = epoch;
        self.epochs.observe(epoch, self.log_end_offset());
    }

    /// The largest leader epoch any batch of this log carries, its own or a producer's from
    /// before epochs were stamped (-1 when none does).
    pub fn max_epoch_seen(&self) -> i32 {
        self.max_epoch_seen
    }

    /// The latest leader epoch of this log (ListOffsets for the log's end), -1 for none.
    pub fn latest_epoch(&self) -> i32 {
        self.epochs.latest().unwrap_or(-1)
    }

    /// The leader epoch that wrote `offset` (ListOffsets), -1 for none known.
    pub fn epoch_at(&self, offset: i64) -> i32 {
        self.epochs.epoch_at(offset).unwrap_or(-1)
    }

    /// OffsetForLeaderEpoch: (epoch, end offset) for `epoch` (see [`LeaderEpochs::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// Notes the epoch of a batch appended at the log's end.
    pub(super) fn observe_epoch(&mut self, h: &BatchHeader) {
        self.max_epoch_seen = self.max_epoch_seen.max(h.partition_leader_epoch);
        if h.base_offset >= self.epochs_from {
            self.epochs.observe(h.partition_leader_epoch, h.base_offset);
        }
    }

    /// Refuses with [`StorageError::Failed`] once an fsync of the log failed.
    pub(super) fn check_not_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(reason) => Err(StorageError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Notes an error of a write or fsync of the log's data: a failed fsync fails the log
    /// ([`PartitionLog::failed`]). Returns the error.
    pub fn note_error(&mut self, e: StorageError) -> StorageError {
        if matches!(e, StorageError::Sync { .. }) && self.failed.is_none() {
            self.failed = Some(e.to_string());
        }
        e
    }

    /// Why an fsync of this log's data failed, if one did: the log then takes no writes and
    /// serves no reads until the broker is restarted.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Validate and append the batches of one produce partition (all or none).
    ///
    /// Every batch is checked (size, framing, CRC, counts, keys on compacted topics, producer
    /// sequence) before anything is written. Idempotent retries are not written: if every batch
    /// is a duplicate the result has `duplicate: true` and the offsets first assigned; if only
    /// some are (not possible with Kafka >= 0.11 clients, which send one batch per partition),
    /// the duplicates are skipped and the offsets of the written batches are returned.
    pub fn append(&mut self, records: &[u8], now_ms: i64) -> Result<AppendInfo, StorageError> {
        self.append_checked(records, now_ms, false, true)
    }

    /// [`PartitionLog::append`] for batches the broker's plugins rewrote: such a batch keeps
    /// the producer's span of offsets (lastOffsetDelta) while holding fewer records, each at
    /// the offset it was produced at, or none (a header-only batch), so the offsets a producer
    /// computes for its records stay theirs and an idempotent producer's next batch is in
    /// sequence; the offsets of the removed records stay unused, as after compaction.
    pub fn append_rewritten(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        self.append_checked(records, now_ms, true, true)
    }

    /// [`PartitionLog::append`] (or, with `rewritten`, [`PartitionLog::append_rewritten`]) of
    /// data whose records [`check_produce_records`] walked already under this log's config: the
    /// framing, counts and sequences are checked again, the records are not.
    pub fn append_walked(
        &mut self,
        records: &[u8],
        now_ms: i64,
        rewritten: bool,
    ) -> Result<AppendInfo, StorageError> {
        self.append_checked(records, now_ms, rewritten, false)
    }

    fn append_checked(
        &mut self,
        records: &[u8],
        now_ms: i64,
        rewritten: bool,
        walk: bool,
    ) -> Result<AppendInfo, StorageError> {
        self.check_not_failed()?;
        let batches = check_produce_data(records, &self.config, rewritten, walk, now_ms)?;
        let mut staged = HashMap::new();
        let mut out = Vec::with_capacity(records.len());
        let mut written: Vec<(usize, BatchHeader)> = Vec::with_capacity(batches.len());
        let mut duplicates = Vec::new();
        let mut next = self.log_end_offset();
        let mut record_count = 0i64;
        for h in &batches {
            let (pos, h) = (h.0, h.1);
            if h.has_producer_id() && !h.is_transactional() && self.txns.is_open(h.producer_id) {
                return Err(StorageError::OutsideTransaction {
                    producer_id: h.producer_id,
                });
            }
            if let SeqCheck::Duplicate(meta) = self.producers.check(&staged, &h)? {
                duplicates.push(meta);
                continue;
            }
            let start = out.len();
            out.extend_from_slice(&records[pos..pos + h.total_size()]);
            let b = &mut out[start..];
            set_base_offset(b, next);
            if self.leader_epoch >= 0 {
                super::batch::put_i32(
                    b,
                    super::batch::PARTITION_LEADER_EPOCH_POS,
                    self.leader_epoch,
                );
            }
            if self.config.log_append_time {
                set_log_append_time(b, now_ms);
            }
            if h.delete_horizon().is_some() {
                clear_delete_horizon(b);
            }
            let h = BatchHeader::parse(b).expect("validated header");
            self.producers.stage(&mut staged, &h);
            written.push((start, h));
            record_count += h.record_count as i64;
            next = h.next_offset();
        }
        if written.is_empty() {
            // Every batch was a retry: answer with the offsets first assigned.
            let (first, last) = (duplicates[0], duplicates[duplicates.len() - 1]);
            return Ok(AppendInfo {
                base_offset: first.first_offset,
                last_offset: last.last_offset,
                log_append_time: -1,
                log_start_offset: self.log_start_offset,
                duplicate: true,
                record_count: 0,
            });
        }
        self.maybe_roll(out.len() as u64, next - 1, now_ms, true)?;
        let sync = self.config.flush == FlushPolicy::Always;
        self.active_mut()
            .append(&out, &written, sync, now_ms)
            .map_err(|e| self.note_error(e))?;
        self.producers.commit(staged);
        for (_, h) in &written {
            self.txns.observe(h, None);
            self.observe_epoch(h);
        }
        self.mark_appended(sync, now_ms);
        Ok(AppendInfo {
            base_offset: written[0].1.base_offset,
            last_offset: next - 1,
            log_append_time: if self.config.log_append_time {
                now_ms
            } else {
                -1
            },
            log_start_offset: self.log_start_offset,
            duplicate: false,
            record_count,
        })
    }

    /// Ends `producer_id`'s transaction in this partition with a COMMIT or ABORT marker (the
    /// transaction coordinator's write) and returns the marker's offset. Written whether or not
    /// a transaction is open here, as Kafka's coordinator does (a retried end is harmless). The
    /// marker's epoch becomes the producer's: batches of an older epoch are fenced from here on.
    pub fn append_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        now_ms: i64,
    ) -> Result<i64, StorageError> {
        self.check_not_failed()?;
        let mut batch = marker_batch(producer_id, producer_epoch, marker, 0, now_ms);
        let offset = self.log_end_offset();
        set_base_offset(&mut batch, offset);
        if self.leader_epoch >= 0 {
            super::batch::put_i32(
                &mut batch,
                super::batch::PARTITION_LEADER_EPOCH_POS,
                self.leader_epoch,
            );
        }
        if self.config.log_append_time {
            set_log_append_time(&mut batch, now_ms);
        }
        let h = BatchHeader::parse(&batch).expect("a marker's header");
        self.maybe_roll(batch.len() as u64, offset, now_ms, true)?;
        let sync = self.config.flush == FlushPolicy::Always;
        self.active_mut()
            .append(&batch, &[(0, h)], sync, now_ms)
            .map_err(|e| self.note_error(e))?;
        self.producers.replay(&h);
        self.txns.observe(&h, Some(marker));
        self.observe_epoch(&h);
        self.mark_appended(sync, now_ms);
        Ok(offset)
    }

    /// The last stable offset below `high_watermark`: the first offset of the oldest
    /// transaction open here or ended by a marker not below the high watermark yet (`txn.rs`),
    /// or the high watermark when there is none or it starts above; never below the log start
    /// (DeleteRecords or retention may have removed the start of an open transaction).
    pub fn last_stable_offset(&mut self, high_watermark: i64) -> i64 {
        let start = self.log_start_offset;
        self.txns
            .first_unstable(high_watermark)
            .map_or(high_watermark, |first| first.max(start).min(high_watermark))
    }

    /// The epoch `producer_id` last wrote here with (or a marker fenced it with).
    pub fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.epoch_of(producer_id)
    }

    /// The producers with a transaction open here, with the epoch each last wrote with.
    pub fn open_transactions(&self) -> Vec<(i64, i16)> {
        self.txns
            .open_producers()
            .map(|pid| (pid, self.producers.epoch_of(pid).unwrap_or(0)))
            .collect()
    }

    /// The idempotent and transactional producers whose state this partition keeps
    /// (DescribeProducers), by producer id.
    pub fn active_producers(&self) -> Vec<ActiveProducer> {
        let mut out: Vec<ActiveProducer> = self
            .producers
            .all()
            .map(|(producer_id, entry)| ActiveProducer {
                producer_id,
                epoch: entry.epoch,
                last_sequence: entry.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: entry.last_timestamp,
                transaction_start: self.txns.open_since(producer_id),
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    /// Whether `producer_id` has a transaction open in this partition.
    #[cfg(test)]
    pub(crate) fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.txns.is_open(producer_id)
    }

    /// The aborted transactions whose records a read from `from` below `to` may hold, for a
    /// read_committed consumer to drop.
    pub fn aborted_transactions(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.txns
            .aborted_between(from.max(self.log_start_offset), to)
    }

    /// Notes an append for the flush policy: fsynced already (`synced`) or left to the next
    /// flush.
    pub(super) fn mark_appended(&mut self, synced: bool, now_ms: i64) {
        if synced {
            self.last_flush_ms = now_ms;
        } else {
            self.unflushed = true;
        }
    }

    /// Roll before writing `len` more bytes ending at `last_offset` if the active segment is
    /// too big, too old, or its indexes would overflow; with `keep_files_free`, not into the
    /// share of the open-files limit kept free (`open_files`).
    pub(super) fn maybe_roll(
        &mut self,
        len: u64,
        last_offset: i64,
        now_ms: i64,
        keep_files_free: bool,
    ) -> Result<(), StorageError> {
        let active = self.active();
        if active.size == 0 {
            return Ok(());
        }
        let full = active.size + len > self.config.segment_bytes
            || active.would_overflow(len, last_offset);
        let too_old = now_ms - active.created_ms > self.config.segment_age_ms;
        if full || too_old {
            // A new segment is one more open file: refused past the kept share of the limit,
            // where a roll only for age waits for room instead.
            let refused = keep_files_free
                .then(|| super::open_files::room_for(1).err())
                .flatten();
            if let Some(no) = refused {
                if !full {
                    return Ok(());
                }
                return Err(StorageError::OpenFiles {
                    open: no.open,
                    limit: no.limit,
                    kept: no.kept,
                });
            }
            self.roll(now_ms)?;
            super::open_files::opened(1);
        }
        Ok(())
    }

    /// Seal the active segment and start a new one at the log end offset. The sealed segment's
    /// fsync and index files are left to [`PartitionLog::start_seals`], so that producers of the
    /// partition do not wait for the disk at a roll.
    pub(super) fn roll(&mut self, now_ms: i64) -> Result<(), StorageError> {
        let next = self.log_end_offset();
        let seg = Segment::create(&self.dir, next, self.config.index_interval_bytes, now_ms)?;
        let sealed = self.active_mut();
        sealed.seal();
        let sealed = sealed.base_offset;
        self.segments.push(seg);
        self.unsealed.push(sealed);
        // The active segment is new and empty; what was unflushed belongs to the pending seal.
        self.unflushed = false;
        self.last_flush_ms = now_ms;
        Ok(())
    }

    /// The seals of the segments rolled since the last call, to be run after the log's lock is
    /// released ([`PendingSeal::run`]) and reported back with [`PartitionLog::seal_done`]; a
    /// seal that failed is started again next time. Cheap: the index files are encoded, nothing
    /// is written.
    /// None once an fsync of the log failed: a retried fsync may succeed though the data never
    /// reached the disk, and the index files a seal writes would make the next start trust the
    /// segment instead of reading it whole.
    pub fn start_seals(&self) -> Vec<PendingSeal> {
        if self.failed.is_some() {
            return Vec::new();
        }
        self.unsealed
            .iter()
            .filter_map(|&base| {
                let seg = &self.segments[segment_at(&self.segments, base)?];
                Some(PendingSeal {
                    base_offset: base,
                    data: seg.view(),
                    index_files: seg.index_files(),
                })
            })
            .collect()
    }

    /// A seal from [`PartitionLog::start_seals`] completed: the segment's indexes are left to
    /// the files it wrote. If the segment was deleted meanwhile (retention, DeleteRecords), the
    /// index files the seal wrote are removed again.
    pub fn seal_done(&mut self, seal: &PendingSeal) {
        self.unsealed.retain(|&b| b != seal.base_offset);
        match segment_at(&self.segments, seal.base_offset) {
            Some(i) => {
                let seg = &mut self.segments[i];
                if seal.data.is_of(seg) && seal.data.still_at_its_path() {
                    seg.release_indexes();
                }
            }
            None => {
                for (path, _) in &seal.index_files {
                    let _ = fs::remove_file(path);
                }
            }
        }
    }

    /// Runs the pending seals here, with the log held (shutdown, [`PartitionLog::flush`]); all
    /// of them are tried, the first failure is returned and the failed ones stay pending.
    pub(crate) fn seal_all(&mut self) -> Result<(), StorageError> {
        self.check_not_failed()?;
        let mut first_error = None;
        for seal in self.start_seals() {
            match seal.run() {
                Ok(()) => self.seal_done(&seal),
                Err(e) => {
                    let e = self.note_error(e);
                    first_error.get_or_insert(e);
                }
            }
        }
        // Bases left of segments deleted meanwhile.
        let segments = &self.segments;
        self.unsealed.retain(|&b| segment_at(segments, b).is_some());
        first_error.map_or(Ok(()), Err)
    }

    /// Whole batches starting with the one that contains `fetch_offset`: at least one batch
    /// even if larger than `max_bytes` (KIP-74), never more than one segment's worth.
    /// `OffsetOutOfRange` below the log start or past the log end; empty at the log end.
    pub fn read(&self, fetch_offset: i64, max_bytes: usize) -> Result<Bytes, StorageError> {
        self.plan_read(fetch_offset, max_bytes)?.read()
    }

    /// What [`PartitionLog::read`] would read, to be read after the log's lock is released, so
    /// that a consumer reading (maybe from disk, maybe megabytes) never holds up the producers
    /// of the partition. Cheap: offset checks and an index lookup, no I/O.
    pub fn plan_read(&self, fetch_offset: i64, max_bytes: usize) -> Result<ReadPlan, StorageError> {
        self.check_not_failed()?;
        let (start, end) = (self.log_start_offset, self.log_end_offset());
        if fetch_offset < start || fetch_offset > end {
            return Err(StorageError::OffsetOutOfRange {
                offset: fetch_offset,
                start,
                end,
            });
        }
        let mut plan = ReadPlan {
            fetch_offset,
            max_bytes,
            first_whole: true,
            segments: Vec::new(),
        };
        if fetch_offset == end {
            return Ok(plan);
        }
        // The batch is in the segment holding the offset or, when the offset falls in a gap at
        // its end (compaction), it is the first batch of the next segment that has any.
        let first = self.segment_for(fetch_offset);
        for seg in &self.segments[first..] {
            plan.segments
                .push((seg.view(), seg.index_start(fetch_offset)));
            if seg.base_offset > fetch_offset && seg.size > 0 {
                break;
            }
        }
        Ok(plan)
    }

    /// [`PartitionLog::plan_read`] of the batches below `limit` only: a leader's high
    /// watermark, which consumers do not read past. `limit` is a batch boundary (a follower's
    /// log end); at or past the log end it limits nothing.
    pub fn plan_read_below(
        &self,
        fetch_offset: i64,
        max_bytes: usize,
        limit: i64,
    ) -> Result<ReadPlan, StorageError> {
        let mut plan = self.plan_read(fetch_offset, max_bytes)?;
        if limit >= self.log_end_offset() {
            return Ok(plan);
        }
        if fetch_offset >= limit {
            plan.segments.clear();
            return Ok(plan);
        }
        let seg = &self.segments[self.segment_for(limit)];
        let cut = seg.view().find_position(seg.index_position(limit), limit)?;
        plan.segments
            .retain(|(v, _)| v.base_offset <= seg.base_offset);
        if let (Some(cut), Some((last, _))) = (cut, plan.segments.last_mut())
            && last.base_offset == seg.base_offset
        {
            last.size = last.size.min(cut);
        }
        Ok(plan)
    }

    /// Index of the last segment whose base offset <= `offset` (0 if none).
    fn segment_for(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    /// The highest producer id that wrote to this log (of the producers whose state is kept).
    pub fn max_producer_id(&self) -> Option<i64> {
        self.producers.max_producer_id()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// Offset the next record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// ListOffsets by timestamp: the first record at or after the log start whose timestamp is
    /// at least `ts`, as `(offset, timestamp)`. Batches are found with the time index and header
    /// scans (maxTimestamp >= `ts`), then decoded to return the exact record; a batch that holds
    /// none (a plugin emptied it, whose header keeps the producer's timestamps, or one the log
    /// start cuts) gives way to the next. For LogAppendTime batches every record has the batch's
    /// maxTimestamp. If a batch cannot be decoded, its base offset and maxTimestamp are returned.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        self.check_not_failed()?;
        let start = self.log_start_offset;
        for seg in &self.segments {
            if seg.max_timestamp == NO_TIMESTAMP
                || seg.max_timestamp < ts
                || seg.next_offset <= start
            {
                continue;
            }
            let mut found = None;
            seg.for_each_header(seg.position_for_timestamp(ts), |pos, h| {
                if h.max_timestamp < ts || h.last_offset() < start || h.record_count == 0 {
                    return true;
                }
                match first_at_or_after(seg, pos, h, ts, start) {
                    Ok(None) => true,
                    other => {
                        found = Some(other);
                        false
                    }
                }
            })?;
            if let Some(found) = found {
                return found;
            }
        }
        Ok(None)
    }

    /// ListOffsets MAX_TIMESTAMP: **(timestamp, offset)** — note the order — of the record with
    /// the largest timestamp still in the log (at or after the log start offset); the earliest
    /// such record when several share it. Exact to the record, as Kafka 3.8+ (KIP-734): the
    /// winning batch is decoded. `None` for an empty log.
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>, StorageError> {
        self.check_not_failed()?;
        let start = self.log_start_offset;
        // The whole batch holding the largest timestamp: (timestamp, segment, position, header).
        let mut best: Option<(i64, usize, u64, BatchHeader)> = None;
        // The batch cut by the log start (DeleteRecords can leave one): its header's maximum may
        // belong to a deleted record, so it is decoded before it competes.
        let mut cut: Option<(usize, u64, BatchHeader)> = None;
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.max_timestamp == NO_TIMESTAMP
                || seg.next_offset <= start
                || best.is_some_and(|(t, ..)| seg.max_timestamp <= t)
            {
                continue;
            }
            // A segment wholly after the log start holds its cached maximum; the time index
            // leads close to it. A segment cut by the log start is scanned whole.
            let from = if seg.base_offset >= start && seg.offset_of_max_timestamp >= start {
                seg.position_for_timestamp(seg.max_timestamp)
            } else {
                0
            };
            let earlier = best;
            for from in [from, 0] {
                seg.for_each_header(from, |pos, h| {
                    // A batch without records (a plugin emptied it) holds no timestamp.
                    if h.last_offset() < start || h.record_count == 0 {
                        return true;
                    }
                    if h.base_offset < start {
                        cut = Some((i, pos, *h));
                    } else if best.is_none_or(|(t, ..)| h.max_timestamp > t) {
                        best = Some((h.max_timestamp, i, pos, *h));
                    }
                    true
                })?;
                if from == 0 || best.is_some_and(|(t, j, ..)| j == i && t >= seg.max_timestamp) {
                    break;
                }
                // The segment's largest timestamp was an emptied batch's: a batch before the
                // time index's entry may hold the largest of those left. Again from the start.
                best = earlier;
            }
        }
        let best = match best {
            Some((_, i, pos, h)) => self.exact_max(i, pos, &h)?,
            None => None,
        };
        let cut = match cut {
            Some((i, pos, h)) => self.exact_max(i, pos, &h)?,
            None => None,
        };
        Ok(match (cut, best) {
            // On a tie the cut batch wins: it holds the earlier offsets.
            (Some(c), Some(b)) => Some(if c.0 >= b.0 { c } else { b }),
            (c, b) => c.or(b),
        })
    }

    /// (timestamp, offset) of the earliest live record with the batch's largest live timestamp
    /// (in a LogAppendTime batch every record has the batch's: its first live record, which
    /// need not be at the batch's base offset after compaction or a plugin's filter).
    fn exact_max(
        &self,
        seg: usize,
        pos: u64,
        h: &BatchHeader,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let start = self.log_start_offset;
        let bytes = self.segments[seg].read_range(pos, pos + h.total_size() as u64)?;
        let append_time = h.is_log_append_time();
        let exact = RecordBatchDecoder::decode(&mut Bytes::from(bytes))
            .ok()
            .and_then(|set| {
                let live = || set.records.iter().filter(|r| r.offset >= start);
                if append_time {
                    return live().next().map(|r| (h.max_timestamp, r.offset));
                }
                let top = live().map(|r| r.timestamp).max()?;
                live()
                    .find(|r| r.timestamp == top)
                    .map(|r| (r.timestamp, r.offset))
            });
        Ok(exact.or(Some((h.max_timestamp, h.last_offset()))))
    }

    /// Pending seals, retention (time, size), then compaction, as configured, all with the log
    /// held. Never touches the active segment.
    pub fn maintenance(&mut self, now_ms: i64) -> Result<MaintenanceReport, StorageError> {
        self.seal_all()?;
        let mut report = self.retention(now_ms)?;
        self.txns.forget_below(self.log_start_offset);
        self.compact(now_ms, &mut report)?;
        report.log_start_offset = self.log_start_offset;
        Ok(report)
    }

    /// The retention half of [`PartitionLog::maintenance`] (with `cleanup.policy` delete);
    /// compaction is then [`PartitionLog::start_compaction`] and the steps after it.
    pub fn retention(&mut self, now_ms: i64) -> Result<MaintenanceReport, StorageError> {
        let mut report = MaintenanceReport::default();
        if self.config.delete {
            self.apply_retention(now_ms, &mut report)?;
        }
        report.log_start_offset = self.log_start_offset;
        Ok(report)
    }

    /// True when the flush policy is `Interval(d)`, data is unflushed and `d` has passed.
    pub fn needs_flush(&self, now_ms: i64) -> bool {
        match self.config.flush {
            FlushPolicy::Interval(d) => {
                self.unflushed && now_ms.saturating_sub(self.last_flush_ms) >= d.as_millis() as i64
            }
            FlushPolicy::Never | FlushPolicy::Always => false,
        }
    }

    /// Starts the flush [`PartitionLog::needs_flush`] asks for, to be finished after the log's
    /// lock is released: appends then go on while the disk syncs, instead of every producer of
    /// the partition (and the threads serving them) waiting for the fsync. The data appended so
    /// far counts as flushed from now on; what is appended meanwhile counts as unflushed (the
    /// sync may or may not cover it). If the sync fails, [`PartitionLog::flush_failed`] marks
    /// the data unflushed again.
    pub fn start_flush(&mut self, now_ms: i64) -> Result<Option<PendingFlush>, StorageError> {
        self.check_not_failed()?;
        if !self.unflushed {
            self.last_flush_ms = now_ms;
            return Ok(None);
        }
        let view = self.active().view();
        self.unflushed = false;
        self.last_flush_ms = now_ms;
        Ok(Some(PendingFlush(view)))
    }

    /// A flush started with [`PartitionLog::start_flush`] failed: the data is unflushed and
    /// the next check tries again.
    pub fn flush_failed(&mut self) {
        self.unflushed = true;
        self.last_flush_ms = i64::MIN;
    }

    /// fsync everything: the rolled segments not yet sealed, then the active segment (also when
    /// a seal fails, whose error is then returned).
    pub fn flush(&mut self, now_ms: i64) -> Result<(), StorageError> {
        // After a failed fsync, a retried one proves nothing (see `start_seals`).
        self.check_not_failed()?;
        let sealed = self.seal_all();
        if self.unflushed {
            self.active().sync().map_err(|e| self.note_error(e))?;
            self.unflushed = false;
        }
        self.last_flush_ms = now_ms;
        sealed
    }

    /// fsync and close. Dropping without `close` loses at most what the flush policy allows.
    pub fn close(mut self) -> Result<(), StorageError> {
        let now = self.last_flush_ms;
        self.flush(now)
    }

    /// Replace the config (takes effect at the next append/maintenance; a changed
    /// `index_interval_bytes` applies to new segments).
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Delete the partition directory (topic deletion).
    pub fn remove(self) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }

    pub(super) fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }

    pub(super) fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has a segment")
    }

    pub(super) fn write_log_start(&self) -> Result<(), StorageError> {
        let path = self.dir.join(LOG_START_FILE);
        write_file_atomic(&path, self.log_start_offset.to_string().as_bytes())
            .map_err(io_err(&path))
    }

    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    #[cfg(test)]
    pub(crate) fn segment_bases(&self) -> Vec<i64> {
        self.segments.iter().map(|s| s.base_offset).collect()
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The first record of the batch at `pos` of `seg` (header `h`) at or after `start` whose
/// timestamp is at least `ts`, as `(offset, timestamp)`: `None` when it holds none, the batch's
/// base offset and maxTimestamp when it cannot be decoded. A LogAppendTime batch's records all
/// have its maxTimestamp; its first record may not be at its base offset once compaction or a
/// plugin's filter removed some.
fn first_at_or_after(
    seg: &Segment,
    pos: u64,
    h: &BatchHeader,
    ts: i64,
    start: i64,
) -> Result<Option<(i64, i64)>, StorageError> {
    let bytes = seg.read_range(pos, pos + h.total_size() as u64)?;
    let append_time = h.is_log_append_time().then_some(h.max_timestamp);
    Ok(match RecordBatchDecoder::decode(&mut Bytes::from(bytes)) {
        Ok(set) => set
            .records
            .iter()
            .map(|r| (r.offset, append_time.unwrap_or(r.timestamp)))
            .find(|&(offset, t)| t >= ts && offset >= start),
        Err(_) => Some((h.base_offset.max(start), h.max_timestamp)),
    })
}

/// Index of the segment whose base offset is `base`.
fn segment_at(segments: &[Segment], base: i64) -> Option<usize> {
    segments.binary_search_by_key(&base, |s| s.base_offset).ok()
}

/// Structural and semantic checks of produce data for a log with `config`; returns (position,
/// header) per batch. With `walk`, every record is read as well ([`check_stored_records`]); an
/// append whose data was walked already (before the log's lock was taken) skips that.
fn check_produce_data(
    records: &[u8],
    config: &LogConfig,
    rewritten: bool,
    walk: bool,
    now_ms: i64,
) -> Result<Vec<(usize, BatchHeader)>, StorageError> {
    if records.is_empty() {
        return Err(invalid("produce data holds no record batch".into()));
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        let corrupt = |source| StorageError::CorruptRecord {
            position: pos,
            source,
        };
        let h = BatchHeader::parse(rest).map_err(corrupt)?;
        let size = h.total_size() as u64;
        if size > config.max_message_bytes {
            return Err(StorageError::MessageTooLarge {
                size,
                max: config.max_message_bytes,
            });
        }
        check_batch(rest).map_err(corrupt)?;
        let counts_ok = if rewritten {
            // A wider span than the records (the offsets of records a plugin dropped), or no
            // records (then no compressed payload).
            h.record_count >= 0
                && h.last_offset_delta >= h.record_count.max(1) - 1
                && (h.record_count > 0 || h.compression() == 0)
        } else {
            h.record_count > 0 && h.last_offset_delta == h.record_count - 1
        };
        if !counts_ok {
            return Err(invalid(format!(
                "batch at byte {pos} has recordCount {} and lastOffsetDelta {}",
                h.record_count, h.last_offset_delta
            )));
        }
        if h.is_control() {
            return Err(invalid(
                "control batches are written by coordinators only".into(),
            ));
        }
        if h.is_transactional() && !h.has_producer_id() {
            return Err(invalid(format!(
                "transactional batch at byte {pos} has no producer id"
            )));
        }
        // The offsets a batch takes come from its header, and every consumer decodes its
        // records: open them (decompressed as a stream, within a bound) so a lying or
        // damaged batch is refused here rather than stopping the partition's readers.
        if walk {
            check_stored_records(&rest[..size as usize], &h, config, pos, now_ms)?;
        }
        out.push((pos, h));
        pos += size as usize;
    }
    Ok(out)
}

/// Checks produce data as an append to a log with `config` does, records included, without
/// the log: run it before taking the log's lock, then append with
/// [`PartitionLog::append_walked`], so the walk (and any decompression) holds no lock. `now_ms`
/// is the clock record timestamps are checked against. A client's produce data larger than
/// `segment.bytes` is refused here, as Kafka refuses it (the log itself takes it, in a segment of
/// its own: tests make one segment per batch that way).
pub fn check_produce_records(
    records: &[u8],
    config: &LogConfig,
    rewritten: bool,
    now_ms: i64,
) -> Result<(), StorageError> {
    // After the batches' own checks, as in Kafka: a batch over max.message.bytes is
    // MESSAGE_TOO_LARGE (which producers split on), a damaged one CORRUPT_MESSAGE.
    check_produce_data(records, config, rewritten, true, now_ms)?;
    if records.len() as u64 > config.segment_bytes {
        return Err(StorageError::LargerThanSegment {
            size: records.len() as u64,
            segment_bytes: config.segment_bytes,
        });
    }
    Ok(())
}

/// The offsets between one segment's end and the next one's base.
pub(super) fn offsets_in_no_segment(segments: &[Segment]) -> Vec<std::ops::RangeInclusive<i64>> {
    segments
        .windows(2)
        .filter(|pair| pair[1].base_offset > pair[0].next_offset)
        .map(|pair| pair[0].next_offset..=pair[1].base_offset - 1)
        .collect()
}

fn invalid(reason: String) -> StorageError {
    StorageError::InvalidRecord { reason }
}

pub(super) fn parse_base(stem: &str) -> Option<i64> {
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

/// The offset from which the batches' leader epochs are to be trusted ([`EPOCHS_FROM_FILE`]):
/// the file's, or, for a log without one, `log_end` (written down now; 0 for a new log).
fn epochs_from(dir: &Path, log_end: i64) -> Result<i64, StorageError> {
    let path = dir.join(EPOCHS_FROM_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => match s.trim().parse() {
            Ok(from) => return Ok(from),
            Err(_) => {
                tracing::warn!(file = %path.display(), "the offset it holds is unreadable: leader epochs are taken from the log's end")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::Io { path, source: e }),
    }
    write_file_atomic(&path, log_end.to_string().as_bytes()).map_err(io_err(&path))?;
    Ok(log_end)
}

fn read_log_start(dir: &Path) -> Result<Option<i64>, StorageError> {
    let path = dir.join(LOG_START_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let start = s.trim().parse().ok();
            if start.is_none() {
                tracing::warn!(file = %path.display(), "the log start offset it holds is unreadable: the log starts at its first segment");
            }
            Ok(start)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::Io { path, source: e }),
    }
}
