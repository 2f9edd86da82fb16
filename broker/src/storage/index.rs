//! Sparse offset and time indexes of one segment, in memory with a file image.
//!
//! * Offset index (`.index`): entries of (relative offset u32, file position u32), 8 bytes, big
//!   endian. An entry points at the *start* of a batch whose base offset is `base + relative`.
//!   Relative offsets and positions strictly increase.
//! * Time index (`.timeindex`): entries of (timestamp i64, relative offset u32), 12 bytes. An
//!   entry says "every record at or before this offset has timestamp <= this timestamp" (the
//!   running max timestamp and the offset of the batch that holds it). Both fields strictly
//!   increase.
//!
//! Persistence: the files are written whole (tmp + fsync + rename) when a segment is sealed
//! (by the seal that follows a roll, once the data is fsynced; compaction; recovery of a sealed
//! segment). The active segment's indexes live only in
//! memory and are rebuilt by the recovery scan on open. A file that fails [`OffsetIndex::decode`]
//! or the consistency check in `segment.rs` is discarded and rebuilt from the log.
//!
//! Once a sealed segment's files are written, its indexes leave the heap: lookups search the
//! files with positioned reads ([`offset_lookup_in_file`], [`time_lookup_in_file`]), as Kafka
//! searches its memory-mapped index files, so the heap does not grow with the log retained.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub(crate) const OFFSET_ENTRY_LEN: usize = 8;
pub(crate) const TIME_ENTRY_LEN: usize = 12;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// Frees the room reserved for entries beyond those held (a sealed segment's).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Add an entry; ignored unless it moves both fields forward.
    pub(crate) fn push(&mut self, rel_offset: u32, position: u32) {
        if let Some(&(o, p)) = self.entries.last()
            && (rel_offset <= o || position <= p)
        {
            return;
        }
        self.entries.push((rel_offset, position));
    }

    /// The entry with the largest relative offset <= `rel_offset`, or (0, 0).
    pub(crate) fn lookup(&self, rel_offset: u32) -> (u32, u32) {
        let i = self.entries.partition_point(|&(o, _)| o <= rel_offset);
        if i == 0 { (0, 0) } else { self.entries[i - 1] }
    }

    pub(crate) fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_LEN);
        for &(o, p) in &self.entries {
            out.extend_from_slice(&o.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
        }
        out
    }

    /// Parse a file image; `None` if the length is not a whole number of entries or the
    /// entries do not strictly increase.
    pub(crate) fn decode(bytes: &[u8]) -> Option<OffsetIndex> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return None;
        }
        let mut idx = OffsetIndex::default();
        for e in bytes.chunks_exact(OFFSET_ENTRY_LEN) {
            let o = u32::from_be_bytes(e[0..4].try_into().ok()?);
            let p = u32::from_be_bytes(e[4..8].try_into().ok()?);
            let n = idx.entries.len();
            idx.push(o, p);
            if idx.entries.len() == n {
                return None;
            }
        }
        Some(idx)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Frees the room reserved for entries beyond those held (a sealed segment's).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Add an entry; ignored unless both the timestamp and the offset move forward.
    pub(crate) fn push(&mut self, timestamp: i64, rel_offset: u32) {
        if let Some(&(t, o)) = self.entries.last()
            && (timestamp <= t || rel_offset <= o)
        {
            return;
        }
        self.entries.push((timestamp, rel_offset));
    }

    /// Relative offset from which a search for the first timestamp >= `target` may start:
    /// the offset of the last entry whose timestamp < `target` (records up to it are all older),
    /// or 0.
    pub(crate) fn lookup(&self, target: i64) -> u32 {
        let i = self.entries.partition_point(|&(t, _)| t < target);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }

    pub(crate) fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_LEN);
        for &(t, o) in &self.entries {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&o.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<TimeIndex> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
            return None;
        }
        let mut idx = TimeIndex::default();
        for e in bytes.chunks_exact(TIME_ENTRY_LEN) {
            let t = i64::from_be_bytes(e[0..8].try_into().ok()?);
            let o = u32::from_be_bytes(e[8..12].try_into().ok()?);
            let n = idx.entries.len();
            idx.push(t, o);
            if idx.entries.len() == n {
                return None;
            }
        }
        Some(idx)
    }
}

/// The first of `count` entries of `entry_len` bytes in `file` for which `before` is false (all
/// those for which it is true come first), by a binary search reading one entry a step.
fn partition_point_in_file(
    file: &fs::File,
    entry_len: usize,
    count: usize,
    before: impl Fn(&[u8]) -> bool,
) -> std::io::Result<usize> {
    let mut entry = [0u8; TIME_ENTRY_LEN];
    let entry = &mut entry[..entry_len];
    let (mut lo, mut hi) = (0, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        file.read_exact_at(entry, (mid * entry_len) as u64)?;
        if before(entry) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The number of whole entries of `entry_len` bytes in the index file `file`.
fn entry_count(file: &fs::File, entry_len: usize) -> std::io::Result<usize> {
    Ok(file.metadata()?.len() as usize / entry_len)
}

/// [`OffsetIndex::lookup`] over an offset index file.
pub(crate) fn offset_lookup_in_file(path: &Path, rel_offset: u32) -> std::io::Result<(u32, u32)> {
    let file = fs::File::open(path)?;
    let count = entry_count(&file, OFFSET_ENTRY_LEN)?;
    let rel = |e: &[u8]| u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
    let i = partition_point_in_file(&file, OFFSET_ENTRY_LEN, count, |e| rel(e) <= rel_offset)?;
    if i == 0 {
        return Ok((0, 0));
    }
    let mut e = [0u8; OFFSET_ENTRY_LEN];
    file.read_exact_at(&mut e, ((i - 1) * OFFSET_ENTRY_LEN) as u64)?;
    Ok((rel(&e), u32::from_be_bytes([e[4], e[5], e[6], e[7]])))
}

/// [`TimeIndex::lookup`] over a time index file.
pub(crate) fn time_lookup_in_file(path: &Path, target: i64) -> std::io::Result<u32> {
    let file = fs::File::open(path)?;
    let count = entry_count(&file, TIME_ENTRY_LEN)?;
    let ts = |e: &[u8]| i64::from_be_bytes(e[..8].try_into().unwrap_or_default());
    let i = partition_point_in_file(&file, TIME_ENTRY_LEN, count, |e| ts(e) < target)?;
    if i == 0 {
        return Ok(0);
    }
    let mut e = [0u8; TIME_ENTRY_LEN];
    file.read_exact_at(&mut e, ((i - 1) * TIME_ENTRY_LEN) as u64)?;
    Ok(u32::from_be_bytes([e[8], e[9], e[10], e[11]]))
}

/// Replace `path` with `bytes` durably: write `<path>.tmp`, fsync, rename.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        // Not left behind cut short (a full disk): the next write makes it again.
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory that is not empty where the file goes: the rename fails.
        let target = dir.path().join("log-start-offset");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        assert!(write_file_atomic(&target, b"42").is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["log-start-offset"]);
        let file = dir.path().join("00000000000000000000.index");
        write_file_atomic(&file, b"42").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"42");
    }

    #[test]
    fn offset_index_lookup_and_round_trip() {
        let mut idx = OffsetIndex::default();
        idx.push(0, 0);
        idx.push(10, 4096);
        idx.push(25, 8200);
        idx.push(20, 9000); // backwards: ignored
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.lookup(0), (0, 0));
        assert_eq!(idx.lookup(9), (0, 0));
        assert_eq!(idx.lookup(10), (10, 4096));
        assert_eq!(idx.lookup(24), (10, 4096));
        assert_eq!(idx.lookup(1000), (25, 8200));
        assert_eq!(OffsetIndex::decode(&idx.encode()), Some(idx.clone()));
        let mut bytes = idx.encode();
        bytes.pop();
        assert_eq!(OffsetIndex::decode(&bytes), None);
        let mut swapped = idx.encode();
        swapped[..8].copy_from_slice(&idx.encode()[16..24]);
        assert_eq!(OffsetIndex::decode(&swapped), None);
    }

    #[test]
    fn time_index_lookup_and_round_trip() {
        let mut idx = TimeIndex::default();
        idx.push(100, 0);
        idx.push(200, 5);
        idx.push(150, 9); // older timestamp: ignored
        idx.push(300, 12);
        assert_eq!(idx.lookup(50), 0);
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(201), 5);
        assert_eq!(idx.lookup(1000), 12);
        assert_eq!(TimeIndex::decode(&idx.encode()), Some(idx.clone()));
        assert_eq!(TimeIndex::decode(&[0; 11]), None);
    }

    /// Looking up in the files gives what looking up in memory gives, for every probe, from
    /// empty indexes to large ones.
    #[test]
    fn lookups_in_the_files_match_lookups_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (offsets_at, times_at) = (dir.path().join("i"), dir.path().join("t"));
        for n in [0u32, 1, 2, 3, 7, 100, 4097] {
            let mut offsets = OffsetIndex::default();
            let mut times = TimeIndex::default();
            for i in 0..n {
                offsets.push(i * 3 + 1, i * 4096 + 61);
                times.push(1_000 + i64::from(i) * 5, i * 3 + 2);
            }
            write_file_atomic(&offsets_at, &offsets.encode()).unwrap();
            write_file_atomic(&times_at, &times.encode()).unwrap();
            for probe in (0..n * 3 + 5).chain([u32::MAX]) {
                assert_eq!(
                    offset_lookup_in_file(&offsets_at, probe).unwrap(),
                    offsets.lookup(probe),
                    "{n} entries, offset {probe}"
                );
            }
            for probe in (0..i64::from(n) * 5 + 1_010).chain([i64::MIN, i64::MAX]) {
                assert_eq!(
                    time_lookup_in_file(&times_at, probe).unwrap(),
                    times.lookup(probe),
                    "{n} entries, time {probe}"
                );
            }
        }
        assert!(offset_lookup_in_file(&dir.path().join("gone"), 5).is_err());
    }
}
