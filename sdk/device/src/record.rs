//! [`Record`]: a record to produce with more than a key and a value (headers, a partition, a
//! timestamp of its own).

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;

/// A record for [`crate::Device::send_record`] and [`crate::Device::enqueue_record`]: a value
/// with, optionally, a key, Kafka record headers, a partition (0 unless set) and a timestamp
/// (the time it is queued unless set).
///
/// ```
/// use runnel_device::Record;
///
/// let reading = Record::new("readings", br#"{"temp":21.5}"#)
///     .key("sensor-7")
///     .header("content-type", "application/json")
///     .header("unit", "celsius")
///     .null_header("calibrated")
///     .timestamp(1_764_800_000_000); // when it was measured, in ms since the Unix epoch
/// assert_eq!(reading.headers().len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Bytes,
    pub(crate) headers: Vec<(StrBytes, Option<Bytes>)>,
    pub(crate) timestamp: Option<i64>,
}

impl Record {
    /// A record for partition 0 of `topic` with this value.
    pub fn new(topic: impl Into<String>, value: impl AsRef<[u8]>) -> Record {
        Record {
            topic: topic.into(),
            partition: 0,
            key: None,
            value: Bytes::copy_from_slice(value.as_ref()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// Sets the record's key.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Record {
        self.key = Some(Bytes::copy_from_slice(key.as_ref()));
        self
    }

    /// Sends the record to this partition instead of partition 0.
    pub fn partition(mut self, partition: i32) -> Record {
        self.partition = partition;
        self
    }

    /// Adds a Kafka record header after those added before. As in Kafka, a name may be given
    /// more than once: consumers get every value, in order.
    pub fn header(self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Record {
        self.add_header(key.into(), Some(Bytes::copy_from_slice(value.as_ref())))
    }

    /// Adds a Kafka record header with a null value (Kafka tells it apart from an empty one).
    pub fn null_header(self, key: impl Into<String>) -> Record {
        self.add_header(key.into(), None)
    }

    fn add_header(mut self, key: String, value: Option<Bytes>) -> Record {
        self.headers.push((StrBytes::from_string(key), value));
        self
    }

    /// Sets the record's timestamp (ms since the Unix epoch), e.g. when the reading was
    /// taken rather than when it was queued. It must not be negative (as in Kafka's clients):
    /// sending the record fails with [`crate::DeviceError::InvalidRecord`].
    pub fn timestamp(mut self, ms: i64) -> Record {
        self.timestamp = Some(ms);
        self
    }

    /// Refuses what Kafka's clients refuse.
    pub(crate) fn check(&self) -> Result<(), crate::DeviceError> {
        crate::check_topic_name(&self.topic)?;
        match self.timestamp {
            Some(ms) if ms < 0 => Err(crate::DeviceError::InvalidRecord(format!(
                "timestamp {ms} is negative (ms since the Unix epoch expected)"
            ))),
            _ => Ok(()),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The headers, in the order they were added (`None`: a null value).
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_given_again_is_kept_beside_the_first_in_order() {
        let r = Record::new("t", "v")
            .header("a", "1")
            .header("b", "2")
            .header("a", "3")
            .null_header("b");
        let got: Vec<_> = r.headers().collect();
        assert_eq!(
            got,
            [
                ("a", Some(&b"1"[..])),
                ("b", Some(&b"2"[..])),
                ("a", Some(&b"3"[..])),
                ("b", None)
            ]
        );
    }

    #[test]
    fn a_negative_timestamp_is_refused() {
        assert!(Record::new("t", "v").timestamp(0).check().is_ok());
        let err = Record::new("t", "v").timestamp(-5).check().unwrap_err();
        assert!(err.to_string().contains("-5 is negative"), "{err}");
    }

    #[test]
    fn defaults_are_partition_zero_no_key_and_the_queueing_time() {
        let r = Record::new("readings", b"x");
        assert_eq!(
            (r.topic(), r.partition, r.key.clone(), r.timestamp),
            ("readings", 0, None, None)
        );
    }
}
