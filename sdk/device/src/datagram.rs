//! Fire-and-forget readings as QUIC datagrams (docs/quic.md, "Datagrams").
//!
//! A datagram carries exactly one Kafka Produce request (v9, acks=0) without the 4-byte size
//! prefix: the request header, then the body with one topic, one partition and one record batch
//! of a single record (no producer id: a datagram may be lost or arrive twice, so it is not
//! idempotent). It must fit in one QUIC packet ([`quinn::Connection::max_datagram_size`], about
//! 1,200 bytes or more depending on the path).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::Compression;

use crate::DeviceError;
use crate::record_batch::Writer;

/// The Produce version a datagram carries.
pub(crate) const PRODUCE_VERSION: i16 = 9;

/// Encodes the datagram payload for `reading`, stamped `now` (ms) unless it has a timestamp.
pub(crate) fn encode(
    reading: &crate::Record,
    now: i64,
    client_id: &str,
) -> Result<Bytes, DeviceError> {
    let record = crate::record_batch::Out {
        key: reading.key.as_deref(),
        value: &reading.value,
        headers: &reading.headers,
        timestamp: reading.timestamp.unwrap_or(now),
    };
    let batch = crate::record_batch::encode([record], Writer::NONE, Compression::None)
        .map_err(DeviceError::Protocol)?;
    let req = ProduceRequest::default()
        .with_acks(0)
        .with_timeout_ms(0)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(reading.topic.clone())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(reading.partition)
                        .with_records(Some(batch)),
                ]),
        ]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(PRODUCE_VERSION)
        .with_correlation_id(0)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let mut out = BytesMut::with_capacity(128 + reading.value.len());
    header
        .encode(
            &mut out,
            ApiKey::Produce.request_header_version(PRODUCE_VERSION),
        )
        .map_err(|e| DeviceError::Protocol(e.to_string()))?;
    req.encode(&mut out, PRODUCE_VERSION)
        .map_err(|e| DeviceError::Protocol(e.to_string()))?;
    Ok(out.freeze())
}

/// Sends `payload` on `conn` if it fits one datagram. Waits for room in the send buffer rather
/// than dropping older datagrams.
pub(crate) async fn send(conn: &quinn::Connection, payload: Bytes) -> Result<(), DeviceError> {
    let max = conn
        .max_datagram_size()
        .ok_or_else(|| DeviceError::Datagram("the broker does not accept datagrams".into()))?;
    if payload.len() > max {
        return Err(DeviceError::DatagramTooLarge {
            size: payload.len(),
            max,
        });
    }
    conn.send_datagram_wait(payload)
        .await
        .map_err(|e| DeviceError::Datagram(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::protocol::Decodable;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn a_datagram_is_one_produce_request_with_acks_0_and_no_size_prefix() {
        let reading = crate::Record::new("readings", "21.5")
            .partition(2)
            .key("s-1")
            .header("unit", "C");
        let payload = encode(&reading, 1_700_000_000_000, "sensor-1").unwrap();
        let mut b = payload.clone();
        assert_eq!(b.get_i16(), ApiKey::Produce as i16);
        assert_eq!(b.get_i16(), PRODUCE_VERSION);
        let mut b = payload;
        let header =
            RequestHeader::decode(&mut b, ApiKey::Produce.request_header_version(9)).unwrap();
        assert_eq!(header.client_id.as_deref(), Some("sensor-1"));
        let req = ProduceRequest::decode(&mut b, 9).unwrap();
        assert!(!b.has_remaining());
        assert_eq!(req.acks, 0);
        let pd = &req.topic_data[0].partition_data[0];
        assert_eq!((&*req.topic_data[0].name.0, pd.index), ("readings", 2));
        let mut records = pd.records.clone().unwrap();
        let set = RecordBatchDecoder::decode(&mut records).unwrap();
        assert_eq!(set.records.len(), 1);
        assert_eq!(set.records[0].value.as_deref(), Some(&b"21.5"[..]));
        assert_eq!(set.records[0].key.as_deref(), Some(&b"s-1"[..]));
        assert_eq!(set.records[0].producer_id, -1);
        assert_eq!(set.records[0].timestamp, 1_700_000_000_000);
        let headers: Vec<_> = set.records[0].headers.iter().collect();
        assert_eq!(headers.len(), 1);
        assert_eq!(
            (headers[0].0.as_str(), headers[0].1.as_deref()),
            ("unit", Some(&b"C"[..]))
        );
    }
}
