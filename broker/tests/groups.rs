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
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.kafka.address = format!("127.0.0.1:{port}").parse().unwrap();
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
            let c: BaseConsumer<CountingAssignments> = common::client_config(&b)
                .set("group.id", "g-steady")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "300")
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
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
