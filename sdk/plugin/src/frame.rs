//! The batch frame: how a record batch crosses into a plugin as one `list<u8>`.
//!
//! All integers little-endian:
//!
//! ```text
//! batch   := version:u8 (= 1) topic-len:u16 topic:utf8 partition:i32 count:u32 record{count}
//! record  := timestamp:i64 key-len:i32 key value-len:i32 value header-count:u32 header{header-count}
//! header  := key-len:u32 key:utf8 value-len:i32 value
//! ```
//!
//! A length of -1 means null (no bytes follow). [`Batch`] and [`Record`] borrow from the buffer;
//! nothing is copied. [`Writer`] builds frames (for host-side tests of plugin logic).

use std::fmt;

/// The only frame version so far.
pub const VERSION: u8 = 1;

/// A malformed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ended inside `field`.
    Truncated { field: &'static str },
    /// The frame's version byte is not [`VERSION`].
    Version { found: u8 },
    /// A topic or header key is not UTF-8.
    NotUtf8 { field: &'static str },
    /// A length below -1.
    BadLength { field: &'static str, len: i32 },
    /// Bytes left over after the last record.
    Trailing { bytes: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { field } => write!(f, "batch frame truncated in {field}"),
            FrameError::Version { found } => {
                write!(f, "batch frame version {found}, expected {VERSION}")
            }
            FrameError::NotUtf8 { field } => write!(f, "batch frame {field} is not UTF-8"),
            FrameError::BadLength { field, len } => {
                write!(f, "batch frame {field} length {len} is invalid")
            }
            FrameError::Trailing { bytes } => {
                write!(f, "frame has {bytes} bytes after its last record")
            }
        }
    }
}

impl std::error::Error for FrameError {}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, FrameError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    fn str(&mut self, len: usize, field: &'static str) -> Result<&'a str, FrameError> {
        std::str::from_utf8(self.take(len, field)?).map_err(|_| FrameError::NotUtf8 { field })
    }
    fn nullable(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, FrameError> {
        match self.i32(field)? {
            -1 => Ok(None),
            len if len < -1 => Err(FrameError::BadLength { field, len }),
            len => self.take(len as usize, field).map(Some),
        }
    }
}

/// A parsed batch header; its records are read lazily by [`Batch::records`].
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    topic: &'a str,
    partition: i32,
    count: u32,
    records: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Reads the batch header.
    pub fn parse(buf: &'a [u8]) -> Result<Self, FrameError> {
        let mut c = Cursor { buf };
        let version = c.u8("version")?;
        if version != VERSION {
            return Err(FrameError::Version { found: version });
        }
        let topic_len = c.u16("topic length")? as usize;
        let topic = c.str(topic_len, "topic")?;
        let partition = c.i32("partition")?;
        let count = c.u32("record count")?;
        Ok(Batch {
            topic,
            partition,
            count,
            records: c.buf,
        })
    }

    /// The topic every record of the batch is produced to.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// The partition every record of the batch is produced to.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// How many records the batch holds.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The records, in order; each item fails if the frame is malformed there.
    pub fn records(&self) -> Records<'a> {
        Records {
            batch: *self,
            cursor: Cursor { buf: self.records },
            left: self.count,
        }
    }
}

/// Iterator over a batch's records.
pub struct Records<'a> {
    batch: Batch<'a>,
    cursor: Cursor<'a>,
    left: u32,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let result = self.read();
        if result.is_err() {
            self.left = 0;
        }
        Some(result)
    }
}

impl<'a> Records<'a> {
    fn read(&mut self) -> Result<Record<'a>, FrameError> {
        let c = &mut self.cursor;
        let timestamp = c.i64("timestamp")?;
        let key = c.nullable("key")?;
        let value = c.nullable("value")?;
        let header_count = c.u32("header count")?;
        let headers_start = c.buf;
        for _ in 0..header_count {
            let len = c.u32("header key length")? as usize;
            c.str(len, "header key")?;
            c.nullable("header value")?;
        }
        let headers = &headers_start[..headers_start.len() - c.buf.len()];
        Ok(Record {
            batch: self.batch,
            timestamp,
            key,
            value,
            header_count,
            headers,
        })
    }
}

/// One record of a batch, borrowed from the frame.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    batch: Batch<'a>,
    timestamp: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    header_count: u32,
    headers: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn topic(&self) -> &'a str {
        self.batch.topic
    }
    pub fn partition(&self) -> i32 {
        self.batch.partition
    }
    /// Milliseconds since the epoch, as the producer set it.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }
    pub fn value(&self) -> Option<&'a [u8]> {
        self.value
    }
    /// The record's headers, in order (validated when the record was read).
    pub fn headers(&self) -> impl Iterator<Item = Header<'a>> + 'a {
        let mut c = Cursor { buf: self.headers };
        (0..self.header_count).filter_map(move |_| {
            let len = c.u32("header key length").ok()? as usize;
            let key = c.str(len, "header key").ok()?;
            let value = c.nullable("header value").ok()?;
            Some(Header { key, value })
        })
    }
    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers().find(|h| h.key == key).and_then(|h| h.value)
    }
}

/// A record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
}

/// Builds a frame; the host has its own writer, this one is for plugin tests.
pub struct Writer {
    buf: Vec<u8>,
    count_at: usize,
    count: u32,
}

impl Writer {
    pub fn new(topic: &str, partition: i32) -> Self {
        let mut buf = vec![VERSION];
        buf.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(&partition.to_le_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        Writer {
            buf,
            count_at,
            count: 0,
        }
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

    pub fn record(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> &mut Self {
        self.buf.extend_from_slice(&timestamp.to_le_bytes());
        self.nullable(key);
        self.nullable(value);
        self.buf
            .extend_from_slice(&(headers.len() as u32).to_le_bytes());
        for (k, v) in headers {
            self.buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(k.as_bytes());
            self.nullable(*v);
        }
        self.count += 1;
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::new("t", 3);
        w.record(5, None, Some(b"v1"), &[("h", Some(b"x")), ("n", None)]);
        w.record(6, Some(b"k"), None, &[]);
        let buf = w.finish();
        let b = Batch::parse(&buf).unwrap();
        assert_eq!((b.topic(), b.partition(), b.count()), ("t", 3, 2));
        let recs: Vec<_> = b.records().map(Result::unwrap).collect();
        assert_eq!(recs[0].timestamp(), 5);
        assert_eq!(recs[0].key(), None);
        assert_eq!(recs[0].value(), Some(&b"v1"[..]));
        assert_eq!(recs[0].header("h"), Some(&b"x"[..]));
        assert_eq!(recs[0].headers().count(), 2);
        assert_eq!(recs[1].key(), Some(&b"k"[..]));
        assert_eq!(recs[1].value(), None);
        for cut in 0..buf.len() {
            let ok = Batch::parse(&buf[..cut]).map(|b| b.records().all(|r| r.is_ok()));
            assert!(!matches!(ok, Ok(true)), "cut at {cut} parsed fully");
        }
    }
}
