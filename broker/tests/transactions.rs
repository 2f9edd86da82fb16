//! Kafka transactions (`transactional.id`) end to end: real librdkafka producers and consumers
//! against a real broker on real sockets, and raw protocol requests for the refusals a client
//! library never provokes.
//!
//! What is shown: a read_committed consumer reads exactly the committed records and nothing at
//! or past an open transaction (the last stable offset, LSO), a transaction's end takes one
//! offset in every partition it wrote (the marker), consumer offsets are stored with a commit and
//! dropped with an abort, a new producer of a transactional id fences the old one and aborts what
//! it left open, the coordinator aborts a transaction open past its timeout, committed and open
//! transactions survive a restart, and the coordinator's refusals carry Kafka's error codes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, BrokerId, CreateTopicsRequest,
    EndTxnRequest, FetchRequest, InitProducerIdRequest, ListOffsetsRequest, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use common::RawClient;

/// The bound on every blocking client call and every wait for records.
const WAIT: Duration = Duration::from_secs(10);

/// ListOffsets isolation levels.
const READ_UNCOMMITTED: i8 = 0;
const READ_COMMITTED: i8 = 1;

/// A record as a consumer delivered it: (partition, offset, payload).
type Read = (i32, i64, String);

/// A broker on `dir` whose auto-created topics have `partitions` partitions.
async fn start(dir: &Path, partitions: i32) -> runnel::BrokerHandle {
    let mut cfg = common::test_config(dir);
    cfg.broker.default_partitions = partitions;
    common::start_with(cfg).await
}

/// A transactional producer of `id` whose transactions time out after `timeout_ms` (librdkafka
/// wants its message and socket timeouts no longer than that).
fn txn_producer(bootstrap: &str, id: &str, timeout_ms: u32) -> FutureProducer {
    common::client_config(bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("message.timeout.ms", timeout_ms.min(20_000).to_string())
        .set("socket.timeout.ms", timeout_ms.min(10_000).to_string())
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn plain_producer(bootstrap: &str) -> FutureProducer {
    common::client_config(bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Sends `value` to `topic`-`partition` and waits for its acknowledgement: its offset.
async fn send(p: &FutureProducer, topic: &str, partition: i32, value: &str) -> i64 {
    p.send(
        FutureRecord::<(), str>::to(topic)
            .payload(value)
            .partition(partition),
        WAIT,
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap_or_else(|e| panic!("{value} to {topic}-{partition} acknowledged: {e}"))
    .offset
}

/// Runs a blocking librdkafka call off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn init(p: &FutureProducer) {
    let p = p.clone();
    blocking(move || p.init_transactions(WAIT))
        .await
        .expect("init_transactions");
}

fn begin(p: &FutureProducer) {
    p.begin_transaction().expect("begin_transaction");
}

async fn commit(p: &FutureProducer) -> KafkaResult<()> {
    let p = p.clone();
    blocking(move || p.commit_transaction(WAIT)).await
}

/// Aborts `p`'s transaction once everything sent is acknowledged (librdkafka purges what is
/// still queued at an abort, which would leave nothing aborted to look at).
async fn abort(p: &FutureProducer) -> KafkaResult<()> {
    let p = p.clone();
    blocking(move || {
        p.flush(WAIT)?;
        p.abort_transaction(WAIT)
    })
    .await
}

/// Asserts `e` is the fatal error of a producer whose transactional id another producer took.
fn assert_fenced(e: &KafkaError) {
    let KafkaError::Transaction(err) = e else {
        panic!("a transaction error, not {e}");
    };
    assert!(err.is_fatal(), "a fenced producer's error is fatal: {e}");
    assert!(
        matches!(
            err.code(),
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        ),
        "fenced: {e}"
    );
}

/// Everything a new consumer with `isolation` (read_committed or read_uncommitted) reads from
/// partitions `0..partitions` of `topic` from the beginning until it is at the end of each (for
/// read_committed, the last stable offset).
async fn read(bootstrap: &str, topic: &str, partitions: i32, isolation: &str) -> Vec<Read> {
    let consumer: BaseConsumer = common::client_config(bootstrap)
        .set("group.id", "txn-readers")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let what = format!("{isolation} read of {topic}");
    blocking(move || {
        let mut out = Vec::new();
        let mut at_end = HashSet::new();
        let deadline = Instant::now() + WAIT;
        while at_end.len() < partitions as usize {
            assert!(
                Instant::now() < deadline,
                "{what}: not at the end of every partition in {WAIT:?}; read {out:?}"
            );
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    at_end.remove(&m.partition());
                    let value = String::from_utf8(m.payload().unwrap_or_default().to_vec());
                    out.push((m.partition(), m.offset(), value.unwrap()));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => panic!("{what}: {e}"),
            }
        }
        out
    })
    .await
}

/// `reads` by partition, each in the order delivered.
fn by_partition(reads: &[Read]) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut out: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (p, offset, value) in reads {
        out.entry(*p).or_default().push((*offset, value.clone()));
    }
    out
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// ListOffsets "latest" of `topic`-`partition` with `isolation`: the log end, or for
/// read_committed the last stable offset.
async fn latest(raw: &mut RawClient, topic: &str, partition: i32, isolation: i8) -> i64 {
    let r = raw
        .call(
            &ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(isolation)
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![
                            ListOffsetsPartition::default()
                                .with_partition_index(partition)
                                .with_timestamp(-1),
                        ]),
                ]),
            5,
        )
        .await;
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "ListOffsets {topic}-{partition}");
    p.offset
}

/// Records of transactions, as a test wrote them: (topic, partition, value).
type Records = &'static [(&'static str, i32, &'static str)];

/// A record sent in a transaction: where it is, and whether its transaction committed.
struct Sent {
    topic: &'static str,
    read: Read,
    committed: bool,
}

/// Transactions on three partitions of two topics, in order: T1 commits, T2 aborts, T3 commits.
/// A read_committed consumer reads T1's and T3's records, in order, and none of T2's; a
/// read_uncommitted one reads all of them; and every transaction's end takes one offset in each
/// partition it wrote, which no consumer is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_reads_exactly_the_committed_records_of_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 3).await;
    let bootstrap = broker.bootstrap();
    let producer = txn_producer(&bootstrap, "ledger-tx", 60_000);
    init(&producer).await;

    // (commits, records as (topic, partition, value)).
    let txns: [(bool, Records); 3] = [
        (
            true,
            &[
                ("ledger", 0, "t1-l0-a"),
                ("ledger", 0, "t1-l0-b"),
                ("ledger", 1, "t1-l1-a"),
                ("audit", 2, "t1-a2-a"),
            ],
        ),
        (
            false,
            &[
                ("ledger", 0, "t2-l0-a"),
                ("ledger", 0, "t2-l0-b"),
                ("ledger", 2, "t2-l2-a"),
                ("audit", 2, "t2-a2-a"),
            ],
        ),
        (
            true,
            &[
                ("ledger", 0, "t3-l0-a"),
                ("ledger", 1, "t3-l1-a"),
                ("audit", 2, "t3-a2-a"),
            ],
        ),
    ];
    // The offsets Kafka gives: each record the next one of its partition, and each
    // transaction's end one more in every partition it wrote (its marker).
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    let mut sent = Vec::new();
    for (committed, records) in txns {
        begin(&producer);
        let mut written = HashSet::new();
        for &(topic, partition, value) in records {
            let offset = send(&producer, topic, partition, value).await;
            let expected = next.entry((topic, partition)).or_insert(0);
            assert_eq!(offset, *expected, "offset of {value}");
            *expected += 1;
            written.insert((topic, partition));
            sent.push(Sent {
                topic,
                read: (partition, offset, value.to_string()),
                committed,
            });
        }
        if committed {
            commit(&producer).await.expect("commit_transaction");
        } else {
            abort(&producer).await.expect("abort_transaction");
        }
        for tp in written {
            *next.get_mut(&tp).unwrap() += 1;
        }
    }

    for topic in ["ledger", "audit"] {
        let expected = |only_committed: bool| {
            let reads: Vec<Read> = sent
                .iter()
                .filter(|s| s.topic == topic && (s.committed || !only_committed))
                .map(|s| s.read.clone())
                .collect();
            by_partition(&reads)
        };
        let committed = read(&bootstrap, topic, 3, "read_committed").await;
        assert_eq!(
            by_partition(&committed),
            expected(true),
            "{topic}: read_committed"
        );
        let uncommitted = read(&bootstrap, topic, 3, "read_uncommitted").await;
        assert_eq!(
            by_partition(&uncommitted),
            expected(false),
            "{topic}: read_uncommitted"
        );
    }
    // The markers are in the logs: each partition ends past its last record by one marker.
    let mut raw = RawClient::connect(&bootstrap).await;
    for (&(topic, partition), &end) in &next {
        for isolation in [READ_UNCOMMITTED, READ_COMMITTED] {
            assert_eq!(
                latest(&mut raw, topic, partition, isolation).await,
                end,
                "{topic}-{partition} log end (isolation {isolation})"
            );
        }
    }
    assert_eq!(next[&("ledger", 0)], 8, "5 records and 3 markers");
    broker.shutdown().await;
}

/// An open transaction holds read_committed consumers back at its first offset (the last stable
/// offset): neither its records nor a plain record written after it are delivered until it
/// commits. ListOffsets "latest" says so: the LSO for READ_COMMITTED, the log end for
/// READ_UNCOMMITTED, the same once the transaction has committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holds_back_read_committed_readers_until_it_commits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 1).await;
    let bootstrap = broker.bootstrap();
    let plain = plain_producer(&bootstrap);
    let producer = txn_producer(&bootstrap, "held-tx", 60_000);
    init(&producer).await;

    assert_eq!(send(&plain, "held", 0, "before").await, 0);
    begin(&producer);
    assert_eq!(send(&producer, "held", 0, "txn-a").await, 1);
    assert_eq!(send(&producer, "held", 0, "txn-b").await, 2);
    producer.flush(WAIT).unwrap();
    assert_eq!(send(&plain, "held", 0, "after").await, 3);

    let committed = read(&bootstrap, "held", 1, "read_committed").await;
    assert_eq!(committed, vec![(0, 0, "before".to_string())]);
    let uncommitted = read(&bootstrap, "held", 1, "read_uncommitted").await;
    let values: Vec<&str> = uncommitted.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(values, ["before", "txn-a", "txn-b", "after"]);
    let mut raw = RawClient::connect(&bootstrap).await;
    assert_eq!(latest(&mut raw, "held", 0, READ_COMMITTED).await, 1, "LSO");
    assert_eq!(latest(&mut raw, "held", 0, READ_UNCOMMITTED).await, 4);

    commit(&producer).await.expect("commit_transaction");
    let committed = read(&bootstrap, "held", 1, "read_committed").await;
    let expected: Vec<Read> = [(0, "before"), (1, "txn-a"), (2, "txn-b"), (3, "after")]
        .into_iter()
        .map(|(o, v)| (0, o, v.to_string()))
        .collect();
    assert_eq!(committed, expected);
    // The marker took offset 4.
    assert_eq!(latest(&mut raw, "held", 0, READ_COMMITTED).await, 5);
    assert_eq!(latest(&mut raw, "held", 0, READ_UNCOMMITTED).await, 5);
    broker.shutdown().await;
}

/// DescribeProducers (`kafka-transactions.sh describe-producers`, `find-hanging`): each
/// producer a partition keeps a state for, idempotent or transactional, with its last sequence
/// and the start of the transaction it has open there, which ends with the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_producers_shows_each_producer_and_its_open_transaction() {
    use kafka_protocol::messages::DescribeProducersRequest;
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 1).await;
    let bootstrap = broker.bootstrap();
    let idempotent: FutureProducer = common::client_config(&bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (i, value) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(send(&idempotent, "described", 0, value).await, i as i64);
    }
    let producer = txn_producer(&bootstrap, "described-tx", 60_000);
    init(&producer).await;
    begin(&producer);
    assert_eq!(send(&producer, "described", 0, "t1").await, 3);
    assert_eq!(send(&producer, "described", 0, "t2").await, 4);
    producer.flush(WAIT).unwrap();

    let mut raw = RawClient::connect(&bootstrap).await;
    let ask = DescribeProducersRequest::default().with_topics(vec![
        TopicRequest::default()
            .with_name(TopicName(s("described")))
            .with_partition_indexes(vec![0, 7]),
    ]);
    let started = runnel::broker::now_ms();
    let answer = raw.call(&ask, 0).await;
    let partitions = &answer.topics[0].partitions;
    assert_eq!(partitions[0].error_code, 0, "{answer:?}");
    assert_eq!(
        partitions[1].error_code,
        E::UnknownTopicOrPartition.code(),
        "{answer:?}"
    );
    // (producer id order: the idempotent producer got its id first)
    let states: Vec<(i32, i64, i32)> = partitions[0]
        .active_producers
        .iter()
        .map(|p| {
            assert!(p.producer_id.0 >= 0 && p.producer_epoch >= 0, "{p:?}");
            let age = started - p.last_timestamp;
            assert!((0..60_000).contains(&age), "last timestamp {p:?}");
            (
                p.last_sequence,
                p.current_txn_start_offset,
                p.coordinator_epoch,
            )
        })
        .collect();
    assert_eq!(states, [(2, -1, -1), (1, 3, -1)], "{answer:?}");

    commit(&producer).await.expect("commit_transaction");
    let answer = raw.call(&ask, 0).await;
    let open: Vec<i64> = answer.topics[0].partitions[0]
        .active_producers
        .iter()
        .map(|p| p.current_txn_start_offset)
        .collect();
    assert_eq!(open, [-1, -1], "committed: {answer:?}");
    broker.shutdown().await;
}

/// WriteTxnMarkers as operators send it (`kafka-transactions.sh abort`, after
/// `find-hanging`): an abort marker ends the transaction open in the partition, so that
/// read_committed readers move past it; one older than the producer's epoch is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_aborts_an_open_transaction_with_write_txn_markers() {
    use kafka_protocol::messages::WriteTxnMarkersRequest;
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 1).await;
    let bootstrap = broker.bootstrap();
    let producer = txn_producer(&bootstrap, "hanging-tx", 60_000);
    init(&producer).await;
    begin(&producer);
    assert_eq!(send(&producer, "hanging", 0, "stuck").await, 0);
    producer.flush(WAIT).unwrap();
    let mut raw = RawClient::connect(&bootstrap).await;
    assert_eq!(latest(&mut raw, "hanging", 0, READ_COMMITTED).await, 0);

    let (pid, epoch) = {
        let p = broker
            .broker
            .catalog
            .get("hanging")
            .unwrap()
            .partition(0)
            .unwrap();
        let open = p.log().open_transactions();
        assert_eq!(open.len(), 1, "{open:?}");
        open[0]
    };
    let abort = |epoch: i16, partitions: Vec<i32>| {
        WriteTxnMarkersRequest::default().with_markers(vec![
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_transaction_result(false)
                .with_coordinator_epoch(-1)
                .with_topics(vec![
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(s("hanging")))
                        .with_partition_indexes(partitions),
                ]),
        ])
    };
    let codes = |r: &kafka_protocol::messages::WriteTxnMarkersResponse| -> Vec<i16> {
        r.markers[0].topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect()
    };
    let stale = raw.call(&abort(epoch - 1, vec![0]), 1).await;
    assert_eq!(codes(&stale), [E::InvalidProducerEpoch.code()]);
    assert_eq!(
        latest(&mut raw, "hanging", 0, READ_COMMITTED).await,
        0,
        "still open"
    );

    let done = raw.call(&abort(epoch, vec![0, 3]), 1).await;
    assert_eq!(
        codes(&done),
        [0, E::UnknownTopicOrPartition.code()],
        "{done:?}"
    );
    // The marker took offset 1: read_committed readers may read to the end, and the record
    // was aborted.
    assert_eq!(latest(&mut raw, "hanging", 0, READ_COMMITTED).await, 2);
    let committed = read(&bootstrap, "hanging", 1, "read_committed").await;
    assert!(committed.is_empty(), "{committed:?}");
    let p = broker
        .broker
        .catalog
        .get("hanging")
        .unwrap()
        .partition(0)
        .unwrap();
    assert!(p.log().open_transactions().is_empty());
    broker.shutdown().await;
}

/// Polls `consumer` (a group member) until it has delivered `n` records, for up to 10 s.
fn consume(consumer: &BaseConsumer, n: usize) -> Vec<Read> {
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{n} records in {WAIT:?}: {out:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
                out.push((m.partition(), m.offset(), value));
            }
            Some(Err(e)) => panic!("consuming: {e}"),
        }
    }
    out
}

/// The offsets of `tpl`'s partitions of `topic`, by partition.
fn offsets(tpl: &TopicPartitionList, topic: &str) -> BTreeMap<i32, Offset> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

/// Consume-transform-produce: a group member's positions sent to the transaction
/// (`send_offsets_to_transaction`) become the group's committed offsets when it commits, and
/// change nothing when it aborts; the transformed records follow the same fate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_commit_with_the_transaction_and_not_with_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 2).await;
    let bootstrap = broker.bootstrap();
    let plain = plain_producer(&bootstrap);
    for i in 0..10 {
        send(&plain, "in", i % 2, &format!("in-{i}")).await;
    }
    let b = bootstrap.clone();
    let first = blocking(move || {
        let consumer: BaseConsumer = common::client_config(&b)
            .set("group.id", "etl")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        consumer.subscribe(&["in"]).unwrap();
        let producer: BaseProducer = common::client_config(&b)
            .set("transactional.id", "etl-tx")
            .create()
            .unwrap();
        producer.init_transactions(WAIT).expect("init_transactions");
        let transform = |records: &[Read]| {
            for (p, _, value) in records {
                let out = value.replace("in-", "out-");
                producer
                    .send(BaseRecord::<(), str>::to("out").payload(&out).partition(*p))
                    .expect("queued");
            }
        };

        // Committed with the transaction.
        let first = consume(&consumer, 6);
        producer.begin_transaction().unwrap();
        transform(&first);
        let position = consumer.position().unwrap();
        let group = consumer.group_metadata().expect("a group member");
        producer
            .send_offsets_to_transaction(&position, &group, WAIT)
            .expect("send_offsets_to_transaction");
        producer.commit_transaction(WAIT).expect("commit");
        let committed = consumer.committed(WAIT).unwrap();
        let at_commit = offsets(&position, "in");
        // Six records of five a partition: some of each.
        assert_eq!(
            at_commit.values().filter_map(|o| o.to_raw()).sum::<i64>(),
            6,
            "the positions after 6 records: {at_commit:?}"
        );
        assert_eq!(
            offsets(&committed, "in"),
            at_commit,
            "committed = positions"
        );

        // Dropped with an abort.
        let second = consume(&consumer, 4);
        producer.begin_transaction().unwrap();
        transform(&second);
        let position = consumer.position().unwrap();
        assert_eq!(
            offsets(&position, "in"),
            BTreeMap::from([(0, Offset::Offset(5)), (1, Offset::Offset(5))])
        );
        producer
            .send_offsets_to_transaction(&position, &group, WAIT)
            .expect("send_offsets_to_transaction");
        producer.flush(WAIT).unwrap();
        producer.abort_transaction(WAIT).expect("abort");
        let committed = consumer.committed(WAIT).unwrap();
        assert_eq!(
            offsets(&committed, "in"),
            at_commit,
            "unchanged by the abort"
        );
        first
    })
    .await;

    // The transformed records: those of the first six committed, the other four aborted.
    let values = |reads: &[Read]| {
        let mut v: Vec<String> = reads.iter().map(|r| r.2.replace("in-", "out-")).collect();
        v.sort();
        v
    };
    let committed = read(&bootstrap, "out", 2, "read_committed").await;
    assert_eq!(values(&committed), values(&first));
    let uncommitted = read(&bootstrap, "out", 2, "read_uncommitted").await;
    assert_eq!(uncommitted.len(), 10, "{uncommitted:?}");
    broker.shutdown().await;
}

/// A second producer of a transactional id fences the first: the first's open transaction is
/// aborted (its records never reach read_committed consumers, nor hold them back), and its
/// commit fails with a fatal error. The second's transactions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_producer_of_the_id_aborts_the_old_ones_transaction_and_fences_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 1).await;
    let bootstrap = broker.bootstrap();
    let old = txn_producer(&bootstrap, "fx", 60_000);
    init(&old).await;
    begin(&old);
    assert_eq!(send(&old, "fenced", 0, "old-a").await, 0);
    assert_eq!(send(&old, "fenced", 0, "old-b").await, 1);

    let new = txn_producer(&bootstrap, "fx", 60_000);
    init(&new).await;
    // The old transaction ended (its abort marker at 2): nothing is held back.
    let mut raw = RawClient::connect(&bootstrap).await;
    assert_eq!(latest(&mut raw, "fenced", 0, READ_COMMITTED).await, 3);

    let err = commit(&old)
        .await
        .expect_err("the fenced producer cannot commit");
    assert_fenced(&err);

    begin(&new);
    assert_eq!(send(&new, "fenced", 0, "new-a").await, 3);
    commit(&new).await.expect("commit_transaction");

    let committed = read(&bootstrap, "fenced", 1, "read_committed").await;
    assert_eq!(committed, vec![(0, 3, "new-a".to_string())]);
    let uncommitted = read(&bootstrap, "fenced", 1, "read_uncommitted").await;
    let values: Vec<&str> = uncommitted.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(values, ["old-a", "old-b", "new-a"]);
    broker.shutdown().await;
}

/// A transaction open past its `transaction.timeout.ms` is aborted by the coordinator: read
/// committed consumers read past it (a plain record written after it is delivered, its own
/// records are not), and its producer's late commit fails: it was fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_past_its_timeout_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 1).await;
    let bootstrap = broker.bootstrap();
    let producer = txn_producer(&bootstrap, "slow-tx", 1000);
    init(&producer).await;
    begin(&producer);
    assert_eq!(send(&producer, "stalled", 0, "txn-a").await, 0);
    assert_eq!(send(&producer, "stalled", 0, "txn-b").await, 1);
    producer.flush(WAIT).unwrap();
    let plain = plain_producer(&bootstrap);
    assert_eq!(send(&plain, "stalled", 0, "later").await, 2);

    // The coordinator looks every second: aborted within about two.
    let mut raw = RawClient::connect(&bootstrap).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while latest(&mut raw, "stalled", 0, READ_COMMITTED).await == 0 {
        assert!(Instant::now() < deadline, "still open after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Aborted: its marker at 3 ends the log, and nothing is held back.
    assert_eq!(latest(&mut raw, "stalled", 0, READ_UNCOMMITTED).await, 4);
    assert_eq!(latest(&mut raw, "stalled", 0, READ_COMMITTED).await, 4);
    let committed = read(&bootstrap, "stalled", 1, "read_committed").await;
    assert_eq!(committed, vec![(0, 2, "later".to_string())]);

    // The abort bumped the producer's epoch, as Kafka's coordinator does: the producer is
    // fenced.
    let late = commit(&producer).await;
    assert_fenced(&late.expect_err("a commit after the timeout's abort fails"));
    // Still aborted, and nothing more written.
    let committed = read(&bootstrap, "stalled", 1, "read_committed").await;
    assert_eq!(committed, vec![(0, 2, "later".to_string())]);
    broker.shutdown().await;
}

/// A restart keeps both a committed transaction and an open one: the committed records are read
/// committed, the open transaction still holds read_committed consumers back, until a new
/// producer of its transactional id aborts it; then what was written after it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_and_open_transactions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.default_partitions = 1;
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    let producer = txn_producer(&bootstrap, "durable-tx", 60_000);
    init(&producer).await;
    begin(&producer);
    assert_eq!(send(&producer, "durable", 0, "done-a").await, 0);
    assert_eq!(send(&producer, "durable", 0, "done-b").await, 1);
    commit(&producer).await.expect("commit_transaction");
    begin(&producer);
    assert_eq!(send(&producer, "durable", 0, "open-a").await, 3);
    assert_eq!(send(&producer, "durable", 0, "open-b").await, 4);
    producer.flush(WAIT).unwrap();
    let plain = plain_producer(&bootstrap);
    assert_eq!(send(&plain, "durable", 0, "plain").await, 5);
    drop(plain);
    broker.shutdown().await;
    // The producer stays as it was, unable to reach the restarted broker (a new port).

    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let done = vec![(0, 0, "done-a".to_string()), (0, 1, "done-b".to_string())];
    assert_eq!(read(&bootstrap, "durable", 1, "read_committed").await, done);
    let mut raw = RawClient::connect(&bootstrap).await;
    assert_eq!(latest(&mut raw, "durable", 0, READ_COMMITTED).await, 3);
    assert_eq!(latest(&mut raw, "durable", 0, READ_UNCOMMITTED).await, 6);
    // The coordinator's checks after the start leave it open (its timeout is a minute).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(latest(&mut raw, "durable", 0, READ_COMMITTED).await, 3);

    let successor = txn_producer(&bootstrap, "durable-tx", 60_000);
    init(&successor).await;
    assert_eq!(latest(&mut raw, "durable", 0, READ_COMMITTED).await, 7);
    let mut expected = done;
    expected.push((0, 5, "plain".to_string()));
    assert_eq!(
        read(&bootstrap, "durable", 1, "read_committed").await,
        expected
    );
    blocking(move || drop(producer)).await;
    broker.shutdown().await;
}

/// One transactional record batch of `producer_id` at `epoch`, for raw produce requests.
fn txn_batch(producer_id: i64, epoch: i16, sequence: i32, value: &[u8]) -> Bytes {
    let mut r = common::record(0, Some(b"k"), value, runnel::broker::now_ms());
    r.transactional = true;
    r.producer_id = producer_id;
    r.producer_epoch = epoch;
    r.sequence = sequence;
    common::encode_batch(&[r], kafka_protocol::records::Compression::None)
}

fn add_partitions(
    id: &str,
    (producer_id, epoch): (i64, i16),
    partitions: &[(&str, i32)],
) -> AddPartitionsToTxnRequest {
    AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(id)))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(
            partitions
                .iter()
                .map(|(t, p)| {
                    AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(vec![*p])
                })
                .collect(),
        )
}

/// Each partition's error code in an AddPartitionsToTxn (v0-3) response.
fn codes(r: &AddPartitionsToTxnResponse) -> BTreeMap<(String, i32), i16> {
    r.results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition.iter().map(|p| {
                (
                    (t.name.to_string(), p.partition_index),
                    p.partition_error_code,
                )
            })
        })
        .collect()
}

fn end_txn(id: &str, (producer_id, epoch): (i64, i16), commit: bool) -> EndTxnRequest {
    EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(commit)
}

async fn init_raw(raw: &mut RawClient, id: &str, version: i16) -> (i64, i16) {
    let r = raw
        .call(
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(s(id))))
                .with_transaction_timeout_ms(60_000),
            version,
        )
        .await;
    assert_eq!(r.error_code, 0, "InitProducerId {id}");
    (r.producer_id.0, r.producer_epoch)
}

/// Creates `name` with one partition.
async fn create_topic(raw: &mut RawClient, name: &str) {
    let created = raw
        .call(
            &CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(s(name)))
                    .with_num_partitions(1)
                    .with_replication_factor(-1),
            ]),
            5,
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0, "{name} created");
}

/// The coordinator's refusals on the wire: a transactional batch for a partition not added to
/// the transaction gets INVALID_TXN_STATE and is not written; AddPartitionsToTxn naming an
/// unknown topic adds nothing (UNKNOWN_TOPIC_OR_PARTITION for it, OPERATION_NOT_ATTEMPTED for
/// the rest); a fenced epoch gets INVALID_PRODUCER_EPOCH on Produce and PRODUCER_FENCED on
/// EndTxn, which leaves the transaction open for its current producer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_refusals_carry_kafkas_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    create_topic(&mut raw, "raw-txn").await;
    let id = "raw-tx";
    let produce = |batch: Bytes| {
        common::produce_request("raw-txn", 0, -1, batch)
            .with_transactional_id(Some(TransactionalId(s(id))))
    };
    let produce_code = |r: &kafka_protocol::messages::ProduceResponse| {
        r.responses[0].partition_responses[0].error_code
    };

    let (pid, epoch) = init_raw(&mut raw, id, 4).await;
    let r = raw.call(&produce(txn_batch(pid, epoch, 0, b"v")), 7).await;
    assert_eq!(produce_code(&r), E::InvalidTxnState.code(), "not added");
    assert_eq!(latest(&mut raw, "raw-txn", 0, READ_UNCOMMITTED).await, 0);

    let r = raw
        .call(
            &add_partitions(id, (pid, epoch), &[("raw-txn", 0), ("no-such-topic", 0)]),
            3,
        )
        .await;
    let expected = BTreeMap::from([
        (
            ("no-such-topic".to_string(), 0),
            E::UnknownTopicOrPartition.code(),
        ),
        (("raw-txn".to_string(), 0), E::OperationNotAttempted.code()),
    ]);
    assert_eq!(codes(&r), expected);
    let r = raw.call(&produce(txn_batch(pid, epoch, 0, b"v")), 7).await;
    assert_eq!(produce_code(&r), E::InvalidTxnState.code(), "nothing added");
    assert_eq!(latest(&mut raw, "raw-txn", 0, READ_UNCOMMITTED).await, 0);

    // A second InitProducerId fences the first epoch.
    let (pid2, epoch2) = init_raw(&mut raw, id, 4).await;
    assert_eq!((pid2, epoch2), (pid, epoch + 1));
    let r = raw
        .call(&add_partitions(id, (pid, epoch), &[("raw-txn", 0)]), 3)
        .await;
    assert_eq!(
        codes(&r)[&("raw-txn".to_string(), 0)],
        E::ProducerFenced.code()
    );
    let r = raw
        .call(&add_partitions(id, (pid, epoch2), &[("raw-txn", 0)]), 3)
        .await;
    assert_eq!(codes(&r)[&("raw-txn".to_string(), 0)], 0);
    let r = raw.call(&produce(txn_batch(pid, epoch, 0, b"v")), 7).await;
    assert_eq!(
        produce_code(&r),
        E::InvalidProducerEpoch.code(),
        "old epoch"
    );
    let r = raw.call(&produce(txn_batch(pid, epoch2, 0, b"v")), 7).await;
    assert_eq!(produce_code(&r), 0);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 0);

    let r = raw.call(&end_txn(id, (pid, epoch), true), 3).await;
    assert_eq!(r.error_code, E::ProducerFenced.code());
    assert_eq!(
        latest(&mut raw, "raw-txn", 0, READ_COMMITTED).await,
        0,
        "still open"
    );
    let r = raw.call(&end_txn(id, (pid, epoch2), true), 3).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(
        latest(&mut raw, "raw-txn", 0, READ_COMMITTED).await,
        2,
        "committed"
    );
    broker.shutdown().await;
}

/// Clients older than PRODUCER_FENCED (KIP-588, Kafka 2.7) are told of a fenced epoch with
/// INVALID_PRODUCER_EPOCH, the code they know, as Kafka's broker does: EndTxn and
/// AddPartitionsToTxn v0-1. From v2 they get PRODUCER_FENCED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_client_is_told_invalid_producer_epoch_when_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    create_topic(&mut raw, "old-client").await;
    let id = "old-client-tx";
    let fenced = init_raw(&mut raw, id, 1).await;
    let current = init_raw(&mut raw, id, 1).await;
    assert_eq!(current, (fenced.0, fenced.1 + 1));
    let old = |v: i16| {
        if v < 2 {
            E::InvalidProducerEpoch.code()
        } else {
            E::ProducerFenced.code()
        }
    };
    // (request, version, code got, code expected), all of them before asserting.
    let mut answers = Vec::new();
    for v in 0..=3 {
        let r = raw.call(&end_txn(id, fenced, false), v).await;
        answers.push(("EndTxn", v, r.error_code, old(v)));
        let r = raw
            .call(&add_partitions(id, fenced, &[("old-client", 0)]), v)
            .await;
        let code = codes(&r).into_values().next().unwrap_or(0);
        answers.push(("AddPartitionsToTxn", v, code, old(v)));
    }
    let wrong: Vec<_> = answers.iter().filter(|a| a.2 != a.3).collect();
    assert!(
        wrong.is_empty(),
        "(request, version, got, expected): {wrong:?}"
    );
    broker.shutdown().await;
}

/// DescribeTransactions and ListTransactions (`kafka-transactions.sh`) show a transaction in
/// progress with its partitions; a transactional id unused for 7 days (Kafka's
/// `transactional.id.expiration.ms`) is forgotten, also across a restart, and its producer then
/// starts again under a new producer id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_listed_and_an_unused_id_is_forgotten_after_seven_days() {
    use kafka_protocol::messages::{DescribeTransactionsRequest, ListTransactionsRequest};
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    create_topic(&mut raw, "listed").await;
    let (pid, epoch) = init_raw(&mut raw, "lister", 3).await;
    let added = raw
        .call(
            &AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(s("lister")))
                .with_v3_and_below_producer_id(ProducerId(pid))
                .with_v3_and_below_producer_epoch(epoch)
                .with_v3_and_below_topics(vec![
                    AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(s("listed")))
                        .with_partitions(vec![0]),
                ]),
            3,
        )
        .await;
    assert_eq!(
        added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
        0
    );
    let describe = |id: &str| {
        DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(s(id))])
    };
    let d = raw.call(&describe("lister"), 0).await;
    let state = &d.transaction_states[0];
    assert_eq!(state.error_code, 0);
    assert_eq!(state.transaction_state.as_str(), "Ongoing");
    assert_eq!((state.producer_id.0, state.producer_epoch), (pid, epoch));
    assert_eq!(state.transaction_timeout_ms, 60_000);
    assert!(state.transaction_start_time_ms > 0);
    assert_eq!(state.topics.len(), 1);
    assert_eq!(state.topics[0].topic.as_str(), "listed");
    assert_eq!(state.topics[0].partitions, [0]);
    let l = raw
        .call(
            &ListTransactionsRequest::default()
                .with_state_filters(vec![s("Ongoing"), s("Sleeping")])
                .with_duration_filter(-1),
            1,
        )
        .await;
    assert_eq!(l.transaction_states.len(), 1);
    assert_eq!(l.transaction_states[0].transactional_id.as_str(), "lister");
    assert_eq!(
        l.unknown_state_filters
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>(),
        ["Sleeping"]
    );
    let unknown = raw.call(&describe("nobody"), 0).await;
    assert_eq!(
        unknown.transaction_states[0].error_code,
        E::TransactionalIdNotFound.code()
    );

    // Ended, then unused: forgotten once 7 days have passed, not before.
    let ended = raw
        .call(
            &EndTxnRequest::default()
                .with_transactional_id(TransactionalId(s("lister")))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_committed(true),
            3,
        )
        .await;
    assert_eq!(ended.error_code, 0);
    let now = runnel::broker::now_ms();
    let b = &broker.broker;
    b.transactions
        .tick(b, now + runnel::transactions::EXPIRATION_MS - 60_000);
    let d = raw.call(&describe("lister"), 0).await;
    assert_eq!(
        d.transaction_states[0].transaction_state.as_str(),
        "CompleteCommit"
    );
    b.transactions
        .tick(b, now + runnel::transactions::EXPIRATION_MS + 60_000);
    let d = raw.call(&describe("lister"), 0).await;
    assert_eq!(
        d.transaction_states[0].error_code,
        E::TransactionalIdNotFound.code()
    );
    drop(raw);
    broker.shutdown().await;

    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    let d = raw.call(&describe("lister"), 0).await;
    assert_eq!(
        d.transaction_states[0].error_code,
        E::TransactionalIdNotFound.code()
    );
    let (again, epoch) = init_raw(&mut raw, "lister", 3).await;
    assert!(
        again != pid && epoch == 0,
        "a new producer id: {again} (was {pid})"
    );
    broker.shutdown().await;
}

/// A Produce of transactional batches needs the request's transactional id, and the producer
/// id to be that id's: without one, or with the producer id of another transactional id (one
/// the client may write, guessing another's producer id), the request gets
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED or INVALID_PRODUCER_ID_MAPPING and nothing is written,
/// so no client can add records to another producer's transaction. A batch outside a
/// transaction from a producer with one open in the partition gets INVALID_TXN_STATE, and no
/// batch slips past these checks behind another batch of the same data (INVALID_RECORD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_batches_need_their_own_transactional_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    create_topic(&mut raw, "owned").await;
    let (alice, epoch) = init_raw(&mut raw, "alice-tx", 4).await;
    init_raw(&mut raw, "bob-tx", 4).await;
    let r = raw
        .call(
            &add_partitions("alice-tx", (alice, epoch), &[("owned", 0)]),
            3,
        )
        .await;
    assert_eq!(codes(&r)[&("owned".to_string(), 0)], 0);
    let produce = |id: Option<&str>, batch: Bytes| {
        common::produce_request("owned", 0, -1, batch)
            .with_transactional_id(id.map(|id| TransactionalId(s(id))))
    };
    let code = |r: &kafka_protocol::messages::ProduceResponse| {
        r.responses[0].partition_responses[0].error_code
    };
    let r = raw
        .call(&produce(None, txn_batch(alice, epoch, 0, b"x")), 7)
        .await;
    assert_eq!(code(&r), E::TransactionalIdAuthorizationFailed.code());
    let r = raw
        .call(
            &produce(Some("bob-tx"), txn_batch(alice, epoch, 0, b"x")),
            7,
        )
        .await;
    assert_eq!(code(&r), E::InvalidProducerIdMapping.code());
    assert_eq!(latest(&mut raw, "owned", 0, READ_UNCOMMITTED).await, 0);

    let r = raw
        .call(
            &produce(Some("alice-tx"), txn_batch(alice, epoch, 0, b"a")),
            7,
        )
        .await;
    assert_eq!(code(&r), 0);
    // The same producer id and epoch, the next sequence, but not transactional.
    let mut outside = common::record(0, Some(b"k"), b"outside", runnel::broker::now_ms());
    (
        outside.producer_id,
        outside.producer_epoch,
        outside.sequence,
    ) = (alice, epoch, 1);
    let plain = common::encode_batch(&[outside], kafka_protocol::records::Compression::None);
    let r = raw.call(&produce(None, plain.clone()), 7).await;
    assert_eq!(code(&r), E::InvalidTxnState.code());
    assert_eq!(latest(&mut raw, "owned", 0, READ_UNCOMMITTED).await, 1);

    // A transactional batch behind another batch is looked at too.
    let behind = |first: &Bytes, second: Bytes| {
        let mut both = first.to_vec();
        both.extend_from_slice(&second);
        Bytes::from(both)
    };
    let unrelated = common::encode_batch(
        &[common::record(0, None, b"plain", runnel::broker::now_ms())],
        kafka_protocol::records::Compression::None,
    );
    let r = raw
        .call(
            &produce(None, behind(&unrelated, txn_batch(424_242, 0, 0, b"x"))),
            7,
        )
        .await;
    assert_eq!(code(&r), E::TransactionalIdAuthorizationFailed.code());
    let r = raw
        .call(
            &produce(
                Some("alice-tx"),
                behind(&unrelated, txn_batch(alice, epoch, 1, b"x")),
            ),
            7,
        )
        .await;
    assert_eq!(code(&r), E::InvalidRecord.code(), "mixed batches");
    let r = raw
        .call(
            &produce(
                Some("alice-tx"),
                behind(
                    &txn_batch(alice, epoch, 1, b"x"),
                    txn_batch(424_242, 0, 0, b"y"),
                ),
            ),
            7,
        )
        .await;
    assert_eq!(code(&r), E::InvalidRecord.code(), "two producers");
    assert_eq!(latest(&mut raw, "owned", 0, READ_UNCOMMITTED).await, 1);
    broker.shutdown().await;
}

/// InitProducerId retried by a producer that bumped its own epoch (the answer lost) gets the
/// same answer again rather than PRODUCER_FENCED; a producer fenced by a new instance of its
/// transactional id, or by the coordinator for a timeout, cannot pass for such a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_epoch_bump_is_answered_again_and_a_zombie_stays_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    let bump = |(pid, epoch): (i64, i16)| {
        InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(s("bumper"))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
    };
    let (pid, epoch) = init_raw(&mut raw, "bumper", 4).await;
    let first = raw.call(&bump((pid, epoch)), 4).await;
    assert_eq!(first.error_code, 0);
    assert_eq!(
        (first.producer_id.0, first.producer_epoch),
        (pid, epoch + 1)
    );
    let again = raw.call(&bump((pid, epoch)), 4).await;
    assert_eq!(again.error_code, 0, "a retry");
    assert_eq!(
        (again.producer_id.0, again.producer_epoch),
        (pid, epoch + 1)
    );
    // A new instance fences every earlier epoch, the one bumped from included.
    let (_, fencing) = init_raw(&mut raw, "bumper", 4).await;
    assert_eq!(fencing, epoch + 2);
    let zombie = raw.call(&bump((pid, epoch + 1)), 4).await;
    assert_eq!(zombie.error_code, E::ProducerFenced.code());
    // So does the coordinator fencing a transaction past its timeout.
    let bumped = raw.call(&bump((pid, epoch + 2)), 4).await;
    assert_eq!(bumped.producer_epoch, epoch + 3);
    create_topic(&mut raw, "bumped").await;
    let r = raw
        .call(
            &add_partitions("bumper", (pid, epoch + 3), &[("bumped", 0)]),
            3,
        )
        .await;
    assert_eq!(codes(&r)[&("bumped".to_string(), 0)], 0);
    let b = &broker.broker;
    b.transactions.tick(b, runnel::broker::now_ms() + 120_000);
    let zombie = raw.call(&bump((pid, epoch + 2)), 4).await;
    assert_eq!(
        zombie.error_code,
        E::ProducerFenced.code(),
        "timed out, fenced"
    );
    broker.shutdown().await;
}

/// When a producer id's epochs are used up, the transaction a new instance finds open is
/// aborted under the old producer id (so the partition closes it and read_committed readers go
/// on), and the transactional id goes on under a new producer id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_id_out_of_epochs_aborts_its_transaction_and_gets_a_new_id() {
    let dir = tempfile::tempdir().unwrap();
    // The id's stored state, as the coordinator keeps it: an epoch before the last.
    let old = {
        let meta = runnel::meta::MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let pid = meta.next_producer_id().unwrap();
        let txn = runnel::transactions::Txn {
            producer_id: pid,
            epoch: i16::MAX - 2,
            timeout_ms: 60_000,
            status: runnel::transactions::TxnStatus::CompleteCommit,
            partitions: Default::default(),
            groups: Default::default(),
            offsets: Vec::new(),
            started_ms: 0,
            used_ms: runnel::broker::now_ms(),
            previous_epoch: None,
        };
        let json = serde_json::to_string(&txn).unwrap();
        meta.put_transaction("tired", Some(&json)).unwrap();
        pid
    };
    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    create_topic(&mut raw, "tired").await;
    let (pid, epoch) = init_raw(&mut raw, "tired", 4).await;
    assert_eq!((pid, epoch), (old, i16::MAX - 1), "the last epoch");
    let r = raw
        .call(&add_partitions("tired", (pid, epoch), &[("tired", 0)]), 3)
        .await;
    assert_eq!(codes(&r)[&("tired".to_string(), 0)], 0);
    let r = raw
        .call(
            &common::produce_request("tired", 0, -1, txn_batch(pid, epoch, 0, b"open"))
                .with_transactional_id(Some(TransactionalId(s("tired")))),
            7,
        )
        .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(latest(&mut raw, "tired", 0, READ_COMMITTED).await, 0);

    let (new_pid, new_epoch) = init_raw(&mut raw, "tired", 4).await;
    assert!(new_pid != pid && new_epoch == 0, "{new_pid}/{new_epoch}");
    // Record 0, then the abort marker at 1: nothing is open any more.
    assert_eq!(latest(&mut raw, "tired", 0, READ_UNCOMMITTED).await, 2);
    assert_eq!(latest(&mut raw, "tired", 0, READ_COMMITTED).await, 2);
    let r = raw
        .call(&add_partitions("tired", (pid, epoch), &[("tired", 0)]), 3)
        .await;
    assert_eq!(
        codes(&r)[&("tired".to_string(), 0)],
        E::InvalidProducerIdMapping.code(),
        "the old producer id is no longer the id's"
    );
    broker.shutdown().await;
}

/// A power cut can take the log's unflushed tail (`log.flush = "interval"`) while the
/// coordinator's state, written durably, says committed: a commit marker lost that way is
/// written again at the start, so the transaction stays committed (and does not hold
/// read_committed readers back, nor get aborted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_marker_lost_with_the_log_tail_is_written_again_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::test_config(dir.path());
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    let producer = txn_producer(&bootstrap, "lost-marker-tx", 60_000);
    init(&producer).await;
    begin(&producer);
    assert_eq!(send(&producer, "lost-marker", 0, "kept-a").await, 0);
    assert_eq!(send(&producer, "lost-marker", 0, "kept-b").await, 1);
    commit(&producer).await.expect("commit_transaction");
    drop(producer);
    broker.shutdown().await;

    // The marker (offset 2, the last batch of the segment) is gone, the records stay.
    let segment = dir
        .path()
        .join("lost-marker-0")
        .join("00000000000000000000.log");
    let bytes = std::fs::read(&segment).unwrap();
    let marker_at = {
        let mut pos = 0;
        let mut last = 0;
        while pos < bytes.len() {
            last = pos;
            let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
            pos += 12 + len as usize;
        }
        last
    };
    let attributes = i16::from_be_bytes([bytes[marker_at + 21], bytes[marker_at + 22]]);
    assert_eq!(attributes & 0x30, 0x30, "the last batch is the marker");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(marker_at as u64)
        .unwrap();
    for index in ["index", "timeindex"] {
        let _ = std::fs::remove_file(segment.with_extension(index));
    }

    let broker = common::start_with(cfg).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    let deadline = Instant::now() + WAIT;
    while latest(&mut raw, "lost-marker", 0, READ_COMMITTED).await != 3 {
        assert!(
            Instant::now() < deadline,
            "the commit marker is not written again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = read(&broker.bootstrap(), "lost-marker", 1, "read_committed").await;
    let values: Vec<&str> = got.iter().map(|(_, _, v)| v.as_str()).collect();
    assert_eq!(values, ["kept-a", "kept-b"], "committed, not aborted");
    broker.shutdown().await;
}

/// Sends `key`=`value` to partition 0 of `topic` and waits for its acknowledgement: its offset.
async fn send_keyed(p: &FutureProducer, topic: &str, key: &str, value: &str) -> i64 {
    p.send(
        FutureRecord::to(topic).key(key).payload(value).partition(0),
        WAIT,
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap_or_else(|e| panic!("{key}={value} acknowledged: {e}"))
    .offset
}

/// Compaction removes an aborted transaction's records and then its marker; a read_committed
/// consumer reading from the start must then not be told of that transaction: librdkafka drops
/// every later batch of its producer until it sees the marker, which is no longer there (QA
/// read 0 of 90 committed records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_compacted_away_hides_nothing_from_read_committed_readers() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.retention_check_interval = Duration::from_millis(100);
    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let admin: AdminClient<_> = common::client_config(&b).create().unwrap();
    let topic = NewTopic::new("changelog", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "1024")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "0");
    let made = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");

    let p = txn_producer(&b, "changelog-writer", 10_000);
    init(&p).await;
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    begin(&p);
    for k in keys {
        send_keyed(&p, "changelog", k, "v0").await;
    }
    commit(&p).await.unwrap();
    begin(&p);
    let mut aborted = Vec::new();
    for k in keys {
        aborted.push(send_keyed(&p, "changelog", k, "aborted").await);
    }
    abort(&p).await.unwrap();
    let abort_marker = aborted[aborted.len() - 1] + 1;
    for round in 1..=10 {
        begin(&p);
        for k in keys {
            send_keyed(&p, "changelog", k, &format!("v{round}")).await;
        }
        commit(&p).await.unwrap();
    }

    // Wait for compaction to remove the abort marker (its records go at the first pass).
    let partition = broker
        .broker
        .catalog
        .get("changelog")
        .unwrap()
        .partition(0)
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let bytes = partition.log().read(0, 1 << 20).unwrap();
        let bases: Vec<i64> = runnel::storage::parse_batches(&bytes)
            .map(|b| b.unwrap().1.base_offset)
            .collect();
        if !bases.contains(&abort_marker) {
            assert!(!bases.iter().any(|o| aborted.contains(o)), "{bases:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abort marker at {abort_marker} is still there: {bases:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every key's last committed value is read, and nothing aborted.
    let values: Vec<String> = read(&b, "changelog", 1, "read_committed")
        .await
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    let last = values.iter().filter(|v| v.as_str() == "v10").count();
    assert!(
        last == keys.len() && !values.iter().any(|v| v == "aborted"),
        "{values:?}"
    );
    broker.shutdown().await;
}

/// A read_committed fetch lists the aborted transactions that overlap the records it returns,
/// as Kafka does, not every one up to the last stable offset (20,000 aborts made each small
/// fetch 240 KB larger in QA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_lists_only_the_aborted_transactions_it_returns_records_of() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 1).await;
    let b = broker.bootstrap();
    let p = txn_producer(&b, "aborter", 10_000);
    init(&p).await;
    let mut firsts = Vec::new();
    for i in 0..20 {
        begin(&p);
        firsts.push(send(&p, "aborts", 0, &format!("a{i}")).await);
        abort(&p).await.unwrap();
    }
    let mut raw = RawClient::connect(&b).await;
    let fetch = |offset: i64, max_bytes: i32| {
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(max_bytes)
            .with_isolation_level(1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(s("aborts")))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(max_bytes),
                    ]),
            ])
    };
    let listed = |r: &kafka_protocol::messages::FetchResponse| -> Vec<i64> {
        let data = &r.responses[0].partitions[0];
        assert_eq!(data.error_code, 0);
        let aborted = data.aborted_transactions.as_ref().unwrap();
        aborted.iter().map(|a| a.first_offset).collect()
    };
    // One batch (a record and its abort marker are two batches): the first transaction only.
    let r = raw.call(&fetch(0, 1), 11).await;
    assert_eq!(listed(&r), firsts[..1]);
    // From the middle: the transactions from there on that the response holds records of.
    let r = raw.call(&fetch(firsts[10], 1), 11).await;
    assert_eq!(listed(&r), firsts[10..11]);
    // All of it: every one.
    let r = raw.call(&fetch(0, 1 << 20), 11).await;
    assert_eq!(listed(&r), firsts);
    broker.shutdown().await;
}

/// A plain OffsetCommit after a transaction staged an offset for the same partition wins when
/// the transaction commits, as in Kafka (a transaction's offset counts only if written after
/// the committed one): an offset reset while a transaction is open stays. An offset staged
/// after the plain commit is stored by the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_commit_after_the_transaction_staged_its_offset_wins() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{
        AddOffsetsToTxnRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest,
        TxnOffsetCommitRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut raw = RawClient::connect(&broker.bootstrap()).await;
    create_topic(&mut raw, "src").await;
    let pid = init_raw(&mut raw, "resetter", 3).await;
    let group = || GroupId(s("etl"));
    let stage = |offset: i64| {
        TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(s("resetter")))
            .with_group_id(group())
            .with_producer_id(ProducerId(pid.0))
            .with_producer_epoch(pid.1)
            .with_generation_id(-1)
            .with_topics(vec![
                TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("src")))
                    .with_partitions(vec![
                        TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ])
    };
    let plain = |offset: i64| {
        OffsetCommitRequest::default()
            .with_group_id(group())
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("src")))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ])
    };
    let add_group = AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(s("resetter")))
        .with_producer_id(ProducerId(pid.0))
        .with_producer_epoch(pid.1)
        .with_group_id(group());
    let fetch = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(group())
            .with_topics(None),
    ]);
    let committed = async |raw: &mut RawClient| -> i64 {
        let r = raw.call(&fetch, 8).await;
        r.groups[0].topics[0].partitions[0].committed_offset
    };

    // Staged 9, then a plain commit of 5: the transaction's commit leaves 5.
    assert_eq!(raw.call(&add_group, 3).await.error_code, 0);
    let r = raw.call(&stage(9), 3).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let r = raw.call(&plain(5), 8).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    assert_eq!(
        raw.call(&end_txn("resetter", pid, true), 3)
            .await
            .error_code,
        0
    );
    assert_eq!(committed(&mut raw).await, 5);

    // A plain commit of 3, then staged 7: the commit stores 7.
    let r = raw.call(&plain(3), 8).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    assert_eq!(raw.call(&add_group, 3).await.error_code, 0);
    let r = raw.call(&stage(7), 3).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    assert_eq!(
        raw.call(&end_txn("resetter", pid, true), 3)
            .await
            .error_code,
        0
    );
    assert_eq!(committed(&mut raw).await, 7);
    broker.shutdown().await;
}
