//! Quota policies end to end: the real token-bucket and faulty-quota plugins (built here for
//! wasm32-wasip2), a real broker, raw protocol clients to read throttle_time_ms and time the
//! mutes, and librdkafka producers and consumers.

mod common;

use common::NamedClient as Client;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::wasm::wasm_dir;
use edge_config::{OnError, PluginSpec, QuotaApi, QuotaBinding};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, MetadataRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const POLICY_VIOLATION: i16 = 44;

fn plugin(name: &str, file: &str, config: &str) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: wasm_dir().join(file),
        config: config.into(),
    }
}

fn quota(plugin: &str, apis: &[QuotaApi], on_error: OnError) -> QuotaBinding {
    QuotaBinding {
        plugin: plugin.into(),
        listeners: Vec::new(),
        principals: Vec::new(),
        apis: apis.to_vec(),
        on_error,
    }
}

fn name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

// What these tests add to the raw connections of `common` that send as a client id.
impl Client {
    /// Produces one record of `size` bytes to partition 0 of `topic`.
    async fn produce(
        &mut self,
        topic: &str,
        size: usize,
        version: i16,
    ) -> (ProduceResponse, Duration) {
        let record = common::record(0, None, &vec![b'x'; size], 1_700_000_000_000);
        let batch = common::encode_batch(&[record], Compression::None);
        let req = common::produce_request(topic, 0, -1, batch);
        self.call(&req, version).await
    }

    async fn fetch(&mut self, topic: &str, version: i16) -> (FetchResponse, Duration) {
        let req = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(4 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(name(topic))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(4 << 20),
                    ]),
            ]);
        self.call(&req, version).await
    }
}

fn error_of(r: &ProduceResponse) -> (i16, String) {
    let p = &r.responses[0].partition_responses[0];
    (
        p.error_code,
        p.error_message
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

/// A client over its rate is accepted and throttled the Kafka way: throttle_time_ms is the time
/// its debt takes to refill, the response comes at once (whatever its version) and the
/// connection is muted afterwards; another client id is not throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_throttled_and_muted_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin(
        "per-client",
        "token_bucket.wasm",
        r#"rate = "50KiB/s", burst = "50KiB", key = "client-id""#,
    )];
    cfg.plugins.quotas = vec![quota("per-client", &[QuotaApi::Produce], OnError::FailOpen)];
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let kib = 1024;

    // Responses that came back throttled, to compare with the broker's metric.
    let mut throttled = 0;
    let mut count = |r: &ProduceResponse| throttled += u64::from(r.throttle_time_ms > 0);
    let mut greedy = Client::connect(&addr, "greedy").await;
    greedy.create("metered").await;
    // 40KiB of a 50KiB bucket: allowed.
    let first = Instant::now();
    let (r, _) = greedy.produce("metered", 40 * kib, 9).await;
    count(&r);
    assert_eq!(error_of(&r).0, 0);
    assert_eq!(r.throttle_time_ms, 0);
    // 40KiB more leaves the bucket about 30KiB in debt: accepted (written), and throttled for
    // the 600ms the refill takes at 50KiB/s, less what refilled between the two calls.
    let (r, took) = greedy.produce("metered", 40 * kib, 9).await;
    let answered = Instant::now();
    let between = (answered - first).as_millis() as i32;
    count(&r);
    let throttle = r.throttle_time_ms;
    assert_eq!(error_of(&r), (0, String::new()));
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 1);
    assert!(
        throttle <= 610 && throttle + between + 10 >= 600,
        "throttle {throttle} ms, {between} ms after the first call"
    );
    // Produce v9 (KIP-219): the response comes at once...
    assert!(took < Duration::from_millis(throttle as u64), "{took:?}");
    // ...and the connection is muted after it: the next request is not handled before the
    // throttle time has passed since that response.
    // (Whether this one is throttled too depends on how long after the refill it is handled.)
    let (r, _) = greedy.produce("metered", 100, 9).await;
    let muted = answered.elapsed();
    count(&r);
    assert_eq!(error_of(&r).0, 0);
    assert!(
        muted >= Duration::from_millis(throttle as u64 * 9 / 10),
        "answered {muted:?} after the throttled response, throttle {throttle} ms"
    );

    // Another client id has its own bucket: not throttled, not muted.
    let mut polite = Client::connect(&addr, "polite").await;
    let (r, _) = polite.produce("metered", 40 * kib, 9).await;
    count(&r);
    assert_eq!((error_of(&r).0, r.throttle_time_ms), (0, 0));

    // Produce v5 (before KIP-219): answered at once too, as Kafka answers since 2.0; the client
    // does not hold back by itself, so its next request waits out the mute.
    let mut oldie = Client::connect(&addr, "oldie").await;
    let (r, _) = oldie.produce("metered", 40 * kib, 5).await;
    count(&r);
    assert_eq!(r.throttle_time_ms, 0);
    let (r, took) = oldie.produce("metered", 40 * kib, 5).await;
    let answered = Instant::now();
    count(&r);
    assert_eq!(error_of(&r).0, 0);
    let throttle = r.throttle_time_ms;
    assert!(throttle >= 300, "{throttle}");
    assert!(took < Duration::from_millis(throttle as u64), "{took:?}");
    let (r, _) = oldie.produce("metered", 100, 5).await;
    count(&r);
    assert!(
        answered.elapsed() >= Duration::from_millis(throttle as u64 * 9 / 10),
        "answered {:?} after the throttled response, throttle {throttle} ms",
        answered.elapsed()
    );

    let m = &broker.broker.metrics;
    assert!(
        throttled >= 2,
        "greedy's second and oldie's second at least"
    );
    assert_eq!(m.quota_throttled.load(Ordering::Relaxed), throttled);
    assert_eq!(m.quota_rejected.load(Ordering::Relaxed), 0);
    let set = broker.broker.plugins.current();
    let stats = &set.quotas.loaded[0].stats;
    // One call per produce request: greedy 3, polite 1, oldie 3.
    assert_eq!(stats.calls.load(Ordering::Relaxed), 7);
    assert_eq!(stats.faults.load(Ordering::Relaxed), 0);
    broker.shutdown().await;
}

/// A librdkafka producer sending as fast as it can is held to the configured rate: it cannot
/// finish before (bytes - burst - one request) / rate, and it is not slowed far below the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_flat_out_converges_to_the_configured_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin(
        "per-client",
        "token_bucket.wasm",
        r#"rate = "256KiB/s", burst = "64KiB""#,
    )];
    cfg.plugins.quotas = vec![quota("per-client", &[QuotaApi::Produce], OnError::FailOpen)];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();

    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("client.id", "bulk")
        .set("linger.ms", "5")
        // One request carries at most one batch of the partition: at most 16KiB.
        .set("batch.size", "16384")
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    // Topic creation and metadata first, so they are not timed.
    producer
        .send(
            FutureRecord::<(), _>::to("bulk")
                .payload("warm-up")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let value = vec![b'v'; 4096];
    let count = 256; // 1MiB of values
    let start = Instant::now();
    let mut futures = Vec::new();
    for _ in 0..count {
        let rec = FutureRecord::<(), _>::to("bulk")
            .payload(&value)
            .partition(0);
        futures.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    for f in futures {
        f.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(10)).unwrap();

    let rate = 256.0 * 1024.0;
    let bytes = (count * value.len()) as f64;
    // The bucket starts with up to the burst (64KiB, less the warm-up) and the last request's
    // debt is paid after its response: the rest needs the refill.
    let floor = (bytes - 64.0 * 1024.0 - 16.0 * 1024.0) / rate;
    let observed = bytes / elapsed;
    eprintln!(
        "1MiB at a 256KiB/s quota: {elapsed:.2}s, {:.0} KiB/s (floor {floor:.2}s)",
        observed / 1024.0
    );
    assert!(
        elapsed >= floor,
        "{elapsed:.2}s < {floor:.2}s: over the rate"
    );
    assert!(
        observed >= rate / 1.5,
        "{:.0} KiB/s: throttled far below the 256KiB/s quota",
        observed / 1024.0
    );
    assert!(
        broker
            .broker
            .metrics
            .quota_throttled
            .load(Ordering::Relaxed)
            >= 10
    );
    broker.shutdown().await;
}

/// A rejection refuses the topic's partitions with POLICY_VIOLATION and the policy's reason,
/// writes nothing, and librdkafka fails the message without retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_produce_gets_policy_violation_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin(
        "capped",
        "token_bucket.wasm",
        r#"rate = "1MiB/s", max_request = "8KiB""#,
    )];
    cfg.plugins.quotas = vec![quota("capped", &[QuotaApi::Produce], OnError::FailOpen)];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();

    let mut raw = Client::connect(&bootstrap, "raw").await;
    raw.create("capped").await;
    let (r, _) = raw.produce("capped", 16 * 1024, 9).await;
    let (code, message) = error_of(&r);
    assert_eq!(code, POLICY_VIOLATION);
    assert!(
        message.contains("rejected by a quota policy") && message.contains("over max_request"),
        "{message}"
    );
    assert_eq!(r.responses[0].partition_responses[0].base_offset, -1);

    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("client.id", "rdkafka")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let big = vec![b'b'; 16 * 1024];
    let err = producer
        .send(
            FutureRecord::<(), _>::to("capped")
                .payload(&big)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .0
        .to_string();
    assert!(
        err.contains("Policy violation") || err.contains("PolicyViolation"),
        "{err}"
    );
    producer
        .send(
            FutureRecord::<(), _>::to("capped")
                .payload("small")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Read back: the small record is the first and only record of the topic.
    let b = bootstrap.clone();
    let got = tokio::task::spawn_blocking(move || {
        let consumer = common::reader(&b, "capped");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                return (m.offset(), m.payload().map(|p| p.to_vec()));
            }
        }
        panic!("nothing to read");
    })
    .await
    .unwrap();
    assert_eq!(got, (0, Some(b"small".to_vec())));
    assert!(broker.broker.metrics.quota_rejected.load(Ordering::Relaxed) >= 2);
    broker.shutdown().await;
}

/// Fetch quotas count response bytes: a fetch that returns more than the bucket holds is
/// answered in full with throttle_time_ms, and the connection is muted afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_over_the_rate_is_throttled_by_its_response_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin(
        "reads",
        "token_bucket.wasm",
        r#"rate = "64KiB/s", burst = "64KiB""#,
    )];
    cfg.plugins.quotas = vec![quota("reads", &[QuotaApi::Fetch], OnError::FailOpen)];
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();

    let mut c = Client::connect(&addr, "reader").await;
    c.create("big").await;
    // Produce is not bound: 3 x 50KiB go in unthrottled.
    for _ in 0..3 {
        let (r, _) = c.produce("big", 50 * 1024, 9).await;
        assert_eq!((error_of(&r).0, r.throttle_time_ms), (0, 0));
    }
    // One fetch returns all ~150KiB: ~86KiB of debt at 64KiB/s is about 1.35s.
    let (r, took) = c.fetch("big", 12).await;
    let answered = Instant::now();
    let data: usize = r.responses[0].partitions[0]
        .records
        .as_ref()
        .map_or(0, Bytes::len);
    assert!(data > 150 * 1024, "{data} bytes fetched");
    let throttle = r.throttle_time_ms;
    assert!((1200..=1400).contains(&throttle), "throttle {throttle} ms");
    assert!(took < Duration::from_millis(throttle as u64), "{took:?}");
    c.fetch("big", 12).await;
    let muted = answered.elapsed();
    assert!(
        muted >= Duration::from_millis(throttle as u64 * 9 / 10),
        "answered {muted:?} after the throttled response, throttle {throttle} ms"
    );
    broker.shutdown().await;
}

/// A quota bound to other listeners or principals is never called for this connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_for_other_listeners_or_principals_is_not_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("slow", "faulty_quota.wasm", "throttle:5000")];
    let mut quic_only = quota(
        "slow",
        &[QuotaApi::Produce, QuotaApi::Fetch],
        OnError::FailOpen,
    );
    quic_only.listeners = vec!["quic".into()];
    let mut devices = quota("slow", &[QuotaApi::Produce], OnError::FailOpen);
    devices.principals = vec!["User:device-1".into()];
    cfg.plugins.quotas = vec![quic_only, devices];
    let broker = common::start_with(cfg).await;

    let mut c = Client::connect(&broker.bootstrap(), "anyone").await;
    c.create("free").await;
    for _ in 0..3 {
        let (r, _) = c.produce("free", 1000, 9).await;
        assert_eq!((error_of(&r).0, r.throttle_time_ms), (0, 0));
    }
    let set = broker.broker.plugins.current();
    let stats = &set.quotas.loaded[0].stats;
    assert_eq!(stats.calls.load(Ordering::Relaxed), 0);
    broker.shutdown().await;
}

/// A quota plugin that loops, traps or runs out of memory fails its call only: fail-open
/// allows the request, fail-closed rejects it with the fault as reason, the instance is rebuilt,
/// the fault counter rises and the broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_quota_plugin_fails_open_or_closed_and_the_broker_stays_up() {
    // What the reason says: a panic's message and place come from the plugin's log line.
    let trapped: &[&str] = &[
        "trapped: panicked at faulty-quota/src/lib.rs:",
        ": faulty-quota: trap on purpose (",
    ];
    for (fault, says) in [
        ("loop", &["call_timeout"][..]),
        ("trap", trapped),
        ("oom", &["memory_limit"][..]),
    ] {
        for on_error in [OnError::FailOpen, OnError::FailClosed] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = common::test_config(dir.path());
            // Long enough that a healthy call descheduled on a loaded machine still ends in time.
            cfg.plugins.call_timeout = Duration::from_secs(1);
            cfg.plugins.memory_limit = 16 << 20;
            cfg.plugins.load = vec![plugin("bad", "faulty_quota.wasm", fault)];
            cfg.plugins.quotas = vec![quota("bad", &[QuotaApi::Produce], on_error)];
            let broker = common::start_with(cfg).await;
            let mut c = Client::connect(&broker.bootstrap(), "victim").await;
            c.create("t").await;
            for round in 0..2 {
                let (r, _) = c.produce("t", 100, 9).await;
                let (code, message) = error_of(&r);
                match on_error {
                    OnError::FailOpen => {
                        assert_eq!(code, 0, "{fault} open: {message}");
                        assert_eq!(r.responses[0].partition_responses[0].base_offset, round);
                    }
                    OnError::FailClosed => {
                        assert_eq!(code, POLICY_VIOLATION, "{fault} closed");
                        for says in says {
                            assert!(message.contains(says), "{fault} closed: {message}");
                        }
                    }
                    OnError::DeadLetter => unreachable!("not a quota policy setting"),
                }
                assert_eq!(r.throttle_time_ms, 0);
            }
            // The broker and this connection still serve other requests.
            let (md, _) = c.call(&MetadataRequest::default(), 9).await;
            assert_eq!(md.brokers.len(), 1);
            let set = broker.broker.plugins.current();
            let stats = &set.quotas.loaded[0].stats;
            assert_eq!(stats.faults.load(Ordering::Relaxed), 2, "{fault}");
            let metrics = broker.broker.metrics.render(&broker.broker);
            assert!(
                metrics.contains("runnel_plugin_faults_total{plugin=\"bad\"} 2"),
                "{metrics}"
            );
            // One instance at load, then a fresh one for the call after the faulted one.
            assert_eq!(stats.instantiations.load(Ordering::Relaxed), 2, "{fault}");
            broker.shutdown().await;
        }
    }
}

/// A plugin of the wrong world, or a config its init refuses, stops start-up with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_plugin_of_the_wrong_world_or_config_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("filter", "json_filter.wasm", "temp > 20")];
    cfg.plugins.quotas = vec![quota("filter", &[QuotaApi::Produce], OnError::FailOpen)];
    let e = format!(
        "{:#}",
        runnel::start_broker(cfg.clone()).await.err().unwrap()
    );
    assert!(
        e.contains("plugin filter: does not implement the runnel:plugin quota world"),
        "{e}"
    );
    cfg.plugins.load = vec![plugin("filter", "token_bucket.wasm", "rate = fast")];
    let e = format!("{:#}", runnel::start_broker(cfg).await.err().unwrap());
    assert!(
        e.contains("plugin filter: init refused its config") && e.contains("expected SIZE/s"),
        "{e}"
    );
}

/// Whatever a policy asks, a connection is throttled at most MAX_THROTTLE_MS (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_throttle_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("greedy", "faulty_quota.wasm", "throttle:4000000000")];
    cfg.plugins.quotas = vec![quota("greedy", &[QuotaApi::Produce], OnError::FailOpen)];
    let broker = common::start_with(cfg).await;
    let mut c = Client::connect(&broker.bootstrap(), "greedy-client").await;
    c.create("t").await;
    // Produce v9 gets its answer first (KIP-219), then the connection is muted.
    let (r, took) = c.produce("t", 100, 9).await;
    assert_eq!(error_of(&r).0, 0);
    assert_eq!(
        r.throttle_time_ms,
        runnel::plugins::quota::MAX_THROTTLE_MS as i32
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    broker.shutdown().await;
}

/// A policy's reason too long for a response string (over 32 KiB: Produce v8 could not encode
/// it, and the connection closed unanswered) is cut, and the client gets POLICY_VIOLATION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_with_a_very_long_reason_is_answered_with_the_reason_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.plugins.load = vec![plugin("wordy", "faulty_quota.wasm", "reject-long")];
    cfg.plugins.quotas = vec![quota("wordy", &[QuotaApi::Produce], OnError::FailOpen)];
    let broker = common::start_with(cfg).await;
    let mut raw = Client::connect(&broker.bootstrap(), "raw").await;
    raw.create("wordy").await;
    for version in [8, 9] {
        let (r, _) = raw.produce("wordy", 10, version).await;
        let (code, message) = error_of(&r);
        assert_eq!(code, POLICY_VIOLATION, "v{version}");
        assert!(
            message.starts_with("rejected by a quota policy: aaaa"),
            "v{version}"
        );
        assert!(
            message.ends_with(" [cut]") && message.len() <= 4102,
            "v{version}: {}",
            message.len()
        );
    }
    broker.shutdown().await;
}
