//! A transform's answer: the output frame of `sdk/wit/plugin.wit`, read into records, and the
//! partition a record routed to another topic goes to.
//!
//! ```text
//! output  := version:u8 (= 1) count:u32 out{count}
//! out     := topic-len:i16 topic:utf8 (-1 = no topic) timestamp:i64 key-len:i32 key
//!            value-len:i32 value header-count:u32 header{header-count}
//! header  := key-len:u32 key:utf8 value-len:i32 value
//! ```
//!
//! The frame comes from a guest, so it is untrusted: every length is checked against what is
//! left before it is used, counts never size an allocation beyond what the bytes can hold, and
//! keys and values are zero-copy slices of the answer's buffer.
//!
//! Routing ([`partition_for`]): a record with a key goes to `murmur2(key) & 0x7fffffff` modulo
//! the topic's partition count, the partition Kafka's default partitioner (and librdkafka's
//! `murmur2_random`) picks for that key, so keyed records land where a Kafka client would have
//! put them; a record without a key goes to partition 0.

use bytes::{Buf, Bytes};

/// The frame version this host reads.
const VERSION: u8 = 1;

/// One output record of a transform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecord {
    /// `None`: stays in the input batch's topic and partition.
    pub topic: Option<String>,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Reads an output frame; the error says what is malformed and where.
pub fn parse_output(answer: Bytes) -> Result<Vec<OutRecord>, String> {
    let mut b = answer;
    let version = take_int::<1>(&mut b, "version")?[0];
    if version != VERSION {
        return Err(format!(
            "output frame version {version}, expected {VERSION}"
        ));
    }
    let count = u32::from_le_bytes(take_int(&mut b, "record count")?);
    // Each record takes at least 22 bytes; a count the frame cannot hold is refused before
    // anything is allocated for it.
    if count as usize > b.remaining() / 22 {
        return Err(format!(
            "output frame declares {count} records in {} bytes",
            b.remaining()
        ));
    }
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        out.push(read_record(&mut b).map_err(|e| format!("output record {i}: {e}"))?);
    }
    if b.has_remaining() {
        return Err(format!(
            "output frame has {} bytes after its last record",
            b.remaining()
        ));
    }
    Ok(out)
}

fn read_record(b: &mut Bytes) -> Result<OutRecord, String> {
    let topic = match i16::from_le_bytes(take_int(b, "topic length")?) {
        -1 => None,
        len if len < -1 => return Err(format!("topic length {len}")),
        len => Some(take_str(b, len as usize, "topic")?),
    };
    let timestamp = i64::from_le_bytes(take_int(b, "timestamp")?);
    let key = take_nullable(b, "key")?;
    let value = take_nullable(b, "value")?;
    let header_count = u32::from_le_bytes(take_int(b, "header count")?);
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let len = u32::from_le_bytes(take_int(b, "header key length")?) as usize;
        let key = take_str(b, len, "header key")?;
        headers.push((key, take_nullable(b, "header value")?));
    }
    Ok(OutRecord {
        topic,
        timestamp,
        key,
        value,
        headers,
    })
}

fn take(b: &mut Bytes, n: usize, field: &str) -> Result<Bytes, String> {
    if b.remaining() < n {
        return Err(format!("truncated in {field}"));
    }
    Ok(b.split_to(n))
}

fn take_int<const N: usize>(b: &mut Bytes, field: &str) -> Result<[u8; N], String> {
    let bytes = take(b, N, field)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes);
    Ok(out)
}

fn take_str(b: &mut Bytes, len: usize, field: &str) -> Result<String, String> {
    let bytes = take(b, len, field)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{field} is not UTF-8"))
}

fn take_nullable(b: &mut Bytes, field: &str) -> Result<Option<Bytes>, String> {
    match i32::from_le_bytes(take_int(b, field)?) {
        -1 => Ok(None),
        len if len < -1 => Err(format!("{field} length {len}")),
        len => take(b, len as usize, field).map(Some),
    }
}

/// The partition of a `partitions`-partition topic a record with `key` is appended to.
pub fn partition_for(key: Option<&[u8]>, partitions: i32) -> i32 {
    match key {
        Some(key) if partitions > 1 => (murmur2(key) & 0x7fff_ffff) % partitions,
        _ => 0,
    }
}

/// MurmurHash2, 32-bit, with the seed Kafka's partitioner uses (`Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= (*byte as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own tests of `Utils.murmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (text, want) in cases {
            assert_eq!(murmur2(text.as_bytes()), want, "{text}");
        }
        assert_eq!(partition_for(None, 8), 0);
        assert_eq!(partition_for(Some(b"abc"), 1), 0);
        assert_eq!(
            partition_for(Some(b"foobar"), 7),
            (-790332482 & 0x7fff_ffff) % 7
        );
    }

    fn frame() -> Vec<u8> {
        let mut f = vec![1u8, 2, 0, 0, 0];
        f.extend_from_slice(&(-1i16).to_le_bytes());
        f.extend_from_slice(&7i64.to_le_bytes());
        f.extend_from_slice(&[1, 0, 0, 0, b'k']);
        f.extend_from_slice(&(-1i32).to_le_bytes());
        f.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, b'h', 1, 0, 0, 0, b'v']);
        f.extend_from_slice(&[1, 0, b'u']);
        f.extend_from_slice(&8i64.to_le_bytes());
        f.extend_from_slice(&(-1i32).to_le_bytes());
        f.extend_from_slice(&[2, 0, 0, 0, b'x', b'y']);
        f.extend_from_slice(&[0, 0, 0, 0]);
        f
    }

    #[test]
    fn reads_the_documented_layout_and_refuses_every_truncation() {
        let f = frame();
        let out = parse_output(Bytes::from(f.clone())).unwrap();
        assert_eq!(
            out,
            vec![
                OutRecord {
                    topic: None,
                    timestamp: 7,
                    key: Some(Bytes::from_static(b"k")),
                    value: None,
                    headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
                },
                OutRecord {
                    topic: Some("u".into()),
                    timestamp: 8,
                    key: None,
                    value: Some(Bytes::from_static(b"xy")),
                    headers: vec![],
                },
            ]
        );
        for cut in 0..f.len() {
            assert!(
                parse_output(Bytes::copy_from_slice(&f[..cut])).is_err(),
                "{cut}"
            );
        }
        let mut long = f.clone();
        long.push(0);
        assert!(
            parse_output(Bytes::from(long))
                .unwrap_err()
                .contains("after its last")
        );
        let mut huge = f;
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            parse_output(Bytes::from(huge))
                .unwrap_err()
                .contains("declares")
        );
    }
}
