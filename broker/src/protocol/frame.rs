//! Kafka framing and request-header glue. Pure: bytes in, values or a typed error out; no I/O,
//! no logging, no async.
//!
//! A Kafka frame is a big-endian `i32` size followed by that many bytes. The size is checked
//! against `max_request_bytes` before anything is allocated for the body, so a peer cannot make
//! the broker reserve memory by sending a large prefix.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

/// Why a frame or a request header could not be read. Every variant closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame size {size} is negative")]
    NegativeSize { size: i32 },
    #[error("frame size {size} exceeds max_request_bytes {max}")]
    TooLarge { size: usize, max: usize },
    #[error("frame of {size} bytes is too short for a request header")]
    TooShort { size: usize },
    #[error("unknown API key {api_key} (version {api_version}, correlation id {correlation_id})")]
    UnknownApiKey {
        api_key: i16,
        api_version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api:?} v{version} request header: {reason}")]
    BadHeader {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Splits one complete frame body off the front of `buf`, or returns `Ok(None)` when more bytes
/// are needed. On `Ok(None)` the buffer has room reserved for the rest of the frame.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(FrameError::NegativeSize { size });
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// The size its prefix gives the frame at the front of `buf` (once the prefix is there and is
/// not negative).
pub fn pending_size(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    usize::try_from(i32::from_be_bytes(prefix)).ok()
}

/// A decoded request header plus the parts of the frame the handler needs.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    /// The request body, a zero-copy slice of the frame.
    pub body: Bytes,
}

/// Reads the request header from a frame body. The header's own version depends on the API key
/// and version, so those are peeked first.
pub fn decode_request(frame: Bytes) -> Result<Request, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::TooShort { size: frame.len() });
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| FrameError::UnknownApiKey {
        api_key: raw_key,
        api_version,
        correlation_id,
    })?;
    // ApiVersions requests of versions we do not know must still be answered (KIP-511): their
    // header is at least v1 (no tagged fields before v3), so decode with the nearest known form.
    let header_version = if api_key == ApiKey::ApiVersions && api_version > 4 {
        2
    } else {
        api_key.request_header_version(api_version)
    };
    let mut body = frame.clone();
    let mut decoded = RequestHeader::decode(&mut body, header_version);
    if decoded.is_err()
        && header_version >= 1
        && let Some(fixed) = client_id_made_utf8(&frame)
    {
        body = fixed;
        decoded = RequestHeader::decode(&mut body, header_version);
    }
    let header = decoded.map_err(|e| FrameError::BadHeader {
        api: api_key,
        version: api_version,
        reason: one_line(&e),
    })?;
    Ok(Request {
        api_key,
        header,
        body,
    })
}

/// The frame with its client id (a header v1+ field: a 16-bit length, then the bytes) made
/// valid UTF-8, each byte that is not replaced by U+FFFD, as Kafka's Java broker reads it; `None`
/// if it has no such client id or the id is valid (the header is wrong elsewhere).
fn client_id_made_utf8(frame: &Bytes) -> Option<Bytes> {
    let len = i16::from_be_bytes([*frame.get(8)?, *frame.get(9)?]);
    let end = 10 + usize::try_from(len).ok()?;
    let id = frame.get(10..end)?;
    if std::str::from_utf8(id).is_ok() {
        return None;
    }
    let mut text = String::from_utf8_lossy(id).into_owned();
    while text.len() > i16::MAX as usize {
        text.pop();
    }
    let mut out = BytesMut::with_capacity(frame.len() + text.len());
    out.extend_from_slice(&frame[..8]);
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&frame[end..]);
    Some(out.freeze())
}

/// Peeks the correlation id of a frame that failed to decode, for the log line.
pub fn peek_correlation_id(frame: &[u8]) -> Option<i32> {
    frame
        .get(4..8)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A decoder's error on one line: kafka-protocol's messages may end in a newline, which would
/// split a log event in two.
pub(crate) fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    #[test]
    fn a_decoder_error_is_logged_on_one_line() {
        assert_eq!(
            one_line(&"Not enough bytes remaining in buffer!\n"),
            "Not enough bytes remaining in buffer!"
        );
    }

    fn framed(body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(body.len() as i32);
        b.put_slice(body);
        b
    }

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut buf = framed(b"abcdefgh");
        buf.extend_from_slice(&framed(b"xy")[..5]);
        assert_eq!(
            split_frame(&mut buf, 100).unwrap().unwrap(),
            &b"abcdefgh"[..]
        );
        assert_eq!(split_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(b"y");
        assert_eq!(split_frame(&mut buf, 100).unwrap().unwrap(), &b"xy"[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn size_limit_is_checked_on_both_sides_before_the_body_arrives() {
        let mut at_limit = BytesMut::new();
        at_limit.put_i32(100);
        assert_eq!(split_frame(&mut at_limit, 100).unwrap(), None);
        let mut over = BytesMut::new();
        over.put_i32(101);
        assert_eq!(
            split_frame(&mut over, 100),
            Err(FrameError::TooLarge {
                size: 101,
                max: 100
            })
        );
        let mut negative = BytesMut::new();
        negative.put_i32(-5);
        assert_eq!(
            split_frame(&mut negative, 100),
            Err(FrameError::NegativeSize { size: -5 })
        );
    }

    #[test]
    fn decodes_header_and_keeps_body() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(9)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("rdkafka")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, ApiKey::Metadata.request_header_version(9))
            .unwrap();
        buf.put_slice(b"BODY");
        let req = decode_request(buf.freeze()).unwrap();
        assert_eq!(req.api_key, ApiKey::Metadata);
        assert_eq!(req.header.correlation_id, 42);
        assert_eq!(req.header.client_id.as_deref(), Some("rdkafka"));
        assert_eq!(&req.body[..], b"BODY");
    }

    /// A client id that is not UTF-8 is read as Kafka's Java broker reads it (each bad byte as
    /// U+FFFD), in headers with and without tagged fields, and the body is kept.
    #[test]
    fn a_client_id_that_is_not_utf8_is_read_with_replacements() {
        for (version, tags) in [(8, b"".as_slice()), (12, b"\0".as_slice())] {
            let mut b = BytesMut::new();
            b.put_i16(ApiKey::Metadata as i16);
            b.put_i16(version);
            b.put_i32(7);
            b.put_i16(4);
            b.put_slice(b"a\xffb\xc3");
            b.put_slice(tags);
            b.put_slice(b"BODY");
            let req = decode_request(b.freeze()).unwrap();
            assert_eq!(req.header.correlation_id, 7);
            assert_eq!(req.header.client_id.as_deref(), Some("a\u{fffd}b\u{fffd}"));
            assert_eq!(&req.body[..], b"BODY", "v{version}");
        }
    }

    #[test]
    fn every_truncation_of_a_header_is_an_error_not_a_panic() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(9)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("client-one")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, ApiKey::Produce.request_header_version(9))
            .unwrap();
        let full = buf.freeze();
        for cut in 0..full.len() {
            assert!(decode_request(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(decode_request(full).is_ok());
    }

    #[test]
    fn unknown_api_key_is_reported_with_its_correlation_id() {
        let mut b = BytesMut::new();
        b.put_i16(9999);
        b.put_i16(0);
        b.put_i32(5);
        b.put_i16(-1);
        assert_eq!(
            decode_request(b.freeze()).unwrap_err(),
            FrameError::UnknownApiKey {
                api_key: 9999,
                api_version: 0,
                correlation_id: 5
            }
        );
    }
}
