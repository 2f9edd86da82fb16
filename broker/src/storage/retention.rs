//! Retention: delete whole sealed segments by age or total size, and DeleteRecords.
//!
//! Kafka semantics: a segment expires by time when `now - largest timestamp > retention.ms`;
//! by size while `size - retention.bytes >= oldest segment size`. Only a prefix of the log is
//! deleted. When the active segment has expired by time as well, it is rolled first so that it
//! can go too, as in Kafka: a topic whose every record is past retention ends empty, its log
//! start at its end. The log start offset becomes the first remaining segment's base offset (or
//! stays higher if DeleteRecords put it there).

use super::MaintenanceReport;
use super::batch::NO_TIMESTAMP;
use super::error::StorageError;
use super::log::PartitionLog;

impl PartitionLog {
    pub(super) fn apply_retention(
        &mut self,
        now_ms: i64,
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        if let Some(retention_ms) = self.config.retention_ms {
            while self.segments.len() > 1 {
                let s = &self.segments[0];
                let expired = s.size == 0
                    || s.max_timestamp == NO_TIMESTAMP
                    || now_ms - s.max_timestamp > retention_ms;
                if !expired {
                    break;
                }
                self.delete_oldest(report)?;
            }
            let active = self.active();
            if self.segments.len() == 1
                && active.size > 0
                && active.max_timestamp != NO_TIMESTAMP
                && now_ms - active.max_timestamp > retention_ms
            {
                self.roll(now_ms)?;
                self.delete_oldest(report)?;
            }
        }
        if let Some(limit) = self.config.retention_bytes {
            while self.segments.len() > 1
                && self.size_bytes().saturating_sub(limit) >= self.segments[0].size
                && self.size_bytes() > limit
            {
                self.delete_oldest(report)?;
            }
        }
        Ok(())
    }

    /// DeleteRecords: make `offset` the new log start (no-op if not above it) and delete sealed
    /// segments that end at or before it. Returns the log start offset. `offset` above the log
    /// end is `OffsetOutOfRange` (the protocol layer maps Kafka's -1 "high watermark" itself).
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, StorageError> {
        self.check_not_failed()?;
        let end = self.log_end_offset();
        if offset < 0 || offset > end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset,
                end,
            });
        }
        // The segments wholly below the new start go first: on a full disk that frees the room
        // the start's file needs.
        let mut report = MaintenanceReport::default();
        while self.segments.len() > 1 && self.segments[1].base_offset <= offset {
            self.delete_oldest(&mut report)?;
        }
        if offset > self.log_start_offset {
            let was = self.log_start_offset;
            self.log_start_offset = offset;
            if let Err(e) = self.write_log_start() {
                // Where a start would find it: the file's offset, or the first segment's.
                self.log_start_offset = was;
                return Err(e);
            }
        }
        Ok(self.log_start_offset)
    }

    fn delete_oldest(&mut self, report: &mut MaintenanceReport) -> Result<(), StorageError> {
        self.segments[0].delete_files()?;
        let seg = self.segments.remove(0);
        self.unsealed.retain(|&b| b != seg.base_offset);
        report.segments_deleted += 1;
        report.bytes_deleted += seg.size;
        self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset);
        Ok(())
    }
}
