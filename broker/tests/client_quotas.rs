//! Kafka client quotas end to end: AlterClientQuotas and DescribeClientQuotas on the wire,
//! quotas kept across a restart, producers and consumers (librdkafka and raw clients) held to
//! their byte rates, per user (SASL) and per client id, and who may change them.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::NamedClient as Client;
use common::RawClient;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, ApiVersionsRequest, CreateAclsRequest,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse, FetchRequest, FetchResponse, MetadataRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const USERS: &str = "admin adm1n-s3cret\nalice a11ce-s3cret\nbob b0b-s3cret\n";

fn st(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

// What these tests add to the raw connections of `common` that send as a client id.
impl Client {
    async fn produce(&mut self, topic: &str, size: usize) -> ProduceResponse {
        let record = common::record(0, None, &vec![b'x'; size], 1_700_000_000_000);
        let batch = common::encode_batch(&[record], Compression::None);
        let req = common::produce_request(topic, 0, -1, batch);
        let (r, _) = self.call(&req, 9).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        r
    }

    async fn fetch(&mut self, topic: &str, offset: i64) -> (FetchResponse, Duration) {
        let req = FetchRequest::default()
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(st(topic)))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(8 << 20),
                    ]),
            ]);
        self.call(&req, 12).await
    }

    async fn alter(&mut self, entries: Vec<EntryData>, validate_only: bool) -> Vec<(i16, String)> {
        let req = AlterClientQuotasRequest::default()
            .with_entries(entries)
            .with_validate_only(validate_only);
        let (r, _): (AlterClientQuotasResponse, _) = self.call(&req, 1).await;
        r.entries
            .iter()
            .map(|e| {
                let message = e.error_message.as_ref().map(|m| m.to_string());
                if e.error_code == 0 {
                    assert_eq!(message, None, "no message on success");
                }
                (e.error_code, message.unwrap_or_default())
            })
            .collect()
    }

    /// The quotas the filter finds: (entity as `type=name` parts, `<default>` for the default,
    /// sorted values), sorted; or the error.
    async fn describe(
        &mut self,
        components: Vec<(&str, i8, Option<&str>)>,
        strict: bool,
    ) -> Result<Vec<(String, Vec<(String, f64)>)>, (i16, String)> {
        let components = components
            .into_iter()
            .map(|(t, m, name)| {
                ComponentData::default()
                    .with_entity_type(st(t))
                    .with_match_type(m)
                    .with_match(name.map(st))
            })
            .collect();
        let req = DescribeClientQuotasRequest::default()
            .with_components(components)
            .with_strict(strict);
        let (r, _): (DescribeClientQuotasResponse, _) = self.call(&req, 1).await;
        if r.error_code != 0 {
            let message = r.error_message.map(|m| m.to_string()).unwrap_or_default();
            return Err((r.error_code, message));
        }
        let mut out: Vec<_> = r
            .entries
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let entity = e
                    .entity
                    .iter()
                    .map(|p| {
                        let name = p.entity_name.as_ref().map_or("<default>", |n| n.as_str());
                        format!("{}={name}", p.entity_type.as_str())
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let mut values: Vec<_> = e
                    .values
                    .iter()
                    .map(|v| (v.key.to_string(), v.value))
                    .collect();
                values.sort_by(|a, b| a.0.cmp(&b.0));
                (entity, values)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// An AlterClientQuotas entry: the entity's (type, name) parts (`None`: the default) and the
/// (key, value) to set, or to remove with `None`.
fn entry(entity: &[(&str, Option<&str>)], ops: &[(&str, Option<f64>)]) -> EntryData {
    EntryData::default()
        .with_entity(
            entity
                .iter()
                .map(|(t, n)| {
                    EntityData::default()
                        .with_entity_type(st(t))
                        .with_entity_name(n.map(st))
                })
                .collect(),
        )
        .with_ops(
            ops.iter()
                .map(|(k, v)| {
                    OpData::default()
                        .with_key(st(k))
                        .with_value(v.unwrap_or(0.0))
                        .with_remove(v.is_none())
                })
                .collect(),
        )
}

/// Entries setting (or, with `None`, removing) `key` for client id `client` and for the default
/// client id: each client id counted alone.
fn own_and_default(client: &str, key: &str, value: Option<f64>) -> Vec<EntryData> {
    vec![
        entry(&[("client-id", Some(client))], &[(key, value)]),
        entry(&[("client-id", None)], &[(key, value)]),
    ]
}

fn values(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_set_described_checked_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::test_config(dir.path());
    let broker = common::start_with(cfg.clone()).await;
    let mut admin = Client::connect(&broker.bootstrap(), "admin").await;

    let answers = admin
        .alter(
            vec![
                entry(
                    &[("user", Some("alice"))],
                    &[("producer_byte_rate", Some(1024.0))],
                ),
                entry(
                    &[("user", Some("alice")), ("client-id", None)],
                    &[
                        ("consumer_byte_rate", Some(4096.0)),
                        ("producer_byte_rate", Some(2048.0)),
                    ],
                ),
                entry(
                    &[("client-id", None)],
                    &[("consumer_byte_rate", Some(8192.0))],
                ),
                // An IPv4 address as IPv6 gives it: kept as the IPv4 address.
                entry(
                    &[("ip", Some("::ffff:10.0.0.1"))],
                    &[("connection_creation_rate", Some(5.0))],
                ),
                // Each of these is refused alone, with its reason.
                entry(
                    &[("ip", Some("10.0.0.1")), ("user", Some("bob"))],
                    &[("connection_creation_rate", Some(5.0))],
                ),
                entry(
                    &[("ip", Some("gateway.local"))],
                    &[("connection_creation_rate", Some(5.0))],
                ),
                entry(&[("ip", None)], &[("producer_byte_rate", Some(5.0))]),
                entry(
                    &[("user", Some("bob"))],
                    &[("connection_creation_rate", Some(5.0))],
                ),
                entry(
                    &[("user", Some("bob"))],
                    &[("request_percentage", Some(0.0))],
                ),
                entry(&[("user", Some("bob"))], &[("fetch_rate", Some(5.0))]),
                entry(
                    &[("user", Some("bob"))],
                    &[("producer_byte_rate", Some(1.5))],
                ),
                entry(
                    &[("user", Some("bob"))],
                    &[("producer_byte_rate", Some(-1.0))],
                ),
                entry(
                    &[("user", Some("a")), ("user", Some("b"))],
                    &[("producer_byte_rate", Some(1.0))],
                ),
                entry(&[], &[("producer_byte_rate", Some(1.0))]),
            ],
            false,
        )
        .await;
    assert_eq!(&answers[..4], vec![(0, String::new()); 4]);
    for (code, message) in &answers[4..] {
        assert_eq!(*code, E::InvalidRequest.code(), "{message}");
    }
    let why: Vec<&str> = answers[4..].iter().map(|(_, m)| m.as_str()).collect();
    assert!(why[0].contains("address alone"), "{}", why[0]);
    assert!(why[1].contains("not an IP address"), "{}", why[1]);
    assert!(
        why[2].contains("connection_creation_rate only"),
        "{}",
        why[2]
    );
    assert!(why[3].contains("set on an IP address"), "{}", why[3]);
    assert!(why[4].contains("not a positive number"), "{}", why[4]);
    assert!(why[5].contains("not a client quota"), "{}", why[5]);
    assert!(why[6].contains("not a whole number"), "{}", why[6]);
    assert!(why[7].contains("not a positive number"), "{}", why[7]);
    assert!(why[8].contains("twice"), "{}", why[8]);
    assert!(why[9].contains("empty"), "{}", why[9]);
    // validate_only checks and keeps nothing.
    let checked = admin
        .alter(
            vec![entry(
                &[("user", Some("carol"))],
                &[("producer_byte_rate", Some(10.0))],
            )],
            true,
        )
        .await;
    assert_eq!(checked, vec![(0, String::new())]);

    let all = [
        (
            "client-id=<default>".to_string(),
            values(&[("consumer_byte_rate", 8192.0)]),
        ),
        (
            "user=alice".to_string(),
            values(&[("producer_byte_rate", 1024.0)]),
        ),
        (
            "user=alice,client-id=<default>".to_string(),
            values(&[
                ("consumer_byte_rate", 4096.0),
                ("producer_byte_rate", 2048.0),
            ]),
        ),
    ];
    let ip = (
        "ip=10.0.0.1".to_string(),
        values(&[("connection_creation_rate", 5.0)]),
    );
    let everything = vec![all[0].clone(), ip.clone(), all[1].clone(), all[2].clone()];
    assert_eq!(admin.describe(vec![], false).await, Ok(everything.clone()));
    assert_eq!(
        admin.describe(vec![("ip", 2, None)], true).await,
        Ok(vec![ip.clone()])
    );
    // An address is found as it is written, canonical or not.
    assert_eq!(
        admin
            .describe(vec![("ip", 0, Some("::ffff:10.0.0.1"))], true)
            .await,
        Ok(vec![ip.clone()])
    );
    // Filters: exact (0), default (1), any (2); strict leaves out entities with other parts.
    assert_eq!(
        admin.describe(vec![("user", 0, Some("alice"))], true).await,
        Ok(vec![all[1].clone()])
    );
    assert_eq!(
        admin
            .describe(vec![("user", 0, Some("alice"))], false)
            .await,
        Ok(vec![all[1].clone(), all[2].clone()])
    );
    assert_eq!(
        admin.describe(vec![("client-id", 1, None)], false).await,
        Ok(vec![all[0].clone(), all[2].clone()])
    );
    assert_eq!(
        admin.describe(vec![("client-id", 2, None)], true).await,
        Ok(vec![all[0].clone()])
    );
    assert_eq!(
        admin.describe(vec![("user", 0, Some("bob"))], false).await,
        Ok(vec![])
    );
    let bad = admin.describe(vec![("group", 2, None)], false).await;
    assert!(
        matches!(&bad, Err((code, m)) if *code == E::InvalidRequest.code() && m.contains("group")),
        "{bad:?}"
    );
    let bad = admin.describe(vec![("user", 7, None)], false).await;
    assert!(
        matches!(&bad, Err((code, _)) if *code == E::InvalidRequest.code()),
        "{bad:?}"
    );

    drop(admin);
    broker.shutdown().await;
    let broker = common::start_with(cfg.clone()).await;
    let mut admin = Client::connect(&broker.bootstrap(), "admin").await;
    assert_eq!(admin.describe(vec![], false).await, Ok(everything));
    // Removing a key (and one that is not set) leaves the others; the last key takes the
    // entity with it.
    let removed = admin
        .alter(
            vec![
                entry(
                    &[("user", Some("alice")), ("client-id", None)],
                    &[("producer_byte_rate", None)],
                ),
                entry(&[("user", Some("alice"))], &[("producer_byte_rate", None)]),
                entry(&[("user", Some("nobody"))], &[("consumer_byte_rate", None)]),
                entry(
                    &[("ip", Some("10.0.0.1"))],
                    &[("connection_creation_rate", None)],
                ),
            ],
            false,
        )
        .await;
    assert!(removed.iter().all(|(code, _)| *code == 0), "{removed:?}");
    let left = vec![
        all[0].clone(),
        (
            "user=alice,client-id=<default>".to_string(),
            values(&[("consumer_byte_rate", 4096.0)]),
        ),
    ];
    assert_eq!(admin.describe(vec![], false).await, Ok(left.clone()));
    drop(admin);
    broker.shutdown().await;
    let broker = common::start_with(cfg).await;
    let mut admin = Client::connect(&broker.bootstrap(), "admin").await;
    assert_eq!(admin.describe(vec![], false).await, Ok(left));
    broker.shutdown().await;
}

/// A client id over its producer_byte_rate has its records written and is told to wait the
/// time its debt takes to pay (KIP-219: the answer at once, the connection muted after it);
/// other client ids under the same (default) quota are not counted with it, and removing the
/// quotas frees it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_over_its_producer_byte_rate_is_throttled_and_muted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut admin = Client::connect(&addr, "admin").await;
    admin.create("metered").await;
    // greedy's own quota, and the same for every other client id, each counted alone.
    let quotas = |value| own_and_default("greedy", "producer_byte_rate", value);
    let set = admin.alter(quotas(Some(51200.0)), false).await;
    assert_eq!(set, vec![(0, String::new()), (0, String::new())]);
    let mut greedy = Client::connect(&addr, "greedy").await;
    let first = Instant::now();
    // 40KiB of the 50KiB a second holds: no throttle.
    let r = greedy.produce("metered", 40 * 1024).await;
    assert_eq!(r.throttle_time_ms, 0);
    // 100KiB more: 90KiB owed, 1.8 s at 50KiB/s (less what refilled in between).
    let sent = Instant::now();
    let r = greedy.produce("metered", 100 * 1024).await;
    let between = (Instant::now() - first).as_millis() as i32;
    let throttle = r.throttle_time_ms;
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 1);
    assert!(
        throttle <= 1810 && throttle + between + 10 >= 1800,
        "throttle {throttle} ms, {between} ms after the first produce"
    );
    // Muted: the next request is handled only once the throttle has passed since the broker
    // answered, which was after the throttled request was sent.
    greedy.produce("metered", 10).await;
    let muted = sent.elapsed();
    assert!(
        muted >= Duration::from_millis(throttle as u64),
        "answered {muted:?} after the throttled request was sent, throttle {throttle} ms"
    );
    // Another client id under the default has a bucket of its own: full, whatever greedy owes;
    // and its quota holds it too.
    let mut other = Client::connect(&addr, "other").await;
    assert_eq!(
        other.produce("metered", 40 * 1024).await.throttle_time_ms,
        0
    );
    let r = other.produce("metered", 100 * 1024).await;
    assert!(r.throttle_time_ms > 0, "the default quota holds other too");
    let throttled = broker
        .broker
        .metrics
        .client_quota_throttled
        .load(Ordering::Relaxed);
    assert!(throttled >= 1, "{throttled}");
    // Without the quotas, greedy is free again at once.
    let removed = admin.alter(quotas(None), false).await;
    assert_eq!(removed, vec![(0, String::new()), (0, String::new())]);
    for _ in 0..3 {
        assert_eq!(
            greedy.produce("metered", 40 * 1024).await.throttle_time_ms,
            0
        );
    }
    broker.shutdown().await;
}

/// A librdkafka producer flat out under a default client-id quota is held to the rate, and a
/// librdkafka consumer under a consumer_byte_rate reads every record, in order, no faster than
/// its rate; each client id of the default counts alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_clients_are_held_to_their_byte_rates_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    let rate = 256.0 * 1024.0;
    let mut admin = Client::connect(&bootstrap, "admin").await;
    let set = admin
        .alter(
            vec![entry(
                &[("client-id", None)],
                &[
                    ("producer_byte_rate", Some(rate)),
                    ("consumer_byte_rate", Some(rate)),
                ],
            )],
            false,
        )
        .await;
    assert_eq!(set, vec![(0, String::new())]);

    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("client.id", "bulk-writer")
        .set("linger.ms", "5")
        .set("batch.size", "16384")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<(), _>::to("metered")
                .payload("warm-up")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let count = 256usize;
    let start = Instant::now();
    let mut futures = Vec::new();
    for i in 0..count {
        let value = format!("{i:06}").repeat(4096 / 6);
        let rec = FutureRecord::<(), _>::to("metered")
            .payload(&value)
            .partition(0);
        futures.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    for f in futures {
        f.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = (count * 4092) as f64;
    // A second's worth passes at once, and the last request's debt is paid after its answer.
    let floor = (bytes - rate - 16.0 * 1024.0) / rate;
    eprintln!("produce: 1MiB at a 256KiB/s quota in {elapsed:.2} s (floor {floor:.2} s)");
    assert!(
        elapsed >= floor,
        "{elapsed:.2} s < {floor:.2} s: over the rate"
    );
    assert!(
        bytes / elapsed >= rate / 2.0,
        "{:.0} KiB/s: held far below the quota",
        bytes / elapsed / 1024.0
    );
    let after_produce = broker
        .broker
        .metrics
        .client_quota_throttled
        .load(Ordering::Relaxed);
    assert!(after_produce >= 5, "{after_produce}");

    // The consumer is another client id: a bucket of its own, full.
    let consumer: BaseConsumer = common::client_config(&bootstrap)
        .set("client.id", "bulk-reader")
        .set("group.id", "quota-readers")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["metered"]).unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < count + 1 && start.elapsed() < Duration::from_secs(60) {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            seen.push((m.offset(), m.payload().unwrap().to_vec()));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(seen.len(), count + 1, "every record read");
    assert_eq!(seen[0], (0, b"warm-up".to_vec()));
    for (i, (offset, value)) in seen[1..].iter().enumerate() {
        assert_eq!(*offset, i as i64 + 1);
        assert_eq!(value, &format!("{i:06}").repeat(4096 / 6).into_bytes());
    }
    let floor = (bytes - rate - 16.0 * 1024.0) / rate;
    eprintln!("consume: 1MiB at a 256KiB/s quota in {elapsed:.2} s (floor {floor:.2} s)");
    assert!(
        elapsed >= floor,
        "{elapsed:.2} s < {floor:.2} s: over the rate"
    );
    let after_consume = broker
        .broker
        .metrics
        .client_quota_throttled
        .load(Ordering::Relaxed);
    assert!(
        after_consume > after_produce,
        "the consumer was throttled too"
    );
    broker.shutdown().await;
}

/// A consumer's fetch is bounded by what its quota has left (the first batch still whole) and
/// charged what it returns; a fetch of the same client id while it owes is answered with no
/// records and the time to wait, and the throttled connection reads on after its mute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_over_the_consumer_byte_rate_gets_nothing_and_the_time_to_wait() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut writer = Client::connect(&addr, "writer").await;
    writer.create("readings").await;
    let batch = 90 * 1024;
    for _ in 0..4 {
        writer.produce("readings", batch).await;
    }
    let set = writer
        .alter(
            vec![entry(
                &[("client-id", Some("reader"))],
                &[("consumer_byte_rate", Some(25600.0))],
            )],
            false,
        )
        .await;
    assert_eq!(set, vec![(0, String::new())]);
    let mut reader = Client::connect(&addr, "reader").await;
    let mut twin = Client::connect(&addr, "reader").await;
    let records = |r: &FetchResponse| {
        r.responses[0].partitions[0]
            .records
            .as_ref()
            .map_or(0, |b| b.len())
    };
    // 25KiB a second: the response is bounded to it, so one 90KiB batch (whole) of the four,
    // and 65KiB are owed: 2.6 s.
    let sent = Instant::now();
    let (r, _) = reader.fetch("readings", 0).await;
    assert!(
        records(&r) > batch && records(&r) < 2 * batch,
        "{} bytes",
        records(&r)
    );
    let owed = r.throttle_time_ms;
    assert!(owed > 1000 && owed <= 2610, "{owed} ms");
    // The same client id on another connection owes it too: nothing, and the time to wait.
    let (r, _) = twin.fetch("readings", 1).await;
    assert!(r.responses.is_empty(), "no records while over the quota");
    assert!(
        r.throttle_time_ms > 0 && r.throttle_time_ms <= owed,
        "{}",
        r.throttle_time_ms
    );
    // The throttled connection is muted for the throttle, then reads on.
    let (r, _) = reader.fetch("readings", 1).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(owed as u64),
        "{:?}",
        sent.elapsed()
    );
    assert!(records(&r) > batch, "{} bytes", records(&r));
    broker.shutdown().await;
}

/// User quotas apply to the SASL principal (`alice` of `User:alice`), shared by all her client
/// ids; with ACLs on, changing or reading quotas takes AlterConfigs / DescribeConfigs on the
/// cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_quotas_follow_the_principal_and_need_cluster_rights() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::secured_config(dir.path(), USERS);
    cfg.acls.allow_if_no_acl = true;
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();

    // With an ACL on the cluster, allow_if_no_acl no longer lets everyone alter its configs.
    let mut admin = Client::logged_in(&addr, "a", b"\0admin\0adm1n-s3cret").await;
    admin.create("shared").await;
    let creation = AclCreation::default()
        .with_resource_type(4) // cluster
        .with_resource_name(st("kafka-cluster"))
        .with_resource_pattern_type(3) // literal
        .with_principal(st("User:carol"))
        .with_host(st("*"))
        .with_operation(11) // AlterConfigs
        .with_permission_type(3); // allow
    let (made, _) = admin
        .call(
            &CreateAclsRequest::default().with_creations(vec![creation]),
            3,
        )
        .await;
    assert_eq!(
        made.results[0].error_code, 0,
        "{:?}",
        made.results[0].error_message
    );
    let mut bob = Client::logged_in(&addr, "b", b"\0bob\0b0b-s3cret").await;
    let refused = bob
        .alter(
            vec![entry(
                &[("user", Some("bob"))],
                &[("producer_byte_rate", None)],
            )],
            false,
        )
        .await;
    assert_eq!(
        refused[0].0,
        E::ClusterAuthorizationFailed.code(),
        "{refused:?}"
    );
    let refused = bob.describe(vec![], false).await;
    assert!(
        matches!(&refused, Err((code, _)) if *code == E::ClusterAuthorizationFailed.code()),
        "{refused:?}"
    );

    let set = admin
        .alter(
            vec![entry(
                &[("user", Some("alice"))],
                &[("producer_byte_rate", Some(51200.0))],
            )],
            false,
        )
        .await;
    assert_eq!(set, vec![(0, String::new())]);
    // Alice's two client ids share her 50KiB a second; bob's are free.
    let mut alice_1 = Client::logged_in(&addr, "alice-1", b"\0alice\0a11ce-s3cret").await;
    let mut alice_2 = Client::logged_in(&addr, "alice-2", b"\0alice\0a11ce-s3cret").await;
    assert_eq!(
        alice_1.produce("shared", 40 * 1024).await.throttle_time_ms,
        0
    );
    let r = alice_2.produce("shared", 100 * 1024).await;
    assert!(
        r.throttle_time_ms > 0,
        "alice's second client id shares her quota"
    );
    for _ in 0..3 {
        assert_eq!(bob.produce("shared", 40 * 1024).await.throttle_time_ms, 0);
    }
    broker.shutdown().await;
}

/// A client that closes its connection while muted by a throttle has none of the requests it
/// sent after the throttled one handled: a producer that gave up on them (a request timeout
/// shorter than the throttle) would otherwise see them written and write them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_behind_a_throttle_are_dropped_when_the_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut admin = Client::connect(&addr, "admin").await;
    admin.create("pipelined").await;
    let set = admin
        .alter(
            vec![entry(
                &[("client-id", Some("leaver"))],
                &[("producer_byte_rate", Some(1000.0))],
            )],
            false,
        )
        .await;
    assert_eq!(set, vec![(0, String::new())]);
    let log_end = || {
        broker
            .broker
            .catalog
            .get("pipelined")
            .and_then(|t| t.partition(0))
            .map_or(-1, |p| p.log().log_end_offset())
    };
    for version in [9, 5] {
        let mut leaver = RawClient::connect(&addr).await;
        let big = common::record(0, None, &[b'x'; 3000], 1_700_000_000_000);
        let small = common::record(0, None, b"after", 1_700_000_000_000);
        let first = common::produce_request(
            "pipelined",
            0,
            1,
            common::encode_batch(&[big], Compression::None),
        );
        let second = common::produce_request(
            "pipelined",
            0,
            1,
            common::encode_batch(&[small], Compression::None),
        );
        // Both in one write: the second is read with the first, before the throttle.
        let mut frames = common::request_frame(&first, version, 1, "leaver").to_vec();
        frames.extend_from_slice(&common::request_frame(&second, version, 2, "leaver"));
        let before = log_end();
        leaver.send_raw(&frames).await;
        if version >= 6 {
            // KIP-219: the answer comes at once, then the mute.
            let answer = leaver.read_frame().await.expect("the first answer");
            let r = common::decode_response::<kafka_protocol::messages::ProduceRequest>(
                answer, version, 1,
            );
            assert!(r.throttle_time_ms >= 1500, "{}", r.throttle_time_ms);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(log_end(), before + 1, "the first request is written");
        drop(leaver);
        // Past the throttle (about 2 s of the quota, and the bucket is deeper in debt each
        // round): the second request was never handled.
        tokio::time::sleep(Duration::from_millis(if version >= 6 {
            2500
        } else {
            6000
        }))
        .await;
        assert_eq!(
            log_end(),
            before + 1,
            "produce v{version}: a request sent before the client left was written after"
        );
    }
    broker.shutdown().await;
}

/// request_percentage: the time the broker spends on a client id's requests is charged to it;
/// over its share the answer carries the throttle (here a Metadata response, KIP-219: answered
/// at once, the connection muted after), other client ids are not held, and removing the quota
/// frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_over_its_request_percentage_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut admin = Client::connect(&addr, "admin").await;
    for i in 0..20 {
        admin.create(&format!("listed-{i}")).await;
    }
    // 0.01% of a thread: 100 us of handling a second, at most 100 us at once.
    let quota = |value| {
        vec![entry(
            &[("client-id", Some("busy"))],
            &[("request_percentage", value)],
        )]
    };
    assert_eq!(
        admin.alter(quota(Some(0.01)), false).await,
        vec![(0, String::new())]
    );
    let metadata = MetadataRequest::default().with_topics(None);
    let mut busy = Client::connect(&addr, "busy").await;
    let mut throttled = None;
    for _ in 0..200 {
        let sent = Instant::now();
        let (r, _) = busy.call(&metadata, 12).await;
        if r.throttle_time_ms > 0 {
            throttled = Some((r.throttle_time_ms, sent));
            break;
        }
    }
    let (throttle, sent) = throttled.expect("200 Metadata requests within 100 us a second");
    // At most Kafka's quota window: a second.
    assert!(throttle <= 1000, "{throttle} ms");
    // Muted: the next request is handled once the throttle has passed.
    let (r, _) = busy.call(&metadata, 12).await;
    assert_eq!(r.topics.len(), 20);
    let muted = sent.elapsed();
    assert!(
        muted >= Duration::from_millis(throttle as u64),
        "answered {muted:?} after the throttled request was sent, throttle {throttle} ms"
    );
    // Another client id has no quota and is never held.
    let mut other = Client::connect(&addr, "other").await;
    for _ in 0..50 {
        assert_eq!(other.call(&metadata, 12).await.0.throttle_time_ms, 0);
    }
    // Without the quota, busy is not charged any more.
    assert_eq!(
        admin.alter(quota(None), false).await,
        vec![(0, String::new())]
    );
    let mut busy = Client::connect(&addr, "busy").await;
    for _ in 0..50 {
        assert_eq!(busy.call(&metadata, 12).await.0.throttle_time_ms, 0);
    }
    broker.shutdown().await;
}

/// controller_mutation_rate, strict from CreateTopics v6, CreatePartitions v3 and DeleteTopics
/// v5 (KIP-599): a change goes through whole, unthrottled, while the client's bucket is not in
/// debt; then each topic is refused with THROTTLING_QUOTA_EXCEEDED and the time to wait, once it
/// has passed the other checks (a topic failing one gets that error; validate_only passes), as
/// the other topics of the request go on. Older versions are let through and throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_mutation_rate_refuses_changes_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut admin = Client::connect(&addr, "admin").await;
    admin.create("existing").await;
    // One partition a second for "creator", and the same for every other client id.
    let quota = |value| own_and_default("creator", "controller_mutation_rate", value);
    let ok = vec![(0, String::new()); 2];
    assert_eq!(admin.alter(quota(Some(1.0)), false).await, ok);
    let create = |topics: &[(&str, i32)], validate_only: bool| {
        CreateTopicsRequest::default()
            .with_validate_only(validate_only)
            .with_topics(
                topics
                    .iter()
                    .map(|(n, partitions)| {
                        CreatableTopic::default()
                            .with_name(TopicName(st(n)))
                            .with_num_partitions(*partitions)
                            .with_replication_factor(1)
                    })
                    .collect(),
            )
    };
    let throttled = E::ThrottlingQuotaExceeded.code();
    // A bucket not in debt lets 20 partitions through, unthrottled: 19 s owed. The next topic
    // of the same request is refused.
    let mut first = Client::connect(&addr, "creator").await;
    let (r, _) = first
        .call(&create(&[("twenty", 20), ("next", 1)], false), 7)
        .await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[1].error_code, throttled);
    assert!(broker.broker.catalog.get("next").is_none());
    // Refused on another connection too (the first is muted), each topic once it passed the
    // other checks; the throttle is the time left, at most 30 s.
    let mut second = Client::connect(&addr, "creator").await;
    let (r, _) = second
        .call(&create(&[("later", 1), ("existing", 1)], false), 7)
        .await;
    assert_eq!(r.topics[0].error_code, throttled);
    let why = r.topics[0]
        .error_message
        .as_deref()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("controller_mutation_rate"), "{why}");
    assert_eq!(r.topics[1].error_code, E::TopicAlreadyExists.code());
    assert!(
        (15_000..=19_000).contains(&r.throttle_time_ms),
        "{}",
        r.throttle_time_ms
    );
    assert!(broker.broker.catalog.get("later").is_none());
    // validate_only is neither refused nor charged.
    let mut third = Client::connect(&addr, "creator").await;
    let (r, _) = third.call(&create(&[("later", 1)], true), 7).await;
    assert_eq!(r.topics[0].error_code, 0);
    let grow = CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(TopicName(st("twenty")))
                .with_count(22),
        ]);
    let mut fourth = Client::connect(&addr, "creator").await;
    assert_eq!(
        fourth.call(&grow, 3).await.0.results[0].error_code,
        throttled
    );
    let delete = DeleteTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topic_names(vec![TopicName(st("twenty"))]);
    let mut fifth = Client::connect(&addr, "creator").await;
    assert_eq!(
        fifth.call(&delete, 5).await.0.responses[0].error_code,
        throttled
    );
    let twenty = broker.broker.catalog.get("twenty").unwrap();
    assert_eq!(twenty.partition_count(), 20);
    // An older CreateTopics is let through and throttled.
    let mut old = Client::connect(&addr, "creator").await;
    let (r, _) = old.call(&create(&[("old-version", 1)], false), 5).await;
    assert_eq!(r.topics[0].error_code, 0);
    assert!(r.throttle_time_ms > 0);
    // Another client id under the default has a bucket of its own.
    let mut other = Client::connect(&addr, "other").await;
    let (r, _) = other.call(&grow, 3).await;
    assert_eq!((r.results[0].error_code, r.throttle_time_ms), (0, 0));
    assert_eq!(twenty.partition_count(), 22);
    // Without the quota, creator's changes go through at once.
    assert_eq!(admin.alter(quota(None), false).await, ok);
    let mut later = Client::connect(&addr, "creator").await;
    let (r, _) = later.call(&delete, 5).await;
    assert_eq!(r.responses[0].error_code, 0);
    assert!(broker.broker.catalog.get("twenty").is_none());
    broker.shutdown().await;
}

/// connection_creation_rate on an IP address (KIP-612): connections from it over the rate are
/// closed at once, unanswered; the default IP counts each address alone; removing the quota
/// lets every connection in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_an_addresss_rate_are_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut admin = Client::connect(&addr, "admin").await;
    // Two connections a second from this address (the default IP's 1000 do not apply to it).
    let quotas = |value: Option<f64>| {
        vec![
            entry(
                &[("ip", Some("127.0.0.1"))],
                &[("connection_creation_rate", value)],
            ),
            entry(
                &[("ip", None)],
                &[("connection_creation_rate", value.map(|v| v * 500.0))],
            ),
        ]
    };
    let ok = vec![(0, String::new()); 2];
    assert_eq!(admin.alter(quotas(Some(2.0)), false).await, ok);
    // Eight connections at once, each asking for ApiVersions: a full bucket (2) lets two
    // through and a third (taken while the bucket is not yet in debt); the rest are closed
    // unanswered once their throttle has passed.
    let answered = async || {
        // Connected all first, so that little refills between the connections.
        let mut conns = Vec::new();
        for _ in 0..8 {
            conns.push(common::RawClient::connect(&addr).await);
        }
        let mut served = 0;
        for mut raw in conns {
            let frame = common::request_frame(&ApiVersionsRequest::default(), 3, 1, "counted");
            raw.send_raw(&frame).await;
            served += usize::from(raw.read_frame().await.is_some());
        }
        served
    };
    let served = answered().await;
    assert!(
        (2..=4).contains(&served),
        "{served} of 8 connections served"
    );
    let refused = broker
        .broker
        .metrics
        .client_quota_throttled
        .load(Ordering::Relaxed);
    assert!(refused >= 4, "{refused} turned away");
    // A second later the address has room again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut raw = common::RawClient::connect(&addr).await;
    let frame = common::request_frame(&ApiVersionsRequest::default(), 3, 1, "later");
    raw.send_raw(&frame).await;
    assert!(raw.read_frame().await.is_some());
    // Without the quotas every connection is served.
    assert_eq!(admin.alter(quotas(None), false).await, ok);
    assert_eq!(answered().await, 8);
    broker.shutdown().await;
}

/// Answers ApiVersions on `c`: the connection is served.
async fn served(c: &mut RawClient) -> bool {
    let r = c
        .call(&kafka_protocol::messages::ApiVersionsRequest::default(), 3)
        .await;
    r.error_code == 0 && !r.api_keys.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_an_address_limit_are_closed_and_a_closed_one_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.max_connections_per_ip = 2;
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let mut first = RawClient::connect(&addr).await;
    let mut second = RawClient::connect(&addr).await;
    assert!(served(&mut first).await && served(&mut second).await);
    let mut third = RawClient::connect(&addr).await;
    assert!(third.is_closed().await, "a third from 127.0.0.1 is closed");
    assert_eq!(
        broker
            .broker
            .metrics
            .connections_over_ip_limit
            .load(Ordering::Relaxed),
        1
    );
    let ip = "127.0.0.1".parse().unwrap();
    assert_eq!(broker.broker.connections_per_ip.open_from(ip), 2);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.broker.connections_per_ip.open_from(ip) > 1 {
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot comes back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = RawClient::connect(&addr).await;
    assert!(served(&mut again).await && served(&mut second).await);
    let text = broker.broker.metrics.render(&broker.broker);
    assert!(
        text.contains("runnel_connections_over_ip_limit_total 1\n"),
        "{text}"
    );
    broker.shutdown().await;
}
