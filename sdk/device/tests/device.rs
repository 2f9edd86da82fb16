//! The device client against a real broker started in-process, read back with librdkafka.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use runnel::{BrokerHandle, Config};
use runnel_device::{Delivery, Device, DeviceConfig, DeviceError, Record, StartAt, Trust};

mod common;

use common::{broker_config, kafka_produce, start_with};

async fn start(dir: &Path, quic: SocketAddr) -> BrokerHandle {
    start_with(broker_config(dir, quic)).await
}

fn device_config(broker: &BrokerHandle) -> DeviceConfig {
    let mut cfg = common::device_config(broker, "sensor-7");
    cfg.linger = Duration::from_millis(5);
    cfg.max_batch_records = 100;
    cfg.buffer_limit_bytes = 8 << 20;
    cfg
}

fn reading(i: usize) -> Vec<u8> {
    format!("{{\"seq\":{i},\"temp\":{}.5}}", 15 + i % 10).into_bytes()
}

/// Awaits `deliveries` in order (each within 30 s) and checks that they were stored at
/// offsets `first`, `first + 1`, ... of partition 0.
async fn expect_offsets(deliveries: Vec<Delivery>, first: i64) {
    for (i, d) in deliveries.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(30), d)
            .await
            .expect("acknowledged in time")
            .unwrap_or_else(|e| panic!("delivery {i}: {e}"));
        assert_eq!(
            (ack.partition, ack.offset),
            (0, first + i as i64),
            "delivery {i}"
        );
    }
}

/// A broker config whose requests and record batches are limited to these sizes.
fn limited_config(dir: &Path, max_request_bytes: u64, max_message_bytes: u64) -> Config {
    let mut cfg = broker_config(dir, "127.0.0.1:0".parse().unwrap());
    cfg.broker.max_request_bytes = max_request_bytes;
    cfg.log.max_message_bytes = max_message_bytes;
    cfg
}

/// A UDP port that was free a moment ago, for a broker that must come back on the same port.
fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Reads partition 0 of `topic` from the beginning with librdkafka until `want` messages have
/// come, then a little longer to catch any extra.
async fn read_back(bootstrap: String, topic: &'static str, want: usize) -> Vec<OwnedMessage> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("broker.address.family", "v4")
            .set("group.id", "device-readback")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < want && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                got.push(m.unwrap().detach());
            }
        }
        let settle = Instant::now() + Duration::from_millis(500);
        while Instant::now() < settle {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                got.push(m.unwrap().detach());
            }
        }
        got
    })
    .await
    .unwrap()
}

/// The values of the records of `topic` read back as [`read_back`] does.
async fn read_values(bootstrap: String, topic: &'static str, want: usize) -> Vec<Vec<u8>> {
    read_back(bootstrap, topic, want)
        .await
        .iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_readings_are_acknowledged_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();

    let first = device
        .send("readings", Some(b"sensor-7"), &reading(0))
        .await
        .unwrap();
    assert_eq!((first.partition, first.offset), (0, 0));
    let deliveries: Vec<_> = (1..1000)
        .map(|i| {
            device
                .enqueue("readings", 0, Some(b"sensor-7"), &reading(i))
                .unwrap()
        })
        .collect();
    expect_offsets(deliveries, 1).await;
    device.flush().await.unwrap();
    assert_eq!(device.buffered_bytes(), 0);
    device.close().await;

    let got = read_back(broker.bootstrap(), "readings", 1000).await;
    assert_eq!(got.len(), 1000);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.key(), Some(&b"sensor-7"[..]), "key of {i}");
        assert_eq!(m.payload(), Some(&reading(i)[..]), "value of {i}");
    }
    broker.shutdown().await;
}

/// The headers of a librdkafka message, as (key, value) pairs in order.
fn kafka_headers(m: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    use rdkafka::message::Headers;
    m.headers().map_or_else(Vec::new, |h| {
        h.iter()
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_headers_and_their_own_timestamps_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let measured = 1_764_800_000_000 + 123;

    let first = device
        .send_record(
            Record::new("tagged", reading(0))
                .key("sensor-7")
                .header("content-type", "application/json")
                .header("unit", "celsius")
                .header("unit", "kelvin")
                .header("empty", b"")
                .null_header("calibrated")
                .timestamp(measured),
        )
        .await
        .unwrap();
    assert_eq!((first.partition, first.offset), (0, 0));
    // Records with and without headers in one batch.
    let deliveries: Vec<_> = (1..50)
        .map(|i| {
            let r = Record::new("tagged", reading(i)).timestamp(measured + i as i64);
            let r = if i % 2 == 0 {
                r.header("seq", i.to_string())
            } else {
                r
            };
            device.enqueue_record(r).unwrap()
        })
        .collect();
    expect_offsets(deliveries, 1).await;

    let got = read_back(broker.bootstrap(), "tagged", 50).await;
    assert_eq!(got.len(), 50);
    assert_eq!(got[0].key(), Some(&b"sensor-7"[..]));
    assert_eq!(got[0].payload(), Some(&reading(0)[..]));
    assert_eq!(got[0].timestamp(), rdkafka::Timestamp::CreateTime(measured));
    assert_eq!(
        kafka_headers(&got[0]),
        [
            ("content-type".into(), Some(b"application/json".to_vec())),
            ("unit".into(), Some(b"celsius".to_vec())),
            ("unit".into(), Some(b"kelvin".to_vec())),
            ("empty".into(), Some(vec![])),
            ("calibrated".into(), None),
        ]
    );
    for (i, m) in got.iter().enumerate().skip(1) {
        assert_eq!(m.key(), None, "key of {i}");
        assert_eq!(m.payload(), Some(&reading(i)[..]), "value of {i}");
        assert_eq!(
            m.timestamp(),
            rdkafka::Timestamp::CreateTime(measured + i as i64)
        );
        let want = if i % 2 == 0 {
            vec![("seq".to_string(), Some(i.to_string().into_bytes()))]
        } else {
            vec![]
        };
        assert_eq!(kafka_headers(m), want, "headers of {i}");
    }

    // A subscription sees the same headers, and those of a Kafka client's records, repeated
    // names and null values included.
    tokio::task::spawn_blocking({
        let bootstrap = broker.bootstrap();
        move || {
            use rdkafka::message::{Header, OwnedHeaders};
            use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
            let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
                ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("broker.address.family", "v4")
                    .create()
                    .unwrap();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "trace",
                    value: Some("abc"),
                })
                .insert(Header::<&[u8]> {
                    key: "flag",
                    value: None,
                })
                .insert(Header {
                    key: "trace",
                    value: Some("def"),
                });
            p.send(
                BaseRecord::<str, str>::to("tagged")
                    .partition(0)
                    .payload("from kafka")
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
            p.flush(Duration::from_secs(30)).unwrap();
        }
    })
    .await
    .unwrap();
    let mut sub = device
        .subscribe("tagged", 0, StartAt::Earliest)
        .await
        .unwrap();
    let m = sub.next().await.unwrap();
    let names: Vec<_> = m.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["content-type", "unit", "unit", "empty", "calibrated"]
    );
    assert_eq!(m.headers[1].1.as_deref(), Some(&b"celsius"[..]));
    assert_eq!(m.headers[2].1.as_deref(), Some(&b"kelvin"[..]));
    assert_eq!(m.headers[4].1, None);
    assert_eq!(m.timestamp, measured);
    for _ in 1..50 {
        sub.next().await.unwrap();
    }
    let m = sub.next().await.unwrap();
    assert_eq!(m.offset, 50);
    assert_eq!(
        m.headers,
        [
            ("trace".to_string(), Some(bytes::Bytes::from_static(b"abc"))),
            ("flag".to_string(), None),
            ("trace".to_string(), Some(bytes::Bytes::from_static(b"def"))),
        ]
    );
    drop(sub);
    device.close().await;
    broker.shutdown().await;
}

/// A Kafka client sends "reboot" to the topic `commands`; `commands`, subscribed to it, gets it.
async fn expect_command(broker: &BrokerHandle, commands: &mut runnel_device::Subscription) {
    kafka_produce(broker.bootstrap(), "commands", vec!["reboot".into()]).await;
    let m = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .expect("the command arrives")
        .unwrap();
    assert_eq!(m.value.as_deref(), Some(&b"reboot"[..]));
}

/// QUIC connections the broker has accepted so far.
fn quic_connections(broker: &BrokerHandle) -> u64 {
    broker
        .broker
        .metrics
        .quic_connections_total
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A broker with a short idle timeout: a device whose keep-alive is set under it stays on one
/// connection through quiet spells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_under_the_brokers_idle_timeout_keeps_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.listeners.quic.idle_timeout = Duration::from_secs(3);
    let broker = start_with(cfg).await;
    let mut dcfg = device_config(&broker);
    dcfg.keep_alive = Some(Duration::from_millis(250));
    let device = Device::connect(dcfg).await.unwrap();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(3500)).await;
        }
        let ack = device.send("quiet", None, b"reading").await.unwrap();
        assert_eq!(ack.offset, i);
    }
    assert_eq!(quic_connections(&broker), 1, "the device never reconnected");
    device.close().await;
    // A keep-alive no connection could use is refused before connecting.
    for bad in [Duration::ZERO, Duration::MAX] {
        let mut dcfg = device_config(&broker);
        dcfg.keep_alive = Some(bad);
        let err = Device::connect(dcfg).await.err().expect("refused");
        assert!(matches!(err, DeviceError::Config(_)), "{err}");
    }
    broker.shutdown().await;
}

/// The first segment file of partition 0 of `topic` under the broker's data dir.
fn first_segment(dir: &Path, topic: &str) -> std::path::PathBuf {
    let want = format!("{topic}-0");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == want.as_str()) {
                    return p.join(format!("{:020}.log", 0));
                }
                stack.push(p);
            }
        }
    }
    panic!("no partition directory {want} under {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_stored_as_sent_and_read_back_exactly() {
    use runnel_device::Compression;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    // Kafka's codec ids, in the low bits of a record batch's attributes.
    for (codec, id, topic) in [
        (Compression::Gzip, 1, "z-gzip"),
        (Compression::Snappy, 2, "z-snappy"),
        (Compression::Lz4, 3, "z-lz4"),
        (Compression::Zstd, 4, "z-zstd"),
    ] {
        let mut cfg = device_config(&broker);
        cfg.compression = codec;
        cfg.linger = Duration::from_millis(50);
        let device = Device::connect(cfg).await.unwrap();
        let acks: Vec<_> = (0..100)
            .map(|i| {
                device
                    .enqueue_record(Record::new(topic, reading(i)).header("i", i.to_string()))
                    .unwrap()
            })
            .collect();
        expect_offsets(acks, 0).await;
        device.close().await;
        let got = read_back(broker.bootstrap(), topic, 100).await;
        assert_eq!(got.len(), 100, "{codec:?}");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.payload(), Some(&reading(i)[..]), "{codec:?} value {i}");
            assert_eq!(
                kafka_headers(m),
                [("i".to_string(), Some(i.to_string().into_bytes()))]
            );
        }
        // Stored as the device sent it: compressed, and smaller than the readings.
        let log = std::fs::read(first_segment(dir.path(), topic)).unwrap();
        let attributes = i16::from_be_bytes([log[21], log[22]]);
        assert_eq!(attributes & 0x7, id, "{codec:?} codec bits");
        let raw: usize = (0..100).map(|i| reading(i).len()).sum();
        assert!(log.len() < raw, "{codec:?}: {} bytes stored", log.len());
    }
    broker.shutdown().await;
}

/// `Device::start` does not need the broker: a device that starts (and starts again) while the
/// broker is down keeps its readings in the buffer file, and delivers all of them in order,
/// once each, when the broker comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_started_while_the_broker_is_down_delivers_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let quic = free_udp_port();
    // Run the broker once for its certificate, then take it down.
    let broker = start(dir.path(), quic).await;
    let mut cfg = device_config(&broker);
    broker.shutdown().await;
    cfg.buffer_file = Some(dir.path().join("sensor-7.buffer"));

    let started = Instant::now();
    let device = Device::start(cfg.clone()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "start waits for nothing"
    );
    for i in 0..50 {
        device.send_no_ack("offline", None, &reading(i)).unwrap();
    }
    // The device program exits with everything buffered, and starts again, still offline.
    drop(device);
    let device = Device::start(cfg).await.unwrap();
    let later: Vec<_> = (50..100)
        .map(|i| device.enqueue("offline", 0, None, &reading(i)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(device.buffered_bytes() > 0, "readings are held while down");

    let broker = start(dir.path(), quic).await;
    expect_offsets(later, 50).await;
    device.close().await;
    let values = read_values(broker.bootstrap(), "offline", 100).await;
    assert_eq!(values, (0..100).map(reading).collect::<Vec<_>>());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let quic = free_udp_port();
    let broker = start(dir.path(), quic).await;
    let mut cfg = device_config(&broker);
    cfg.max_batch_records = 20;
    let device = Device::connect(cfg).await.unwrap();

    // Some readings delivered before the outage.
    let mut deliveries = Vec::new();
    for i in 0..200 {
        deliveries.push(device.enqueue("restart", 0, None, &reading(i)).unwrap());
    }
    for d in deliveries.drain(..) {
        d.await.unwrap();
    }
    // More in flight while the broker shuts down, then more while it is down.
    for i in 200..300 {
        deliveries.push(device.enqueue("restart", 0, None, &reading(i)).unwrap());
    }
    broker.shutdown().await;
    for i in 300..600 {
        deliveries.push(device.enqueue("restart", 0, None, &reading(i)).unwrap());
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(device.buffered_bytes() > 0, "readings are held while down");

    // The broker comes back on the same data dir and port; the device delivers the rest.
    let broker = start(dir.path(), quic).await;
    let mut offsets = Vec::new();
    for d in deliveries {
        let ack = tokio::time::timeout(Duration::from_secs(60), d)
            .await
            .expect("delivered after the restart")
            .unwrap();
        offsets.push(ack.offset);
    }
    assert_eq!(offsets, (200..600).collect::<Vec<i64>>());
    assert_eq!(device.buffered_bytes(), 0);
    device.close().await;

    let values = read_values(broker.bootstrap(), "restart", 600).await;
    assert_eq!(values, (0..600).map(reading).collect::<Vec<_>>());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_the_buffer_limit_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut cfg = device_config(&broker);
    let limit = 64 * 1024;
    cfg.buffer_limit_bytes = limit;
    let device = Device::connect(cfg).await.unwrap();
    broker.shutdown().await;

    let value = vec![b'x'; 1000];
    let mut accepted = 0;
    let mut full = 0;
    for _ in 0..1000 {
        let started = Instant::now();
        match device.send_no_ack("buffered", None, &value) {
            Ok(()) => accepted += 1,
            Err(DeviceError::BufferFull) => {
                full += 1;
                assert!(
                    started.elapsed() < Duration::from_millis(100),
                    "fails at once"
                );
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(device.buffered_bytes() <= limit);
    }
    assert!((55..=64).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + full, 1000);
    let held = device.buffered_bytes();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        device.enqueue("buffered", 0, None, &value),
        Err(DeviceError::BufferFull)
    ));
    assert_eq!(device.buffered_bytes(), held, "memory does not grow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_fails_connect_with_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut cfg = device_config(&broker);
    let pinned = runnel_device::fingerprint_of(b"another certificate");
    cfg.trust = Trust::Fingerprint(pinned.to_lowercase());
    let err = Device::connect(cfg.clone())
        .await
        .err()
        .expect("connect fails");
    let DeviceError::Tls(msg) = &err else {
        panic!("expected a TLS error, got {err:?}");
    };
    // Both fingerprints named, so the user sees which certificate the broker has.
    let served = broker.quic_fingerprint.clone().unwrap();
    assert!(msg.contains(&served) && msg.contains(&pinned), "{msg}");
    assert!(err.to_string().starts_with("TLS handshake"), "{err}");

    // A fingerprint that is not one is refused before connecting; one without the colons is
    // the same fingerprint.
    cfg.trust = Trust::Fingerprint("F8A94C".into());
    let err = Device::connect(cfg.clone()).await.err().expect("refused");
    assert!(
        matches!(&err, DeviceError::Config(m) if m.contains("not a SHA-256 fingerprint")),
        "{err:?}"
    );
    cfg.trust = Trust::Fingerprint(served.replace(':', ""));
    let device = Device::connect(cfg).await.unwrap();
    device.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_forgot_the_producer_gets_everything_in_order() {
    let first_dir = tempfile::tempdir().unwrap();
    let quic = free_udp_port();
    let broker = start(first_dir.path(), quic).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    for i in 0..100 {
        device.send_no_ack("wiped", None, &reading(i)).unwrap();
    }
    device.flush().await.unwrap();
    broker.shutdown().await;
    let deliveries: Vec<_> = (100..200)
        .map(|i| device.enqueue("wiped", 0, None, &reading(i)).unwrap())
        .collect();

    // A new, empty data dir that keeps only the certificate: the broker knows neither the
    // topic nor the producer, and takes the device's sequence 100 as Kafka does (a producer it
    // holds no state for may start anywhere).
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(second_dir.path().join("quic")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(
            first_dir.path().join("quic").join(f),
            second_dir.path().join("quic").join(f),
        )
        .unwrap();
    }
    let broker = start(second_dir.path(), quic).await;
    let mut offsets = Vec::new();
    for d in deliveries {
        let ack = tokio::time::timeout(Duration::from_secs(60), d)
            .await
            .expect("delivered after the restart")
            .unwrap();
        offsets.push(ack.offset);
    }
    assert_eq!(offsets, (0..100).collect::<Vec<i64>>());
    device.close().await;

    let values = read_values(broker.bootstrap(), "wiped", 100).await;
    assert_eq!(values, (100..200).map(reading).collect::<Vec<_>>());
    broker.shutdown().await;
}

/// Identity files that cannot be used are the device's configuration, named as what they are,
/// found before any connection: not a failed handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_identity_files_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["dev-1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let (cert_path, key_path, other_path) = (
        dir.path().join("dev.pem"),
        dir.path().join("dev.key"),
        dir.path().join("other.key"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&other_path, other_key.serialize_pem()).unwrap();
    let missing = dir.path().join("missing.key");
    let attempt = |key: &std::path::Path| {
        let mut cfg = DeviceConfig::new(
            "127.0.0.1:9".parse().unwrap(),
            Trust::Fingerprint("00".repeat(32)),
        );
        cfg.identity = runnel_device::Identity::Certificate {
            cert: cert_path.clone(),
            key: key.to_path_buf(),
        };
        Device::start(cfg)
    };
    match attempt(&missing).await.err() {
        Some(DeviceError::Config(m)) => {
            assert!(
                m.starts_with("client key ") && m.contains("missing.key"),
                "{m}"
            )
        }
        other => panic!("a config error naming the key, got {other:?}"),
    }
    match attempt(&other_path).await.err() {
        Some(DeviceError::Config(m)) => assert!(m.contains("do not go together"), "{m}"),
        other => panic!("a config error for a key of another certificate, got {other:?}"),
    }
    let device = attempt(&key_path).await.expect("a usable identity");
    device.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_a_trusted_ca_is_verified_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["gateway.local".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (ca_pem, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("gw.pem"),
        dir.path().join("gw.key"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let mut cfg = broker_config(&dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    cfg.listeners.quic.cert = cert;
    cfg.listeners.quic.key = key;
    let broker = runnel::start_broker(cfg).await.unwrap();

    let mut dc = device_config(&broker);
    dc.trust = Trust::CaPem(ca_pem);
    dc.server_name = "gateway.local".into();
    let device = Device::connect(dc.clone()).await.unwrap();
    let ack = device.send("ca", None, b"hello").await.unwrap();
    assert_eq!(ack.offset, 0);
    device.close().await;

    dc.server_name = "elsewhere.local".into();
    let err = Device::connect(dc).await.err().expect("wrong name fails");
    assert!(matches!(err, DeviceError::Tls(_)), "{err:?}");
    broker.shutdown().await;
}

/// Readings sent while the broker is away reach the buffer file then, not once the broker is
/// back: a device that crashes during the outage (its runtime stopped dead, nothing run on the
/// way out) leaves them in the file, and the next device on the file delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_sent_during_an_outage_survive_a_device_crash_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let quic = free_udp_port();
    let broker = start(&data, quic).await;
    let mut cfg = device_config(&broker);
    cfg.max_batch_records = 10;
    cfg.buffer_file = Some(dir.path().join("sensor-7.buffer"));
    // The device lives on a runtime of its own, so it can be stopped as a crash would.
    let device_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let connecting = Device::connect(cfg.clone());
    let device = device_rt.spawn(connecting).await.unwrap().unwrap();
    for i in 0..5 {
        device.send("outage", None, &reading(i)).await.unwrap();
    }
    broker.shutdown().await;
    // Sent while the broker is down, a few at a time as a sensor would.
    let mut held = Vec::new();
    for i in 5..200 {
        held.push(device.enqueue("outage", 0, None, &reading(i)).unwrap());
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Once past the linger (5 ms) every reading is in a sealed batch, so in the file. Batches
    // are appended in the order they are sealed, and nothing is acknowledged meanwhile (so the
    // file is not compacted): the last reading in the file means every one is.
    let file = cfg.buffer_file.clone().unwrap();
    let last = reading(199);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = std::fs::read(&file).unwrap_or_default();
        if bytes.windows(last.len()).any(|w| w == last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last reading never reached the buffer file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    device_rt.shutdown_background();
    drop(held);
    drop(device);

    let broker = start(&data, quic).await;
    let device = Device::connect(cfg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), device.flush())
        .await
        .expect("the file's readings are delivered")
        .unwrap();
    device.close().await;
    let values = read_values(broker.bootstrap(), "outage", 200).await;
    let text = |v: Vec<Vec<u8>>| -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect()
    };
    assert_eq!(values.len(), 200, "every reading once");
    assert_eq!(text(values), text((0..200).map(reading).collect()));
    broker.shutdown().await;
}

/// A batch the broker refuses as too large (over its max_message_bytes) is sent again in
/// halves until the parts fit: every reading is stored once, in order; a single reading too
/// large fails alone, and the device goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_large_for_the_broker_is_split_and_one_reading_too_large_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.log.max_message_bytes = 4096;
    let broker = runnel::start_broker(cfg).await.expect("broker starts");
    let mut dcfg = device_config(&broker);
    dcfg.buffer_file = Some(dir.path().join("sensor-7.buffer"));
    let device = Device::connect(dcfg).await.unwrap();
    // 100 readings of 300 bytes: about 31 KB, one batch of the SDK, 8 times the broker's limit.
    let value = |i: usize| format!("{i:04}{}", "x".repeat(296)).into_bytes();
    let acks: Vec<_> = (0..100)
        .map(|i| device.enqueue("split", 0, None, &value(i)).unwrap())
        .collect();
    expect_offsets(acks, 0).await;
    let too_big = device.send("split", None, &vec![b'y'; 5000]).await;
    assert_eq!(refusal(too_big), Some(10));
    let after = device.send("split", None, &value(100)).await.unwrap();
    assert_eq!(after.offset, 100);
    device.close().await;
    let values = read_values(broker.bootstrap(), "split", 101).await;
    assert_eq!(values.len(), 101);
    assert!(values.iter().enumerate().all(|(i, v)| *v == value(i)));
    broker.shutdown().await;
}

/// A new device's first batch of a partition, refused as too large: the broker does not know
/// the producer yet, so it would take any sequence, and a part sent behind a refused one would be
/// stored ahead of it. Until a batch of the partition is acknowledged, one at a time goes: the
/// readings are stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_producers_first_batch_refused_as_too_large_is_stored_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.log.max_message_bytes = 2000;
    let broker = start_with(cfg).await;
    let mut dcfg = device_config(&broker);
    dcfg.linger = Duration::from_millis(50);
    let device = Device::connect(dcfg).await.unwrap();
    // 12 readings of about 500 bytes in one linger: one batch of 6 KB. Its second half is a
    // few bytes larger than the first, so it is cut again at once: the first half (3 KB, refused
    // too) goes with two quarters (which fit) behind it.
    let value = |i: usize| format!("{}:{}", i + 1, "v".repeat(500)).into_bytes();
    let acks: Vec<_> = (0..12)
        .map(|i| device.enqueue("first", 0, None, &value(i)).unwrap())
        .collect();
    expect_offsets(acks, 0).await;
    device.close().await;
    let values = read_values(broker.bootstrap(), "first", 12).await;
    let heads = |v: Vec<Vec<u8>>| -> Vec<String> {
        v.iter()
            .map(|x| String::from_utf8_lossy(&x[..3]).into_owned())
            .collect()
    };
    assert_eq!(heads(values), heads((0..12).map(value).collect()));
    broker.shutdown().await;
}

/// A batch refused as too large while later ones are in flight, on its partition and on
/// another: the later ones go again behind its halves on the same stream (the broker refuses
/// those of the partition as out of order, and answers those of the other partition it stored
/// as duplicates), so the connection and its subscription stay. Every reading is stored once, in
/// order, and acknowledged with its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_as_too_large_with_others_in_flight_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.log.max_message_bytes = 4096;
    let broker = start_with(cfg).await;
    let mut dcfg = device_config(&broker);
    // Batches close on size: two big readings (5 KB, over the broker's limit), or about 18
    // small ones (2 KB, which fit). A small batch ends just over max_batch_bytes, and must not
    // be cut when it goes again behind a refused big one: the broker has stored it whole.
    dcfg.max_batch_records = 100;
    dcfg.max_batch_bytes = 3000;
    dcfg.buffer_file = Some(dir.path().join("sensor-7.buffer"));
    let device = Device::connect(dcfg).await.unwrap();
    let mut commands = device
        .subscribe("commands", 0, StartAt::Latest)
        .await
        .unwrap();
    let connections = quic_connections(&broker);

    // Reading 0 of each topic first, so that both topics are known and nothing waits for
    // metadata: then up to 5 batches go in flight at once.
    let big = |i: usize| format!("{i:04}{}", "x".repeat(2496)).into_bytes();
    let small = |i: usize| format!("small-{i:04}{}", "s".repeat(90)).into_bytes();
    device.send("big", None, &big(0)).await.unwrap();
    device.send("small", None, &small(0)).await.unwrap();
    // Rounds of a small batch then a big one, so that small batches are in flight behind
    // refused big ones.
    let (mut bigs, mut smalls) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        for _ in 0..18 {
            let i = smalls.len() + 1;
            smalls.push(device.enqueue("small", 0, None, &small(i)).unwrap());
        }
        for _ in 0..2 {
            let i = bigs.len() + 1;
            bigs.push(device.enqueue("big", 0, None, &big(i)).unwrap());
        }
    }
    expect_offsets(bigs, 1).await;
    expect_offsets(smalls, 1).await;

    assert_eq!(
        quic_connections(&broker),
        connections,
        "the device connected again"
    );
    expect_command(&broker, &mut commands).await;

    drop(commands);
    device.close().await;
    let values = read_values(broker.bootstrap(), "big", 41).await;
    assert!(values.iter().enumerate().all(|(i, v)| *v == big(i)));
    assert_eq!(values.len(), 41);
    let values = read_values(broker.bootstrap(), "small", 361).await;
    assert!(values.iter().enumerate().all(|(i, v)| *v == small(i)));
    assert_eq!(values.len(), 361);
    broker.shutdown().await;
}

/// A batch the broker refuses for good (INVALID_RECORD: records without a key on a compacted
/// topic) while later ones are in flight: its readings fail, the later batches go again behind
/// it on the same stream with their sequence numbers moved down, and the connection stays. The
/// keyed readings are stored once, in order, at consecutive offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_for_good_with_others_in_flight_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.log.cleanup_policy = edge_config::CleanupPolicy::Compact;
    let broker = start_with(cfg).await;
    let mut dcfg = device_config(&broker);
    dcfg.max_batch_records = 5;
    dcfg.buffer_file = Some(dir.path().join("sensor-7.buffer"));
    let device = Device::connect(dcfg).await.unwrap();
    let first = device.send("state", Some(b"k"), b"v0").await.unwrap();
    assert_eq!(first.offset, 0);
    let connections = quic_connections(&broker);

    // Batches of 5: keyed, unkeyed (refused), then four keyed ones, all in flight together.
    let value = |i: usize| format!("v{i}").into_bytes();
    let key = |i: usize| format!("k{i}").into_bytes();
    let mut keyed = Vec::new();
    let mut unkeyed = Vec::new();
    for i in 1..=30 {
        if (6..=10).contains(&i) {
            unkeyed.push(device.enqueue("state", 0, None, &value(i)).unwrap());
        } else {
            keyed.push(
                device
                    .enqueue("state", 0, Some(&key(i)), &value(i))
                    .unwrap(),
            );
        }
    }
    for d in unkeyed {
        let e = tokio::time::timeout(Duration::from_secs(30), d)
            .await
            .expect("answered in time");
        // INVALID_RECORD, with the broker's reason.
        match e {
            Err(DeviceError::Broker {
                code: 87,
                message: Some(m),
            }) => assert!(m.contains("key"), "{m}"),
            other => panic!("refused with INVALID_RECORD and a reason, got {other:?}"),
        }
    }
    expect_offsets(keyed, 1).await;
    assert_eq!(
        quic_connections(&broker),
        connections,
        "the device connected again"
    );
    device.close().await;
    let got = read_back(broker.bootstrap(), "state", 26).await;
    let want: Vec<Vec<u8>> = std::iter::once(b"v0".to_vec())
        .chain((1..=30).filter(|i| !(6..=10).contains(i)).map(value))
        .collect();
    let got: Vec<Vec<u8>> = got
        .iter()
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect();
    assert_eq!(got, want);
    broker.shutdown().await;
}

/// A broker whose max_request_bytes is below the device's batch size stops the session stream
/// with the "too large" code (docs/quic.md): the device splits the batch and goes on, on a new
/// stream of the same connection, so its subscriptions are not disturbed. Every reading is
/// stored once, in order; a single reading too large fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_brokers_max_request_bytes_is_split_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(limited_config(dir.path(), 16 * 1024, 16 * 1024)).await;
    let mut dcfg = device_config(&broker);
    dcfg.max_batch_records = 1000;
    dcfg.linger = Duration::from_millis(50);
    dcfg.buffer_file = Some(dir.path().join("sensor-7.buffer"));
    let device = Device::connect(dcfg).await.unwrap();
    let mut commands = device
        .subscribe("commands", 0, StartAt::Latest)
        .await
        .unwrap();
    let connections = quic_connections(&broker);

    // 200 readings of 300 bytes: batches of up to 64 KiB, four times the broker's limit.
    let value = |i: usize| format!("{i:04}{}", "x".repeat(296)).into_bytes();
    let acks: Vec<_> = (0..200)
        .map(|i| device.enqueue("limited", 0, None, &value(i)).unwrap())
        .collect();
    expect_offsets(acks, 0).await;
    let too_big = tokio::time::timeout(
        Duration::from_secs(30),
        device.send("limited", None, &vec![b'y'; 20_000]),
    )
    .await
    .expect("refused in time");
    assert_eq!(refusal(too_big), Some(10));
    let after = device.send("limited", None, &value(200)).await.unwrap();
    assert_eq!(after.offset, 200);

    // The same connection throughout, and its subscription still works.
    assert_eq!(quic_connections(&broker), connections);
    expect_command(&broker, &mut commands).await;

    drop(commands);
    device.close().await;
    let values = read_values(broker.bootstrap(), "limited", 201).await;
    assert_eq!(values.len(), 201);
    assert!(values.iter().enumerate().all(|(i, v)| *v == value(i)));
    broker.shutdown().await;
}

/// A batch larger than the broker's stream receive window (1 MiB) cannot even be written whole
/// before the broker refuses it: the write is stopped, and the device still splits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_writing_the_broker_stops_is_split_too() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(limited_config(dir.path(), 256 * 1024, 256 * 1024)).await;
    let mut dcfg = device_config(&broker);
    dcfg.max_batch_records = 100_000;
    dcfg.max_batch_bytes = 8 << 20;
    dcfg.linger = Duration::from_millis(200);
    let device = Device::connect(dcfg).await.unwrap();
    // 8,000 readings of 300 bytes in one batch: about 2.4 MB.
    let value = |i: usize| format!("{i:05}{}", "x".repeat(295)).into_bytes();
    let acks: Vec<_> = (0..8000)
        .map(|i| device.enqueue("window", 0, None, &value(i)).unwrap())
        .collect();
    expect_offsets(acks, 0).await;
    device.close().await;
    let values = read_values(broker.bootstrap(), "window", 8000).await;
    assert_eq!(values.len(), 8000);
    assert!(values.iter().enumerate().all(|(i, v)| *v == value(i)));
    broker.shutdown().await;
}

/// The broker stops the stream while the device writes a request over max_request_bytes, and
/// meanwhile answers the batch before it with MESSAGE_TOO_LARGE (over max_message_bytes): that
/// batch is split and stored, and only the reading really too large fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_while_a_stopped_write_drains_blames_the_right_batch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(limited_config(dir.path(), 200_000, 50_000)).await;
    for round in 0..4 {
        let topic: &'static str = ["blame-0", "blame-1", "blame-2", "blame-3"][round];
        let mut dcfg = device_config(&broker);
        // r1 and r2 share one batch (60 KB, over max_message_bytes): it is sealed when the
        // second record comes, however slowly that is; x, over max_batch_bytes, goes alone.
        dcfg.max_batch_records = 2;
        dcfg.max_batch_bytes = 1 << 20;
        dcfg.linger = Duration::from_secs(20);
        let device = Device::connect(dcfg).await.unwrap();
        let r1 = device.enqueue(topic, 0, None, &[b'a'; 30_000]).unwrap();
        let r2 = device.enqueue(topic, 0, None, &[b'b'; 30_000]).unwrap();
        // Over the 1 MiB stream window: the broker stops it while it is being written.
        let x = device
            .enqueue(topic, 0, None, &vec![b'x'; 2 << 20])
            .unwrap();
        let wait = |d| tokio::time::timeout(Duration::from_secs(30), d);
        assert_eq!(wait(r1).await.unwrap().unwrap().offset, 0, "round {round}");
        assert_eq!(wait(r2).await.unwrap().unwrap().offset, 1, "round {round}");
        assert_eq!(refusal(wait(x).await.unwrap()), Some(10), "round {round}");
        device.close().await;
    }
    broker.shutdown().await;
}

/// With 14 subscriptions the broker has no stream credit to give for a new session stream after
/// a refusal over max_request_bytes: the device connects afresh after a short wait instead of
/// stalling (and its subscriptions resume on the new connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_with_every_stream_taken_reconnects_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(limited_config(dir.path(), 16 * 1024, 16 * 1024)).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let mut subs = Vec::new();
    for _ in 0..14 {
        subs.push(
            device
                .subscribe("orders", 0, StartAt::Latest)
                .await
                .unwrap(),
        );
    }
    let connections = quic_connections(&broker);
    let started = Instant::now();
    // Batches refused and split (a new stream after each refusal), then one reading too large.
    let acks: Vec<_> = (0..200)
        .map(|i| {
            device
                .enqueue("orders-in", 0, None, &[b'r'; 300])
                .unwrap_or_else(|e| panic!("reading {i}: {e}"))
        })
        .collect();
    expect_offsets(acks, 0).await;
    let too_big = device.send("orders-in", None, &vec![b'y'; 20_000]).await;
    assert_eq!(refusal(too_big), Some(10));
    let after = device.send("orders-in", None, b"fits").await.unwrap();
    assert_eq!(after.offset, 200);
    // A few REOPEN_WAITs (2 s) and reconnects, well under a stall on the 30 s request timeout.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "produce stalled for {:?}",
        started.elapsed()
    );
    let reconnects = quic_connections(&broker) - connections;
    assert!(reconnects >= 1, "the device connected afresh");
    kafka_produce(broker.bootstrap(), "orders", vec!["o-1".into()]).await;
    for s in &mut subs {
        let m = tokio::time::timeout(Duration::from_secs(15), s.next())
            .await
            .expect("every subscription resumes")
            .unwrap();
        assert_eq!(m.value.as_deref(), Some(&b"o-1"[..]));
    }
    drop(subs);
    device.close().await;
    broker.shutdown().await;
}

/// A topic with a small `max.message.bytes` makes the device cut that topic's batches, not
/// every topic's: the others are still sent in batches of up to `max_batch_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_own_size_limit_cuts_only_that_topics_batches() {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let admin = common::admin(&broker.bootstrap());
    let tiny =
        NewTopic::new("tiny", 1, TopicReplication::Fixed(1)).set("max.message.bytes", "1500");
    let created = admin
        .create_topics(&[tiny], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    let mut cfg = device_config(&broker);
    cfg.linger = Duration::from_millis(100);
    cfg.max_batch_records = 10_000;
    let device = Device::connect(cfg).await.unwrap();
    let small: Vec<_> = (0..50)
        .map(|_| device.enqueue("tiny", 0, None, &[b't'; 100]).unwrap())
        .collect();
    expect_offsets(small, 0).await;
    let plain: Vec<_> = (0..2000)
        .map(|_| device.enqueue("plain", 0, None, &[b'p'; 200]).unwrap())
        .collect();
    expect_offsets(plain, 0).await;
    device.close().await;
    // About 540 KB of records at up to 64 KiB a batch: around nine batches, not hundreds.
    let log = std::fs::read(first_segment(dir.path(), "plain")).unwrap();
    let (mut at, mut batches) = (0, 0);
    while at + 12 <= log.len() {
        at += 12 + i32::from_be_bytes(log[at + 8..at + 12].try_into().unwrap()) as usize;
        batches += 1;
    }
    assert!(batches <= 20, "{batches} batches for 2,000 readings");
    broker.shutdown().await;
}

/// A broker with a higher `listeners.quic.max_streams` lets a device hold more subscriptions
/// than the default 15 at once, each served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_stream_limit_allows_more_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.listeners.quic.max_streams = 32;
    let broker = start_with(cfg).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    device.send("valves", None, b"first").await.unwrap();
    let mut subs = Vec::new();
    for i in 0..24 {
        let sub = tokio::time::timeout(
            Duration::from_secs(10),
            device.subscribe("valves", 0, StartAt::Latest),
        )
        .await
        .unwrap_or_else(|_| panic!("subscription {i} waited for a stream"))
        .unwrap();
        subs.push(sub);
    }
    kafka_produce(broker.bootstrap(), "valves", vec!["open".into()]).await;
    for (i, s) in subs.iter_mut().enumerate() {
        let m = tokio::time::timeout(Duration::from_secs(15), s.next())
            .await
            .unwrap_or_else(|_| panic!("subscription {i} got nothing"))
            .unwrap();
        assert_eq!(m.value.as_deref(), Some(&b"open"[..]), "subscription {i}");
    }
    drop(subs);
    device.close().await;
    broker.shutdown().await;
}

/// Subscriptions take streams of the connection (by default 16 per connection on the broker,
/// one of them the produce session): one too many fails with a clear error after a short wait,
/// and produce goes on meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_too_many_fails_clearly_and_produce_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    device.send("commands", None, b"first").await.unwrap();
    let mut subs = Vec::new();
    for _ in 0..15 {
        subs.push(
            device
                .subscribe("commands", 0, StartAt::Latest)
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let ((extra, refused_at), (offset, produced_at)) = tokio::join!(
        async {
            let extra = device.subscribe("commands", 0, StartAt::Latest).await;
            (extra, started.elapsed())
        },
        async {
            let ack = device.send("commands", None, b"meanwhile").await.unwrap();
            (ack.offset, started.elapsed())
        }
    );
    assert_eq!(extra.err(), Some(DeviceError::NoStream));
    assert_eq!(offset, 1);
    // The subscription is refused only after waiting OPEN_STREAM_WAIT (5 s) for a stream; the
    // produce is answered while it waits.
    assert!(
        produced_at < refused_at,
        "produce waited for the subscription: acknowledged after {produced_at:?}, the \
         subscription refused after {refused_at:?}"
    );
    // Closed subscriptions free their streams: the broker's QUIC stack hands out new stream
    // credit once an eighth of the limit (here 3 of 16) is free.
    subs.truncate(subs.len() - 3);
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        device.subscribe("commands", 0, StartAt::Latest),
    )
    .await
    .expect("a stream is free again");
    assert!(again.is_ok(), "{:?}", again.err());
    device.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_buffer_delivers_what_a_dropped_device_held_in_order_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let quic = free_udp_port();
    let broker = start(&data, quic).await;
    let mut cfg = device_config(&broker);
    cfg.max_batch_records = 20;
    cfg.buffer_file = Some(dir.path().join("sensor-7.buffer"));
    let device = Device::connect(cfg.clone()).await.unwrap();

    // Delivered before the outage.
    let delivered: Vec<_> = (0..100)
        .map(|i| device.enqueue("offline", 0, None, &reading(i)).unwrap())
        .collect();
    for d in delivered {
        d.await.unwrap();
    }
    // In flight while the broker shuts down (some stored, their acknowledgements lost), then
    // buffered while it is down.
    for i in 100..200 {
        device.send_no_ack("offline", None, &reading(i)).unwrap();
    }
    broker.shutdown().await;
    for i in 200..400 {
        device.send_no_ack("offline", None, &reading(i)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(device.buffered_bytes() > 0, "readings are held while down");
    // The device program ends without flushing.
    drop(device);

    // The broker comes back; a new device on the same buffer file delivers what was held.
    let broker = start(&data, quic).await;
    let device = Device::connect(cfg.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), device.flush())
        .await
        .expect("the buffered readings are delivered")
        .unwrap();
    assert_eq!(device.buffered_bytes(), 0);
    device.close().await;

    let values = read_values(broker.bootstrap(), "offline", 400).await;
    assert_eq!(values.len(), 400, "nothing lost, nothing duplicated");
    assert_eq!(values, (0..400).map(reading).collect::<Vec<_>>());

    // A third device on the now empty file starts afresh and goes on after them.
    let device = Device::connect(cfg).await.unwrap();
    let ack = device.send("offline", None, &reading(400)).await.unwrap();
    assert_eq!(ack.offset, 400);
    device.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_file_is_used_by_one_device_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(&dir.path().join("data"), "127.0.0.1:0".parse().unwrap()).await;
    let mut cfg = device_config(&broker);
    cfg.buffer_file = Some(dir.path().join("shared.buffer"));
    let first = Device::connect(cfg.clone()).await.unwrap();
    let err = Device::connect(cfg)
        .await
        .err()
        .expect("second device refused");
    assert!(
        matches!(&err, DeviceError::Buffer(m) if m.contains("in use by another device")),
        "{err:?}"
    );
    first.close().await;
    broker.shutdown().await;
}

/// A device that only subscribes (never produces, so nothing reads its produce stream) notices
/// a lost connection when its subscription reconnects, and connects again: commands sent after
/// a broker restart still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_only_subscribes_reconnects_after_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let quic = free_udp_port();
    let broker = start(dir.path(), quic).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    kafka_produce(broker.bootstrap(), "valve-cmds", vec!["open".into()]).await;
    let mut sub = device
        .subscribe("valve-cmds", 0, StartAt::Earliest)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("first command")
        .unwrap();
    assert_eq!(first.value.as_deref(), Some(&b"open"[..]));
    broker.shutdown().await;

    let broker = start(dir.path(), quic).await;
    kafka_produce(broker.bootstrap(), "valve-cmds", vec!["close".into()]).await;
    let second = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("a command sent after the restart arrives")
        .unwrap();
    assert_eq!(
        (second.offset, second.value.as_deref()),
        (1, Some(&b"close"[..]))
    );
    device.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_receives_commands_from_a_kafka_client_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let command = |i: usize| format!("{{\"cmd\":\"set-rate\",\"n\":{i}}}");

    kafka_produce(
        broker.bootstrap(),
        "commands",
        (0..10).map(command).collect(),
    )
    .await;
    let mut latest = device
        .subscribe("commands", 0, StartAt::Latest)
        .await
        .unwrap();
    let mut from_5 = device
        .subscribe("commands", 0, StartAt::Offset(5))
        .await
        .unwrap();
    assert_eq!(latest.position(), 10);
    // Produced while the subscriptions wait (long-poll).
    let later = tokio::spawn(kafka_produce(
        broker.bootstrap(),
        "commands",
        (10..30).map(command).collect(),
    ));
    for i in 10..30 {
        let m = tokio::time::timeout(Duration::from_secs(20), latest.next())
            .await
            .expect("command arrives")
            .unwrap();
        assert_eq!(m.offset, i as i64);
        assert_eq!(m.key.as_deref(), Some(&b"cmd"[..]));
        assert_eq!(m.value.as_deref(), Some(command(i).as_bytes()));
    }
    later.await.unwrap();
    for i in 5..30 {
        let m = tokio::time::timeout(Duration::from_secs(20), from_5.next())
            .await
            .expect("command arrives")
            .unwrap();
        assert_eq!(
            (m.offset, m.value.as_deref()),
            (i as i64, Some(command(i).as_bytes()))
        );
    }
    // Nothing more: the next read waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), latest.next())
            .await
            .is_err()
    );
    // The device produces on the same connection meanwhile.
    let ack = device.send("readings", None, b"r").await.unwrap();
    assert_eq!(ack.offset, 0);
    drop(latest);
    drop(from_5);
    device.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscription_resumes_after_its_last_commit_across_device_and_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let quic = broker.quic_addr.unwrap();
    let command = |i: usize| format!("cmd-{i}");
    kafka_produce(
        broker.bootstrap(),
        "commands",
        (0..10).map(command).collect(),
    )
    .await;

    // No commit yet: the group starts where `otherwise` says.
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let mut sub = device
        .subscribe_group("valve-3", "commands", 0, StartAt::Earliest)
        .await
        .unwrap();
    for i in 0..4 {
        assert_eq!(sub.next().await.unwrap().offset, i);
    }
    sub.commit().await.unwrap();
    // Read on without committing: these come again after the restart.
    assert_eq!(sub.next().await.unwrap().offset, 4);
    assert_eq!(sub.next().await.unwrap().offset, 5);
    // Another group has its own position; a plain subscription cannot commit.
    let mut other = device
        .subscribe_group("valve-4", "commands", 0, StartAt::Latest)
        .await
        .unwrap();
    assert_eq!(other.position(), 10);
    other.commit().await.unwrap();
    let mut plain = device
        .subscribe("commands", 0, StartAt::Earliest)
        .await
        .unwrap();
    assert!(matches!(plain.commit().await, Err(DeviceError::NoGroup)));
    drop((sub, other, plain));
    device.close().await;

    // The broker restarts on the same data dir: the commits are durable.
    broker.shutdown().await;
    let broker = start(dir.path(), quic).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let mut sub = device
        .subscribe_group("valve-3", "commands", 0, StartAt::Latest)
        .await
        .unwrap();
    assert_eq!(sub.position(), 4, "resumes after the last commit");
    for i in 4..10 {
        let m = sub.next().await.unwrap();
        assert_eq!(
            (m.offset, m.value.as_deref()),
            (i, Some(command(i as usize).as_bytes()))
        );
    }
    sub.commit().await.unwrap();
    let other = device
        .subscribe_group("valve-4", "commands", 0, StartAt::Earliest)
        .await
        .unwrap();
    assert_eq!(other.position(), 10);
    drop((sub, other));

    // A Kafka client sees the group's committed offset.
    let bootstrap = broker.bootstrap();
    let committed = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("broker.address.family", "v4")
            .set("group.id", "valve-3")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("commands", 0);
        consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .find_partition("commands", 0)
            .unwrap()
            .offset()
    })
    .await
    .unwrap();
    assert_eq!(committed, Offset::Offset(10));
    device.close().await;
    broker.shutdown().await;
}

/// A UDP relay between one device and `broker` that holds every datagram for `delay` in each
/// direction, in order, as a slow cellular link does. Returns the address the device dials.
async fn slow_link(broker: SocketAddr, delay: Duration) -> SocketAddr {
    use std::sync::{Arc, OnceLock};
    use tokio::net::UdpSocket;
    use tokio::sync::mpsc;

    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(broker).await.unwrap();
    let device = Arc::new(OnceLock::<SocketAddr>::new());
    let addr = front.local_addr().unwrap();

    // Each direction: a reader stamps datagrams with when they are due, a writer sends them
    // then, so the order holds.
    let (to_broker, mut for_broker) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let (to_device, mut for_device) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    {
        let (front, device) = (front.clone(), device.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                let _ = device.set(from);
                let _ = to_broker.send((Instant::now() + delay, buf[..n].to_vec()));
            }
        });
    }
    {
        let back = back.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let _ = to_device.send((Instant::now() + delay, buf[..n].to_vec()));
            }
        });
    }
    tokio::spawn(async move {
        while let Some((due, d)) = for_broker.recv().await {
            tokio::time::sleep_until(due.into()).await;
            let _ = back.send(&d).await;
        }
    });
    tokio::spawn(async move {
        while let Some((due, d)) = for_device.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if let Some(to) = device.get() {
                let _ = front.send_to(&d, to).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_slow_link_batches_grow_so_the_device_keeps_up() {
    // A 200 ms round trip is 40 lingers of 5 ms. Were each linger's records a request of their
    // own, the 5 requests in flight would carry 25 lingers' worth a second, and a device
    // reading 1,000 times a second would fall further behind every second.
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut cfg = device_config(&broker);
    cfg.server = slow_link(cfg.server, Duration::from_millis(100)).await;
    let device = Device::connect(cfg).await.unwrap();

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut deliveries = Vec::new();
    for i in 0..300 {
        tick.tick().await;
        for j in 0..10 {
            let d = device.enqueue("slow-link", 0, None, &reading(i * 10 + j));
            deliveries.push(d.unwrap());
        }
    }
    let sending = started.elapsed();
    expect_offsets(deliveries, 0).await;
    let all_acknowledged = started.elapsed();
    // 3 s of readings: acknowledged about 0.3 s after the last was sent (the last round trips);
    // with a request per linger it took 12 s.
    assert!(
        all_acknowledged < sending + Duration::from_secs(4),
        "3,000 readings sent in {sending:?} were all acknowledged only after {all_acknowledged:?}"
    );
    device.close().await;

    let values = read_values(broker.bootstrap(), "slow-link", 3000).await;
    assert_eq!(values, (0..3000).map(reading).collect::<Vec<_>>());
    broker.shutdown().await;
}

/// The Kafka error code a send was refused with, if it was.
fn refusal<T>(r: Result<T, DeviceError>) -> Option<i16> {
    match r {
        Err(DeviceError::Broker { code, .. }) => Some(code),
        _ => None,
    }
}
