//! The records inside a batch, walked to prove they are what the batch's header says, before the
//! batch is stored.
//!
//! A consumer decodes every record it fetches; a batch that cannot be decoded stops each
//! consumer of its partition at that offset for good. So, as Kafka's log validator does, every
//! produced batch is opened: a compressed one is decompressed as a stream (gzip, lz4 and zstd
//! never held whole; snappy a block at a time, which for librdkafka's raw snappy is the whole
//! batch), refused once it inflates past a bound, and each record's fields are read against its
//! length prefix. Nothing is kept; only the verdict.
//!
//! Record layout (magic v2), after the 61-byte batch header, `recordCount` times:
//!
//! ```text
//! length varint | attributes i8 | timestampDelta varlong | offsetDelta varint
//! keyLength varint (-1 = null) | key | valueLength varint (-1 = null) | value
//! headerCount varint | (headerKeyLength varint | key | headerValueLength varint | value)*
//! ```

use std::io::{self, BufRead, BufReader, Read};

use super::batch::{BATCH_HEADER_LEN, BatchHeader};
use super::error::BatchError;

/// How far the records of one batch may inflate, as a multiple of `max_message_bytes`.
pub const INFLATE_FACTOR: u64 = 16;

/// The largest zstd window (2^24 = 16 MiB) a batch may ask its decoder for: the memory one
/// decoder may take. Producers that know a batch's size (librdkafka) get windows no larger than
/// the batch; the Java client streams, and its levels 20-22 ask for 32-128 MiB: such a batch is
/// refused with INVALID_RECORD saying so.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// What the records of a batch must satisfy beyond their framing.
#[derive(Debug, Clone, Copy)]
pub struct RecordRules {
    /// Refuse a batch whose records inflate past this many bytes.
    pub inflate_limit: u64,
    /// Every record needs a key (compacted topics).
    pub keys_required: bool,
    /// Every record's own timestamp must lie in this range (CreateTime topics with
    /// `message.timestamp.before.max.ms` or `after.max.ms` set): `(earliest, latest)` in ms.
    pub timestamps: Option<(i64, i64)>,
}

/// Why the records of a batch were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsError {
    /// Damaged: undecodable compression, fields that do not fit their record, a count that is not
    /// `recordCount`, bytes after the last record.
    Corrupt(BatchError),
    /// Well formed but not storable here.
    Invalid(String),
    /// A record's timestamp is outside the topic's bounds (INVALID_TIMESTAMP).
    Timestamp(String),
}

/// [`check_records`] with the rules of a log with `config`, its refusal as the append's error
/// (`pos`: where the batch starts in the produce data).
pub(super) fn check_stored_records(
    batch: &[u8],
    h: &BatchHeader,
    config: &super::LogConfig,
    pos: usize,
    now_ms: i64,
) -> Result<(), super::StorageError> {
    let bounded =
        config.timestamp_before_max_ms.is_some() || config.timestamp_after_max_ms.is_some();
    let timestamps = (bounded && !config.log_append_time).then(|| {
        let before = config.timestamp_before_max_ms.unwrap_or(i64::MAX);
        let after = config.timestamp_after_max_ms.unwrap_or(i64::MAX);
        (now_ms.saturating_sub(before), now_ms.saturating_add(after))
    });
    let rules = RecordRules {
        inflate_limit: config.max_message_bytes.saturating_mul(INFLATE_FACTOR),
        keys_required: config.compact,
        timestamps,
    };
    check_records(batch, h, rules).map_err(|e| match e {
        RecordsError::Corrupt(source) => super::StorageError::CorruptRecord {
            position: pos,
            source,
        },
        RecordsError::Invalid(reason) => super::StorageError::InvalidRecord {
            reason: format!("batch at byte {pos}: {reason}"),
        },
        RecordsError::Timestamp(reason) => super::StorageError::InvalidTimestamp {
            reason: format!("batch at byte {pos}: {reason}"),
        },
    })
}

/// Walks every record of `batch` (a whole batch whose header `h` was checked, CRC included).
pub fn check_records(
    batch: &[u8],
    h: &BatchHeader,
    rules: RecordRules,
) -> Result<(), RecordsError> {
    let payload = &batch[BATCH_HEADER_LEN..];
    let limit = rules.inflate_limit;
    let corrupt = |reason: String| RecordsError::Corrupt(BatchError::BadRecords { reason });
    let walked = match h.compression() {
        0 => walk(&mut &payload[..], h, rules),
        1 => {
            let mut r =
                BufReader::new(Capped::new(flate2::bufread::GzDecoder::new(payload), limit));
            walk(&mut r, h, rules).and_then(|()| {
                // One gzip member: what follows it is read by some consumers and not others.
                let rest = r.into_inner().inner.into_inner();
                rest.is_empty()
                    .then_some(())
                    .ok_or_else(|| bad(format!("{} bytes follow the gzip stream", rest.len())))
            })
        }
        2 => walk(
            &mut BufReader::new(Capped::new(Snappy::new(payload, limit), limit)),
            h,
            rules,
        ),
        3 => {
            let decoder = lz4::Decoder::new(payload)
                .map_err(|e| corrupt(format!("the lz4 frame cannot be read: {e}")))?;
            let mut r = BufReader::new(Capped::new(decoder, limit));
            let walked = walk(&mut r, h, rules);
            // The decoder reads a cut frame as a clean end: the frame must be whole (also when
            // the records ran out early: then the cut is what is wrong; a walk that stopped at
            // a bad record has not read the frame to its end either, and keeps its reason),
            // and nothing may follow it.
            let (rest, ended) = r.into_inner().inner.finish();
            match (walked, ended) {
                (Ok(()), Err(_)) => Err(bad("the lz4 frame is cut short".into())),
                (Err(Walk::Bad(why)), Err(_)) if why == RECORDS_END_EARLY => {
                    Err(bad("the lz4 frame is cut short".into()))
                }
                (Ok(()), Ok(())) if !rest.is_empty() => {
                    Err(bad(format!("{} bytes follow the lz4 frame", rest.len())))
                }
                (walked, _) => walked,
            }
        }
        4 => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|e| corrupt(format!("the zstd decoder cannot start: {e}")))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(format!("the zstd decoder cannot start: {e}")))?;
            walk(&mut BufReader::new(Capped::new(decoder, limit)), h, rules).map_err(|e| match e {
                Walk::Io(e) if e.to_string().contains("too much memory") => Walk::Window,
                other => other,
            })
        }
        codec => {
            return Err(corrupt(format!(
                "compression codec {codec} is unknown (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)"
            )));
        }
    };
    walked.map_err(|e| match e {
        Walk::Inflated => RecordsError::Invalid(format!(
            "the records inflate past {limit} bytes ({INFLATE_FACTOR} x max.message.bytes)"
        )),
        Walk::Bad(reason) => corrupt(reason),
        Walk::NoKey => {
            RecordsError::Invalid("compacted topics require a key on every record".into())
        }
        Walk::Timestamp { index, ts } => {
            let (earliest, latest) = rules.timestamps.unwrap_or((i64::MIN, i64::MAX));
            let (side, key) = if ts < earliest {
                ("before", "message.timestamp.before.max.ms")
            } else {
                ("after", "message.timestamp.after.max.ms")
            };
            RecordsError::Timestamp(format!(
                "record {index} has timestamp {ts}, outside [{earliest}, {latest}]: too far {side} \
                 the broker's clock for the topic's {key}"
            ))
        }
        Walk::Window => RecordsError::Invalid(format!(
            "the zstd frame asks for a window over {} MiB (compression levels above 19 \
             streamed); this broker decodes up to that",
            1u32 << (ZSTD_WINDOW_LOG_MAX - 20)
        )),
        Walk::Io(e) => corrupt(format!("the records cannot be decompressed: {e}")),
    })
}

enum Walk {
    Inflated,
    NoKey,
    /// Record `index`'s timestamp `ts` is outside `RecordRules::timestamps`.
    Timestamp {
        index: i32,
        ts: i64,
    },
    Window,
    Bad(String),
    Io(io::Error),
}

impl From<io::Error> for Walk {
    fn from(e: io::Error) -> Walk {
        if e.get_ref().is_some_and(|inner| inner.is::<InflateLimit>()) {
            Walk::Inflated
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            Walk::Bad(RECORDS_END_EARLY.into())
        } else {
            Walk::Io(e)
        }
    }
}

fn bad(reason: String) -> Walk {
    Walk::Bad(reason)
}

fn walk<R: BufRead>(r: &mut R, h: &BatchHeader, rules: RecordRules) -> Result<(), Walk> {
    let mut prev_delta: i64 = -1;
    for i in 0..h.record_count {
        let len = read_varint(r, 5).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => bad(format!("record {i} has a length of over 5 bytes")),
            _ => Walk::from(e),
        })?;
        if !(0..=i64::from(i32::MAX)).contains(&len) {
            return Err(bad(format!("record {i} has length {len}")));
        }
        let mut rec = Record {
            r: &mut *r,
            left: len as u64,
            index: i,
        };
        rec.take(1)?; // attributes
        let timestamp_delta = rec.varlong()?;
        if let Some((earliest, latest)) = rules.timestamps {
            let ts = h.first_timestamp.saturating_add(timestamp_delta);
            // A record without a timestamp (-1, as Kafka's NO_TIMESTAMP) is not checked.
            if ts != -1 && (ts < earliest || ts > latest) {
                return Err(Walk::Timestamp { index: i, ts });
            }
        }
        let delta = rec.varint()?;
        if delta <= prev_delta || delta > h.last_offset_delta as i64 {
            return Err(bad(format!(
                "record {i} has offsetDelta {delta}, after {prev_delta} (lastOffsetDelta {})",
                h.last_offset_delta
            )));
        }
        prev_delta = delta;
        let key = rec.bytes("key", true)?;
        if key.is_none() && rules.keys_required {
            return Err(Walk::NoKey);
        }
        rec.bytes("value", true)?;
        let headers = rec.varint()?;
        if headers < 0 {
            return Err(bad(format!("record {i} has {headers} headers")));
        }
        for _ in 0..headers {
            rec.utf8("header key")?;
            rec.bytes("header value", true)?;
        }
        if rec.left != 0 {
            return Err(bad(format!(
                "record {i} has {} bytes after its last field",
                rec.left
            )));
        }
    }
    if !r.fill_buf()?.is_empty() {
        return Err(bad(format!(
            "bytes follow the batch's {} records",
            h.record_count
        )));
    }
    Ok(())
}

/// One record's bytes: every read is bounded by what its length prefix left.
struct Record<'a, R> {
    r: &'a mut R,
    left: u64,
    index: i32,
}

impl<R: BufRead> Record<'_, R> {
    fn overrun(&self) -> Walk {
        bad(format!(
            "record {} has fields past its length prefix",
            self.index
        ))
    }

    /// A varlong (at most 10 bytes): the timestamp delta.
    fn varlong(&mut self) -> Result<i64, Walk> {
        self.zigzag(10)
    }

    /// A varint (at most 5 bytes, an i32), as Kafka's clients read every other field: one
    /// written longer, or out of range, is refused here rather than stored for a consumer (or
    /// the broker's own cleaner) to fail on.
    fn varint(&mut self) -> Result<i64, Walk> {
        let v = self.zigzag(5)?;
        if i32::try_from(v).is_err() {
            return Err(bad(format!(
                "record {} has a varint {v} out of range",
                self.index
            )));
        }
        Ok(v)
    }

    fn zigzag(&mut self, max: usize) -> Result<i64, Walk> {
        let mut limited = (&mut *self.r).take(self.left);
        let read = read_varint(&mut limited, max);
        self.left = limited.limit();
        read.map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                return bad(format!(
                    "record {} has a varint of over {max} bytes",
                    self.index
                ));
            }
            match Walk::from(e) {
                Walk::Bad(_) => self.overrun(),
                other => other,
            }
        })
    }

    /// Skips `n` bytes of this record.
    fn take(&mut self, n: u64) -> Result<(), Walk> {
        if n > self.left {
            return Err(self.overrun());
        }
        let skipped = io::copy(&mut (&mut *self.r).take(n), &mut io::sink())?;
        if skipped != n {
            return Err(Walk::from(io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
        self.left -= n;
        Ok(())
    }

    /// A length-prefixed field that must be UTF-8 (a header key: Kafka's own clients read it as
    /// a string, and so does the broker where it decodes records).
    fn utf8(&mut self, what: &str) -> Result<(), Walk> {
        let len = self.varint()?;
        if len < 0 {
            return Err(bad(format!(
                "record {} has a {what} of length {len}",
                self.index
            )));
        }
        if len as u64 > self.left {
            return Err(self.overrun());
        }
        let mut text = Vec::with_capacity(len as usize);
        (&mut *self.r).take(len as u64).read_to_end(&mut text)?;
        if text.len() as u64 != len as u64 {
            return Err(Walk::from(io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
        self.left -= len as u64;
        if std::str::from_utf8(&text).is_err() {
            return Err(bad(format!(
                "record {} has a {what} that is not UTF-8",
                self.index
            )));
        }
        Ok(())
    }

    /// A length-prefixed field; `Some(len)`, or `None` for a null one where null is allowed.
    fn bytes(&mut self, what: &str, nullable: bool) -> Result<Option<u64>, Walk> {
        let len = self.varint()?;
        if len == -1 && nullable {
            return Ok(None);
        }
        if len < 0 {
            return Err(bad(format!(
                "record {} has a {what} of length {len}",
                self.index
            )));
        }
        self.take(len as u64)?;
        Ok(Some(len as u64))
    }
}

/// A zigzag varint of at most `max` bytes (10 for a varlong, 5 for a varint); a longer one is
/// an `InvalidData` error.
fn read_varint(r: &mut impl BufRead, max: usize) -> io::Result<i64> {
    let mut raw = 0u64;
    for i in 0..max {
        let byte = match r.fill_buf()?.first() {
            Some(&b) => b,
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
        };
        r.consume(1);
        raw |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a varint longer than {max} bytes"),
    ))
}

/// The marker inside the error a [`Capped`] reader returns past its limit.
#[derive(Debug)]
struct InflateLimit;

impl std::fmt::Display for InflateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the inflate limit is reached")
    }
}

impl std::error::Error for InflateLimit {}

/// Why a batch whose records ran out before its recordCount is refused.
const RECORDS_END_EARLY: &str = "the records end before the batch's recordCount is reached";

/// An error of a decompressor: its input is not valid compressed data.
#[derive(Debug)]
struct Undecodable(io::Error);

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Undecodable {}

/// A decompressing reader that fails once it has given more than `limit` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R> Capped<R> {
    fn new(inner: R, limit: u64) -> Capped<R> {
        Capped { inner, left: limit }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the limit shows whether there is more.
        let want = buf.len().min(self.left.saturating_add(1) as usize);
        // The decompressor's own errors (corrupt compressed data) are told apart from the
        // records' (an `Other` error: not taken for a cut record or a bad varint).
        let n = self.inner.read(&mut buf[..want]).map_err(|e| {
            match e.get_ref().is_some_and(|inner| inner.is::<InflateLimit>()) {
                true => e,
                false => io::Error::other(Undecodable(e)),
            }
        })?;
        if n as u64 > self.left {
            return Err(io::Error::other(InflateLimit));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Kafka's two snappy layouts: the Java client's (snappy-java's stream: an 8-byte magic, two
/// 4-byte version fields, then blocks each prefixed with its big-endian length) and librdkafka's
/// (one raw snappy block). Each block declares its decompressed length, which is checked
/// against the limit before anything is allocated.
struct Snappy<'a> {
    rest: &'a [u8],
    framed: bool,
    block: Vec<u8>,
    pos: usize,
    budget: u64,
}

const SNAPPY_JAVA_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

impl<'a> Snappy<'a> {
    fn new(payload: &'a [u8], budget: u64) -> Snappy<'a> {
        let framed = payload.len() >= 16 && payload.starts_with(SNAPPY_JAVA_MAGIC);
        Snappy {
            rest: if framed { &payload[16..] } else { payload },
            framed,
            block: Vec::new(),
            pos: 0,
            budget,
        }
    }

    fn next_block(&mut self) -> io::Result<bool> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        let chunk = if self.framed {
            let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
                return Err(invalid("a snappy block length is cut short"));
            };
            let len = u32::from_be_bytes(*len) as usize;
            if len > rest.len() {
                return Err(invalid("a snappy block is cut short"));
            }
            let (chunk, rest) = rest.split_at(len);
            self.rest = rest;
            chunk
        } else {
            std::mem::take(&mut self.rest)
        };
        let n = snap::raw::decompress_len(chunk).map_err(io::Error::other)?;
        // Snappy expands at most about 21:1 (a 3-byte copy of 64 bytes): a block that claims
        // more is damaged, and is refused before its buffer is allocated.
        if n > chunk.len().saturating_mul(22).saturating_add(64) {
            return Err(invalid("a snappy block claims more than its data can hold"));
        }
        if n as u64 > self.budget {
            return Err(io::Error::other(InflateLimit));
        }
        self.budget -= n as u64;
        self.block.resize(n, 0);
        snap::raw::Decoder::new()
            .decompress(chunk, &mut self.block)
            .map_err(io::Error::other)?;
        self.pos = 0;
        Ok(true)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Read for Snappy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{check_batch, rewrite_crc};
    use crate::storage::testutil::{ALL_CODECS, encode_batch, kv};
    use kafka_protocol::records::Compression;

    const RULES: RecordRules = RecordRules {
        inflate_limit: 1 << 20,
        keys_required: false,
        timestamps: None,
    };

    fn check(batch: &[u8], rules: RecordRules) -> Result<(), RecordsError> {
        let h = check_batch(batch).expect("a whole batch");
        check_records(batch, &h, rules)
    }

    /// The batch with its records replaced by `payload` (CRC and length fixed up).
    fn with_payload(batch: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut b = batch[..BATCH_HEADER_LEN].to_vec();
        b.extend_from_slice(payload);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        rewrite_crc(&mut b);
        b
    }

    fn is_corrupt(r: Result<(), RecordsError>) -> bool {
        matches!(r, Err(RecordsError::Corrupt(_)))
    }

    #[test]
    fn every_codec_of_the_encoder_passes() {
        let records: Vec<_> = (0..50)
            .map(|i| kv(&format!("k{i}"), &"v".repeat(i * 10), i as i64))
            .collect();
        for codec in ALL_CODECS {
            let b = encode_batch(&records, codec, -1, -1, -1);
            assert_eq!(check(&b, RULES), Ok(()), "{codec:?}");
        }
    }

    #[test]
    fn librdkafka_raw_snappy_passes() {
        let plain = encode_batch(
            &[kv("k", "value", 1), kv("k2", "v2", 2)],
            Compression::None,
            -1,
            -1,
            -1,
        );
        let raw = snap::raw::Encoder::new()
            .compress_vec(&plain[BATCH_HEADER_LEN..])
            .unwrap();
        let mut b = with_payload(&plain, &raw);
        b[22] |= 2; // attributes: snappy
        rewrite_crc(&mut b);
        assert_eq!(check(&b, RULES), Ok(()));
    }

    /// Compressed data cut short is refused as such, not as a record that lies about itself.
    #[test]
    fn a_cut_compressed_stream_is_said_to_be_undecodable() {
        let recs: Vec<_> = (0..20)
            .map(|i| kv(&format!("k{i}"), &"v".repeat(50), i))
            .collect();
        for codec in ALL_CODECS.into_iter().filter(|c| *c != Compression::None) {
            let b = encode_batch(&recs, codec, -1, -1, -1);
            let payload = &b[BATCH_HEADER_LEN..];
            let cut = with_payload(&b, &payload[..payload.len() / 2]);
            let said = format!("{:?}", check(&cut, RULES));
            assert!(
                said.contains("the records cannot be decompressed")
                    || said.contains("the lz4 frame is cut short"),
                "{codec:?}: {said}"
            );
        }
    }

    #[test]
    fn garbage_and_unknown_codecs_are_corrupt() {
        let plain = encode_batch(&[kv("k", "v", 1)], Compression::None, -1, -1, -1);
        for codec in 1..=7u8 {
            let mut b = with_payload(&plain, b"this is not compressed at all, not in any codec");
            b[22] = (b[22] & !7) | codec;
            rewrite_crc(&mut b);
            let checked = check(&b, RULES);
            // What is wrong is the compressed data, not a record in it.
            if (1..=4).contains(&codec) {
                let said = format!("{:?}", checked);
                assert!(!said.contains("record 0"), "codec {codec}: {said}");
            }
            assert!(is_corrupt(checked), "codec {codec}");
        }
    }

    /// A whole lz4 frame holding a bad record is refused for that record, not as cut short
    /// (the walk stopped before the frame's end).
    #[test]
    fn a_bad_record_in_a_whole_lz4_frame_keeps_its_reason() {
        let plain = encode_batch(&[kv("k", "v", 1)], Compression::None, -1, -1, -1);
        // key length -5 (zigzag 9)
        let bad_key = [16u8, 0, 0, 0, 9, b'k', 2, b'v', 0];
        let mut b = with_payload(&plain, &bad_key);
        b[22] |= 3; // attributes: lz4
        let b = crate::storage::record_spans::compressed(b).unwrap();
        let said = format!("{:?}", check(&b, RULES));
        assert!(said.contains("record 0"), "{said}");
    }

    #[test]
    fn a_record_that_lies_about_its_fields_is_corrupt() {
        let plain = encode_batch(&[kv("k", "v", 1)], Compression::None, -1, -1, -1);
        // length 8: attributes 0, ts 0, offsetDelta 0, key length -5 (zigzag 9), ...
        let bad_key = [16u8, 0, 0, 0, 9, b'k', 2, b'v', 0];
        assert!(is_corrupt(check(&with_payload(&plain, &bad_key), RULES)));
        // a value length -5 where the prefixes still tile the batch
        let bad_value = [22u8, 0, 0, 0, 2, b'k', 9, b'v', b'v', b'v', b'v', 0];
        assert!(is_corrupt(check(&with_payload(&plain, &bad_value), RULES)));
        // a field running past its record's length
        let overrun = [8u8, 0, 0, 0, 2, b'k', 20, 0, 0];
        assert!(is_corrupt(check(&with_payload(&plain, &overrun), RULES)));
        // bytes left inside the record after its headers
        let slack = [20u8, 0, 0, 0, 2, b'k', 2, b'v', 0, 0, 0];
        assert!(is_corrupt(check(&with_payload(&plain, &slack), RULES)));
        // the record itself is fine
        let good = [16u8, 0, 0, 0, 2, b'k', 2, b'v', 0];
        assert_eq!(check(&with_payload(&plain, &good[..]), RULES), Ok(()));
        // A varint padded to 5 bytes is still one (Kafka's clients read it); to 6 it is not, nor
        // is a 5-byte one past i32 (a key length of 2^31): such a record would stop every reader
        // of the partition, the broker's cleaner too.
        let five = [
            24u8, 0, 0, 0, 0x82, 0x80, 0x80, 0x80, 0x00, b'k', 2, b'v', 0,
        ];
        assert_eq!(check(&with_payload(&plain, &five), RULES), Ok(()));
        let six = [
            26u8, 0, 0, 0, 0x82, 0x80, 0x80, 0x80, 0x80, 0x00, b'k', 2, b'v', 0,
        ];
        assert!(is_corrupt(check(&with_payload(&plain, &six), RULES)));
        let wide = [
            24u8, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10, b'k', 2, b'v', 0,
        ];
        assert!(is_corrupt(check(&with_payload(&plain, &wide), RULES)));
        // A timestamp delta is a varlong: 6 bytes are fine.
        let ts = [
            26u8, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0, 2, b'k', 2, b'v', 0,
        ];
        assert_eq!(check(&with_payload(&plain, &ts), RULES), Ok(()));
    }

    #[test]
    fn a_compressed_batch_must_hold_its_record_count() {
        let two = encode_batch(
            &[kv("a", "1", 1), kv("b", "2", 2)],
            Compression::Gzip,
            -1,
            -1,
            -1,
        );
        let mut b = two.clone();
        // recordCount 3 and lastOffsetDelta 2 over two records
        b[57..61].copy_from_slice(&3i32.to_be_bytes());
        b[23..27].copy_from_slice(&2i32.to_be_bytes());
        rewrite_crc(&mut b);
        assert!(is_corrupt(check(&b, RULES)));
        // recordCount 1 over two records: bytes follow the last one
        let mut b = two;
        b[57..61].copy_from_slice(&1i32.to_be_bytes());
        b[23..27].copy_from_slice(&0i32.to_be_bytes());
        rewrite_crc(&mut b);
        assert!(is_corrupt(check(&b, RULES)));
    }

    #[test]
    fn a_batch_inflating_past_the_limit_is_refused_in_every_codec() {
        let big = "x".repeat(2 << 20);
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encode_batch(&[kv("k", &big, 1)], codec, -1, -1, -1);
            match check(&b, RULES) {
                Err(RecordsError::Invalid(reason)) => {
                    assert!(reason.contains("inflate past 1048576"), "{reason}")
                }
                other => panic!("{codec:?}: {other:?}"),
            }
            let roomy = RecordRules {
                inflate_limit: 4 << 20,
                ..RULES
            };
            assert_eq!(check(&b, roomy), Ok(()), "{codec:?}");
        }
    }

    #[test]
    fn a_cut_or_padded_stream_is_corrupt() {
        let recs = [kv("a", "1", 1), kv("b", "2", 2)];
        for (codec, name) in [(Compression::Lz4, "lz4"), (Compression::Gzip, "gzip")] {
            let b = encode_batch(&recs, codec, -1, -1, -1);
            let payload = &b[BATCH_HEADER_LEN..];
            let cut = with_payload(&b, &payload[..payload.len() - 4]);
            let checked = check(&cut, RULES);
            let said = format!("{:?}", checked);
            assert!(!said.contains("record 0"), "{name} cut: {said}");
            assert!(is_corrupt(checked), "{name} cut");
            let mut padded = payload.to_vec();
            padded.extend_from_slice(b"tail");
            assert!(
                is_corrupt(check(&with_payload(&b, &padded), RULES)),
                "{name} padded"
            );
        }
        // A raw snappy block that claims far more than its bytes could hold.
        let plain = encode_batch(&recs, Compression::None, -1, -1, -1);
        let mut b = with_payload(&plain, &[0x80, 0x80, 0x80, 0x01, 0, 0]);
        b[22] |= 2;
        rewrite_crc(&mut b);
        assert!(is_corrupt(check(&b, RULES)));
    }

    #[test]
    fn a_header_key_must_be_utf8() {
        // attributes, ts, delta, key "k", value "v", one header: key 0xff, value null
        let body = [0u8, 0, 0, 2, b'k', 2, b'v', 2, 2, 0xff, 1];
        let mut payload = vec![(body.len() as u8) << 1];
        payload.extend_from_slice(&body);
        let plain = encode_batch(&[kv("k", "v", 1)], Compression::None, -1, -1, -1);
        assert!(is_corrupt(check(&with_payload(&plain, &payload), RULES)));
        let mut fine = payload.clone();
        fine[10] = b'h';
        assert_eq!(check(&with_payload(&plain, &fine), RULES), Ok(()));
    }

    #[test]
    fn compacted_topics_need_keys_inside_compressed_batches_too() {
        let rules = RecordRules {
            keys_required: true,
            ..RULES
        };
        let mut no_key = kv("k", "v", 1);
        no_key.key = None;
        for codec in [Compression::None, Compression::Lz4] {
            let b = encode_batch(&[kv("a", "1", 1), no_key.clone()], codec, -1, -1, -1);
            assert!(matches!(check(&b, rules), Err(RecordsError::Invalid(_))));
            assert_eq!(check(&b, RULES), Ok(()));
        }
    }

    /// With bounds, every record's own timestamp (the batch's first timestamp plus its delta,
    /// which may be negative) must lie within them, compressed or not.
    #[test]
    fn record_timestamps_are_held_to_the_bounds() {
        let recs = [kv("a", "1", 1_000), kv("b", "2", 900), kv("c", "3", 1_100)];
        let bounded = |earliest, latest| RecordRules {
            timestamps: Some((earliest, latest)),
            ..RULES
        };
        for codec in ALL_CODECS {
            let b = encode_batch(&recs, codec, -1, -1, -1);
            assert_eq!(check(&b, bounded(900, 1_100)), Ok(()), "{codec:?}");
            assert_eq!(check(&b, RULES), Ok(()), "{codec:?} unbounded");
            let early = check(&b, bounded(901, 1_100));
            assert!(
                matches!(&early, Err(RecordsError::Timestamp(m)) if m.contains("record 1 has timestamp 900") && m.contains("before.max.ms")),
                "{codec:?}: {early:?}"
            );
            // A record without a timestamp (-1) is not checked, as in Kafka.
            let untimed = encode_batch(&[kv("d", "4", -1)], codec, -1, -1, -1);
            assert_eq!(check(&untimed, bounded(900, 1_100)), Ok(()), "{codec:?}");
            let late = check(&b, bounded(900, 1_099));
            assert!(
                matches!(&late, Err(RecordsError::Timestamp(m)) if m.contains("record 2 has timestamp 1100") && m.contains("after.max.ms")),
                "{codec:?}: {late:?}"
            );
        }
    }
}
