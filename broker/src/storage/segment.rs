//! One segment: a `.log` file of whole batches plus its in-memory sparse indexes.
//!
//! Files of segment with base offset B in the partition directory:
//! `{B:020}.log`, `{B:020}.index`, `{B:020}.timeindex` (see `index.rs` for the index formats).
//!
//! Invariants:
//! * `size` is the length of the valid prefix of the file; every byte in `0..size` belongs to a
//!   whole, CRC-checked batch, and batch offsets strictly increase from `base_offset`.
//! * `next_offset` is the last batch's last offset + 1 (`base_offset` when empty).
//! * Writes go through [`write_at`] at explicit positions, so a failed write is undone by
//!   truncating back to `size`, and bytes past `size` are never read.
//! * `max_timestamp`/`offset_of_max_timestamp` cover every batch in the segment: the maxTimestamp
//!   of the batch header (the append time for LogAppendTime batches) and that batch's last offset.
//! * Indexes are in memory for the active segment and for a sealed one until its index files
//!   are written; then they are only in the files (`indexes_on_disk`), searched at each lookup.
//!   A position read from the offset index is used only if the batch header there names the
//!   offset its entry does, so a missing, damaged or replaced file makes a lookup start at the
//!   segment's start (a longer walk, with a rate-limited warning). A time index damaged in a
//!   way that keeps its entries increasing can still lead a lookup by time past batches that
//!   qualify, as a damaged index can in Kafka.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::log_budget::{LogBudget, within_budget};

use super::batch::{BATCH_HEADER_LEN, BatchHeader, NO_TIMESTAMP, compute_crc};
use super::error::{BatchError, StorageError, io_err};
use super::index::{
    OffsetIndex, TimeIndex, offset_lookup_in_file, time_lookup_in_file, write_file_atomic,
};

pub(crate) fn log_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}
pub(crate) fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}
pub(crate) fn timeindex_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}
/// `path` with `.cleaned` added: where compaction writes a file that is to replace `path`.
pub(crate) fn cleaned_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".cleaned");
    PathBuf::from(name)
}
/// Where compaction's cleaned segment waits, committed, while the segments it replaces are
/// deleted (see `compaction.rs`).
pub(crate) fn swap_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log.swap"))
}

/// Deletes the files of the segment at `base`: its log (already gone is as good as deleted),
/// any compacted copy of it waiting to replace it (`.log.swap`, which a start-up would
/// otherwise put back), its index files and any tail a start-up cut from it and kept beside it
/// ([`keep_discarded`]).
pub(crate) fn delete_segment_files(dir: &Path, base: i64) -> Result<(), StorageError> {
    for path in [swap_path(dir, base), log_path(dir, base)] {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
    }
    let _ = fs::remove_file(index_path(dir, base));
    let _ = fs::remove_file(timeindex_path(dir, base));
    let kept = format!("{base:020}.log.discarded-");
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&kept))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The offset after the last whole batch of the segment file at `path` whose first offset is
/// `base` (`base` when it holds none), from its batch headers alone.
pub(crate) fn next_offset_of_file(path: &Path, base: i64) -> Result<i64, StorageError> {
    let file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut next = base;
    // A damaged batch ends what is counted; opening the segment later cuts it.
    let _ = for_each_header(&file, path, size, 0, |_, h| {
        next = h.next_offset();
        true
    });
    Ok(next)
}

/// Copies bytes `from..to` of a segment file into `<segment>.discarded-<now_ms>` (synced),
/// returning its path.
fn keep_discarded(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    now_ms: i64,
) -> Result<PathBuf, StorageError> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".discarded-{now_ms}"));
    let kept = PathBuf::from(name);
    let mut out = File::create(&kept).map_err(io_err(&kept))?;
    let mut pos = from;
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    while pos < to {
        let n = ((to - pos) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(io_err(path))?;
        out.write_all(&buf[..n]).map_err(io_err(&kept))?;
        pos += n as u64;
    }
    out.sync_all().map_err(io_err(&kept))?;
    Ok(kept)
}

#[cfg(test)]
thread_local! {
    /// Test seam: when `Some(n)`, segment writes on this thread succeed for `n` more bytes and
    /// then fail with ENOSPC (after writing the bytes that fit, like a real short write).
    pub(crate) static FAIL_AFTER_BYTES: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
}

/// The single write path of segment data (the fault-injection seam).
fn write_at(file: &File, buf: &[u8], pos: u64) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(budget) = FAIL_AFTER_BYTES.get() {
        if (buf.len() as u64) > budget {
            file.write_all_at(&buf[..budget as usize], pos)?;
            FAIL_AFTER_BYTES.set(Some(0));
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        FAIL_AFTER_BYTES.set(Some(budget - buf.len() as u64));
    }
    file.write_all_at(buf, pos)
}

/// How much of an existing segment to verify on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// The active (last) segment: scan and CRC-check every batch, rebuild its indexes.
    Recover,
    /// A sealed segment: trust index files that pass the consistency check and only scan the
    /// batches after the last offset-index entry; otherwise behave like `Recover` and rewrite
    /// the index files.
    Sealed,
}

pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    pub(crate) next_offset: i64,
    pub(crate) size: u64,
    /// Largest batch maxTimestamp in the segment, `NO_TIMESTAMP` when empty.
    pub(crate) max_timestamp: i64,
    /// Last offset of the (first) batch holding `max_timestamp`.
    pub(crate) offset_of_max_timestamp: i64,
    /// When the segment started, for `segment_age_ms` rolls: `now_ms` at creation, or after a
    /// restart the first batch's maxTimestamp (Kafka's rule).
    pub(crate) created_ms: i64,
    /// When the broker last wrote to the segment: the append's `now_ms`, or after a restart the
    /// file's modification time. Its tombstones are kept `delete.retention.ms` past it (record
    /// timestamps are the producers' and may be far in the past; Kafka before 3.1 also timed
    /// them by the files) until compaction stores that horizon in their batches; compaction
    /// gives a rewritten file the latest time of the segments whose batches it keeps.
    pub(crate) written_ms: i64,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    /// Whether the indexes are only in the segment's index files (a sealed segment whose files
    /// are written; `offset_index` and `time_index` are then empty): so the heap does not hold
    /// every retained segment's indexes (about 5 MB per GiB of log).
    indexes_on_disk: bool,
    bytes_since_index: u64,
    index_interval: u64,
    /// Shared with the segment's views, which read or fsync it without the log's lock.
    file: Arc<File>,
    path: PathBuf,
    dir: PathBuf,
}

impl Segment {
    /// Create an empty segment (an existing file of that name is emptied: a segment is only
    /// created at the log end offset, so such a file can hold no live batch).
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let path = log_path(dir, base_offset);
        let seg = Segment::empty_file(dir, base_offset, index_interval, now_ms, &path)?;
        let _ = fs::remove_file(index_path(dir, base_offset));
        let _ = fs::remove_file(timeindex_path(dir, base_offset));
        Ok(seg)
    }

    /// An empty segment named `{base}.log` whose file is made (or emptied) at `at`.
    fn empty_file(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        now_ms: i64,
        at: &Path,
    ) -> Result<Segment, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(at)
            .map_err(io_err(at))?;
        Ok(Segment::empty(
            dir,
            base_offset,
            index_interval,
            now_ms,
            Arc::new(file),
            log_path(dir, base_offset),
        ))
    }

    fn empty(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        now_ms: i64,
        file: Arc<File>,
        path: PathBuf,
    ) -> Segment {
        Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp: NO_TIMESTAMP,
            offset_of_max_timestamp: -1,
            created_ms: now_ms,
            written_ms: now_ms,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            indexes_on_disk: false,
            bytes_since_index: 0,
            index_interval,
            file,
            path,
            dir: dir.to_path_buf(),
        }
    }

    /// Open an existing segment, truncating a torn or corrupt tail (see [`OpenMode`]).
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        mode: OpenMode,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let path = log_path(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let meta = file.metadata().map_err(io_err(&path))?;
        let file_len = meta.len();
        let written_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now_ms, |d| d.as_millis() as i64);
        let file = Arc::new(file);
        let mut seg = Segment::empty(dir, base_offset, index_interval, now_ms, file, path);
        seg.written_ms = written_ms;

        let mut start = 0;
        let mut from_index = false;
        if mode == OpenMode::Sealed
            && let Some((pos, next)) = seg.load_index_files(file_len)
        {
            start = pos;
            seg.next_offset = next;
            from_index = true;
        }
        let loaded = (seg.offset_index.len(), seg.time_index.len());
        let mut end = seg.scan(start, file_len)?;
        if end < file_len && from_index {
            // Damage inside a sealed segment: do not trust anything, rescan from the start.
            seg = Segment::empty(dir, base_offset, index_interval, now_ms, seg.file, seg.path);
            seg.written_ms = written_ms;
            from_index = false;
            end = seg.scan(0, file_len)?;
        }
        if end < file_len {
            // A crash's torn tail is the usual cause, but damage in the middle of a segment
            // also cuts the whole batches after it: keep what is cut beside the segment, for
            // an operator to inspect or recover, before the file is shortened.
            // If the copy fails (a full disk is a common cause of a torn tail), the cut still
            // happens: the partition must open.
            match keep_discarded(&seg.file, &seg.path, end, file_len, now_ms) {
                Ok(kept) => warn!(
                    file = %seg.path.display(),
                    valid_bytes = end,
                    discarded_bytes = file_len - end,
                    from_offset = seg.next_offset,
                    kept_in = %kept.display(),
                    "truncating torn or corrupt tail of log segment: what was stored from offset {} on in it is cut",
                    seg.next_offset
                ),
                Err(e) => warn!(
                    file = %seg.path.display(),
                    valid_bytes = end,
                    discarded_bytes = file_len - end,
                    from_offset = seg.next_offset,
                    error = %e,
                    "truncating torn or corrupt tail of log segment: what was stored from offset {} on in it is cut, and the cut bytes could not be kept",
                    seg.next_offset
                ),
            }
            seg.file.set_len(end).map_err(io_err(&seg.path))?;
            seg.file.sync_all().map_err(io_err(&seg.path))?;
        }
        seg.size = end;
        if end > 0 {
            let first = seg.read_header(0)?;
            if first.max_timestamp != NO_TIMESTAMP {
                seg.created_ms = first.max_timestamp;
            }
        }
        if mode == OpenMode::Sealed {
            let written = if !from_index {
                // A segment whose seal never ran (a crash after its roll) may have data only in
                // the page cache: make it durable before the index files that vouch for it.
                seg.sync()?;
                seg.write_index_files()
            } else if loaded != (seg.offset_index.len(), seg.time_index.len()) {
                // The scan after the files' last entry added some (`index.interval.bytes` made
                // smaller since): the files are written again.
                seg.write_index_files()
            } else {
                Ok(())
            };
            // The index files only spare the next start this scan and the heap the indexes:
            // without them (say, on a full disk) the segment is served from memory.
            match written {
                Ok(()) => seg.release_indexes(),
                Err(e) => {
                    warn!(file = %seg.path.display(), error = %e, "cannot write the index files of a sealed segment; its index is kept in memory and the files written at a later start")
                }
            }
        }
        Ok(seg)
    }

    /// Leaves the indexes to the segment's index files, written and holding every entry.
    pub(crate) fn release_indexes(&mut self) {
        self.offset_index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.indexes_on_disk = true;
    }

    /// Load and sanity-check the index files of a sealed segment. On success the in-memory
    /// indexes are set and the result is (position of the last indexed batch, its base offset),
    /// where the scan resumes. Inconsistent files are ignored (and later rewritten).
    fn load_index_files(&mut self, file_len: u64) -> Option<(u64, i64)> {
        let oi = OffsetIndex::decode(&fs::read(index_path(&self.dir, self.base_offset)).ok()?);
        let ti = TimeIndex::decode(&fs::read(timeindex_path(&self.dir, self.base_offset)).ok()?);
        let (Some(oi), Some(ti)) = (oi, ti) else {
            warn!(segment = %self.path.display(), "discarding corrupt index files");
            return None;
        };
        let (rel, pos) = oi.last().unwrap_or((0, 0));
        let consistent = if (pos as u64) < file_len {
            let mut hdr = [0u8; BATCH_HEADER_LEN];
            self.file.read_exact_at(&mut hdr, pos as u64).is_ok()
                && BatchHeader::parse(&hdr).is_ok_and(|h| {
                    oi.last().is_none() || h.base_offset == self.base_offset + rel as i64
                })
        } else {
            pos == 0 && file_len == 0
        };
        if !consistent {
            warn!(segment = %self.path.display(), "discarding index files inconsistent with the log");
            return None;
        }
        if let Some((ts, rel_off)) = ti.last() {
            self.max_timestamp = ts;
            self.offset_of_max_timestamp = self.base_offset + rel_off as i64;
        }
        self.offset_index = oi;
        self.time_index = ti;
        let resume_offset = if pos == 0 {
            self.base_offset
        } else {
            self.base_offset + rel as i64
        };
        Some((pos as u64, resume_offset))
    }

    /// Scan and CRC-check batches from `pos` up to `file_len`, tracking each; returns the end
    /// of the valid prefix.
    fn scan(&mut self, mut pos: u64, file_len: u64) -> Result<u64, StorageError> {
        let file = self.file.clone();
        let mut reader = Forward::new(&file);
        while pos < file_len {
            let avail = file_len - pos;
            if avail < BATCH_HEADER_LEN as u64 {
                break;
            }
            let hdr = reader
                .get(pos, BATCH_HEADER_LEN, file_len)
                .map_err(io_err(&self.path))?;
            let Ok(h) = BatchHeader::parse(hdr) else {
                break;
            };
            let size = h.total_size() as u64;
            if size > avail {
                break;
            }
            let batch = reader
                .get(pos, size as usize, file_len)
                .map_err(io_err(&self.path))?;
            if compute_crc(batch) != h.crc || !self.follows(&h) {
                break;
            }
            self.track(&h, pos);
            pos += size;
        }
        Ok(pos)
    }

    /// Whether `h` may come next in this segment (offsets increase, relative offsets fit).
    fn follows(&self, h: &BatchHeader) -> bool {
        h.last_offset_delta >= 0
            && h.base_offset >= self.next_offset
            && h.last_offset() - self.base_offset <= i32::MAX as i64
    }

    /// Account for a batch stored at `pos`: indexes, offsets, timestamps.
    fn track(&mut self, h: &BatchHeader, pos: u64) {
        if self.bytes_since_index >= self.index_interval && pos > 0 {
            if self.max_timestamp != NO_TIMESTAMP {
                self.time_index.push(
                    self.max_timestamp,
                    (self.offset_of_max_timestamp - self.base_offset) as u32,
                );
            }
            self.offset_index
                .push((h.base_offset - self.base_offset) as u32, pos as u32);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += h.total_size() as u64;
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.offset_of_max_timestamp = h.last_offset();
        }
        self.next_offset = h.next_offset();
    }

    /// Append already validated batches (`batches` = (position within `data`, header)).
    /// On failure the file is truncated back and nothing in memory changes.
    pub(crate) fn append(
        &mut self,
        data: &[u8],
        batches: &[(usize, BatchHeader)],
        sync: bool,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        debug_assert!(!self.indexes_on_disk, "appending to a sealed segment");
        let pos = self.size;
        let res = write_at(&self.file, data, pos)
            .map_err(|e| (false, e))
            .and_then(|()| {
                if sync {
                    self.file.sync_data().map_err(|e| (true, e))
                } else {
                    Ok(())
                }
            });
        if let Err((synced, source)) = res {
            if let Err(e) = self.file.set_len(pos) {
                // Bytes past `size` are never read and are overwritten or truncated later.
                warn!(file = %self.path.display(), error = %e, "could not truncate after failed write");
            }
            let path = self.path.clone();
            return Err(if synced {
                StorageError::Sync { path, source }
            } else {
                StorageError::Io { path, source }
            });
        }
        for (off, h) in batches {
            self.track(h, pos + *off as u64);
        }
        self.size += data.len() as u64;
        self.written_ms = self.written_ms.max(now_ms);
        Ok(())
    }

    /// Header of the batch stored at `pos` (which must be a batch boundary below `size`).
    pub(crate) fn read_header(&self, pos: u64) -> Result<BatchHeader, StorageError> {
        read_header(&self.file, &self.path, self.size, pos)
    }

    /// Visit batch headers from `pos` to the end; `f` returns false to stop.
    pub(crate) fn for_each_header(
        &self,
        pos: u64,
        f: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<(), StorageError> {
        for_each_header(&self.file, &self.path, self.size, pos, f)
    }

    /// This segment's data as it is now, through the segment's shared file handle, to be read or
    /// fsynced without the log (fetches, compaction, seals, the interval flush) while producers
    /// go on appending.
    pub(crate) fn view(&self) -> SegmentView {
        SegmentView {
            base_offset: self.base_offset,
            size: self.size,
            written_ms: self.written_ms,
            max_timestamp: self.max_timestamp,
            file: self.file.clone(),
            path: self.path.clone(),
        }
    }

    /// Where to start looking for `offset`: the position of the last offset-index entry at or
    /// before it, or, for a segment whose indexes are in its files, the offset to look up
    /// there ([`SegmentView::start_position`]; no I/O here).
    pub(crate) fn index_start(&self, offset: i64) -> IndexStart {
        let rel = (offset - self.base_offset).clamp(0, u32::MAX as i64) as u32;
        if self.indexes_on_disk {
            IndexStart::InFile(rel)
        } else {
            IndexStart::At(self.offset_index.lookup(rel).1 as u64)
        }
    }

    /// The position of the last offset-index entry at or before `offset`: where to start
    /// looking for it (reads the index file of a segment whose indexes are there).
    pub(crate) fn index_position(&self, offset: i64) -> u64 {
        match self.index_start(offset) {
            IndexStart::At(pos) => pos,
            IndexStart::InFile(rel) => self.position_in_files(rel),
        }
    }

    /// Position from which to search for the first batch with maxTimestamp >= `ts`.
    pub(crate) fn position_for_timestamp(&self, ts: i64) -> u64 {
        if !self.indexes_on_disk {
            let rel = self.time_index.lookup(ts);
            return self.offset_index.lookup(rel).1 as u64;
        }
        let at = timeindex_path(&self.dir, self.base_offset);
        match time_lookup_in_file(&at, ts) {
            Ok(rel) => self.position_in_files(rel),
            Err(e) => {
                within_budget!(INDEX_UNREAD, warn, file = %at.display(), error = %e, "cannot read a sealed segment's time index; the lookup walks the segment from its start");
                0
            }
        }
    }

    fn position_in_files(&self, rel: u32) -> u64 {
        position_in_files(&self.file, &self.path, self.size, self.base_offset, rel)
    }

    pub(crate) fn read_range(&self, start: u64, end: u64) -> Result<Vec<u8>, StorageError> {
        read_range(&self.file, &self.path, start, end)
    }

    /// Seal in memory: the final time-index entry. Fsyncing the data and writing the index files
    /// ([`Segment::index_files`]) come after, without the log's lock.
    pub(crate) fn seal(&mut self) {
        if self.indexes_on_disk {
            return; // sealed, and its index files written
        }
        if self.max_timestamp != NO_TIMESTAMP {
            self.time_index.push(
                self.max_timestamp,
                (self.offset_of_max_timestamp - self.base_offset) as u32,
            );
        }
        // Kept in memory while the segment is retained: no room for entries that will not come
        // (a grown Vec holds up to twice what it uses).
        self.offset_index.shrink_to_fit();
        self.time_index.shrink_to_fit();
    }

    /// The index files of a sealed segment: the offset index and the time index, each as its
    /// path and contents. Not for a segment whose indexes were left to its files.
    pub(crate) fn index_files(&self) -> [(PathBuf, Vec<u8>); 2] {
        debug_assert!(
            !self.indexes_on_disk,
            "the indexes are in the files already"
        );
        [
            (
                index_path(&self.dir, self.base_offset),
                self.offset_index.encode(),
            ),
            (
                timeindex_path(&self.dir, self.base_offset),
                self.time_index.encode(),
            ),
        ]
    }

    fn write_index_files(&mut self) -> Result<(), StorageError> {
        self.seal();
        for (path, bytes) in self.index_files() {
            write_file_atomic(&path, &bytes).map_err(io_err(&path))?;
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|source| StorageError::Sync {
            path: self.path.clone(),
            source,
        })
    }

    /// Whether another `len` bytes ending at `last_offset` would overflow the u32 positions or
    /// the relative offsets of the indexes.
    pub(crate) fn would_overflow(&self, len: u64, last_offset: i64) -> bool {
        self.size + len > u32::MAX as u64 || last_offset - self.base_offset > i32::MAX as i64
    }

    #[cfg(test)]
    pub(crate) fn offset_index_len(&self) -> usize {
        self.offset_index.len()
    }

    /// How many entries each index has room for (offset, time).
    #[cfg(test)]
    pub(crate) fn index_capacity(&self) -> (usize, usize) {
        (self.offset_index.capacity(), self.time_index.capacity())
    }

    #[cfg(test)]
    pub(crate) fn time_index_len(&self) -> usize {
        self.time_index.len()
    }

    /// Delete the segment's files (the open descriptor stays usable until dropped), with any
    /// tail a start-up cut from it and kept beside it ([`delete_segment_files`]).
    pub(crate) fn delete_files(&self) -> Result<(), StorageError> {
        delete_segment_files(&self.dir, self.base_offset)
    }

    /// An empty segment that compaction fills at `{base}.log.cleaned`, named for the
    /// `{base}.log` it becomes when the pass's outcome is swapped in; `written_ms` is the time
    /// the broker wrote the first segment it replaces.
    pub(crate) fn create_cleaned(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        written_ms: i64,
    ) -> Result<Segment, StorageError> {
        let at = cleaned_path(&log_path(dir, base_offset));
        Segment::empty_file(dir, base_offset, index_interval, written_ms, &at)
    }

    /// Appends whole, checked batches copied from another segment of the log, written by the
    /// broker at `written_ms`.
    pub(crate) fn append_copied(
        &mut self,
        data: &[u8],
        written_ms: i64,
    ) -> Result<(), StorageError> {
        let mut batches = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let h = BatchHeader::parse(&data[pos..])
                .map_err(|e| corrupt(&self.path, self.size + pos as u64, e))?;
            batches.push((pos, h));
            pos += h.total_size();
        }
        self.append(data, &batches, false, written_ms)
    }

    /// Makes a segment from [`Segment::create_cleaned`] durable: the latest time the broker
    /// wrote what it holds becomes its file's modification time (after a restart, the clock of
    /// any tombstone whose batch has no horizon yet), the data is fsynced, and its index files
    /// are written beside it as `{base}.index.cleaned` and `{base}.timeindex.cleaned`.
    pub(crate) fn finish_cleaned(&mut self) -> Result<(), StorageError> {
        let at = cleaned_path(&self.path);
        let written =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.written_ms.max(0) as u64);
        self.file.set_modified(written).map_err(io_err(&at))?;
        self.file.sync_all().map_err(io_err(&at))?;
        self.seal();
        for (path, bytes) in self.index_files() {
            let path = cleaned_path(&path);
            write_file_atomic(&path, &bytes).map_err(io_err(&path))?;
        }
        Ok(())
    }
}

/// A segment's data up to `size`, read through the segment's file handle without the log's lock
/// ([`Segment::view`]). A sealed segment does not change; an active one only grows, so the first
/// `size` bytes stay as seen. A segment that compaction replaced or retention deleted meanwhile
/// is still read as it was: the handle keeps the old file.
#[derive(Clone)]
pub(crate) struct SegmentView {
    pub(crate) base_offset: i64,
    pub(crate) size: u64,
    pub(crate) written_ms: i64,
    /// The segment's largest batch maxTimestamp, `NO_TIMESTAMP` when empty.
    pub(crate) max_timestamp: i64,
    file: Arc<File>,
    path: PathBuf,
}

impl SegmentView {
    /// Whether `seg` is the segment this is a view of (its file, not one opened again or made
    /// anew at the same base offset since).
    pub(crate) fn is_of(&self, seg: &Segment) -> bool {
        Arc::ptr_eq(&self.file, &seg.file)
    }

    /// Visit batch headers from `pos` to `size`; `f` returns false to stop.
    pub(crate) fn for_each_header(
        &self,
        pos: u64,
        f: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<(), StorageError> {
        for_each_header(&self.file, &self.path, self.size, pos, f)
    }

    /// Where to start looking for an offset, from [`Segment::index_start`]: for a segment whose
    /// indexes are in its files, the file's entry is looked up now, without the log's lock.
    pub(crate) fn start_position(&self, start: IndexStart) -> u64 {
        match start {
            IndexStart::At(pos) => pos,
            IndexStart::InFile(rel) => {
                position_in_files(&self.file, &self.path, self.size, self.base_offset, rel)
            }
        }
    }

    /// Position of the batch containing `offset`, or of the first batch after it (gaps), looking
    /// from `index_position` ([`Segment::index_position`]); `None` if every batch ends before it.
    pub(crate) fn find_position(
        &self,
        index_position: u64,
        offset: i64,
    ) -> Result<Option<u64>, StorageError> {
        find_position(&self.file, &self.path, self.size, index_position, offset)
    }

    /// Whole batches from `start` while the total stays <= `max_bytes`; with `first_whole`,
    /// the first one however large (KIP-74).
    pub(crate) fn read_batches(
        &self,
        start: u64,
        max_bytes: usize,
        first_whole: bool,
    ) -> Result<Vec<u8>, StorageError> {
        read_batches(
            &self.file,
            &self.path,
            self.size,
            start,
            max_bytes,
            first_whole,
        )
    }

    /// Whether the segment's path still names this file: false once the segment was deleted
    /// (retention, DeleteRecords, its topic deleted, maybe re-created) or replaced.
    pub(crate) fn still_at_its_path(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (self.file.metadata(), fs::metadata(&self.path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    /// fsync the segment's file (all of it, also what was appended after the view was taken).
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|source| StorageError::Sync {
            path: self.path.clone(),
            source,
        })
    }
}

/// Where a search of a segment starts ([`Segment::index_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexStart {
    /// At this position (the indexes are in memory).
    At(u64),
    /// At the entry for this relative offset in the segment's offset index file.
    InFile(u32),
}

/// The position of the last entry at or before `rel` in the offset index file of the segment
/// whose log is `file` at `path` (`size` bytes, first offset `base`), when the batch there is
/// the one the entry names; else 0, the segment's start (no file, a damaged one, or one that
/// compaction replaced since this segment was read).
fn position_in_files(file: &File, path: &Path, size: u64, base: i64, rel: u32) -> u64 {
    let index = path.with_extension("index");
    let (entry, pos) = match offset_lookup_in_file(&index, rel) {
        Ok(found) => found,
        Err(e) => {
            // A segment retention deleted after the read was planned has lost its files with
            // it: nothing to say of that.
            if e.kind() != std::io::ErrorKind::NotFound || path.exists() {
                within_budget!(INDEX_UNREAD, warn, file = %index.display(), error = %e, "cannot read a sealed segment's offset index; reads walk the segment from its start");
            }
            return 0;
        }
    };
    let pos = u64::from(pos);
    let mut hdr = [0u8; BATCH_HEADER_LEN];
    let named = pos + BATCH_HEADER_LEN as u64 <= size
        && file.read_exact_at(&mut hdr, pos).is_ok()
        && BatchHeader::parse(&hdr).is_ok_and(|h| h.base_offset == base + i64::from(entry));
    if named {
        return pos;
    }
    if pos > 0 {
        within_budget!(INDEX_UNREAD, warn, file = %index.display(), position = pos, "a sealed segment's offset index names a batch its log does not have there (replaced meanwhile, or damaged); the read walks the segment from its start");
    }
    0
}

/// Index files of sealed segments that could not be used, said a minute.
static INDEX_UNREAD: LogBudget = LogBudget::new(10);

/// The batch at `pos` runs past `size`, the end of the segment's data.
fn cut_short(path: &Path, pos: u64, size: u64) -> StorageError {
    corrupt(
        path,
        pos,
        BatchError::TooShort {
            len: (size - pos) as usize,
        },
    )
}

fn corrupt(path: &Path, pos: u64, source: BatchError) -> StorageError {
    warn!(file = %path.display(), position = pos, error = %source, "corrupt batch in log segment");
    StorageError::CorruptRecord {
        position: pos as usize,
        source,
    }
}

fn read_header(file: &File, path: &Path, size: u64, pos: u64) -> Result<BatchHeader, StorageError> {
    let mut hdr = [0u8; BATCH_HEADER_LEN];
    if pos + BATCH_HEADER_LEN as u64 > size {
        return Err(cut_short(path, pos, size));
    }
    file.read_exact_at(&mut hdr, pos).map_err(io_err(path))?;
    BatchHeader::parse(&hdr).map_err(|e| corrupt(path, pos, e))
}

/// Reads a file forward for walks over many batches: one read brings the bytes of many small
/// batches. Reads start small (a walk from an index entry is short) and double while the walk
/// goes on contiguously, up to [`Forward::MAX`]; after a jump over bytes not read (a batch
/// larger than what was read) they start small again, so a walk over large batches reads little
/// more than their headers.
struct Forward<'a> {
    file: &'a File,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    start: u64,
    next_read: usize,
}

impl<'a> Forward<'a> {
    const MIN: usize = 8 * 1024;
    const MAX: usize = 1024 * 1024;

    fn new(file: &'a File) -> Self {
        Forward {
            file,
            buf: Vec::new(),
            start: 0,
            next_read: Self::MIN,
        }
    }

    /// Bytes `pos..pos + len` of the file; the caller keeps `pos + len` within `end`, the end
    /// of what may be read.
    fn get(&mut self, pos: u64, len: usize, end: u64) -> std::io::Result<&[u8]> {
        let buffered_end = self.start + self.buf.len() as u64;
        if pos < self.start || pos + len as u64 > buffered_end {
            if pos > buffered_end || pos < self.start {
                self.next_read = Self::MIN;
            }
            let want = (len.max(self.next_read) as u64).min(end - pos) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
            self.next_read = (self.next_read * 2).min(Self::MAX);
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}

/// Visit batch headers from `pos` to `size`; `f` returns false to stop.
fn for_each_header(
    file: &File,
    path: &Path,
    size: u64,
    mut pos: u64,
    mut f: impl FnMut(u64, &BatchHeader) -> bool,
) -> Result<(), StorageError> {
    let mut reader = Forward::new(file);
    while pos < size {
        if pos + BATCH_HEADER_LEN as u64 > size {
            return Err(cut_short(path, pos, size));
        }
        let hdr = reader
            .get(pos, BATCH_HEADER_LEN, size)
            .map_err(io_err(path))?;
        let h = BatchHeader::parse(hdr).map_err(|e| corrupt(path, pos, e))?;
        if !f(pos, &h) {
            break;
        }
        pos += h.total_size() as u64;
    }
    Ok(())
}

fn find_position(
    file: &File,
    path: &Path,
    size: u64,
    from: u64,
    offset: i64,
) -> Result<Option<u64>, StorageError> {
    let mut found = None;
    for_each_header(file, path, size, from, |pos, h| {
        if h.last_offset() >= offset {
            found = Some(pos);
            false
        } else {
            true
        }
    })?;
    Ok(found)
}

/// Whole batches from `start` (a batch boundary below `size`) while the total stays <=
/// `max_bytes`; with `first_whole`, at least one. Reads the range once and finds the batch
/// boundaries in the bytes read, instead of a read per batch header.
fn read_batches(
    file: &File,
    path: &Path,
    size: u64,
    start: u64,
    max_bytes: usize,
    first_whole: bool,
) -> Result<Vec<u8>, StorageError> {
    let end = size.min(start.saturating_add(max_bytes as u64));
    let mut buf = read_range(file, path, start, end)?;
    let mut whole = 0usize;
    while whole + BATCH_HEADER_LEN <= buf.len() {
        let h = BatchHeader::parse(&buf[whole..whole + BATCH_HEADER_LEN])
            .map_err(|e| corrupt(path, start + whole as u64, e))?;
        let next = whole + h.total_size();
        if next > buf.len() {
            break;
        }
        whole = next;
    }
    if whole == 0 && !first_whole {
        return Ok(Vec::new());
    }
    if whole == 0 {
        // The first batch alone is larger than max_bytes (or its header did not fit): it is
        // returned whole all the same (KIP-74).
        let first = read_header(file, path, size, start)?;
        let end = start + first.total_size() as u64;
        if end > size {
            return Err(cut_short(path, start, size));
        }
        return read_range(file, path, start, end);
    }
    buf.truncate(whole);
    Ok(buf)
}

fn read_range(file: &File, path: &Path, start: u64, end: u64) -> Result<Vec<u8>, StorageError> {
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut buf, start).map_err(io_err(path))?;
    Ok(buf)
}
