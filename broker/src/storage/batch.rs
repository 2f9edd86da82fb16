//! Zero-copy view of Kafka record batch v2 headers, and the few in-place patches the broker
//! makes to a producer's batch.
//!
//! Layout (big endian, byte positions from the start of the batch):
//!
//! ```text
//!  0 baseOffset i64        | not covered by the CRC: the broker patches it
//!  8 batchLength i32       | bytes after this field
//! 12 partitionLeaderEpoch  |
//! 16 magic i8 (= 2)        |
//! 17 crc u32               | CRC32C over bytes 21..end
//! 21 attributes i16        | bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
//! 23 lastOffsetDelta i32
//! 27 firstTimestamp i64
//! 35 maxTimestamp i64
//! 43 producerId i64
//! 51 producerEpoch i16
//! 53 baseSequence i32
//! 57 recordCount i32
//! 61 records...
//! ```
//!
//! Invariants: [`BatchHeader::parse`] never reads past the 61 header bytes; [`check_batch`] and
//! [`parse_batches`] additionally prove the whole batch is present and its CRC matches, so a
//! slice they return can be stored as is.

use bytes::Bytes;
use kafka_protocol::records::{Record, TimestampType};

use super::error::BatchError;

/// A record as a plain producer sends it (not idempotent, not transactional, creation time),
/// to build batches with kafka-protocol's encoder. Set `offset` and `sequence` on the result for
/// the later records of an idempotent batch.
pub fn plain_record(timestamp: i64, key: Option<Bytes>, value: Option<Bytes>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

/// Size of a v2 record batch header, i.e. of a batch with no records.
pub const BATCH_HEADER_LEN: usize = 61;
/// baseOffset + batchLength: the part of the header not counted by batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// The only accepted magic.
pub const MAGIC_V2: i8 = 2;

pub const BASE_OFFSET_POS: usize = 0;
pub const LENGTH_POS: usize = 8;
pub const PARTITION_LEADER_EPOCH_POS: usize = 12;
pub const MAGIC_POS: usize = 16;
pub const CRC_POS: usize = 17;
/// First byte covered by the CRC.
pub const ATTRIBUTES_POS: usize = 21;
pub const LAST_OFFSET_DELTA_POS: usize = 23;
pub const FIRST_TIMESTAMP_POS: usize = 27;
pub const MAX_TIMESTAMP_POS: usize = 35;
pub const PRODUCER_ID_POS: usize = 43;
pub const PRODUCER_EPOCH_POS: usize = 51;
pub const BASE_SEQUENCE_POS: usize = 53;
pub const RECORD_COUNT_POS: usize = 57;

pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
pub const ATTR_CONTROL: i16 = 0x20;
pub const ATTR_DELETE_HORIZON: i16 = 0x40;

/// producerId of a batch from a non-idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;
/// Timestamp meaning "none".
pub const NO_TIMESTAMP: i64 = -1;

/// All fields of a v2 batch header, copied out of the bytes (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn i16_at(b: &[u8], p: usize) -> i16 {
    i16::from_be_bytes([b[p], b[p + 1]])
}
fn i32_at(b: &[u8], p: usize) -> i32 {
    i32::from_be_bytes(b[p..p + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], p: usize) -> i64 {
    i64::from_be_bytes(b[p..p + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Parse the 61 header bytes at the start of `buf`. Checks the header length, that
    /// batchLength covers at least the header, and the magic; does not look at the records.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::TooShort { len: buf.len() });
        }
        let batch_length = i32_at(buf, LENGTH_POS);
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic { magic });
        }
        if (batch_length as i64) < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::InvalidLength { batch_length });
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET_POS),
            batch_length,
            partition_leader_epoch: i32_at(buf, PARTITION_LEADER_EPOCH_POS),
            magic,
            crc: u32::from_be_bytes(buf[CRC_POS..CRC_POS + 4].try_into().expect("4 bytes")),
            attributes: i16_at(buf, ATTRIBUTES_POS),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA_POS),
            first_timestamp: i64_at(buf, FIRST_TIMESTAMP_POS),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP_POS),
            producer_id: i64_at(buf, PRODUCER_ID_POS),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH_POS),
            base_sequence: i32_at(buf, BASE_SEQUENCE_POS),
            record_count: i32_at(buf, RECORD_COUNT_POS),
        })
    }

    /// Bytes the whole batch occupies, header included.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }
    /// Offset of the last record (the batch keeps it even when compaction removed that record).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    /// First offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
    /// Whether compaction stored its tombstones' delete horizon in the first timestamp
    /// (KIP-534): the time after which they may go.
    pub fn delete_horizon(&self) -> Option<i64> {
        (self.attributes & ATTR_DELETE_HORIZON != 0).then_some(self.first_timestamp)
    }
    /// True for idempotent or transactional producers.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id > NO_PRODUCER_ID
    }
    /// Sequence of the last record, wrapping at i32::MAX like Kafka.
    pub fn last_sequence(&self) -> i32 {
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }
}

/// `seq + delta`, wrapping from i32::MAX to 0 (Kafka's DefaultRecordBatch.incrementSequence).
pub fn increment_sequence(seq: i32, delta: i32) -> i32 {
    if seq > i32::MAX - delta {
        delta - (i32::MAX - seq) - 1
    } else {
        seq + delta
    }
}

/// CRC32C of a complete batch (attributes..end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_POS..])
}

/// Parse the header at the start of `buf`, prove the whole batch is present and check its CRC.
/// Returns the header; the batch is `&buf[..header.total_size()]`.
pub fn check_batch(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let size = header.total_size();
    if size > buf.len() {
        return Err(BatchError::Truncated {
            needed: size as u64,
            available: buf.len() as u64,
        });
    }
    let computed = compute_crc(&buf[..size]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// The headers of the batches back to back in `buf`, read without checking the batches (no
/// CRC); stops at the first that cannot be read.
pub fn headers(buf: &[u8]) -> impl Iterator<Item = BatchHeader> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let h = BatchHeader::parse(buf.get(pos..)?).ok()?;
        pos += h.total_size();
        Some(h)
    })
}

/// Iterate the checked batches of a buffer holding whole batches back to back.
/// Yields `(position, header, batch bytes)`; on the first error yields `(position, error)` once
/// and stops.
pub fn parse_batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        buf,
        pos: 0,
        failed: false,
    }
}

/// Iterator returned by [`parse_batches`].
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(usize, BatchHeader, &'a [u8]), (usize, BatchError)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        match check_batch(rest) {
            Ok(h) => {
                let pos = self.pos;
                self.pos += h.total_size();
                Some(Ok((pos, h, &rest[..h.total_size()])))
            }
            Err(e) => {
                self.failed = true;
                Some(Err((self.pos, e)))
            }
        }
    }
}

/// Overwrite baseOffset (outside the CRC, so nothing else changes).
pub(crate) fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Recompute and store the CRC after patching fields it covers.
pub(crate) fn rewrite_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Stamp LogAppendTime the way Kafka's LogValidator does for v2 batches it does not recompress
/// (`DefaultRecordBatch.setMaxTimestamp`): set attribute bit 3 and maxTimestamp = `now_ms`, leave
/// firstTimestamp and the record deltas alone, recompute the CRC. Readers (Java client,
/// librdkafka) report maxTimestamp for every record of a LogAppendTime batch.
pub(crate) fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attrs = i16_at(batch, ATTRIBUTES_POS) | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&now_ms.to_be_bytes());
    rewrite_crc(batch);
}

/// Clears the delete-horizon attribute (bit 6) of a produced batch: only compaction stores a
/// horizon, so that a tombstone stays readable for `delete.retention.ms` after the broker stored
/// it whatever the producer sent (Kafka keeps a producer's bit; a copy of batches read from a
/// compacted Kafka topic would carry horizons already past). Each record's timestamp is the
/// first timestamp plus its delta either way, so none changes. Recomputes the CRC.
pub(crate) fn clear_delete_horizon(batch: &mut [u8]) {
    let attrs = i16_at(batch, ATTRIBUTES_POS) & !ATTR_DELETE_HORIZON;
    batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attrs.to_be_bytes());
    rewrite_crc(batch);
}

/// Write an i32/i16/i64 field in place (the caller rewrites the CRC afterwards).
pub(crate) fn put_i32(batch: &mut [u8], pos: usize, v: i32) {
    batch[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_i64(batch: &mut [u8], pos: usize, v: i64) {
    batch[pos..pos + 8].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_i16(batch: &mut [u8], pos: usize, v: i16) {
    batch[pos..pos + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::{encode_batch, kv};
    use kafka_protocol::records::Compression;

    #[test]
    fn parses_every_header_field() {
        let mut b = encode_batch(
            &[kv("k", "v", 10), kv("k2", "v2", 30)],
            Compression::None,
            7,
            3,
            41,
        );
        set_base_offset(&mut b, 1000);
        let h = check_batch(&b).unwrap();
        assert_eq!(h.base_offset, 1000);
        assert_eq!(h.total_size(), b.len());
        assert_eq!(h.magic, 2);
        assert_eq!(h.last_offset_delta, 1);
        assert_eq!(h.last_offset(), 1001);
        assert_eq!(h.first_timestamp, 10);
        assert_eq!(h.max_timestamp, 30);
        assert_eq!(h.producer_id, 7);
        assert_eq!(h.producer_epoch, 3);
        assert_eq!(h.base_sequence, 41);
        assert_eq!(h.last_sequence(), 42);
        assert_eq!(h.record_count, 2);
        assert_eq!(h.compression(), 0);
        assert!(!h.is_log_append_time() && !h.is_control() && !h.is_transactional());
    }

    #[test]
    fn rejects_each_kind_of_damage() {
        let b = encode_batch(&[kv("k", "v", 10)], Compression::None, -1, -1, -1);
        assert_eq!(check_batch(&b[..60]), Err(BatchError::TooShort { len: 60 }));
        assert!(matches!(
            check_batch(&b[..b.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        let mut bad = b.clone();
        bad[MAGIC_POS] = 1;
        assert_eq!(check_batch(&bad), Err(BatchError::BadMagic { magic: 1 }));
        let mut bad = b.clone();
        put_i32(&mut bad, LENGTH_POS, 10);
        assert_eq!(
            check_batch(&bad),
            Err(BatchError::InvalidLength { batch_length: 10 })
        );
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            check_batch(&bad),
            Err(BatchError::CrcMismatch { .. })
        ));
        // baseOffset is outside the CRC.
        let mut ok = b.clone();
        set_base_offset(&mut ok, 99);
        assert!(check_batch(&ok).is_ok());
    }

    #[test]
    fn iterates_batches_and_stops_at_damage() {
        let a = encode_batch(&[kv("a", "1", 1)], Compression::None, -1, -1, -1);
        let b = encode_batch(&[kv("b", "2", 2)], Compression::None, -1, -1, -1);
        let mut buf = a.clone();
        buf.extend_from_slice(&b);
        let got: Vec<_> = parse_batches(&buf).map(|r| r.unwrap().0).collect();
        assert_eq!(got, vec![0, a.len()]);
        buf.truncate(buf.len() - 3);
        let got: Vec<_> = parse_batches(&buf).collect();
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err((p, BatchError::Truncated { .. })) if p == a.len()));
    }

    #[test]
    fn log_append_time_keeps_crc_valid() {
        let mut b = encode_batch(&[kv("k", "v", 10)], Compression::Lz4, -1, -1, -1);
        set_log_append_time(&mut b, 123_456);
        let h = check_batch(&b).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 123_456);
        assert_eq!(h.first_timestamp, 10);
        assert_eq!(h.compression(), 3);
    }

    #[test]
    fn sequence_wraps_like_kafka() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(5, 0), 5);
    }
}
