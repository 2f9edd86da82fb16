//! WebAssembly plugins on the produce path, end to end: the real example plugins (built here
//! for wasm32-wasip2), a real broker, real librdkafka producers and consumers.

mod common;

use std::time::Duration;

use common::wasm::wasm_dir;
use edge_config::{Binding, OnError, PluginSpec};
use kafka_protocol::ResponseError as E;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use runnel::plugins::{DLT_ERROR, DLT_PARTITION, DLT_PLUGIN, DLT_TOPIC};

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
        dead_letter_topic: None,
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

    let set = broker.broker.plugins.current();
    let stats = &set.loaded[0].stats;
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
    assert!(
        e.contains("plugins.load[0]: plugin bad: init refused its config"),
        "{e}"
    );

    // What a plugin says reaches the log and clients as one line, its controls escaped.
    cfg.plugins.load = vec![plugin("bad", "faulty_filter.wasm", "x\nFORGED \u{1b}[31m")];
    let e = runnel::start_broker(cfg.clone()).await.err().unwrap();
    let e = format!("{e:#}");
    assert!(
        e.contains(r"unknown fault: x\nFORGED \u{1b}[31m") && !e.contains('\n'),
        "{e}"
    );

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    cfg.plugins.load[0].path = junk.clone();
    let e = runnel::start_broker(cfg.clone()).await.err().unwrap();
    let e = format!("{e:#}");
    assert!(
        e.contains("plugins.load[0]: plugin bad: not a valid component"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line, not a dump of the file: {e}");
    // A file that is not wasm at all: said so, without the dangling start of a byte dump.
    std::fs::write(&junk, b"not wasm").unwrap();
    let e = runnel::start_broker(cfg).await.err().unwrap();
    let e = format!("{e:#}");
    assert!(
        e.contains("not a valid component") && e.ends_with("bad magic number"),
        "{e}"
    );

    // `runnel config validate` loads them as serve does.
    let file = dir.path().join("runnel.toml");
    std::fs::write(
        &file,
        format!(
            "[broker]\ndata_dir = {:?}\n[[plugins.load]]\nname = \"bad\"\npath = {:?}\nconfig = \"temp >\"\n",
            dir.path().join("data"),
            wasm_dir().join("json_filter.wasm"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["config", "validate"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // With the line of the plugin's entry, as other config errors.
    assert!(
        err.contains("runnel.toml:3: plugins.load[0]: plugin bad: init refused its config"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_plugins_fail_their_call_only_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    // Long enough that a healthy call descheduled on a loaded machine still ends in time.
    cfg.plugins.call_timeout = Duration::from_secs(1);
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

    for p in &broker.broker.plugins.current().loaded[..3] {
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

/// A chain of filters over compressed batches works on the records in place too: the kept
/// records keep every header as produced, a name given twice included (a decode into
/// kafka-protocol's record keeps one per name), in every codec, and an idempotent producer's
/// batches stay in sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_over_compressed_batches_keep_repeated_headers() {
    use rdkafka::message::{Header, OwnedHeaders};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("hot", "json_filter.wasm", "temp > 20")];
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    cfg.plugins.bindings = codecs
        .iter()
        .map(|c| bind(&format!("hot-{c}"), &["hot"], OnError::FailClosed))
        .collect();
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    for codec in codecs {
        let topic = format!("hot-{codec}");
        let idempotent = [
            ONE_BATCH_OF_TWO[0],
            ONE_BATCH_OF_TWO[1],
            ("enable.idempotence", "true"),
        ];
        let p = producer(&bootstrap, codec, &idempotent);
        for round in 0..3 {
            let mut futures = Vec::new();
            for (i, temp) in [30, 3].iter().enumerate() {
                let value = format!(r#"{{"temp":{temp},"round":{round}}}"#);
                let key = format!("r{round}-{i}");
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "trace",
                        value: Some("a"),
                    })
                    .insert(Header {
                        key: "site",
                        value: Some("north"),
                    })
                    .insert(Header {
                        key: "trace",
                        value: Some("b"),
                    });
                let rec = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers)
                    .partition(0);
                futures.push(p.send_result(rec).map_err(|(e, _)| e).unwrap());
            }
            for f in futures {
                if let Err((e, _)) = f.await.unwrap() {
                    panic!("{topic}: delivery failed: {e}");
                }
            }
        }
        let got = consume(&bootstrap, &topic, r#"{"temp":30,"round":2}"#).await;
        let want: Vec<Seen> = (0..3)
            .map(|round| Seen {
                key: Some(format!("r{round}-0")),
                value: format!(r#"{{"temp":30,"round":{round}}}"#),
                headers: vec![
                    ("trace".into(), "a".into()),
                    ("site".into(), "north".into()),
                    ("trace".into(), "b".into()),
                ],
            })
            .collect();
        assert_eq!(got, want, "{codec}");
        // Each batch of two kept its two offsets (the producer's sequence span).
        assert_eq!(log_end(&broker, &topic), 6, "{codec}");
    }
    broker.shutdown().await;
}

/// A transform's output and a dead-letter copy keep a header name given twice, as Kafka keeps
/// it (a decode into kafka-protocol's record kept one per name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_and_dead_letters_keep_repeated_headers() {
    use rdkafka::message::{Header, OwnedHeaders};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![
        plugin(
            "tag",
            "redact_enrich.wasm",
            r#"{"headers": {"site": "north"}}"#,
        ),
        plugin("trapper", "faulty_filter.wasm", "trap"),
    ];
    let mut dl = bind("failing", &["trapper"], OnError::DeadLetter);
    dl.dead_letter_topic = Some("failing-dlt".into());
    cfg.plugins.bindings = vec![bind("tagged", &["tag"], OnError::FailClosed), dl];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let trace = |v| ("trace".to_string(), v);
    for (topic, codec) in [("tagged", "zstd"), ("failing", "lz4")] {
        let p = producer(&bootstrap, codec, &[]);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some("a"),
            })
            .insert(Header {
                key: "trace",
                value: Some("b"),
            });
        let rec = FutureRecord::to(topic)
            .key("k")
            .payload("reading")
            .headers(headers)
            .partition(0);
        if let Err((e, _)) = p.send(rec, Duration::from_secs(10)).await {
            panic!("{topic}: delivery failed: {e}");
        }
    }
    let got = consume(&bootstrap, "tagged", "reading").await;
    assert_eq!(
        got[0].headers,
        vec![
            trace("a".into()),
            trace("b".into()),
            ("site".into(), "north".into())
        ]
    );
    let got = consume(&bootstrap, "failing-dlt", "reading").await;
    let names: Vec<&str> = got[0].headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "trace",
            "trace",
            DLT_PLUGIN,
            DLT_ERROR,
            DLT_TOPIC,
            DLT_PARTITION
        ]
    );
    assert_eq!(got[0].headers[..2], [trace("a".into()), trace("b".into())]);
    broker.shutdown().await;
}

/// A record as consumed: key, value and headers as text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    key: Option<String>,
    value: String,
    headers: Vec<(String, String)>,
}

fn seen(m: &OwnedMessage) -> Seen {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Seen {
        key: m.key().map(text),
        value: m.payload().map(text).unwrap_or_default(),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(text).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

async fn consume(bootstrap: &str, topic: &str, last: &str) -> Vec<Seen> {
    let (b, t, l) = (bootstrap.to_owned(), topic.to_owned(), last.to_owned());
    let got = tokio::task::spawn_blocking(move || consume_until(&b, &t, &l))
        .await
        .unwrap();
    got.iter().map(seen).collect()
}

/// Producer settings that make each burst of two records from [`send`] one batch, sent as soon
/// as its second record is queued: for tests whose chain must see a hot and a cold reading
/// together, whatever the machine's load (a 50 ms linger may end between the two).
const ONE_BATCH_OF_TWO: [(&str, &str); 2] = [("linger.ms", "5000"), ("batch.num.messages", "2")];

/// A producer with the test defaults plus `extra` settings.
fn producer(bootstrap: &str, codec: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = common::client_config(bootstrap);
    c.set("compression.codec", codec)
        .set("linger.ms", "50")
        .set("acks", "all")
        .set("message.timeout.ms", "10000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

/// Sends (key, value, timestamp) records to partition 0 as one burst; every delivery must
/// succeed. Returns the offset each delivery report gave.
async fn send(
    p: &FutureProducer,
    topic: &str,
    records: &[(Option<&str>, &str, Option<i64>)],
) -> Vec<i64> {
    let mut futures = Vec::new();
    for (key, value, ts) in records {
        let mut rec = FutureRecord::<str, str>::to(topic)
            .payload(value)
            .partition(0);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(ts) = ts {
            rec = rec.timestamp(*ts);
        }
        futures.push(p.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    let mut offsets = Vec::new();
    for f in futures {
        match f.await.unwrap() {
            Ok(delivery) => offsets.push(delivery.offset),
            Err((e, _)) => panic!("{topic}: delivery failed: {e}"),
        }
    }
    offsets
}

/// Records stored in partition 0 of `topic`: a batch the chain emptied takes its offsets
/// (so its producer gets a base offset) but holds none.
fn stored_records(broker: &runnel::BrokerHandle, topic: &str) -> i32 {
    let t = broker.broker.catalog.get(topic).expect("topic exists");
    let data = t.partition(0).unwrap().log().read(0, usize::MAX).unwrap();
    runnel::storage::headers(&data)
        .map(|h| h.record_count)
        .sum()
}

fn log_end(broker: &runnel::BrokerHandle, topic: &str) -> i64 {
    let t = broker.broker.catalog.get(topic).expect("topic exists");
    t.partition(0).unwrap().log().log_end_offset()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_enrich_masks_adds_headers_fans_out_and_chains_after_a_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    let redact = r#"{"mask": ["owner.email", "gps"], "headers": {"gateway-id": "gw-7"}, "copy_to": "people-audit"}"#;
    cfg.plugins.load = vec![
        plugin("redact", "redact_enrich.wasm", redact),
        plugin("hot", "json_filter.wasm", "temp > 20"),
        plugin(
            "tag",
            "redact_enrich.wasm",
            r#"{"headers": {"site": "north"}}"#,
        ),
    ];
    cfg.plugins.bindings = vec![
        bind("people", &["redact"], OnError::FailClosed),
        bind("mixed", &["hot", "tag"], OnError::FailClosed),
    ];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();

    let input = [
        (
            Some("d1"),
            r#"{"owner":{"name":"ann","email":"a@x.org"},"gps":[1.5,2],"temp":21}"#,
        ),
        (Some("d2"), r#"{"temp": 19}"#),
        (None, "not json"),
        (Some("d3"), r#"{"owner":"bob","gps":null,"end":true}"#),
    ];
    let want_values = [
        r#"{"owner":{"name":"ann","email":"***"},"gps":"***","temp":21}"#,
        r#"{"temp": 19}"#,
        "not json",
        r#"{"owner":"bob","gps":"***","end":true}"#,
    ];
    for codec in ["none", "zstd"] {
        let p = producer(&bootstrap, codec, &[]);
        let records: Vec<_> = input.iter().map(|(k, v)| (*k, *v, None)).collect();
        send(&p, "people", &records).await;
    }
    let last = want_values[3];
    for topic in ["people", "people-audit"] {
        let got = consume(&bootstrap, topic, last).await;
        let got = if got.len() > 4 {
            got[..4].to_vec()
        } else {
            got
        };
        let want: Vec<Seen> = input
            .iter()
            .zip(want_values)
            .map(|((k, _), v)| Seen {
                key: k.map(str::to_owned),
                value: v.to_owned(),
                headers: vec![("gateway-id".into(), "gw-7".into())],
            })
            .collect();
        assert_eq!(got, want, "{topic}");
    }
    // Both codecs' rounds arrived in both topics.
    assert_eq!(log_end(&broker, "people"), 8);
    assert_eq!(log_end(&broker, "people-audit"), 8);

    // A filter then a transform in one chain: only hot readings, each tagged.
    let p = producer(&bootstrap, "lz4", &[]);
    let values = [
        r#"{"temp":30}"#,
        r#"{"temp":10}"#,
        "junk",
        r#"{"temp":25,"end":1}"#,
    ];
    let records: Vec<_> = values.iter().map(|v| (Some("k"), *v, None)).collect();
    send(&p, "mixed", &records).await;
    let got = consume(&bootstrap, "mixed", values[3]).await;
    let want: Vec<Seen> = [values[0], values[3]]
        .iter()
        .map(|v| Seen {
            key: Some("k".into()),
            value: v.to_string(),
            headers: vec![("site".into(), "north".into())],
        })
        .collect();
    assert_eq!(got, want);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_drops_repeated_readings_per_device_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    let config = r#"{"device": "device", "value": "temp", "window_ms": 10000}"#;
    cfg.plugins.load = vec![plugin("dedup", "dedup.wasm", config)];
    cfg.plugins.bindings = vec![bind("readings", &["dedup"], OnError::FailClosed)];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let t0 = 1_700_000_000_000i64;
    // (ms after t0, device, temp, kept)
    let plan: [(i64, &str, i32, bool); 10] = [
        (0, "a", 20, true),
        (1000, "a", 20, false),
        (1500, "b", 20, true),
        (2000, "a", 21, true),
        (3000, "a", 21, false),
        (4000, "b", 20, false),
        (5000, "a", 20, true),
        (11999, "a", 20, false),
        (15000, "a", 20, true),
        (16000, "b", 22, true),
    ];
    let values: Vec<String> = plan
        .iter()
        .enumerate()
        .map(|(i, (_, d, t, _))| format!(r#"{{"device":"{d}","temp":{t},"n":{i}}}"#))
        .collect();
    let p = producer(&bootstrap, "gzip", &[]);
    // Two bursts: the state carries over from one batch to the next.
    for half in [0..5, 5..10] {
        let records: Vec<_> = half
            .map(|i| (None, values[i].as_str(), Some(t0 + plan[i].0)))
            .collect();
        send(&p, "readings", &records).await;
    }
    let got = consume(&bootstrap, "readings", &values[9]).await;
    let got: Vec<&str> = got.iter().map(|s| s.value.as_str()).collect();
    let want: Vec<&str> = plan
        .iter()
        .zip(&values)
        .filter(|(p, _)| p.3)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(got, want);
    broker.shutdown().await;
}

/// An idempotent producer's batches may lose records, or all of them, to a filter: the stored
/// batches keep the producer's sequence numbers, so every later batch is in sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_survive_dropped_records_and_dropped_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![
        plugin("hot", "json_filter.wasm", "temp > 20"),
        plugin("redact", "redact_enrich.wasm", r#"{"mask": ["pin"]}"#),
    ];
    cfg.plugins.bindings = vec![bind("idem", &["hot", "redact"], OnError::FailClosed)];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let idempotent = [("enable.idempotence", "true"), ("retries", "5")];
    let p = producer(&bootstrap, "snappy", &idempotent);
    let rounds: [&[&str]; 4] = [
        &[r#"{"temp":30,"pin":1}"#, r#"{"temp":3}"#, r#"{"temp":31}"#],
        &[r#"{"temp":1}"#, r#"{"temp":2}"#], // every record dropped
        &[r#"{"temp":5}"#, r#"{"temp":40,"pin":2}"#],
        &[r#"{"temp":50,"end":1}"#],
    ];
    for round in rounds {
        let records: Vec<_> = round.iter().map(|v| (Some("dev"), *v, None)).collect();
        send(&p, "idem", &records).await;
    }
    let got = consume(&bootstrap, "idem", r#"{"temp":50,"end":1}"#).await;
    let got: Vec<&str> = got.iter().map(|s| s.value.as_str()).collect();
    assert_eq!(
        got,
        vec![
            r#"{"temp":30,"pin":"***"}"#,
            r#"{"temp":31}"#,
            r#"{"temp":40,"pin":"***"}"#,
            r#"{"temp":50,"end":1}"#,
        ]
    );
    // The dropped records' offsets stay unused: 3 + 2 + 2 + 1 offsets for 4 records.
    assert_eq!(log_end(&broker, "idem"), 8);
    broker.shutdown().await;
}

/// A producer's delivery reports give each record base offset + its position in its batch (a
/// produce response has only the base): when a filter drops records from the start, middle and
/// end of a batch, every kept record is read at the offset its report gave, through a chain of
/// filters (copied in place) and through a filter and a transform (decoded and re-encoded), for
/// idempotent producers and others, uncompressed and compressed; a batch it empties still gets
/// its own offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_reports_give_the_offsets_kept_records_are_read_at() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![
        plugin("hot", "json_filter.wasm", "temp > 20"),
        plugin("redact", "redact_enrich.wasm", r#"{"mask": ["pin"]}"#),
    ];
    cfg.plugins.bindings = vec![
        bind("filtered", &["hot"], OnError::FailClosed),
        bind("transformed", &["hot", "redact"], OnError::FailClosed),
    ];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let one_batch_of_six = [("linger.ms", "5000"), ("batch.num.messages", "6")];
    let temps = [1, 30, 2, 31, 32, 3];
    let mut reported = std::collections::HashMap::new();
    let mut last = std::collections::HashMap::new();
    let mut round = 0;
    for topic in ["filtered", "transformed"] {
        for codec in ["none", "lz4"] {
            for idempotence in ["true", "false"] {
                let mut settings = one_batch_of_six.to_vec();
                settings.push(("enable.idempotence", idempotence));
                let p = producer(&bootstrap, codec, &settings);
                let values: Vec<String> = temps
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        format!(r#"{{"temp":{t},"pin":{round},"round":{round},"n":{i}}}"#)
                    })
                    .collect();
                let records: Vec<_> = values
                    .iter()
                    .map(|v| (Some("d"), v.as_str(), None))
                    .collect();
                let offsets = send(&p, topic, &records).await;
                // One batch: consecutive offsets from its base.
                assert_eq!(
                    offsets,
                    (offsets[0]..offsets[0] + 6).collect::<Vec<_>>(),
                    "{topic} {codec} idempotence={idempotence}"
                );
                for (i, offset) in offsets.into_iter().enumerate() {
                    if temps[i] > 20 {
                        let pin = if topic == "filtered" {
                            round.to_string()
                        } else {
                            r#""***""#.into()
                        };
                        let stored = format!(
                            r#"{{"temp":{},"pin":{pin},"round":{round},"n":{i}}}"#,
                            temps[i]
                        );
                        reported.insert(stored.clone(), offset);
                        last.insert(topic, stored);
                    }
                }
                round += 1;
            }
        }
        // A batch the filter empties still gets its offsets (librdkafka would report -1 + i
        // for a base offset of -1, an offset another record may hold).
        let p = producer(&bootstrap, "none", &ONE_BATCH_OF_TWO);
        let cold = [(None, r#"{"temp":5}"#, None), (None, r#"{"temp":6}"#, None)];
        assert_eq!(send(&p, topic, &cold).await, [24, 25], "{topic}");
    }
    for topic in ["filtered", "transformed"] {
        let got = tokio::task::spawn_blocking({
            let (bootstrap, last) = (bootstrap.clone(), last[topic].clone());
            move || consume_until(&bootstrap, topic, &last)
        })
        .await
        .unwrap();
        assert_eq!(got.len(), 12, "{topic}: 4 batches of 3 kept records");
        for m in &got {
            let value = seen(m).value;
            assert_eq!(
                reported.get(&value),
                Some(&m.offset()),
                "{topic}: {value} is read at {} but its delivery report said {:?}",
                m.offset(),
                reported.get(&value)
            );
        }
        // The dropped records' offsets stay unused: 4 batches of 6, then the emptied one.
        assert_eq!(log_end(&broker, topic), 26);
        assert_eq!(stored_records(&broker, topic), 12);
    }
    broker.shutdown().await;
}

/// A consumer tailing a topic whose filter empties whole batches of an idempotent producer
/// (each stored as a batch without records, for the producer's sequence numbers) is never
/// answered with those batches alone: librdkafka, reading no message in such an answer, takes
/// it for a message too large to fetch (doubling its fetch size, then MSG_SIZE_TOO_LARGE at
/// every fetch, which ended `runnel consume`). They go out with the next record kept. A batch
/// whose last record was dropped (its span ends past its last record) does not stop it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_tailing_batches_a_filter_emptied_sees_no_error() {
    use rdkafka::consumer::Consumer;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("hot", "json_filter.wasm", "temp > 20")];
    cfg.plugins.bindings = vec![bind("quiet", &["hot"], OnError::FailClosed)];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let idempotent = [("enable.idempotence", "true"), ("linger.ms", "0")];
    let p = producer(&bootstrap, "none", &idempotent);
    send(&p, "quiet", &[(None, r#"{"temp":30,"n":0}"#, None)]).await;
    // A consumer that has read the first record and waits at the log end.
    let b = bootstrap.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let tail = tokio::task::spawn_blocking(move || {
        let c = common::reader(&b, "quiet");
        let (mut values, mut errors) = (Vec::new(), Vec::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while std::time::Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    if values.is_empty() {
                        ready_tx.send(()).unwrap();
                    }
                    let last = v.contains(r#""n":99"#);
                    values.push(v);
                    if last {
                        break;
                    }
                }
                Some(Err(e)) => errors.push(e.to_string()),
                None => {}
            }
        }
        let position = c.position().unwrap();
        (values, errors, position.elements()[0].offset())
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    // Sixteen batches the filter empties, one at a time, a fetch apart.
    for i in 0..16 {
        send(
            &p,
            "quiet",
            &[(None, &format!(r#"{{"temp":{i},"n":1}}"#), None)],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let two = producer(&bootstrap, "none", &ONE_BATCH_OF_TWO);
    let pair = [
        (None, r#"{"temp":35,"n":2}"#, None),
        (None, r#"{"temp":6,"n":3}"#, None),
    ];
    assert_eq!(send(&two, "quiet", &pair).await, [17, 18]);
    // The consumer, past offset 17, fetches from 18 (the dropped record's) meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&p, "quiet", &[(None, r#"{"temp":40,"n":99}"#, None)]).await;
    let (values, errors, position) = tail.await.unwrap();
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert_eq!(
        values,
        vec![
            r#"{"temp":30,"n":0}"#,
            r#"{"temp":35,"n":2}"#,
            r#"{"temp":40,"n":99}"#
        ]
    );
    assert_eq!(log_end(&broker, "quiet"), 20);
    assert_eq!(
        position,
        rdkafka::Offset::Offset(20),
        "past the emptied batches"
    );
    broker.shutdown().await;
}

/// A chain of filters over uncompressed batches works on the batch in place (no decode and
/// re-encode): the same guarantees hold there. An idempotent producer's batches that lose some
/// or all records stay in sequence, the kept records keep their keys and timestamps, and a
/// failing filter's batch goes to the dead-letter topic as produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_over_uncompressed_batches_keep_sequences_timestamps_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![
        plugin("hot", "json_filter.wasm", "temp > 20"),
        plugin("trapper", "faulty_filter.wasm", "trap"),
    ];
    let mut dl = bind("dl", &["hot", "trapper"], OnError::DeadLetter);
    dl.dead_letter_topic = Some("dl-failed".into());
    cfg.plugins.bindings = vec![bind("idem", &["hot"], OnError::FailClosed), dl];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let idempotent = [("enable.idempotence", "true"), ("retries", "5")];
    let p = producer(&bootstrap, "none", &idempotent);
    // Timestamps out of order within a batch: the first kept record is not the earliest.
    let rounds: [&[(&str, i64)]; 4] = [
        &[
            (r#"{"temp":30}"#, 5_000),
            (r#"{"temp":3}"#, 1_000),
            (r#"{"temp":31}"#, 4_000),
        ],
        &[(r#"{"temp":1}"#, 6_000), (r#"{"temp":2}"#, 7_000)], // every record dropped
        &[(r#"{"temp":5}"#, 8_000), (r#"{"temp":40}"#, 9_000)],
        &[(r#"{"temp":50,"end":1}"#, 2_000)],
    ];
    for (round, records) in rounds.iter().enumerate() {
        let keys: Vec<String> = (0..records.len())
            .map(|i| format!("r{round}-{i}"))
            .collect();
        let records: Vec<_> = records
            .iter()
            .zip(&keys)
            .map(|((v, ts), k)| (Some(k.as_str()), *v, Some(1_700_000_000_000 + ts)))
            .collect();
        send(&p, "idem", &records).await;
    }
    let got = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || consume_until(&bootstrap, "idem", r#"{"temp":50,"end":1}"#)
    })
    .await
    .unwrap();
    let got: Vec<(String, String, Option<i64>)> = got
        .iter()
        .map(|m| {
            let s = seen(m);
            (
                s.key.unwrap_or_default(),
                s.value,
                m.timestamp().to_millis(),
            )
        })
        .collect();
    let want =
        |k: &str, v: &str, ts: i64| (k.to_owned(), v.to_owned(), Some(1_700_000_000_000 + ts));
    assert_eq!(
        got,
        vec![
            want("r0-0", r#"{"temp":30}"#, 5_000),
            want("r0-2", r#"{"temp":31}"#, 4_000),
            want("r2-1", r#"{"temp":40}"#, 9_000),
            want("r3-0", r#"{"temp":50,"end":1}"#, 2_000),
        ]
    );
    // The dropped records' offsets stay unused: 3 + 2 + 2 + 1 offsets for 4 records.
    assert_eq!(log_end(&broker, "idem"), 8);

    // The trap after the filter: the batch as produced (the cold record too) is dead-lettered.
    let p = producer(&bootstrap, "none", &ONE_BATCH_OF_TWO);
    let values = [r#"{"temp":30,"n":1}"#, r#"{"temp":1,"n":2}"#];
    let records: Vec<_> = values.iter().map(|v| (Some("dev"), *v, None)).collect();
    send(&p, "dl", &records).await;
    let got = consume(&bootstrap, "dl-failed", values[1]).await;
    let got_values: Vec<&str> = got.iter().map(|g| g.value.as_str()).collect();
    assert_eq!(got_values, values);
    for g in &got {
        assert_eq!(g.key.as_deref(), Some("dev"));
        assert!(
            g.headers
                .iter()
                .any(|(k, v)| k == DLT_PLUGIN && v == "trapper"),
            "{:?}",
            g.headers
        );
    }
    assert_eq!(stored_records(&broker, "dl"), 0);
    assert_eq!(log_end(&broker, "dl"), 2, "the emptied batch's offsets");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_takes_failed_batches_and_a_failing_plugin_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.admin.enabled = true;
    cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
    cfg.plugins.disable_after = 3;
    cfg.plugins.load = vec![
        plugin("trapper", "faulty_filter.wasm", "trap"),
        plugin("hot", "json_filter.wasm", "temp > 20"),
    ];
    let mut dl = bind("readings", &["hot", "trapper"], OnError::DeadLetter);
    dl.dead_letter_topic = Some("readings-failed".into());
    cfg.plugins.bindings = vec![dl, bind("closed", &["trapper"], OnError::FailClosed)];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let p = producer(&bootstrap, "lz4", &ONE_BATCH_OF_TWO);
    let mut sent = Vec::new();
    for round in 0..5 {
        // The records as produced (the json filter before the trap would have dropped the
        // cold one) go to the dead-letter topic.
        let values = [
            format!(r#"{{"temp":30,"round":{round}}}"#),
            format!(r#"{{"temp":1,"round":{round}}}"#),
        ];
        let records: Vec<_> = values
            .iter()
            .map(|v| (Some("dev"), v.as_str(), None))
            .collect();
        send(&p, "readings", &records).await;
        sent.extend(values);
    }
    let got = consume(&bootstrap, "readings-failed", sent.last().unwrap()).await;
    assert_eq!(got.len(), sent.len());
    for (i, (g, v)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(
            (g.key.as_deref(), g.value.as_str()),
            (Some("dev"), v.as_str())
        );
        let header = |name: &str| {
            g.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("record {i}: no header {name}: {:?}", g.headers))
        };
        assert_eq!(header(DLT_PLUGIN), "trapper");
        assert_eq!(header(DLT_TOPIC), "readings");
        assert_eq!(header(DLT_PARTITION), "0");
        let error = header(DLT_ERROR);
        if i < 6 {
            // Rounds 0-2 reached the guest: a trap, reported in one line (the panic's message
            // and place, which the plugin logged, then the trap's reason and innermost frame,
            // not the whole wasm backtrace).
            assert!(
                error.contains("plugin trapper: trapped: panicked at faulty-filter/src/lib.rs:"),
                "{error}"
            );
            assert!(
                error.contains(": faulty-filter: trap on purpose ("),
                "{error}"
            );
            assert!(!error.contains('\n'), "{error}");
        } else {
            // Then the plugin is disabled: the policy applies without calling it.
            assert!(error.contains("disabled"), "{error}");
        }
    }
    // Nothing was stored in the bound topic.
    assert_eq!(stored_records(&broker, "readings"), 0);

    // The disabled plugin fails at once on every binding: fail-closed refuses.
    let set = broker.broker.plugins.current();
    let trapper = &set.loaded[0];
    assert!(trapper.is_disabled());
    let inst = trapper
        .stats
        .instantiations
        .load(std::sync::atomic::Ordering::Relaxed);
    let results = produce(&bootstrap, "closed", "none", &[r#"{"temp":30}"#.into()]).await;
    let e = results[0].as_deref().expect("refused");
    assert!(e.contains("PolicyViolation") || e.contains("policy"), "{e}");
    assert_eq!(
        trapper
            .stats
            .instantiations
            .load(std::sync::atomic::Ordering::Relaxed),
        inst,
        "a disabled plugin is not instantiated again"
    );

    let admin = broker.admin_addr.unwrap();
    let m = common::http_get(admin, "/metrics").await;
    assert!(
        m.contains("runnel_plugin_calls_total{plugin=\"trapper\"} 6"),
        "{m}"
    );
    assert!(
        m.contains("runnel_plugin_faults_total{plugin=\"trapper\"} 6"),
        "{m}"
    );
    assert!(
        m.contains("runnel_plugin_disabled{plugin=\"trapper\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("runnel_plugin_calls_total{plugin=\"hot\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("runnel_plugin_faults_total{plugin=\"hot\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("runnel_plugin_disabled{plugin=\"hot\"} 0"),
        "{m}"
    );
    // GET /plugins (and so `runnel plugin list`) says which is disabled.
    let response = common::http_get(admin, "/plugins").await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let list: runnel::admin::plugins::PluginList = serde_json::from_str(body).unwrap();
    let state: Vec<(&str, bool)> = list
        .plugins
        .iter()
        .map(|p| (p.name.as_str(), p.disabled))
        .collect();
    assert_eq!(state, [("trapper", true), ("hot", false)]);
    broker.shutdown().await;
}

/// With `broker.auto_create_topics = false`, a transform routing to a missing topic fails its
/// call: the binding's policy decides, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_to_a_missing_topic_without_auto_create_applies_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.auto_create_topics = false;
    let copy = r#"{"headers": {"h": "v"}, "copy_to": "nowhere"}"#;
    cfg.plugins.load = vec![plugin("copy", "redact_enrich.wasm", copy)];
    cfg.plugins.bindings = vec![
        bind("open", &["copy"], OnError::FailOpen),
        bind("closed", &["copy"], OnError::FailClosed),
    ];
    let broker = common::start_with(cfg).await;
    for t in ["open", "closed"] {
        broker
            .broker
            .catalog
            .create_topic(t, 1, 1, Default::default(), false, 0)
            .unwrap();
    }
    let bootstrap = broker.bootstrap();
    let results = produce(&bootstrap, "closed", "none", &["a".into()]).await;
    let e = results[0].as_deref().expect("refused");
    assert!(e.contains("PolicyViolation") || e.contains("policy"), "{e}");
    let results = produce(&bootstrap, "open", "none", &["a".into(), "b".into()]).await;
    assert!(results.iter().all(Option::is_none), "{results:?}");
    // Fail-open: the batch passed the transform unchanged (no header added).
    let got = consume(&bootstrap, "open", "b").await;
    let want: Vec<Seen> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, v)| Seen {
            key: Some(format!("k{i}")),
            value: v.to_string(),
            headers: vec![],
        })
        .collect();
    assert_eq!(got, want);
    assert!(broker.broker.catalog.get("nowhere").is_none());
    assert_eq!(log_end(&broker, "closed"), 0);
    broker.shutdown().await;
}

/// The chain runs for QUIC devices as for Kafka clients: acknowledged produce (idempotent, from
/// the device SDK) and fire-and-forget datagrams alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_filters_what_quic_devices_send_acknowledged_or_as_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.quic.enabled = true;
    cfg.listeners.quic.address = "127.0.0.1:0".parse().unwrap();
    cfg.plugins.load = vec![plugin("hot", "json_filter.wasm", "temp > 20")];
    cfg.plugins.bindings = vec![bind("readings", &["hot"], OnError::FailClosed)];
    let broker = common::start_with(cfg).await;
    let mut dc = runnel_device::DeviceConfig::new(
        broker.quic_addr.unwrap(),
        runnel_device::Trust::Fingerprint(broker.quic_fingerprint.clone().unwrap()),
    );
    dc.linger = Duration::from_millis(20);
    let device = runnel_device::Device::connect(dc).await.unwrap();
    // One batch: the cold readings are dropped from the middle of an idempotent batch.
    let sends: Vec<_> = [25, 10, 30, 5]
        .iter()
        .map(|t| {
            let value = format!(r#"{{"src":"ack","temp":{t}}}"#);
            device
                .enqueue("readings", 0, Some(b"dev-1"), value.as_bytes())
                .unwrap()
        })
        .collect();
    let mut acks = Vec::new();
    for s in sends {
        acks.push(s.await.expect("acknowledged (kept or filtered)"));
    }
    // The producer's sequence still lines up: a later batch is accepted.
    let last = device
        .send("readings", Some(b"dev-1"), br#"{"src":"ack","temp":40}"#)
        .await
        .unwrap();
    for t in [3, 33] {
        let value = format!(r#"{{"src":"datagram","temp":{t}}}"#);
        device
            .send_datagram("readings", 0, Some(b"dev-1"), value.as_bytes())
            .await
            .unwrap();
        // Paced, so loopback loses none.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = tokio::task::spawn_blocking({
        let bootstrap = broker.bootstrap();
        move || consume_until(&bootstrap, "readings", r#"{"src":"datagram","temp":33}"#)
    })
    .await
    .unwrap();
    let values: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(
        values,
        [
            r#"{"src":"ack","temp":25}"#,
            r#"{"src":"ack","temp":30}"#,
            r#"{"src":"ack","temp":40}"#,
            r#"{"src":"datagram","temp":33}"#,
        ]
    );
    // Each kept reading is read at the offset its acknowledgement gave.
    let offsets: Vec<i64> = got.iter().take(3).map(|m| m.offset()).collect();
    assert_eq!(offsets, [acks[0].offset, acks[2].offset, last.offset]);
    device.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_does_not_decode_is_refused_before_the_chain_runs() {
    use kafka_protocol::records::Compression;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.max_message_bytes = 10_000;
    cfg.plugins.load = vec![plugin("hot", "json_filter.wasm", "temp > 20")];
    cfg.plugins.bindings = vec![bind("readings", &["hot"], OnError::FailClosed)];
    cfg.listeners.admin.enabled = true;
    cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let results = produce(
        &bootstrap,
        "readings",
        "none",
        &[r#"{"temp":30}"#.to_string()],
    )
    .await;
    assert_eq!(results, vec![None]);

    let mut c = common::RawClient::connect(&bootstrap).await;
    let rec = common::record(0, Some(b"k"), br#"{"temp":40}"#, 1_700_000_000_000);
    let plain = common::encode_batch(&[rec], Compression::None);
    let cases = [
        (
            "gzip that is not gzip",
            common::with_records(&plain, 1, b"not gzip at all"),
            2,
        ),
        (
            "records inflating past 16 x max.message.bytes",
            common::with_records(
                &plain,
                1,
                &common::gzip(&common::one_record(&vec![b'x'; 1 << 20])),
            ),
            87,
        ),
    ];
    for (what, records, code) in cases {
        let r = c
            .call(&common::produce_request("readings", 0, 1, records), 9)
            .await;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, code, "{what}: {:?}", p.error_message);
    }
    // Refused before the chain: the plugin was called for the first batch only.
    let metrics = common::http_get(broker.admin_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("runnel_plugin_calls_total{plugin=\"hot\"} 1\n"),
        "{metrics}"
    );
    // The chain and the partition go on.
    let results = produce(
        &bootstrap,
        "readings",
        "gzip",
        &[r#"{"temp":50}"#.to_string()],
    )
    .await;
    assert_eq!(results, vec![None]);
    let got = tokio::task::spawn_blocking(move || {
        consume_until(&bootstrap, "readings", r#"{"temp":50}"#)
    })
    .await
    .unwrap();
    let values: Vec<_> = got.iter().map(|m| m.payload().unwrap().to_vec()).collect();
    assert_eq!(
        values,
        vec![br#"{"temp":30}"#.to_vec(), br#"{"temp":50}"#.to_vec()]
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_waits_for_the_plugin_s_instances_and_none_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("hot", "json_filter.wasm", "temp > 20")];
    cfg.plugins.bindings = vec![bind("burst", &["hot"], OnError::FailClosed)];
    let broker = common::start_with(cfg).await;
    let plugins = broker.broker.plugins.current();
    let hot = plugins.loaded[0].clone();
    // Many more calls at once than the plugin has instances (its share of the pooling
    // allocator): each waits for one, and none fails or counts against the plugin.
    let calls = 6 * runnel::plugins::host::CALLS_PER_PLUGIN as usize;
    let records: Vec<_> = (0..3000)
        .map(|i| {
            let value = format!("{{\"temp\": {}}}", 15 + i % 10);
            runnel::plugins::OwnedRecord {
                timestamp: 1_700_000_000_000 + i,
                key: None,
                value: Some(value.into()),
                headers: Vec::new(),
            }
        })
        .collect();
    let frame = runnel::plugins::frame_records("burst", 0, &records);
    let start = std::sync::Arc::new(std::sync::Barrier::new(calls));
    let threads: Vec<_> = (0..calls)
        .map(|_| {
            let (hot, frame, start) = (hot.clone(), frame.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                hot.call(frame, Ok).map(|answer| answer.len())
            })
        })
        .collect();
    for t in threads {
        let answer = t.join().unwrap();
        assert!(answer.is_ok(), "{answer:?}");
    }
    assert_eq!(
        hot.stats.faults.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(!hot.is_disabled());
    let instances = hot
        .stats
        .instantiations
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        instances <= runnel::plugins::host::CALLS_PER_PLUGIN as u64,
        "{instances} instances"
    );
    broker.shutdown().await;
}

/// When the plugins leave none of a produce's records in its partition (all dead-lettered)
/// and the copies then cannot be appended (the dead-letter partition's directory is gone, so
/// its next segment cannot be made), the producer hears it (KAFKA_STORAGE_ERROR) rather than
/// being told the records were stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_that_cannot_be_appended_fail_the_produce_that_kept_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.segment_bytes = 1024;
    cfg.plugins.disable_after = 0;
    cfg.plugins.load = vec![plugin("trapper", "faulty_filter.wasm", "trap")];
    let mut dl = bind("in", &["trapper"], OnError::DeadLetter);
    dl.dead_letter_topic = Some("in-failed".into());
    cfg.plugins.bindings = vec![dl];
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    common::NamedClient::connect(&addr, "admin")
        .await
        .create("in")
        .await;
    let mut c = common::RawClient::connect(&addr).await;
    let produce = |value: &[u8]| {
        let records = [common::record(0, Some(b"k"), value, 1_700_000_000_000)];
        let batch = common::encode_batch(&records, kafka_protocol::records::Compression::None);
        common::produce_request("in", 0, -1, batch)
    };
    let r = c.call(&produce(&[b'a'; 100]), 9).await;
    let part = &r.responses[0].partition_responses[0];
    assert_eq!((part.error_code, part.error_message.as_deref()), (0, None));
    assert_eq!(log_end(&broker, "in-failed"), 1);
    // The next copy does not fit the dead-letter partition's segment: it needs a new one.
    std::fs::remove_dir_all(dir.path().join("in-failed-0")).unwrap();
    let r = c.call(&produce(&[b'b'; 500]), 9).await;
    let part = &r.responses[0].partition_responses[0];
    assert_eq!(
        part.error_code,
        E::KafkaStorageError.code(),
        "{:?}",
        part.error_message
    );
    assert_eq!(log_end(&broker, "in-failed"), 1);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_over_the_topic_s_size_limit_is_split_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.disable_after = 0;
    cfg.plugins.load = vec![plugin("trapper", "faulty_filter.wasm", "trap")];
    let mut dl = bind("big", &["trapper"], OnError::DeadLetter);
    dl.dead_letter_topic = Some("big-failed".into());
    cfg.plugins.bindings = vec![dl];
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    common::NamedClient::connect(&addr, "admin")
        .await
        .create("big")
        .await;
    let mut c = common::RawClient::connect(&addr).await;
    // Just under max.message.bytes as produced; the headers each dead-letter record gains
    // (topic, partition, plugin, error) take the copy well over it.
    let value = [b'v'; 90];
    let records: Vec<_> = (0..9_000)
        .map(|i| {
            common::record(
                i,
                Some(format!("k{i}").as_bytes()),
                &value,
                1_700_000_000_000,
            )
        })
        .collect();
    let batch = common::encode_batch(&records, kafka_protocol::records::Compression::None);
    assert!(batch.len() < 1_048_588, "{}", batch.len());
    let r = c
        .call(&common::produce_request("big", 0, -1, batch), 9)
        .await;
    let part = &r.responses[0].partition_responses[0];
    assert_eq!((part.error_code, part.error_message.as_deref()), (0, None));
    assert_eq!(
        stored_records(&broker, "big"),
        0,
        "nothing kept in the topic itself"
    );
    assert_eq!(
        log_end(&broker, "big-failed"),
        9_000,
        "every record in the dead-letter topic"
    );
    broker.shutdown().await;
}

/// A dead-letter copy no append can store (one record, with the headers it gains, over the
/// dead-letter topic's `max.message.bytes`) refuses the produce with the reason, for an
/// idempotent producer as for any: the record is neither lost nor reported stored (QA: the
/// idempotent producer was told it was stored, and it was nowhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_no_append_can_store_refuses_the_produce() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.disable_after = 0;
    cfg.plugins.load = vec![plugin("trapper", "faulty_filter.wasm", "trap")];
    let mut dl = bind("tiny", &["trapper"], OnError::DeadLetter);
    dl.dead_letter_topic = Some("tiny-failed".into());
    cfg.plugins.bindings = vec![dl];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let admin: AdminClient<DefaultClientContext> =
        common::client_config(&bootstrap).create().unwrap();
    let topics = [
        NewTopic::new("tiny", 1, TopicReplication::Fixed(1)),
        NewTopic::new("tiny-failed", 1, TopicReplication::Fixed(1))
            .set("max.message.bytes", "2000"),
    ];
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    for idempotent in ["true", "false"] {
        let p = producer(
            &bootstrap,
            "none",
            &[("enable.idempotence", idempotent), ("retries", "2")],
        );
        let value = "x".repeat(1_900);
        let sent = p
            .send(
                FutureRecord::<str, str>::to("tiny")
                    .payload(&value)
                    .partition(0),
                Duration::from_secs(10),
            )
            .await;
        let (e, _) = sent.expect_err("refused: the dead-letter topic cannot take it");
        assert_eq!(
            e.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::PolicyViolation),
            "idempotent={idempotent}: {e}"
        );
        assert_eq!(log_end(&broker, "tiny-failed"), 0);
    }
    broker.shutdown().await;
}
