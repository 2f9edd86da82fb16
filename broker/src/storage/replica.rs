//! A follower's side of a partition log: the leader's batches appended with their offsets, and
//! the log cut back or restarted where it no longer matches the leader's.
//!
//! A follower stores the leader's bytes unchanged (offsets, timestamps, CRCs), so a consumer
//! of either broker reads the same batches at the same offsets. Nothing here knows about
//! brokers or sockets: `crate::replication` decides what to append and where to cut.

use std::fs;

use super::log::LOG_START_FILE;
use super::segment::{index_path, timeindex_path};
use super::{AppendInfo, BatchHeader, FlushPolicy, PartitionLog, StorageError, compute_crc};
use crate::storage::error::io_err;

impl PartitionLog {
    /// Appends batches as the leader stored them, keeping their offsets and bytes. Batches that
    /// end before the log end are skipped (a fetch may start inside one); gaps are kept (the
    /// leader's compaction leaves them). An empty log whose start falls inside the first batch
    /// (the leader's log start is there) starts again at that batch. Every batch's CRC is checked before anything is
    /// written. `None` when nothing was new.
    pub fn append_replica(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<Option<AppendInfo>, StorageError> {
        self.check_not_failed()?;
        let mut next = self.log_end_offset();
        let mut batches: Vec<(usize, BatchHeader)> = Vec::new();
        let mut first = None;
        let mut pos = 0usize;
        let mut record_count = 0i64;
        while pos < records.len() {
            let rest = &records[pos..];
            let h = BatchHeader::parse(rest).map_err(|source| StorageError::CorruptRecord {
                position: pos,
                source,
            })?;
            let size = h.total_size();
            if size > rest.len() {
                // A fetch response may end with a partial batch: it comes whole next time.
                break;
            }
            if compute_crc(&rest[..size]) != h.crc || h.last_offset_delta < 0 {
                return Err(StorageError::InvalidRecord {
                    reason: format!(
                        "the leader's batch at offset {} fails its CRC or framing",
                        h.base_offset
                    ),
                });
            }
            if h.last_offset() < next {
                pos += size;
                continue;
            }
            if h.base_offset < next && first.is_none() && self.holds_no_batch() {
                // The leader's log starts inside this batch (DeleteRecords), and this empty
                // log where the leader's does: it starts at the batch instead, the offsets
                // below the leader's start to be deleted again by the caller.
                self.restart_at(h.base_offset, now_ms)?;
                next = h.base_offset;
            }
            if h.base_offset < next {
                return Err(StorageError::InvalidRecord {
                    reason: format!(
                        "the leader's batch {}..={} overlaps this log's end {next}",
                        h.base_offset,
                        h.last_offset()
                    ),
                });
            }
            first.get_or_insert(pos);
            batches.push((pos - first.unwrap_or(pos), h));
            record_count += h.record_count as i64;
            next = h.next_offset();
            pos += size;
        }
        let Some(first) = first else {
            return Ok(None);
        };
        let data = &records[first..pos];
        let base_offset = batches[0].1.base_offset;
        // Not refused near the open-files limit: the leader's refusals bound its segments, and a
        // refusal here would stop the copying of every partition.
        self.maybe_roll(data.len() as u64, next - 1, now_ms, false)?;
        let sync = self.config.flush == FlushPolicy::Always;
        self.active_mut()
            .append(data, &batches, sync, now_ms)
            .map_err(|e| self.note_error(e))?;
        for (at, h) in &batches {
            self.producers.replay(h);
            let marker = h
                .is_control()
                .then(|| super::txn::marker_of(&data[*at..*at + h.total_size()]))
                .flatten();
            self.txns.observe(h, marker);
            self.observe_epoch(h);
        }
        self.mark_appended(sync, now_ms);
        Ok(Some(AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time: -1,
            log_start_offset: self.log_start_offset,
            duplicate: false,
            record_count,
        }))
    }

    fn holds_no_batch(&self) -> bool {
        self.segments.iter().all(|s| s.size == 0)
    }

    /// The header of the last batch in the log, `None` when the log holds none: what a
    /// follower compares with the leader's batch at the same offset.
    pub fn last_batch(&self) -> Result<Option<BatchHeader>, StorageError> {
        for seg in self.segments.iter().rev() {
            if seg.size == 0 {
                continue;
            }
            let mut last = None;
            let from = seg.index_position(seg.next_offset - 1);
            seg.view().for_each_header(from, |_, h| {
                last = Some(*h);
                true
            })?;
            if last.is_some() {
                return Ok(last);
            }
        }
        Ok(None)
    }

    /// Cuts the log back so that it ends at or before `offset`, at a batch boundary (a batch
    /// holding `offset` goes too): what a follower does with records the leader does not have.
    /// At or below the log start the log is emptied and starts at `offset`.
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> Result<(), StorageError> {
        self.check_not_failed()?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        if offset <= self.log_start_offset {
            return self.restart_at(offset, now_ms);
        }
        self.seal_all()?;
        while self.segments.len() > 1 && self.active().base_offset >= offset {
            let seg = self.segments.pop().expect("more than one segment");
            seg.delete_files()?;
        }
        let active = self.active();
        let view = active.view();
        if let Some(cut) = view.find_position(active.index_position(offset), offset)? {
            let path = super::segment::log_path(&self.dir, active.base_offset);
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(cut).map_err(io_err(&path))?;
            // Unsynced, the cut records could come back after a crash.
            if let Err(source) = file.sync_all() {
                return Err(self.note_error(StorageError::Sync { path, source }));
            }
            let _ = fs::remove_file(index_path(&self.dir, active.base_offset));
            let _ = fs::remove_file(timeindex_path(&self.dir, active.base_offset));
        }
        self.reopen(now_ms)
    }

    /// Empties the log and starts it at `offset`: a follower whose log is behind the leader's
    /// log start, or that has nothing in common with it.
    pub fn restart_at(&mut self, offset: i64, now_ms: i64) -> Result<(), StorageError> {
        self.check_not_failed()?;
        self.seal_all()?;
        for seg in self.segments.drain(..) {
            seg.delete_files()?;
        }
        let path = self.dir.join(LOG_START_FILE);
        super::index::write_file_atomic(&path, offset.to_string().as_bytes())
            .map_err(io_err(&path))?;
        self.reopen(now_ms)
    }

    /// Opens the directory again, as at start-up: segments, indexes and producer states are
    /// read from what is now on disk.
    pub(super) fn reopen(&mut self, now_ms: i64) -> Result<(), StorageError> {
        let failed = self.failed.take();
        let leader_epoch = self.leader_epoch;
        *self = PartitionLog::open(self.dir.clone(), self.config.clone(), now_ms)?;
        // What a failed fsync left is not known before the broker starts again.
        self.failed = failed;
        if leader_epoch >= 0 {
            self.set_leader_epoch(leader_epoch);
        }
        Ok(())
    }
}
