//! Filters over a batch's records in place: the fast path of [`super::run_chain`] for chains
//! of filters only.
//!
//! The general path decodes a batch into [`OwnedRecord`](super::OwnedRecord) values (a `Bytes`
//! handle per key, value and header), frames them, and encodes the kept ones. A chain of
//! filters needs none of that: the batch's records are found as spans of its (uncompressed)
//! bytes ([`crate::storage::record_spans`]), [`frame`] writes the plugin frame straight from
//! them, and the kept records are copied into a new batch as they are.

use std::ops::Range;

use crate::storage::record_spans::{Records, header};

/// The batch frame of `sdk/wit/plugin.wit` for the records `which` (indexes, in order) of
/// `records`: the same bytes as [`super::frame_records`] writes for them.
pub fn frame(records: &Records<'_>, topic: &str, partition: i32, which: &[usize]) -> Vec<u8> {
    let (batch, spans) = records.parts();
    let field = |r: &Option<Range<usize>>| r.as_ref().map(|r| &batch[r.clone()]);
    let payload: usize = which.iter().map(|&i| 24 + 2 * spans[i].tail.len()).sum();
    let mut out = super::frame_start(topic, partition, which.len(), payload);
    for &i in which {
        let s = &spans[i];
        out.extend_from_slice(&s.timestamp.to_le_bytes());
        super::put_nullable(&mut out, field(&s.key));
        super::put_nullable(&mut out, field(&s.value));
        out.extend_from_slice(&s.header_count.to_le_bytes());
        let mut pos = s.headers;
        for _ in 0..s.header_count {
            // Checked by `Records::parse`.
            let Ok((key, value)) = header(batch, &mut pos, s.tail.end) else {
                break;
            };
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(&batch[key]);
            super::put_nullable(&mut out, field(&value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record_spans::OwnedRecord;
    use crate::storage::{self, BATCH_HEADER_LEN};
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

    /// A record kafka-protocol's decoder read, as the chain holds records.
    fn owned(r: &Record) -> OwnedRecord {
        OwnedRecord {
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    /// Framing in place gives the same frame as framing decoded records, and copying the kept
    /// ones gives the records, at the same offsets, that re-encoding them at their deltas does.
    #[test]
    fn frame_and_copy_match_the_decoder_and_encoder() {
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
                let chosen: Vec<OwnedRecord> = which.iter().map(|&i| owned(&decoded[i])).collect();
                assert_eq!(
                    frame(&recs, "topic", 3, &which),
                    crate::plugins::frame_records("topic", 3, &chosen)
                );
                let copied = recs.keep_offsets(&h, &which, None);
                let deltas: Vec<i32> = which.iter().map(|&i| i as i32).collect();
                let reencoded = super::super::reencode_at(&raw, &h, &chosen, &deltas).unwrap();
                let ch = storage::check_batch(&copied).unwrap();
                let rh = storage::check_batch(&reencoded).unwrap();
                assert_eq!(
                    (ch.last_offset_delta, ch.record_count, ch.max_timestamp),
                    (rh.last_offset_delta, rh.record_count, rh.max_timestamp)
                );
                assert_eq!(ch.last_offset_delta, h.last_offset_delta);
                let decode = |b: Vec<u8>| {
                    RecordBatchDecoder::decode(&mut Bytes::from(b))
                        .unwrap()
                        .records
                };
                let (copied, reencoded) = (decode(copied), decode(reencoded));
                let offsets: Vec<i64> = copied.iter().map(|r| r.offset).collect();
                assert_eq!(offsets, which.iter().map(|&i| i as i64).collect::<Vec<_>>());
                assert_eq!(copied, reencoded, "n {n} every {pick}");
            }
        }
    }

    /// Over a compressed batch the chain's way (uncompress, copy the kept records, compress)
    /// gives the records re-encoding gives, in every codec.
    #[test]
    fn compressed_batches_rebuild_to_the_same_records() {
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records: Vec<Record> = (0..40).map(record).collect();
            let mut buf = BytesMut::new();
            let opts = RecordEncodeOptions {
                version: 2,
                compression,
            };
            RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
            let raw = buf.freeze();
            let h = storage::check_batch(&raw).unwrap();
            let plain = storage::record_spans::plain_batch(raw.clone(), &h).unwrap();
            let recs = Records::parse(&plain, &h).unwrap();
            let which: Vec<usize> = (0..40).filter(|i| i % 3 != 1).collect();
            let rebuilt =
                storage::record_spans::compressed(recs.keep_offsets(&h, &which, None)).unwrap();
            let nh = storage::check_batch(&rebuilt).unwrap();
            assert_eq!(nh.compression(), h.compression(), "{compression:?}");
            assert!(rebuilt.len() > BATCH_HEADER_LEN);
            let chosen: Vec<OwnedRecord> = which.iter().map(|&i| owned(&records[i])).collect();
            let deltas: Vec<i32> = which.iter().map(|&i| i as i32).collect();
            let reencoded = super::super::reencode_at(&raw, &h, &chosen, &deltas).unwrap();
            let decode = |b: Vec<u8>| {
                RecordBatchDecoder::decode(&mut Bytes::from(b))
                    .unwrap()
                    .records
            };
            assert_eq!(decode(rebuilt), decode(reencoded), "{compression:?}");
        }
    }
}
