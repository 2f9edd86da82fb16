//! Kafka's record batches (magic 2), written for produce requests and datagrams and read from
//! fetch answers.
//!
//! Written here rather than with kafka-protocol's `Record`, which keeps headers in a map: Kafka
//! lets a record carry a header name more than once, in order (KIP-82), and a device must
//! neither lose the repeats it sends nor those another client wrote to a topic it subscribes
//! to. The codecs are kafka-protocol's.
//!
//! A batch is its 61-byte header (base offset, length, leader epoch, magic, CRC-32C of the rest,
//! attributes, last offset delta, first and largest timestamps, producer id, epoch and base
//! sequence, record count) and its records, compressed together when the attributes say so.
//! A record is its length, attributes, timestamp and offset deltas, key, value and headers,
//! each length and delta a zigzag varint.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

/// Bytes of a batch before its records.
const HEADER_BYTES: usize = 61;
/// Where the part of the header the CRC covers starts (the attributes).
const CRC_FROM: usize = 21;

const CODEC_MASK: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const CONTROL: i16 = 0x20;

/// A record to write.
pub(crate) struct Out<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [(StrBytes, Option<Bytes>)],
    pub timestamp: i64,
}

/// Who writes a batch: an idempotent producer's id, epoch and the first record's sequence, or
/// [`Writer::NONE`].
#[derive(Clone, Copy)]
pub(crate) struct Writer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Writer {
    /// No producer id: a write that is not idempotent.
    pub const NONE: Writer = Writer {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// One batch of `records` (at least one), offsets from 0, with CreateTime timestamps.
pub(crate) fn encode<'a>(
    records: impl IntoIterator<Item = Out<'a>>,
    writer: Writer,
    compression: Compression,
) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    let mut one = BytesMut::new();
    let mut count: i32 = 0;
    let mut first_ts = None;
    let mut max_ts = i64::MIN;
    for r in records {
        let base_ts = *first_ts.get_or_insert(r.timestamp);
        max_ts = max_ts.max(r.timestamp);
        one.clear();
        one.put_i8(0);
        put_varint(&mut one, r.timestamp.wrapping_sub(base_ts));
        put_varint(&mut one, i64::from(count));
        put_bytes(&mut one, r.key);
        put_bytes(&mut one, Some(r.value));
        put_varint(&mut one, r.headers.len() as i64);
        for (name, value) in r.headers {
            put_bytes(&mut one, Some(name.as_bytes()));
            put_bytes(&mut one, value.as_deref());
        }
        put_varint(&mut body, one.len() as i64);
        body.put_slice(&one);
        count += 1;
    }
    let Some(base_ts) = first_ts else {
        return Err("a record batch needs a record".into());
    };
    let records = match compression {
        Compression::None => body,
        codec => compress(codec, &body)?,
    };
    let mut out = BytesMut::with_capacity(HEADER_BYTES + records.len());
    out.put_i64(0);
    out.put_i32((HEADER_BYTES - 12 + records.len()) as i32);
    out.put_i32(-1);
    out.put_i8(2);
    out.put_u32(0);
    out.put_i16(codec_bits(compression));
    out.put_i32(count - 1);
    out.put_i64(base_ts);
    out.put_i64(max_ts);
    out.put_i64(writer.producer_id);
    out.put_i16(writer.producer_epoch);
    out.put_i32(writer.base_sequence);
    out.put_i32(count);
    out.put_slice(&records);
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[CRC_FROM - 4..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// A record read from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct In {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// In order, a name as often as the producer gave it.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// The records of one whole batch, none for a control batch (a transaction marker). Refuses a
/// batch whose CRC or layout is wrong.
pub(crate) fn decode(mut batch: Bytes) -> Result<Vec<In>, String> {
    if batch.len() < HEADER_BYTES {
        return Err(format!("a record batch of {} bytes", batch.len()));
    }
    let magic = batch[16];
    if magic != 2 {
        return Err(format!("record batch magic {magic} (2 expected)"));
    }
    let stored = u32::from_be_bytes(batch[17..21].try_into().expect("4 bytes"));
    if crc32c::crc32c(&batch[CRC_FROM..]) != stored {
        return Err("record batch CRC mismatch".into());
    }
    let base_offset = batch.get_i64();
    batch.advance(4 + 4 + 1 + 4);
    let attributes = batch.get_i16();
    batch.advance(4);
    let base_ts = batch.get_i64();
    let max_ts = batch.get_i64();
    batch.advance(8 + 2 + 4);
    let count = batch.get_i32();
    if attributes & CONTROL != 0 {
        return Ok(Vec::new());
    }
    let mut records = match attributes & CODEC_MASK {
        0 => batch,
        codec => decompress(codec, batch)?,
    };
    let bad = |what: &str| format!("bad record in a batch: {what}");
    let mut out = Vec::with_capacity(count.clamp(0, 10_000) as usize);
    for _ in 0..count {
        let len = get_varint(&mut records).ok_or_else(|| bad("length"))?;
        if len < 0 || len as usize > records.len() {
            return Err(bad("length past the batch"));
        }
        let mut r = records.split_to(len as usize);
        if r.try_get_i8().is_err() {
            return Err(bad("attributes"));
        }
        let ts_delta = get_varint(&mut r).ok_or_else(|| bad("timestamp"))?;
        let offset_delta = get_varint(&mut r).ok_or_else(|| bad("offset"))?;
        let key = get_bytes(&mut r).ok_or_else(|| bad("key"))?;
        let value = get_bytes(&mut r).ok_or_else(|| bad("value"))?;
        let n = get_varint(&mut r).ok_or_else(|| bad("header count"))?;
        if n < 0 || n as usize > r.len() {
            return Err(bad("header count"));
        }
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = get_bytes(&mut r)
                .flatten()
                .ok_or_else(|| bad("header name"))?;
            let value = get_bytes(&mut r).ok_or_else(|| bad("header value"))?;
            // As Kafka's Java client reads a name that is not UTF-8.
            headers.push((String::from_utf8_lossy(&name).into_owned(), value));
        }
        out.push(In {
            offset: base_offset.wrapping_add(offset_delta),
            timestamp: if attributes & LOG_APPEND_TIME != 0 {
                max_ts
            } else {
                base_ts.wrapping_add(ts_delta)
            },
            key,
            value,
            headers,
        });
    }
    Ok(out)
}

fn codec_bits(compression: Compression) -> i16 {
    match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    }
}

fn compress(compression: Compression, body: &[u8]) -> Result<BytesMut, String> {
    let mut out = BytesMut::new();
    let write = |b: &mut BytesMut| {
        b.put_slice(body);
        Ok(())
    };
    match compression {
        Compression::None => write(&mut out),
        Compression::Gzip => Gzip::compress(&mut out, write),
        Compression::Snappy => Snappy::compress(&mut out, write),
        Compression::Lz4 => Lz4::compress(&mut out, write),
        Compression::Zstd => Zstd::compress(&mut out, write),
    }
    .map_err(|e| format!("compressing a record batch: {e}"))?;
    Ok(out)
}

fn decompress(codec: i16, mut records: Bytes) -> Result<Bytes, String> {
    let take = |b: &mut Bytes| Ok(std::mem::take(b));
    match codec {
        1 => Gzip::decompress(&mut records, take),
        2 => Snappy::decompress(&mut records, take),
        3 => Lz4::decompress(&mut records, take),
        4 => Zstd::decompress(&mut records, take),
        other => return Err(format!("record batch codec {other} is not Kafka's")),
    }
    .map_err(|e| format!("decompressing a record batch: {e}"))
}

fn put_varint(b: &mut BytesMut, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        b.put_u8(z as u8 | 0x80);
        z >>= 7;
    }
    b.put_u8(z as u8);
}

/// A length-prefixed byte string, -1 for null.
fn put_bytes(b: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(s) => {
            put_varint(b, s.len() as i64);
            b.put_slice(s);
        }
        None => put_varint(b, -1),
    }
}

fn get_varint(b: &mut Bytes) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = b.try_get_u8().ok()?;
        z |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    None
}

/// A length-prefixed byte string: `Some(None)` for null, `None` if cut short.
fn get_bytes(b: &mut Bytes) -> Option<Option<Bytes>> {
    let len = get_varint(b)?;
    if len < 0 {
        return Some(None);
    }
    let len = usize::try_from(len).ok().filter(|&l| l <= b.len())?;
    Some(Some(b.split_to(len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn headers() -> Vec<(StrBytes, Option<Bytes>)> {
        vec![
            (StrBytes::from_static_str("trace"), Some(Bytes::from("a"))),
            (StrBytes::from_static_str("unit"), None),
            (StrBytes::from_static_str("trace"), Some(Bytes::from("b"))),
            (StrBytes::from_static_str("empty"), Some(Bytes::new())),
        ]
    }

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Every codec: kafka-protocol's decoder reads what is written (producer, sequences,
    /// timestamps before and after the first, keys and values), and so does ours, with the
    /// repeated header kept.
    #[test]
    fn batches_read_back_with_every_codec_and_keep_repeated_headers() {
        let h = headers();
        let values: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("value-{i}").repeat(i).into_bytes())
            .collect();
        let writer = Writer {
            producer_id: 9,
            producer_epoch: 3,
            base_sequence: 100,
        };
        for codec in CODECS {
            let out = (0..20).map(|i| Out {
                key: (i % 3 != 0).then_some(b"key".as_slice()),
                value: &values[i],
                headers: if i == 1 { &h } else { &[] },
                timestamp: 1_700_000_000_000 + (i as i64 - 5) * 1_000,
            });
            let batch = encode(out, writer, codec).unwrap();
            let theirs = RecordBatchDecoder::decode(&mut batch.clone()).unwrap();
            assert_eq!(theirs.records.len(), 20, "{codec:?}");
            for (i, r) in theirs.records.iter().enumerate() {
                assert_eq!((r.producer_id, r.producer_epoch), (9, 3));
                assert_eq!(r.sequence, 100 + i as i32);
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.timestamp, 1_700_000_000_000 + (i as i64 - 5) * 1_000);
                assert_eq!(r.value.as_deref(), Some(&values[i][..]));
            }
            let ours = decode(batch).unwrap();
            assert_eq!(ours.len(), 20);
            assert_eq!(ours[0].key, None);
            assert_eq!(ours[1].key.as_deref(), Some(b"key".as_slice()));
            assert_eq!(ours[19].value.as_deref(), Some(&values[19][..]));
            let names: Vec<(&str, Option<&[u8]>)> = ours[1]
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            assert_eq!(
                names,
                [
                    ("trace", Some(b"a".as_slice())),
                    ("unit", None),
                    ("trace", Some(b"b".as_slice())),
                    ("empty", Some(b"".as_slice())),
                ]
            );
        }
    }

    /// Batches kafka-protocol writes (as the broker stores other clients' batches) read here
    /// with their offsets, LogAppendTime and control batches as Kafka's clients read them.
    #[test]
    fn other_writers_batches_read_here() {
        use kafka_protocol::records::{
            Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = |offset: i64, control: bool, timestamp_type| Record {
            transactional: control,
            control,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 1,
            producer_epoch: 0,
            timestamp_type,
            offset,
            sequence: offset as i32,
            timestamp: 1_000 + offset,
            key: None,
            value: Some(Bytes::from(vec![b'v'; offset as usize])),
            headers: Default::default(),
        };
        for codec in CODECS {
            let mut b = BytesMut::new();
            let records: Vec<Record> = (40..43)
                .map(|o| record(o, false, TimestampType::Creation))
                .collect();
            let options = RecordEncodeOptions {
                version: 2,
                compression: codec,
            };
            RecordBatchEncoder::encode(&mut b, &records, &options).unwrap();
            let read = decode(b.freeze()).unwrap();
            let got: Vec<(i64, i64, usize)> = read
                .iter()
                .map(|r| (r.offset, r.timestamp, r.value.as_ref().unwrap().len()))
                .collect();
            assert_eq!(got, [(40, 1040, 40), (41, 1041, 41), (42, 1042, 42)]);
        }
        let mut b = BytesMut::new();
        let appended = [record(7, false, TimestampType::LogAppend)];
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut b, &appended, &options).unwrap();
        assert_eq!(decode(b.freeze()).unwrap()[0].timestamp, 1_007);
        let mut b = BytesMut::new();
        let marker = [record(8, true, TimestampType::Creation)];
        RecordBatchEncoder::encode(&mut b, &marker, &options).unwrap();
        assert!(decode(b.freeze()).unwrap().is_empty(), "a control batch");
    }

    /// A damaged or cut batch is refused, never read wrong nor a panic.
    #[test]
    fn damaged_batches_are_refused() {
        let h = headers();
        let one = [Out {
            key: Some(b"k"),
            value: b"v",
            headers: &h,
            timestamp: 5,
        }];
        let batch = encode(one, Writer::NONE, Compression::None).unwrap();
        for at in 0..batch.len() {
            let mut bad = batch.to_vec();
            bad[at] ^= 0x40;
            let read = decode(Bytes::from(bad));
            // The base offset, length and leader epoch are outside the CRC (as in Kafka).
            if at >= 17 {
                assert!(read.is_err(), "a flipped byte at {at} was read: {read:?}");
            }
        }
        for len in 0..batch.len() {
            assert!(decode(batch.slice(..len)).is_err(), "cut at {len}");
        }
        // Damage the CRC does not catch (its writer's own bug): the record parser's checks,
        // never a panic nor a read past the batch.
        for at in CRC_FROM..batch.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = batch.to_vec();
                bad[at] = value;
                let crc = crc32c::crc32c(&bad[CRC_FROM..]);
                bad[CRC_FROM - 4..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
                let _ = decode(Bytes::from(bad));
            }
        }
        assert!(encode([], Writer::NONE, Compression::None).is_err());
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for n in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, n);
            assert_eq!(get_varint(&mut b.freeze()), Some(n), "{n}");
        }
        // Eleven continuation bytes are not a varint.
        assert_eq!(get_varint(&mut Bytes::from(vec![0xff; 11])), None);
    }
}
