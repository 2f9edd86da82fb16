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
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, Request, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
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
    /// Whether the session is alive: ApiVersions gets an answer without error.
    async fn answers(&mut self) -> bool {
        self.call(&ApiVersionsRequest::default(), 3)
            .await
            .error_code
            == 0
    }

    async fn call<R: Request>(&mut self, req: &R, version: i16) -> R::Response {
        self.call_within(req, version, Duration::from_secs(10))
            .await
    }

    /// [`Session::call`], waiting up to `wait` for the answer (for long polls).
    async fn call_within<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        wait: Duration,
    ) -> R::Response {
        self.correlation += 1;
        let frame = common::request_frame(req, version, self.correlation, "quic-test");
        self.send.write_all(&frame).await.expect("request sent");
        let frame = self
            .read_frame_within(wait)
            .await
            .expect("a response frame");
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
        self.read_frame_within(Duration::from_secs(10)).await
    }

    /// [`Session::read_frame`], waiting up to `wait`.
    async fn read_frame_within(&mut self, wait: Duration) -> Option<Bytes> {
        let read = async {
            let mut len = [0u8; 4];
            self.recv.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
            self.recv.read_exact(&mut body).await.ok()?;
            Some(Bytes::from(body))
        };
        tokio::time::timeout(wait, read)
            .await
            .expect("broker answers or ends the stream")
    }
}

/// The STOP_SENDING code the broker ended the session's request side with, if it did.
async fn stop_code(s: &mut Session) -> Option<u32> {
    let stopped = tokio::time::timeout(Duration::from_secs(5), s.send.stopped())
        .await
        .expect("the broker stops the stream");
    stopped.ok().flatten().map(|c| c.into_inner() as u32)
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
                offset: i as i64,
                sequence: i as i32,
                ..runnel::storage::plain_record(
                    r.timestamp,
                    Some(Bytes::from(r.key.clone())),
                    Some(Bytes::from(r.value.clone())),
                )
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
    common::produce_request(topic, 0, -1, records)
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

    // Stream 1 long-polls an empty partition for up to 30 s; stream 2 produces meanwhile. The
    // produce is answered while the fetch is still parked, and the append wakes the fetch.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(30_000)
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
    let (fetched, produced) = tokio::join!(
        waiter.call_within(&fetch, 11, Duration::from_secs(40)),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = produce(&mut producer, "commands", batch(&readings(2, 1_000))).await;
            (r, started.elapsed())
        }
    );
    let ((code, offset), produced_after) = produced;
    assert_eq!((code, offset), (0, 0));
    assert!(
        produced_after < Duration::from_secs(10),
        "produce waited {produced_after:?} behind the fetch"
    );
    let p = &fetched.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the fetch was not woken by the append: answered after {:?}",
        started.elapsed()
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
    // STOP_SENDING says why: code 1, too large (so a device can split its batch).
    assert_eq!(
        stop_code(&mut bad).await,
        Some(runnel::net::quic::STOP_TOO_LARGE)
    );

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
    assert_eq!(
        stop_code(&mut negative).await,
        Some(runnel::net::quic::STOP_MALFORMED)
    );
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
    assert!(s.answers().await);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_quic_connections() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let device = connect(&broker).await;
    let mut s = device.session().await;
    assert!(s.answers().await);
    // Connected, no stream open.
    let idle = connect(&broker).await;
    // The broker's side of the handshake done for both (a connect returns once the device's
    // side is): a close before it can carry no reason (RFC 9000, 10.2.3).
    let open = || {
        broker
            .broker
            .metrics
            .quic_connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while open() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        open(),
        2,
        "both connections established on the broker's side"
    );
    let started = Instant::now();
    broker.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // Both see the close, with why.
    for d in [&device, &idle] {
        let closed = tokio::time::timeout(Duration::from_secs(5), d.conn.closed())
            .await
            .expect("the device sees the close");
        let quinn::ConnectionError::ApplicationClosed(close) = closed else {
            panic!("closed by the broker with a reason: {closed:?}");
        };
        assert_eq!(&close.reason[..], b"broker shutting down");
    }
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
    // The data dir holds only the endpoint's keys (reset.key), no self-signed certificate.
    assert!(
        !dir.path().join("data/quic/cert.pem").exists()
            && !dir.path().join("data/quic/key.pem").exists(),
        "no self-signed cert made"
    );
    assert!(dir.path().join("data/quic/reset.key").exists());
    let device = connect(&broker).await;
    let mut s = device.session().await;
    assert!(s.answers().await);
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
    // The device SDK says why.
    let err = runnel_device::Device::connect(device_config(&broker))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("max_connections"), "{err}");
    let mut s = first.session().await;
    assert!(s.answers().await);
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
    assert!(s.answers().await);
    broker.shutdown().await;
}

/// connection_creation_rate on the address (KIP-612) holds QUIC connections too: each
/// connection proves its address with a retry first, and those over the rate are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_addresss_rate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let quotas = &broker.broker.client_quotas;
    let one_a_second = |value: Option<f64>| {
        let local = runnel::client_quotas::Entity::from_components([("ip", Some("127.0.0.1"))]);
        let change = (
            runnel::client_quotas::QuotaKey::ConnectionCreationRate,
            value,
        );
        quotas.alter(&[(local.unwrap(), vec![change])]).unwrap();
    };
    one_a_second(Some(1.0));
    let try_connect = || {
        connect_with(
            broker.quic_addr.unwrap(),
            broker.quic_fingerprint.as_deref().unwrap(),
            b"runnel",
        )
    };
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        match try_connect().await {
            Ok(device) => kept.push(device),
            Err(_) => refused += 1,
        }
    }
    // A full bucket (1) lets one through and one more while not in debt.
    assert!(
        (1..=2).contains(&kept.len()),
        "{} of 4 connected",
        kept.len()
    );
    assert!(refused >= 2, "{refused} refused");
    assert!(count(&broker.broker.metrics.client_quota_throttled) >= 2);
    // The connections it let in work; once the debt is paid another one gets in.
    let mut s = kept[0].session().await;
    assert!(s.answers().await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(try_connect().await.is_ok());
    one_a_second(None);
    for _ in 0..4 {
        assert!(try_connect().await.is_ok(), "no quota, no refusal");
    }
    broker.shutdown().await;
}

// ---- idle timeout, migration, identity, datagrams, 0-RTT ----

/// Connects with a raw quinn client whose transport is `transport` (keep-alives, idle timeout).
async fn connect_with_transport(h: &BrokerHandle, transport: quinn::TransportConfig) -> Device {
    let tls = runnel_device::tls_client_config(&runnel_device::Trust::Fingerprint(
        h.quic_fingerprint.clone().unwrap(),
    ))
    .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let connecting = endpoint.connect(h.quic_addr.unwrap(), "localhost").unwrap();
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .unwrap()
        .unwrap();
    Device {
        _endpoint: endpoint,
        conn,
    }
}

/// The values of partition 0 of `topic`, read with librdkafka until `want` have come, then for
/// another half second to catch any extra.
async fn read_values(h: &BrokerHandle, topic: &str, want: usize) -> Vec<Vec<u8>> {
    let bootstrap = h.bootstrap();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer = common::reader(&bootstrap, &topic);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < want && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                got.push(m.unwrap().payload().unwrap_or_default().to_vec());
            }
        }
        let extra_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < extra_until {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                got.push(m.unwrap().payload().unwrap_or_default().to_vec());
            }
        }
        got
    })
    .await
    .unwrap()
}

fn device_config(h: &BrokerHandle) -> runnel_device::DeviceConfig {
    let mut cfg = runnel_device::DeviceConfig::new(
        h.quic_addr.unwrap(),
        runnel_device::Trust::Fingerprint(h.quic_fingerprint.clone().unwrap()),
    );
    cfg.linger = Duration::from_millis(2);
    cfg
}

/// Connects a device with `identity`.
async fn connect_as(
    h: &BrokerHandle,
    identity: runnel_device::Identity,
) -> Result<runnel_device::Device, runnel_device::DeviceError> {
    let mut cfg = device_config(h);
    cfg.identity = identity;
    runnel_device::Device::connect(cfg).await
}

/// Asserts that a device with `identity` is refused with a reason that says `why`.
async fn refused(h: &BrokerHandle, identity: runnel_device::Identity, why: &str) {
    match connect_as(h, identity).await {
        Err(runnel_device::DeviceError::Refused(reason)) if reason.contains(why) => {}
        Err(e) => panic!("refused, but not because {why:?}: {e}"),
        Ok(_) => panic!("connected, but should be refused ({why})"),
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_is_closed_after_the_idle_timeout_unless_it_sends_keep_alives() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quic_config(dir.path());
    cfg.listeners.quic.idle_timeout = Duration::from_secs(1);
    let broker = common::start_with(cfg).await;
    // Both ask for a long idle timeout themselves: the broker's 1 s is the lower, so it rules.
    let mut quiet = quinn::TransportConfig::default();
    quiet.max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()));
    let mut chatty = quinn::TransportConfig::default();
    chatty
        .max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()))
        .keep_alive_interval(Some(Duration::from_millis(250)));
    // The quiet one last, so that its idle timer starts just before `started`.
    let chatty = connect_with_transport(&broker, chatty).await;
    let quiet = connect_with_transport(&broker, quiet).await;
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), quiet.conn.closed())
        .await
        .expect("the quiet connection is closed");
    assert!(
        matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        chatty.conn.close_reason().is_none(),
        "keep-alives keep it open"
    );
    let mut s = chatty.session().await;
    assert!(s.answers().await);
    broker.shutdown().await;
}

/// Waits until `budget` holds at least `least` bytes for `what`, then until it holds none again
/// (within 5 s of each: the stall limit in the test is 1 s).
async fn held_then_freed(budget: &runnel::protocol::memory::Budget, least: usize, what: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while budget.used() < least {
        assert!(Instant::now() < until, "{what} holds no memory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let holding = Instant::now();
    while budget.used() > 0 {
        let used = budget.used();
        assert!(
            holding.elapsed() < Duration::from_secs(5),
            "{what}: {used} bytes still held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A device that keeps its connection alive but stops reading its answers, or stops sending
/// in the middle of a large request, holds the broker's fetch or request memory for the QUIC
/// idle timeout at most: the stream is given up (RESET_STREAM 3 on its answers), and the
/// connection's other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_is_given_up_and_frees_the_memory_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quic_config(dir.path());
    cfg.listeners.quic.idle_timeout = Duration::from_secs(1);
    let broker = common::start_with(cfg).await;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_millis(250)))
        .stream_receive_window(quinn::VarInt::from_u32(64 << 10));
    let device = connect_with_transport(&broker, transport).await;
    let mut s = device.session().await;
    create_topic(&mut s, "big").await;
    // 2 MiB in 20 batches of 100 KiB.
    for i in 0..20 {
        let record = common::record(0, None, &[b'x'; 100 << 10], 1_000 + i);
        let records = common::encode_batch(&[record], Compression::None);
        assert_eq!(produce(&mut s, "big", records).await.0, 0);
    }
    let fetch_memory = broker.broker.fetch_memory.clone();
    let request_memory = broker.broker.request_memory.clone();

    // A fetch of all of it, never read: the answer outgrows the device's 64 KiB window.
    let mut stalled = device.session().await;
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(4 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name("big"))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(4 << 20),
                ]),
        ]);
    let frame = common::request_frame(&fetch, 12, 1, "stalled");
    stalled.send.write_all(&frame).await.unwrap();
    held_then_freed(&fetch_memory, 1 << 20, "the answer").await;
    // What reached the device is read, then the reset.
    let mut sink = vec![0u8; 64 << 10];
    let reset = loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.recv.read(&mut sink)).await {
            Ok(Ok(Some(_))) => {}
            Ok(other) => break other,
            Err(_) => panic!("the answer is neither sent nor reset"),
        }
    };
    assert!(
        matches!(reset, Err(quinn::ReadError::Reset(code)) if code.into_inner() == 3),
        "{reset:?}"
    );

    // A request announced as 50 MiB, whose bytes stop after its header.
    let mut announced = device.session().await;
    let mut frame = BytesMut::new();
    frame.put_i32(50 << 20);
    frame.put_slice(&[0, 0, 0, 12, 0, 0, 0, 1]);
    announced.send.write_all(&frame).await.unwrap();
    held_then_freed(&request_memory, 50 << 20, "the request").await;
    // The connection and its other streams go on.
    assert!(device.conn.close_reason().is_none());
    assert!(s.answers().await);
    assert!(device.session().await.answers().await);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_changes_address_keeps_its_connection_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let device = connect(&broker).await;
    let mut s = device.session().await;
    create_topic(&mut s, "roaming").await;
    assert_eq!(
        produce(&mut s, "roaming", batch(&readings(2, 1_000))).await,
        (0, 0)
    );
    let metrics = &broker.broker.metrics;
    let handshakes = count(&metrics.quic_connections_total);
    let sessions = count(&metrics.connections_total);
    let id = device.conn.stable_id();

    // The device moves to a new UDP socket (a new source port: what a NAT rebinding or a switch
    // of network looks like to the broker) in the middle of its session.
    let before = device._endpoint.local_addr().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    device._endpoint.rebind(socket).unwrap();
    let after = device._endpoint.local_addr().unwrap();
    assert_ne!(before.port(), after.port());
    for i in 0..5 {
        let (code, offset) = produce(&mut s, "roaming", batch(&readings(2, 2_000 + i))).await;
        assert_eq!((code, offset), (0, 2 + 2 * i));
    }
    assert_eq!(device.conn.stable_id(), id);
    assert!(device.conn.close_reason().is_none());
    assert_eq!(
        count(&metrics.quic_connections_total),
        handshakes,
        "no new handshake"
    );
    assert_eq!(
        count(&metrics.connections_total),
        sessions,
        "no new session"
    );
    assert_eq!(read_values(&broker, "roaming", 12).await.len(), 12);
    broker.shutdown().await;
}

/// A CA and files for devices: (ca.pem, issue(cn) -> (cert.pem, key.pem)).
struct Ca {
    dir: std::path::PathBuf,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            params,
            key,
        }
    }

    fn ca_file(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(format!("{name}-ca.pem"))
    }

    /// A client certificate for `cn` signed by this CA: (cert.pem, key.pem).
    fn issue(&self, cn: &str) -> runnel_device::Identity {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        runnel_device::Identity::Certificate { cert: c, key: k }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_devices_are_named_by_their_certificate_and_others_fail_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Ca::new(dir.path(), "fleet");
    let rogue = Ca::new(dir.path(), "rogue");
    let mut cfg = quic_config(&dir.path().join("data"));
    cfg.listeners.quic.client_auth = edge_config::QuicClientAuth::Mtls;
    cfg.listeners.quic.client_ca = fleet.ca_file("fleet");
    let broker = common::start_with(cfg).await;

    // No certificate: the handshake fails with a TLS alert, reported as such.
    let err = runnel_device::Device::connect(device_config(&broker))
        .await
        .err()
        .expect("refused without a certificate");
    assert!(
        matches!(&err, runnel_device::DeviceError::Tls(m) if m.contains("CertificateRequired")),
        "{err}"
    );
    // A certificate from another CA: refused the same way.
    let err = connect_as(&broker, rogue.issue("sensor-x"))
        .await
        .err()
        .expect("refused with an unknown CA");
    assert!(
        matches!(&err, runnel_device::DeviceError::Tls(m) if m.contains("alert")),
        "{err}"
    );
    assert_eq!(count(&broker.broker.metrics.records_in), 0);
    // Both refusals are authentication failures to the metrics, as a bad token is. The
    // broker's side of the failed handshake may end a moment after the device's.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&broker.broker.metrics.auth_failures) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&broker.broker.metrics.auth_failures), 2);

    let device = connect_as(&broker, fleet.issue("sensor-9")).await.unwrap();
    let ack = device.send("certified", None, b"21.5").await.unwrap();
    assert_eq!(ack.offset, 0);
    device.close().await;
    let metrics = broker.broker.metrics.render(&broker.broker);
    assert!(
        metrics.contains("runnel_authenticated_total{principal=\"User:sensor-9\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        read_values(&broker, "certified", 1).await,
        vec![b"21.5".to_vec()]
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_devices_authenticate_with_sasl_plain_and_others_are_refused() {
    use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# device token\nsensor-7 s3cret-7\npump-2 s3cret-2\n",
    )
    .unwrap();
    let mut cfg = quic_config(&dir.path().join("data"));
    cfg.listeners.quic.client_auth = edge_config::QuicClientAuth::Token;
    cfg.listeners.quic.token_file = tokens.clone();
    let broker = common::start_with(cfg).await;
    let token = |device: &str, token: &str| runnel_device::Identity::Token {
        device: device.into(),
        token: token.into(),
    };

    // No token: the first request is refused and the connection closed with the reason.
    let no_token = runnel_device::Identity::None;
    refused(&broker, no_token, "authentication required").await;
    // A wrong token, or another device's.
    refused(&broker, token("sensor-7", "guess"), "unknown token").await;
    refused(&broker, token("sensor-7", "s3cret-2"), "unknown token").await;

    // A raw client that produces without authenticating writes nothing and is closed.
    let raw = connect(&broker).await;
    let mut s = raw.session().await;
    s.send
        .write_all(&common::request_frame(
            &produce_req("guarded", batch(&readings(1, 1))),
            9,
            1,
            "raw",
        ))
        .await
        .unwrap();
    assert!(s.read_frame().await.is_none(), "no answer");
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.conn.closed())
        .await
        .unwrap();
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        panic!("closed by the broker with a reason: {closed:?}");
    };
    assert_eq!(close.error_code, quinn::VarInt::from_u32(1));
    assert!(String::from_utf8_lossy(&close.reason).contains("authentication required"));

    // The right token: authenticated on the first stream, the principal holds for the others.
    let raw = connect(&broker).await;
    let mut first = raw.session().await;
    let hs = first
        .call(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
            1,
        )
        .await;
    assert_eq!(hs.error_code, 0);
    assert_eq!(
        hs.mechanisms
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>(),
        ["PLAIN"]
    );
    let auth = first
        .call(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"\0pump-2\0s3cret-2")),
            2,
        )
        .await;
    assert_eq!(auth.error_code, 0, "{:?}", auth.error_message);
    let mut second = raw.session().await;
    create_topic(&mut second, "guarded").await;
    assert_eq!(
        produce(&mut second, "guarded", batch(&readings(1, 5))).await,
        (0, 0)
    );

    // The SDK with its token.
    let device = connect_as(&broker, token("sensor-7", "s3cret-7"))
        .await
        .unwrap();
    assert_eq!(device.send("guarded", None, b"ok").await.unwrap().offset, 1);
    device.close().await;
    let metrics = broker.broker.metrics.render(&broker.broker);
    for p in ["User:sensor-7", "User:pump-2"] {
        assert!(
            metrics.contains(&format!(
                "runnel_authenticated_total{{principal=\"{p}\"}} 1"
            )),
            "{metrics}"
        );
    }
    // Only the two authenticated records are stored.
    assert_eq!(read_values(&broker, "guarded", 2).await.len(), 2);

    // The token file changes while the broker runs: sensor-7 is revoked, valve-9 added. A
    // device connected before keeps its session; new connections go by the new file.
    let connected = connect_as(&broker, token("pump-2", "s3cret-2"))
        .await
        .unwrap();
    std::fs::write(
        &tokens,
        "# sensor-7 revoked\npump-2 s3cret-2\nvalve-9 s3cret-9-new\n",
    )
    .unwrap();
    refused(&broker, token("sensor-7", "s3cret-7"), "unknown token").await;
    let added = connect_as(&broker, token("valve-9", "s3cret-9-new"))
        .await
        .unwrap();
    assert_eq!(added.send("guarded", None, b"new").await.unwrap().offset, 2);
    assert_eq!(
        connected
            .send("guarded", None, b"old")
            .await
            .unwrap()
            .offset,
        3
    );
    added.close().await;
    connected.close().await;
    broker.shutdown().await;
}

/// The reason a connection was closed with by the broker, within 10 s.
async fn close_reason(device: &Device) -> String {
    let closed = tokio::time::timeout(Duration::from_secs(10), device.conn.closed())
        .await
        .expect("closed by the broker");
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        panic!("closed by the broker with a reason: {closed:?}");
    };
    assert_eq!(close.error_code, quinn::VarInt::from_u32(1));
    String::from_utf8_lossy(&close.reason).into_owned()
}

/// With tokens, a device that has not authenticated may send small requests only (512 KiB, as
/// Kafka's `sasl.server.max.receive.size`) and must authenticate within
/// `broker.handshake_timeout`, keep-alives or not: unauthenticated clients cannot make the broker
/// hold large requests or keep connection slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_device_sends_little_and_must_authenticate_in_time() {
    use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "sensor-7 s3cret-7\n").unwrap();
    let mut cfg = quic_config(&dir.path().join("data"));
    cfg.listeners.quic.client_auth = edge_config::QuicClientAuth::Token;
    cfg.listeners.quic.token_file = tokens;
    cfg.broker.handshake_timeout = Duration::from_secs(3);
    let broker = common::start_with(cfg).await;
    let failures = || {
        broker
            .broker
            .metrics
            .auth_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    // A 50 MiB request announced (and begun) before authenticating: the connection is closed.
    let raw = connect(&broker).await;
    let mut s = raw.session().await;
    s.send
        .write_all(&(50i32 << 20).to_be_bytes())
        .await
        .unwrap();
    let _ = s.send.write_all(&vec![0u8; 256 * 1024]).await;
    assert!(
        close_reason(&raw)
            .await
            .contains("before SASL authentication"),
        "refused for its size"
    );
    assert_eq!(failures(), 1);

    // Three streams each begin a request of 300 KiB, which alone would be allowed: together they
    // hold more than the connection may before authenticating, and it is closed.
    let raw = connect(&broker).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = raw.session().await;
        let _ = s.send.write_all(&(300i32 << 10).to_be_bytes()).await;
        let _ = s.send.write_all(&vec![0u8; 200 * 1024]).await;
        streams.push(s);
    }
    let reason = close_reason(&raw).await;
    assert!(reason.contains("over all streams"), "{reason}");
    assert_eq!(failures(), 2);

    // ApiVersions only, with keep-alives: closed once the timeout has passed.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(200)));
    let idler = connect_with_transport(&broker, transport).await;
    assert!(idler.session().await.answers().await);
    let reason = close_reason(&idler).await;
    assert!(reason.contains("no SASL authentication within"), "{reason}");
    assert_eq!(failures(), 3);

    // Authenticated in time: the connection stays past the timeout and is served.
    let ok = connect(&broker).await;
    let mut first = ok.session().await;
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    assert_eq!(first.call(&hs, 1).await.error_code, 0);
    let auth = SaslAuthenticateRequest::default()
        .with_auth_bytes(Bytes::from_static(b"\0sensor-7\0s3cret-7"));
    assert_eq!(first.call(&auth, 2).await.error_code, 0);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut second = ok.session().await;
    create_topic(&mut second, "timed").await;
    let big = Reading {
        key: b"sensor-7".to_vec(),
        value: vec![b'x'; 600 * 1024],
        timestamp: 1,
        headers: Vec::new(),
    };
    assert_eq!(
        produce(&mut second, "timed", batch(&[big])).await,
        (0, 0),
        "a request over 512 KiB is served once authenticated"
    );
    assert_eq!(failures(), 3);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagram_readings_arrive_and_bad_datagrams_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let device = runnel_device::Device::connect(device_config(&broker))
        .await
        .unwrap();
    // An acknowledged reading first: it creates the topic.
    device.send("pulses", None, b"first").await.unwrap();
    const N: usize = 300;
    for i in 0..N {
        let value = format!("{{\"pulse\":{i}}}");
        device
            .send_datagram("pulses", 0, Some(b"s-1"), value.as_bytes())
            .await
            .unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A reading too big for one datagram is refused at once.
    let err = device
        .send_datagram("pulses", 0, None, &vec![0u8; 4000])
        .await
        .unwrap_err();
    assert!(
        matches!(err, runnel_device::DeviceError::DatagramTooLarge { size, max } if size > max),
        "{err}"
    );

    let got = read_values(&broker, "pulses", N + 1).await;
    assert_eq!(got.len(), N + 1, "every datagram stored once");
    let mut want: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("{{\"pulse\":{i}}}").into_bytes())
        .collect();
    want.push(b"first".to_vec());
    let mut got = got;
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let metrics = &broker.broker.metrics;
    assert_eq!(count(&metrics.quic_datagrams_total), N as u64);
    assert_eq!(count(&metrics.quic_datagrams_dropped), 0);

    // Bad datagrams: garbage, a request that is not a produce, a produce that wants an answer,
    // a produce to a topic that does not exist. Each is dropped; the connection goes on.
    let raw = connect(&broker).await;
    let unframed = |frame: Bytes| frame.slice(4..);
    let bad = [
        Bytes::from_static(b"\x00\x00\x00"),
        Bytes::from_static(&[0xff; 40]),
        unframed(common::request_frame(
            &ApiVersionsRequest::default(),
            3,
            1,
            "d",
        )),
        unframed(common::request_frame(
            &produce_req("pulses", batch(&readings(1, 1))),
            9,
            1,
            "d",
        )),
        unframed(common::request_frame(
            &produce_req("nowhere", batch(&readings(1, 1))).with_acks(0),
            9,
            1,
            "d",
        )),
    ];
    for d in &bad {
        raw.conn.send_datagram(d.clone()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&metrics.quic_datagrams_dropped) < bad.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&metrics.quic_datagrams_dropped), bad.len() as u64);
    assert!(raw.conn.close_reason().is_none(), "the connection goes on");
    let mut s = raw.session().await;
    assert_eq!(
        latest_offset(&mut s, "pulses").await,
        N as i64 + 1,
        "nothing written"
    );
    // Two devices are connected now, and none once they have gone.
    let open = || {
        metrics
            .quic_connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(open(), 2);
    assert!(
        metrics
            .render(&broker.broker)
            .contains("\nrunnel_quic_connections_open 2\n")
    );
    device.close().await;
    raw.conn.close(0u32.into(), b"done");
    let deadline = Instant::now() + Duration::from_secs(5);
    while open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open(), 0);
    broker.shutdown().await;
}

/// A broker that restarted has forgotten its tickets: the device's early data is refused, it
/// connects again with a full handshake, and its records are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_0rtt_is_refused_and_the_device_connects_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let quic = broker.quic_addr.unwrap();
    let cfg = device_config(&broker);
    let first = runnel_device::Device::connect(cfg.clone()).await.unwrap();
    first.send("restarted", None, b"a").await.unwrap();
    first.close().await;
    broker.shutdown().await;

    let mut again = quic_config(dir.path());
    again.listeners.quic.address = quic;
    let broker = common::start_with(again).await;
    let second = runnel_device::Device::connect(cfg.clone()).await.unwrap();
    let zero_rtt = second.zero_rtt().await;
    let ack = second.send("restarted", None, b"b").await.unwrap();
    assert_eq!(ack.offset, 1);
    second.close().await;
    let handshakes = count(&broker.broker.metrics.quic_connections_total);
    if zero_rtt == runnel_device::ZeroRtt::Rejected {
        // The handshake finished (refusing the early data) before the first request was
        // written, which then went as ordinary data on that connection: it happens on a loaded
        // machine, and costs nothing.
        assert_eq!(handshakes, 1);
    } else {
        // The stale ticket's early data was refused: that attempt completed its handshake
        // without it, and the device went again on a new connection, which may resume with the
        // ticket the refused one just received.
        assert_eq!(handshakes, 2);
    }
    assert_eq!(
        read_values(&broker, "restarted", 2).await,
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_device_resumes_with_0rtt_and_its_records_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(quic_config(dir.path())).await;
    let cfg = device_config(&broker);
    let first = runnel_device::Device::connect(cfg.clone()).await.unwrap();
    assert_eq!(first.zero_rtt().await, runnel_device::ZeroRtt::NotTried);
    for i in 0..5 {
        first
            .send("resumed", None, format!("a{i}").as_bytes())
            .await
            .unwrap();
    }
    first.close().await;

    // The same config (its clone shares the TLS session tickets): the first requests of the new
    // connection (InitProducerId, Metadata, Produce) go as 0-RTT early data.
    let second = runnel_device::Device::connect(cfg.clone()).await.unwrap();
    assert_eq!(second.zero_rtt().await, runnel_device::ZeroRtt::Accepted);
    for i in 0..5 {
        second
            .send("resumed", None, format!("b{i}").as_bytes())
            .await
            .unwrap();
    }
    second.close().await;
    let handshakes = count(&broker.broker.metrics.quic_connections_total);
    assert_eq!(handshakes, 2);

    // With 0-RTT off, a full handshake again.
    let mut full = cfg.clone();
    full.zero_rtt = false;
    let third = runnel_device::Device::connect(full).await.unwrap();
    assert_eq!(third.zero_rtt().await, runnel_device::ZeroRtt::NotTried);
    third.close().await;

    let got = read_values(&broker, "resumed", 10).await;
    let want: Vec<Vec<u8>> = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    assert_eq!(got, want, "every record once, in order");
    broker.shutdown().await;
}
