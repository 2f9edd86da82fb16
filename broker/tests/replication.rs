//! Replication to peer brokers (`[cluster]`), with real brokers on real sockets and librdkafka
//! clients: followers hold the leader's batches byte for byte, acks=all waits for the in-sync
//! followers and is refused without enough of them, a follower that was down catches up, and a
//! broker that led and then follows cuts its log back to the new leader's.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteRecordsRequest, FindCoordinatorRequest, GroupId,
    InitProducerIdRequest, JoinGroupRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use runnel::broker::BrokerHandle;

use common::{RawClient, produce_request};

/// Two brokers' ports and data directories.
struct Pair {
    ports: [u16; 2],
    dirs: [tempfile::TempDir; 2],
}

impl Pair {
    fn new() -> Pair {
        Pair {
            ports: [common::free_port(), common::free_port()],
            dirs: [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()],
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{},127.0.0.1:{}", self.ports[0], self.ports[1])
    }

    fn address(&self, node: i32) -> String {
        format!("127.0.0.1:{}", self.ports[node as usize - 1])
    }

    /// Starts broker `node` (1 or 2) of the pair, with `leader` leading.
    async fn start(&self, node: i32, leader: i32, min_insync: i32) -> BrokerHandle {
        self.start_with(node, leader, min_insync, |_| {}).await
    }

    /// [`Pair::start`] with `tweak` applied to the config last.
    async fn start_with(
        &self,
        node: i32,
        leader: i32,
        min_insync: i32,
        tweak: impl FnOnce(&mut edge_config::Config),
    ) -> BrokerHandle {
        let i = node as usize - 1;
        let mut cfg = common::test_config(self.dirs[i].path());
        cfg.broker.node_id = node;
        cfg.listeners.kafka.address = self.address(node).parse().unwrap();
        cfg.listeners.admin.enabled = true;
        cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
        cfg.cluster.brokers = vec![
            format!("1@{}", self.address(1)),
            format!("2@{}", self.address(2)),
        ];
        cfg.cluster.leader = leader;
        cfg.cluster.min_insync_replicas = min_insync;
        cfg.cluster.replica_lag_time_max = Duration::from_secs(2);
        cfg.cluster.replica_fetch_wait = Duration::from_millis(100);
        tweak(&mut cfg);
        common::start_with(cfg).await
    }
}

/// One record batch holding `value`, for raw produce requests.
fn batch(value: &[u8]) -> Bytes {
    let record = common::record(0, Some(b"k"), value, runnel::broker::now_ms());
    common::encode_batch(&[record], kafka_protocol::records::Compression::None)
}

fn producer(bootstrap: &str, acks: &str) -> FutureProducer {
    common::client_config(bootstrap)
        .set("acks", acks)
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

async fn produce(producer: &FutureProducer, topic: &str, n: usize, tag: &str) {
    for i in 0..n {
        let value = format!("{tag}-{i}");
        producer
            .send(
                FutureRecord::<str, str>::to(topic).payload(&value).key("k"),
                Duration::from_secs(30),
            )
            .await
            .expect("produced");
    }
}

/// Every record of partition 0 of `topic`, read through `bootstrap` with librdkafka.
fn consume(bootstrap: &str, topic: &str, expected: usize) -> Vec<(i64, String)> {
    let consumer = common::reader(bootstrap, topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            // A broker of the cluster that is down is reported as an error; the leader's
            // records still come.
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure)
                        ),
                        "{e}"
                    );
                    continue;
                }
            };
            let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            out.push((m.offset(), value));
        }
    }
    out
}

/// The bytes of every segment file of `topic`-0 under `data_dir`, in order.
fn segment_bytes(data_dir: &Path, topic: &str) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-0"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect()
}

/// Whether a write with acks=all to `topic` at broker 1 of `pair`, by the SCRAM user `app`
/// (`app-secret`), is refused within 3 s (min_insync_replicas not met).
async fn acks_all_refused(pair: &Pair, topic: &str) -> bool {
    let impatient: FutureProducer =
        common::sasl_client_config("SCRAM-SHA-256", &pair.address(1), "app", "app-secret")
            .set("acks", "all")
            .set("message.timeout.ms", "2000")
            .create()
            .unwrap();
    impatient
        .send(
            FutureRecord::<str, str>::to(topic).payload("x"),
            Duration::from_secs(3),
        )
        .await
        .is_err()
}

/// Waits until `cond` holds, for up to 20 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces `n` records tagged `tag` to the new topic `topic` with `p` and waits until
/// `follower` holds all of them.
async fn produce_copied(
    p: &FutureProducer,
    follower: &BrokerHandle,
    topic: &str,
    n: usize,
    tag: &str,
) {
    produce(p, topic, n, tag).await;
    eventually("the follower's copy", || {
        log_end(follower, topic) == n as i64
    })
    .await;
}

fn log_end(handle: &BrokerHandle, topic: &str) -> i64 {
    handle
        .broker
        .catalog
        .get(topic)
        .and_then(|t| t.partition(0))
        .map_or(-1, |p| p.log().log_end_offset())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_the_leaders_batches_byte_for_byte() {
    let pair = Pair::new();
    let leader = pair.start(1, 1, 2).await;
    let follower = pair.start(2, 1, 2).await;

    // Clients may start from either broker: the metadata sends them to the leader.
    let p = producer(&pair.bootstrap(), "all");
    produce(&p, "readings", 300, "r").await;

    // The follower knows the topic, with the leader's id, and lists both brokers.
    let mut raw = RawClient::connect(&pair.address(2)).await;
    let md = raw
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await;
    assert_eq!(md.brokers.len(), 2);
    assert_eq!(md.controller_id.0, 1);
    // One cluster, whichever broker a client asks.
    assert_eq!(
        md.cluster_id.as_ref().map(|id| id.to_string()),
        Some(leader.broker.cluster_id())
    );
    let topic = md
        .topics
        .iter()
        .find(|t| t.name.as_deref().map(|n| n.as_str()) == Some("readings"))
        .expect("the follower has the topic");
    assert_eq!(
        topic.topic_id,
        leader.broker.catalog.get("readings").unwrap().id
    );
    let part = &topic.partitions[0];
    assert_eq!(part.leader_id.0, 1);
    assert_eq!(
        part.replica_nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        part.isr_nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
        [1, 2]
    );

    // Every acks=all record is on the follower when it was acknowledged.
    assert_eq!(log_end(&follower, "readings"), 300);

    // Consumers started on the follower are sent to the leader and read everything.
    let read = consume(&pair.address(2), "readings", 300);
    assert_eq!(read.len(), 300);
    assert!(
        read.iter()
            .enumerate()
            .all(|(i, (o, v))| *o == i as i64 && *v == format!("r-{i}"))
    );

    // A consumer or producer talking to the follower's partitions directly is told to go to
    // the leader.
    let resp = raw
        .call(&produce_request("readings", 0, -1, batch(b"x")), 9)
        .await;
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        E::NotLeaderOrFollower.code()
    );
    // From v10 (KIP-951) the answer names the leader, its epoch and its address.
    let resp = raw
        .call(&produce_request("readings", 0, -1, batch(b"x")), 10)
        .await;
    let refused = &resp.responses[0].partition_responses[0];
    assert_eq!(refused.error_code, E::NotLeaderOrFollower.code());
    assert_eq!(
        (
            refused.current_leader.leader_id.0,
            refused.current_leader.leader_epoch
        ),
        (1, leader.broker.catalog.leader_epoch())
    );
    let endpoints: Vec<(i32, String, i32)> = resp
        .node_endpoints
        .iter()
        .map(|e| (e.node_id.0, e.host.to_string(), e.port))
        .collect();
    assert_eq!(
        endpoints,
        [(1, "127.0.0.1".to_string(), pair.ports[0] as i32)]
    );
    assert_eq!(log_end(&leader, "readings"), 300);
    // So does a consumer's fetch from v16, which names the topic by id (v13+).
    let id = leader.broker.catalog.get("readings").unwrap().id;
    let resp = raw
        .call(
            &kafka_protocol::messages::FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_bytes(1 << 20)
                .with_topics(vec![
                    kafka_protocol::messages::fetch_request::FetchTopic::default()
                        .with_topic_id(id)
                        .with_partitions(vec![
                            kafka_protocol::messages::fetch_request::FetchPartition::default()
                                .with_partition(0)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]),
            16,
        )
        .await;
    assert_eq!(resp.responses[0].topic_id, id);
    let refused = &resp.responses[0].partitions[0];
    assert_eq!(refused.error_code, E::NotLeaderOrFollower.code());
    assert_eq!(
        (
            refused.current_leader.leader_id.0,
            refused.current_leader.leader_epoch
        ),
        (1, leader.broker.catalog.leader_epoch())
    );
    assert_eq!(
        resp.node_endpoints
            .iter()
            .map(|e| (e.node_id.0, e.port))
            .collect::<Vec<_>>(),
        [(1, pair.ports[0] as i32)]
    );

    // Groups are coordinated by the leader, and topics changed there: the follower sends
    // clients to it.
    let found = raw
        .call(
            &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g")),
            3,
        )
        .await;
    assert_eq!((found.error_code, found.node_id.0), (0, 1));
    assert_eq!(found.port, pair.ports[0] as i32);
    let joined = raw
        .call(
            &JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_session_timeout_ms(10_000)
                .with_protocol_type(StrBytes::from_static_str("consumer")),
            5,
        )
        .await;
    assert_eq!(joined.error_code, E::NotCoordinator.code());
    let created = raw
        .call(
            &CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("elsewhere")))
                    .with_num_partitions(1)
                    .with_replication_factor(-1),
            ]),
            5,
        )
        .await;
    assert_eq!(created.topics[0].error_code, E::NotController.code());

    // A group consumer started on the follower joins at the leader and reads everything.
    let consumer: rdkafka::consumer::StreamConsumer = common::client_config(&pair.address(2))
        .set("group.id", "readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["readings"]).unwrap();
    let mut seen = 0;
    while seen < 300 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("records within 30 s")
            .expect("a record");
        assert_eq!(m.offset(), seen);
        seen += 1;
    }
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(consumer);
    // The committed offsets reach the follower too: made leader, it knows where the group
    // stopped.
    eventually("the follower to have the group's offsets", || {
        follower
            .broker
            .groups
            .fetch_offsets("readers", None)
            .is_ok_and(|t| t.len() == 1 && t[0].partitions[0].offset == 300)
    })
    .await;
    // So do the group's own configs, set and removed.
    let set = |v: Option<&str>| {
        vec![(
            "consumer.session.timeout.ms".to_string(),
            v.map(str::to_string),
        )]
    };
    // A group configured before its first member is copied too (the leader lists it).
    for group in ["readers", "future"] {
        leader
            .broker
            .groups
            .alter_group_config(group, &set(Some("50000")), false, false)
            .unwrap();
    }
    eventually("the follower to have the groups' configs", || {
        ["readers", "future"].iter().all(|g| {
            follower
                .broker
                .groups
                .group_config(g)
                .get("consumer.session.timeout.ms")
                == Some(&50_000)
        })
    })
    .await;
    for group in ["readers", "future"] {
        leader
            .broker
            .groups
            .alter_group_config(group, &set(None), false, false)
            .unwrap();
    }
    eventually("the follower to drop the groups' configs", || {
        follower.broker.groups.group_configs().is_empty()
    })
    .await;
    // Offsets deleted on the leader (OffsetDelete) are deleted on the follower too.
    leader
        .broker
        .groups
        .delete_offsets("readers", &[("readings".into(), 0)])
        .unwrap();
    eventually("the follower to drop the deleted offsets", || {
        follower
            .broker
            .groups
            .fetch_offsets("readers", None)
            .is_ok_and(|t| t.iter().all(|t| t.partitions.is_empty()))
    })
    .await;

    leader.shutdown().await;
    follower.shutdown().await;
    let a = segment_bytes(pair.dirs[0].path(), "readings");
    let b = segment_bytes(pair.dirs[1].path(), "readings");
    assert!(!a.is_empty());
    assert!(a == b, "the follower's segments differ from the leader's");
}

/// A commit is answered once the follower has it, as Kafka answers one once its offsets
/// topic's in-sync replicas have it: a consumer's commits and a transaction's offsets are on
/// the follower when the client hears they are committed, so a move of the lead loses none
/// (a consume-transform-produce loop would otherwise repeat its output). A follower that is
/// down is not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_answered_once_the_follower_has_it() {
    use rdkafka::consumer::{BaseConsumer, CommitMode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};
    const WAIT: Duration = Duration::from_secs(20);

    let pair = Pair::new();
    let leader = pair.start(1, 1, 1).await;
    let follower = pair.start(2, 1, 1).await;
    let bootstrap = pair.address(1);
    produce_copied(&producer(&bootstrap, "all"), &follower, "in", 10, "in").await;
    let committed_on = |broker: &runnel::broker::Broker| {
        let topics = broker.groups.fetch_offsets("g", None).unwrap_or_default();
        let t = topics.into_iter().find(|t| t.name == "in")?;
        t.partitions
            .iter()
            .find(|p| p.partition == 0)
            .map(|p| p.offset)
    };
    let commit = |consumer: &BaseConsumer, offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("in", 0, Offset::Offset(offset))
            .unwrap();
        consumer.commit(&tpl, CommitMode::Sync)
    };
    let on_follower = follower.broker.clone();
    let consumer = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = common::client_config(&bootstrap)
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["in"]).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut read = 0;
        while read < 10 {
            assert!(Instant::now() < deadline, "10 records within 20 s");
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
                read += 1;
            }
        }
        for offset in 1..=5 {
            commit(&consumer, offset).expect("commit");
            assert_eq!(
                committed_on(&on_follower),
                Some(offset),
                "the follower has commit {offset} when it is answered"
            );
        }
        let producer: BaseProducer = common::client_config(&bootstrap)
            .set("transactional.id", "etl")
            .create()
            .unwrap();
        producer.init_transactions(WAIT).expect("init_transactions");
        producer.begin_transaction().unwrap();
        producer
            .send(BaseRecord::<(), str>::to("in").payload("out").partition(0))
            .expect("queued");
        let mut position = TopicPartitionList::new();
        position
            .add_partition_offset("in", 0, Offset::Offset(8))
            .unwrap();
        let group = consumer.group_metadata().expect("a group member");
        producer
            .send_offsets_to_transaction(&position, &group, WAIT)
            .expect("send_offsets_to_transaction");
        producer
            .commit_transaction(WAIT)
            .expect("commit_transaction");
        assert_eq!(
            committed_on(&on_follower),
            Some(8),
            "the follower has the transaction's offsets when it is answered"
        );
        consumer
    })
    .await
    .unwrap();
    follower.shutdown().await;
    let consumer = tokio::task::spawn_blocking(move || {
        commit(&consumer, 9).expect("a commit with the follower down");
        consumer
    })
    .await
    .unwrap();
    assert_eq!(committed_on(&leader.broker), Some(9));
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    leader.shutdown().await;
}

/// After a restart the leader counts a follower it has not heard from yet as in sync, for
/// commits as for acks=all: a commit made before the follower reconnects is answered once the
/// follower has it (not at once, to be lost if the lead then moves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_right_after_a_leader_restart_waits_for_the_follower() {
    use kafka_protocol::messages::OffsetCommitRequest;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    let pair = Pair::new();
    // Room for the follower to come back within the leader's first replica_lag_time_max.
    let lag =
        |c: &mut edge_config::Config| c.cluster.replica_lag_time_max = Duration::from_secs(20);
    let leader = pair.start_with(1, 1, 1, lag).await;
    let follower = pair.start_with(2, 1, 1, lag).await;
    produce_copied(
        &producer(&pair.address(1), "all"),
        &follower,
        "in",
        10,
        "in",
    )
    .await;
    follower.shutdown().await;
    leader.shutdown().await;
    let leader = pair.start_with(1, 1, 1, lag).await;
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("in")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(7),
                ]),
        ]);
    let mut c = RawClient::connect(&pair.address(1)).await;
    let answered = tokio::spawn(async move { c.call(&commit, 8).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !answered.is_finished(),
        "answered before the follower is back"
    );
    let follower = pair.start_with(2, 1, 1, lag).await;
    let r = answered.await.unwrap();
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let offsets = follower.broker.groups.fetch_offsets("g", None).unwrap();
    assert_eq!(offsets[0].partitions[0].offset, 7, "{offsets:?}");
    follower.shutdown().await;
    leader.shutdown().await;
}

/// A follower that stops tells the leader (Kafka's controlled shutdown): it leaves the in-sync
/// set at once, so acks=all produces and commits go on without waiting
/// `replica_lag_time_max` for it, and it is back in once it has caught up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_leaves_the_in_sync_set_at_once_and_rejoins_once_caught_up() {
    use kafka_protocol::messages::OffsetCommitRequest;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    let pair = Pair::new();
    let lag =
        |c: &mut edge_config::Config| c.cluster.replica_lag_time_max = Duration::from_secs(60);
    let leader = pair.start_with(1, 1, 1, lag).await;
    let follower = pair.start_with(2, 1, 1, lag).await;
    let p = producer(&pair.address(1), "all");
    produce_copied(&p, &follower, "t", 10, "a").await;
    let isr = |md: &kafka_protocol::messages::MetadataResponse| {
        md.topics[0].partitions[0]
            .isr_nodes
            .iter()
            .map(|n| n.0)
            .collect::<Vec<_>>()
    };
    let mut raw = RawClient::connect(&pair.address(1)).await;
    let md = raw
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await;
    assert_eq!(isr(&md), [1, 2]);

    follower.shutdown().await;
    let md = raw
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await;
    assert_eq!(isr(&md), [1], "out of the in-sync set as it stopped");
    // Neither an acks=all produce nor a commit waits for it (with a 60 s lag allowed).
    let mut req = produce_request("t", 0, -1, batch(b"alone"));
    req.timeout_ms = 20_000;
    let started = Instant::now();
    let resp = raw.call(&req, 9).await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(11),
                ]),
        ]);
    let resp = raw.call(&commit, 8).await;
    assert_eq!(resp.topics[0].partitions[0].error_code, 0);
    // Nor a partition made after it stopped, which has never heard from it.
    create_topic(&mut raw, "made-since", &[]).await;
    let mut later = produce_request("made-since", 0, -1, batch(b"alone"));
    later.timeout_ms = 20_000;
    let resp = raw.call(&later, 9).await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered without waiting for the stopped follower: {:?}",
        started.elapsed()
    );

    // Back, it copies what it missed (the record and the commit) and rejoins the set.
    let follower = pair.start_with(2, 1, 1, lag).await;
    eventually("the follower to rejoin the in-sync set", || {
        let leader = leader.broker.clone();
        let t = leader.catalog.get("t").unwrap();
        let p = t.partition(0).unwrap();
        runnel::replication::isr(
            leader.cluster.as_ref().unwrap(),
            &p,
            runnel::broker::now_ms(),
        ) == [1, 2]
    })
    .await;
    assert_eq!(log_end(&follower, "t"), 11);
    produce(&p, "t", 5, "b").await;
    assert_eq!(log_end(&follower, "t"), 16, "acks=all waits for it again");
    let offsets = follower.broker.groups.fetch_offsets("g", None).unwrap();
    assert_eq!(offsets[0].partitions[0].offset, 11, "{offsets:?}");

    // A follower that stops without a word (a crash) stays in sync until the lag allowed has
    // passed: an acks=all produce waits for it.
    follower.shutdown_unannounced().await;
    req.timeout_ms = 500;
    let resp = raw.call(&req, 9).await;
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        E::RequestTimedOut.code()
    );
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_needs_enough_brokers_in_sync_and_a_follower_catches_up() {
    let pair = Pair::new();
    // A stopped follower stays in sync for 4 s: room for the first check on a loaded machine.
    let leader = pair
        .start_with(1, 1, 2, |c| {
            c.cluster.replica_lag_time_max = Duration::from_secs(4)
        })
        .await;
    let follower = pair.start(2, 1, 2).await;
    let p = producer(&pair.address(1), "all");
    produce_copied(&p, &follower, "t", 10, "a").await;

    // The follower crashes: it does not tell the leader it stops.
    follower.shutdown_unannounced().await;
    // Until the follower has been silent for replica_lag_time_max, it is still in sync: an
    // acks=all write waits for it, and times out (the record is written, as in Kafka).
    let mut raw = RawClient::connect(&pair.address(1)).await;
    let mut req = produce_request("t", 0, -1, batch(b"waits"));
    req.timeout_ms = 500;
    let started = Instant::now();
    let resp = raw.call(&req, 9).await;
    let code = resp.responses[0].partition_responses[0].error_code;
    assert_eq!(
        code,
        E::RequestTimedOut.code(),
        "{:?}",
        E::try_from_code(code)
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
    // A write still waiting when the follower leaves the in-sync set (4 s after its last
    // fetch) is answered NOT_ENOUGH_REPLICAS_AFTER_APPEND: written, but not replicated.
    req.timeout_ms = 10_000;
    let resp = raw.call(&req, 9).await;
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        E::NotEnoughReplicasAfterAppend.code()
    );
    assert!(started.elapsed() < Duration::from_secs(9));
    // Once it has left the in-sync set, acks=all is refused and nothing is written; acks=1
    // goes on.
    let end = log_end(&leader, "t");
    let resp = raw
        .call(&produce_request("t", 0, -1, batch(b"refused")), 9)
        .await;
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        E::NotEnoughReplicas.code()
    );
    assert_eq!(log_end(&leader, "t"), end);
    let md = raw
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await;
    assert_eq!(
        md.topics[0].partitions[0]
            .isr_nodes
            .iter()
            .map(|n| n.0)
            .collect::<Vec<_>>(),
        [1]
    );
    let metrics = common::http_get(leader.admin_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("runnel_replication_under_replicated_partitions 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runnel_replication_in_sync_replicas{topic=\"t\",partition=\"0\"} 1"),
        "{metrics}"
    );
    // As kafka-topics --describe --under-replicated-partitions: that partition.
    let under = under_replicated(&pair.address(1)).await;
    assert!(
        under.contains("topic: t ")
            && under.contains("partition 0  leader 1  replicas [1, 2]  isr [1]"),
        "{under}"
    );
    let one = producer(&pair.address(1), "1");
    produce(&one, "t", 20, "b").await;
    // Consumers read the acks=1 records: the in-sync set is the leader alone.
    assert_eq!(consume(&pair.address(1), "t", 32).len(), 32);

    // Back, the follower fetches what it missed, rejoins the in-sync set, and acks=all works.
    let follower = pair.start(2, 1, 2).await;
    eventually("the follower to catch up", || {
        log_end(&follower, "t") == log_end(&leader, "t")
    })
    .await;
    produce(&p, "t", 5, "c").await;
    assert_eq!(log_end(&follower, "t"), 37);
    let md = raw
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await;
    assert_eq!(md.topics[0].partitions[0].isr_nodes.len(), 2);
    let metrics = common::http_get(leader.admin_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("runnel_replication_under_replicated_partitions 0"),
        "{metrics}"
    );
    // The CLI may ask either broker, and a follower answers with the in-sync set it last read
    // from the leader (again as soon as it has caught up, then every 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut under = under_replicated(&pair.address(1)).await;
    while !under.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        under = under_replicated(&pair.address(1)).await;
    }
    assert_eq!(under, "");
    assert!(
        metrics.contains(
            "runnel_replication_follower_lag_records{follower=\"2\",topic=\"t\",partition=\"0\"} 0"
        ),
        "{metrics}"
    );
    let metrics = common::http_get(follower.admin_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("runnel_replication_following 1"),
        "{metrics}"
    );

    // Topics made, changed and deleted on the leader are made, changed and deleted on the
    // follower.
    let admin: rdkafka::admin::AdminClient<_> =
        common::client_config(&pair.address(1)).create().unwrap();
    let opts = rdkafka::admin::AdminOptions::new();
    let new = rdkafka::admin::NewTopic::new("made", 3, rdkafka::admin::TopicReplication::Fixed(2))
        .set("retention.ms", "3600000");
    let made = admin.create_topics([&new], &opts).await.unwrap();
    assert!(made[0].is_ok(), "{made:?}");
    eventually("the follower to make the topic", || {
        follower.broker.catalog.get("made").is_some_and(|t| {
            t.partition_count() == 3
                && t.configs().get("retention.ms").map(String::as_str) == Some("3600000")
        })
    })
    .await;
    // Another replication factor than the cluster's is refused.
    let bad = rdkafka::admin::NewTopic::new("bad", 1, rdkafka::admin::TopicReplication::Fixed(1));
    let refused = admin.create_topics([&bad], &opts).await.unwrap();
    assert!(refused[0].is_err(), "{refused:?}");
    admin.delete_topics(&["made"], &opts).await.unwrap();
    eventually("the follower to delete the topic", || {
        follower.broker.catalog.get("made").is_none()
    })
    .await;

    leader.shutdown().await;
    follower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_led_and_then_follows_cuts_its_log_back_to_the_new_leaders() {
    let pair = Pair::new();
    // Broker 2 stays in broker 1's in-sync set while it is down (a long lag allowed), so the
    // records below are never committed: the lead then moves to a broker that was in sync, as
    // docs/replication.md asks.
    let one = pair
        .start_with(1, 1, 1, |c| {
            c.cluster.replica_lag_time_max = Duration::from_secs(600)
        })
        .await;
    let two = pair.start(2, 1, 1).await;
    let p = producer(&pair.address(1), "all");
    produce_copied(&p, &two, "t", 10, "a").await;
    // Broker 2 crashes (it does not tell broker 1 it stops); broker 1 takes more writes
    // (acks=1) that nobody copies.
    two.shutdown_unannounced().await;
    produce(&producer(&pair.address(1), "1"), "t", 5, "lost").await;
    one.shutdown().await;
    drop(p);

    // The lead moves to broker 2 by config; broker 1 comes back as its follower.
    let two = pair.start(2, 2, 1).await;
    let p = producer(&pair.address(2), "all");
    produce(&p, "t", 3, "b").await;
    let one = pair.start(1, 2, 1).await;
    eventually("broker 1 to follow broker 2", || log_end(&one, "t") == 13).await;
    let read = consume(&pair.address(2), "t", 13);
    let values: Vec<&str> = read.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values.len(), 13);
    assert!(
        values[..10]
            .iter()
            .enumerate()
            .all(|(i, v)| *v == format!("a-{i}"))
    );
    assert_eq!(&values[10..], ["b-0", "b-1", "b-2"]);
    one.shutdown().await;
    two.shutdown().await;
    assert!(
        segment_bytes(pair.dirs[0].path(), "t") == segment_bytes(pair.dirs[1].path(), "t"),
        "broker 1 kept records broker 2 does not have"
    );
}

/// `want` values from `consumer`, passing over what a broker of the pair being down reports.
fn poll_values(consumer: &rdkafka::consumer::BaseConsumer, want: usize) -> Vec<String> {
    use rdkafka::types::RDKafkaErrorCode as C;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want {
        assert!(Instant::now() < deadline, "read only {out:?}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap()),
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(C::BrokerTransportFailure | C::AllBrokersDown)
                ) => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_read_records_the_new_leader_lacks_goes_back_to_where_they_differ() {
    let pair = Pair::new();
    let one = pair.start(1, 1, 1).await;
    let two = pair.start(2, 1, 1).await;
    produce_copied(&producer(&pair.address(1), "all"), &two, "t", 10, "a").await;
    // Broker 2 goes down and, after replica_lag_time_max (2 s), out of the in-sync set; broker
    // 1 alone takes 5 more records, which consumers read.
    two.shutdown().await;
    produce(&producer(&pair.address(1), "1"), "t", 5, "only-on-1").await;
    let consumer = common::reader(&pair.bootstrap(), "t");
    let read = poll_values(&consumer, 15);
    assert_eq!(read[14], "only-on-1-4");
    // Broker 1 goes down and the lead moves to broker 2, which never had those 5 (what Kafka
    // calls an unclean election); it takes 8 other records at offsets 10 to 17.
    one.shutdown().await;
    let two = pair.start(2, 2, 1).await;
    produce(&producer(&pair.address(2), "1"), "t", 8, "b").await;
    // The consumer, at offset 15 in broker 1's epoch, learns of broker 2's later epoch, asks
    // where broker 1's epoch ends on broker 2 (offset 10) and goes back there: it reads every
    // record of the new leader's, rather than going on from 15 past the first five.
    let after = poll_values(&consumer, 8);
    assert_eq!(after, (0..8).map(|i| format!("b-{i}")).collect::<Vec<_>>());
    assert!(
        two.broker
            .metrics
            .requests_of(kafka_protocol::messages::ApiKey::OffsetForLeaderEpoch)
            > 0
    );
    drop(consumer);
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_start_leads_at_a_larger_epoch_whichever_broker_makes_it() {
    let epoch = |h: &BrokerHandle| h.broker.catalog.leader_epoch();
    let pair = Pair::new();
    let one = pair.start(1, 1, 1).await;
    let two = pair.start(2, 1, 1).await;
    produce_copied(&producer(&pair.address(1), "all"), &two, "t", 3, "a").await;
    // Topics made in a burst take their epochs from the clock, not one more each: the epochs
    // do not run ahead of the clock the other broker's start goes by.
    let mut c = RawClient::connect(&pair.address(1)).await;
    for i in 0..30 {
        create_topic(&mut c, &format!("burst-{i}"), &[]).await;
    }
    let clock = (runnel::broker::now_ms() - 1_704_067_200_000 + 999) / 1000;
    let first = epoch(&one);
    assert!(
        first as i64 <= clock + 1,
        "{first} against the clock's {clock}"
    );
    eventually("broker 2 to report broker 1's epoch", || {
        epoch(&two) == first
    })
    .await;
    two.shutdown().await;
    // Broker 1 starts again while broker 2 is down: an epoch broker 2 never hears of.
    one.shutdown().await;
    let one = pair.start(1, 1, 1).await;
    let second = epoch(&one);
    assert!(second > first, "{second} after {first}");
    one.shutdown().await;
    // The lead moves to broker 2, which knows only the first epoch: it still leads at a later
    // one than broker 1's last, so clients that saw that one are not left with a newer epoch
    // than the leader's (refused as UNKNOWN_LEADER_EPOCH) or the same one (never told to check
    // their position).
    let two = pair.start(2, 2, 1).await;
    let third = epoch(&two);
    assert!(third > second, "{third} after {second}");
    // Broker 1, now following, reports broker 2's epoch once it has read it.
    let one = pair.start(1, 2, 1).await;
    eventually("broker 1 to report broker 2's epoch", || {
        epoch(&one) == third
    })
    .await;
    // Every partition's, as broker 2 reports it (each topic of broker 2 leads at `third`, the
    // epoch of its start), in broker 1's Metadata, which lists broker 2's topics (broker 2 had
    // not copied all of the burst before it stopped).
    let mut c = RawClient::connect(&pair.address(1)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .call(&MetadataRequest::default().with_topics(None), 12)
            .await;
        let epochs: Vec<i32> = r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.leader_epoch)
            .collect();
        let leaders: usize = two
            .broker
            .catalog
            .list()
            .iter()
            .map(|t| t.partition_count() as usize)
            .sum();
        if epochs.len() == leaders && epochs.iter().all(|&e| e == third) {
            break;
        }
        assert!(Instant::now() < deadline, "{epochs:?}, not all {third}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = common::http_get(one.admin_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains(&format!("\nrunnel_leader_epoch {third}\n")),
        "{metrics}"
    );
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_get_ids_no_other_broker_gives_and_a_follower_catches_up_past_deleted_records() {
    let pair = Pair::new();
    let leader = pair.start(1, 1, 2).await;
    let follower = pair.start(2, 1, 2).await;

    // InitProducerId goes to any broker: each broker's ids are its own.
    let mut ids = Vec::new();
    for node in [1, 2, 1, 2] {
        let mut raw = RawClient::connect(&pair.address(node)).await;
        let r = raw
            .call(
                &InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_transaction_timeout_ms(60_000),
                4,
            )
            .await;
        assert_eq!(r.error_code, 0);
        ids.push(r.producer_id.0);
    }
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{ids:?}");
    // Idempotent producers started at either broker both write every record.
    let idempotent = |node: i32| -> FutureProducer {
        common::client_config(&pair.address(node))
            .set("enable.idempotence", "true")
            .create()
            .unwrap()
    };
    let (a, b) = (idempotent(1), idempotent(2));
    produce(&a, "ids", 5, "a").await;
    produce(&b, "ids", 5, "b").await;
    assert_eq!(log_end(&leader, "ids"), 10);

    // The follower is away while the leader's log start moves into the middle of a batch.
    follower.shutdown().await;
    let records: Vec<_> = (0..100)
        .map(|i| common::record(i, Some(b"k"), b"v", runnel::broker::now_ms()))
        .collect();
    let one_batch = common::encode_batch(&records, kafka_protocol::records::Compression::None);
    let mut raw = RawClient::connect(&pair.address(1)).await;
    let made = raw
        .call(
            &MetadataRequest::default()
                .with_topics(Some(vec![
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_static_str("straddle")))),
                ]))
                .with_allow_auto_topic_creation(true),
            12,
        )
        .await;
    assert_eq!(made.topics[0].error_code, 0);
    let resp = raw
        .call(&produce_request("straddle", 0, 1, one_batch), 9)
        .await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    // Records only the leader has are not readable (nor deletable) until the follower has
    // left the in-sync set.
    eventually("the high watermark to pass the batch", || {
        let p = leader
            .broker
            .catalog
            .get("straddle")
            .unwrap()
            .partition(0)
            .unwrap();
        let end = p.log().log_end_offset();
        runnel::replication::readable_end(leader.broker.cluster.as_ref(), &p, end) == 100
    })
    .await;
    let deleted = raw
        .call(
            &DeleteRecordsRequest::default().with_topics(vec![
                DeleteRecordsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("straddle")))
                    .with_partitions(vec![
                        DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(50),
                    ]),
            ]),
            2,
        )
        .await;
    assert_eq!(deleted.topics[0].partitions[0].low_watermark, 50);
    // Back, it starts its copy at that batch, with the leader's log start, and rejoins.
    let follower = pair.start(2, 1, 2).await;
    eventually("the follower to copy the straddling batch", || {
        follower
            .broker
            .catalog
            .get("straddle")
            .and_then(|t| t.partition(0))
            .is_some_and(|p| {
                let log = p.log();
                (log.log_start_offset(), log.log_end_offset()) == (50, 100)
            })
    })
    .await;
    produce(&producer(&pair.address(1), "all"), "straddle", 1, "c").await;
    leader.shutdown().await;
    follower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_that_disagree_on_the_leader_keep_their_data() {
    let pair = Pair::new();
    let one = pair.start(1, 1, 1).await;
    let two = pair.start(2, 1, 1).await;
    produce_copied(&producer(&pair.address(1), "all"), &two, "t", 10, "a").await;
    // Broker 1 is restarted believing broker 2 leads, while broker 2 still follows broker 1:
    // each refuses the other's replica fetches, and neither cuts or deletes anything.
    one.shutdown().await;
    let one = pair.start(1, 2, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(log_end(&one, "t"), 10);
    assert_eq!(log_end(&two, "t"), 10);
    assert!(!one.broker.cluster.as_ref().unwrap().following());
    assert!(!two.broker.cluster.as_ref().unwrap().following());
    one.shutdown().await;
    two.shutdown().await;
}

/// A second broker given a follower's node id (a copied config) is refused replica fetches
/// while the follower fetches, and says why; it takes the node's place only once the follower
/// has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_with_a_followers_node_id_is_refused_while_the_follower_fetches() {
    let pair = Pair::new();
    let one = pair.start(1, 1, 1).await;
    let two = pair.start(2, 1, 1).await;
    let p = producer(&pair.address(1), "all");
    produce_copied(&p, &two, "t", 10, "a").await;
    let copy_dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(copy_dir.path());
    cfg.broker.node_id = 2;
    cfg.listeners.kafka.address = "127.0.0.1:0".parse().unwrap();
    cfg.cluster.brokers = vec![
        format!("1@{}", pair.address(1)),
        format!("2@{}", pair.address(2)),
    ];
    cfg.cluster.leader = 1;
    cfg.cluster.replica_lag_time_max = Duration::from_secs(2);
    cfg.cluster.replica_fetch_wait = Duration::from_millis(100);
    let copy = common::start_with(cfg).await;
    let copy_cluster = copy.broker.cluster.clone().unwrap();
    // Asked again for the 11 s the leader may still give the node to a closing connection.
    eventually("the second broker to give up", || {
        copy_cluster.follow_error().is_some()
    })
    .await;
    let error = copy_cluster.follow_error().unwrap();
    assert!(
        error.contains("another broker fetches as node 2"),
        "{error}"
    );
    assert!(!copy_cluster.following());
    assert_eq!(log_end(&copy, "t"), -1, "nothing copied");
    // The follower kept fetching meanwhile.
    produce(&p, "t", 5, "b").await;
    eventually("the follower's copy", || log_end(&two, "t") == 15).await;
    assert!(two.broker.cluster.as_ref().unwrap().following());
    // Once the follower has gone, the second broker follows in its place.
    two.shutdown().await;
    eventually("the second broker to follow", || {
        copy_cluster.following() && log_end(&copy, "t") == 15
    })
    .await;
    copy.shutdown().await;
    one.shutdown().await;
}

/// A leader restarted without its metadata (meta.redb lost) or with an empty data dir (a disk
/// replaced, a mount missing at boot) is another cluster: a follower holding the topics does
/// not follow it, where following would delete every topic the leader no longer knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_metadata_or_its_data_is_not_followed() {
    let pair = Pair::new();
    let mut one = pair.start(1, 1, 1).await;
    let two = pair.start(2, 1, 1).await;
    produce_copied(&producer(&pair.address(1), "all"), &two, "t", 10, "a").await;
    let cluster_id = two.broker.cluster_id();
    assert_eq!(cluster_id, one.broker.cluster_id());
    // A follower that holds the leader's topics (by id) but not its cluster id (kept from
    // before followers took it, or its write failed) takes it and follows.
    two.shutdown().await;
    std::fs::write(pair.dirs[1].path().join("cluster.id"), "an-older-id").unwrap();
    let two = pair.start(2, 1, 1).await;
    eventually("the follower to take the leader's id", || {
        two.broker.cluster_id() == cluster_id
    })
    .await;
    produce(&producer(&pair.address(1), "all"), "t", 5, "b").await;
    eventually("the follower's copy", || log_end(&two, "t") == 15).await;
    for lost in ["meta.redb", "the data dir"] {
        one.shutdown().await;
        let dir = pair.dirs[0].path();
        if lost == "meta.redb" {
            std::fs::remove_file(dir.join("meta.redb")).unwrap();
        } else {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
        one = pair.start(1, 1, 1).await;
        assert_ne!(one.broker.cluster_id(), cluster_id, "{lost} lost");
        assert!(one.broker.catalog.get("t").is_none());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cluster = two.broker.cluster.as_ref().unwrap();
        assert!(!cluster.following(), "{lost} lost");
        let error = cluster.follow_error().unwrap_or_default();
        assert!(error.contains("is not followed"), "{lost} lost: {error}");
        assert_eq!(log_end(&two, "t"), 15, "{lost} lost");
        assert_eq!(two.broker.cluster_id(), cluster_id);
    }
    // The follower restarted still holds its topic and does not follow either.
    two.shutdown().await;
    let two = pair.start(2, 1, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(log_end(&two, "t"), 15);
    assert!(!two.broker.cluster.as_ref().unwrap().following());
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_keeps_records_only_it_has_unread_until_the_in_sync_set_allows() {
    let pair = Pair::new();
    // A follower counts as in sync for 8 s after its last fetch: room for the checks below on a
    // loaded machine.
    let lag = |c: &mut edge_config::Config| c.cluster.replica_lag_time_max = Duration::from_secs(8);
    let leader = pair.start_with(1, 1, 1, lag).await;
    let follower = pair.start(2, 1, 1).await;
    produce_copied(&producer(&pair.address(1), "all"), &follower, "t", 10, "a").await;
    // A crash: the leader is not told.
    follower.shutdown_unannounced().await;
    // acks=1 records the follower never copies, then the leader restarts at once (the
    // follower still counts as in sync, so they are above the high watermark).
    produce(&producer(&pair.address(1), "1"), "t", 5, "b").await;
    let hw = |b: &BrokerHandle| {
        let p = b.broker.catalog.get("t").unwrap().partition(0).unwrap();
        let end = p.log().log_end_offset();
        runnel::replication::readable_end(b.broker.cluster.as_ref(), &p, end)
    };
    assert_eq!(hw(&leader), 10);
    leader.shutdown().await;
    let leader = pair.start_with(1, 1, 1, lag).await;
    // The saved high watermark holds after the restart: consumers do not see the 5 records...
    assert_eq!(log_end(&leader, "t"), 15);
    assert_eq!(hw(&leader), 10);
    // ...until the follower, silent since, has left the in-sync set (8 s after the start).
    eventually("the in-sync set to shrink", || hw(&leader) == 15).await;
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_logs_in_to_a_leader_that_asks_for_sasl_and_acls() {
    let pair = Pair::new();
    let users = pair.dirs[0].path().join("users");
    std::fs::write(&users, "replica r3plica\napp app-secret\n").unwrap();
    let secured = |password: &'static str| {
        let users = users.clone();
        move |cfg: &mut edge_config::Config| {
            cfg.listeners.kafka.sasl_plain_file = users;
            cfg.acls.enabled = true;
            cfg.acls.super_users = vec!["User:replica".into(), "User:app".into()];
            cfg.cluster.sasl_mechanism = "SCRAM-SHA-512".into();
            cfg.cluster.sasl_username = "replica".into();
            cfg.cluster.sasl_password = password.into();
        }
    };
    let leader = pair.start_with(1, 1, 2, secured("r3plica")).await;
    let follower = pair.start_with(2, 1, 2, secured("r3plica")).await;
    let app: FutureProducer =
        common::sasl_client_config("SCRAM-SHA-256", &pair.address(1), "app", "app-secret")
            .set("acks", "all")
            .create()
            .unwrap();
    produce(&app, "secured", 20, "s").await;
    assert_eq!(log_end(&follower, "secured"), 20);
    assert!(follower.broker.cluster.as_ref().unwrap().following());

    // With a wrong password the follower is refused, keeps its copy, and leaves the in-sync
    // set: acks=all writes are refused with min_insync_replicas = 2.
    follower.shutdown().await;
    let follower = pair.start_with(2, 1, 2, secured("wrong")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!follower.broker.cluster.as_ref().unwrap().following());
    assert_eq!(log_end(&follower, "secured"), 20);
    assert!(acks_all_refused(&pair, "secured").await);
    assert_eq!(
        log_end(&leader, "secured"),
        20,
        "a refused write was stored"
    );
    leader.shutdown().await;
    follower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_the_acls_hide_things_from_keeps_its_configs_and_groups() {
    use runnel::acl::{Acl, Operation, PatternType, Permission, ResourceType};
    let pair = Pair::new();
    let users = pair.dirs[0].path().join("users");
    std::fs::write(&users, "replica r3plica\n").unwrap();
    let secured = |super_users: Vec<String>| {
        let users = users.clone();
        move |cfg: &mut edge_config::Config| {
            cfg.listeners.kafka.sasl_plain_file = users;
            cfg.acls.enabled = true;
            cfg.acls.super_users = super_users;
            cfg.cluster.sasl_mechanism = "PLAIN".into();
            cfg.cluster.sasl_username = "replica".into();
            cfg.cluster.sasl_password = "r3plica".into();
        }
    };
    let everything = vec!["User:replica".to_string()];
    let leader = pair.start_with(1, 1, 1, secured(everything.clone())).await;
    let follower = pair.start_with(2, 1, 1, secured(everything)).await;
    // A topic with an override and a group with offsets, made on the leader.
    let now = runnel::broker::now_ms();
    leader
        .broker
        .catalog
        .create_topic(
            "kept",
            1,
            2,
            [("retention.ms".into(), "-1".into())].into(),
            false,
            now,
        )
        .unwrap();
    let commit = runnel::groups::OffsetCommitRequest {
        group_id: "g".into(),
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        topics: vec![runnel::groups::OffsetCommitTopic {
            name: "kept".into(),
            partitions: vec![runnel::groups::OffsetCommitPartition {
                partition: 0,
                offset: 0,
                leader_epoch: -1,
                metadata: None,
                commit_timestamp_ms: None,
            }],
        }],
    };
    leader.broker.groups.commit_offsets(&commit);
    let copied = |f: &BrokerHandle| {
        let config = f.broker.catalog.get("kept").map(|t| t.configs());
        let offsets = f.broker.groups.fetch_offsets("g", None).unwrap_or_default();
        config.is_some_and(|c| c.get("retention.ms").map(String::as_str) == Some("-1"))
            && offsets.len() == 1
    };
    eventually("the follower's copies", || copied(&follower)).await;

    // The replica may now fetch and see topic names, nothing more: it must not take what the
    // ACLs hide for what the leader lacks.
    let allow = |resource_type, name: &str, operation| Acl {
        resource_type,
        pattern: PatternType::Literal,
        name: name.into(),
        principal: "User:replica".into(),
        host: "*".into(),
        operation,
        permission: Permission::Allow,
    };
    leader
        .broker
        .acls
        .create(&[
            allow(
                ResourceType::Cluster,
                runnel::acl::CLUSTER_NAME,
                Operation::ClusterAction,
            ),
            allow(ResourceType::Topic, "*", Operation::Describe),
        ])
        .unwrap();
    leader.shutdown().await;
    let leader = pair.start_with(1, 1, 1, secured(Vec::new())).await;
    eventually("the follower to follow again", || {
        follower.broker.cluster.as_ref().unwrap().following()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        copied(&follower),
        "the follower dropped a config or a group the ACLs hide"
    );
    leader.shutdown().await;
    follower.shutdown().await;
}

/// Transactions in a cluster: a commit is answered once the follower holds its markers; when
/// the lead moves to that follower, read_committed consumers there see the committed records,
/// the transaction left open under the old leader is aborted by the new one (its coordinator
/// state stayed with the old leader), and the transactional id starts again on the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_transactions_survive_a_move_of_the_lead_and_open_ones_are_aborted() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let pair = Pair::new();
    let one = pair.start(1, 1, 2).await;
    let two = pair.start(2, 1, 2).await;
    // The topic exists on both before the transaction starts.
    produce_copied(&producer(&pair.address(1), "all"), &two, "t", 1, "plain").await;
    let timeout = Duration::from_secs(30);
    let transactional = |bootstrap: String| {
        move || {
            let p: BaseProducer = common::client_config(&bootstrap)
                .set("transactional.id", "moving")
                .create()
                .unwrap();
            p.init_transactions(timeout).unwrap();
            p
        }
    };
    let send = move |p: &BaseProducer, values: &[&str]| {
        for v in values {
            p.send(BaseRecord::<str, str>::to("t").partition(0).payload(v))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        p.flush(timeout).unwrap();
    };
    let open = tokio::task::spawn_blocking({
        let start = transactional(pair.address(1));
        move || {
            let p = start();
            p.begin_transaction().unwrap();
            send(&p, &["c-0", "c-1"]);
            p.commit_transaction(timeout).unwrap();
            p
        }
    })
    .await
    .unwrap();
    // Answered committed: the follower has the records and the marker (offsets 1-3).
    assert_eq!(log_end(&two, "t"), 4, "the commit waited for the follower");
    let open = tokio::task::spawn_blocking(move || {
        open.begin_transaction().unwrap();
        send(&open, &["open-0"]);
        open
    })
    .await
    .unwrap();
    eventually("the follower's copy of the open transaction", || {
        log_end(&two, "t") == 5
    })
    .await;
    two.shutdown().await;
    one.shutdown().await;
    tokio::task::spawn_blocking(move || drop(open))
        .await
        .unwrap();

    // Broker 2 leads, alone for now.
    let two = pair.start(2, 2, 1).await;
    eventually("the new leader to abort the open transaction", || {
        let p = two.broker.catalog.get("t").unwrap().partition(0).unwrap();
        let mut log = p.log();
        log.log_end_offset() == 6 && log.last_stable_offset(6) == 6
    })
    .await;
    tokio::task::spawn_blocking({
        let start = transactional(pair.address(2));
        move || {
            let p = start();
            p.begin_transaction().unwrap();
            send(&p, &["c-after"]);
            p.commit_transaction(timeout).unwrap();
        }
    })
    .await
    .unwrap();
    let read = tokio::task::spawn_blocking({
        let address = pair.address(2);
        move || consume(&address, "t", 4)
    })
    .await
    .unwrap();
    let values: Vec<&str> = read.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["plain-0", "c-0", "c-1", "c-after"]);
    two.shutdown().await;
}

/// A follower forwards client quota requests to the leader, which keeps and enforces the quotas
/// (as Kafka's brokers forward them to the controller), and answers NOT_CONTROLLER with the
/// reason when the leader cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_client_quota_requests_to_the_leader() {
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
    use runnel::client_quotas::{Filter, QuotaKey};
    let pair = Pair::new();
    let leader = pair.start(1, 1, 1).await;
    let follower = pair.start(2, 1, 1).await;
    let st = |s: &str| StrBytes::from_string(s.to_string());
    let alter = AlterClientQuotasRequest::default().with_entries(vec![
        EntryData::default()
            .with_entity(vec![
                EntityData::default()
                    .with_entity_type(st("client-id"))
                    .with_entity_name(Some(st("meter-9"))),
            ])
            .with_ops(vec![
                OpData::default()
                    .with_key(st("producer_byte_rate"))
                    .with_value(4096.0),
            ]),
    ]);
    let mut raw = RawClient::connect(&pair.address(2)).await;
    let r = raw.call(&alter, 1).await;
    assert_eq!(
        r.entries[0].error_code, 0,
        "{:?}",
        r.entries[0].error_message
    );
    let all = Filter {
        components: vec![],
        strict: false,
    };
    let kept = leader.broker.client_quotas.describe(&all);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].1, vec![(QuotaKey::ProducerByteRate, 4096.0)]);
    assert!(follower.broker.client_quotas.describe(&all).is_empty());
    let described = raw.call(&DescribeClientQuotasRequest::default(), 1).await;
    assert_eq!(described.error_code, 0);
    let entries = described.entries.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entity[0].entity_name.as_deref(), Some("meter-9"));
    assert_eq!(entries[0].values[0].value, 4096.0);

    leader.shutdown().await;
    let r = raw.call(&alter, 1).await;
    assert_eq!(r.entries[0].error_code, 41, "NOT_CONTROLLER");
    let why = r.entries[0].error_message.as_deref().unwrap_or_default();
    assert!(why.contains("could not forward"), "{why}");
    follower.shutdown().await;
}

/// With `cluster.tls` a follower reaches the leader's TLS listener, checks its certificate and
/// presents its own, and is the certificate's principal to the leader's ACLs; TLS clients are
/// sent to the brokers' TLS listeners (`cluster.tls_brokers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reaches_the_leader_over_tls_with_its_certificate() {
    let pair = Pair::new();
    let pki = pair.dirs[0].path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    common::make_pki(&pki, "replica");
    let other_ca = pair.dirs[1].path().join("pki");
    std::fs::create_dir(&other_ca).unwrap();
    common::make_pki(&other_ca, "stranger");
    let users = pair.dirs[0].path().join("users");
    std::fs::write(&users, "app app-secret\n").unwrap();
    let tls_ports = [common::free_port(), common::free_port()];
    let tls_address = |node: i32| format!("127.0.0.1:{}", tls_ports[node as usize - 1]);
    // The plaintext listeners ask for SASL and the cluster has no login: the follower can
    // only be let in by its certificate, over TLS.
    let secured = |node: i32, ca: &Path| {
        let (pki, ca, users) = (pki.clone(), ca.join("ca.pem"), users.clone());
        let (own, one, two) = (tls_address(node), tls_address(1), tls_address(2));
        move |cfg: &mut edge_config::Config| {
            cfg.listeners.kafka.sasl_plain_file = users;
            let tls = &mut cfg.listeners.kafka_tls;
            tls.enabled = true;
            tls.address = own.parse().unwrap();
            tls.cert = pki.join("server.pem");
            tls.key = pki.join("server.key");
            tls.client_ca = pki.join("ca.pem");
            cfg.acls.enabled = true;
            cfg.acls.super_users = vec!["User:replica".into(), "User:app".into()];
            cfg.cluster.tls_brokers = vec![format!("1@{one}"), format!("2@{two}")];
            cfg.cluster.tls = true;
            cfg.cluster.tls_ca = ca;
            cfg.cluster.tls_cert = pki.join("replica.pem");
            cfg.cluster.tls_key = pki.join("replica.key");
        }
    };
    let leader = pair.start_with(1, 1, 2, secured(1, &pki)).await;
    let follower = pair.start_with(2, 1, 2, secured(2, &pki)).await;
    let app: FutureProducer =
        common::sasl_client_config("SCRAM-SHA-256", &pair.address(1), "app", "app-secret")
            .set("acks", "all")
            .create()
            .unwrap();
    // acks=all with min_insync_replicas = 2: answered only once the follower has the records.
    produce(&app, "over-tls", 20, "t").await;
    assert_eq!(log_end(&follower, "over-tls"), 20);
    assert!(follower.broker.cluster.as_ref().unwrap().following());

    // A TLS consumer that knows only the follower's TLS listener is sent to the leader's TLS
    // listener (Metadata, FindCoordinator) and reads every record in its group.
    let consumer: rdkafka::consumer::StreamConsumer = common::client_config(&tls_address(2))
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", pki.join("ca.pem").to_str().unwrap())
        .set(
            "ssl.certificate.location",
            pki.join("replica.pem").to_str().unwrap(),
        )
        .set(
            "ssl.key.location",
            pki.join("replica.key").to_str().unwrap(),
        )
        .set("group.id", "tls-readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["over-tls"]).unwrap();
    let mut read = Vec::new();
    while read.len() < 20 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record over TLS within 30 s")
            .expect("a record, not an error");
        read.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..20).map(|i| format!("t-{i}")).collect();
    assert_eq!(read, expected);
    drop(consumer);

    // A follower that does not trust the leader's certificate does not follow: it keeps its
    // copy, leaves the in-sync set, and acks=all writes are refused.
    follower.shutdown().await;
    let follower = pair.start_with(2, 1, 2, secured(2, &other_ca)).await;
    let cluster = follower.broker.cluster.clone().unwrap();
    eventually("the follower to say why it does not follow", || {
        cluster.follow_error().is_some()
    })
    .await;
    let why = cluster.follow_error().unwrap();
    assert!(
        why.contains("TLS handshake") && why.contains("invalid peer certificate"),
        "{why}"
    );
    assert!(!cluster.following());
    assert_eq!(log_end(&follower, "over-tls"), 20);
    // Once it has left the in-sync set (replica_lag_time_max), acks=all is refused and nothing
    // is written (before, a write is taken and waits for it).
    let out_of_sync = "runnel_replication_in_sync_replicas{topic=\"over-tls\",partition=\"0\"} 1";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = common::http_get(leader.admin_addr.unwrap(), "/metrics").await;
        if metrics.contains(out_of_sync) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the in-sync set did not shrink: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        acks_all_refused(&pair, "over-tls").await,
        "acks=all taken without the follower"
    );
    assert_eq!(
        log_end(&leader, "over-tls"),
        20,
        "a refused write was stored"
    );
    leader.shutdown().await;
    follower.shutdown().await;
}

/// A cluster whose TLS files cannot be read does not start, and says which key named them.
#[tokio::test]
async fn a_cluster_with_an_unreadable_tls_ca_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.cluster.brokers = vec!["1@127.0.0.1:1".into(), "2@127.0.0.1:2".into()];
    cfg.cluster.tls_brokers = vec!["1@127.0.0.1:3".into(), "2@127.0.0.1:4".into()];
    cfg.cluster.leader = 2;
    cfg.cluster.tls = true;
    cfg.cluster.tls_ca = dir.path().join("missing.pem");
    let error = match runnel::start_broker(cfg).await {
        Ok(_) => panic!("a broker started without its cluster.tls_ca"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("cluster.tls_ca"), "{error}");
}

/// ACLs are the cluster's, kept by the leader: CreateAcls and DeleteAcls sent to a follower are
/// forwarded to it, and followers copy the leader's ACLs (dropping ones only they had), so that
/// a client that bootstraps from a follower is judged as at the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_copy_the_leaders_acls_and_forward_changes_to_it() {
    use kafka_protocol::messages::create_acls_request::AclCreation;
    use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
    use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest};
    use runnel::acl::{Acl, Operation, PatternType, Permission, ResourceType};
    let pair = Pair::new();
    let users = pair.dirs[0].path().join("users");
    std::fs::write(&users, "replica r3plica\nadmin adm1n\nmallory m4llory\n").unwrap();
    // Mallory is a super user on the follower only (its own config): the leader, which keeps
    // the ACLs, still judges her requests by its own rights.
    let secured = |super_users: &'static [&'static str]| {
        let users = users.clone();
        move |cfg: &mut edge_config::Config| {
            cfg.listeners.kafka.sasl_plain_file = users;
            cfg.acls.enabled = true;
            cfg.acls.super_users = super_users.iter().map(|u| u.to_string()).collect();
            cfg.cluster.sasl_mechanism = "PLAIN".into();
            cfg.cluster.sasl_username = "replica".into();
            cfg.cluster.sasl_password = "r3plica".into();
        }
    };
    let leader = pair
        .start_with(1, 1, 1, secured(&["User:replica", "User:admin"]))
        .await;
    let follower = pair
        .start_with(
            2,
            1,
            1,
            secured(&["User:replica", "User:admin", "User:mallory"]),
        )
        .await;
    let st = |s: &str| StrBytes::from_string(s.to_string());
    let read_for = |principal: &str, topic: &str| Acl {
        resource_type: ResourceType::Topic,
        pattern: PatternType::Literal,
        name: topic.into(),
        principal: principal.into(),
        host: "*".into(),
        operation: Operation::Read,
        permission: Permission::Allow,
    };
    let holds = |h: &BrokerHandle, acl: &Acl| h.broker.acls.acls().contains(acl);

    // Made through the follower: kept by the leader, and copied back.
    let mut admin = RawClient::logged_in(&pair.address(2), b"\0admin\0adm1n").await;
    // CreateAcls of Read on `topic` for `principal`.
    let create_read = |principal: &str, topic: &str| {
        CreateAclsRequest::default().with_creations(vec![
            AclCreation::default()
                .with_resource_type(ResourceType::Topic.code())
                .with_resource_name(st(topic))
                .with_resource_pattern_type(PatternType::Literal.code())
                .with_principal(st(principal))
                .with_host(st("*"))
                .with_operation(Operation::Read.code())
                .with_permission_type(Permission::Allow.code()),
        ])
    };
    let created = admin.call(&create_read("User:reader", "readings"), 3).await;
    assert_eq!(created.results[0].error_code, 0, "{created:?}");
    let reader = read_for("User:reader", "readings");
    assert!(holds(&leader, &reader), "the leader keeps it");
    assert!(holds(&follower, &reader), "copied back before the answer");

    // One only the follower had (made before it joined, say) goes; one made on the leader comes.
    let stray = read_for("User:stray", "readings");
    follower
        .broker
        .acls
        .create(std::slice::from_ref(&stray))
        .unwrap();
    let other = read_for("User:other", "alerts");
    leader
        .broker
        .acls
        .create(std::slice::from_ref(&other))
        .unwrap();
    eventually("the copy to match the leader's", || {
        !holds(&follower, &stray) && holds(&follower, &other)
    })
    .await;
    assert_eq!(follower.broker.acls.acls(), leader.broker.acls.acls());

    // Forwarded as Mallory (an Envelope naming her), not as the follower: refused.
    let mut mallory = RawClient::logged_in(&pair.address(2), b"\0mallory\0m4llory").await;
    let grab = read_for("User:mallory", "*");
    let refused = mallory.call(&create_read("User:mallory", "*"), 3).await;
    assert_eq!(
        refused.results[0].error_code,
        E::ClusterAuthorizationFailed.code(),
        "{refused:?}"
    );
    assert!(!holds(&leader, &grab) && !holds(&follower, &grab));
    // Nor may she mint a login on the follower for a user the leader trusts (SCRAM credentials
    // are made on the leader, as the client there).
    let upsert = kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
        .with_name(st("admin"))
        .with_mechanism(1)
        .with_iterations(4096)
        .with_salt(Bytes::from_static(b"chosen-salt"))
        .with_salted_password(Bytes::from(vec![7u8; 32]));
    let minted = mallory
        .call(
            &kafka_protocol::messages::AlterUserScramCredentialsRequest::default()
                .with_upsertions(vec![upsert]),
            0,
        )
        .await;
    assert_eq!(
        minted.results[0].error_code,
        E::ClusterAuthorizationFailed.code(),
        "{minted:?}"
    );
    assert!(follower.broker.scram.all().is_empty() && leader.broker.scram.all().is_empty());

    // Deleted through the follower: gone from both.
    let deleted = admin
        .call(
            &DeleteAclsRequest::default().with_filters(vec![
                DeleteAclsFilter::default()
                    .with_resource_type_filter(ResourceType::Topic.code())
                    .with_resource_name_filter(Some(st("readings")))
                    .with_pattern_type_filter(PatternType::Literal.code())
                    .with_principal_filter(Some(st("User:reader")))
                    .with_host_filter(None)
                    .with_operation(runnel::acl::ANY)
                    .with_permission_type(runnel::acl::ANY),
            ]),
            3,
        )
        .await;
    assert_eq!(deleted.filter_results[0].error_code, 0, "{deleted:?}");
    assert_eq!(deleted.filter_results[0].matching_acls.len(), 1);
    assert!(!holds(&leader, &reader));
    assert!(!holds(&follower, &reader), "dropped before the answer");
    assert!(holds(&follower, &other));
    leader.shutdown().await;
    follower.shutdown().await;
}

/// A leader that comes back without records its follower holds (a power cut took its log's
/// unsynced tail; here the tail is cut off by hand) takes no writes that would give those
/// offsets to other records, the follower keeps its copy without asking in a loop, and moving
/// the lead to the follower brings every acknowledged record back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_records_its_follower_holds_takes_no_writes_until_the_lead_moves() {
    let pair = Pair::new();
    let leader = pair.start(1, 1, 2).await;
    let follower = pair.start(2, 1, 2).await;
    produce_copied(
        &producer(&pair.address(1), "all"),
        &follower,
        "t",
        20,
        "acked",
    )
    .await;
    leader.shutdown().await;
    let segment = pair.dirs[0]
        .path()
        .join("t-0")
        .join("00000000000000000000.log");
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // (A long lag allowed, so that the follower is not out of the in-sync set for lagging.)
    let leader = pair
        .start_with(1, 1, 2, |c| {
            c.cluster.replica_lag_time_max = Duration::from_secs(30)
        })
        .await;
    let end = log_end(&leader, "t");
    assert!(end < 20, "the torn tail is cut at start: {end}");
    let partition = leader
        .broker
        .catalog
        .get("t")
        .unwrap()
        .partition(0)
        .unwrap();
    // Known at once from the high watermark it saved; then the follower's fetch names it.
    assert!(runnel::replication::lost_records(&partition).is_some());
    eventually("the follower's fetch to tell the leader", || {
        runnel::replication::lost_records(&partition).is_some_and(|why| why.contains("broker 2"))
    })
    .await;
    // It is out of the in-sync set at once: its log is not the leader's.
    let cluster = leader.broker.cluster.as_ref().unwrap();
    assert_eq!(
        runnel::replication::isr(cluster, &partition, runnel::broker::now_ms()),
        vec![1]
    );
    let mut c = RawClient::connect(&pair.address(1)).await;
    let r = c
        .call(&produce_request("t", 0, 1, batch(b"other")), 9)
        .await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, E::KafkaStorageError.code());
    let why = p.error_message.as_deref().unwrap_or_default();
    assert!(why.contains("move the lead to broker 2"), "{why}");
    // acks=all too, with that reason rather than the in-sync set it shrank.
    let r = c
        .call(&produce_request("t", 0, -1, batch(b"other")), 9)
        .await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, E::KafkaStorageError.code());
    assert!(
        p.error_message
            .as_deref()
            .unwrap_or_default()
            .contains("move the lead to broker 2"),
        "{:?}",
        p.error_message
    );
    assert_eq!(log_end(&leader, "t"), end, "nothing written");
    // The follower keeps what it has, asking again at the pace of a long poll, not in a loop.
    let fetches = |b: &BrokerHandle| {
        let text = b.broker.metrics.render(&b.broker);
        text.lines()
            .find_map(|l| l.strip_prefix("runnel_requests_total{api=\"Fetch\"} "))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = fetches(&leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = fetches(&leader) - before;
    assert!(asked > 0 && asked < 100, "{asked} fetches in 2 s");
    assert_eq!(log_end(&follower, "t"), 20);
    // The lead moves to broker 2, as docs/replication.md says: every acknowledged record is
    // there, and broker 1 copies them back.
    leader.shutdown().await;
    follower.shutdown().await;
    let new_leader = pair.start(2, 2, 1).await;
    let old_leader = pair.start(1, 2, 1).await;
    eventually("broker 1 to copy the records back", || {
        log_end(&old_leader, "t") == 20
    })
    .await;
    let address = pair.address(2);
    let got = tokio::task::spawn_blocking(move || consume(&address, "t", 20))
        .await
        .unwrap();
    let want: Vec<String> = (0..20).map(|i| format!("acked-{i}")).collect();
    assert_eq!(got.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(), want);
    old_leader.shutdown().await;
    new_leader.shutdown().await;
}

/// A topic deleted and made again under its name while a follower holds the old one's records
/// is not taken for records the leader lost: writes go on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_made_again_is_not_taken_for_lost_records() {
    use kafka_protocol::messages::DeleteTopicsRequest;
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    let pair = Pair::new();
    let leader = pair.start(1, 1, 1).await;
    let follower = pair.start(2, 1, 1).await;
    produce_copied(
        &producer(&pair.address(1), "all"),
        &follower,
        "t",
        30,
        "old",
    )
    .await;
    let mut c = RawClient::connect(&pair.address(1)).await;
    let deleted = c
        .call(
            &DeleteTopicsRequest::default().with_topics(vec![
                DeleteTopicState::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("t")))),
            ]),
            6,
        )
        .await;
    assert_eq!(deleted.responses[0].error_code, 0);
    create_topic(&mut c, "t", &[]).await;
    let partition = leader
        .broker
        .catalog
        .get("t")
        .unwrap()
        .partition(0)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut written = 0;
    while Instant::now() < until {
        assert_eq!(runnel::replication::lost_records(&partition), None);
        let r = c.call(&produce_request("t", 0, 1, batch(b"new")), 9).await;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.error_message.as_deref()), (0, None));
        written += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the follower to copy the new topic", || {
        log_end(&follower, "t") == written
    })
    .await;
    follower.shutdown().await;
    leader.shutdown().await;
}

/// Creates `name` (one partition) with `configs` through `c`, and checks it was made.
async fn create_topic(c: &mut RawClient, name: &str, configs: &[(&str, &str)]) {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let st = |t: &str| StrBytes::from_string(t.to_string());
    let topic = CreatableTopic::default()
        .with_name(TopicName(st(name)))
        .with_num_partitions(1)
        .with_replication_factor(-1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(st(k))
                        .with_value(Some(st(v)))
                })
                .collect(),
        );
    let created = c
        .call(&CreateTopicsRequest::default().with_topics(vec![topic]), 5)
        .await;
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");
}

/// A config change: retention and compaction look for work every `every`.
fn checks_every(every: Duration) -> impl Fn(&mut edge_config::Config) + Copy {
    move |c| c.log.retention_check_interval = every
}

/// A pair with broker 1 leading and one broker in sync enough, the leader compacting at once
/// (checks every 100 ms) and the follower as `follower_checks` says, and the compacted topic
/// `topic` (with `configs` besides) made on the leader; with a client of the leader.
async fn compacting_pair(
    follower_checks: impl Fn(&mut edge_config::Config),
    topic: &str,
    configs: &[(&str, &str)],
) -> (Pair, BrokerHandle, BrokerHandle, RawClient) {
    let pair = Pair::new();
    let leader = pair
        .start_with(1, 1, 1, checks_every(Duration::from_millis(100)))
        .await;
    let follower = pair.start_with(2, 1, 1, follower_checks).await;
    let mut c = RawClient::connect(&pair.address(1)).await;
    let compact = [
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ];
    let all: Vec<(&str, &str)> = compact.iter().chain(configs).copied().collect();
    create_topic(&mut c, topic, &all).await;
    (pair, leader, follower, c)
}

/// The first batch of `topic`-0 on `handle`, as its log holds it.
fn first_batch(handle: &BrokerHandle, topic: &str) -> runnel::storage::BatchHeader {
    let p = handle
        .broker
        .catalog
        .get(topic)
        .unwrap()
        .partition(0)
        .unwrap();
    let bytes = p.log().read(0, 1).unwrap();
    runnel::storage::check_batch(&bytes).unwrap()
}

/// A follower that starts with records above the high watermark it saved (a kill between two
/// saves) compares its last batch with the leader's. Where the leader compacted that batch
/// meanwhile, the two differ only by the records compaction removed: the follower keeps its
/// copy and fetches on from its log end (where compaction removed all of them, the copy goes). (It used to take the compacted batch for records
/// another leader took in their place: one that may cut its records cut them and fetched them
/// again, one that may not said the leader had lost them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_keeps_a_batch_its_leader_compacted_while_it_was_down() {
    // Some records of the batch removed on the leader, then all of them.
    follower_keeps_a_compacted_batch(3).await;
    follower_keeps_a_compacted_batch(5).await;
}

/// See [`a_follower_keeps_a_batch_its_leader_compacted_while_it_was_down`]: the first
/// `superseded` of the batch's five keys get new values on the leader.
async fn follower_keeps_a_compacted_batch(superseded: i64) {
    // The follower does not compact during the test: what it holds is what it copied.
    let not_compacting = checks_every(Duration::from_secs(3600));
    let (pair, leader, follower, mut c) =
        compacting_pair(not_compacting, "c", &[("segment.bytes", "1024")]).await;
    // One batch of five keys, copied by the follower.
    let now = runnel::broker::now_ms();
    let keys = [b"k0", b"k1", b"k2", b"k3", b"k4"];
    let batch_of = |value: &[u8]| {
        let records: Vec<_> = (0..5)
            .map(|i| common::record(i, Some(keys[i as usize]), value, now))
            .collect();
        common::encode_batch(&records, kafka_protocol::records::Compression::None)
    };
    let r = c
        .call(&produce_request("c", 0, 1, batch_of(b"first")), 9)
        .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    eventually("the follower's copy", || log_end(&follower, "c") == 5).await;
    let copied = first_batch(&follower, "c");
    assert_eq!(copied.record_count, 5);
    // Stopped; the high watermark it saved is set back to before the batch, as if it were
    // killed before saving it, and the note of whose records it holds goes, so it may cut.
    follower.shutdown().await;
    let dir = pair.dirs[1].path();
    std::fs::write(dir.join("replication-checkpoint"), "0 0 c\n").unwrap();
    std::fs::remove_file(dir.join("replication-leader")).unwrap();
    // Meanwhile keys of it get new values on the leader, in a segment of their own (the first
    // cannot take them), and its compaction removes them from the first batch. The batch is
    // about 1,000 bytes, within segment.bytes (a client's larger one is refused, as in Kafka),
    // so the small one after it rolls the segment again: 61 bytes of batch header, 11 of each
    // record's framing beside its value.
    let value = vec![b'n'; (1000 - 61) / superseded as usize - 11];
    let records: Vec<_> = (0..superseded)
        .map(|i| common::record(i, Some(keys[i as usize]), &value, now))
        .collect();
    let newer = common::encode_batch(&records, kafka_protocol::records::Compression::None);
    let r = c.call(&produce_request("c", 0, 1, newer), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 5);
    let r = c.call(&produce_request("c", 0, 1, batch(b"roll")), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    eventually("the leader to compact the first batch", || {
        let first = first_batch(&leader, "c");
        if superseded < 5 {
            first.record_count == 5 - superseded as i32
        } else {
            first.base_offset == 5
        }
    })
    .await;
    let compacted = first_batch(&leader, "c");
    if superseded < 5 {
        assert_eq!(
            (compacted.base_offset, compacted.last_offset()),
            (0, 4),
            "the batch keeps its offsets"
        );
        assert_ne!(compacted.crc, copied.crc);
    }
    let follower = pair.start_with(2, 1, 1, not_compacting).await;
    let end = 5 + superseded + 1;
    eventually("the follower to catch up", || {
        log_end(&follower, "c") == end
    })
    .await;
    let kept = first_batch(&follower, "c");
    if superseded < 5 {
        assert_eq!(
            (kept.crc, kept.record_count),
            (copied.crc, 5),
            "the follower's copy is kept, not cut and fetched again"
        );
    } else {
        // Every record of it superseded on the leader: cut, as the leader holds none there.
        assert_eq!(kept.base_offset, 5);
    }
    follower.shutdown().await;
    leader.shutdown().await;
}

/// The value of `min.insync.replicas` DescribeConfigs reports for `topic` at `c`'s broker.
async fn min_insync_of(c: &mut RawClient, topic: &str) -> String {
    use kafka_protocol::messages::DescribeConfigsRequest;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    let r = c
        .call(
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(topic.to_string()))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str(
                        "min.insync.replicas",
                    )])),
            ]),
            4,
        )
        .await;
    let result = &r.results[0];
    assert_eq!(result.error_code, 0, "{:?}", result.error_message);
    result.configs[0]
        .value
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// A topic's own `min.insync.replicas` wins over `cluster.min_insync_replicas`, as in Kafka:
/// with the follower down, acks=all writes to a topic set to 1 are taken and those to a topic
/// on the cluster's 2 refused; DescribeConfigs reports each topic's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_min_insync_replicas_overrides_the_clusters() {
    let pair = Pair::new();
    let leader = pair.start(1, 1, 2).await;
    let follower = pair.start(2, 1, 2).await;
    let mut c = RawClient::connect(&pair.address(1)).await;
    create_topic(&mut c, "one", &[("min.insync.replicas", "1")]).await;
    create_topic(&mut c, "two", &[]).await;
    assert_eq!(min_insync_of(&mut c, "one").await, "1");
    assert_eq!(min_insync_of(&mut c, "two").await, "2");
    follower.shutdown().await;
    // Once the follower is out of the in-sync set, the topic on the cluster's value refuses
    // acks=all writes before writing anything.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let r = c.call(&produce_request("two", 0, -1, batch(b"x")), 9).await;
        let p = r.responses[0].partition_responses[0].clone();
        if p.error_code == E::NotEnoughReplicas.code() || Instant::now() > deadline {
            break p;
        }
    };
    assert_eq!(refusal.error_code, E::NotEnoughReplicas.code());
    let why = refusal.error_message.unwrap_or_default();
    assert!(why.contains("min.insync.replicas = 2"), "{why}");
    // The topic set to 1 takes them.
    for _ in 0..3 {
        let r = c.call(&produce_request("one", 0, -1, batch(b"y")), 9).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    assert_eq!(log_end(&leader, "one"), 3);
    leader.shutdown().await;
}

/// A broker alone is its topics' only replica: a topic asking for two in sync refuses acks=all
/// writes (as a Kafka topic of replication factor 1 does) and takes acks=1 ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_alone_refuses_acks_all_to_a_topic_needing_two_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    create_topic(&mut c, "two", &[("min.insync.replicas", "2")]).await;
    assert_eq!(min_insync_of(&mut c, "two").await, "2");
    let r = c.call(&produce_request("two", 0, -1, batch(b"x")), 9).await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, E::NotEnoughReplicas.code());
    let r = c.call(&produce_request("two", 0, 1, batch(b"x")), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(log_end(&broker, "two"), 1, "only the acks=1 write");
    broker.shutdown().await;
}

/// Every record of `topic`-0 on `handle` as (key, whether it is a tombstone), in offset order.
fn keys_of(handle: &BrokerHandle, topic: &str) -> Vec<(String, bool)> {
    let p = handle
        .broker
        .catalog
        .get(topic)
        .unwrap()
        .partition(0)
        .unwrap();
    let (start, end) = {
        let log = p.log();
        (log.log_start_offset(), log.log_end_offset())
    };
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let mut bytes = p.log().read(at, 1 << 20).unwrap();
        if bytes.is_empty() {
            break;
        }
        while !bytes.is_empty() {
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
            for r in set.records {
                let key = String::from_utf8(r.key.unwrap_or_default().to_vec()).unwrap();
                out.push((key, r.value.is_none()));
                at = r.offset + 1;
            }
        }
    }
    out
}

/// On a compacted topic a leader keeps a delete, past its `delete.retention.ms`, until every
/// follower has copied it: a follower down longer than that gets it when it comes back (it kept
/// the deleted key's value, and would have served it had the lead moved there), also when the
/// leader restarted meanwhile. The follower, which may lead next, removes it once the leader
/// says every broker has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_keeps_a_delete_until_a_follower_that_was_down_copies_it() {
    let compacting = checks_every(Duration::from_millis(100));
    let (pair, leader, follower, mut c) = compacting_pair(
        compacting,
        "d",
        &[("segment.ms", "100"), ("delete.retention.ms", "1000")],
    )
    .await;
    // One record to partition 0 of `d`, acks=1.
    async fn produce(c: &mut RawClient, key: &[u8], value: Option<&[u8]>) {
        let mut r = common::record(0, Some(key), b"", runnel::broker::now_ms());
        r.value = value.map(Bytes::copy_from_slice);
        let batch = common::encode_batch(&[r], kafka_protocol::records::Compression::None);
        let r = c.call(&produce_request("d", 0, 1, batch), 9).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    produce(&mut c, b"dev7", Some(b"v1")).await;
    eventually("the follower's copy", || log_end(&follower, "d") == 1).await;
    follower.shutdown().await;
    // The delete, then writes for 4 s: the leader's passes run past its horizon.
    produce(&mut c, b"dev7", None).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        produce(&mut c, b"filler", Some(b"f")).await;
    }
    let keys = keys_of(&leader, "d");
    assert!(
        !keys.contains(&("dev7".into(), false)),
        "the value went: {keys:?}"
    );
    assert!(
        keys.contains(&("dev7".into(), true)),
        "the delete waits for the follower: {keys:?}"
    );
    // A leader restarted knows nothing of the follower still down: it keeps the delete too.
    leader.shutdown().await;
    let leader = pair.start_with(1, 1, 1, compacting).await;
    let mut c = RawClient::connect(&pair.address(1)).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        produce(&mut c, b"filler", Some(b"f")).await;
    }
    let keys = keys_of(&leader, "d");
    assert!(
        keys.contains(&("dev7".into(), true)),
        "the delete waits for the follower after a restart: {keys:?}"
    );
    let follower = pair.start_with(2, 1, 1, compacting).await;
    eventually("the follower to copy the delete", || {
        keys_of(&follower, "d").contains(&("dev7".into(), true))
    })
    .await;
    // Then it goes on the leader, at its next passes (a new segment rolls one in).
    eventually("the leader to remove the delete", || {
        !keys_of(&leader, "d").iter().any(|(k, _)| k == "dev7")
    })
    .await;
    // And on the follower, told that every broker has it, at its own passes past the horizon
    // (which new segments bring on).
    let deadline = Instant::now() + Duration::from_secs(10);
    while keys_of(&follower, "d").iter().any(|(k, _)| k == "dev7") {
        assert!(
            Instant::now() < deadline,
            "the follower keeps the delete: {:?}",
            keys_of(&follower, "d")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        produce(&mut c, b"filler", Some(b"f")).await;
    }
    follower.shutdown().await;
    leader.shutdown().await;
}

/// A follower keeps a delete past its `delete.retention.ms` while a broker of the cluster has
/// not copied it: it may lead next, and that broker would keep the deleted key's value. Here
/// the cluster names a third broker that never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_keeps_a_delete_another_broker_has_not_copied() {
    let pair = Pair::new();
    let third = format!("3@127.0.0.1:{}", common::free_port());
    let config = |c: &mut edge_config::Config| {
        checks_every(Duration::from_millis(100))(c);
        c.cluster.brokers.push(third.clone());
    };
    let leader = pair.start_with(1, 1, 1, config).await;
    let follower = pair.start_with(2, 1, 1, config).await;
    let mut c = RawClient::connect(&pair.address(1)).await;
    let configs = [
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("segment.ms", "100"),
        ("delete.retention.ms", "1000"),
    ];
    create_topic(&mut c, "d", &configs).await;
    let mut send = async |key: &[u8], value: Option<&[u8]>| {
        let mut r = common::record(0, Some(key), b"", runnel::broker::now_ms());
        r.value = value.map(Bytes::copy_from_slice);
        let batch = common::encode_batch(&[r], kafka_protocol::records::Compression::None);
        let r = c.call(&produce_request("d", 0, 1, batch), 9).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    };
    send(b"dev7", Some(b"v1")).await;
    send(b"dev7", None).await;
    // Writes for 4 s: both brokers' passes run past the delete's horizon.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(b"filler", Some(b"f")).await;
    }
    eventually("the follower's copy", || {
        log_end(&follower, "d") == log_end(&leader, "d")
    })
    .await;
    for (name, broker) in [("leader", &leader), ("follower", &follower)] {
        let keys = keys_of(broker, "d");
        assert!(
            keys.contains(&("dev7".into(), true))
                && !keys.contains(&("dev7".into(), false))
                && keys.iter().filter(|(k, _)| k == "filler").count() < 5,
            "the {name} compacts, and keeps the delete: {keys:?}"
        );
    }
    follower.shutdown().await;
    leader.shutdown().await;
}

/// What `runnel topics describe --under-replicated-partitions` prints against `bootstrap`.
async fn under_replicated(bootstrap: &str) -> String {
    let bootstrap = bootstrap.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["topics", "describe", "--under-replicated-partitions"])
            .args(["-b", &bootstrap])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}
