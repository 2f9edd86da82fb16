//! The records of a batch as spans of its bytes: read and copied without decoding them into
//! values, so every field, every header included, stays as produced.
//!
//! kafka-protocol's `Record` keeps a record's headers in a map, so a header name given twice
//! (Kafka allows it) comes out of its decoder once. Where the broker rewrites a batch's records
//! it works on spans instead: [`plain_batch`] uncompresses a batch's records (header kept),
//! [`Records::parse`] finds each record's fields in them, and the kept records are copied into a
//! new batch, which [`compressed`] compresses again with the batch's codec.
//!
//! - [`Records::keep_offsets`] (compaction, plugin filters): the kept records copied whole, so
//!   each keeps its offset and timestamp deltas; the batch keeps its base offset, first
//!   timestamp, lastOffsetDelta and sequences, as Kafka's cleaner keeps them for v2 batches.
//! - [`Records::owned`] and [`encode`] (plugin transforms, dead-letter copies, routed
//!   batches): records as [`OwnedRecord`] values (headers a list), and a new batch of such
//!   records with the header fields of a template batch; [`encode_at`] puts them at given
//!   offset deltas (the kept records of a plugin chain, at the offsets they were produced at).
//!
//! Record layout: see [`super::records`].

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::storage::{self, BATCH_HEADER_LEN, BatchHeader, LENGTH_POS};

/// A malformed record in a batch whose header and CRC were fine.
pub type Malformed = String;

/// One record of a batch, located in the (plain) batch bytes.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    /// Where the record starts (its length).
    start: usize,
    /// The record's attributes byte (unused by Kafka so far, kept as it is).
    attributes: u8,
    pub(crate) offset_delta: i32,
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Range<usize>>,
    pub(crate) value: Option<Range<usize>>,
    pub(crate) header_count: u32,
    /// Where the headers start (after their count).
    pub(crate) headers: usize,
    /// From the key's length to the end of the record: what a rebuilt record copies.
    pub(crate) tail: Range<usize>,
}

/// One record's fields, borrowed from its batch.
pub struct RecordView<'a> {
    pub offset_delta: i32,
    /// The batch's first timestamp plus the record's delta (for CreateTime batches).
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// In order; a name given twice is here twice.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// A record's own fields, owned: what a plugin sees of it and may give back. Headers in order,
/// a name given twice here twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// The records of one plain v2 batch (uncompressed, or made so by [`plain_batch`]).
pub struct Records<'a> {
    batch: &'a [u8],
    spans: Vec<Span>,
}

/// A zigzag varint of at most `max` bytes at `*pos` (Kafka's varint and varlong).
fn varlong(buf: &[u8], pos: &mut usize, max: usize) -> Result<i64, Malformed> {
    let mut raw = 0u64;
    for i in 0..max {
        let Some(&b) = buf.get(*pos + i) else { break };
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(format!("bad varint at byte {pos}"))
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<i32, Malformed> {
    let v = varlong(buf, pos, 5)?;
    i32::try_from(v).map_err(|_| format!("varint {v} out of range"))
}

/// A length-prefixed field (-1 = null) at `*pos`, within `end`.
fn bytes_field(
    buf: &[u8],
    pos: &mut usize,
    end: usize,
    what: &str,
) -> Result<Option<Range<usize>>, Malformed> {
    match varint(buf, pos)? {
        -1 => Ok(None),
        len if len < 0 => Err(format!("record {what} length {len}")),
        len => {
            let start = *pos;
            *pos = start + len as usize;
            if *pos > end {
                return Err(format!("record {what} runs past its record"));
            }
            Ok(Some(start..*pos))
        }
    }
}

/// Appends a zigzag varint.
fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A header (key, value) at `*pos`, within `end`.
pub(crate) fn header(
    buf: &[u8],
    pos: &mut usize,
    end: usize,
) -> Result<(Range<usize>, Option<Range<usize>>), Malformed> {
    let key = bytes_field(buf, pos, end, "header key")?
        .ok_or_else(|| "record header key is null".to_string())?;
    if std::str::from_utf8(&buf[key.clone()]).is_err() {
        return Err("record header key is not UTF-8".into());
    }
    let value = bytes_field(buf, pos, end, "header value")?;
    Ok((key, value))
}

impl<'a> Records<'a> {
    /// Finds the records of `batch` (a whole batch with header `h`, uncompressed or from
    /// [`plain_batch`]): they must tile the batch exactly and be as many as the header says.
    pub fn parse(batch: &'a [u8], h: &BatchHeader) -> Result<Records<'a>, Malformed> {
        let count = usize::try_from(h.record_count)
            .map_err(|_| format!("record count {}", h.record_count))?;
        let mut spans = Vec::with_capacity(count.min(batch.len() / 7));
        let mut pos = BATCH_HEADER_LEN;
        while pos < batch.len() {
            let start = pos;
            let len = varint(batch, &mut pos)?;
            let end = pos + usize::try_from(len).map_err(|_| format!("record length {len}"))?;
            if end > batch.len() {
                return Err("record runs past the batch".into());
            }
            let attributes = *batch.get(pos).ok_or("record runs past the batch")?;
            pos += 1;
            let delta = varlong(batch, &mut pos, 10)?;
            let offset_delta = varint(batch, &mut pos)?; // renumbered on rebuild
            let tail_start = pos;
            let key = bytes_field(batch, &mut pos, end, "key")?;
            let value = bytes_field(batch, &mut pos, end, "value")?;
            let header_count = varint(batch, &mut pos)?;
            let header_count =
                u32::try_from(header_count).map_err(|_| format!("header count {header_count}"))?;
            let headers = pos;
            for _ in 0..header_count {
                header(batch, &mut pos, end)?;
            }
            if pos != end {
                return Err("record fields do not fill the record".into());
            }
            spans.push(Span {
                start,
                attributes,
                offset_delta,
                timestamp: h.first_timestamp.wrapping_add(delta),
                key,
                value,
                header_count,
                headers,
                tail: tail_start..end,
            });
        }
        if spans.len() != count {
            return Err(format!(
                "batch holds {} records, its header says {count}",
                spans.len()
            ));
        }
        Ok(Records { batch, spans })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The batch the records are in, and where each is.
    pub(crate) fn parts(&self) -> (&'a [u8], &[Span]) {
        (self.batch, &self.spans)
    }

    /// Record `i` (below [`Records::len`]) as its fields in the batch.
    pub fn record(&self, i: usize) -> RecordView<'a> {
        let s = &self.spans[i];
        let field = |r: &Option<Range<usize>>| r.clone().map(|r| &self.batch[r]);
        let mut headers = Vec::with_capacity(s.header_count as usize);
        let mut pos = s.headers;
        for _ in 0..s.header_count {
            // Checked by `parse`, UTF-8 keys included.
            let Ok((key, value)) = header(self.batch, &mut pos, s.tail.end) else {
                break;
            };
            let key = std::str::from_utf8(&self.batch[key]).unwrap_or_default();
            headers.push((key, field(&value)));
        }
        RecordView {
            offset_delta: s.offset_delta,
            timestamp: s.timestamp,
            key: field(&s.key),
            value: field(&s.value),
            headers,
        }
    }

    /// Every record's offset delta, in order.
    pub fn offset_deltas(&self) -> Vec<i32> {
        self.spans.iter().map(|s| s.offset_delta).collect()
    }

    /// Every record's fields, sliced from `plain` (the bytes these records were parsed from).
    pub fn owned(&self, plain: &Bytes) -> Vec<OwnedRecord> {
        debug_assert!(std::ptr::eq(plain.as_ref(), self.batch));
        let field = |r: &Option<Range<usize>>| r.clone().map(|r| plain.slice(r));
        self.spans
            .iter()
            .map(|s| {
                let mut headers = Vec::with_capacity(s.header_count as usize);
                let mut pos = s.headers;
                for _ in 0..s.header_count {
                    // Checked by `parse`, UTF-8 keys included.
                    let Ok((key, value)) = header(self.batch, &mut pos, s.tail.end) else {
                        break;
                    };
                    let key = String::from_utf8_lossy(&self.batch[key]).into_owned();
                    headers.push((key, field(&value)));
                }
                OwnedRecord {
                    timestamp: s.timestamp,
                    key: field(&s.key),
                    value: field(&s.value),
                    headers,
                }
            })
            .collect()
    }

    /// A new plain batch holding the records `kept` (indexes, in order, at least one) as they
    /// are: each keeps its offset and timestamp deltas, the batch its header fields but the
    /// record count, the length, for CreateTime the max timestamp (the largest kept), and the
    /// CRC. For a compressed batch, pass it through [`compressed`].
    ///
    /// With a `delete_horizon` (KIP-534), the batch's first timestamp becomes the horizon and
    /// its attributes say so; each record's timestamp delta is rewritten against it, so every
    /// record keeps its timestamp (base + delta, as consumers compute it).
    pub fn keep_offsets(
        &self,
        h: &BatchHeader,
        kept: &[usize],
        delete_horizon: Option<i64>,
    ) -> Vec<u8> {
        let spans = || kept.iter().map(|&i| &self.spans[i]);
        let mut out = Vec::with_capacity(self.batch.len() + 8 * kept.len());
        out.extend_from_slice(&self.batch[..BATCH_HEADER_LEN]);
        match delete_horizon {
            None => {
                for s in spans() {
                    out.extend_from_slice(&self.batch[s.start..s.tail.end]);
                }
            }
            Some(horizon) => {
                let mut prefix = Vec::with_capacity(16);
                for s in spans() {
                    prefix.clear();
                    prefix.push(s.attributes);
                    put_varlong(&mut prefix, s.timestamp.wrapping_sub(horizon));
                    put_varlong(&mut prefix, i64::from(s.offset_delta));
                    put_varlong(&mut out, (prefix.len() + s.tail.len()) as i64);
                    out.extend_from_slice(&prefix);
                    out.extend_from_slice(&self.batch[s.tail.clone()]);
                }
                storage::put_i64(&mut out, storage::FIRST_TIMESTAMP_POS, horizon);
                storage::put_i16(
                    &mut out,
                    storage::ATTRIBUTES_POS,
                    h.attributes | storage::ATTR_DELETE_HORIZON,
                );
            }
        }
        let length = (out.len() - storage::LOG_OVERHEAD) as i32;
        storage::put_i32(&mut out, LENGTH_POS, length);
        if !h.is_log_append_time() {
            let max = spans()
                .map(|s| s.timestamp)
                .max()
                .unwrap_or(h.max_timestamp);
            storage::put_i64(&mut out, storage::MAX_TIMESTAMP_POS, max);
        }
        storage::put_i32(&mut out, storage::RECORD_COUNT_POS, kept.len() as i32);
        storage::rewrite_crc(&mut out);
        out
    }
}

/// The 61-byte header of a batch without a producer id, CreateTime, stored with `codec`
/// (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd): a template for [`encode`].
pub fn header_without_producer(codec: i16) -> Vec<u8> {
    let mut h = vec![0u8; BATCH_HEADER_LEN];
    storage::put_i32(&mut h, storage::PARTITION_LEADER_EPOCH_POS, -1);
    h[storage::MAGIC_POS] = storage::MAGIC_V2 as u8;
    storage::put_i16(
        &mut h,
        storage::ATTRIBUTES_POS,
        codec & storage::ATTR_COMPRESSION_MASK,
    );
    storage::put_i64(&mut h, storage::PRODUCER_ID_POS, storage::NO_PRODUCER_ID);
    storage::put_i16(&mut h, storage::PRODUCER_EPOCH_POS, -1);
    storage::put_i32(&mut h, storage::BASE_SEQUENCE_POS, -1);
    h
}

/// A new batch of `records` (at least one) with the header fields of `template` (a batch or
/// its first 61 bytes: base offset, leader epoch, attributes, producer id and epoch, base
/// sequence): offset deltas 0.., first timestamp the smallest, max timestamp the largest,
/// compressed with the codec the attributes name. What `RecordBatchEncoder` makes of them,
/// but every header kept.
pub fn encode(template: &[u8], records: &[OwnedRecord]) -> Result<Vec<u8>, String> {
    encode_in(template, records, None)
}

/// A new batch of `records` as [`encode`] makes it, but with record `i` at offset delta
/// `deltas[i]` (increasing, one per record) and lastOffsetDelta `last` (at least the last of
/// them): a batch that spans more offsets than it holds records, as compaction leaves them.
pub fn encode_at(
    template: &[u8],
    records: &[OwnedRecord],
    deltas: &[i32],
    last: i32,
) -> Result<Vec<u8>, String> {
    if deltas.len() != records.len() || deltas.last().is_some_and(|&d| d > last) {
        return Err(format!(
            "{} offset deltas up to {:?} for {} records in a span to {last}",
            deltas.len(),
            deltas.last(),
            records.len()
        ));
    }
    encode_in(template, records, Some((deltas, last)))
}

fn encode_in(
    template: &[u8],
    records: &[OwnedRecord],
    at: Option<(&[i32], i32)>,
) -> Result<Vec<u8>, String> {
    fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
        match v {
            None => put_varlong(out, -1),
            Some(v) => {
                put_varlong(out, v.len() as i64);
                out.extend_from_slice(v);
            }
        }
    }
    let first = records
        .iter()
        .map(|r| r.timestamp)
        .min()
        .unwrap_or_default();
    let max = records
        .iter()
        .map(|r| r.timestamp)
        .max()
        .unwrap_or_default();
    let mut out = Vec::with_capacity(
        BATCH_HEADER_LEN
            + records
                .iter()
                .map(|r| {
                    24 + r.key.as_ref().map_or(0, |k| k.len())
                        + r.value.as_ref().map_or(0, |v| v.len())
                })
                .sum::<usize>(),
    );
    out.extend_from_slice(&template[..BATCH_HEADER_LEN]);
    let mut body = Vec::with_capacity(64);
    for (i, r) in records.iter().enumerate() {
        let delta = at.map_or(i as i64, |(deltas, _)| i64::from(deltas[i]));
        body.clear();
        body.push(0); // record attributes
        put_varlong(&mut body, r.timestamp.wrapping_sub(first));
        put_varlong(&mut body, delta);
        field(&mut body, r.key.as_deref());
        field(&mut body, r.value.as_deref());
        put_varlong(&mut body, r.headers.len() as i64);
        for (k, v) in &r.headers {
            field(&mut body, Some(k.as_bytes()));
            field(&mut body, v.as_deref());
        }
        put_varlong(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    renumbered(&mut out, records.len(), first, max);
    if let Some((_, last)) = at {
        storage::put_i32(&mut out, storage::LAST_OFFSET_DELTA_POS, last);
    }
    compressed(out)
}

/// Sets the header fields of a plain batch of `count` records numbered from offset delta 0,
/// timestamps `first` to `max`: its length, lastOffsetDelta, first and max timestamps and
/// record count (not the CRC).
fn renumbered(batch: &mut [u8], count: usize, first: i64, max: i64) {
    let length = (batch.len() - storage::LOG_OVERHEAD) as i32;
    storage::put_i32(batch, LENGTH_POS, length);
    storage::put_i32(batch, storage::LAST_OFFSET_DELTA_POS, count as i32 - 1);
    storage::put_i64(batch, storage::FIRST_TIMESTAMP_POS, first);
    storage::put_i64(batch, storage::MAX_TIMESTAMP_POS, max);
    storage::put_i32(batch, storage::RECORD_COUNT_POS, count as i32);
}

/// A batch with its records uncompressed (the header's codec bits left as they were), for
/// [`Records::parse`]; an uncompressed batch as it is. Every stored batch passed the broker's
/// bounded decompression on produce, and so did a produced one before a plugin sees it; the
/// decoders here are kafka-protocol's.
pub fn plain_batch(raw: Bytes, h: &BatchHeader) -> Result<Bytes, String> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    let mut payload = raw.slice(BATCH_HEADER_LEN..);
    let all = |b: &mut Bytes| Ok(b.split_off(0));
    let records = match h.compression() {
        0 => return Ok(raw),
        1 => Gzip::decompress(&mut payload, all),
        2 => Snappy::decompress(&mut payload, all),
        3 => Lz4::decompress(&mut payload, all),
        4 => Zstd::decompress(&mut payload, all),
        codec => return Err(format!("compression codec {codec} is unknown")),
    }
    .map_err(|e| format!("the records cannot be decompressed: {e:#}"))?;
    let mut plain = BytesMut::with_capacity(BATCH_HEADER_LEN + records.len());
    plain.extend_from_slice(&raw[..BATCH_HEADER_LEN]);
    plain.extend_from_slice(&records);
    Ok(plain.freeze())
}

/// The plain batch `plain` (from [`Records::keep_offsets`] or [`encode`], its length
/// set) with its records compressed by the codec its header names, its length and CRC set.
pub fn compressed(plain: Vec<u8>) -> Result<Vec<u8>, String> {
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let h = BatchHeader::parse(&plain).map_err(|e| e.to_string())?;
    let records = &plain[BATCH_HEADER_LEN..];
    let mut out = BytesMut::with_capacity(plain.len());
    out.extend_from_slice(&plain[..BATCH_HEADER_LEN]);
    let put = |b: &mut BytesMut| {
        b.extend_from_slice(records);
        Ok(())
    };
    match h.compression() {
        0 => {
            let mut plain = plain;
            storage::rewrite_crc(&mut plain);
            return Ok(plain);
        }
        1 => Gzip::compress(&mut out, put),
        2 => Snappy::compress(&mut out, put),
        3 => Lz4::compress(&mut out, put),
        4 => Zstd::compress(&mut out, put),
        codec => return Err(format!("compression codec {codec} is unknown")),
    }
    .map_err(|e| format!("the records cannot be compressed: {e:#}"))?;
    let mut out = out.to_vec();
    let length = (out.len() - storage::LOG_OVERHEAD) as i32;
    storage::put_i32(&mut out, LENGTH_POS, length);
    storage::rewrite_crc(&mut out);
    Ok(out)
}

/// Whether `theirs` is `ours` as a compaction pass may have left it: the same producer batch
/// (base offset, lastOffsetDelta, producer id, epoch and base sequence, attributes but the
/// delete-horizon bit, and a LogAppendTime batch's append time, all of which a pass keeps),
/// each of its records one of `ours` at the same offset with the same timestamp, key, value and
/// headers. A follower's copy of a batch its leader compacted since differs in CRC only so; a
/// batch the leader took in its place (another producer's, or the same producer's under another
/// sequence) does not.
pub fn compacted_from(theirs: &Bytes, ours: &Bytes) -> bool {
    let whole = |b: &Bytes| {
        let h = storage::check_batch(b).ok()?;
        let plain = plain_batch(b.slice(..h.total_size()), &h).ok()?;
        Some((h, plain))
    };
    let (Some((t, theirs)), Some((o, ours))) = (whole(theirs), whole(ours)) else {
        return false;
    };
    let fields = |h: &BatchHeader| {
        (
            h.base_offset,
            h.last_offset_delta,
            h.producer_id,
            h.producer_epoch,
            h.base_sequence,
            h.attributes & !storage::ATTR_DELETE_HORIZON,
            h.is_log_append_time().then_some(h.max_timestamp),
        )
    };
    if fields(&t) != fields(&o) {
        return false;
    }
    let (Ok(theirs), Ok(ours)) = (Records::parse(&theirs, &t), Records::parse(&ours, &o)) else {
        return false;
    };
    // Both in offset order: each of theirs is found by walking ours forward.
    let mut mine = (0..ours.len()).map(|i| ours.record(i));
    (0..theirs.len()).all(|i| {
        let r = theirs.record(i);
        mine.by_ref()
            .find(|m| m.offset_delta >= r.offset_delta)
            .is_some_and(|m| {
                (m.offset_delta, m.timestamp, m.key, m.value, &m.headers)
                    == (r.offset_delta, r.timestamp, r.key, r.value, &r.headers)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::*;

    /// Five records, the second with header "a" twice around a null "n".
    fn records() -> Vec<TestRec> {
        let mut recs: Vec<TestRec> = (0..5)
            .map(|i| kv(&format!("k{i}"), "value", 1_000 + i))
            .collect();
        recs[1].headers = vec![
            ("a".into(), Some(Bytes::from_static(b"1"))),
            ("n".into(), None),
            ("a".into(), Some(Bytes::from_static(b"2"))),
        ];
        recs
    }

    /// A header name given twice stays twice through uncompressing, rebuilding, keeping
    /// offsets and compressing again, in every codec; kept offsets and timestamps stay.
    #[test]
    fn repeated_headers_and_offsets_survive_every_rewrite() {
        let recs = records();
        for codec in ALL_CODECS {
            let raw = Bytes::from(broker_encoded_batch(&recs, codec));
            let h = storage::check_batch(&raw).unwrap();
            assert_eq!(read_spans(&raw)[1], (1, recs[1].clone()), "{codec:?}");
            let plain = plain_batch(raw.clone(), &h).unwrap();
            let spans = Records::parse(&plain, &h).unwrap();
            // Compaction's copy: records 1 and 3 keep offsets 1 and 3 in a batch based at 0.
            let kept = compressed(spans.keep_offsets(&h, &[1, 3], None)).unwrap();
            let kh = storage::check_batch(&kept).unwrap();
            assert_eq!(
                (kh.base_offset, kh.last_offset(), kh.record_count),
                (h.base_offset, h.last_offset(), 2)
            );
            assert_eq!(
                (kh.compression(), kh.max_timestamp),
                (h.compression(), 1_003)
            );
            let expected = vec![(1, recs[1].clone()), (3, recs[3].clone())];
            assert_eq!(read_spans(&kept), expected, "{codec:?}");
            // kafka-protocol's decoder reads it too (one "a" header, as it does).
            let decoded = decode_all(&kept);
            assert_eq!(decoded.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 3]);
            // With a delete horizon far from the records' times (deltas of 9 bytes and
            // negative ones): the header carries it, every record keeps its timestamp.
            for horizon in [i64::MAX / 2, -5] {
                let tagged = compressed(spans.keep_offsets(&h, &[1, 3], Some(horizon))).unwrap();
                let th = storage::check_batch(&tagged).unwrap();
                assert_eq!(th.delete_horizon(), Some(horizon), "{codec:?}");
                assert_eq!(
                    (th.compression(), th.max_timestamp, th.last_offset()),
                    (h.compression(), 1_003, h.last_offset())
                );
                assert_eq!(h.delete_horizon(), None);
                assert_eq!(read_spans(&tagged), expected, "{codec:?} at {horizon}");
                let decoded = decode_all(&tagged);
                assert_eq!(
                    decoded.iter().map(|r| (r.0, r.1.ts)).collect::<Vec<_>>(),
                    vec![(1, recs[1].ts), (3, recs[3].ts)]
                );
            }
            // A LogAppendTime batch keeps its type and its max timestamp, which readers give
            // every record of it.
            let mut appended = raw.to_vec();
            storage::set_log_append_time(&mut appended, 77_777);
            let ah = storage::check_batch(&appended).unwrap();
            let plain = plain_batch(Bytes::from(appended), &ah).unwrap();
            let spans_at = Records::parse(&plain, &ah).unwrap();
            let tagged = compressed(spans_at.keep_offsets(&ah, &[1, 3], Some(5))).unwrap();
            let th = storage::check_batch(&tagged).unwrap();
            assert!(th.is_log_append_time(), "{codec:?}");
            assert_eq!((th.max_timestamp, th.delete_horizon()), (77_777, Some(5)));
            assert_eq!(read_spans(&tagged), expected, "{codec:?}");
        }
    }

    /// `encode` of owned records gives what parsing reads back, in every codec, and for an
    /// uncompressed batch the very bytes kafka-protocol's encoder makes of records without a
    /// repeated header.
    #[test]
    fn encode_round_trips_and_matches_the_encoder() {
        let recs = records();
        for codec in ALL_CODECS {
            let raw = Bytes::from(broker_encoded_batch(&recs, codec));
            let h = storage::check_batch(&raw).unwrap();
            let plain = plain_batch(raw.clone(), &h).unwrap();
            let owned = Records::parse(&plain, &h).unwrap().owned(&plain);
            assert_eq!(owned.len(), recs.len());
            assert_eq!(owned[1].headers.len(), 3);
            let again = encode(&raw, &owned).unwrap();
            let gh = storage::check_batch(&again).unwrap();
            assert_eq!((gh.attributes, gh.record_count), (h.attributes, 5));
            let plain = plain_batch(Bytes::from(again), &gh).unwrap();
            assert_eq!(Records::parse(&plain, &gh).unwrap().owned(&plain), owned);
        }
        let plain: Vec<TestRec> = (0..7)
            .map(|i| kv(&format!("k{i}"), "v", 1_000 + (i * 37) % 11))
            .collect();
        let want = encode_batch(
            &plain,
            kafka_protocol::records::Compression::None,
            -1,
            -1,
            -1,
        );
        let h = storage::check_batch(&want).unwrap();
        let raw = Bytes::from(want.clone());
        let owned = Records::parse(&raw, &h).unwrap().owned(&raw);
        assert_eq!(encode(&header_without_producer(0), &owned).unwrap(), want);
    }

    /// A compaction pass's copy of a batch is known for one, with or without a delete horizon,
    /// in every codec; a batch with another record, another producer sequence or the records at
    /// other offsets is not, nor a cut or damaged one.
    #[test]
    fn compacted_copies_are_told_from_other_batches() {
        let recs = records();
        for codec in ALL_CODECS {
            let raw = Bytes::from(broker_encoded_batch(&recs, codec));
            let h = storage::check_batch(&raw).unwrap();
            let plain = plain_batch(raw.clone(), &h).unwrap();
            let spans = Records::parse(&plain, &h).unwrap();
            let copy = |kept: &[usize], horizon| {
                Bytes::from(compressed(spans.keep_offsets(&h, kept, horizon)).unwrap())
            };
            for horizon in [None, Some(i64::MAX / 2), Some(-5)] {
                for kept in [&[0, 1, 2, 3, 4][..], &[1, 3], &[4], &[0]] {
                    let c = copy(kept, horizon);
                    assert!(compacted_from(&c, &raw), "{codec:?} {kept:?} {horizon:?}");
                    assert!(!compacted_from(&raw, &c) || kept.len() == recs.len());
                }
            }
            assert!(compacted_from(&raw, &raw));
            // Another value at a kept offset.
            let mut other = recs.clone();
            other[3].value = Some(Bytes::from_static(b"another"));
            let other = Bytes::from(broker_encoded_batch(&other, codec));
            assert!(!compacted_from(&other, &raw), "{codec:?}");
            // The same records at other offsets (renumbered, as a plugin filter does).
            let owned = spans.owned(&plain);
            let moved = Bytes::from(encode(&raw, &[owned[1].clone(), owned[3].clone()]).unwrap());
            assert!(!compacted_from(&moved, &raw), "{codec:?}");
            // A LogAppendTime batch appended at another time (a retry a new leader stored).
            let at = |t| {
                let mut b = raw.to_vec();
                storage::set_log_append_time(&mut b, t);
                Bytes::from(b)
            };
            let (first, again) = (at(77_777), at(88_888));
            assert!(compacted_from(&first, &first));
            assert!(!compacted_from(&again, &first), "{codec:?}");
            // Cut short, or a byte changed (its CRC no longer holds).
            let c = copy(&[1, 3], None);
            assert!(!compacted_from(&c.slice(..c.len() - 1), &raw));
            let mut damaged = c.to_vec();
            *damaged.last_mut().unwrap() ^= 1;
            assert!(!compacted_from(&Bytes::from(damaged), &raw));
        }
        // The same records from another producer batch: another sequence, another producer.
        let batch = |pid, seq| {
            Bytes::from(encode_batch(
                &recs,
                kafka_protocol::records::Compression::None,
                pid,
                0,
                seq,
            ))
        };
        assert!(compacted_from(&batch(7, 0), &batch(7, 0)));
        assert!(!compacted_from(&batch(7, 5), &batch(7, 0)));
        assert!(!compacted_from(&batch(8, 0), &batch(7, 0)));
        assert!(!compacted_from(&batch(-1, -1), &batch(7, 0)));
    }

    /// Every truncation and every corrupted length is refused, never a panic.
    #[test]
    fn malformed_records_are_refused() {
        let raw = broker_encoded_batch(&records(), kafka_protocol::records::Compression::None);
        let h = storage::check_batch(&raw).unwrap();
        for cut in BATCH_HEADER_LEN..raw.len() {
            assert!(Records::parse(&raw[..cut], &h).is_err(), "cut at {cut}");
        }
        for at in BATCH_HEADER_LEN..raw.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = raw.clone();
                bad[at] = b;
                if let Ok(recs) = Records::parse(&bad, &h) {
                    // A change inside a key, value or header value can still parse.
                    let all: Vec<usize> = (0..recs.len()).collect();
                    (0..recs.len()).for_each(|i| drop(recs.record(i)));
                    recs.keep_offsets(&h, &all, None);
                    recs.keep_offsets(&h, &all, Some(i64::MIN));
                }
            }
        }
        let mut wrong_count = h;
        wrong_count.record_count = 4;
        assert!(Records::parse(&raw, &wrong_count).is_err());
    }
}
