//! Filters over an uncompressed batch, in place: the fast path of [`super::run_chain`] for
//! chains of filters only.
//!
//! The general path decodes a batch into `kafka_protocol` [`Record`](kafka_protocol::records::Record)
//! values (a `Bytes` handle per key and value, a header map per record), frames them, and
//! re-encodes the kept ones. For an uncompressed batch and a chain of filters none of that is
//! needed: [`Records::parse`] finds each record's fields in the batch bytes, [`Records::frame`]
//! writes the plugin frame straight from them, and [`Records::rebuild`] copies the kept records
//! into a new batch, rewriting only what changes in each (its length, timestamp delta and
//! offset delta; key, value and headers are copied as they are).
//!
//! The rebuilt batch is byte for byte what `RecordBatchEncoder` makes of the kept records (the
//! tests check it): first timestamp = the smallest kept timestamp, max timestamp = the largest,
//! offset deltas 0.., the producer's header fields (base offset, leader epoch, attributes,
//! producer id and epoch, base sequence). The one difference: a record with two headers of the
//! same key keeps both (the decoder's header map keeps one).

use std::ops::Range;

use crate::storage::{self, BATCH_HEADER_LEN, BatchHeader, LENGTH_POS};

/// A malformed record in a batch whose header and CRC were fine.
pub type Malformed = String;

/// One record of a batch, located in the batch bytes.
#[derive(Debug, Clone)]
struct Span {
    offset_delta: i32,
    timestamp: i64,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    header_count: u32,
    /// Where the headers start (after their count).
    headers: usize,
    /// From the key's length to the end of the record: what a rebuilt record copies.
    tail: Range<usize>,
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

/// The records of one uncompressed v2 batch.
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
fn header(
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
    /// Finds the records of `batch` (a whole, CRC-checked, uncompressed batch with header `h`):
    /// they must tile the batch exactly and be as many as the header says.
    pub fn parse(batch: &'a [u8], h: &BatchHeader) -> Result<Records<'a>, Malformed> {
        let count = usize::try_from(h.record_count)
            .map_err(|_| format!("record count {}", h.record_count))?;
        let mut spans = Vec::with_capacity(count.min(batch.len() / 7));
        let mut pos = BATCH_HEADER_LEN;
        while pos < batch.len() {
            let len = varint(batch, &mut pos)?;
            let end = pos + usize::try_from(len).map_err(|_| format!("record length {len}"))?;
            if end > batch.len() {
                return Err("record runs past the batch".into());
            }
            pos += 1; // attributes (unused)
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

    /// The batch frame of `sdk/wit/plugin.wit` for the records `which` (indexes, in order):
    /// the same bytes as [`super::frame_records`] writes for them.
    pub fn frame(&self, topic: &str, partition: i32, which: &[usize]) -> Vec<u8> {
        fn nullable(out: &mut Vec<u8>, batch: &[u8], field: &Option<Range<usize>>) {
            match field {
                None => out.extend_from_slice(&(-1i32).to_le_bytes()),
                Some(r) => {
                    out.extend_from_slice(&(r.len() as i32).to_le_bytes());
                    out.extend_from_slice(&batch[r.clone()]);
                }
            }
        }
        let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
        let payload: usize = which
            .iter()
            .map(|&i| 24 + 2 * self.spans[i].tail.len())
            .sum();
        let mut out = Vec::with_capacity(11 + topic.len() + payload);
        out.push(1);
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&(which.len() as u32).to_le_bytes());
        for &i in which {
            let s = &self.spans[i];
            out.extend_from_slice(&s.timestamp.to_le_bytes());
            nullable(&mut out, self.batch, &s.key);
            nullable(&mut out, self.batch, &s.value);
            out.extend_from_slice(&s.header_count.to_le_bytes());
            let mut pos = s.headers;
            for _ in 0..s.header_count {
                // Checked by `parse`.
                let Ok((key, value)) = header(self.batch, &mut pos, s.tail.end) else {
                    break;
                };
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(&self.batch[key]);
                nullable(&mut out, self.batch, &value);
            }
        }
        out
    }

    /// A new batch holding the records `kept` (indexes, in order, at least one) renumbered
    /// from offset delta 0, with the producer's header fields; lastOffsetDelta = kept - 1 and
    /// the CRC computed (the caller patches lastOffsetDelta for an idempotent producer).
    pub fn rebuild(&self, kept: &[usize]) -> Vec<u8> {
        let spans = || kept.iter().map(|&i| &self.spans[i]);
        let first = spans().map(|s| s.timestamp).min().unwrap_or_default();
        let max = spans().map(|s| s.timestamp).max().unwrap_or_default();
        let mut out = Vec::with_capacity(self.batch.len());
        out.extend_from_slice(&self.batch[..BATCH_HEADER_LEN]);
        let mut prefix = Vec::with_capacity(16);
        for (delta, s) in spans().enumerate() {
            prefix.clear();
            prefix.push(0); // record attributes
            put_varlong(&mut prefix, s.timestamp.wrapping_sub(first));
            put_varlong(&mut prefix, delta as i64);
            put_varlong(&mut out, (prefix.len() + s.tail.len()) as i64);
            out.extend_from_slice(&prefix);
            out.extend_from_slice(&self.batch[s.tail.clone()]);
        }
        let length = (out.len() - storage::LOG_OVERHEAD) as i32;
        storage::put_i32(&mut out, LENGTH_POS, length);
        storage::put_i32(
            &mut out,
            storage::LAST_OFFSET_DELTA_POS,
            kept.len() as i32 - 1,
        );
        storage::put_i64(&mut out, storage::FIRST_TIMESTAMP_POS, first);
        storage::put_i64(&mut out, storage::MAX_TIMESTAMP_POS, max);
        storage::put_i32(&mut out, storage::RECORD_COUNT_POS, kept.len() as i32);
        storage::rewrite_crc(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn record(i: i64) -> Record {
        let mut r = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 7,
            producer_id: 42,
            producer_epoch: 3,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: 100 + i as i32,
            // Out of order on purpose: the first record is not the earliest.
            timestamp: 1_700_000_000_000 + (i * 7919) % 1000 - 500,
            key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
            value: (i % 5 != 4).then(|| Bytes::from("x".repeat(i as usize * 13 % 300))),
            headers: Default::default(),
        };
        if i % 3 == 0 {
            r.headers.insert(
                StrBytes::from_static_str("h"),
                Some(Bytes::from(format!("v{i}"))),
            );
            r.headers.insert(StrBytes::from_static_str("n"), None);
        }
        r
    }

    fn batch(n: i64) -> Vec<u8> {
        let records: Vec<Record> = (0..n).map(record).collect();
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
        buf.to_vec()
    }

    /// Framing in place gives the same frame as framing decoded records, and rebuilding the
    /// kept ones gives the same batch as re-encoding them.
    #[test]
    fn frame_and_rebuild_match_the_decoder_and_encoder() {
        for n in [1, 2, 9, 200] {
            let raw = batch(n);
            let h = storage::check_batch(&raw).unwrap();
            let recs = Records::parse(&raw, &h).unwrap();
            let decoded = RecordBatchDecoder::decode(&mut Bytes::from(raw.clone()))
                .unwrap()
                .records;
            assert_eq!(recs.len(), decoded.len());
            for pick in [1usize, 2, 3, 7] {
                let which: Vec<usize> = (0..n as usize).filter(|i| i % pick == 0).collect();
                let chosen: Vec<Record> = which.iter().map(|&i| decoded[i].clone()).collect();
                assert_eq!(
                    recs.frame("topic", 3, &which),
                    crate::plugins::frame_records("topic", 3, &chosen)
                );
                let rebuilt = recs.rebuild(&which);
                let reencoded = super::super::reencode(&h, chosen, Compression::None).unwrap();
                assert_eq!(rebuilt, reencoded, "n {n} every {pick}");
                storage::check_batch(&rebuilt).unwrap();
            }
        }
    }

    /// Every truncation and every corrupted length is refused, never a panic.
    #[test]
    fn malformed_records_are_refused() {
        let raw = batch(5);
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
                    recs.frame("t", 0, &all);
                    recs.rebuild(&all);
                }
            }
        }
        let mut wrong_count = h;
        wrong_count.record_count = 4;
        assert!(Records::parse(&raw, &wrong_count).is_err());
    }
}
