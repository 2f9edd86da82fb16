//! WebAssembly plugins on the produce path, end to end: the real example plugins (built here
//! for wasm32-wasip2), a real broker, real librdkafka producers and consumers.

mod common;

use std::time::Duration;

use common::wasm::wasm_dir;
use edge_config::{Binding, OnError, PluginSpec};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

fn plugin(name: &str, file: &str, config: &str) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: wasm_dir().join(file),
        config: config.into(),
    }
}

fn bind(topic: &str, chain: &[&str], on_error: OnError) -> Binding {
    Binding {
        topic: topic.into(),
        chain: chain.iter().map(|s| s.to_string()).collect(),
        on_error,
    }
}

/// Produces `values` (each with key `k{i}`) to partition 0 in few batches; returns each
/// record's delivery result as an error string, or None on success.
async fn produce(
    bootstrap: &str,
    topic: &str,
    codec: &str,
    values: &[String],
) -> Vec<Option<String>> {
    let producer: FutureProducer = common::client_config(bootstrap)
        .set("compression.codec", codec)
        .set("linger.ms", "50")
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let mut futures = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        let rec = FutureRecord::to(topic).key(&key).payload(v).partition(0);
        futures.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await.unwrap().err().map(|(e, _)| e.to_string()));
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    out
}

/// Consumes partition 0 from the start until a value equal to `last` arrives.
fn consume_until(bootstrap: &str, topic: &str, last: &str) -> Vec<OwnedMessage> {
    let consumer = common::reader(bootstrap, topic);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap().detach();
            let done = m.payload() == Some(last.as_bytes());
            got.push(m);
            if done {
                return got;
            }
        }
    }
    panic!("{topic}: {last:?} never arrived; got {} records", got.len());
}

fn readings(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 5 {
            0 => format!(r#"{{"device":"d{i}","temp":{}}}"#, i % 40),
            1 => format!(r#"{{"device":"d{i}","temp":{}.5}}"#, i % 40),
            2 => format!(r#"{{"device":"d{i}","hum":{i}}}"#),
            3 => format!("not json {i}"),
            _ => format!(r#"{{"device":"d{i}","temp":"hot"}}"#),
        })
        .collect()
}

fn hot(v: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(v)
        .ok()
        .and_then(|d| d.get("temp").and_then(|t| t.as_f64()))
        .is_some_and(|t| t > 20.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_filter_keeps_exactly_the_matching_records_and_spares_other_topics() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("hot", "json_filter.wasm", "temp > 20")];
    cfg.plugins.bindings = vec![bind("readings", &["hot"], OnError::FailClosed)];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();

    // Each round ends with its own marker, which the filter keeps.
    let marker = |round: usize| format!(r#"{{"temp":99,"end":{round}}}"#);
    for (round, codec) in ["none", "lz4", "zstd"].into_iter().enumerate() {
        let end = marker(round);
        let mut values = readings(300);
        values.push(end.clone());
        let results = produce(&bootstrap, "readings", codec, &values).await;
        assert!(results.iter().all(Option::is_none), "{codec}: {results:?}");
        let b = bootstrap.clone();
        let e = end.clone();
        let got = tokio::task::spawn_blocking(move || consume_until(&b, "readings", &e))
            .await
            .unwrap();
        // Every codec round appends to the same topic: compare the records after the
        // previous rounds.
        let expected: Vec<(String, String)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| hot(v))
            .map(|(i, v)| (format!("k{i}"), v.clone()))
            .collect();
        let got: Vec<(String, String)> = got
            .iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(m.key().unwrap()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got.len(),
            (round + 1) * expected.len(),
            "{codec}: record count"
        );
        assert_eq!(&got[got.len() - expected.len()..], &expected[..], "{codec}");
    }

    // An unbound topic stores everything, unfiltered.
    let end = marker(9);
    let mut values = readings(50);
    values.push(end.clone());
    let results = produce(&bootstrap, "raw", "gzip", &values).await;
    assert!(results.iter().all(Option::is_none));
    let b = bootstrap.clone();
    let got = tokio::task::spawn_blocking(move || consume_until(&b, "raw", &end))
        .await
        .unwrap();
    let got: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap()).into_owned())
        .collect();
    assert_eq!(got, values);

    let stats = &broker.broker.plugins.loaded[0].stats;
    assert!(stats.calls.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert_eq!(stats.faults.load(std::sync::atomic::Ordering::Relaxed), 0);
    let config = broker.broker.config.clone();
    broker.shutdown().await;

    // The compiled component was cached in data_dir/plugin-cache; a restart loads it from
    // there instead of compiling again (the artifact is not rewritten).
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("plugin-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let written = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    let broker = common::start_with(config).await;
    assert_eq!(
        std::fs::metadata(&cached[0]).unwrap().modified().unwrap(),
        written
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_refuses_its_config_or_is_not_a_component_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("bad", "json_filter.wasm", "temp >")];
    let e = runnel::start_broker(cfg.clone()).await.err().unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("plugin bad: init refused its config"), "{e}");

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    cfg.plugins.load[0].path = junk;
    let e = runnel::start_broker(cfg).await.err().unwrap();
    let e = format!("{e:#}");
    assert!(e.contains("plugin bad: not a valid component"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_plugins_fail_their_call_only_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.call_timeout = Duration::from_millis(50);
    cfg.plugins.memory_limit = 16 << 20;
    cfg.plugins.load = vec![
        plugin("looper", "faulty_filter.wasm", "loop"),
        plugin("trapper", "faulty_filter.wasm", "trap"),
        plugin("hog", "faulty_filter.wasm", "oom"),
        plugin("hot", "json_filter.wasm", "temp > 20"),
    ];
    cfg.plugins.bindings = vec![
        bind("loop-open", &["looper", "hot"], OnError::FailOpen),
        bind("loop-closed", &["looper"], OnError::FailClosed),
        bind("trap-open", &["trapper"], OnError::FailOpen),
        bind("trap-closed", &["trapper"], OnError::FailClosed),
        bind("oom-open", &["hog"], OnError::FailOpen),
        bind("oom-closed", &["hog"], OnError::FailClosed),
        bind("readings", &["hot"], OnError::FailClosed),
    ];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let values: Vec<String> = vec![
        r#"{"temp":30}"#.into(),
        r#"{"temp":10}"#.into(),
        r#"{"temp":99}"#.into(),
    ];

    for fault in ["loop", "trap", "oom"] {
        // Fail-closed: the produce fails with POLICY_VIOLATION, nothing is stored.
        let topic = format!("{fault}-closed");
        let results = produce(&bootstrap, &topic, "none", &values).await;
        for r in &results {
            let e = r.as_deref().unwrap_or_else(|| panic!("{topic}: stored"));
            assert!(
                e.contains("PolicyViolation") || e.contains("policy"),
                "{topic}: {e}"
            );
        }
        // Fail-open: the batch passes the faulty plugin (and, for loop-open, the json filter
        // after it still runs).
        let topic = format!("{fault}-open");
        let results = produce(&bootstrap, &topic, "none", &values).await;
        assert!(results.iter().all(Option::is_none), "{topic}: {results:?}");
        let b = bootstrap.clone();
        let t = topic.clone();
        let got = tokio::task::spawn_blocking(move || consume_until(&b, &t, r#"{"temp":99}"#))
            .await
            .unwrap();
        let got: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8_lossy(m.payload().unwrap()).into_owned())
            .collect();
        let want: Vec<String> = if fault == "loop" {
            vec![values[0].clone(), values[2].clone()]
        } else {
            values.clone()
        };
        assert_eq!(got, want, "{topic}");
    }

    // The faults cost their calls only: a healthy chain on the same broker still filters.
    let results = produce(&bootstrap, "readings", "none", &values).await;
    assert!(results.iter().all(Option::is_none));
    let b = bootstrap.clone();
    let got = tokio::task::spawn_blocking(move || consume_until(&b, "readings", r#"{"temp":99}"#))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);

    for p in &broker.broker.plugins.loaded[..3] {
        let faults = p.stats.faults.load(std::sync::atomic::Ordering::Relaxed);
        let inst = p
            .stats
            .instantiations
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(faults >= 2, "{}: {faults} faults", p.name());
        // One instance at load, then a fresh one for each call after a faulted one.
        assert!(
            inst >= faults,
            "{}: {inst} instantiations, {faults} faults",
            p.name()
        );
    }
    broker.shutdown().await;
}
