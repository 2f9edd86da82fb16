//! Bad input harms only its own connection and gets the error Kafka gives.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::RawClient;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;

fn batch(n: usize, value_len: usize) -> Bytes {
    let value = vec![b'v'; value_len];
    let records: Vec<_> = (0..n)
        .map(|i| {
            common::record(
                i as i64,
                Some(format!("k{i}").as_bytes()),
                &value,
                1_700_000_000_000,
            )
        })
        .collect();
    common::encode_batch(&records, Compression::None)
}

fn produce(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    common::produce_request(topic, partition, 1, records)
}

fn error_of(resp: &kafka_protocol::messages::ProduceResponse) -> i16 {
    resp.responses[0].partition_responses[0].error_code
}

/// A broker whose batches may be 10,000 bytes at most, with `topic` created through Metadata
/// auto-creation and a raw client connected.
async fn small_batch_broker(
    topic: &'static str,
) -> (tempfile::TempDir, runnel::BrokerHandle, String, RawClient) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.max_message_bytes = 10_000;
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let mut c = RawClient::connect(&addr).await;
    auto_create(&mut c, topic).await;
    (dir, broker, addr, c)
}

/// Creates `topic` through Metadata auto-creation.
async fn auto_create(c: &mut RawClient, topic: &'static str) {
    let md = c
        .call(
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_static_str(topic)))),
                ]))
                .with_allow_auto_topic_creation(true),
            9,
        )
        .await;
    assert_eq!(md.topics[0].error_code, 0);
}

async fn healthy(addr: &str) {
    let mut c = RawClient::connect(addr).await;
    let r = c.call(&ApiVersionsRequest::default(), 0).await;
    assert_eq!(r.error_code, 0);
    assert!(
        r.api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16)
    );
}

#[tokio::test]
async fn oversized_negative_and_garbage_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.max_request_bytes = 64 * 1024;
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let mut bystander = RawClient::connect(&addr).await;

    // One byte over the limit: closed before the body is sent.
    let mut big = RawClient::connect(&addr).await;
    big.send_raw(&(64 * 1024 + 1i32).to_be_bytes()).await;
    assert!(
        big.is_closed().await,
        "oversized frame closes the connection"
    );

    // Exactly at the limit is read (and then rejected as a malformed request, not as too big).
    let mut at_limit = RawClient::connect(&addr).await;
    let mut frame = BytesMut::new();
    frame.put_i32(64 * 1024);
    frame.put_i16(ApiKey::Metadata as i16);
    frame.put_i16(9);
    frame.put_i32(1);
    frame.put_bytes(0xff, 64 * 1024 - 8);
    at_limit.send_raw(&frame).await;
    assert!(at_limit.is_closed().await);

    let mut negative = RawClient::connect(&addr).await;
    negative.send_raw(&(-1i32).to_be_bytes()).await;
    assert!(
        negative.is_closed().await,
        "negative size closes the connection"
    );

    let mut unknown = RawClient::connect(&addr).await;
    let mut body = BytesMut::new();
    body.put_i16(31_000);
    body.put_i16(0);
    body.put_i32(9);
    body.put_i16(-1);
    unknown.send_frame(&body).await;
    assert!(
        unknown.is_closed().await,
        "unknown API key closes the connection, as in Kafka"
    );

    let mut truncated = RawClient::connect(&addr).await;
    truncated.send_raw(&[0, 0, 0, 50, 0, 3]).await;
    drop(truncated);

    // The bystander and new connections are unaffected.
    let r = bystander.call(&MetadataRequest::default(), 9).await;
    assert_eq!(r.brokers.len(), 1);
    healthy(&addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unsupported_api_versions_version_gets_a_v0_error_reply() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    // ApiVersions v127 with a v2 request header (KIP-511): reply in v0 with UNSUPPORTED_VERSION.
    let mut body = BytesMut::new();
    body.put_i16(ApiKey::ApiVersions as i16);
    body.put_i16(127);
    body.put_i32(77);
    body.put_i16(4);
    body.put_slice(b"test");
    body.put_u8(0); // tagged fields
    c.send_frame(&body).await;
    let mut frame = c.read_frame().await.expect("a reply, not a closed socket");
    assert_eq!(common::correlation_of(&mut frame), 77);
    let r = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(r.error_code, 35);
    let produce = r
        .api_keys
        .iter()
        .find(|k| k.api_key == 0)
        .expect("produce listed");
    assert_eq!(
        produce.min_version, 0,
        "produce advertised from v0 (KAFKA-18659)"
    );
    // The connection stays usable.
    let r = c.call(&ApiVersionsRequest::default(), 3).await;
    assert_eq!(r.error_code, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn legacy_produce_gets_unsupported_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let mut body = BytesMut::new();
    body.put_i16(0);
    body.put_i16(2);
    body.put_i32(5);
    body.put_i16(-1);
    body.put_i16(1); // acks
    body.put_i32(1000);
    body.put_i32(1);
    body.put_i16(1);
    body.put_slice(b"t");
    body.put_i32(1);
    body.put_i32(0);
    body.put_i32(0);
    c.send_frame(&body).await;
    let frame = c.read_frame().await.expect("reply");
    // correlation(4) topics(4) name(2+1) parts(4) partition(4) error(2)
    assert_eq!(i16::from_be_bytes([frame[19], frame[20]]), 35);
    // With acks=0 nobody can be answered: the connection is closed, as Kafka does.
    body[11] = 0; // acks (after key, version, correlation and client id)
    c.send_frame(&body).await;
    assert!(c.is_closed().await, "a v2 produce with acks=0 closes");
    broker.shutdown().await;
}

/// Kafka closes the connection of a produce with acks=0 that it refused, since it has no
/// other way to tell the producer; one it took goes on without a response.
#[tokio::test]
async fn a_refused_produce_with_acks_0_closes_its_connection() {
    let (_dir, broker, addr, mut c) = small_batch_broker("quiet").await;
    let unacknowledged = |topic: &str, value_len: usize| {
        let req = common::produce_request(topic, 0, 0, batch(2, value_len));
        common::request_frame(&req, 9, 100, "raw-test")
    };
    c.send_raw(&unacknowledged("quiet", 10)).await;
    let r = c.call(&ApiVersionsRequest::default(), 3).await;
    assert_eq!(
        r.error_code, 0,
        "an accepted acks=0 produce keeps the connection"
    );

    c.send_raw(&unacknowledged("quiet", 6_000)).await;
    assert!(c.is_closed().await, "a batch over max.message.bytes closes");
    let mut c = RawClient::connect(&addr).await;
    c.send_raw(&unacknowledged("no-such-topic", 10)).await;
    assert!(c.is_closed().await, "an unknown topic closes");

    let mut c = RawClient::connect(&addr).await;
    let r = c.call(&produce("quiet", 0, batch(1, 10)), 9).await;
    assert_eq!(error_of(&r), 0);
    assert_eq!(
        r.responses[0].partition_responses[0].base_offset, 2,
        "only the accepted batch's two records were written before"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn produce_errors_have_their_kafka_codes_and_write_nothing() {
    let (_dir, broker, _addr, mut c) = small_batch_broker("errs").await;

    let r = c.call(&produce("no-such-topic", 0, batch(1, 10)), 9).await;
    assert_eq!(error_of(&r), 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let r = c.call(&produce("errs", 7, batch(1, 10)), 9).await;
    assert_eq!(error_of(&r), 3, "wrong partition");

    let mut corrupt = BytesMut::from(&batch(3, 10)[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let r = c.call(&produce("errs", 0, corrupt.freeze()), 9).await;
    assert_eq!(error_of(&r), 2, "CORRUPT_MESSAGE for a bad CRC");

    for acks in [2, 3, -2] {
        let r = c
            .call(&produce("errs", 0, batch(1, 10)).with_acks(acks), 9)
            .await;
        assert_eq!(error_of(&r), 21, "INVALID_REQUIRED_ACKS for acks={acks}");
    }

    let r = c.call(&produce("errs", 0, batch(1, 10_001)), 9).await;
    assert_eq!(error_of(&r), 10, "MESSAGE_TOO_LARGE");
    let r = c.call(&produce("errs", 0, batch(1, 9_000)), 9).await;
    assert_eq!(
        error_of(&r),
        0,
        "a batch under max.message.bytes is accepted"
    );
    assert_eq!(
        r.responses[0].partition_responses[0].base_offset, 0,
        "nothing was written before"
    );

    // Two batches for one partition: INVALID_RECORD as Kafka's LogValidator, nothing written.
    let two = [batch(1, 10), batch(2, 10)].concat();
    let r = c.call(&produce("errs", 0, two.into()), 9).await;
    assert_eq!(error_of(&r), 87, "INVALID_RECORD for two batches");
    let why = &r.responses[0].partition_responses[0].error_message;
    assert!(
        why.as_ref().is_some_and(|m| m.contains("holds 2")),
        "{why:?}"
    );

    let r = c.call(&produce("errs", 0, batch(5, 10)), 9).await;
    assert_eq!(error_of(&r), 0);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 1);

    // Within max.message.bytes but larger than the topic's segment.bytes: refused, as Kafka
    // refuses it, rather than stored in a segment of its own.
    let configs = [("segment.bytes".to_string(), "4096".to_string())].into();
    let now = runnel::broker::now_ms();
    let catalog = &broker.broker.catalog;
    catalog
        .create_topic("small-segments", 1, 1, configs, false, now)
        .unwrap();
    let r = c
        .call(&produce("small-segments", 0, batch(1, 5_000)), 9)
        .await;
    assert_eq!(error_of(&r), 18, "RECORD_LIST_TOO_LARGE");
    let r = c
        .call(&produce("small-segments", 0, batch(1, 3_000)), 9)
        .await;
    assert_eq!(error_of(&r), 0);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 0);

    // Each refused partition is counted, the unknown ones too: 2 unknown, 1 corrupt, 3 bad
    // acks, 1 too large, 1 of two batches, 1 larger than a segment.
    let metrics = broker.broker.metrics.render(&broker.broker);
    assert!(
        metrics
            .lines()
            .any(|l| l == "runnel_produce_errors_total 9"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("produce_errors"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_huge_array_length_in_a_small_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    for (version, body) in [
        // Metadata v4 (non-flexible): topics array of i32::MAX entries, then nothing.
        (4i16, vec![0x7f, 0xff, 0xff, 0xff, 1]),
        // Metadata v9 (flexible): compact array length as a varint near u32::MAX.
        (9i16, vec![0xfe, 0xff, 0xff, 0xff, 0x0f, 1, 0, 0]),
    ] {
        let mut c = RawClient::connect(&addr).await;
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Metadata as i16);
        frame.put_i16(version);
        frame.put_i32(1);
        frame.put_i16(-1); // null client id
        if version >= 9 {
            frame.put_u8(0); // header tagged fields
        }
        frame.put_slice(&body);
        c.send_frame(&frame).await;
        assert!(
            c.is_closed().await,
            "v{version}: the bad request closes its connection"
        );
    }
    healthy(&addr).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_for_every_advertised_api_and_version_never_take_the_broker_down() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut c = RawClient::connect(&addr).await;
    let versions = c.call(&ApiVersionsRequest::default(), 3).await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sent = 0;
    for api in &versions.api_keys {
        for version in api.min_version..=api.max_version {
            let key = ApiKey::try_from(api.api_key).unwrap();
            for _ in 0..6 {
                let mut frame = BytesMut::new();
                kafka_protocol::messages::RequestHeader::default()
                    .with_request_api_key(api.api_key)
                    .with_request_api_version(version)
                    .with_correlation_id(1)
                    .encode(&mut frame, key.request_header_version(version))
                    .unwrap();
                let len = (next() % 64) as usize;
                for _ in 0..len {
                    // Mostly small bytes and 0xff, the values that steer length prefixes.
                    let b = match next() % 4 {
                        0 => 0xff,
                        1 => 0x7f,
                        _ => (next() % 8) as u8,
                    };
                    frame.put_u8(b);
                }
                let mut conn = RawClient::connect(&addr).await;
                conn.send_frame(&frame).await;
                // An answer, a closed connection, or a legitimate wait (a long-poll fetch, a join
                // waiting for its group) are all fine; a dead broker is not.
                let _ = tokio::time::timeout(Duration::from_millis(300), conn.read_frame()).await;
                sent += 1;
            }
        }
    }
    assert!(sent > 500, "{sent} frames");
    healthy(&addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn batches_whose_records_do_not_decode_are_refused_and_readers_go_on() {
    let (_dir, broker, addr, mut c) = small_batch_broker("poison").await;

    let good = |i: i64| {
        let rec = common::record(
            0,
            Some(b"k"),
            format!("good-{i}").as_bytes(),
            1_700_000_000_000,
        );
        common::encode_batch(&[rec], Compression::Gzip)
    };
    let r = c.call(&produce("poison", 0, good(0)), 9).await;
    assert_eq!(error_of(&r), 0);

    let plain = batch(1, 10);
    let two_gzipped = {
        let recs: Vec<_> = (0..2)
            .map(|i| common::record(i, Some(b"k"), b"v", 1_700_000_000_000))
            .collect();
        common::encode_batch(&recs, Compression::None)
    };
    // The records of `two_gzipped`, gzipped, under a header that says 3.
    let mut count_lies =
        common::with_records(&two_gzipped, 1, &common::gzip(&two_gzipped[61..])).to_vec();
    count_lies[57..61].copy_from_slice(&3i32.to_be_bytes());
    count_lies[23..27].copy_from_slice(&2i32.to_be_bytes());
    let crc = crc32c::crc32c(&count_lies[21..]);
    count_lies[17..21].copy_from_slice(&crc.to_be_bytes());
    // One record whose value length is -5 while the record's own length still fits.
    let negative_value = [22u8, 0, 0, 0, 2, b'k', 9, b'v', b'v', b'v', b'v', 0];
    // 1 MiB of one byte gzips to about 1 KiB: far past 16 x max.message.bytes once inflated.
    let bomb = common::one_record(&vec![b'x'; 1 << 20]);

    let cases: Vec<(&str, Bytes, i16)> = vec![
        (
            "gzip that is not gzip",
            common::with_records(&plain, 1, b"not gzip at all, nor anything"),
            2,
        ),
        (
            "snappy that is not snappy",
            common::with_records(&plain, 2, b"\x0a\xff\xff garbage"),
            2,
        ),
        (
            "lz4 that is not lz4",
            common::with_records(&plain, 3, b"not an lz4 frame"),
            2,
        ),
        (
            "zstd that is not zstd",
            common::with_records(&plain, 4, b"not a zstd frame"),
            2,
        ),
        ("codec 7", common::with_records(&plain, 7, &plain[61..]), 2),
        (
            "a value length of -5",
            common::with_records(&plain, 0, &negative_value),
            2,
        ),
        (
            "recordCount 3 over 2 gzipped records",
            Bytes::from(count_lies),
            2,
        ),
        (
            "records inflating past the bound",
            common::with_records(&plain, 1, &common::gzip(&bomb)),
            87,
        ),
    ];
    for (what, records, code) in cases {
        let r = c.call(&produce("poison", 0, records), 9).await;
        assert_eq!(error_of(&r), code, "{what}");
        let message = r.responses[0].partition_responses[0]
            .error_message
            .as_deref()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{what}: the refusal says why");
    }
    let r = c.call(&produce("poison", 0, good(1)), 9).await;
    assert_eq!(error_of(&r), 0);
    assert_eq!(
        r.responses[0].partition_responses[0].base_offset, 1,
        "nothing refused took an offset"
    );

    // librdkafka reads both good records, one after the other.
    let bootstrap = addr.clone();
    let values = tokio::task::spawn_blocking(move || {
        use rdkafka::Message;
        let consumer = common::reader(&bootstrap, "poison");
        let mut values = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while values.len() < 2 && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => values.push((m.offset(), m.payload().unwrap_or_default().to_vec())),
                Some(Err(e)) => panic!("the reader failed: {e}"),
                None => {}
            }
        }
        values
    })
    .await
    .unwrap();
    assert_eq!(
        values,
        vec![(0, b"good-0".to_vec()), (1, b"good-1".to_vec())]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_connections_max_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.connections_max_idle = Duration::from_secs(1);
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let mut silent = RawClient::connect(&addr).await;
    // Half a frame, then nothing: it holds a slot no longer than the idle limit either.
    let mut stalled = RawClient::connect(&addr).await;
    stalled.send_raw(&[0, 0, 0, 40, 0, 18]).await;
    let mut busy = RawClient::connect(&addr).await;
    let started = std::time::Instant::now();
    // Requests every 300 ms keep a connection open past the limit.
    while started.elapsed() < Duration::from_millis(2500) {
        let r = busy.call(&ApiVersionsRequest::default(), 0).await;
        assert_eq!(r.error_code, 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(silent.is_closed().await, "the silent connection was closed");
    assert!(
        stalled.is_closed().await,
        "the stalled connection was closed"
    );
    healthy(&addr).await;
    broker.shutdown().await;
}

/// A Fetch of `topic`-0 from offset 0 that waits up to `max_wait_ms` for a byte and takes up
/// to `max_bytes`.
fn fetch_from_start(
    topic: &'static str,
    max_wait_ms: i32,
    max_bytes: i32,
) -> kafka_protocol::messages::FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    kafka_protocol::messages::FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(kafka_protocol::messages::TopicName(
                    StrBytes::from_static_str(topic),
                ))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(max_bytes),
                ]),
        ])
}

/// A long-polling fetch that waits longer than the idle limit is answered, and its connection
/// serves the client's next request: the limit counts from the answer.
#[tokio::test]
async fn a_long_poll_longer_than_the_idle_limit_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.connections_max_idle = Duration::from_secs(1);
    let broker = common::start_with(cfg).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    auto_create(&mut c, "quiet").await;
    let fetch = fetch_from_start("quiet", 1500, 1 << 20);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = c.call(&fetch, 11).await;
        assert_eq!(r.responses[0].partitions[0].error_code, 0);
        assert!(started.elapsed() >= Duration::from_millis(1400));
        let r = c.call(&ApiVersionsRequest::default(), 0).await;
        assert_eq!(r.error_code, 0);
    }
    broker.shutdown().await;
}

/// The idle limit counts the broker's bytes too: a client that reads one large response slowly,
/// for longer than the limit, keeps its connection (as with Kafka's `connections.max.idle.ms`).
#[tokio::test]
async fn a_slow_download_is_not_idle_and_a_client_that_stops_reading_is_given_up() {
    use tokio::io::AsyncReadExt;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.connections_max_idle = Duration::from_secs(2);
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let mut c = RawClient::connect(&addr).await;
    auto_create(&mut c, "big").await;
    // 16 MiB in 20 batches of 800 KiB.
    for _ in 0..20 {
        let r = c.call(&produce("big", 0, batch(8, 100 << 10)), 9).await;
        assert_eq!(error_of(&r), 0);
    }
    let fetch = fetch_from_start("big", 0, 64 << 20);

    // A client with a small receive window, reading 1 MiB every 200 ms: over 3 s for the
    // response, more than the idle limit, with no byte sent meanwhile. (The kernel's buffers
    // take the last few MiB early; the broker's last write is still well inside the limit of
    // the client's next request.)
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 << 10).unwrap();
    let mut slow = socket.connect(addr.parse().unwrap()).await.unwrap();
    let frame = common::request_frame(&fetch, 11, 1, "slow");
    tokio::io::AsyncWriteExt::write_all(&mut slow, &frame)
        .await
        .unwrap();
    let mut size = [0u8; 4];
    slow.read_exact(&mut size).await.unwrap();
    let mut left = i32::from_be_bytes(size) as usize;
    assert!(left > 15 << 20, "the response holds the 16 MiB");
    let started = std::time::Instant::now();
    let mut chunk = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(chunk.len());
        slow.read_exact(&mut chunk[..n]).await.unwrap();
        left -= n;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(3));
    let mut slow = RawClient::from_stream(slow);
    let r = slow.call(&ApiVersionsRequest::default(), 0).await;
    assert_eq!(
        r.error_code, 0,
        "the connection is still open after the download"
    );

    // A client that never reads its response is given up after the limit: its connection
    // does not hold a slot for ever.
    let open = || {
        broker
            .broker
            .metrics
            .connections_open
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    drop((c, slow));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "closed clients' connections end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = 0;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 << 10).unwrap();
    let mut stalled = socket.connect(addr.parse().unwrap()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &frame)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while open() == before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open(), before + 1, "the stalled connection is served");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "a connection whose client reads nothing is never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stalled);
    broker.shutdown().await;
}

/// A small read request naming one topic, resource or group many times is answered once for
/// it (Kafka treats these lists as sets): its answer is not thousands of times its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_repeated_in_a_read_request_is_answered_once() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{
        ConsumerGroupDescribeRequest, DescribeConfigsRequest, DescribeGroupsRequest,
        DescribeProducersRequest, GroupId, OffsetFetchRequest,
        offset_fetch_request::OffsetFetchRequestGroup,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    c.create_topic("wide").await;
    let name = |n: &str| StrBytes::from_string(n.to_string());
    const TIMES: usize = 5_000;

    let metadata = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(Some(
            (0..TIMES)
                .map(|i| {
                    MetadataRequestTopic::default().with_name(Some(TopicName(name(
                        if i % 2 == 0 { "wide" } else { "absent" },
                    ))))
                })
                .collect(),
        ));
    let r = c.call(&metadata, 9).await;
    assert_eq!(r.topics.len(), 2, "answered once a name");
    let answered: Vec<_> = r
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().as_str(), t.error_code))
        .collect();
    assert_eq!(answered, [("wide", 0), ("absent", 3)]);

    let describe = DescribeConfigsRequest::default().with_resources(
        (0..TIMES)
            .map(|_| {
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("wide"))
                    .with_configuration_keys(None)
            })
            .collect(),
    );
    let r = c.call(&describe, 4).await;
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].error_code, 0);
    assert!(!r.results[0].configs.is_empty());
    // The same resource asking for other keys is another question, answered as well.
    let keys = |k: &str| {
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(name("wide"))
            .with_configuration_keys(Some(vec![name(k)]))
    };
    let r = c
        .call(
            &DescribeConfigsRequest::default().with_resources(vec![
                keys("retention.ms"),
                keys("segment.bytes"),
                keys("retention.ms"),
            ]),
            4,
        )
        .await;
    let answered: Vec<Vec<&str>> = r
        .results
        .iter()
        .map(|r| r.configs.iter().map(|c| c.name.as_str()).collect())
        .collect();
    assert_eq!(answered, [["retention.ms"], ["segment.bytes"]]);

    let producers = DescribeProducersRequest::default().with_topics(vec![
        TopicRequest::default()
            .with_name(TopicName(name("wide")))
            .with_partition_indexes(
                vec![0; TIMES]
            );
        3
    ]);
    let r = c.call(&producers, 0).await;
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions.len(), 1);

    let group = || GroupId(name("watchers"));
    let r = c
        .call(
            &DescribeGroupsRequest::default().with_groups((0..TIMES).map(|_| group()).collect()),
            5,
        )
        .await;
    assert_eq!(r.groups.len(), 1);
    let r = c
        .call(
            &ConsumerGroupDescribeRequest::default()
                .with_group_ids((0..TIMES).map(|_| group()).collect()),
            0,
        )
        .await;
    assert_eq!(r.groups.len(), 1);
    let r = c
        .call(
            &OffsetFetchRequest::default().with_groups(
                (0..TIMES)
                    .map(|_| OffsetFetchRequestGroup::default().with_group_id(group()))
                    .collect(),
            ),
            8,
        )
        .await;
    assert_eq!(r.groups.len(), 1);
    healthy(&broker.bootstrap()).await;
    broker.shutdown().await;
}

/// Large requests being read hold at most `broker.queued_max_request_bytes` together (Kafka's
/// `queued.max.request.bytes`): one more waits, unread, until another is done or its client
/// goes, while small requests are served as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_being_read_share_the_brokers_request_memory() {
    use kafka_protocol::messages::ApiVersionsRequest;
    const SIZE: usize = 3 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.max_request_bytes = 4 << 20;
    cfg.broker.queued_max_request_bytes = 7 << 20;
    cfg.listeners.admin.enabled = true;
    cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let memory = broker.broker.request_memory.clone();
    let held = || memory.used();
    let wait_for = |what: &'static str, want: usize| {
        let memory = memory.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while memory.used() != want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {} bytes held, not {want}",
                    memory.used()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Three clients start a 3 MiB produce request each and send a third of it.
    let mut start = Vec::new();
    start.extend_from_slice(&(SIZE as i32).to_be_bytes());
    start.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 1]);
    start.resize(4 + (1 << 20), 0);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = RawClient::connect(&addr).await;
        c.send_raw(&start).await;
        clients.push(c);
    }
    // Two fit; the third waits.
    wait_for("two large requests", 2 * SIZE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held(), 2 * SIZE);
    // Small requests are served meanwhile.
    let mut small = RawClient::connect(&addr).await;
    let versions = small.call(&ApiVersionsRequest::default(), 3).await;
    assert_eq!(versions.error_code, 0);
    // One client goes: the third request takes its room; all gone, nothing is held.
    assert_eq!(memory.short(), 0);
    drop(clients.remove(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while memory.short() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the third request still waits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held(), 2 * SIZE);
    drop(clients);
    wait_for("none", 0).await;
    let metrics = common::http_get(broker.admin_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("runnel_request_memory_waits_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("request_memory"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    broker.shutdown().await;
}
