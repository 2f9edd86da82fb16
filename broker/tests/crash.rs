//! Crash safety with the real binary: kill -9 during acks=all production loses no acknowledged
//! record, a segment cut mid-batch is recovered to its last complete batch, and a broker under
//! a low open-files limit keeps room for connections.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// (offset, payload) of one record.
type Stored = (i64, Vec<u8>);

fn spawn_broker(dir: &Path, port: u16) -> common::BrokerProcess {
    spawn_broker_with(dir, port, "[listeners.quic]\nenabled = false\n")
}

/// The broker binary with Kafka on `port`, `extra` config appended (it must configure QUIC).
fn spawn_broker_with(dir: &Path, port: u16, extra: &str) -> common::BrokerProcess {
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\n\n[listeners.kafka]\naddress = \"127.0.0.1:{port}\"\n\n\
             [listeners.admin]\nenabled = false\n\n{extra}",
            dir.join("data")
        ),
    )
    .unwrap();
    let child = common::BrokerProcess::new(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("runnel starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn read_all(bootstrap: &str, topic: &str, expect_at_least: usize) -> Vec<(i64, Vec<u8>)> {
    let consumer: BaseConsumer = common::client_config(bootstrap)
        .set("group.id", "crash-check")
        .set("enable.auto.commit", "false")
        .set("check.crcs", "true")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() < expect_at_least || out.last().is_none_or(|(o, _)| *o + 1 < high))
        && Instant::now() < deadline
    {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("no corrupt batch is served");
            out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::zombie_processes)] // the child is killed and waited for once the kill point is reached
async fn kill_9_during_acks_all_production_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut child = spawn_broker(dir.path(), port);

    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "3000")
        .set("retries", "0")
        .create()
        .unwrap();
    let acked: Arc<Mutex<Vec<Stored>>> = Arc::default();
    // The broker is killed in the middle of production, once it has acknowledged this many
    // records; production goes on for a while after the kill.
    const KILL_AFTER_ACKS: usize = 1000;
    const AFTER_THE_KILL: Duration = Duration::from_millis(2500);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    let mut pending = Vec::new();
    let mut killed_at: Option<Instant> = None;
    while killed_at.is_none_or(|t| t.elapsed() < AFTER_THE_KILL) {
        let payload = format!("record-{i:08}").into_bytes();
        let rec = FutureRecord::<(), _>::to("crash")
            .payload(&payload)
            .partition(0);
        if let Ok(f) = producer.send_result(rec) {
            let acked = acked.clone();
            pending.push(tokio::spawn(async move {
                if let Ok(Ok(d)) = f.await {
                    let offset = d.offset;
                    acked.lock().unwrap().push((offset, payload));
                }
            }));
        }
        i += 1;
        if i.is_multiple_of(200) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if killed_at.is_none() && acked.lock().unwrap().len() >= KILL_AFTER_ACKS {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            killed_at = Some(Instant::now());
        }
        if killed_at.is_none() && Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "only {} of {i} records acknowledged in 60 s",
                acked.lock().unwrap().len()
            );
        }
    }
    for p in pending {
        let _ = p.await;
    }
    drop(producer);
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    assert!(
        acked.len() > 100,
        "the producer got acknowledgements before the kill ({})",
        acked.len()
    );

    let mut child = spawn_broker(dir.path(), port);
    let n = acked.len();
    let b = bootstrap.clone();
    let stored = tokio::task::spawn_blocking(move || read_all(&b, "crash", n))
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // Offsets are dense and every acknowledged record is at its acknowledged offset.
    for (i, (offset, _)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as i64, "offsets are dense after recovery");
    }
    for (offset, payload) in &acked {
        let got = stored.get(*offset as usize).map(|(_, p)| p);
        assert_eq!(got, Some(payload), "acknowledged record at offset {offset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_cut_mid_batch_recovers_to_the_last_complete_batch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::test_config(dir.path());
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("linger.ms", "0")
        .set("batch.num.messages", "10")
        .create()
        .unwrap();
    // Ten batches of ten records, each batch acknowledged before the next is sent.
    for b in 0..10 {
        let futures: Vec<_> = (0..10)
            .map(|r| {
                let payload = format!("b{b}-r{r}");
                producer
                    .send_result(
                        FutureRecord::<(), _>::to("cut")
                            .payload(&payload)
                            .partition(0),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap()
            })
            .collect();
        for f in futures {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    drop(producer);
    broker.shutdown().await;

    let segment = dir.path().join("cut-0").join("00000000000000000000.log");
    let len = std::fs::metadata(&segment).unwrap().len();
    // Cut the file in the middle of the last batch.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 25).unwrap();
    drop(file);

    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let stored = tokio::task::spawn_blocking(move || read_all(&b, "cut", 1))
        .await
        .unwrap();
    assert!(
        stored.len() >= 80 && stored.len() < 100,
        "complete batches served: {}",
        stored.len()
    );
    for (i, (offset, payload)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert_eq!(payload, format!("b{}-r{}", i / 10, i % 10).as_bytes());
    }
    // The next append continues right after the recovered tail.
    let producer: FutureProducer = common::client_config(&broker.bootstrap()).create().unwrap();
    let offset = producer
        .send(
            FutureRecord::<(), _>::to("cut")
                .payload("after")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap()
        .offset;
    assert_eq!(offset, stored.len() as i64);
    broker.shutdown().await;
}

/// Starts the broker under a file-size limit (`ulimit -f`, with SIGXFSZ ignored so a write past
/// it fails with EFBIG the way a full disk fails with ENOSPC) and returns the child.
fn spawn_limited(dir: &Path, port: u16, limit_kib: u64) -> common::BrokerProcess {
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\n\n[listeners.kafka]\naddress = \"127.0.0.1:{port}\"\n\n\
             [listeners.quic]\nenabled = false\n\n[listeners.admin]\nenabled = false\n",
            dir.join("data")
        ),
    )
    .unwrap();
    let script = format!(
        "trap '' XFSZ; ulimit -f {limit_kib}; exec {:?} serve --config {:?}",
        env!("CARGO_BIN_EXE_runnel"),
        config
    );
    let child = common::BrokerProcess::new(
        Command::new("bash")
            .args(["-c", &script])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_produce_with_storage_error_and_corrupts_nothing() {
    use bytes::Bytes;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::Compression;

    fn batch(tag: usize) -> Bytes {
        let records: Vec<_> = (0..10)
            .map(|i| {
                let value = format!("{tag:06}-{i}-{}", "z".repeat(10_000));
                common::record(i, None, value.as_bytes(), 1_700_000_000_000)
            })
            .collect();
        common::encode_batch(&records, Compression::None)
    }
    let produce = |records: Bytes| common::produce_request("full", 0, -1, records);

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut child = spawn_limited(dir.path(), port, 2048);
    let mut c = common::RawClient::connect(&bootstrap).await;
    let md = kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("full")))),
    ]));
    assert_eq!(c.call(&md, 9).await.topics[0].error_code, 0);

    // Write ~100 KB batches until the "disk" is full.
    let mut acked = 0usize;
    let mut error = 0;
    for tag in 0..100 {
        let r = c.call(&produce(batch(tag)), 9).await;
        let p = &r.responses[0].partition_responses[0];
        if p.error_code != 0 {
            error = p.error_code;
            break;
        }
        assert_eq!(p.base_offset, (acked * 10) as i64);
        acked += 1;
    }
    assert_eq!(error, 56, "KAFKA_STORAGE_ERROR once the file cannot grow");
    assert!(acked >= 5, "{acked} batches fitted");
    // Still full: still a clean error, and the broker keeps serving.
    let r = c.call(&produce(batch(999)), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 56);
    child.kill().unwrap();
    child.wait().unwrap();

    // Restarted with room: every acknowledged record is there, nothing half-written, and the
    // next append follows right after them.
    let mut child = spawn_broker(dir.path(), port);
    let b = bootstrap.clone();
    let stored = tokio::task::spawn_blocking(move || read_all(&b, "full", acked * 10))
        .await
        .unwrap();
    assert_eq!(stored.len(), acked * 10);
    for (i, (offset, payload)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert!(payload.starts_with(format!("{:06}-{}-", i / 10, i % 10).as_bytes()));
    }
    let mut c = common::RawClient::connect(&bootstrap).await;
    let r = c.call(&produce(batch(1000)), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(
        r.responses[0].partition_responses[0].base_offset,
        (acked * 10) as i64
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A device on QUIC notices at once that the broker crashed and came back: the restarted broker
/// (same data dir, so the same stateless-reset key) answers the old connection's packets with a
/// stateless reset, and the device reconnects and delivers, instead of waiting out its 30 s
/// idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reconnects_at_once_after_the_broker_crashes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let quic = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = format!("[listeners.quic]\naddress = \"{quic}\"\n");
    let mut child = spawn_broker_with(dir.path(), port, &extra);
    let cert = dir.path().join("data/quic/cert.pem");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pem = loop {
        match std::fs::read(&cert) {
            Ok(pem) if !pem.is_empty() => break pem,
            _ => {
                assert!(Instant::now() < deadline, "no QUIC certificate");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    let fingerprint = runnel_device::fingerprint_of(&der);
    let cfg =
        runnel_device::DeviceConfig::new(quic, runnel_device::Trust::Fingerprint(fingerprint));
    let device = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match runnel_device::Device::connect(cfg.clone()).await {
                Ok(d) => break d,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("device connects");
    let first = device.send("crashed", None, b"before").await.unwrap();
    assert_eq!(first.offset, 0);

    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_broker_with(dir.path(), port, &extra);
    // From the moment the broker listens again (its start is not the device's doing).
    let restarted = Instant::now();
    let second = tokio::time::timeout(
        Duration::from_secs(40),
        device.send("crashed", None, b"after"),
    )
    .await
    .expect("delivered after the restart")
    .unwrap();
    let took = restarted.elapsed();
    assert_eq!(second.offset, 1);
    assert!(
        took < Duration::from_secs(10),
        "the device took {took:?} to notice the restart (its idle timeout is 30 s)"
    );
    device.close().await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A topic rolling tiny segments cannot take every file the process may open: its rolls are
/// refused (KAFKA_STORAGE_ERROR, with the reason) while a tenth of the limit is left, so the
/// broker still accepts connections and serves the other topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_segments_leave_room_for_connections_under_the_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = dir.path().join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\n\n[listeners.kafka]\naddress = \"127.0.0.1:{port}\"\n\n\
             [listeners.admin]\nenabled = false\n\n[listeners.quic]\nenabled = false\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    // 400 files: 256 of them kept free, so the tiny topic's rolls stop at about 100 segments.
    let _child = common::BrokerProcess::new(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 400 && exec {:?} serve --config {config:?}",
                env!("CARGO_BIN_EXE_runnel")
            ))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("runnel starts"),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    // (Bounded: a broker out of files may never answer.)
    tokio::time::timeout(Duration::from_secs(120), fill_then_connect(&addr))
        .await
        .expect("the broker answers within 2 minutes");
}

/// Fills the limit with `tiny`'s segments, then checks the broker still takes connections and
/// records of `other`.
async fn fill_then_connect(addr: &str) {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{ApiVersionsRequest, CreateTopicsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::Compression;
    let mut c = common::RawClient::connect(addr).await;
    c.create_topic("other").await;
    let tiny = CreateTopicsRequest::default().with_topics(vec![
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("tiny")))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("segment.bytes"))
                    .with_value(Some(StrBytes::from_static_str("1024"))),
            ]),
    ]);
    assert_eq!(c.call(&tiny, 5).await.topics[0].error_code, 0);
    let record = |i: i64| {
        let r = common::record(i, None, &[b'x'; 900], 1_700_000_000_000);
        common::encode_batch(&[r], Compression::None)
    };
    // One segment per record, until a roll is refused.
    let mut refused = None;
    for i in 0..1000 {
        let r = c
            .call(&common::produce_request("tiny", 0, 1, record(i)), 9)
            .await;
        let p = &r.responses[0].partition_responses[0];
        if p.error_code != 0 {
            refused = Some((i, p.error_code, p.error_message.clone()));
            break;
        }
    }
    let (written, code, message) = refused.expect("a roll is refused before 1000 segments");
    assert_eq!(code, 56, "KAFKA_STORAGE_ERROR");
    assert!(
        message
            .as_ref()
            .is_some_and(|m| m.contains("open files free")),
        "{message:?}"
    );
    assert!(written > 20, "only {written} segments rolled");
    // Connections are still accepted and served, and the other topic takes records.
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut other = common::RawClient::connect(addr).await;
        let versions = other.call(&ApiVersionsRequest::default(), 3).await;
        assert_eq!(versions.error_code, 0);
        clients.push(other);
    }
    let r = c
        .call(&common::produce_request("other", 0, 1, record(0)), 9)
        .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
}
