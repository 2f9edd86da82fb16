//! Retention and log compaction, configured per topic through the Kafka admin API and observed
//! with a real consumer.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

async fn create(bootstrap: &str, name: &str, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        common::client_config(bootstrap).create().unwrap();
    let mut t = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{:?}", r[0]);
}

async fn send(p: &FutureProducer, topic: &str, key: &str, value: Option<&str>) -> i64 {
    let mut rec = FutureRecord::<str, str>::to(topic).key(key).partition(0);
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    p.send(rec, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap()
        .offset
}

fn read_all(bootstrap: &str, topic: &str) -> Vec<(i64, String, Option<String>)> {
    let c: BaseConsumer = common::client_config(bootstrap)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let (low, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while low < high
        && out.last().is_none_or(|(o, _, _)| *o < high - 1)
        && Instant::now() < deadline
    {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push((
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_retention_deletes_old_segments_and_advances_the_log_start() {
    // Long enough for the 60 sends and the first watermark query to end well before any record
    // can expire, even on a loaded machine.
    const RETENTION: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.retention_check_interval = Duration::from_millis(100);
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let retention_ms = RETENTION.as_millis().to_string();
    create(
        &b,
        "short",
        &[("retention.ms", &retention_ms), ("segment.bytes", "2048")],
    )
    .await;
    let p: FutureProducer = common::client_config(&b)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let reader: BaseConsumer = common::client_config(&b).create().unwrap();
    let watermarks = || {
        reader
            .fetch_watermarks("short", 0, Duration::from_secs(10))
            .unwrap()
    };
    // Every record's timestamp is at or after this, so none expires before `started + RETENTION`.
    let started = Instant::now();
    for i in 0..60 {
        send(&p, "short", &format!("k{i}"), Some(&"x".repeat(100))).await;
    }
    let (low, high) = watermarks();
    assert_eq!(
        (low, high),
        (0, 60),
        "nothing deleted yet ({:?} after the first send)",
        started.elapsed()
    );
    // Records carry their send time; once the last one is past retention, every segment is.
    let deadline = Instant::now() + RETENTION + Duration::from_secs(30);
    let low = loop {
        let (low, _) = watermarks();
        if low == 60 || Instant::now() > deadline {
            break low;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every record was past retention, the active segment's too: as in Kafka it is rolled and
    // deleted, and the topic is empty with its log start at its end.
    assert_eq!(low, 60, "every segment deleted, the active one too");
    assert_eq!(watermarks(), (60, 60));
    // The next record goes on from there (checked at once: it expires only RETENTION later).
    send(&p, "short", "fresh", Some("y")).await;
    assert_eq!(watermarks(), (60, 61));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_latest_value_per_key_and_honours_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.retention_check_interval = Duration::from_millis(100);
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    create(
        &b,
        "state",
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "1024"),
            ("delete.retention.ms", "0"),
        ],
    )
    .await;
    let p: FutureProducer = common::client_config(&b)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let mut latest: BTreeMap<String, Option<String>> = BTreeMap::new();
    for round in 0..10 {
        for k in 0..5 {
            let key = format!("device-{k}");
            // device-4 is deleted in the last round.
            let value = (round < 9 || k != 4).then(|| format!("round-{round}-{}", "v".repeat(40)));
            send(&p, "state", &key, value.as_deref()).await;
            latest.insert(key, value);
        }
    }
    // A last write rolls the segment holding the final round, so it can be compacted too.
    for i in 0..20 {
        send(
            &p,
            "state",
            "filler",
            Some(&format!("{i}-{}", "f".repeat(60))),
        )
        .await;
    }
    latest.insert("filler".into(), Some(format!("19-{}", "f".repeat(60))));
    let deadline = Instant::now() + Duration::from_secs(20);
    let compacted = loop {
        let b2 = b.clone();
        let all = tokio::task::spawn_blocking(move || read_all(&b2, "state"))
            .await
            .unwrap();
        let device_rows = all.iter().filter(|r| r.1.starts_with("device-")).count();
        if device_rows <= 4 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (_, k, v) in &compacted {
        seen.insert(k.clone(), v.clone());
    }
    for k in 0..4 {
        let key = format!("device-{k}");
        assert_eq!(
            seen.get(&key),
            latest.get(&key),
            "{key} keeps its latest value"
        );
        let rows = compacted.iter().filter(|r| r.1 == key).count();
        assert_eq!(rows, 1, "{key} appears once after compaction");
    }
    assert!(
        compacted.iter().all(|r| r.1 != "device-4"),
        "the tombstoned key is gone once delete.retention.ms passed"
    );
    // Offsets are kept: still increasing, with gaps, ending at the last write.
    assert!(compacted.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(compacted.last().map(|r| r.0), Some(69));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_looks_on_its_own_interval_and_retention_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.retention_check_interval = Duration::from_secs(3600);
    cfg.log.compaction_check_interval = Duration::from_millis(200);
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let small = [("segment.bytes", "1024"), ("delete.retention.ms", "0")];
    create(
        &b,
        "latest",
        &[&small[..], &[("cleanup.policy", "compact")]].concat(),
    )
    .await;
    create(
        &b,
        "expiring",
        &[&small[..], &[("retention.ms", "1")]].concat(),
    )
    .await;
    let p: FutureProducer = common::client_config(&b)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for i in 0..40 {
        let value = format!("{i}-{}", "v".repeat(60));
        send(&p, "latest", "sensor", Some(&value)).await;
        send(&p, "expiring", "sensor", Some(&value)).await;
    }
    // Compaction, due every 200 ms, leaves the key's earlier values out of the sealed segments.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let b2 = b.clone();
        let all = tokio::task::spawn_blocking(move || read_all(&b2, "latest"))
            .await
            .unwrap();
        if all.len() <= 15 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        rows.len() <= 15,
        "40 writes of one key compacted within 20 s: {} left",
        rows.len()
    );
    assert_eq!(rows.last().map(|r| r.0), Some(39));
    // Retention looks once an hour here: the expired segments are all still there.
    let b2 = b.clone();
    let (low, high) = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = common::client_config(&b2).create().unwrap();
        c.fetch_watermarks("expiring", 0, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        (low, high),
        (0, 40),
        "retention ran on compaction's interval"
    );
    broker.shutdown().await;
}
