//! The output frame: what a transform returns, one `list<u8>`.
//!
//! All integers little-endian (the record and header layout of the batch frame, see [`crate::frame`],
//! preceded by an optional topic):
//!
//! ```text
//! output  := version:u8 (= 1) count:u32 out{count}
//! out     := topic-len:i16 topic:utf8   (-1 = no topic: stays in the input's topic and partition)
//!            timestamp:i64 key-len:i32 key value-len:i32 value header-count:u32 header{header-count}
//! header  := key-len:u32 key:utf8 value-len:i32 value
//! ```
//!
//! [`Output`] writes it; [`NewRecord`] describes one output record by borrowing its parts (from
//! the input record or from the plugin's own buffers), so an unchanged key or value is copied
//! once, straight into the frame. [`read_output`] reads a frame back (for host-side tests).

use crate::frame::{FrameError, Record, VERSION};

/// One record to write, borrowing its parts. Start from [`NewRecord::from`] an input record
/// (same timestamp, key, value and headers) or from [`NewRecord::new`], then change what differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord<'a> {
    /// `None`: the input batch's own topic and partition.
    pub topic: Option<&'a str>,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> NewRecord<'a> {
    /// A record with no key, value or headers, at `timestamp`, staying in its topic.
    pub fn new(timestamp: i64) -> Self {
        NewRecord {
            topic: None,
            timestamp,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    /// Replaces the value.
    pub fn with_value(mut self, value: Option<&'a [u8]>) -> Self {
        self.value = value;
        self
    }

    /// Replaces the key.
    pub fn with_key(mut self, key: Option<&'a [u8]>) -> Self {
        self.key = key;
        self
    }

    /// Sets header `key` to `value`: replaces every header of that name, or adds one at the end.
    pub fn with_header(mut self, key: &'a str, value: Option<&'a [u8]>) -> Self {
        self.headers.retain(|(k, _)| *k != key);
        self.headers.push((key, value));
        self
    }

    /// Sends the record to `topic` instead of the input's topic (partition by key hash).
    pub fn to_topic(mut self, topic: &'a str) -> Self {
        self.topic = Some(topic);
        self
    }
}

impl<'a> From<&Record<'a>> for NewRecord<'a> {
    fn from(r: &Record<'a>) -> Self {
        NewRecord {
            topic: None,
            timestamp: r.timestamp(),
            key: r.key(),
            value: r.value(),
            headers: r.headers().map(|h| (h.key, h.value)).collect(),
        }
    }
}

/// Builds an output frame.
pub struct Output {
    buf: Vec<u8>,
    count: u32,
}

/// Byte position of the record count in an output frame.
const COUNT_AT: usize = 1;

impl Default for Output {
    fn default() -> Self {
        Output::with_capacity(0)
    }
}

impl Output {
    /// An empty output whose buffer starts with room for `bytes` (the input batch's size is a
    /// good guess for a transform that rewrites every record).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(5 + bytes);
        buf.push(VERSION);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Output { buf, count: 0 }
    }

    /// Writes `record` unchanged (same topic, timestamp, key, value and headers). Copies its
    /// bytes once, without building a [`NewRecord`].
    pub fn keep(&mut self, record: &Record<'_>) {
        self.topic(None);
        self.buf
            .extend_from_slice(&record.timestamp().to_le_bytes());
        self.nullable(record.key());
        self.nullable(record.value());
        self.buf
            .extend_from_slice(&(record.headers().count() as u32).to_le_bytes());
        for h in record.headers() {
            self.header(h.key, h.value);
        }
        self.count += 1;
    }

    /// Writes `record`.
    pub fn push(&mut self, record: &NewRecord<'_>) {
        self.topic(record.topic);
        self.buf.extend_from_slice(&record.timestamp.to_le_bytes());
        self.nullable(record.key);
        self.nullable(record.value);
        self.buf
            .extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
        for (k, v) in &record.headers {
            self.header(k, *v);
        }
        self.count += 1;
    }

    /// Records written so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished frame.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[COUNT_AT..COUNT_AT + 4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }

    fn topic(&mut self, topic: Option<&str>) {
        match topic {
            None => self.buf.extend_from_slice(&(-1i16).to_le_bytes()),
            Some(t) => {
                // Kafka topic names are at most 249 bytes; a longer one is cut here and then
                // refused by the broker as an unknown or invalid topic.
                let t = &t.as_bytes()[..t.len().min(i16::MAX as usize)];
                self.buf.extend_from_slice(&(t.len() as i16).to_le_bytes());
                self.buf.extend_from_slice(t);
            }
        }
    }

    fn header(&mut self, key: &str, value: Option<&[u8]>) {
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key.as_bytes());
        self.nullable(value);
    }

    fn nullable(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.buf.extend_from_slice(&(-1i32).to_le_bytes()),
            Some(v) => {
                self.buf.extend_from_slice(&(v.len() as i32).to_le_bytes());
                self.buf.extend_from_slice(v);
            }
        }
    }
}

/// An output record read back from a frame (owned; for tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    pub topic: Option<String>,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Reads an output frame written by [`Output`].
pub fn read_output(buf: &[u8]) -> Result<Vec<OwnedRecord>, FrameError> {
    fn take<'a>(b: &mut &'a [u8], n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        if b.len() < n {
            return Err(FrameError::Truncated { field });
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn int<const N: usize>(b: &mut &[u8], field: &'static str) -> Result<[u8; N], FrameError> {
        Ok(take(b, N, field)?.try_into().expect("N bytes"))
    }
    fn nullable(b: &mut &[u8], field: &'static str) -> Result<Option<Vec<u8>>, FrameError> {
        match i32::from_le_bytes(int(b, field)?) {
            -1 => Ok(None),
            len if len < -1 => Err(FrameError::BadLength { field, len }),
            len => Ok(Some(take(b, len as usize, field)?.to_vec())),
        }
    }
    fn text(b: &mut &[u8], len: usize, field: &'static str) -> Result<String, FrameError> {
        String::from_utf8(take(b, len, field)?.to_vec()).map_err(|_| FrameError::NotUtf8 { field })
    }
    let mut b = buf;
    let version = int::<1>(&mut b, "version")?[0];
    if version != VERSION {
        return Err(FrameError::Version { found: version });
    }
    let count = u32::from_le_bytes(int(&mut b, "record count")?);
    let mut out = Vec::new();
    for _ in 0..count {
        let topic = match i16::from_le_bytes(int(&mut b, "topic length")?) {
            -1 => None,
            len if len < -1 => {
                return Err(FrameError::BadLength {
                    field: "topic",
                    len: len as i32,
                });
            }
            len => Some(text(&mut b, len as usize, "topic")?),
        };
        let timestamp = i64::from_le_bytes(int(&mut b, "timestamp")?);
        let key = nullable(&mut b, "key")?;
        let value = nullable(&mut b, "value")?;
        let n = u32::from_le_bytes(int(&mut b, "header count")?);
        let mut headers = Vec::new();
        for _ in 0..n {
            let len = u32::from_le_bytes(int(&mut b, "header key length")?) as usize;
            let k = text(&mut b, len, "header key")?;
            headers.push((k, nullable(&mut b, "header value")?));
        }
        out.push(OwnedRecord {
            topic,
            timestamp,
            key,
            value,
            headers,
        });
    }
    if !b.is_empty() {
        return Err(FrameError::Trailing { bytes: b.len() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Batch, Writer};

    /// The exact bytes of the output layout documented in `sdk/wit/plugin.wit`.
    #[test]
    fn output_layout_is_exact() {
        let mut w = Writer::new("t", 0);
        w.record(7, Some(b"k"), None, &[("h", Some(b"v"))]);
        let input = w.finish();
        let batch = Batch::parse(&input).unwrap();
        let record = batch.records().next().unwrap().unwrap();
        let mut out = Output::default();
        out.keep(&record);
        out.push(
            &NewRecord::from(&record)
                .with_value(Some(b"xy"))
                .with_header("h", None)
                .to_topic("u"),
        );
        let frame = out.finish();
        let mut want = vec![1u8, 2, 0, 0, 0];
        want.extend_from_slice(&(-1i16).to_le_bytes());
        want.extend_from_slice(&7i64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, b'k']);
        want.extend_from_slice(&(-1i32).to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, b'h', 1, 0, 0, 0, b'v']);
        want.extend_from_slice(&[1, 0, b'u']);
        want.extend_from_slice(&7i64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, b'k']);
        want.extend_from_slice(&[2, 0, 0, 0, b'x', b'y']);
        want.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, b'h']);
        want.extend_from_slice(&(-1i32).to_le_bytes());
        assert_eq!(frame, want);

        let back = read_output(&frame).unwrap();
        assert_eq!(back[0].topic, None);
        assert_eq!(back[1].topic.as_deref(), Some("u"));
        assert_eq!(back[1].headers, vec![("h".to_string(), None)]);
        for cut in 0..frame.len() {
            assert!(read_output(&frame[..cut]).is_err(), "cut at {cut}");
        }
    }
}
