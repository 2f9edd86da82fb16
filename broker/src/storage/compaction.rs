//! Key-based compaction (`cleanup.policy=compact`) of sealed segments.
//!
//! One pass, in three steps so that the partition's lock is held only briefly at the start and
//! the end ([`PartitionLog::start_compaction`], [`CompactionPass::run`],
//! [`PartitionLog::finish_compaction`]; [`PartitionLog::maintenance`] does all three):
//! 0. with the log: views of every segment as it is now (file handles, sizes); producers
//!    go on appending to the active segment meanwhile, which only adds records newer than the
//!    pass looks at, so at worst a record that could go stays until the next pass;
//! 1. decode every batch of the viewed log (active segment included) and build
//!    key -> latest offset, plus producerId -> base offset of its last batch;
//! 2. for each sealed segment, keep a record only if it is the latest for its key; drop records
//!    without a key (they cannot be produced to a compacted topic, but may predate the policy);
//!    drop tombstones (null value) once `delete_retention_ms` has passed since the broker last
//!    wrote the segment (`Segment::written_ms`; not the records' own timestamps, which may be
//!    far in the past). Kafka before 3.1 timed them by segment files' modification times too;
//!    since KIP-534 it stores a delete horizon in the batch, which this broker does not write;
//! 3. a segment where nothing is dropped is left untouched; otherwise it is rewritten to
//!    `{base}.log.cleaned` and fsynced; then, with the log again, its index files are removed,
//!    the cleaned file is renamed over `{base}.log` and the segment reopened, which rebuilds and
//!    writes its indexes. A segment that changed in between (retention or DeleteRecords removed
//!    it) keeps what it has and its cleaned file is deleted. A crash at any point leaves either
//!    the old or the new log (leftover `.cleaned` files are deleted on open, missing indexes
//!    are rebuilt).
//!
//! Batches that keep all their records are copied byte for byte. Partially kept batches keep
//! their kept records byte for byte too ([`Records::keep_offsets`]: every header, a name given
//! twice included, each record's offset and timestamp deltas), in a batch with the original's
//! header (base offset, first timestamp, lastOffsetDelta, attributes, producer id, epoch and
//! base sequence, as Kafka's cleaner keeps them for v2 batches) but its record count, length,
//! CreateTime max timestamp and CRC, compressed again with the original codec. A batch that
//! loses all records is dropped, except the last batch of each producer, which is kept as an
//! empty (61-byte) batch so that the producer's epoch and sequence survive a restart (Kafka
//! does the same).
//!
//! Transactions: the records of a transaction count for their keys only once it commits; an
//! aborted transaction's batches lose all their records (Kafka's cleaner removes them too), so
//! an aborted value never hides the committed one before it; the batches of a transaction not
//! yet ended are copied unchanged. Markers (control batches) are copied unchanged and kept
//! (Kafka removes them after `delete.retention.ms`).
//!
//! Segments are cleaned one by one; those left empty are deleted (but the first, which holds
//! the log start offset), though small ones are not merged. Cost: every maintenance run
//! that has new sealed data or a pending tombstone decodes the whole log.

use std::collections::{HashMap, HashSet};
use std::fs;

use bytes::Bytes;

use super::MaintenanceReport;
use super::batch::*;
use super::error::{StorageError, io_err};
use super::log::PartitionLog;
use super::record_spans::{self, Records};
use super::segment::{OpenMode, Segment, SegmentView, index_path, log_path, timeindex_path};
use super::txn::{Marker, marker_of};

fn codec(context: &'static str) -> impl Fn(String) -> StorageError {
    move |reason| StorageError::Codec { context, reason }
}

/// The batch `bytes` (header `h`) with its records uncompressed, for [`Records::parse`].
fn plain(bytes: &[u8], h: &BatchHeader) -> Result<Bytes, StorageError> {
    record_spans::plain_batch(Bytes::copy_from_slice(bytes), h).map_err(codec("compaction decode"))
}

/// The (key, offset, is a tombstone) of each record of a plain batch.
fn keys<'a>(
    records: &'a Records<'_>,
    h: &'a BatchHeader,
) -> impl Iterator<Item = (Option<&'a [u8]>, i64, bool)> + 'a {
    let (batch, spans) = records.parts();
    spans.iter().map(move |s| {
        (
            s.key.clone().map(|k| &batch[k]),
            h.base_offset + i64::from(s.offset_delta),
            s.value.is_none(),
        )
    })
}

/// A header-only copy of `batch`: no records, same offsets range, producer fields and sequence.
pub(crate) fn empty_batch(batch: &[u8], h: &BatchHeader) -> Vec<u8> {
    let mut out = batch[..BATCH_HEADER_LEN].to_vec();
    put_i32(
        &mut out,
        LENGTH_POS,
        (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32,
    );
    put_i16(
        &mut out,
        ATTRIBUTES_POS,
        h.attributes & !ATTR_COMPRESSION_MASK,
    );
    put_i32(&mut out, RECORD_COUNT_POS, 0);
    rewrite_crc(&mut out);
    out
}

/// Producer id -> the base offsets of its open transaction's batches, and the (key, offset) of
/// their records, which count once the transaction commits.
type OpenTxns = HashMap<i64, (Vec<i64>, Vec<(Bytes, i64)>)>;

/// Visit (header, bytes) of every batch of a segment.
fn for_each_batch(
    seg: &SegmentView,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut batches = Vec::new();
    seg.for_each_header(0, |pos, h| {
        batches.push((pos, *h));
        true
    })?;
    for (pos, h) in batches {
        let bytes = seg.read_range(pos, pos + h.total_size() as u64)?;
        f(&h, &bytes)?;
    }
    Ok(())
}

/// When compaction last ran to completion, to skip runs with nothing to do.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CompactionState {
    /// Base offset of the active segment at the last run: sealed data below it is clean.
    clean_through: i64,
    /// Earliest time a kept tombstone becomes removable.
    next_tombstone_expiry: Option<i64>,
}

/// A compaction pass taken out of the log ([`PartitionLog::start_compaction`]): run it without
/// the log's lock, then hand the outcome to [`PartitionLog::finish_compaction`].
pub struct CompactionPass {
    dir: std::path::PathBuf,
    /// Every segment as it was; the last one was the active segment.
    views: Vec<SegmentView>,
    delete_retention_ms: i64,
}

/// What a [`CompactionPass`] made: cleaned copies of sealed segments, to be swapped in.
pub struct CompactionOutcome {
    cleaned: Vec<Cleaned>,
    /// Base offset of the active segment when the pass started.
    active_base: i64,
    next_tombstone_expiry: Option<i64>,
}

struct Cleaned {
    base: i64,
    /// The segment's size when the pass read it: if it changed, the copy is stale.
    size: u64,
    path: std::path::PathBuf,
    removed: u64,
}

impl CompactionPass {
    /// Reads the viewed segments, and writes and fsyncs a cleaned copy of each sealed one that
    /// loses records. Needs no lock: the views hold their file handles and sizes.
    pub fn run(self, now_ms: i64) -> Result<CompactionOutcome, StorageError> {
        let mut cleaned = Vec::new();
        let result = self.clean(now_ms, &mut cleaned);
        if result.is_err() {
            for c in &cleaned {
                let _ = fs::remove_file(&c.path);
            }
        }
        let next_tombstone_expiry = result?;
        Ok(CompactionOutcome {
            cleaned,
            active_base: self.views.last().map_or(0, |v| v.base_offset),
            next_tombstone_expiry,
        })
    }

    fn clean(&self, now_ms: i64, cleaned: &mut Vec<Cleaned>) -> Result<Option<i64>, StorageError> {
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        let mut last_batch: HashMap<i64, i64> = HashMap::new();
        // A transaction's keys count once it commits; an aborted one's batches are dropped, an
        // undecided one's are kept as they are.
        let mut open: OpenTxns = HashMap::new();
        let mut aborted: HashSet<i64> = HashSet::new();
        let newest = |latest: &mut HashMap<Bytes, i64>, k: Bytes, offset: i64| {
            let at = latest.entry(k).or_insert(offset);
            *at = (*at).max(offset);
        };
        for seg in &self.views {
            for_each_batch(seg, |h, bytes| {
                if h.has_producer_id() {
                    last_batch.insert(h.producer_id, h.base_offset);
                }
                if h.is_control() {
                    if let Some((batches, keys)) = open.remove(&h.producer_id) {
                        if marker_of(bytes) == Some(Marker::Commit) {
                            for (k, offset) in keys {
                                newest(&mut latest, k, offset);
                            }
                        } else {
                            aborted.extend(batches);
                        }
                    }
                    return Ok(());
                }
                let plain = plain(bytes, h)?;
                let records = Records::parse(&plain, h).map_err(codec("compaction decode"))?;
                let keyed = keys(&records, h)
                    .filter_map(|(k, offset, _)| Some((Bytes::copy_from_slice(k?), offset)));
                if h.is_transactional() {
                    let (batches, keys) = open.entry(h.producer_id).or_default();
                    batches.push(h.base_offset);
                    keys.extend(keyed);
                    return Ok(());
                }
                for (k, offset) in keyed {
                    newest(&mut latest, k, offset);
                }
                Ok(())
            })?;
        }
        let undecided: HashSet<i64> = open.into_values().flat_map(|(b, _)| b).collect();
        let retention = self.delete_retention_ms;
        let mut next_expiry: Option<i64> = None;
        for seg in &self.views[..self.views.len() - 1] {
            let tombstones_expired = now_ms.saturating_sub(seg.written_ms) > retention;
            let mut out = Vec::with_capacity(seg.size as usize);
            let mut removed = 0u64;
            let mut kept_tombstone = false;
            for_each_batch(seg, |h, bytes| {
                if h.is_control() || undecided.contains(&h.base_offset) {
                    out.extend_from_slice(bytes);
                    return Ok(());
                }
                let plain = plain(bytes, h)?;
                let records = Records::parse(&plain, h).map_err(codec("compaction decode"))?;
                let total = records.len();
                let dropped = aborted.contains(&h.base_offset);
                let kept: Vec<usize> = keys(&records, h)
                    .enumerate()
                    .filter(|(_, (key, offset, tombstone))| {
                        if dropped {
                            return false;
                        }
                        let Some(k) = key else { return false };
                        if latest.get(*k) != Some(offset) {
                            return false;
                        }
                        if *tombstone {
                            if tombstones_expired {
                                return false;
                            }
                            kept_tombstone = true;
                        }
                        true
                    })
                    .map(|(i, _)| i)
                    .collect();
                removed += (total - kept.len()) as u64;
                if kept.len() == total {
                    out.extend_from_slice(bytes);
                } else if !kept.is_empty() {
                    let batch = record_spans::compressed(records.keep_offsets(h, &kept))
                        .map_err(codec("compaction encode"))?;
                    out.extend_from_slice(&batch);
                } else if h.has_producer_id()
                    && last_batch.get(&h.producer_id) == Some(&h.base_offset)
                {
                    out.extend_from_slice(&empty_batch(bytes, h));
                }
                Ok(())
            })?;
            if kept_tombstone {
                let t = seg.written_ms.saturating_add(retention);
                next_expiry = Some(next_expiry.map_or(t, |n| n.min(t)));
            }
            if removed == 0 {
                continue;
            }
            let path = log_path(&self.dir, seg.base_offset).with_extension("log.cleaned");
            let f = fs::File::create(&path).map_err(io_err(&path))?;
            cleaned.push(Cleaned {
                base: seg.base_offset,
                size: seg.size,
                path: path.clone(),
                removed,
            });
            std::io::Write::write_all(&mut &f, &out).map_err(io_err(&path))?;
            // The copy keeps the time its segment was written: its tombstones' clock.
            let written = std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(seg.written_ms.max(0) as u64);
            f.set_modified(written).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
        Ok(next_expiry)
    }
}

impl PartitionLog {
    /// One whole compaction pass with the log held (see the module docs).
    pub(super) fn compact(
        &mut self,
        now_ms: i64,
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        if let Some(pass) = self.start_compaction(now_ms)? {
            let outcome = pass.run(now_ms)?;
            self.finish_compaction(outcome, now_ms, report)?;
        }
        Ok(())
    }

    /// A compaction pass when the policy asks for one and there is something to do (new sealed
    /// data, at least `min.cleanable.dirty.ratio` of it, or a tombstone due to expire); `None`
    /// otherwise. Cheap: run the pass itself
    /// ([`CompactionPass::run`]) after releasing the log.
    pub fn start_compaction(&self, now_ms: i64) -> Result<Option<CompactionPass>, StorageError> {
        let state = self.compaction;
        // The share of sealed bytes written since the last cleaning (all of it after a restart).
        let sealed = &self.segments[..self.segments.len().saturating_sub(1)];
        let dirty: u64 = sealed
            .iter()
            .filter(|s| s.base_offset >= state.clean_through)
            .map(|s| s.size)
            .sum();
        let total: u64 = sealed.iter().map(|s| s.size).sum();
        let new_data =
            dirty > 0 && dirty as f64 >= self.config.min_cleanable_dirty_ratio * total as f64;
        let tombstones_due = state.next_tombstone_expiry.is_some_and(|t| now_ms > t);
        // Not while a rolled segment awaits its seal: the pass would read it before it is durable
        // and a seal running across the swap could write stale index files.
        let sealing = !self.unsealed.is_empty();
        if !self.config.compact
            || self.segments.len() < 2
            || !(new_data || tombstones_due)
            || sealing
        {
            return Ok(None);
        }
        let views = self.segments.iter().map(Segment::view).collect();
        Ok(Some(CompactionPass {
            dir: self.dir.clone(),
            views,
            delete_retention_ms: self.config.delete_retention_ms,
        }))
    }

    /// Swaps in the segments a pass cleaned, except those that changed since it started (their
    /// cleaned copies are deleted), and remembers how far the log is clean.
    pub fn finish_compaction(
        &mut self,
        outcome: CompactionOutcome,
        now_ms: i64,
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        let mut cleaned = outcome.cleaned.into_iter();
        let mut emptied = Vec::new();
        while let Some(c) = cleaned.next() {
            let sealed = self.segments.len() - 1;
            let current = self.segments[..sealed]
                .iter()
                .position(|s| s.base_offset == c.base && s.size == c.size);
            let Some(i) = current else {
                let _ = fs::remove_file(&c.path);
                continue;
            };
            if let Err(e) = self.replace_segment(i, &c.path, now_ms) {
                for rest in cleaned {
                    let _ = fs::remove_file(&rest.path);
                }
                return Err(e);
            }
            report.segments_compacted += 1;
            report.records_removed += c.removed;
            if self.segments[i].size == 0 {
                emptied.push(c.base);
            }
        }
        self.drop_emptied_segments(&emptied, report)?;
        self.compaction = CompactionState {
            clean_through: outcome.active_base,
            next_tombstone_expiry: outcome.next_tombstone_expiry,
        };
        Ok(())
    }

    /// Deletes the sealed segments at `bases` that this pass emptied (every record they held
    /// was superseded), so that a compacted log keeps as many files as its live data needs, not
    /// one per segment ever written (Kafka's cleaner merges such segments into their
    /// neighbours). The first segment stays, so that the log start offset stays where it is,
    /// and a fetch of an offset in a deleted one's range is answered from the next batch, as
    /// for any gap compaction leaves. A segment empty for another reason (a start-up cut its
    /// torn tail, keeping the cut bytes beside it) is not this pass's to delete.
    fn drop_emptied_segments(
        &mut self,
        bases: &[i64],
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        for &base in bases {
            let sealed = self.segments.len() - 1;
            let Some(i) = (1..sealed).find(|&i| self.segments[i].base_offset == base) else {
                continue;
            };
            if self.segments[i].size > 0 {
                continue;
            }
            self.segments[i].delete_files()?;
            let seg = self.segments.remove(i);
            self.unsealed.retain(|&b| b != seg.base_offset);
            report.segments_deleted += 1;
        }
        Ok(())
    }

    /// Replace sealed segment `i` with its fsynced cleaned copy `cleaned` (see the module docs
    /// for the order).
    fn replace_segment(
        &mut self,
        i: usize,
        cleaned: &std::path::Path,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let base = self.segments[i].base_offset;
        let path = log_path(&self.dir, base);
        for p in [index_path(&self.dir, base), timeindex_path(&self.dir, base)] {
            if let Err(e) = fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(StorageError::Io { path: p, source: e });
            }
        }
        fs::rename(cleaned, &path).map_err(io_err(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        let mut seg = Segment::open(
            &self.dir,
            base,
            self.config.index_interval_bytes,
            OpenMode::Sealed,
            now_ms,
        )?;
        seg.written_ms = self.segments[i].written_ms;
        self.segments[i] = seg;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::*;
    use crate::storage::{FlushPolicy, LogConfig};
    use kafka_protocol::records::Compression;

    const NOW: i64 = 1_700_000_000_000;
    const DAY: i64 = 24 * 3600 * 1000;

    fn cfg() -> LogConfig {
        LogConfig {
            compact: true,
            delete: false,
            segment_bytes: 1,
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        }
    }

    /// key -> value of everything readable, in offset order.
    fn contents(log: &PartitionLog) -> Vec<(i64, TestRec)> {
        let mut out = Vec::new();
        let mut off = log.log_start_offset();
        while off < log.log_end_offset() {
            let got = log.read(off, usize::MAX).unwrap();
            if got.is_empty() {
                break;
            }
            for r in parse_batches(&got) {
                off = r.unwrap().1.next_offset();
            }
            out.extend(decode_all(&got));
        }
        out
    }

    /// An uncompressed batch of one record, `key` = `value`, at NOW.
    fn one(key: &str, value: &str) -> Vec<u8> {
        encode_batch(&[kv(key, value, NOW)], Compression::None, -1, -1, -1)
    }

    #[test]
    fn emptied_segments_are_deleted_and_their_offsets_read_from_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        // 60 one-record segments over 3 keys: each key's last value is in the last 3.
        for i in 0..60 {
            let key = ["a", "b", "c"][i % 3];
            log.append(&one(key, &format!("{key}{i}")), NOW).unwrap();
        }
        assert_eq!(log.segment_count(), 60);
        let r = log.maintenance(NOW + 10).unwrap();
        assert_eq!(r.records_removed, 57);
        // The first segment (emptied, but it holds the log start) and those of a, b and c.
        assert_eq!(log.segment_count(), 4);
        assert_eq!(r.segments_deleted, 56);
        let files = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert_eq!(files, 4);
        let expect = vec![
            (57, kv("a", "a57", NOW)),
            (58, kv("b", "b58", NOW)),
            (59, kv("c", "c59", NOW)),
        ];
        assert_eq!(contents(&log), expect);
        assert_eq!(log.log_start_offset(), 0);
        // Any offset of a deleted segment reads from the next batch kept.
        for off in [0, 1, 30, 56] {
            let got = decode_all(&log.read(off, 1).unwrap());
            assert_eq!(got[0].0, 57, "fetch at {off}");
        }
        // And so after a restart.
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 60));
        assert_eq!(contents(&log), expect);
        assert_eq!(decode_all(&log.read(20, 1).unwrap())[0].0, 57);
    }

    #[test]
    fn a_segment_empty_for_another_reason_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for (i, key) in ["a", "b", "c", "a", "d"].iter().enumerate() {
            log.append(&one(key, &format!("{key}{i}")), NOW).unwrap();
        }
        drop(log);
        // Segment 2 (key c) lost its bytes, as a start-up that cut a torn tail leaves one.
        let path = log_path(dir.path(), 2);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let r = log.maintenance(NOW + 10).unwrap();
        // a0 goes and its segment with it; the segment emptied by the cut stays.
        assert_eq!(r.records_removed, 1);
        assert_eq!(r.segments_deleted, 0, "the first segment stays");
        assert!(path.exists());
        log.append(&one("b", "b5"), NOW).unwrap();
        let r = log.maintenance(NOW + 20).unwrap();
        assert_eq!(
            (r.records_removed, r.segments_deleted),
            (1, 1),
            "b1's segment"
        );
        assert!(path.exists());
        assert!(!log_path(dir.path(), 1).exists());
    }

    #[test]
    fn aborted_records_go_and_undecided_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let plain =
            |k: &str, v: &str| encode_batch(&[kv(k, v, NOW)], Compression::None, -1, -1, -1);
        log.append(&plain("a", "a0"), NOW).unwrap(); // 0
        log.append(&transactional_batch(&[kv("a", "a1", NOW)], 5, 0, 0), NOW)
            .unwrap(); // 1
        log.append_marker(5, 0, Marker::Abort, NOW).unwrap(); // 2
        log.append(&transactional_batch(&[kv("b", "b1", NOW)], 6, 0, 0), NOW)
            .unwrap(); // 3, no end yet
        log.append(&plain("b", "b0"), NOW).unwrap(); // 4
        log.append(&plain("c", "c0"), NOW).unwrap(); // 5, active
        let r = log.maintenance(NOW + 10).unwrap();
        // The aborted a1 goes and does not hide a0; the undecided b1 stays, though b0 is newer.
        assert_eq!(r.records_removed, 1);
        let offsets: Vec<i64> = contents(&log).iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![0, 2, 3, 4, 5]);
        assert_eq!(log.last_stable_offset(6), 3);
        // Once committed, a transaction's value is the newest for its key.
        log.append(&transactional_batch(&[kv("a", "a2", NOW)], 7, 0, 0), NOW)
            .unwrap(); // 6
        log.append_marker(7, 0, Marker::Commit, NOW).unwrap(); // 7
        log.append_marker(6, 0, Marker::Abort, NOW).unwrap(); // 8
        log.append(&plain("d", "d0"), NOW).unwrap(); // 9, active
        log.maintenance(NOW + 20).unwrap();
        let got = contents(&log);
        let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
        // a0 (replaced by a2) and b1 (aborted) are gone; markers stay.
        assert_eq!(offsets, vec![2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(log.last_stable_offset(10), 10);
        // The state read from the cleaned log agrees.
        drop(log);
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        assert_eq!(log.last_stable_offset(10), 10);
    }

    #[test]
    fn keeps_latest_per_key_and_expires_tombstones() {
        for codec in [Compression::None, Compression::Zstd, Compression::Snappy] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
            let mut with_header = kv("b", "b1", NOW + 1);
            with_header.headers = vec![("h".into(), Some(Bytes::from_static(b"x")))];
            let batches = vec![
                vec![
                    kv("a", "a0", NOW),
                    with_header.clone(),
                    kv("c", "c0", NOW + 2),
                ],
                vec![kv("a", "a1", NOW + 3), tombstone("c", NOW + 4)],
                vec![kv("d", "d0", NOW + 5)],
                vec![kv("a", "a2", NOW + 6)], // stays in the active segment
            ];
            for b in &batches {
                log.append(&encode_batch(b, codec, -1, -1, -1), NOW)
                    .unwrap();
            }
            assert_eq!(log.segment_count(), 4);
            let end = log.log_end_offset();
            let r = log.maintenance(NOW + 10).unwrap();
            assert_eq!(r.records_removed, 3, "a0, c0, a1");
            assert_eq!(r.segments_compacted, 2);
            let got = contents(&log);
            let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, vec![1, 4, 5, 6], "codec {codec:?}");
            assert_eq!(got[0].1, with_header, "headers and timestamps preserved");
            assert_eq!(got[1].1, tombstone("c", NOW + 4));
            assert_eq!(log.log_end_offset(), end);
            // A fetch of a removed offset starts at the next kept record's batch.
            assert_eq!(decode_all(&log.read(0, 1).unwrap())[0].0, 1);
            // Nothing new: a second run does nothing.
            assert_eq!(log.maintenance(NOW + 20).unwrap().records_removed, 0);
            // After delete.retention.ms the tombstone goes.
            let r = log.maintenance(NOW + 4 + DAY + 1).unwrap();
            assert_eq!(r.records_removed, 1);
            assert_eq!(
                contents(&log).iter().map(|(o, _)| *o).collect::<Vec<_>>(),
                vec![1, 5, 6]
            );
            // Survives reopen, and appends continue at the same offset.
            drop(log);
            let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
            assert_eq!(
                contents(&log).iter().map(|(o, _)| *o).collect::<Vec<_>>(),
                vec![1, 5, 6]
            );
            assert_eq!(
                log.append(&encode_batch(&[kv("e", "e", NOW)], codec, -1, -1, -1), NOW)
                    .unwrap()
                    .base_offset,
                end
            );
        }
    }

    /// `min.cleanable.dirty.ratio`: once cleaned, a log is cleaned again only when that share
    /// of its sealed bytes is new; at 0 whenever a segment has been sealed since.
    #[test]
    fn cleaning_again_waits_for_the_dirty_ratio() {
        for (ratio, removed_early) in [(0.5, 0), (0.0, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                min_cleanable_dirty_ratio: ratio,
                ..cfg()
            };
            let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
            let put = |log: &mut PartitionLog, key: &str, value: &str| {
                let b = encode_batch(&[kv(key, value, NOW)], Compression::None, -1, -1, -1);
                log.append(&b, NOW).unwrap();
            };
            // One batch per segment: k0..k3 sealed, k4 active; the first pass finds all clean.
            for k in ["k0", "k1", "k2", "k3", "k4"] {
                put(&mut log, k, "old");
            }
            assert_eq!(log.maintenance(NOW).unwrap().records_removed, 0);
            // k4 sealed: 1 of 5 sealed segments new.
            put(&mut log, "k0", "new");
            let r = log.maintenance(NOW).unwrap();
            assert_eq!(r.records_removed, removed_early, "ratio {ratio}");
            // Four more sealed: 5 of 9 new at 0.5 (all the old values go).
            for k in ["k1", "k2", "k3", "k4"] {
                put(&mut log, k, "new");
            }
            let r = log.maintenance(NOW).unwrap();
            assert_eq!(r.records_removed, 5 - removed_early, "ratio {ratio}");
        }
    }

    /// A tombstone's clock is the time the broker stored it, not its own timestamp: one
    /// produced with a timestamp two days old stays readable for delete.retention.ms (a day).
    #[test]
    fn a_tombstone_with_an_old_timestamp_is_kept_for_delete_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for b in [
            vec![kv("dev1", "v1", NOW)],
            vec![tombstone("dev1", NOW - 2 * DAY)],
            vec![kv("x", "filler", NOW)],
            vec![kv("y", "filler", NOW)], // the active segment
        ] {
            log.append(&encode_batch(&b, Compression::None, -1, -1, -1), NOW)
                .unwrap();
        }
        // The first pass drops v1; the second, with nothing new, keeps the tombstone.
        assert_eq!(log.maintenance(NOW + 10).unwrap().records_removed, 1);
        log.maintenance(NOW + 20).unwrap();
        assert_eq!(offsets(&log), vec![1, 2, 3]);
        // Across a restart too, timed by the files (this test's clock is NOW, so the files
        // the passes did not rewrite are given that time, as if written then).
        drop(log);
        let rewritten = fs::metadata(log_path(dir.path(), 0))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            rewritten,
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW as u64),
            "a rewritten segment keeps the time it was written"
        );
        for e in fs::read_dir(dir.path()).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "log") {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW as u64);
                let f = fs::File::options().write(true).open(&path).unwrap();
                f.set_modified(at).unwrap();
            }
        }
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW + 30).unwrap();
        log.maintenance(NOW + 40).unwrap();
        assert_eq!(offsets(&log), vec![1, 2, 3]);
        // A day after it was stored, it goes.
        assert_eq!(log.maintenance(NOW + DAY + 10).unwrap().records_removed, 1);
        assert_eq!(offsets(&log), vec![2, 3]);
    }

    fn offsets(log: &PartitionLog) -> Vec<i64> {
        contents(log).iter().map(|(o, _)| *o).collect()
    }

    fn leftover_cleaned_files(dir: &std::path::Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".cleaned")
            })
            .count()
    }

    #[test]
    fn appends_made_while_a_pass_runs_without_the_log_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for b in [
            vec![kv("a", "a0", NOW), kv("b", "b0", NOW)],
            vec![kv("a", "a1", NOW + 1)],
            vec![kv("c", "c0", NOW + 2)], // the active segment
        ] {
            log.append(&encode_batch(&b, Compression::None, -1, -1, -1), NOW)
                .unwrap();
        }
        log.seal_all().unwrap();
        let pass = log
            .start_compaction(NOW + 10)
            .unwrap()
            .expect("sealed data");
        // The log is free while the pass runs: a newer "a" arrives (and rolls the segment).
        let more = [kv("a", "a2", NOW + 3), kv("d", "d0", NOW + 3)];
        log.append(&encode_batch(&more, Compression::None, -1, -1, -1), NOW)
            .unwrap();
        let outcome = pass.run(NOW + 10).unwrap();
        let mut report = MaintenanceReport::default();
        log.finish_compaction(outcome, NOW + 10, &mut report)
            .unwrap();
        // The pass saw a1 as the latest "a": only a0 went.
        assert_eq!(report.records_removed, 1);
        assert_eq!(offsets(&log), vec![1, 2, 3, 4, 5]);
        assert_eq!(decode_all(&log.read(4, usize::MAX).unwrap())[0].1, more[0]);
        // The next pass sees a2 and removes a1.
        assert_eq!(log.maintenance(NOW + 20).unwrap().records_removed, 1);
        assert_eq!(offsets(&log), vec![1, 3, 4, 5]);
        assert_eq!(leftover_cleaned_files(dir.path()), 0);
    }

    #[test]
    fn a_segment_removed_while_a_pass_runs_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for b in [
            vec![kv("a", "a0", NOW)],
            vec![kv("a", "a1", NOW + 1)],
            vec![kv("b", "b0", NOW + 2)],
        ] {
            log.append(&encode_batch(&b, Compression::None, -1, -1, -1), NOW)
                .unwrap();
        }
        log.seal_all().unwrap();
        let pass = log
            .start_compaction(NOW + 10)
            .unwrap()
            .expect("sealed data");
        // DeleteRecords drops the first segment (the one the pass cleans) meanwhile.
        assert_eq!(log.delete_records_before(1).unwrap(), 1);
        let outcome = pass.run(NOW + 10).unwrap();
        assert_eq!(
            leftover_cleaned_files(dir.path()),
            1,
            "a0's segment was cleaned"
        );
        let mut report = MaintenanceReport::default();
        log.finish_compaction(outcome, NOW + 10, &mut report)
            .unwrap();
        assert_eq!(report.segments_compacted, 0);
        assert_eq!(
            leftover_cleaned_files(dir.path()),
            0,
            "the stale copy is deleted"
        );
        assert_eq!(offsets(&log), vec![1, 2]);
        assert_eq!(log.log_start_offset(), 1);
    }

    #[test]
    fn producer_state_survives_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        log.append(
            &encode_batch(
                &[kv("a", "1", NOW), kv("b", "1", NOW)],
                Compression::Lz4,
                3,
                0,
                0,
            ),
            NOW,
        )
        .unwrap();
        log.append(
            &encode_batch(
                &[kv("a", "2", NOW), kv("b", "2", NOW)],
                Compression::Lz4,
                3,
                0,
                2,
            ),
            NOW,
        )
        .unwrap();
        log.append(
            &encode_batch(
                &[kv("a", "3", NOW), kv("b", "3", NOW)],
                Compression::None,
                -1,
                -1,
                -1,
            ),
            NOW,
        )
        .unwrap();
        log.maintenance(NOW).unwrap();
        // First batch gone; second emptied but kept because it is producer 3's last batch.
        let got = log.read(0, usize::MAX).unwrap();
        let hs: Vec<_> = parse_batches(&got).map(|r| r.unwrap().1).collect();
        assert_eq!(hs[0].record_count, 0);
        assert_eq!(
            (
                hs[0].base_offset,
                hs[0].last_offset(),
                hs[0].last_sequence()
            ),
            (2, 3, 3)
        );
        drop(log);
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let next = encode_batch(&[kv("a", "4", NOW)], Compression::None, 3, 0, 4);
        assert_eq!(log.append(&next, NOW).unwrap().base_offset, 6);
    }

    #[test]
    fn partial_batch_keeps_offsets_and_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let b = encode_batch(
            &[
                kv("a", "1", NOW),
                kv("b", "1", NOW + 1),
                kv("a", "2", NOW + 2),
                kv("c", "1", NOW + 3),
            ],
            Compression::Gzip,
            11,
            2,
            0,
        );
        log.append(&b, NOW).unwrap();
        log.append(
            &encode_batch(&[kv("c", "2", NOW)], Compression::None, -1, -1, -1),
            NOW,
        )
        .unwrap();
        log.append(
            &encode_batch(&[kv("z", "z", NOW)], Compression::None, -1, -1, -1),
            NOW,
        )
        .unwrap();
        log.maintenance(NOW).unwrap();
        let got = log.read(0, usize::MAX).unwrap();
        let h = check_batch(&got).unwrap();
        // As Kafka's cleaner: the batch keeps its base offset and sequence.
        assert_eq!((h.base_offset, h.last_offset(), h.record_count), (0, 3, 2));
        assert_eq!((h.base_sequence, h.last_sequence()), (0, 3));
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.compression()),
            (11, 2, 1)
        );
        let recs = decode_all(&got[..h.total_size()]);
        assert_eq!(
            recs,
            vec![(1, kv("b", "1", NOW + 1)), (2, kv("a", "2", NOW + 2))]
        );
    }

    /// Records a cleaning keeps keep every header, a name given twice included, in every
    /// codec (kafka-protocol's record type keeps one header per name).
    #[test]
    fn kept_records_keep_repeated_headers() {
        for codec in ALL_CODECS {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
            let mut recs = vec![
                kv("a", "1", NOW),
                kv("b", "1", NOW + 1),
                kv("a", "2", NOW + 2),
            ];
            recs[1].headers = vec![
                ("trace".into(), Some(Bytes::from_static(b"x"))),
                ("trace".into(), Some(Bytes::from_static(b"y"))),
                ("trace".into(), None),
            ];
            log.append(&broker_encoded_batch(&recs, codec), NOW)
                .unwrap();
            log.append(
                &encode_batch(&[kv("z", "z", NOW)], Compression::None, -1, -1, -1),
                NOW,
            )
            .unwrap();
            let r = log.maintenance(NOW).unwrap();
            assert_eq!(r.records_removed, 1, "{codec:?}");
            let got = log.read(0, usize::MAX).unwrap();
            let first = check_batch(&got).unwrap();
            let kept = read_spans(&got[..first.total_size()]);
            assert_eq!(
                kept,
                vec![(1, recs[1].clone()), (2, recs[2].clone())],
                "{codec:?}"
            );
        }
    }
}
