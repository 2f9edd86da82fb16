//! Real librdkafka clients (the rdkafka crate) against a real broker on a real socket.

mod common;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

struct Sent {
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp: i64,
    headers: Vec<(String, Vec<u8>)>,
}

fn records(n: usize, salt: &str) -> Vec<Sent> {
    (0..n)
        .map(|i| Sent {
            key: format!("key-{salt}-{}", i % 17).into_bytes(),
            // Mixed, partly binary payloads so codecs and byte handling are exercised.
            value: (0..(50 + i % 200))
                .map(|j| ((i * 31 + j * 7) % 256) as u8)
                .collect(),
            timestamp: 1_700_000_000_000 + i as i64,
            headers: vec![
                ("trace".to_string(), format!("t-{i}").into_bytes()),
                ("bin".to_string(), vec![0, 1, 2, (i % 256) as u8]),
            ],
        })
        .collect()
}

async fn produce_all(bootstrap: &str, topic: &str, codec: &str, sent: &[Sent]) {
    let producer: FutureProducer = common::client_config(bootstrap)
        .set("compression.codec", codec)
        .set("linger.ms", "20")
        .set("acks", "all")
        .create()
        .unwrap();
    let mut futures = Vec::new();
    for r in sent {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let rec = FutureRecord::to(topic)
            .key(&r.key)
            .payload(&r.value)
            .timestamp(r.timestamp)
            .headers(headers)
            .partition(0);
        futures.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    for f in futures {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn consume_n(bootstrap: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = common::reader(bootstrap, topic);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            got.push(m.unwrap().detach());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_keys_values_headers_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        let sent = records(500, codec);
        produce_all(&bootstrap, &topic, codec, &sent).await;
        let b = bootstrap.clone();
        let t = topic.clone();
        let got = tokio::task::spawn_blocking(move || consume_n(&b, &t, 500))
            .await
            .unwrap();
        assert_eq!(got.len(), sent.len(), "{codec}: record count");
        for (i, (m, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(m.offset(), i as i64, "{codec}: offset");
            assert_eq!(m.key(), Some(&s.key[..]), "{codec}: key of {i}");
            assert_eq!(m.payload(), Some(&s.value[..]), "{codec}: value of {i}");
            assert_eq!(
                m.timestamp().to_millis(),
                Some(s.timestamp),
                "{codec}: timestamp of {i}"
            );
            let h = m.headers().expect("headers");
            let got_headers: Vec<(String, Vec<u8>)> = h
                .iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect();
            assert_eq!(got_headers, s.headers, "{codec}: headers of {i}");
        }
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_writes_each_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut futures = Vec::new();
    for i in 0..2000u32 {
        let payload = i.to_be_bytes();
        let rec = FutureRecord::<(), _>::to("idem")
            .payload(&payload[..])
            .partition(0);
        futures.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    for (i, f) in futures.into_iter().enumerate() {
        let offset = f.await.unwrap().map_err(|(e, _)| e).unwrap().offset;
        assert_eq!(offset, i as i64);
    }
    let b = bootstrap.clone();
    let (got, marks) = tokio::task::spawn_blocking(move || {
        let got = consume_n(&b, "idem", 2000);
        let c: BaseConsumer = common::client_config(&b).create().unwrap();
        (
            got,
            c.fetch_watermarks("idem", 0, Duration::from_secs(10))
                .unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 2000);
    assert_eq!(marks, (0, 2000), "no record written twice");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload(), Some(&(i as u32).to_be_bytes()[..]));
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_always_serves_producers_and_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.flush = edge_config::FlushPolicy::Always;
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let sent = records(300, "fsync");
    produce_all(&bootstrap, "fsynced", "lz4", &sent).await;
    let b = bootstrap.clone();
    let got = tokio::task::spawn_blocking(move || consume_n(&b, "fsynced", 300))
        .await
        .unwrap();
    assert_eq!(got.len(), 300);
    assert!(
        got.iter()
            .zip(&sent)
            .all(|(m, s)| m.payload() == Some(&s.value[..]))
    );
    broker.shutdown().await;
}
