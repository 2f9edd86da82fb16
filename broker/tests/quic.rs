//! The QUIC listener (docs/quic.md): Kafka sessions on QUIC streams, reached with a quinn client
//! that pins the broker's self-signed certificate by its SHA-256 fingerprint.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use runnel::{BrokerHandle, Config};

fn quic_config(dir: &Path) -> Config {
    let mut cfg = common::test_config(dir);
    cfg.listeners.quic.enabled = true;
    cfg.listeners.quic.address = "127.0.0.1:0".parse().unwrap();
    cfg
}

/// A device connection: the client endpoint is kept alive with it.
struct Device {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

async fn connect_with(addr: SocketAddr, fingerprint: &str, alpn: &[u8]) -> anyhow::Result<Device> {
    // The device SDK's pinning client: TLS 1.3, only the certificate with this fingerprint.
    let mut tls = runnel_device::tls_client_config(&runnel_device::Trust::Fingerprint(
        fingerprint.to_string(),
    ))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(addr, "localhost")?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting).await??;
    Ok(Device {
        _endpoint: endpoint,
        conn,
    })
}

async fn connect(h: &BrokerHandle) -> Device {
    connect_with(
        h.quic_addr.expect("QUIC listener"),
        h.quic_fingerprint.as_deref().expect("fingerprint"),
        b"runnel",
    )
    .await
    .expect("QUIC connection")
}

/// One Kafka session: a bidirectional QUIC stream.
struct Session {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    correlation: i32,
}

impl Device {
    async fn session(&self) -> Session {
        let (send, recv) = self.conn.open_bi().await.expect("open a stream");
        Session {
            send,
            recv,
            correlation: 0,
        }
    }
}

impl Session {
    async fn call<R: Request>(&mut self, req: &R, version: i16) -> R::Response {
        self.correlation += 1;
        let frame = common::request_frame(req, version, self.correlation, "quic-test");
        self.send.write_all(&frame).await.expect("request sent");
        let frame = self.read_frame().await.expect("a response frame");
        common::decode_response::<R>(frame, version, self.correlation)
    }

    async fn send_frame(&mut self, body: &[u8]) -> Result<(), quinn::WriteError> {
        let mut buf = BytesMut::with_capacity(body.len() + 4);
        buf.put_i32(body.len() as i32);
        buf.put_slice(body);
        self.send.write_all(&buf).await
    }

    /// The next response frame, or None once the broker has ended the stream.
    async fn read_frame(&mut self) -> Option<Bytes> {
        let read = async {
            let mut len = [0u8; 4];
            self.recv.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
            self.recv.read_exact(&mut body).await.ok()?;
            Some(Bytes::from(body))
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("broker answers or ends the stream")
    }
}

fn name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

async fn create_topic(s: &mut Session, topic: &str) {
    let req = CreateTopicsRequest::default().with_topics(vec![
        CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    let r = s.call(&req, 5).await;
    assert_eq!(r.topics[0].error_code, 0);
}

struct Reading {
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp: i64,
    headers: Vec<(String, Vec<u8>)>,
}

fn readings(n: usize, first_ts: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            key: format!("sensor-{}", i % 3).into_bytes(),
            value: format!("{{\"t\":{}.5}}", 20 + i).into_bytes(),
            timestamp: first_ts + i as i64 * 10,
            headers: vec![
                ("unit".to_string(), b"celsius".to_vec()),
                ("bin".to_string(), vec![0, 255, i as u8]),
            ],
        })
        .collect()
}

fn batch(readings: &[Reading]) -> Bytes {
    let records: Vec<Record> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut rec = Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: r.timestamp,
                key: Some(Bytes::from(r.key.clone())),
                value: Some(Bytes::from(r.value.clone())),
                headers: Default::default(),
            };
            for (k, v) in &r.headers {
                rec.headers.insert(
                    StrBytes::from_string(k.clone()),
                    Some(Bytes::from(v.clone())),
                );
            }
            rec
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

fn produce_req(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
        ])
}

/// Produces with acks=all and returns (error code, base offset).
async fn produce(s: &mut Session, topic: &str, records: Bytes) -> (i16, i64) {
    let r = s.call(&produce_req(topic, records), 9).await;
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

async fn latest_offset(s: &mut Session, topic: &str) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ]),
        ]);
    let r = s.call(&req, 7).await;
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_and_metadata_over_a_quic_stream() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let quic_addr = broker.quic_addr.unwrap();
    let device = connect(&broker).await;
    let mut s = device.session().await;

    let v = s.call(&ApiVersionsRequest::default(), 3).await;
    assert_eq!(v.error_code, 0);
    for key in [ApiKey::Produce, ApiKey::Fetch, ApiKey::Metadata] {
        assert!(
            v.api_keys.iter().any(|k| k.api_key == key as i16),
            "{key:?} advertised"
        );
    }

    create_topic(&mut s, "telemetry").await;
    let m = s
        .call(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name("telemetry"))),
            ])),
            12,
        )
        .await;
    assert_eq!(m.brokers.len(), 1);
    // A QUIC session is told about the QUIC listener it is on.
    assert_eq!(m.brokers[0].port, quic_addr.port() as i32);
    assert_eq!(m.topics.len(), 1);
    assert_eq!(m.topics[0].error_code, 0);
    assert_eq!(m.topics[0].partitions.len(), 1);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_over_quic_is_read_byte_for_byte_by_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let device = connect(&broker).await;
    let mut s = device.session().await;
    create_topic(&mut s, "readings").await;

    let first = readings(5, 1_700_000_000_000);
    let second = readings(3, 1_700_000_100_000);
    assert_eq!(produce(&mut s, "readings", batch(&first)).await, (0, 0));
    assert_eq!(produce(&mut s, "readings", batch(&second)).await, (0, 5));
    let sent: Vec<Reading> = first.into_iter().chain(second).collect();

    let bootstrap = broker.bootstrap();
    let got = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = common::client_config(&bootstrap)
            .set("group.id", "quic-readback")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("readings", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 8 && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                got.push(m.unwrap().detach());
            }
        }
        got
    })
    .await
    .unwrap();
    assert_eq!(got.len(), sent.len());
    for (i, (m, r)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.key(), Some(&r.key[..]), "key of {i}");
        assert_eq!(m.payload(), Some(&r.value[..]), "value of {i}");
        assert_eq!(
            m.timestamp().to_millis(),
            Some(r.timestamp),
            "timestamp of {i}"
        );
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .expect("headers")
            .iter()
            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
            .collect();
        assert_eq!(headers, r.headers, "headers of {i}");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_on_one_connection_do_not_block_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let device = connect(&broker).await;
    let mut waiter = device.session().await;
    let mut producer = device.session().await;
    create_topic(&mut producer, "commands").await;

    // Stream 1 long-polls an empty partition for up to 8 s; stream 2 produces meanwhile. The
    // produce is answered while the fetch is still parked, and the append wakes the fetch.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(8000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name("commands"))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let started = Instant::now();
    let (fetched, produced) = tokio::join!(waiter.call(&fetch, 11), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = produce(&mut producer, "commands", batch(&readings(2, 1_000))).await;
        (r, started.elapsed())
    });
    let ((code, offset), produced_after) = produced;
    assert_eq!((code, offset), (0, 0));
    assert!(
        produced_after < Duration::from_secs(4),
        "produce waited {produced_after:?} behind the fetch"
    );
    let p = &fetched.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the fetch was not woken by the append"
    );

    // Many requests on both streams at once keep each stream's order.
    let (a, b) = tokio::join!(
        async {
            let mut offs = Vec::new();
            for _ in 0..20 {
                offs.push(produce(&mut waiter, "commands", batch(&readings(1, 2_000))).await);
            }
            offs
        },
        async {
            let mut offs = Vec::new();
            for _ in 0..20 {
                offs.push(produce(&mut producer, "commands", batch(&readings(1, 3_000))).await);
            }
            offs
        }
    );
    let mut all: Vec<i64> = a
        .iter()
        .chain(&b)
        .map(|&(c, o)| {
            assert_eq!(c, 0);
            o
        })
        .collect();
    assert!(a.windows(2).all(|w| w[0].1 < w[1].1));
    assert!(b.windows(2).all(|w| w[0].1 < w[1].1));
    all.sort();
    assert_eq!(all, (2..42).collect::<Vec<_>>());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_its_stream_only_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quic_config(dir.path());
    cfg.broker.max_request_bytes = 64 * 1024;
    let broker = common::start_with(cfg).await;
    let device = connect(&broker).await;
    let mut good = device.session().await;
    create_topic(&mut good, "guarded").await;

    // A produce request whose frame is over max_request_bytes.
    let mut bad = device.session().await;
    let big = readings(1, 1).into_iter().map(|mut r| {
        r.value = vec![7u8; 80 * 1024];
        r
    });
    let req = produce_req("guarded", batch(&big.collect::<Vec<_>>()));
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(1)
        .encode(&mut body, ApiKey::Produce.request_header_version(9))
        .unwrap();
    req.encode(&mut body, 9).unwrap();
    assert!(body.len() > 64 * 1024);
    // The broker may stop reading before the whole frame is sent.
    let _ = bad.send_frame(&body).await;
    assert!(bad.read_frame().await.is_none(), "the bad stream is ended");

    // The same connection, another stream and another connection all still work.
    assert_eq!(
        latest_offset(&mut good, "guarded").await,
        0,
        "nothing written"
    );
    let mut fresh = device.session().await;
    assert_eq!(
        produce(&mut fresh, "guarded", batch(&readings(1, 5))).await,
        (0, 0)
    );
    let other = connect(&broker).await;
    let mut s = other.session().await;
    assert_eq!(latest_offset(&mut s, "guarded").await, 1);

    // A size prefix that is negative is refused the same way.
    let mut negative = device.session().await;
    negative
        .send
        .write_all(&(-5i32).to_be_bytes())
        .await
        .unwrap();
    assert!(negative.read_frame().await.is_none());
    assert_eq!(latest_offset(&mut good, "guarded").await, 1);
    assert!(
        device.conn.close_reason().is_none(),
        "connection still open"
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_or_alpn_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let addr = broker.quic_addr.unwrap();
    let right = broker.quic_fingerprint.clone().unwrap();
    let wrong = runnel_device::fingerprint_of(b"some other certificate");
    assert!(connect_with(addr, &wrong, b"runnel").await.is_err());
    assert!(connect_with(addr, &right, b"h3").await.is_err());
    let ok = connect_with(addr, &right, b"runnel").await.unwrap();
    let mut s = ok.session().await;
    assert_eq!(
        s.call(&ApiVersionsRequest::default(), 0).await.error_code,
        0
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_signed_certificate_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let first = broker.quic_fingerprint.clone().unwrap();
    broker.shutdown().await;

    // The fingerprint is the SHA-256 of the certificate stored in the data dir.
    let pem = std::fs::read(dir.path().join("quic/cert.pem")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    assert_eq!(runnel_device::fingerprint_of(&der), first);
    assert_eq!(first.len(), 32 * 3 - 1);

    let broker = common::start_with(quic_config(dir.path())).await;
    assert_eq!(broker.quic_fingerprint.as_deref(), Some(first.as_str()));
    let device = connect(&broker).await;
    let mut s = device.session().await;
    assert_eq!(
        s.call(&ApiVersionsRequest::default(), 3).await.error_code,
        0
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_quic_connections() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let device = connect(&broker).await;
    let mut s = device.session().await;
    assert_eq!(
        s.call(&ApiVersionsRequest::default(), 3).await.error_code,
        0
    );
    let started = Instant::now();
    broker.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let closed = tokio::time::timeout(Duration::from_secs(5), device.conn.closed()).await;
    assert!(closed.is_ok(), "the device sees the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_pem_files_are_served_and_fingerprinted() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["gateway.local".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("gw.pem"), dir.path().join("gw.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut cfg = quic_config(&dir.path().join("data"));
    cfg.listeners.quic.cert = cert;
    cfg.listeners.quic.key = key;
    let broker = common::start_with(cfg).await;
    assert_eq!(
        broker.quic_fingerprint.as_deref(),
        Some(runnel_device::fingerprint_of(made.cert.der()).as_str())
    );
    assert!(
        !dir.path().join("data/quic").exists(),
        "no self-signed cert made"
    );
    let device = connect(&broker).await;
    let mut s = device.session().await;
    assert_eq!(
        s.call(&ApiVersionsRequest::default(), 3).await.error_code,
        0
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_refused_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quic_config(dir.path());
    cfg.broker.max_connections = 1;
    let broker = common::start_with(cfg).await;
    let first = connect(&broker).await;
    let refused = connect_with(
        broker.quic_addr.unwrap(),
        broker.quic_fingerprint.as_deref().unwrap(),
        b"runnel",
    )
    .await;
    assert!(refused.is_err(), "a second connection is refused");
    let mut s = first.session().await;
    assert_eq!(
        s.call(&ApiVersionsRequest::default(), 3).await.error_code,
        0
    );
    // A closed connection frees its slot.
    first.conn.close(0u32.into(), b"done");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let again = connect_with(
            broker.quic_addr.unwrap(),
            broker.quic_fingerprint.as_deref().unwrap(),
            b"runnel",
        )
        .await;
        if again.is_ok() || Instant::now() > deadline {
            break again;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut s = again.expect("the freed slot is usable").session().await;
    assert_eq!(
        s.call(&ApiVersionsRequest::default(), 3).await.error_code,
        0
    );
    broker.shutdown().await;
}
