//! Transactions as one partition's log sees them: which producers have a transaction open here,
//! and which transactions ended in an abort.
//!
//! A transactional producer's batches carry the transactional bit; its transaction ends in this
//! partition with a control batch (a *marker*) the transaction coordinator writes: COMMIT or
//! ABORT, one record whose key is (version i16, type i16) and whose value is (version i16,
//! coordinator epoch i32). From the batches alone, in log order:
//! - a transactional batch of a producer with nothing open here opens its transaction at the
//!   batch's base offset;
//! - a marker closes it; an ABORT marker adds (producer, first offset, marker offset) to the
//!   aborted list.
//!
//! The **last stable offset** (LSO) is the first offset of the oldest transaction still open, or
//! ended by a marker at or above the high watermark (not on every in-sync replica yet: a move of
//! the lead could still lose that marker, and the new leader would abort the transaction), or
//! the high watermark when there is none: read_committed consumers read below it. They drop the
//! records of the aborted transactions a fetch response lists (Kafka's `AbortedTransactions`,
//! the ones that overlap what was read) and the markers themselves.
//!
//! The state is rebuilt from the log on open (see `log.rs`), the same way on a leader and on a
//! follower, whose log holds the leader's batches byte for byte.

use std::collections::{HashMap, VecDeque};

use super::batch::{ATTR_CONTROL, ATTR_TRANSACTIONAL, BATCH_HEADER_LEN, BatchHeader, rewrite_crc};

/// What ended a transaction in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Abort,
    Commit,
}

impl Marker {
    fn code(self) -> i16 {
        match self {
            Marker::Abort => 0,
            Marker::Commit => 1,
        }
    }
}

/// A transaction that ended in an abort: its records, from `first_offset` to the marker at
/// `last_offset`, are not for read_committed consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TxnState {
    /// Producer id -> first offset of its transaction open in this partition.
    open: HashMap<i64, i64>,
    /// In the order of their markers (so by `last_offset`).
    aborted: Vec<AbortedTxn>,
    /// Transactions ended lately, (first offset, marker offset) in marker order, until the high
    /// watermark passes their marker; at most [`MAX_ENDED`].
    ended: VecDeque<(i64, i64)>,
}

/// Ended transactions remembered for the last stable offset: far more than end while a
/// follower copies a marker (the high watermark trails the log end by a fetch).
const MAX_ENDED: usize = 1000;

impl TxnState {
    /// Takes a stored batch into account; `marker` is what a control batch says
    /// ([`marker_of`]). Batches outside transactions change nothing.
    pub(crate) fn observe(&mut self, h: &BatchHeader, marker: Option<Marker>) {
        if !h.is_transactional() || !h.has_producer_id() {
            return;
        }
        if h.is_control() {
            let Some(first_offset) = self.open.remove(&h.producer_id) else {
                return;
            };
            self.ended.push_back((first_offset, h.base_offset));
            if self.ended.len() > MAX_ENDED {
                self.ended.pop_front();
            }
            // A marker that cannot be read counts as an abort: its records are then never
            // shown to read_committed consumers (compaction drops them likewise).
            if marker != Some(Marker::Commit) {
                if marker.is_none() {
                    tracing::warn!(
                        producer_id = h.producer_id,
                        offset = h.base_offset,
                        "a transaction marker cannot be read; taken as an abort"
                    );
                }
                self.aborted.push(AbortedTxn {
                    producer_id: h.producer_id,
                    first_offset,
                    last_offset: h.base_offset,
                });
            }
        } else {
            self.open.entry(h.producer_id).or_insert(h.base_offset);
        }
    }

    /// The first offset of the oldest transaction open here, or ended by a marker at or above
    /// `high_watermark`, if any. Forgets the ended ones whose marker is below it.
    pub(crate) fn first_unstable(&mut self, high_watermark: i64) -> Option<i64> {
        while self
            .ended
            .front()
            .is_some_and(|&(_, marker)| marker < high_watermark)
        {
            self.ended.pop_front();
        }
        let ended = self.ended.iter().map(|&(first, _)| first);
        self.open.values().copied().chain(ended).min()
    }

    /// The producers with a transaction open here.
    pub(crate) fn open_producers(&self) -> impl Iterator<Item = i64> + '_ {
        self.open.keys().copied()
    }

    /// The first offset of the transaction `producer_id` has open here, if any.
    pub(crate) fn open_since(&self, producer_id: i64) -> Option<i64> {
        self.open.get(&producer_id).copied()
    }

    /// Whether `producer_id` has a transaction open here.
    pub(crate) fn is_open(&self, producer_id: i64) -> bool {
        self.open.contains_key(&producer_id)
    }

    /// The aborted transactions that overlap `from..to` (their records may be among what a
    /// fetch from `from` returns below `to`).
    pub(crate) fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets the aborted transactions wholly below the log start (retention, DeleteRecords).
    pub(crate) fn forget_below(&mut self, log_start: i64) {
        let cut = self.aborted.partition_point(|a| a.last_offset < log_start);
        self.aborted.drain(..cut);
    }

    /// Forgets the aborted transactions whose markers are at `markers` (compaction removed
    /// them).
    pub(crate) fn forget_aborted_at(&mut self, markers: &std::collections::HashSet<i64>) {
        if !markers.is_empty() {
            self.aborted.retain(|a| !markers.contains(&a.last_offset));
        }
    }

    /// How many aborted transactions are remembered.
    #[cfg(test)]
    pub(crate) fn aborted_count(&self) -> usize {
        self.aborted.len()
    }
}

/// The marker a control batch holds, `None` when `batch` is not a whole, readable one.
pub fn marker_of(batch: &[u8]) -> Option<Marker> {
    let h = BatchHeader::parse(batch).ok()?;
    if !h.is_control() || h.compression() != 0 || h.record_count < 1 {
        return None;
    }
    let mut pos = BATCH_HEADER_LEN;
    let _length = varint(batch, &mut pos)?;
    pos += 1; // attributes
    let _timestamp_delta = varint(batch, &mut pos)?;
    let _offset_delta = varint(batch, &mut pos)?;
    let key_len = varint(batch, &mut pos)?;
    if key_len < 4 {
        return None;
    }
    let key = batch.get(pos..pos + 4)?;
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(Marker::Abort),
        1 => Some(Marker::Commit),
        _ => None,
    }
}

/// A control batch ending `producer_id`'s transaction (base offset 0, to be stamped by the
/// append), as Kafka's coordinator writes it.
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    coordinator_epoch: i32,
    now_ms: i64,
) -> Vec<u8> {
    let mut record = vec![0u8]; // attributes
    record.push(0); // timestamp delta
    record.push(0); // offset delta
    put_varint(&mut record, 4);
    record.extend_from_slice(&0i16.to_be_bytes()); // key version
    record.extend_from_slice(&marker.code().to_be_bytes());
    put_varint(&mut record, 6);
    record.extend_from_slice(&0i16.to_be_bytes()); // value version
    record.extend_from_slice(&coordinator_epoch.to_be_bytes());
    put_varint(&mut record, 0); // headers
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + record.len() + 1);
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&0i32.to_be_bytes()); // batch length, below
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    b.extend_from_slice(&(ATTR_TRANSACTIONAL | ATTR_CONTROL).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    b.extend_from_slice(&now_ms.to_be_bytes());
    b.extend_from_slice(&now_ms.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&1i32.to_be_bytes()); // record count
    put_varint(&mut b, record.len() as i64);
    b.extend_from_slice(&record);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    rewrite_crc(&mut b);
    b
}

/// A zigzag varint, as record fields are written.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn varint(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut z = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        z |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{check_batch, set_base_offset};

    #[test]
    fn a_marker_batch_is_a_valid_control_batch_that_says_what_it_is() {
        for marker in [Marker::Abort, Marker::Commit] {
            let mut b = marker_batch(7, 3, marker, 0, 1_700_000_000_000);
            set_base_offset(&mut b, 42);
            let h = check_batch(&b).expect("a whole batch with its CRC");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch, h.base_offset), (7, 3, 42));
            assert_eq!((h.record_count, h.last_offset_delta), (1, 0));
            assert_eq!(marker_of(&b), Some(marker));
            // kafka-protocol reads it as a control record with Kafka's key layout.
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes::Bytes::from(
                b.clone(),
            ))
            .expect("decodes");
            let r = &set.records[0];
            assert!(r.control && r.transactional);
            assert_eq!(r.key.as_deref(), Some(&[0, 0, 0, marker.code() as u8][..]));
        }
    }

    fn header(pid: i64, base: i64, control: bool) -> BatchHeader {
        let mut b = marker_batch(pid, 0, Marker::Commit, 0, 0);
        if !control {
            b[21..23].copy_from_slice(&ATTR_TRANSACTIONAL.to_be_bytes());
        }
        set_base_offset(&mut b, base);
        BatchHeader::parse(&b).unwrap()
    }

    #[test]
    fn open_and_aborted_transactions_follow_the_batches() {
        let mut s = TxnState::default();
        s.observe(&header(1, 0, false), None);
        s.observe(&header(2, 1, false), None);
        s.observe(&header(1, 2, false), None);
        assert_eq!(s.first_unstable(3), Some(0));
        s.observe(&header(1, 3, true), Some(Marker::Abort));
        // Ended, but its marker (3) is not below the high watermark yet.
        assert_eq!(s.first_unstable(3), Some(0));
        assert_eq!(s.first_unstable(4), Some(1));
        assert!(!s.is_open(1) && s.is_open(2));
        s.observe(&header(2, 4, true), Some(Marker::Commit));
        assert_eq!(s.first_unstable(5), None);
        let aborted = AbortedTxn {
            producer_id: 1,
            first_offset: 0,
            last_offset: 3,
        };
        assert_eq!(s.aborted_between(0, 5), vec![aborted]);
        assert_eq!(s.aborted_between(3, 5), vec![aborted]);
        assert!(s.aborted_between(4, 5).is_empty());
        // A marker without an open transaction (a coordinator retrying) changes nothing.
        s.observe(&header(1, 5, true), Some(Marker::Abort));
        assert_eq!(s.aborted_count(), 1);
        // One that cannot be read counts as an abort.
        s.observe(&header(3, 6, false), None);
        s.observe(&header(3, 7, true), None);
        assert_eq!(s.aborted_count(), 2);
        s.forget_below(4);
        assert_eq!(s.aborted_count(), 1);
        s.forget_below(8);
        assert_eq!(s.aborted_count(), 0);
    }
}
