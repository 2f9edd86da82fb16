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

use std::fs;
use std::io::Write;
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

    #[cfg(test)]
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

    #[cfg(test)]
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

/// Replace `path` with `bytes` durably: write `<path>.tmp`, fsync, rename.
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
