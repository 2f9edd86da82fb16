//! The file-backed offline buffer ([`crate::DeviceConfig::buffer_file`]): an append-only log of
//! what the worker does with unacknowledged batches, so that a device started again on the same
//! file re-sends them with the same producer id, epoch and sequence numbers (the broker answers
//! those it already stored as duplicates: nothing is written twice).
//!
//! Format: the magic [`MAGIC`], then entries `len: u32 BE | crc32c(payload): u32 BE | payload`,
//! where `payload[0]` is the kind:
//!
//! | kind | payload | replay |
//! | --- | --- | --- |
//! | 1 producer | id i64, epoch i16 | the producer; pending batches renumbered from 0 (a new id) |
//! | 2 batch | topic (u16 len), partition i32, base sequence i32, count u32, records | appended to pending; the partition's next sequence follows it |
//! | 3 done | failed u8 | the oldest pending batch is acknowledged (or, failed, refused: later batches of its partition shift down) |
//! | 4 next sequence | topic, partition i32, sequence i32 | the partition's next sequence |
//! | 5 batch with headers | as 2, each record followed by its headers | as 2 |
//!
//! A record is `timestamp i64 | key len i32 (-1: none) | key | value len i32 | value`; in a
//! kind 5 batch it goes on with `header count u32`, then per header `key len u32 | key |
//! value len i32 (-1: null) | value`. A batch none of whose records has a header is written as kind 2,
//! which every version of this SDK reads.
//!
//! Invariants: entries are appended in the order the worker seals and finishes batches, so
//! replaying the file with the worker's own numbering rules ([`renumber`],
//! [`give_back_sequences`]) rebuilds its state exactly. A torn or corrupt tail (a crash in the
//! middle of a write) ends the replay and is cut off. When the acknowledged part of the file is
//! over [`COMPACT_MIN_BYTES`] and larger than the pending part, the file is rewritten (to a
//! temporary file, synced, renamed over it) with only the producer, the next sequences and the
//! pending batches: its size stays under about twice the buffer limit plus 1 MiB.
//!
//! Durability: entries are written with one `write` each, so they survive the device process
//! exiting or crashing once written (they are in the OS page cache); with `fsync` they are also
//! synced to disk one by one, which survives power loss at the cost of a disk flush per batch
//! and acknowledgement. Records are written when their batch is sealed (at most `linger` after
//! `send`); dropping the `Device` seals and writes the open ones first.
//!
//! One device at a time: the file `<path>.lock` is locked (advisory, `flock`) while a device
//! uses the buffer.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;

use crate::DeviceError;
use crate::worker::{Batch, Pending, Producer, Tp, give_back_sequences, renumber};

/// The first bytes of a buffer file (format version 1).
pub(crate) const MAGIC: &[u8; 8] = b"RNLDBUF1";
/// Acknowledged bytes the file may hold before it is compacted (when also over the pending ones).
pub(crate) const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// How long opening waits for another device (e.g. a dropped one still ending) to release it.
#[cfg(not(test))]
const LOCK_WAIT: Duration = Duration::from_secs(5);
#[cfg(test)]
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// The largest entry accepted when reading (a larger length is a corrupt tail).
const MAX_ENTRY_BYTES: u32 = 256 << 20;

const PRODUCER: u8 = 1;
const BATCH: u8 = 2;
const DONE: u8 = 3;
const NEXT_SEQUENCE: u8 = 4;
const BATCH_WITH_HEADERS: u8 = 5;

/// What a buffer file held: the state the worker resumes from.
#[derive(Default)]
pub(crate) struct Restored {
    pub(crate) producer: Option<Producer>,
    pub(crate) next_sequence: HashMap<Tp, i32>,
    pub(crate) batches: VecDeque<Batch>,
}

impl Restored {
    /// The producer the file's batches go on under (their sequence numbers are its); none when
    /// nothing is pending, and a new producer id will do.
    pub(crate) fn producer_to_resume(&self) -> Option<Producer> {
        self.producer.filter(|_| !self.batches.is_empty())
    }
}

pub(crate) struct FileBuffer {
    path: PathBuf,
    file: File,
    fsync: bool,
    /// Held (locked) for as long as the buffer is in use.
    _lock: File,
    /// Entry sizes of the pending batches, oldest first.
    pending: VecDeque<u64>,
    /// Bytes of entries that no longer matter (acknowledged batches, done markers, old state).
    dead: u64,
    /// Set after a write error: the buffer goes on in memory only.
    broken: bool,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Buffer(format!("{}: {e}", path.display()))
}

impl FileBuffer {
    /// Opens (or creates) the buffer file at `path`, locks it and replays it.
    pub(crate) async fn open(
        path: &Path,
        fsync: bool,
    ) -> Result<(FileBuffer, Restored), DeviceError> {
        let lock = lock(path).await?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error(path, e))?;
        let (restored, good, pending) = if bytes.is_empty() {
            file.write_all(MAGIC).map_err(|e| io_error(path, e))?;
            (Restored::default(), MAGIC.len() as u64, VecDeque::new())
        } else {
            if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
                return Err(io_error(path, "not a runnel-device buffer file"));
            }
            replay(&bytes[MAGIC.len()..])
        };
        let good = good.max(MAGIC.len() as u64);
        if good < bytes.len() as u64 && !bytes.is_empty() {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() as u64 - good,
                "buffer file ends in a torn or corrupt entry; cutting it off"
            );
            file.set_len(good).map_err(|e| io_error(path, e))?;
            file.seek(SeekFrom::End(0)).map_err(|e| io_error(path, e))?;
        }
        let live: u64 = pending.iter().sum();
        let buffer = FileBuffer {
            path: path.to_path_buf(),
            file,
            fsync,
            _lock: lock,
            pending,
            dead: good.saturating_sub(live),
            broken: false,
        };
        Ok((buffer, restored))
    }

    /// Records a (new) producer id.
    pub(crate) fn producer(&mut self, p: Producer) {
        let mut e = entry(PRODUCER);
        e.put_i64(p.id);
        e.put_i16(p.epoch);
        let n = self.append(e);
        self.dead += n;
    }

    /// Records a sealed batch.
    pub(crate) fn sealed(&mut self, b: &Batch) {
        let with_headers = b.records.iter().any(|r| !r.headers.is_empty());
        let mut e = entry(if with_headers {
            BATCH_WITH_HEADERS
        } else {
            BATCH
        });
        put_tp(&mut e, &b.tp);
        e.put_i32(b.base_sequence);
        e.put_u32(b.records.len() as u32);
        for r in &b.records {
            e.put_i64(r.timestamp);
            match &r.key {
                Some(k) => {
                    e.put_i32(k.len() as i32);
                    e.put_slice(k);
                }
                None => e.put_i32(-1),
            }
            e.put_i32(r.value.len() as i32);
            e.put_slice(&r.value);
            if with_headers {
                e.put_u32(r.headers.len() as u32);
                for (k, v) in &r.headers {
                    e.put_u32(k.len() as u32);
                    e.put_slice(k.as_bytes());
                    match v {
                        Some(v) => {
                            e.put_i32(v.len() as i32);
                            e.put_slice(v);
                        }
                        None => e.put_i32(-1),
                    }
                }
            }
        }
        let n = self.append(e);
        self.pending.push_back(n);
    }

    /// Records that the oldest pending batch is finished (`failed`: refused by the broker).
    pub(crate) fn done(&mut self, failed: bool) {
        let mut e = entry(DONE);
        e.put_u8(failed as u8);
        let n = self.append(e);
        self.dead += n + self.pending.pop_front().unwrap_or(0);
    }

    /// Rewrites the file with only what is pending when the dead part has grown too large.
    pub(crate) fn compact_if_due<'a>(
        &mut self,
        producer: Producer,
        next_sequence: &HashMap<Tp, i32>,
        pending: impl Iterator<Item = &'a Batch>,
    ) {
        let live: u64 = self.pending.iter().sum();
        if self.dead < COMPACT_MIN_BYTES || self.dead < live {
            return;
        }
        self.rewrite(producer, next_sequence, pending);
    }

    /// Rewrites the file with only what is pending, in the order given (also when batches were
    /// split in memory, so that the file's batches stay the ones that are sent).
    pub(crate) fn rewrite<'a>(
        &mut self,
        producer: Producer,
        next_sequence: &HashMap<Tp, i32>,
        pending: impl Iterator<Item = &'a Batch>,
    ) {
        if self.broken {
            return;
        }
        let started = Instant::now();
        let mut fresh = FileBuffer {
            path: self.path.clone(),
            file: match self.rewrite_target() {
                Ok(f) => f,
                Err(e) => {
                    self.fail(e);
                    return;
                }
            },
            fsync: false,
            _lock: match self._lock.try_clone() {
                Ok(l) => l,
                Err(e) => {
                    self.fail(io_error(&self.path, e));
                    return;
                }
            },
            pending: VecDeque::new(),
            dead: 0,
            broken: false,
        };
        fresh.producer(producer);
        for (tp, seq) in next_sequence {
            let mut e = entry(NEXT_SEQUENCE);
            put_tp(&mut e, tp);
            e.put_i32(*seq);
            let n = fresh.append(e);
            fresh.dead += n;
        }
        for b in pending {
            fresh.sealed(b);
        }
        let tmp = tmp_path(&self.path);
        let renamed = fresh
            .file
            .sync_all()
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if fresh.broken {
            return self.fail(io_error(&tmp, "cannot write the compacted buffer"));
        }
        if let Err(e) = renamed {
            return self.fail(io_error(&self.path, e));
        }
        fresh.fsync = self.fsync;
        tracing::debug!(
            path = %self.path.display(),
            dropped = self.dead,
            took_us = started.elapsed().as_micros() as u64,
            "buffer file compacted"
        );
        *self = fresh;
    }

    /// Syncs the file to disk (when `fsync` is on).
    pub(crate) fn sync(&mut self) {
        if self.fsync && !self.broken {
            let _ = self.file.sync_data();
        }
    }

    fn rewrite_target(&self) -> Result<File, DeviceError> {
        let tmp = tmp_path(&self.path);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        f.write_all(MAGIC).map_err(|e| io_error(&tmp, e))?;
        Ok(f)
    }

    /// Appends one entry (kind and payload in `e`); returns its size in the file.
    fn append(&mut self, e: BytesMut) -> u64 {
        let mut framed = Vec::with_capacity(e.len() + 8);
        framed.extend_from_slice(&(e.len() as u32).to_be_bytes());
        framed.extend_from_slice(&crc32c::crc32c(&e).to_be_bytes());
        framed.extend_from_slice(&e);
        if !self.broken {
            let written = self.file.write_all(&framed).and_then(|()| {
                if self.fsync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = written {
                self.fail(io_error(&self.path, e));
            }
        }
        framed.len() as u64
    }

    fn fail(&mut self, e: DeviceError) {
        tracing::error!(error = %e, "the buffer file cannot be written; buffering in memory only");
        self.broken = true;
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Locks `<path>.lock`, waiting up to [`LOCK_WAIT`] for another device to release it.
async fn lock(path: &Path) -> Result<File, DeviceError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| io_error(&lock_path, e))?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io_error(path, "in use by another device"));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&lock_path, e)),
        }
    }
}

fn entry(kind: u8) -> BytesMut {
    let mut e = BytesMut::with_capacity(64);
    e.put_u8(kind);
    e
}

fn put_tp(e: &mut BytesMut, tp: &Tp) {
    e.put_u16(tp.0.len() as u16);
    e.put_slice(tp.0.as_bytes());
    e.put_i32(tp.1);
}

/// Replays entries; returns the state, the length of the good prefix (with the magic) and the
/// entry sizes of the pending batches.
fn replay(mut rest: &[u8]) -> (Restored, u64, VecDeque<u64>) {
    let mut st = Restored::default();
    let mut sizes = VecDeque::new();
    let mut good = MAGIC.len() as u64;
    while rest.len() >= 8 {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_ENTRY_BYTES || rest.len() < 8 + len as usize {
            break;
        }
        let payload = &rest[8..8 + len as usize];
        if crc32c::crc32c(payload) != crc
            || apply(&mut st, &mut sizes, payload, 8 + len as u64).is_none()
        {
            break;
        }
        rest = &rest[8 + len as usize..];
        good += 8 + len as u64;
    }
    (st, good, sizes)
}

/// Applies one entry; `None` when it does not parse (treated as the corrupt tail).
fn apply(st: &mut Restored, sizes: &mut VecDeque<u64>, payload: &[u8], size: u64) -> Option<()> {
    let mut b = Bytes::copy_from_slice(payload);
    match get_u8(&mut b)? {
        PRODUCER => {
            let id = get_i64(&mut b)?;
            let epoch = get_i16(&mut b)?;
            st.producer = Some(Producer { id, epoch });
            renumber(&mut st.batches, &mut st.next_sequence);
        }
        kind @ (BATCH | BATCH_WITH_HEADERS) => {
            let tp = get_tp(&mut b)?;
            let base_sequence = get_i32(&mut b)?;
            let count = get_u32(&mut b)?;
            let mut records = Vec::new();
            for _ in 0..count {
                let timestamp = get_i64(&mut b)?;
                let key = get_bytes(&mut b)?;
                let value = get_bytes(&mut b)?.unwrap_or_default();
                let mut headers = Vec::new();
                if kind == BATCH_WITH_HEADERS {
                    for _ in 0..get_u32(&mut b)? {
                        let n = get_u32(&mut b)? as usize;
                        let key = get_str(&mut b, n)?;
                        headers.push((key, get_bytes(&mut b)?));
                    }
                }
                let mut record = Pending {
                    key,
                    value,
                    headers,
                    timestamp,
                    cost: 0,
                    ack: None,
                };
                record.cost = record.cost_in(&tp.0);
                records.push(record);
            }
            st.next_sequence.insert(
                tp.clone(),
                base_sequence.wrapping_add(count as i32) & i32::MAX,
            );
            st.batches.push_back(Batch {
                tp,
                base_sequence,
                records,
            });
            sizes.push_back(size);
        }
        DONE => {
            let failed = get_u8(&mut b)? != 0;
            let batch = st.batches.pop_front()?;
            sizes.pop_front();
            if failed {
                give_back_sequences(&batch, &mut st.batches, &mut st.next_sequence);
            }
        }
        NEXT_SEQUENCE => {
            let tp = get_tp(&mut b)?;
            let seq = get_i32(&mut b)?;
            st.next_sequence.insert(tp, seq);
        }
        _ => return None,
    }
    Some(())
}

fn get_u8(b: &mut Bytes) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}
fn get_i16(b: &mut Bytes) -> Option<i16> {
    (b.remaining() >= 2).then(|| b.get_i16())
}
fn get_i32(b: &mut Bytes) -> Option<i32> {
    (b.remaining() >= 4).then(|| b.get_i32())
}
fn get_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}
fn get_i64(b: &mut Bytes) -> Option<i64> {
    (b.remaining() >= 8).then(|| b.get_i64())
}
fn get_u16(b: &mut Bytes) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16())
}
/// A UTF-8 string of `n` bytes.
fn get_str(b: &mut Bytes, n: usize) -> Option<StrBytes> {
    if b.remaining() < n {
        return None;
    }
    StrBytes::from_utf8(b.split_to(n)).ok()
}
fn get_tp(b: &mut Bytes) -> Option<Tp> {
    let n = get_u16(b)? as usize;
    let topic = get_str(b, n)?.to_string();
    Some((topic, get_i32(b)?))
}
/// A length-prefixed byte string; -1 is `None`.
fn get_bytes(b: &mut Bytes) -> Option<Option<Bytes>> {
    let n = get_i32(b)?;
    if n < 0 {
        return Some(None);
    }
    if b.remaining() < n as usize {
        return None;
    }
    Some(Some(b.split_to(n as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(topic: &str, base_sequence: i32, values: &[&str]) -> Batch {
        Batch {
            tp: (topic.to_string(), 0),
            base_sequence,
            records: values
                .iter()
                .enumerate()
                .map(|(i, v)| Pending {
                    key: (i % 2 == 0).then(|| Bytes::from_static(b"k")),
                    value: Bytes::from(v.to_string()),
                    headers: Vec::new(),
                    timestamp: 1_700_000_000_000 + i as i64,
                    cost: 0,
                    ack: None,
                })
                .collect(),
        }
    }

    fn values(r: &Restored) -> Vec<(String, i32, Vec<String>)> {
        r.batches
            .iter()
            .map(|b| {
                let v = b
                    .records
                    .iter()
                    .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                    .collect();
                (b.tp.0.clone(), b.base_sequence, v)
            })
            .collect()
    }

    #[tokio::test]
    async fn replay_restores_the_producer_pending_batches_and_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        {
            let (mut f, r) = FileBuffer::open(&path, false).await.unwrap();
            assert!(r.batches.is_empty() && r.producer.is_none());
            f.producer(Producer { id: 9, epoch: 1 });
            f.sealed(&batch("a", 0, &["a0", "a1"]));
            f.sealed(&batch("b", 0, &["b0"]));
            f.sealed(&batch("a", 2, &["a2"]));
            f.done(false);
            // A refused batch: the later one of its partition moves down to its sequences.
            f.done(true);
        }
        let (_f, r) = FileBuffer::open(&path, false).await.unwrap();
        assert_eq!(r.producer, Some(Producer { id: 9, epoch: 1 }));
        assert_eq!(values(&r), [("a".to_string(), 2, vec!["a2".to_string()])]);
        assert_eq!(r.next_sequence[&("a".to_string(), 0)], 3);
        assert_eq!(r.next_sequence[&("b".to_string(), 0)], 0);
        let k = &r.batches[0].records[0];
        assert_eq!(
            (k.key.as_deref(), k.timestamp),
            (Some(&b"k"[..]), 1_700_000_000_000)
        );
    }

    #[tokio::test]
    async fn headers_are_replayed_and_batches_without_them_keep_the_first_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let mut with = batch("a", 0, &["h0", "h1"]);
        with.records[1].headers = vec![
            (
                StrBytes::from_static_str("unit"),
                Some(Bytes::from_static(b"C")),
            ),
            (StrBytes::from_static_str("empty"), Some(Bytes::new())),
            (StrBytes::from_static_str("null"), None),
        ];
        {
            let (mut f, _) = FileBuffer::open(&path, false).await.unwrap();
            f.producer(Producer { id: 4, epoch: 0 });
            f.sealed(&batch("a", 2, &["plain"]));
            f.sealed(&with);
        }
        let bytes = std::fs::read(&path).unwrap();
        // The kinds of the three entries, in order: producer, plain batch, batch with headers.
        let mut kinds = Vec::new();
        let mut at = MAGIC.len();
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            kinds.push(bytes[at + 8]);
            at += 8 + len;
        }
        assert_eq!(kinds, [PRODUCER, BATCH, BATCH_WITH_HEADERS]);
        let (_f, r) = FileBuffer::open(&path, false).await.unwrap();
        let got: Vec<Vec<(String, Option<Vec<u8>>)>> = r
            .batches
            .iter()
            .flat_map(|b| &b.records)
            .map(|p| {
                p.headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_ref().map(|v| v.to_vec())))
                    .collect()
            })
            .collect();
        assert_eq!(
            got,
            [
                vec![],
                vec![],
                vec![
                    ("unit".into(), Some(b"C".to_vec())),
                    ("empty".into(), Some(vec![])),
                    ("null".into(), None)
                ]
            ]
        );
        // The buffer cost counts the headers, as when the record was queued.
        let h1 = &r.batches[1].records[1];
        assert_eq!(h1.cost, h1.cost_in("a"));
        assert!(h1.cost > r.batches[1].records[0].cost);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        {
            let (mut f, _) = FileBuffer::open(&path, false).await.unwrap();
            f.producer(Producer { id: 1, epoch: 0 });
            f.sealed(&batch("a", 0, &["x"]));
            f.sealed(&batch("a", 1, &["y"]));
        }
        let full = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full - 3)
            .unwrap();
        let (mut f, r) = FileBuffer::open(&path, false).await.unwrap();
        assert_eq!(values(&r), [("a".to_string(), 0, vec!["x".to_string()])]);
        f.sealed(&batch("a", 1, &["z"]));
        drop(f);
        let (_f, r) = FileBuffer::open(&path, false).await.unwrap();
        let got: Vec<_> = values(&r).into_iter().map(|v| v.2[0].clone()).collect();
        assert_eq!(got, ["x", "z"]);
    }

    #[tokio::test]
    async fn compaction_keeps_only_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let big = "v".repeat(10_000);
        let p = Producer { id: 3, epoch: 0 };
        let (mut f, _) = FileBuffer::open(&path, false).await.unwrap();
        f.producer(p);
        let mut pending: VecDeque<Batch> = VecDeque::new();
        let mut next = HashMap::new();
        for i in 0..300 {
            let b = batch("t", i, &[big.as_str()]);
            f.sealed(&b);
            pending.push_back(b);
            next.insert(("t".to_string(), 0), i + 1);
            if i >= 2 {
                pending.pop_front();
                f.done(false);
                f.compact_if_due(p, &next, pending.iter());
            }
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size < COMPACT_MIN_BYTES + 100_000,
            "compacted: {size} bytes"
        );
        drop(f);
        let (_f, r) = FileBuffer::open(&path, false).await.unwrap();
        let seqs: Vec<i32> = r.batches.iter().map(|b| b.base_sequence).collect();
        assert_eq!(seqs, [298, 299]);
        assert_eq!(r.next_sequence[&("t".to_string(), 0)], 300);
        assert_eq!(r.producer, Some(p));
    }

    #[tokio::test]
    async fn a_second_user_of_the_file_is_refused_while_the_first_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buf");
        let (_held, _) = FileBuffer::open(&path, false).await.unwrap();
        let err = FileBuffer::open(&path, false).await.err().unwrap();
        assert!(
            err.to_string().contains("in use by another device"),
            "{err}"
        );
    }
}
