//! Consumer groups driven by librdkafka: rebalancing across members, and committed offsets
//! that survive a broker restart.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        common::client_config(bootstrap).create().unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(res[0].is_ok(), "{:?}", res[0]);
}

async fn produce(bootstrap: &str, topic: &str, partitions: i32, per_partition: usize) {
    let producer: FutureProducer = common::client_config(bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut futures = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            let payload = format!("p{p}-{i}");
            futures.push(
                producer
                    .send_result(
                        FutureRecord::<(), _>::to(topic)
                            .payload(&payload)
                            .partition(p),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
        }
    }
    for f in futures {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn member(bootstrap: &str, group: &str, assignor: &str) -> BaseConsumer {
    common::client_config(bootstrap)
        .set("group.id", group)
        .set("partition.assignment.strategy", assignor)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Leaves the group and waits (up to 5 s) until the revocation is handled, before the consumer
/// is dropped: rust-rdkafka's drop handles a rebalance event still queued by asking librdkafka's
/// main thread for the rebalance protocol, which can wait for ever while the consumer closes.
fn leave(c: BaseConsumer) {
    c.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !assigned(&c).is_empty() && Instant::now() < deadline {
        let _ = c.poll(Duration::from_millis(20));
    }
    // The revocation's own event, if it is still queued.
    let _ = c.poll(Duration::from_millis(20));
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|a| a.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every member until `done` holds for their assignments, or panics after 40s.
fn poll_until(members: &[&BaseConsumer], what: &str, done: impl Fn(&[BTreeSet<i32>]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        for m in members {
            if let Some(Err(e)) = m.poll(Duration::from_millis(30)) {
                panic!("consumer error: {e}");
            }
        }
        let sets: Vec<_> = members.iter().map(|m| assigned(m)).collect();
        if done(&sets) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: assignments stuck at {sets:?}"
        );
    }
}

fn covers_evenly(sets: &[BTreeSet<i32>], partitions: i32) -> bool {
    let all: BTreeSet<i32> = sets.iter().flatten().copied().collect();
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let per = partitions as usize / sets.len();
    all.len() == partitions as usize
        && total == partitions as usize
        && sets.iter().all(|s| s.len() >= per)
}

async fn rebalance_when_one_of_three_leaves(assignor: &str) {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    let topic = format!("grp-{}", assignor.replace('-', ""));
    create_topic(&bootstrap, &topic, 6).await;
    let group = format!("g-{assignor}");
    let (b, t, a) = (bootstrap.clone(), topic.clone(), assignor.to_string());
    tokio::task::spawn_blocking(move || {
        let members: Vec<BaseConsumer> = (0..3).map(|_| member(&b, &group, &a)).collect();
        for m in &members {
            m.subscribe(&[&t]).unwrap();
        }
        let refs: Vec<&BaseConsumer> = members.iter().collect();
        poll_until(&refs, "three members", |s| {
            covers_evenly(s, 6) && s.iter().all(|x| x.len() == 2)
        });
        let mut members = members;
        let leaving = members.pop().unwrap();
        leave(leaving); // LeaveGroup on close
        let refs: Vec<&BaseConsumer> = members.iter().collect();
        poll_until(&refs, "after one left", |s| {
            covers_evenly(s, 6) && s.iter().all(|x| x.len() == 3)
        });
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_group_of_three_over_six_partitions_rebalances_when_one_leaves() {
    rebalance_when_one_of_three_leaves("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_group_rebalances_when_one_leaves() {
    rebalance_when_one_of_three_leaves("roundrobin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_group_rebalances_when_one_leaves() {
    rebalance_when_one_of_three_leaves("cooperative-sticky").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_heartbeating_is_expired_and_its_partitions_move() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "expiry", 4).await;
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let a = member(&b, "g-expiry", "range");
        a.subscribe(&["expiry"]).unwrap();
        poll_until(&[&a], "one member", |s| s[0].len() == 4);
        // A second member in another process (the runnel CLI's consumer), killed with SIGKILL
        // so it neither leaves nor heartbeats: only the session timeout can remove it.
        let mut other = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args([
                "consume",
                "expiry",
                "--group",
                "g-expiry",
                "--bootstrap",
                &b,
            ])
            .args([
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=300",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        poll_until(&[&a], "two members", |s| s[0].len() == 2);
        other.kill().unwrap();
        other.wait().unwrap();
        let killed_at = Instant::now();
        poll_until(&[&a], "after session timeout", |s| s[0].len() == 4);
        // The killed member had a 6s session timeout; its partitions come back only after it.
        assert!(
            killed_at.elapsed() >= Duration::from_secs(5),
            "moved before the session expired"
        );
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_resume_after_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::test_config(dir.path());
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "resume", 2).await;
    produce(&bootstrap, "resume", 2, 50).await;
    let b = bootstrap.clone();
    let first: HashMap<i32, Vec<String>> = tokio::task::spawn_blocking(move || {
        let c = member(&b, "g-resume", "range");
        c.subscribe(&["resume"]).unwrap();
        let mut seen: HashMap<i32, Vec<String>> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.values().map(|v| v.len()).sum::<usize>() < 60 && Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                if seen.get(&m.partition()).map_or(0, |v| v.len()) < 30 {
                    seen.entry(m.partition())
                        .or_default()
                        .push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    tpl.add_partition_offset(
                        "resume",
                        m.partition(),
                        rdkafka::Offset::Offset(m.offset() + 1),
                    )
                    .unwrap();
                    c.commit(&tpl, CommitMode::Sync).unwrap();
                }
            }
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(first.values().map(|v| v.len()).sum::<usize>(), 60);
    broker.shutdown().await;

    // Same data dir, new broker process state: the group resumes at offset 30 of each partition.
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let rest: HashMap<i32, Vec<String>> = tokio::task::spawn_blocking(move || {
        let c = member(&b, "g-resume", "range");
        c.subscribe(&["resume"]).unwrap();
        let mut seen: HashMap<i32, Vec<String>> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.values().map(|v| v.len()).sum::<usize>() < 40 && Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                seen.entry(m.partition())
                    .or_default()
                    .push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
            }
        }
        seen
    })
    .await
    .unwrap();
    for p in 0..2 {
        let expected: Vec<String> = (30..50).map(|i| format!("p{p}-{i}")).collect();
        assert_eq!(
            rest.get(&p),
            Some(&expected),
            "partition {p} resumes at the committed offset"
        );
    }
    broker.shutdown().await;
}

/// Counts the partition assignments a consumer is given.
/// Sets its flag when dropped: a failed assertion then stops a consumer thread instead of
/// hanging the test (a runtime waits for its blocking tasks when it is dropped).
/// Stops the consumer thread when the test ends; a test that panicked also marks it failed.
struct StopOnDrop(Arc<AtomicBool>, Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.1.store(true, Ordering::SeqCst);
        }
        self.0.store(true, Ordering::SeqCst);
    }
}

struct CountingAssignments(Arc<AtomicUsize>);

impl rdkafka::ClientContext for CountingAssignments {}

impl rdkafka::consumer::ConsumerContext for CountingAssignments {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if matches!(rebalance, rdkafka::consumer::Rebalance::Assign(_)) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A consumer that stays up while the broker restarts keeps its partitions: the broker knows
/// the group's members again (as Kafka reloads them from `__consumer_offsets`), so the
/// member's heartbeats go on and there is no rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_its_partitions_across_a_broker_restart() {
    keeps_its_partitions_across_a_broker_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_protocol_member_keeps_its_partitions_across_a_broker_restart() {
    keeps_its_partitions_across_a_broker_restart(true).await;
}

/// One consumer reads 40 records, the broker restarts, it reads 40 more: with no second
/// assignment and no record twice. `consumer_protocol`: KIP-848's protocol, else the classic.
/// Under the consumer protocol librdkafka reports no second assignment even when it had to
/// join again with the same partitions, so there this checks that consuming goes on, every
/// record once; that the broker knows its members after a restart is checked over the wire
/// (`consumer_protocol_members_are_known_after_a_broker_restart`).
async fn keeps_its_partitions_across_a_broker_restart(consumer_protocol: bool) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.kafka.address = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.groups.consumer_heartbeat_interval = Duration::from_millis(300);
    cfg.groups.consumer_session_timeout = Duration::from_secs(10);
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "steady", 2).await;
    produce(&bootstrap, "steady", 2, 20).await;

    let assignments = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (b, assignments, seen, stop, failed) = (
            bootstrap.clone(),
            assignments.clone(),
            seen.clone(),
            stop.clone(),
            failed.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut config = common::client_config(&b);
            config
                .set("group.id", "g-steady")
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false");
            if consumer_protocol {
                config.set("group.protocol", "consumer");
            } else {
                config
                    .set("session.timeout.ms", "10000")
                    .set("heartbeat.interval.ms", "300");
            }
            let c: BaseConsumer<CountingAssignments> = config
                .create_with_context(CountingAssignments(assignments))
                .unwrap();
            c.subscribe(&["steady"]).unwrap();
            while !stop.load(Ordering::SeqCst) {
                // Errors while the broker is away are expected; the consumer goes on.
                if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
                    let _ = c.commit_message(&m, CommitMode::Async);
                }
            }
            if failed.load(Ordering::SeqCst) {
                // The test failed and its broker is gone: closing would wait for the group's
                // coordinator without end, and hide the failure behind a hung test.
                std::mem::forget(c);
            }
        })
    };
    let _stop_on_failure = StopOnDrop(stop.clone(), failed.clone());
    let wait_for = |n: usize| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "consumed {} of {n}",
                    seen.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(40).await;
    assert_eq!(assignments.load(Ordering::SeqCst), 1);
    broker.shutdown().await;
    let broker = common::start_with(cfg).await;
    produce(&bootstrap, "steady", 2, 20).await;
    wait_for(80).await;
    stop.store(true, Ordering::SeqCst);
    consumer.await.unwrap();

    assert_eq!(
        assignments.load(Ordering::SeqCst),
        1,
        "no rebalance across the restart"
    );
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<String> = (0..2)
        .flat_map(|p| (0..20).map(move |i| format!("p{p}-{i}")))
        .collect();
    want.extend(want.clone());
    want.sort();
    assert_eq!(got, want, "every record once per round, none twice");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_members_still_consume_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "churn", 6).await;
    produce(&bootstrap, "churn", 6, 100).await;
    let b = bootstrap.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut members: Vec<BaseConsumer> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut round = 0;
        // Members join and leave every few hundred milliseconds while consuming and
        // committing; at-least-once delivery means every record is seen by someone.
        while seen.len() < 600 && Instant::now() < deadline {
            round += 1;
            if round % 4 == 1 && members.len() < 4 {
                let m = member(&b, "g-churn", "range,roundrobin");
                m.subscribe(&["churn"]).unwrap();
                members.push(m);
            } else if round % 4 == 3 && members.len() > 1 {
                let leaving = members.remove(0);
                let _ = leaving.commit_consumer_state(CommitMode::Sync);
                leave(leaving);
            }
            // Each member takes at most 10 records a round, so the work is spread over many
            // rounds and many generations.
            let until = Instant::now() + Duration::from_millis(250);
            let mut taken = vec![0; members.len()];
            while Instant::now() < until {
                for (i, m) in members.iter().enumerate() {
                    if taken[i] >= 10 {
                        continue;
                    }
                    match m.poll(Duration::from_millis(10)) {
                        Some(Ok(msg)) => {
                            taken[i] += 1;
                            seen.insert(
                                String::from_utf8_lossy(msg.payload().unwrap()).into_owned(),
                            );
                            let mut tpl = rdkafka::TopicPartitionList::new();
                            tpl.add_partition_offset(
                                "churn",
                                msg.partition(),
                                rdkafka::Offset::Offset(msg.offset() + 1),
                            )
                            .unwrap();
                            // Commits may fail during a rebalance (REBALANCE_IN_PROGRESS,
                            // ILLEGAL_GENERATION); the records are then seen again.
                            let _ = m.commit(&tpl, CommitMode::Async);
                        }
                        Some(Err(e)) => panic!("consumer error: {e}"),
                        None => {}
                    }
                }
            }
        }
        eprintln!("churn: {round} rounds");
        members.into_iter().for_each(leave);
        seen
    })
    .await
    .unwrap();
    assert_eq!(seen.len(), 600, "every record consumed despite churn");
    broker.shutdown().await;
}

/// As in Kafka, deleting a topic deletes the groups' committed offsets for it: a topic made
/// again under the same name is read from where `auto.offset.reset` says, not from the old
/// topic's position (which would skip the new topic's first records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_takes_its_committed_offsets_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "remade", 1).await;
    produce(&bootstrap, "remade", 1, 60).await;
    let committed = |b: String| {
        tokio::task::spawn_blocking(move || {
            let c = member(&b, "g-remade", "range");
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition("remade", 0);
            c.committed_offsets(tpl, Duration::from_secs(10))
                .unwrap()
                .find_partition("remade", 0)
                .unwrap()
                .offset()
        })
    };
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let c = member(&b, "g-remade", "range");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("remade", 0, rdkafka::Offset::Offset(50))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(
        committed(bootstrap.clone()).await.unwrap(),
        rdkafka::Offset::Offset(50)
    );

    let admin: AdminClient<DefaultClientContext> =
        common::client_config(&bootstrap).create().unwrap();
    let res = admin
        .delete_topics(&["remade"], &AdminOptions::new())
        .await
        .unwrap();
    assert!(res[0].is_ok(), "{:?}", res[0]);
    create_topic(&bootstrap, "remade", 1).await;
    assert_eq!(
        committed(bootstrap.clone()).await.unwrap(),
        rdkafka::Offset::Invalid,
        "no committed offset for the new topic"
    );
    broker.shutdown().await;
}

// ---- The consumer group protocol (KIP-848, `group.protocol=consumer`) ------------------------

/// A broker that tells consumer-protocol members to heartbeat every 200 ms and drops them
/// after 3 s of silence, so partitions move within a test's patience.
async fn consumer_protocol_broker(dir: &std::path::Path) -> runnel::BrokerHandle {
    let mut cfg = common::test_config(dir);
    cfg.groups.consumer_heartbeat_interval = Duration::from_millis(200);
    cfg.groups.consumer_session_timeout = Duration::from_secs(3);
    common::start_with(cfg).await
}

/// A librdkafka consumer of the consumer group protocol: the broker assigns, so no assignor,
/// session timeout or heartbeat interval is set here (librdkafka refuses them).
fn protocol_member(bootstrap: &str, group: &str, assignor: Option<&str>) -> BaseConsumer {
    let mut config = common::client_config(bootstrap);
    config
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    if let Some(assignor) = assignor {
        config.set("group.remote.assignor", assignor);
    }
    config.create().unwrap()
}

/// Polls `c` until it has read `n` records, returning their payloads; panics after 30 s.
fn read_records(c: &BaseConsumer, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} records",
            got.len()
        );
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => got.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned()),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_group_shares_partitions_as_members_come_and_go() {
    use kafka_protocol::messages::{ConsumerGroupDescribeRequest, GroupId};
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let broker = consumer_protocol_broker(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "kip848", 6).await;
    produce(&bootstrap, "kip848", 6, 10).await;
    let b = bootstrap.clone();
    let members = tokio::task::spawn_blocking(move || {
        let first = protocol_member(&b, "g848", None);
        first.subscribe(&["kip848"]).unwrap();
        poll_until(&[&first], "one member", |s| s[0].len() == 6);
        let others: Vec<BaseConsumer> = (0..2).map(|_| protocol_member(&b, "g848", None)).collect();
        for m in &others {
            m.subscribe(&["kip848"]).unwrap();
        }
        let mut members = vec![first];
        members.extend(others);
        let refs: Vec<&BaseConsumer> = members.iter().collect();
        poll_until(&refs, "three members", |s| {
            covers_evenly(s, 6) && s.iter().all(|x| x.len() == 2)
        });
        leave(members.pop().unwrap());
        let refs: Vec<&BaseConsumer> = members.iter().collect();
        poll_until(&refs, "after one left", |s| {
            covers_evenly(s, 6) && s.iter().all(|x| x.len() == 3)
        });
        members
    })
    .await
    .unwrap();

    // ConsumerGroupDescribe, while the two are members, shows who holds what.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let described = raw
        .call(
            &ConsumerGroupDescribeRequest::default()
                .with_group_ids(vec![GroupId(StrBytes::from_static_str("g848"))]),
            1,
        )
        .await;
    let group = &described.groups[0];
    assert_eq!(group.error_code, 0);
    assert_eq!(group.assignor_name.as_str(), "uniform");
    assert_eq!(group.group_state.as_str(), "Stable");
    assert!(group.group_epoch >= 4, "{}", group.group_epoch);
    assert_eq!(group.members.len(), 2);
    let mut held: Vec<i32> = Vec::new();
    for m in &group.members {
        assert_eq!(m.member_epoch, group.assignment_epoch);
        let parts = &m.assignment.topic_partitions;
        assert_eq!(parts[0].topic_name.as_str(), "kip848");
        assert_eq!(parts[0].partitions.len(), 3);
        assert_eq!(m.assignment, m.target_assignment);
        held.extend(&parts[0].partitions);
    }
    held.sort();
    assert_eq!(held, [0, 1, 2, 3, 4, 5]);
    tokio::task::spawn_blocking(move || members.into_iter().for_each(leave))
        .await
        .unwrap();
    broker.shutdown().await;
}

/// Kafka's online migration, with librdkafka on both sides: two classic members (`assignor`)
/// share six partitions; a consumer of `group.protocol=consumer` joins and gets its share while
/// the classic ones stay members (the group hosts them and tells them to join again); once
/// settled no partition is held twice; a hosted member commits at its generation; when the
/// newcomer leaves, the two take everything back.
async fn classic_members_move_to_the_consumer_protocol_online(assignor: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let broker = consumer_protocol_broker(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "mig", 6).await;
    produce(&bootstrap, "mig", 6, 10).await;
    let groups = broker.broker.groups.clone();
    tokio::task::spawn_blocking(move || {
        let classic: Vec<BaseConsumer> = (0..2)
            .map(|_| member(&bootstrap, "gmig", assignor))
            .collect();
        for m in &classic {
            m.subscribe(&["mig"]).unwrap();
        }
        poll_until(&[&classic[0], &classic[1]], "two classic members", |s| {
            covers_evenly(s, 6)
        });
        let newcomer = protocol_member(&bootstrap, "gmig", None);
        newcomer.subscribe(&["mig"]).unwrap();
        poll_until(
            &[&classic[0], &classic[1], &newcomer],
            "a consumer-protocol member joined",
            |s| covers_evenly(s, 6) && s.iter().all(|x| x.len() == 2),
        );
        let mut tpl = rdkafka::TopicPartitionList::new();
        let p = *assigned(&classic[0]).first().unwrap();
        tpl.add_partition_offset("mig", p, rdkafka::Offset::Offset(3))
            .unwrap();
        classic[0]
            .commit(&tpl, CommitMode::Sync)
            .expect("a hosted classic member commits");
        leave(newcomer);
        // Its last consumer-protocol member gone, the group is a classic one again (Kafka's
        // online downgrade), assigned by its members' own assignor.
        poll_until(
            &[&classic[0], &classic[1]],
            "after the newcomer left",
            |s| {
                covers_evenly(s, 6)
                    && s.iter().all(|x| x.len() == 3)
                    && !groups.uses_consumer_protocol("gmig")
                    && groups.describe_group("gmig").is_ok_and(|d| {
                        d.state == runnel::groups::GroupState::Stable && d.protocol == assignor
                    })
            },
        );
        let committed = classic[1]
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            committed.find_partition("mig", p).unwrap().offset(),
            rdkafka::Offset::Offset(3)
        );
        classic.into_iter().for_each(leave);
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_classic_members_move_to_the_consumer_protocol_online() {
    classic_members_move_to_the_consumer_protocol_online("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_classic_members_move_to_the_consumer_protocol_online() {
    classic_members_move_to_the_consumer_protocol_online("cooperative-sticky").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_commits_resume_in_a_new_member_and_range_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let broker = consumer_protocol_broker(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "kip848r", 4).await;
    produce(&bootstrap, "kip848r", 4, 5).await;
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let c = protocol_member(&b, "g848r", Some("range"));
        c.subscribe(&["kip848r"]).unwrap();
        let got = read_records(&c, 20);
        let distinct: BTreeSet<&String> = got.iter().collect();
        assert_eq!(distinct.len(), 20, "{got:?}");
        c.commit_consumer_state(CommitMode::Sync).unwrap();
        let d = protocol_member(&b, "g848r", Some("range"));
        d.subscribe(&["kip848r"]).unwrap();
        // Range over two members: contiguous halves.
        poll_until(&[&c, &d], "two members under range", |s| {
            let mut s = s.to_vec();
            s.sort();
            s == [BTreeSet::from([0, 1]), BTreeSet::from([2, 3])]
        });
        leave(c);
        leave(d);
    })
    .await
    .unwrap();
    produce(&bootstrap, "kip848r", 4, 1).await;
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let e = protocol_member(&b, "g848r", None);
        e.subscribe(&["kip848r"]).unwrap();
        // Only the four records produced after the commit.
        let mut got = read_records(&e, 4);
        got.sort();
        assert_eq!(got, ["p0-0", "p1-0", "p2-0", "p3-0"]);
        assert!(e.poll(Duration::from_millis(500)).is_none());
    })
    .await
    .unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_refusals_and_an_expired_member_over_the_wire() {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
    use kafka_protocol::messages::{
        ConsumerGroupHeartbeatRequest, DescribeGroupsRequest, GroupId, JoinGroupRequest,
        LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let broker = consumer_protocol_broker(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "kip848w", 2).await;
    let topic_id = broker.broker.catalog.get("kip848w").unwrap().id;
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let heartbeat = |member: &str, epoch: i32| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("gw")))
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(if epoch == 0 { 5000 } else { -1 })
    };
    let join = |member: &str| {
        heartbeat(member, 0)
            .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str(
                "kip848w",
            ))]))
            .with_topic_partitions(Some(Vec::new()))
    };

    // Refused: no member id in v1, a bad regex, an unknown assignor, a wrong epoch.
    let r = raw.call(&join(""), 1).await;
    assert_eq!(r.error_code, 42, "{:?}", r.error_message);
    let r = raw
        .call(
            &join("m1").with_subscribed_topic_regex(Some(StrBytes::from_static_str("(["))),
            1,
        )
        .await;
    assert_eq!(r.error_code, 128, "INVALID_REGULAR_EXPRESSION");
    assert!(
        r.error_message
            .unwrap()
            .contains("invalid SubscribedTopicRegex")
    );
    let r = raw
        .call(
            &join("m1").with_server_assignor(Some(StrBytes::from_static_str("sticky"))),
            1,
        )
        .await;
    assert_eq!(r.error_code, 112);

    // m1's session (3 s) runs from its last heartbeat, answered after this instant.
    let m1_seen = Instant::now();
    let first = raw.call(&join("m1"), 1).await;
    assert_eq!(first.error_code, 0, "{:?}", first.error_message);
    assert_eq!(first.heartbeat_interval_ms, 200);
    let given = first.assignment.unwrap().topic_partitions;
    assert_eq!(given.len(), 1);
    assert_eq!(given[0].topic_id, topic_id);
    assert_eq!(given[0].partitions, [0, 1]);
    let r = raw.call(&heartbeat("m1", first.member_epoch + 5), 1).await;
    assert_eq!(r.error_code, 110);

    // Offsets: a member commits with v9 (its epoch), not older versions; OffsetFetch v9 checks
    // the member and epoch it names.
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("gw")))
        .with_member_id(StrBytes::from_static_str("m1"))
        .with_generation_id_or_member_epoch(first.member_epoch)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("kip848w")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(7),
                ]),
        ]);
    let code =
        |r: &kafka_protocol::messages::OffsetCommitResponse| r.topics[0].partitions[0].error_code;
    assert_eq!(
        code(&raw.call(&commit, 8).await),
        35,
        "UNSUPPORTED_VERSION below v9"
    );
    assert_eq!(code(&raw.call(&commit, 9).await), 0);
    // To a group that does not exist, with a generation: GROUP_ID_NOT_FOUND from v9 on,
    // ILLEGAL_GENERATION before, as Kafka 4 answers.
    let nowhere = commit
        .clone()
        .with_group_id(GroupId(StrBytes::from_static_str("nowhere")));
    assert_eq!(code(&raw.call(&nowhere, 9).await), 69);
    assert_eq!(code(&raw.call(&nowhere, 8).await), 22);
    let stale = commit
        .clone()
        .with_generation_id_or_member_epoch(first.member_epoch - 1);
    assert_eq!(code(&raw.call(&stale, 9).await), 113, "STALE_MEMBER_EPOCH");
    let fetch = |member: Option<&'static str>, epoch: i32| {
        OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(StrBytes::from_static_str("gw")))
                .with_member_id(member.map(StrBytes::from_static_str))
                .with_member_epoch(epoch)
                .with_topics(None),
        ])
    };
    let got = raw.call(&fetch(Some("m1"), first.member_epoch), 9).await;
    assert_eq!(got.groups[0].error_code, 0);
    assert_eq!(got.groups[0].topics[0].partitions[0].committed_offset, 7);
    let got = raw
        .call(&fetch(Some("m1"), first.member_epoch + 1), 9)
        .await;
    assert_eq!(got.groups[0].error_code, 113);
    let got = raw.call(&fetch(Some("nobody"), 3), 9).await;
    assert_eq!(got.groups[0].error_code, 25);
    let got = raw.call(&fetch(None, -1), 9).await;
    assert_eq!(
        got.groups[0].error_code, 0,
        "an admin client names no member"
    );

    // A classic member joining the group is hosted by it, as Kafka's groups host them while
    // consumers move between the protocols: told its member id first (v4+), then answered at
    // once, the group assigning (no leader, no member list); it leaves with LeaveGroup.
    let classic = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("gw")))
        .with_session_timeout_ms(6000)
        .with_rebalance_timeout_ms(6000)
        .with_member_id(StrBytes::from_static_str(""))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
        ]);
    let first_join = raw.call(&classic, 5).await;
    assert_eq!(first_join.error_code, 79, "MEMBER_ID_REQUIRED");
    let hosted = raw
        .call(
            &classic.clone().with_member_id(first_join.member_id.clone()),
            5,
        )
        .await;
    assert_eq!(hosted.error_code, 0);
    assert_eq!(hosted.leader.as_str(), "");
    assert!(hosted.members.is_empty());
    assert!(hosted.generation_id > 0);
    // It commits with the classic versions (kafka-python's newest is v8), at its generation:
    // only members of the consumer protocol itself need v9, as in Kafka.
    let classic_commit = commit
        .clone()
        .with_member_id(first_join.member_id.clone())
        .with_generation_id_or_member_epoch(hosted.generation_id);
    assert_eq!(code(&raw.call(&classic_commit, 8).await), 0);
    let stale = classic_commit
        .clone()
        .with_generation_id_or_member_epoch(hosted.generation_id - 1);
    assert_eq!(code(&raw.call(&stale, 8).await), 22, "ILLEGAL_GENERATION");
    let unknown = classic_commit
        .clone()
        .with_member_id(StrBytes::from_static_str("nobody"));
    assert_eq!(code(&raw.call(&unknown, 8).await), 25, "UNKNOWN_MEMBER_ID");
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("gw")))
        .with_members(vec![
            MemberIdentity::default().with_member_id(first_join.member_id.clone()),
        ]);
    let left = raw.call(&leave, 3).await;
    assert_eq!((left.error_code, left.members[0].error_code), (0, 0));
    // A classic group of another protocol type (Kafka Connect's, say) refuses consumer-protocol
    // members, and says why; one of the consumer protocol type is taken over (its members
    // hosted), as in Kafka.
    let connect = classic
        .clone()
        .with_group_id(GroupId(StrBytes::from_static_str("gw-connect")))
        .with_protocol_type(StrBytes::from_static_str("connect"));
    let first_join = raw.call(&connect, 5).await;
    let joined = raw
        .call(&connect.clone().with_member_id(first_join.member_id), 5)
        .await;
    assert_eq!(joined.error_code, 0);
    let r = raw
        .call(
            &join("m9").with_group_id(GroupId(StrBytes::from_static_str("gw-connect"))),
            1,
        )
        .await;
    assert_eq!(r.error_code, 69);
    assert!(
        r.error_message
            .unwrap()
            .contains("protocol type is \"connect\""),
        "the reason is given"
    );
    let classic = classic.with_group_id(GroupId(StrBytes::from_static_str("gw-classic")));
    let first_join = raw.call(&classic, 5).await;
    let joined = raw
        .call(&classic.clone().with_member_id(first_join.member_id), 5)
        .await;
    assert_eq!(joined.error_code, 0);
    let r = raw
        .call(
            &join("m9").with_group_id(GroupId(StrBytes::from_static_str("gw-classic"))),
            1,
        )
        .await;
    assert_eq!(r.error_code, 0, "the classic group taken over");

    // ListGroups v5 tells the type; DescribeGroups shows the group as older tools read it.
    let listed = raw
        .call(
            &ListGroupsRequest::default()
                .with_types_filter(vec![StrBytes::from_static_str("consumer")]),
            5,
        )
        .await;
    let listed: Vec<(&str, &str)> = listed
        .groups
        .iter()
        .map(|g| (g.group_id.as_str(), g.group_type.as_str()))
        .collect();
    assert_eq!(listed, [("gw", "consumer"), ("gw-classic", "consumer")]);
    let listed = raw.call(&ListGroupsRequest::default(), 5).await;
    let mut listed: Vec<(&str, &str)> = listed
        .groups
        .iter()
        .map(|g| (g.group_id.as_str(), g.group_type.as_str()))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("gw", "consumer"),
            ("gw-classic", "consumer"),
            ("gw-connect", "classic")
        ]
    );
    let described = raw
        .call(
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str("gw"))]),
            5,
        )
        .await;
    let g = &described.groups[0];
    assert_eq!(g.protocol_type.as_str(), "consumer");
    assert_eq!(g.protocol_data.as_str(), "uniform");
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].member_id.as_str(), "m1");

    // m2 joins; m1 goes silent. After m1's session (3 s) m2 holds both partitions, having
    // been given nothing m1 still held meanwhile.
    let second = raw.call(&join("m2"), 1).await;
    assert_eq!(second.error_code, 0);
    let mut epoch = second.member_epoch;
    let mut owned: Vec<i32> = Vec::new();
    let started = Instant::now();
    while owned.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "m2 holds {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = raw
            .call(
                &heartbeat("m2", epoch).with_topic_partitions(Some(vec![
                    TopicPartitions::default()
                        .with_topic_id(topic_id)
                        .with_partitions(owned.clone()),
                ])),
                1,
            )
            .await;
        assert_eq!(r.error_code, 0, "{:?}", r.error_message);
        epoch = r.member_epoch;
        if let Some(a) = r.assignment {
            owned = a
                .topic_partitions
                .iter()
                .flat_map(|t| t.partitions.clone())
                .collect();
            if m1_seen.elapsed() < Duration::from_millis(2900) {
                assert!(owned.is_empty(), "given {owned:?} while m1 held them");
            }
        }
    }
    assert!(m1_seen.elapsed() >= Duration::from_millis(2900));
    let r = raw.call(&heartbeat("m1", first.member_epoch), 1).await;
    assert_eq!(r.error_code, 25, "m1 was removed");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_members_are_known_after_a_broker_restart() {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, GroupId, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.kafka.address = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "kip848s", 3).await;
    let topic_id = broker.broker.catalog.get("kip848s").unwrap().id;
    let heartbeat = |member: &str, epoch: i32, owned: Vec<i32>| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("gs")))
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(5000)
            .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str(
                "kip848s",
            ))]))
            .with_topic_partitions(Some(vec![
                TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_partitions(owned),
            ]))
    };
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let a = raw.call(&heartbeat("a", 0, vec![]), 1).await;
    let b = raw.call(&heartbeat("b", 0, vec![]), 1).await;
    let a_owned = a.assignment.unwrap().topic_partitions[0].partitions.clone();
    // a gives up what goes to b; then b takes it.
    let a2 = raw.call(&heartbeat("a", a.member_epoch, a_owned), 1).await;
    let a_kept = a2.assignment.unwrap().topic_partitions[0]
        .partitions
        .clone();
    let a3 = raw
        .call(&heartbeat("a", a2.member_epoch, a_kept.clone()), 1)
        .await;
    let b2 = raw.call(&heartbeat("b", b.member_epoch, vec![]), 1).await;
    let b_owned = b2.assignment.unwrap().topic_partitions[0]
        .partitions
        .clone();
    assert_eq!(a_kept.len() + b_owned.len(), 3);
    // The group is saved at the coordinator's next tick (100 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.shutdown().await;

    let broker = common::start_with(cfg.clone()).await;
    let mut raw = common::RawClient::connect(&bootstrap).await;
    for (member, epoch, owned) in [
        ("a", a3.member_epoch, a_kept),
        ("b", b2.member_epoch, b_owned),
    ] {
        let r = raw.call(&heartbeat(member, epoch, owned.clone()), 1).await;
        assert_eq!(r.error_code, 0, "{member}: {:?}", r.error_message);
        assert_eq!(r.member_epoch, epoch, "{member} goes on at its epoch");
        // Its whole assignment is sent again, unchanged.
        let again = r.assignment.unwrap().topic_partitions[0].partitions.clone();
        assert_eq!(again, owned);
    }
    for member in ["a", "b"] {
        let left = raw.call(&heartbeat(member, -1, Vec::new()), 1).await;
        assert_eq!(left.error_code, 0);
    }
    broker.shutdown().await;

    // Empty, it is still a group of the consumer protocol after another restart.
    let broker = common::start_with(cfg).await;
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let listed = raw
        .call(&kafka_protocol::messages::ListGroupsRequest::default(), 5)
        .await;
    let listed: Vec<(&str, &str, &str)> = listed
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.as_str(),
                g.group_type.as_str(),
                g.group_state.as_str(),
            )
        })
        .collect();
    assert_eq!(listed, [("gs", "consumer", "Empty")]);
    broker.shutdown().await;
}

/// A group's own configs (Kafka's group configs): described over the broker's values whether
/// or not the group exists, set and removed with IncrementalAlterConfigs and AlterConfigs within
/// the bounds, taken by the group's members at their heartbeats (interval told, session kept
/// past the broker's), listed by ListConfigResources, kept across a restart and when the group
/// is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_own_configs_set_its_members_heartbeat_and_session_timeout() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::incremental_alter_configs_request as inc;
    use kafka_protocol::messages::{
        AlterConfigsRequest, ConsumerGroupHeartbeatRequest, DeleteGroupsRequest,
        DescribeConfigsRequest, DescribeConfigsResponse, GroupId, IncrementalAlterConfigsRequest,
        ListConfigResourcesRequest, TopicName, alter_configs_request,
    };
    use kafka_protocol::protocol::StrBytes;
    const GROUP: i8 = 32;
    const INVALID_CONFIG: i16 = 40;
    let s = |v: &str| StrBytes::from_string(v.to_string());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.kafka.address = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    cfg.groups.consumer_heartbeat_interval = Duration::from_millis(200);
    cfg.groups.consumer_session_timeout = Duration::from_secs(3);
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "gconf", 1).await;
    let mut raw = common::RawClient::connect(&bootstrap).await;

    async fn describe(raw: &mut common::RawClient, group: &str) -> DescribeConfigsResponse {
        raw.call(
            &DescribeConfigsRequest::default()
                .with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(32)
                        .with_resource_name(StrBytes::from_string(group.to_string())),
                ])
                .with_include_synonyms(true),
            4,
        )
        .await
    }
    // (name, value, source) of each entry, and the synonyms' sources of each.
    let entries = |r: &DescribeConfigsResponse| -> Vec<(String, String, i8, Vec<i8>)> {
        assert_eq!(
            r.results[0].error_code, 0,
            "{:?}",
            r.results[0].error_message
        );
        r.results[0]
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.value.as_deref().unwrap_or_default().to_string(),
                    c.config_source,
                    c.synonyms.iter().map(|s| s.source).collect(),
                )
            })
            .collect()
    };
    let entry = |name: &str, value: &str, source: i8, synonyms: &[i8]| {
        (
            name.to_string(),
            value.to_string(),
            source,
            synonyms.to_vec(),
        )
    };
    // No group yet: the broker's values (STATIC_BROKER_CONFIG over Kafka's default).
    let r = describe(&mut raw, "gc").await;
    assert_eq!(
        entries(&r),
        [
            entry("consumer.session.timeout.ms", "3000", 4, &[4, 5]),
            entry("consumer.heartbeat.interval.ms", "200", 4, &[4, 5]),
        ]
    );
    let incremental = |configs: &[(&str, Option<&str>)], validate_only: bool| {
        IncrementalAlterConfigsRequest::default()
            .with_resources(vec![
                inc::AlterConfigsResource::default()
                    .with_resource_type(GROUP)
                    .with_resource_name(s("gc"))
                    .with_configs(
                        configs
                            .iter()
                            .map(|(k, v)| {
                                inc::AlterableConfig::default()
                                    .with_name(s(k))
                                    .with_config_operation(if v.is_some() { 0 } else { 1 })
                                    .with_value(v.map(s))
                            })
                            .collect(),
                    ),
            ])
            .with_validate_only(validate_only)
    };
    // Refused, with the reason: below the least a group may set (the broker's own 3 s: Kafka's
    // 45 s least is widened to it), above the most (Kafka's 15 s), an unknown key.
    for (configs, why) in [
        (
            vec![("consumer.session.timeout.ms", Some("2000"))],
            "(2000) is less than group.consumer.min.session.timeout.ms (3000)",
        ),
        (
            vec![("consumer.heartbeat.interval.ms", Some("16000"))],
            "(16000) is more than group.consumer.max.heartbeat.interval.ms (15000)",
        ),
        (
            vec![("session.timeout.ms", Some("5000"))],
            "unknown group config session.timeout.ms",
        ),
    ] {
        let r = raw.call(&incremental(&configs, false), 1).await;
        assert_eq!(r.responses[0].error_code, INVALID_CONFIG, "{configs:?}");
        let said = r.responses[0].error_message.as_deref().unwrap().to_string();
        assert!(said.contains(why), "{said}");
    }
    // APPEND and SUBTRACT are for lists, which no group config is.
    let mut append = incremental(&[("consumer.session.timeout.ms", Some("50000"))], false);
    append.resources[0].configs[0].config_operation = 2;
    let r = raw.call(&append, 1).await;
    assert_eq!(r.responses[0].error_code, INVALID_CONFIG);
    let said = r.responses[0].error_message.as_deref().unwrap_or_default();
    assert!(said.contains("is not a list"), "{said}");
    // Checked only, then set.
    let wanted = [
        ("consumer.session.timeout.ms", Some("10000")),
        ("consumer.heartbeat.interval.ms", Some("700")),
    ];
    let r = raw.call(&incremental(&wanted, true), 1).await;
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(entries(&describe(&mut raw, "gc").await)[0].2, 4);
    let r = raw.call(&incremental(&wanted, false), 1).await;
    assert_eq!(
        r.responses[0].error_code, 0,
        "{:?}",
        r.responses[0].error_message
    );
    assert_eq!(
        entries(&describe(&mut raw, "gc").await),
        [
            entry("consumer.session.timeout.ms", "10000", 8, &[8, 4, 5]),
            entry("consumer.heartbeat.interval.ms", "700", 8, &[8, 4, 5]),
        ]
    );
    // Another group keeps the broker's.
    assert_eq!(entries(&describe(&mut raw, "other").await)[1].1, "200");

    // A member is told the group's interval, and outlives the broker's 3 s session.
    let topic_id = broker.broker.catalog.get("gconf").unwrap().id;
    let heartbeat = |epoch: i32| {
        use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
        let mut req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("gc")))
            .with_member_id(s("m"))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(5000);
        if epoch == 0 {
            req = req
                .with_subscribed_topic_names(Some(vec![TopicName(s("gconf"))]))
                .with_topic_partitions(Some(Vec::new()));
        } else if epoch > 0 {
            req = req.with_topic_partitions(Some(vec![
                TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_partitions(vec![0]),
            ]));
        }
        req
    };
    let joined = raw.call(&heartbeat(0), 1).await;
    assert_eq!(joined.error_code, 0, "{:?}", joined.error_message);
    assert_eq!(joined.heartbeat_interval_ms, 700);
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let kept = raw.call(&heartbeat(joined.member_epoch), 1).await;
    assert_eq!(
        kept.error_code, 0,
        "still a member after 4 s: {:?}",
        kept.error_message
    );
    // (When the group's session ends is the coordinator's tests' to show, on a manual clock.)
    let left = raw.call(&heartbeat(-1), 1).await;
    assert_eq!(left.error_code, 0);

    // AlterConfigs replaces the whole set: the session timeout goes back to the broker's.
    let r = raw
        .call(
            &AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(GROUP)
                    .with_resource_name(s("gc"))
                    .with_configs(vec![
                        alter_configs_request::AlterableConfig::default()
                            .with_name(s("consumer.heartbeat.interval.ms"))
                            .with_value(Some(s("500"))),
                    ]),
            ]),
            2,
        )
        .await;
    assert_eq!(
        r.responses[0].error_code, 0,
        "{:?}",
        r.responses[0].error_message
    );
    let expected = [
        entry("consumer.session.timeout.ms", "3000", 4, &[4, 5]),
        entry("consumer.heartbeat.interval.ms", "500", 8, &[8, 4, 5]),
    ];
    assert_eq!(entries(&describe(&mut raw, "gc").await), expected);

    // Deleting the (now empty) group leaves its configs; a restart keeps them.
    let r = raw
        .call(
            &DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("gc"))]),
            2,
        )
        .await;
    assert_eq!(r.results[0].error_code, 0);
    broker.shutdown().await;
    let broker = common::start_with(cfg).await;
    let mut raw = common::RawClient::connect(&bootstrap).await;
    assert_eq!(entries(&describe(&mut raw, "gc").await), expected);
    // ListConfigResources names it though no such group exists now (KIP-1142), with the
    // topics and the broker when every type is asked for; version 0 lists client-metrics
    // subscriptions only, of which there are none.
    let list = |types: Vec<i8>| ListConfigResourcesRequest::default().with_resource_types(types);
    let names = |r: kafka_protocol::messages::ListConfigResourcesResponse| -> Vec<(i8, String)> {
        assert_eq!(r.error_code, 0);
        r.config_resources
            .iter()
            .map(|c| (c.resource_type, c.resource_name.to_string()))
            .collect()
    };
    assert_eq!(
        names(raw.call(&list(vec![GROUP]), 1).await),
        [(GROUP, "gc".to_string())]
    );
    let every = names(raw.call(&list(Vec::new()), 1).await);
    let node = broker.broker.node_id.to_string();
    for wanted in [
        (2, "gconf".to_string()),
        (4, node.clone()),
        (8, node),
        (GROUP, "gc".into()),
    ] {
        assert!(every.contains(&wanted), "{wanted:?} in {every:?}");
    }
    assert!(names(raw.call(&list(Vec::new()), 0).await).is_empty());
    assert_eq!(
        raw.call(&list(vec![1]), 1).await.error_code,
        35,
        "UNSUPPORTED_VERSION"
    );
    // Removed, the broker's again.
    let r = raw
        .call(
            &incremental(&[("consumer.heartbeat.interval.ms", None)], false),
            1,
        )
        .await;
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(entries(&describe(&mut raw, "gc").await)[1].1, "200");
    broker.shutdown().await;
}

/// A group id longer than a 2-byte length can say (which the flexible versions carry) makes no
/// group: INVALID_GROUP_ID from JoinGroup, ConsumerGroupHeartbeat and OffsetCommit, so that
/// ListGroups v0 (librdkafka's, and `runnel groups`) can still list every group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_id_too_long_for_the_older_versions_makes_no_group() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{
        ConsumerGroupHeartbeatRequest, GroupId, JoinGroupRequest, ListGroupsRequest,
        OffsetCommitRequest, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let broker = consumer_protocol_broker(dir.path()).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "long", 1).await;
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let long = GroupId(StrBytes::from_string("g".repeat(40_000)));
    let longest = GroupId(StrBytes::from_string("g".repeat(32_767)));

    let heartbeat = |id: &GroupId| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(id.clone())
            .with_member_id(StrBytes::from_static_str("m1"))
            .with_rebalance_timeout_ms(5000)
            .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str("long"))]))
            .with_topic_partitions(Some(Vec::new()))
    };
    assert_eq!(raw.call(&heartbeat(&long), 1).await.error_code, 24);
    assert_eq!(raw.call(&heartbeat(&longest), 1).await.error_code, 0);
    let commit = OffsetCommitRequest::default()
        .with_group_id(long.clone())
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("long")))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1),
                ]),
        ]);
    let r = raw.call(&commit, 8).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 24);
    // The empty id still takes a simple consumer's commits, as Kafka keeps it for old clients.
    let empty = commit
        .clone()
        .with_group_id(GroupId(StrBytes::from_static_str("")));
    let r = raw.call(&empty, 8).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let join = JoinGroupRequest::default()
        .with_group_id(long.clone())
        .with_session_timeout_ms(6000)
        .with_rebalance_timeout_ms(6000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
        ]);
    assert_eq!(raw.call(&join, 6).await.error_code, 24);

    let listed = raw.call(&ListGroupsRequest::default(), 0).await;
    assert_eq!(listed.error_code, 0);
    let mut ids: Vec<usize> = listed.groups.iter().map(|g| g.group_id.len()).collect();
    ids.sort();
    assert_eq!(ids, [0, 32_767], "the empty id and the longest that fits");
    broker.shutdown().await;
}
