//! Test helpers: build record batches with kafka-protocol's encoder, decode them back.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

/// Every codec a Kafka batch may use.
pub const ALL_CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// One record to encode: key, value, timestamp, headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRec {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub ts: i64,
    pub headers: Vec<(String, Option<Bytes>)>,
}

pub fn kv(k: &str, v: &str, ts: i64) -> TestRec {
    TestRec {
        key: Some(Bytes::copy_from_slice(k.as_bytes())),
        value: Some(Bytes::copy_from_slice(v.as_bytes())),
        ts,
        headers: vec![],
    }
}

pub fn tombstone(k: &str, ts: i64) -> TestRec {
    TestRec {
        key: Some(Bytes::copy_from_slice(k.as_bytes())),
        value: None,
        ts,
        headers: vec![],
    }
}

pub fn unkeyed(v: &str, ts: i64) -> TestRec {
    TestRec {
        key: None,
        value: Some(Bytes::copy_from_slice(v.as_bytes())),
        ts,
        headers: vec![],
    }
}

/// Encode one v2 batch (base offset 0) the way a producer would.
pub fn encode_batch(
    recs: &[TestRec],
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Vec<u8> {
    let records: Vec<Record> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            producer_id,
            producer_epoch,
            offset: i as i64,
            // offset - sequence must stay constant or the encoder splits the batch.
            sequence: base_sequence.wrapping_add(i as i32),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect(),
            ..super::plain_record(r.ts, r.key.clone(), r.value.clone())
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode");
    buf.to_vec()
}

/// `encode_batch` of a transactional producer's batch (the transactional bit set).
pub fn transactional_batch(recs: &[TestRec], producer_id: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let mut b = encode_batch(recs, Compression::None, producer_id, epoch, seq);
    let attributes = i16::from_be_bytes([b[21], b[22]]) | super::ATTR_TRANSACTIONAL;
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    super::rewrite_crc(&mut b);
    b
}

/// Decode all batches back to (offset, record).
pub fn decode_all(bytes: &[u8]) -> Vec<(i64, TestRec)> {
    let mut buf = Bytes::copy_from_slice(bytes);
    let sets = RecordBatchDecoder::decode_all(&mut buf).expect("decode");
    sets.into_iter()
        .flat_map(|s| s.records)
        .map(|r| {
            (
                r.offset,
                TestRec {
                    key: r.key,
                    value: r.value,
                    ts: r.timestamp,
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                },
            )
        })
        .collect()
}

/// [`encode_batch`] without a producer id, written by the broker's own encoder
/// (`record_spans::encode`), so a header name may repeat (kafka-protocol's record keeps one
/// per name).
pub fn broker_encoded_batch(recs: &[TestRec], compression: Compression) -> Vec<u8> {
    use crate::storage::record_spans::{OwnedRecord, encode, header_without_producer};
    let codec = ALL_CODECS.iter().position(|c| *c == compression).unwrap() as i16;
    let records: Vec<OwnedRecord> = recs
        .iter()
        .map(|r| OwnedRecord {
            timestamp: r.ts,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        })
        .collect();
    encode(&header_without_producer(codec), &records).unwrap()
}

/// The (offset, record) of every record in `bytes` (whole batches), headers as they are
/// stored (a name may repeat), read without kafka-protocol's decoder.
pub fn read_spans(bytes: &[u8]) -> Vec<(i64, TestRec)> {
    use crate::storage::record_spans::{Records, plain_batch};
    let mut out = Vec::new();
    for batch in crate::storage::parse_batches(bytes) {
        let (_, h, raw) = batch.unwrap();
        if h.is_control() {
            continue;
        }
        let plain = plain_batch(Bytes::copy_from_slice(raw), &h).unwrap();
        let recs = Records::parse(&plain, &h).unwrap();
        for i in 0..recs.len() {
            let r = recs.record(i);
            out.push((
                h.base_offset + i64::from(r.offset_delta),
                TestRec {
                    key: r.key.map(Bytes::copy_from_slice),
                    value: r.value.map(Bytes::copy_from_slice),
                    ts: r.timestamp,
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.map(Bytes::copy_from_slice)))
                        .collect(),
                },
            ));
        }
    }
    out
}
