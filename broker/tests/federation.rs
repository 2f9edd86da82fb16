//! Federation: local topics forwarded to a central Kafka cluster (store and forward).
//!
//! The edge and the central cluster are both real Runnel brokers. Records go in and come out
//! through librdkafka clients, and each test compares every field of every record (key, value,
//! headers in order, timestamp and its type) and the order within each partition. Arrival is
//! awaited on the central broker's catalog (its log end offsets), so that waiting never makes
//! the central cluster create a topic; the contents are then read with a consumer up to the high
//! watermark, so duplicates show as a difference.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_config::FederationLink;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, Timestamp, TopicPartitionList};
use runnel::{BrokerHandle, Config};

/// Longest wait for anything that should happen: generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

const FORWARDED: &str = "runnel_federation_forwarded_records_total";
const PENDING: &str = "runnel_federation_pending_records";

/// One record as a client sees it: everything forwarding must keep.
#[derive(Clone, Debug, PartialEq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Timestamp,
}

impl Rec {
    fn from_message(m: &BorrowedMessage<'_>) -> Rec {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Rec {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: m.timestamp(),
        }
    }
}

/// Record `i` of a test: keys, values and headers vary, some are null, some values are empty
/// (not null) and one header has a null value.
/// Timestamps are an hour old (well inside retention) and not in send order, so a broker that
/// stamped its own time, or kept only one per batch, is seen.
fn record(i: usize, base_ms: i64) -> Rec {
    let key = (i % 50 != 7).then(|| format!("key-{i}").into_bytes());
    let value = match i % 13 {
        0 => None,
        5 => Some(Vec::new()),
        _ => Some(format!("value-{i}-{}", "x".repeat(i % 40)).into_bytes()),
    };
    let headers = if i.is_multiple_of(11) {
        Vec::new()
    } else {
        vec![
            ("seq".to_owned(), Some(i.to_string().into_bytes())),
            ("absent".to_owned(), None),
            ("bin".to_owned(), Some(vec![0, 255, i as u8])),
        ]
    };
    Rec {
        key,
        value,
        headers,
        timestamp: Timestamp::CreateTime(base_ms + ((i * 7919) % 10_000) as i64),
    }
}

/// Records `range` of a test, spread round-robin over `partitions`.
fn records(range: std::ops::Range<usize>, partitions: i32) -> Vec<(i32, Rec)> {
    let base_ms = now_ms() - 3_600_000;
    range
        .map(|i| ((i % partitions as usize) as i32, record(i, base_ms)))
        .collect()
}

/// `records` with a header name given twice in every record that has headers, between the
/// others: Kafka keeps both, in order.
fn with_repeated_header(mut records: Vec<(i32, Rec)>) -> Vec<(i32, Rec)> {
    for (_, r) in &mut records {
        if !r.headers.is_empty() {
            r.headers
                .insert(1, ("dup".to_owned(), Some(b"first".to_vec())));
            r.headers
                .insert(2, ("dup".to_owned(), Some(b"second".to_vec())));
        }
    }
    records
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An edge config: data in `dir`, the admin listener on, quick retries, and one link "central"
/// to `central` forwarding `topics` as `site-a.{topic}`.
fn edge_config(dir: &Path, central: &str, topics: &[&str]) -> Config {
    let mut cfg = common::test_config(dir);
    cfg.listeners.admin.enabled = true;
    cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
    cfg.federation.retry_backoff = Duration::from_millis(200);
    cfg.federation.retry_backoff_max = Duration::from_secs(1);
    cfg.federation.links.push(FederationLink {
        name: "central".into(),
        bootstrap_servers: central.into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        remote_topic: "site-a.{topic}".into(),
        // librdkafka's own reconnect backoff grows to 10 s; a test whose uplink comes back
        // should not wait for that.
        client: BTreeMap::from([("reconnect.backoff.max.ms".into(), "500".into())]),
    });
    cfg
}

/// A central broker, and an edge forwarding `topics` to it with [`edge_config`]; the data
/// directories are removed when the third value is dropped.
async fn start_pair(topics: &[&str]) -> (BrokerHandle, BrokerHandle, [tempfile::TempDir; 2]) {
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = common::start_with(edge_config(edge_dir.path(), &central.bootstrap(), topics)).await;
    (central, edge, [central_dir, edge_dir])
}

/// A central broker listening on exactly `addr`. Binding may fail for a moment after an
/// earlier broker on that address shut down, so it is tried again until the deadline.
async fn start_central_at(dir: &Path, addr: SocketAddr) -> BrokerHandle {
    common::init_logs();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cfg = common::test_config(dir);
        cfg.listeners.kafka.address = addr;
        match runnel::start_broker(cfg).await {
            Ok(handle) => return handle,
            Err(e) if Instant::now() < deadline => {
                eprintln!("central on {addr} does not start yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("central on {addr} does not start: {e:#}"),
        }
    }
}

/// An address on which nothing listens (for now).
fn unused_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        common::client_config(bootstrap).create().unwrap();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let r = admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "create {name}: {:?}", r[0]);
}

/// Produces `records` (partition, record) to `topic` and returns, per partition, the records in
/// the order of the offsets they were given: the order the local log holds them in.
async fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: &[(i32, Rec)],
) -> Vec<Vec<Rec>> {
    produce_with(bootstrap, topic, partitions, records, "none").await
}

/// [`produce`] with the producer's `compression.type`.
async fn produce_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: &[(i32, Rec)],
    compression: &str,
) -> Vec<Vec<Rec>> {
    // Idempotent, so that a retry inside librdkafka cannot store a record twice locally.
    let producer: FutureProducer = common::client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", compression)
        .create()
        .unwrap();
    let mut deliveries = Vec::with_capacity(records.len());
    for (partition, rec) in records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &rec.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut r = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(*partition)
            .headers(headers);
        if let Some(k) = &rec.key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = &rec.value {
            r = r.payload(v.as_slice());
        }
        if let Timestamp::CreateTime(ts) = rec.timestamp {
            r = r.timestamp(ts);
        }
        let delivery = producer
            .send_result(r)
            .map_err(|(e, _)| e)
            .expect("record queued");
        deliveries.push((delivery, rec));
    }
    let mut by_partition: Vec<Vec<(i64, Rec)>> = vec![Vec::new(); partitions as usize];
    for (delivery, rec) in deliveries {
        let d = delivery
            .await
            .expect("a delivery report")
            .map_err(|(e, _)| e)
            .expect("record delivered");
        by_partition[d.partition as usize].push((d.offset, rec.clone()));
    }
    by_partition
        .into_iter()
        .map(|mut p| {
            p.sort_by_key(|(offset, _)| *offset);
            p.into_iter().map(|(_, r)| r).collect()
        })
        .collect()
}

/// Every record of `topic` on `bootstrap`, per partition, from the log start to the high
/// watermark each partition has when its read starts.
async fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<Vec<Rec>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| read_partition(&bootstrap, &topic, p))
            .collect()
    })
    .await
    .unwrap()
}

fn read_partition(bootstrap: &str, topic: &str, partition: i32) -> Vec<Rec> {
    let c: BaseConsumer = common::client_config(bootstrap)
        .set("group.id", "federation-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, high) = c
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next < high {
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition} on {bootstrap}: read up to offset {next} of {high}"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            next = m.offset() + 1;
            out.push(Rec::from_message(&m));
        }
    }
    out
}

/// Asserts that `got` is `want`, naming the first record that differs rather than printing
/// thousands.
fn assert_records(what: &str, got: &[Rec], want: &[Rec]) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: record {i} differs\n got: {:?}\nwant: {:?}",
            got[i], want[i]
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} records, expected {}",
        got.len(),
        want.len()
    );
}

/// The log end offset of each partition of `topic` on `broker` (empty if there is no such
/// topic). Read from the catalog: asking through a client could create the topic.
fn log_ends(broker: &BrokerHandle, topic: &str) -> Vec<i64> {
    broker
        .broker
        .catalog
        .get(topic)
        .map(|t| {
            t.partitions()
                .iter()
                .map(|p| p.log().log_end_offset())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `topic` on `central` holds at least `counts[p]` records in each partition `p`.
async fn await_remote(central: &BrokerHandle, topic: &str, counts: &[i64]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ends = log_ends(central, topic);
        if ends.len() >= counts.len() && counts.iter().zip(&ends).all(|(want, end)| end >= want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} on the central broker has log ends {ends:?}; waited for {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `topic` on `central` holds exactly `want`, per partition, and that nothing more
/// arrives for a while (a record sent twice late would land after the expected ones).
async fn assert_remote(central: &BrokerHandle, topic: &str, want: &[Vec<Rec>]) {
    let counts: Vec<i64> = want.iter().map(|p| p.len() as i64).collect();
    await_remote(central, topic, &counts).await;
    let got = read_topic(&central.bootstrap(), topic, want.len() as i32).await;
    for (p, (got, want)) in got.iter().zip(want).enumerate() {
        assert_records(&format!("{topic}/{p} on the central broker"), got, want);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        log_ends(central, topic),
        counts,
        "{topic} on the central broker: no more records after the expected ones"
    );
}

/// The value of the series `name` with exactly `labels` in a Prometheus text exposition,
/// whatever order the labels are written in.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let got: BTreeMap<&str, &str> = rest
                .strip_suffix('}')?
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect::<Option<_>>()?;
            (got == want).then(|| value.trim().parse().ok()).flatten()
        })
}

fn pending_labels<'a>(topic: &'a str, partition: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("link", "central"),
        ("topic", topic),
        ("partition", partition),
    ]
}

/// A metric series and the value expected of it: (name, labels, value).
type Series<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Waits until every `(name, labels, value)` in `want` is what the edge's `/metrics` shows.
async fn await_metrics(edge: &BrokerHandle, want: &[Series<'_>]) {
    let admin = edge.admin_addr.expect("the admin listener is on");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = common::http_get(admin, "/metrics").await;
        let wrong: Vec<_> = want
            .iter()
            .map(|(name, labels, value)| (name, labels, value, metric(&text, name, labels)))
            .filter(|(_, _, value, got)| *got != Some(**value))
            .collect();
        if wrong.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let federation: Vec<&str> = text.lines().filter(|l| l.contains("federation")).collect();
            panic!(
                "metrics (series, labels, expected, found): {wrong:?}\nfederation lines:\n{}",
                federation.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records produced to a two-partition topic arrive in the remote topic with every field kept,
/// partition for partition and in order, and the remote topic is made with two partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_with_keys_values_headers_and_timestamps_in_order() {
    let (central, edge, _dirs) = start_pair(&["readings", "sensors.*"]).await;
    create_topic(&edge.bootstrap(), "readings", 2).await;

    let want = produce(&edge.bootstrap(), "readings", 2, &records(0..2000, 2)).await;
    assert_eq!(want.iter().map(Vec::len).collect::<Vec<_>>(), [1000, 1000]);
    // The local log holds what was produced: what follows checks forwarding, not the clients.
    let local = read_topic(&edge.bootstrap(), "readings", 2).await;
    for (p, (got, want)) in local.iter().zip(&want).enumerate() {
        assert_records(&format!("readings/{p} on the edge"), got, want);
    }

    assert_remote(&central, "site-a.readings", &want).await;
    let remote = central.broker.catalog.get("site-a.readings").unwrap();
    assert_eq!(
        remote.partition_count(),
        2,
        "as many partitions as the local topic"
    );
    assert!(
        central.broker.catalog.get("readings").is_none(),
        "only the remote name is used on the central broker"
    );

    edge.shutdown().await;
    central.shutdown().await;
}

/// While the central cluster is down records wait in the local log (and the pending gauge says
/// how many, the link's gauge that it is down); when it comes back they all arrive, in order,
/// once, and the link shows up with the time of its last acknowledgement. The same after a
/// second outage of the central broker, with its data kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_while_the_uplink_is_down_and_arrive_once_when_it_returns() {
    let addr = unused_addr();
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = common::start_with(edge_config(
        edge_dir.path(),
        &addr.to_string(),
        &["readings"],
    ))
    .await;
    create_topic(&edge.bootstrap(), "readings", 1).await;

    let first = produce(&edge.bootstrap(), "readings", 1, &records(0..500, 1)).await;
    let pending = pending_labels("readings", "0");
    await_metrics(&edge, &[(PENDING, &pending, 500.0)]).await;
    // Still 500 a while later: nothing can have been acknowledged by a broker that is not there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let link = [("link", "central")];
    const UP: &str = "runnel_federation_link_up";
    const ACKED: &str = "runnel_federation_last_acknowledged_timestamp_seconds";
    await_metrics(
        &edge,
        &[
            (PENDING, &pending, 500.0),
            (UP, &link, 0.0),
            (ACKED, &link, 0.0),
        ],
    )
    .await;

    let central_dir = tempfile::tempdir().unwrap();
    let central = start_central_at(central_dir.path(), addr).await;
    assert_remote(&central, "site-a.readings", &first).await;
    await_metrics(&edge, &[(PENDING, &pending, 0.0), (UP, &link, 1.0)]).await;
    let text = common::http_get(edge.admin_addr.unwrap(), "/metrics").await;
    let acked = metric(&text, ACKED, &link).unwrap();
    let now = runnel::broker::now_ms() as f64 / 1000.0;
    assert!(now - 60.0 < acked && acked <= now + 1.0, "{acked} vs {now}");

    // A second outage, the central broker keeping its data.
    central.shutdown().await;
    let second = produce(&edge.bootstrap(), "readings", 1, &records(500..1000, 1)).await;
    await_metrics(&edge, &[(PENDING, &pending, 500.0)]).await;
    let central = start_central_at(central_dir.path(), addr).await;
    let all = vec![[first[0].clone(), second[0].clone()].concat()];
    assert_remote(&central, "site-a.readings", &all).await;
    await_metrics(&edge, &[(PENDING, &pending, 0.0)]).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// A clean restart of the edge goes on from where forwarding stood: nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_edge_restart_resumes_without_sending_anything_twice() {
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    let edge_dir = tempfile::tempdir().unwrap();
    let config = || edge_config(edge_dir.path(), &central.bootstrap(), &["readings"]);
    let edge = common::start_with(config()).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;

    let first = produce(&edge.bootstrap(), "readings", 1, &records(0..300, 1)).await;
    await_remote(&central, "site-a.readings", &[300]).await;
    edge.shutdown().await;

    let edge = common::start_with(config()).await;
    let second = produce(&edge.bootstrap(), "readings", 1, &records(300..600, 1)).await;
    let all = vec![[first[0].clone(), second[0].clone()].concat()];
    assert_remote(&central, "site-a.readings", &all).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// A clean shutdown of the edge in the middle of forwarding (records sent and not all
/// acknowledged yet) loses nothing and, after the restart, sends nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_edge_shutdown_while_forwarding_sends_nothing_twice() {
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    let edge_dir = tempfile::tempdir().unwrap();
    // Small produce requests, so that the records reach the central broker over a while.
    let config = || {
        let mut cfg = edge_config(edge_dir.path(), &central.bootstrap(), &["readings"]);
        let client = &mut cfg.federation.links[0].client;
        client.insert("batch.num.messages".into(), "20".into());
        client.insert("linger.ms".into(), "20".into());
        cfg
    };
    let edge = common::start_with(config()).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;

    let first = produce(&edge.bootstrap(), "readings", 1, &records(0..2000, 1)).await;
    // The shutdown comes as soon as forwarding has begun, most likely with records in flight.
    let deadline = Instant::now() + DEADLINE;
    while log_ends(&central, "site-a.readings")
        .first()
        .is_none_or(|&n| n == 0)
    {
        assert!(Instant::now() < deadline, "nothing forwarded");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let at_shutdown = log_ends(&central, "site-a.readings");
    edge.shutdown().await;

    let edge = common::start_with(config()).await;
    let second = produce(&edge.bootstrap(), "readings", 1, &records(2000..2100, 1)).await;
    let all = vec![[first[0].clone(), second[0].clone()].concat()];
    eprintln!("the central broker held {at_shutdown:?} records when the edge was told to stop");
    assert_remote(&central, "site-a.readings", &all).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// A link whose pattern is a prefix picks up matching topics created after the start, whether
/// created through the admin API or automatically by a producer; other topics stay local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_pattern_picks_up_new_topics_and_leaves_others_local() {
    let (central, edge, _dirs) = start_pair(&["sensors.*"]).await;
    let b = edge.bootstrap();

    // "other" first: by the time the matching topics have arrived, it has had its chance.
    create_topic(&b, "other", 1).await;
    produce(&b, "other", 1, &records(0..20, 1)).await;
    create_topic(&b, "sensors.temp", 3).await;
    let temp = produce(&b, "sensors.temp", 3, &records(0..90, 3)).await;
    // Made by the producer's metadata request, with the default single partition.
    let humidity = produce(&b, "sensors.humidity", 1, &records(0..40, 1)).await;
    assert_eq!(
        edge.broker
            .catalog
            .get("sensors.humidity")
            .unwrap()
            .partition_count(),
        1
    );

    assert_remote(&central, "site-a.sensors.temp", &temp).await;
    assert_eq!(
        central
            .broker
            .catalog
            .get("site-a.sensors.temp")
            .unwrap()
            .partition_count(),
        3
    );
    assert_remote(&central, "site-a.sensors.humidity", &humidity).await;
    for name in ["site-a.other", "other"] {
        assert!(
            central.broker.catalog.get(name).is_none(),
            "{name} exists on the central broker: a topic the link does not name was forwarded"
        );
    }

    edge.shutdown().await;
    central.shutdown().await;
}

/// A local topic whose remote name Kafka would refuse (longer than 249 characters once the
/// template's prefix is added) is left local with an ERROR line, instead of being tried again
/// for ever; the link's other topics are forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_whose_remote_name_is_too_long_stays_local_and_others_are_forwarded() {
    let (central, edge, _dirs) = start_pair(&["sensors.*"]).await;
    let long = format!("sensors.{}", "x".repeat(240));
    create_topic(&edge.bootstrap(), &long, 1).await;
    produce(&edge.bootstrap(), &long, 1, &records(0..10, 1)).await;
    create_topic(&edge.bootstrap(), "sensors.ok", 1).await;
    let ok = produce(&edge.bootstrap(), "sensors.ok", 1, &records(0..10, 1)).await;

    assert_remote(&central, "site-a.sensors.ok", &ok).await;
    let remote: Vec<String> = central
        .broker
        .catalog
        .list()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(remote, ["site-a.sensors.ok"]);
    assert!(
        edge.broker
            .federation
            .cursors()
            .iter()
            .all(|c| c.topic != long),
        "a forwarder runs for the topic whose remote name is too long"
    );

    edge.shutdown().await;
    central.shutdown().await;
}

/// The forwarded counter counts each record once, and every partition's pending gauge comes
/// back to 0 once the remote has acknowledged everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_forwarded_records_and_pending_returns_to_zero() {
    let (central, edge, _dirs) = start_pair(&["readings"]).await;
    create_topic(&edge.bootstrap(), "readings", 2).await;

    let want = produce(&edge.bootstrap(), "readings", 2, &records(0..400, 2)).await;
    assert_remote(&central, "site-a.readings", &want).await;
    let link = [("link", "central")];
    let (p0, p1) = (
        pending_labels("readings", "0"),
        pending_labels("readings", "1"),
    );
    let expected: [Series; 3] = [
        (FORWARDED, &link, 400.0),
        (PENDING, &p0, 0.0),
        (PENDING, &p1, 0.0),
    ];
    await_metrics(&edge, &expected).await;

    // A few more: the counter goes on from there.
    let more = produce(&edge.bootstrap(), "readings", 2, &records(400..410, 2)).await;
    let all: Vec<Vec<Rec>> = (0..2)
        .map(|p| [want[p].clone(), more[p].clone()].concat())
        .collect();
    assert_remote(&central, "site-a.readings", &all).await;
    let expected: [Series; 3] = [
        (FORWARDED, &link, 410.0),
        (PENDING, &p0, 0.0),
        (PENDING, &p1, 0.0),
    ];
    await_metrics(&edge, &expected).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// A link added to an edge that already holds records forwards them from each partition's log
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_link_forwards_from_the_log_start() {
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = common::start(edge_dir.path()).await;
    create_topic(&edge.bootstrap(), "readings", 2).await;
    let want = produce(&edge.bootstrap(), "readings", 2, &records(0..100, 2)).await;
    edge.shutdown().await;

    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    let edge = common::start_with(edge_config(
        edge_dir.path(),
        &central.bootstrap(),
        &["readings"],
    ))
    .await;
    assert_remote(&central, "site-a.readings", &want).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// A header name given twice in one record reaches the remote twice, in order, as Kafka keeps
/// it (a record's headers are a list, not a map), from stored batches of every codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_given_twice_arrives_twice_in_order() {
    let (central, edge, _dirs) = start_pair(&["readings"]).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;

    // Stored batches of every codec: the forwarder reads the records out of each.
    let mut want = vec![Vec::new()];
    for (i, codec) in ["none", "gzip", "snappy", "lz4", "zstd"].iter().enumerate() {
        let sent = with_repeated_header(records(i * 50..(i + 1) * 50, 1));
        let got = produce_with(&edge.bootstrap(), "readings", 1, &sent, codec).await;
        want[0].extend(got.into_iter().flatten());
    }
    let local = read_topic(&edge.bootstrap(), "readings", 1).await;
    assert_records("readings/0 on the edge", &local[0], &want[0]);
    assert_remote(&central, "site-a.readings", &want).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// A remote topic with fewer partitions than the local one takes local partition p in p modulo
/// its count; each local partition's records keep their order there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_topic_with_fewer_partitions_takes_partition_modulo_its_count() {
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    create_topic(&central.bootstrap(), "site-a.readings", 2).await;
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = common::start_with(edge_config(
        edge_dir.path(),
        &central.bootstrap(),
        &["readings"],
    ))
    .await;
    create_topic(&edge.bootstrap(), "readings", 3).await;

    // Every record differs from every other (their timestamps do), so each remote record says
    // which local partition it came from.
    let local = produce(&edge.bootstrap(), "readings", 3, &records(0..300, 3)).await;
    await_remote(&central, "site-a.readings", &[200, 100]).await;
    let remote = read_topic(&central.bootstrap(), "site-a.readings", 2).await;
    assert_records("site-a.readings/1", &remote[1], &local[1]);
    assert_eq!(
        remote[0].len(),
        200,
        "site-a.readings/0 holds local 0 and 2"
    );
    for p in [0, 2] {
        let from_p: Vec<Rec> = remote[0]
            .iter()
            .filter(|r| local[p].contains(r))
            .cloned()
            .collect();
        assert_records(
            &format!("local partition {p} in site-a.readings/0"),
            &from_p,
            &local[p],
        );
    }
    assert_eq!(
        central
            .broker
            .catalog
            .get("site-a.readings")
            .unwrap()
            .partition_count(),
        2,
        "an existing remote topic is left as it is"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(log_ends(&central, "site-a.readings"), [200, 100]);

    edge.shutdown().await;
    central.shutdown().await;
}

/// Creates `name` with one partition and the topic configs `configs` on `bootstrap`.
async fn create_topic_with(bootstrap: &str, name: &str, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        common::client_config(bootstrap).create().unwrap();
    let mut topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let r = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "create {name}: {:?}", r[0]);
}

/// A record the remote cluster refuses for itself (larger than its topic allows) is skipped
/// and counted; the records sent in the same batch around it still arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_remote_refuses_is_skipped_and_its_neighbours_arrive() {
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    create_topic_with(
        &central.bootstrap(),
        "site-a.readings",
        &[("max.message.bytes", "4000")],
    )
    .await;
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = common::start_with(edge_config(
        edge_dir.path(),
        &central.bootstrap(),
        &["readings"],
    ))
    .await;
    create_topic(&edge.bootstrap(), "readings", 1).await;

    let mut sent = records(0..21, 1);
    sent[10].1.value = Some(vec![b'x'; 20_000]);
    let produced = produce(&edge.bootstrap(), "readings", 1, &sent).await;
    assert_eq!(
        log_ends(&edge, "readings"),
        [21],
        "one local batch or several, all 21 are stored"
    );
    let big = produced[0]
        .iter()
        .position(|r| r.value.as_ref().is_some_and(|v| v.len() == 20_000))
        .unwrap();
    let mut want = produced.clone();
    want[0].remove(big);
    assert_remote(&central, "site-a.readings", &want).await;
    let link = [("link", "central")];
    await_metrics(
        &edge,
        &[
            ("runnel_federation_skipped_records_total", &link, 1.0),
            (FORWARDED, &link, 20.0),
            (PENDING, &pending_labels("readings", "0"), 0.0),
        ],
    )
    .await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// Retention deletes what it must even while the uplink is down: the records it deleted before
/// they were sent are counted as skipped, and the rest arrive once the cluster answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_retention_deleted_before_forwarding_are_skipped_and_counted() {
    retention_while_the_uplink_is_down(false).await;
}

/// The same with the edge restarted after retention deleted records and before the uplink came
/// back: the skipped records are counted all the same. (Before, a partition that had never
/// forwarded anything had no saved cursor, so after the restart it started at the new log start
/// and counted nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_retention_deleted_before_a_restart_are_counted_as_skipped() {
    retention_while_the_uplink_is_down(true).await;
}

async fn retention_while_the_uplink_is_down(restart_edge: bool) {
    let addr = unused_addr();
    let edge_dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut cfg = edge_config(edge_dir.path(), &addr.to_string(), &["readings"]);
        cfg.log.retention_check_interval = Duration::from_millis(200);
        cfg
    };
    let mut edge = common::start_with(config()).await;
    create_topic_with(
        &edge.bootstrap(),
        "readings",
        &[("segment.bytes", "2048"), ("retention.bytes", "4096")],
    )
    .await;

    // Rounds of 10, each a batch of its own: segments roll and the oldest go.
    let mut want = Vec::new();
    for round in 0..20 {
        let sent = records(round * 10..(round + 1) * 10, 1);
        want.extend(
            produce(&edge.bootstrap(), "readings", 1, &sent)
                .await
                .into_iter()
                .flatten(),
        );
    }
    let partition = edge
        .broker
        .catalog
        .get("readings")
        .unwrap()
        .partition(0)
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while partition.log().log_start_offset() == 0 {
        assert!(Instant::now() < deadline, "retention deleted nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // While the uplink is still down, what retention deleted is no longer pending.
    loop {
        let start = partition.log().log_start_offset();
        let text = common::http_get(edge.admin_addr.unwrap(), "/metrics").await;
        let pending = metric(&text, PENDING, &pending_labels("readings", "0"));
        if pending == Some((200 - start) as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending {pending:?} with the log starting at {start}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(partition);
    if restart_edge {
        edge.shutdown().await;
        edge = common::start_with(config()).await;
    }
    let central_dir = tempfile::tempdir().unwrap();
    let central = start_central_at(central_dir.path(), addr).await;
    // Whatever retention has deleted by the time the forwarder reads is skipped, the rest sent
    // (retention may go on deleting forwarded segments afterwards).
    let link = [("link", "central")];
    await_metrics(&edge, &[(PENDING, &pending_labels("readings", "0"), 0.0)]).await;
    let text = common::http_get(edge.admin_addr.unwrap(), "/metrics").await;
    let skipped = metric(&text, "runnel_federation_skipped_records_total", &link).unwrap();
    let forwarded = metric(&text, FORWARDED, &link).unwrap();
    assert!(
        skipped > 0.0 && forwarded > 0.0,
        "{skipped} skipped, {forwarded} forwarded"
    );
    // Counters start again with the process: the skips a position saved before the restart
    // had already passed are not counted again (when the save came before the stop).
    if restart_edge {
        assert!(
            skipped + forwarded <= 200.0,
            "{skipped} skipped, {forwarded} forwarded"
        );
    } else {
        assert_eq!(skipped + forwarded, 200.0);
    }
    let start = 200 - forwarded as i64;
    assert_remote(
        &central,
        "site-a.readings",
        &[want[start as usize..].to_vec()],
    )
    .await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// A record just under the brokers' default limit (max.message.bytes 1,048,588) but over
/// One record per size to partition 0 of `topic`, the i-th of `sizes` bytes of b'a' + i, each
/// acknowledged before the next is sent (the producer takes records up to 4 MB).
async fn produce_sized(bootstrap: &str, topic: &str, sizes: &[usize]) {
    let producer: FutureProducer = common::client_config(bootstrap)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    for (i, &size) in sizes.iter().enumerate() {
        let value = vec![b'a' + i as u8; size];
        producer
            .send(
                FutureRecord::<(), [u8]>::to(topic)
                    .payload(&value)
                    .partition(0),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
}

/// librdkafka's own default message.max.bytes (1,000,000) is forwarded, not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_brokers_take_by_default_is_forwarded_though_over_librdkafkas_default() {
    let (central, edge, _dirs) = start_pair(&["readings"]).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;
    let sizes = [5, 1_020_000, 5];
    produce_sized(&edge.bootstrap(), "readings", &sizes).await;

    await_remote(&central, "site-a.readings", &[3]).await;
    let got = read_topic(&central.bootstrap(), "site-a.readings", 1).await;
    let values: Vec<Option<Vec<u8>>> = got[0].iter().map(|r| r.value.clone()).collect();
    let want: Vec<Option<Vec<u8>>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| Some(vec![b'a' + i as u8; size]))
        .collect();
    assert!(
        values == want,
        "the records at central differ in size or content"
    );

    edge.shutdown().await;
    central.shutdown().await;
}

/// A record larger than the link's whole queue (`queue.buffering.max.kbytes`) would never get
/// into it: it is skipped and counted, as one the remote refuses, and the records after it
/// arrive (before, the partition waited for room forever, and nothing said so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_the_links_queue_is_skipped_and_the_rest_arrive() {
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    let edge_dir = tempfile::tempdir().unwrap();
    let mut cfg = edge_config(edge_dir.path(), &central.bootstrap(), &["readings"]);
    cfg.federation.links[0]
        .client
        .insert("queue.buffering.max.kbytes".into(), "1024".into());
    // A second link that also lets librdkafka take records larger than the queue.
    let mut second = cfg.federation.links[0].clone();
    second.name = "second".into();
    second.remote_topic = "site-b.{topic}".into();
    second
        .client
        .insert("message.max.bytes".into(), "4000000".into());
    cfg.federation.links.push(second);
    let edge = common::start_with(cfg).await;
    create_topic_with(
        &edge.bootstrap(),
        "readings",
        &[("max.message.bytes", "4000000")],
    )
    .await;
    let sizes = [5, 2_000_000, 5, 5];
    produce_sized(&edge.bootstrap(), "readings", &sizes).await;

    for (name, remote) in [
        ("central", "site-a.readings"),
        ("second", "site-b.readings"),
    ] {
        await_remote(&central, remote, &[3]).await;
        let got = read_topic(&central.bootstrap(), remote, 1).await;
        let values: Vec<Option<Vec<u8>>> = got[0].iter().map(|r| r.value.clone()).collect();
        assert_eq!(
            values,
            [
                Some(b"aaaaa".to_vec()),
                Some(b"ccccc".to_vec()),
                Some(b"ddddd".to_vec())
            ],
            "{name}"
        );
        let link = [("link", name)];
        await_metrics(
            &edge,
            &[
                ("runnel_federation_skipped_records_total", &link, 1.0),
                (FORWARDED, &link, 3.0),
            ],
        )
        .await;
    }
    edge.shutdown().await;
    central.shutdown().await;
}

/// The `seq` header of each record: which record of [`records`] it is.
fn seqs(records: &[Rec]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let seq = r.headers.iter().find(|(k, _)| k == "seq");
            let value = seq.and_then(|(_, v)| v.clone()).unwrap_or_default();
            String::from_utf8(value).unwrap()
        })
        .collect()
}

/// A refused record in a chunk that librdkafka sends as several batches: the batches after the
/// refused one get through while the forwarder looks for the refused record, and none of their
/// records is sent twice. (The records sent again alone arrive after their successors.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_among_several_batches_costs_no_duplicate() {
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    create_topic_with(
        &central.bootstrap(),
        "site-a.readings",
        &[("max.message.bytes", "4000")],
    )
    .await;
    let edge_dir = tempfile::tempdir().unwrap();
    let mut cfg = edge_config(edge_dir.path(), &central.bootstrap(), &["readings"]);
    let client = &mut cfg.federation.links[0].client;
    client.insert("batch.num.messages".into(), "5".into());
    client.insert("linger.ms".into(), "20".into());
    let edge = common::start_with(cfg).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;

    // Only records with headers carry their number; give every one headers.
    let mut sent = records(0..60, 1);
    for (i, (_, r)) in sent.iter_mut().enumerate() {
        r.headers = vec![("seq".to_owned(), Some(i.to_string().into_bytes()))];
    }
    sent[12].1.value = Some(vec![b'x'; 20_000]);
    let produced = produce(&edge.bootstrap(), "readings", 1, &sent).await;
    let link = [("link", "central")];
    await_metrics(
        &edge,
        &[
            ("runnel_federation_skipped_records_total", &link, 1.0),
            (PENDING, &pending_labels("readings", "0"), 0.0),
        ],
    )
    .await;
    await_remote(&central, "site-a.readings", &[59]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = read_topic(&central.bootstrap(), "site-a.readings", 1).await;
    let mut got_seqs = seqs(&got[0]);
    got_seqs.sort();
    let mut want_seqs: Vec<String> = seqs(&produced[0])
        .into_iter()
        .filter(|s| s != "12")
        .collect();
    want_seqs.sort();
    assert_eq!(got_seqs, want_seqs, "each record but the refused one, once");

    edge.shutdown().await;
    central.shutdown().await;
}

/// A topic deleted while its forwarder waits for the uplink, and made again under the same
/// name before the uplink is back: the new topic is forwarded from its start, whatever the old
/// one's cursor was, and keeps its pending gauge when the old forwarder ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_made_again_under_its_name_is_forwarded_from_its_start() {
    let addr = unused_addr();
    let central_dir = tempfile::tempdir().unwrap();
    let central = start_central_at(central_dir.path(), addr).await;
    let edge_dir = tempfile::tempdir().unwrap();
    let cfg = edge_config(edge_dir.path(), &addr.to_string(), &["readings"]);
    let edge = common::start_with(cfg).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;
    produce(&edge.bootstrap(), "readings", 1, &records(0..10, 1)).await;
    await_remote(&central, "site-a.readings", &[10]).await;
    central.shutdown().await;
    produce(&edge.bootstrap(), "readings", 1, &records(10..110, 1)).await;
    // The forwarder now waits for the uplink with a chunk in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    edge.broker.catalog.delete_topic("readings").unwrap();
    create_topic(&edge.bootstrap(), "readings", 1).await;
    produce(&edge.bootstrap(), "readings", 1, &records(200..205, 1)).await;

    // The old topic's chunk in flight gets through, then the new topic's records.
    let central = start_central_at(central_dir.path(), addr).await;
    await_remote(&central, "site-a.readings", &[115]).await;
    let pending = pending_labels("readings", "0");
    await_metrics(&edge, &[(PENDING, &pending, 0.0)]).await;
    produce(&edge.bootstrap(), "readings", 1, &records(205..210, 1)).await;
    await_remote(&central, "site-a.readings", &[120]).await;
    await_metrics(&edge, &[(PENDING, &pending, 0.0)]).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// With librdkafka's queue full and the uplink down, a shutdown still ends (in about the
/// grace given to acknowledgements).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_client_queue_does_not_hold_up_shutdown() {
    let addr = unused_addr();
    let edge_dir = tempfile::tempdir().unwrap();
    let mut cfg = edge_config(edge_dir.path(), &addr.to_string(), &["readings"]);
    cfg.federation.links[0]
        .client
        .insert("queue.buffering.max.messages".into(), "50".into());
    let edge = common::start_with(cfg).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;
    produce(&edge.bootstrap(), "readings", 1, &records(0..500, 1)).await;
    // The forwarder queues records only once it has seen the remote topic: the uplink is up
    // first, then goes.
    let central_dir = tempfile::tempdir().unwrap();
    let central = start_central_at(central_dir.path(), addr).await;
    await_remote(&central, "site-a.readings", &[1]).await;
    central.shutdown().await;
    produce(&edge.bootstrap(), "readings", 1, &records(500..1000, 1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done = tokio::time::timeout(Duration::from_secs(30), edge.shutdown()).await;
    assert!(done.is_ok(), "the edge's shutdown did not end in 30 s");
}

/// A clean shutdown of the edge while the uplink is down, with each partition's chunk waiting
/// in librdkafka's queue past the shutdown grace: once both brokers are back, every record
/// arrives, once. (The first record of each waiting chunk was lost before: the cursor was
/// saved past it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_edge_shutdown_while_the_uplink_is_down_loses_nothing() {
    let addr = unused_addr();
    let edge_dir = tempfile::tempdir().unwrap();
    let config = || edge_config(edge_dir.path(), &addr.to_string(), &["readings"]);
    let edge = common::start_with(config()).await;
    create_topic(&edge.bootstrap(), "readings", 3).await;
    let central_dir = tempfile::tempdir().unwrap();
    let central = start_central_at(central_dir.path(), addr).await;
    let first = produce(&edge.bootstrap(), "readings", 3, &records(0..30, 3)).await;
    await_remote(&central, "site-a.readings", &[10, 10, 10]).await;

    central.shutdown().await;
    let second = produce(&edge.bootstrap(), "readings", 3, &records(30..330, 3)).await;
    // The forwarders hand the records to librdkafka, which holds them for the broker's return.
    let pending: Vec<_> = ["0", "1", "2"]
        .map(|p| pending_labels("readings", p))
        .into_iter()
        .collect();
    await_metrics(
        &edge,
        &pending
            .iter()
            .map(|labels| (PENDING, &labels[..], 100.0))
            .collect::<Vec<_>>(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    edge.shutdown().await;

    let central = start_central_at(central_dir.path(), addr).await;
    let edge = common::start_with(config()).await;
    let all: Vec<Vec<Rec>> = (0..3)
        .map(|p| [first[p].clone(), second[p].clone()].concat())
        .collect();
    assert_remote(&central, "site-a.readings", &all).await;

    edge.shutdown().await;
    central.shutdown().await;
}

/// The state a power cut can leave with `flush = "interval"`: the cursor was saved past the
/// log end that recovery keeps. The records produced after the restart reuse those offsets and
/// must be forwarded all the same, even when the uplink comes up only later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_after_a_cut_tail_are_forwarded_though_the_cursor_was_past_them() {
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = common::start(edge_dir.path()).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;
    produce(&edge.bootstrap(), "readings", 1, &records(0..5, 1)).await;
    // As if records 5..20 had been forwarded, the cursor saved, and the log's tail lost.
    let topic = edge.broker.catalog.get("readings").unwrap();
    edge.broker
        .meta
        .set_federation_cursor("central", ("readings", topic.id.as_u128()), 0, 20)
        .unwrap();
    edge.shutdown().await;

    let addr = unused_addr();
    let cfg = edge_config(edge_dir.path(), &addr.to_string(), &["readings"]);
    let edge = common::start_with(cfg).await;
    let fresh = produce(&edge.bootstrap(), "readings", 1, &records(5..35, 1)).await;
    assert_eq!(log_ends(&edge, "readings"), [35]);
    let central_dir = tempfile::tempdir().unwrap();
    let central = start_central_at(central_dir.path(), addr).await;
    await_remote(&central, "site-a.readings", &[30]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = read_topic(&central.bootstrap(), "site-a.readings", 1).await;
    assert_records("site-a.readings/0", &got[0], &fresh[0]);

    edge.shutdown().await;
    central.shutdown().await;
}

/// Only what transactions commit leaves the edge, as a read_committed consumer would see it: an
/// aborted transaction's records stay behind, and the records after a transaction still open
/// wait until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_transactions_are_forwarded() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let (central, edge, _dirs) = start_pair(&["readings"]).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;
    let bootstrap = edge.bootstrap();
    let timeout = Duration::from_secs(30);
    let send = move |p: &BaseProducer, value: &str| {
        p.send(
            BaseRecord::<[u8], [u8]>::to("readings")
                .partition(0)
                .payload(value.as_bytes()),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        p.flush(timeout).unwrap();
    };
    let open = tokio::task::spawn_blocking(move || {
        let p: BaseProducer = common::client_config(&bootstrap)
            .set("transactional.id", "edge-aggregator")
            .create()
            .unwrap();
        p.init_transactions(timeout).unwrap();
        p.begin_transaction().unwrap();
        send(&p, "committed");
        p.commit_transaction(timeout).unwrap();
        p.begin_transaction().unwrap();
        send(&p, "aborted");
        p.abort_transaction(timeout).unwrap();
        p.begin_transaction().unwrap();
        send(&p, "open");
        p
    })
    .await
    .unwrap();
    let after = Rec {
        key: None,
        value: Some(b"after the open transaction".to_vec()),
        headers: Vec::new(),
        timestamp: Timestamp::CreateTime(now_ms()),
    };
    produce(&edge.bootstrap(), "readings", 1, &[(0, after)]).await;

    let values = |got: Vec<Vec<Rec>>| -> Vec<String> {
        got[0]
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into())
            .collect()
    };
    await_remote(&central, "site-a.readings", &[1]).await;
    // A while later, still only the committed record: the rest waits for the open transaction.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(log_ends(&central, "site-a.readings"), [1]);
    let got = read_topic(&central.bootstrap(), "site-a.readings", 1).await;
    assert_eq!(values(got), ["committed"]);

    tokio::task::spawn_blocking(move || open.commit_transaction(timeout).unwrap())
        .await
        .unwrap();
    await_remote(&central, "site-a.readings", &[3]).await;
    let got = read_topic(&central.bootstrap(), "site-a.readings", 1).await;
    assert_eq!(
        values(got),
        ["committed", "open", "after the open transaction"],
        "the aborted record stays on the edge"
    );
    edge.shutdown().await;
    central.shutdown().await;
}

/// A central cluster that takes OAUTHBEARER logins only, as Confluent Cloud or a Keycloak-
/// secured Kafka does: the link's librdkafka fetches its token from the identity provider's
/// token endpoint (OIDC client credentials) and forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_logs_in_to_the_central_cluster_with_oidc_tokens() {
    let idp = std::sync::Arc::new(common::TestIdp::new("central-key"));
    let central_dir = tempfile::tempdir().unwrap();
    let jwks = central_dir.path().join("jwks.json");
    std::fs::write(&jwks, idp.jwks()).unwrap();
    let mut cfg = common::test_config(&central_dir.path().join("data"));
    cfg.listeners.kafka.sasl_oauthbearer = true;
    cfg.oauthbearer.jwks_file = jwks;
    cfg.oauthbearer.expected_issuer = "https://idp.test".into();
    cfg.oauthbearer.expected_audience = vec!["runnel".into()];
    let central = common::start_with(cfg).await;
    let url = common::token_endpoint(idp, "site-a-gateway").await;

    let edge_dir = tempfile::tempdir().unwrap();
    let mut cfg = edge_config(edge_dir.path(), &central.bootstrap(), &["readings"]);
    cfg.federation.links[0].client.extend([
        (
            "security.protocol".to_string(),
            "SASL_PLAINTEXT".to_string(),
        ),
        ("sasl.mechanism".to_string(), "OAUTHBEARER".to_string()),
        ("sasl.oauthbearer.method".to_string(), "oidc".to_string()),
        (
            "sasl.oauthbearer.client.id".to_string(),
            "site-a".to_string(),
        ),
        (
            "sasl.oauthbearer.client.secret".to_string(),
            "s3cret".to_string(),
        ),
        ("sasl.oauthbearer.token.endpoint.url".to_string(), url),
    ]);
    let edge = common::start_with(cfg).await;
    create_topic(&edge.bootstrap(), "readings", 1).await;
    produce(&edge.bootstrap(), "readings", 1, &records(0..50, 1)).await;
    // The central broker takes OAUTHBEARER logins only, so the records are checked in its log.
    await_remote(&central, "site-a.readings", &[50]).await;
    assert_eq!(log_ends(&central, "site-a.readings"), [50]);
    let metrics = central.broker.metrics.render(&central.broker);
    assert!(
        metrics.contains(r#"runnel_authenticated_total{principal="User:site-a-gateway"}"#),
        "{metrics}"
    );
    edge.shutdown().await;
    central.shutdown().await;
}

/// In a cluster, a link forwards only what every in-sync broker has (below the high
/// watermark): records only the leader holds wait until its follower has them or has left the
/// in-sync set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_only_records_below_the_high_watermark_are_forwarded() {
    use kafka_protocol::messages::CreateTopicsRequest;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let central_dir = tempfile::tempdir().unwrap();
    let central = common::start(central_dir.path()).await;
    let edge_dir = tempfile::tempdir().unwrap();
    let mut cfg = edge_config(edge_dir.path(), &central.bootstrap(), &["hw"]);
    let port = common::free_port();
    cfg.listeners.kafka.address = format!("127.0.0.1:{port}").parse().unwrap();
    // Broker 2 never starts: it counts as in sync until replica_lag_time_max has passed.
    cfg.cluster.brokers = vec![
        format!("1@127.0.0.1:{port}"),
        format!("2@{}", unused_addr()),
    ];
    cfg.cluster.replica_lag_time_max = Duration::from_secs(10);
    let edge = common::start_with(cfg).await;
    let mut c = common::RawClient::connect(&edge.bootstrap()).await;
    let create = CreateTopicsRequest::default().with_topics(vec![
        CreatableTopic::default()
            .with_name(kafka_protocol::messages::TopicName("hw".into()))
            .with_num_partitions(1)
            .with_replication_factor(-1),
    ]);
    let created = Instant::now();
    assert_eq!(c.call(&create, 5).await.topics[0].error_code, 0);
    let batch = common::encode_batch(
        &[common::record(0, None, b"only on the leader", now_ms())],
        kafka_protocol::records::Compression::None,
    );
    let r = c.call(&common::produce_request("hw", 0, 1, batch), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    // The link makes the remote topic before it reads: once it is there, the record would
    // follow at once if it were readable.
    let deadline = Instant::now() + DEADLINE;
    while log_ends(&central, "site-a.hw").is_empty() {
        assert!(Instant::now() < deadline, "the remote topic is never made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ends = log_ends(&central, "site-a.hw");
    // Meaningful while broker 2 still counts as in sync (10 s from the topic's creation).
    if created.elapsed() < Duration::from_secs(9) {
        assert_eq!(ends, [0], "forwarded above the high watermark");
    }
    // Broker 2 leaves the in-sync set: the record is every in-sync broker's, and goes.
    await_remote(&central, "site-a.hw", &[1]).await;
    edge.shutdown().await;
    central.shutdown().await;
}
