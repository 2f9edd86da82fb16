//! Fetch and ListOffsets at the protocol level: long-poll woken by appends, max wait honoured,
//! mid-batch fetches return the whole batch, offsets by time.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::RawClient;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};

fn name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

fn batch(n: usize, first_ts: i64) -> Bytes {
    let records: Vec<_> = (0..n)
        .map(|i| {
            common::record(
                i as i64,
                None,
                format!("value-{i}").as_bytes(),
                first_ts + i as i64 * 1000,
            )
        })
        .collect();
    common::encode_batch(&records, Compression::Lz4)
}

async fn setup(c: &mut RawClient, topic: &str) {
    let req = CreateTopicsRequest::default().with_topics(vec![
        kafka_protocol::messages::create_topics_request::CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    let r = c.call(&req, 5).await;
    assert_eq!(r.topics[0].error_code, 0);
}

async fn produce(c: &mut RawClient, topic: &str, records: Bytes) -> i64 {
    let req = common::produce_request(topic, 0, -1, records);
    let r = c.call(&req, 9).await;
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    p.base_offset
}

/// Like `c.call`, with correlation id `correlation`, waiting up to `wait` for the answer (where
/// `RawClient` gives up after 10 s): for long polls.
async fn call_within<R: Request>(
    c: &mut RawClient,
    req: &R,
    version: i16,
    correlation: i32,
    wait: Duration,
) -> R::Response {
    use tokio::io::AsyncReadExt;
    c.send_raw(&common::request_frame(
        req,
        version,
        correlation,
        "raw-test",
    ))
    .await;
    let read = async {
        let mut len = [0u8; 4];
        c.stream.read_exact(&mut len).await?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        c.stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(Bytes::from(body))
    };
    let frame = tokio::time::timeout(wait, read)
        .await
        .expect("the broker answers in time")
        .expect("a response frame");
    common::decode_response::<R>(frame, version, correlation)
}

fn fetch_req(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_waits_for_data_and_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut c = RawClient::connect(&addr).await;
    setup(&mut c, "lp").await;

    // Nothing to read: the fetch waits its max wait, then answers empty.
    let t = Instant::now();
    let r = c.call(&fetch_req("lp", 0, 400), 11).await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(380) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(
        r.responses[0].partitions[0]
            .records
            .as_ref()
            .map(|b| b.len()),
        Some(0)
    );

    // With min_bytes 0 nothing at all is enough: answered at once, as Kafka does.
    let t = Instant::now();
    let r = c
        .call(&fetch_req("lp", 0, 3_000).with_min_bytes(0), 11)
        .await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(r.responses[0].partitions[0].error_code, 0);

    // A fetch waiting up to 30 s is answered as soon as another connection appends.
    let addr2 = addr.clone();
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut p = RawClient::connect(&addr2).await;
        produce(&mut p, "lp", batch(3, 1_700_000_000_000)).await
    });
    let t = Instant::now();
    let r = call_within(
        &mut c,
        &fetch_req("lp", 0, 30_000),
        11,
        1_000,
        Duration::from_secs(40),
    )
    .await;
    let waited = t.elapsed();
    assert_eq!(producer.await.unwrap(), 0);
    assert!(
        waited < Duration::from_secs(15),
        "woken by the append, not the timeout: {waited:?}"
    );
    let part = &r.responses[0].partitions[0];
    assert_eq!(part.high_watermark, 3);
    let mut records = part.records.clone().unwrap();
    assert_eq!(
        RecordBatchDecoder::decode(&mut records)
            .unwrap()
            .records
            .len(),
        3
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn mid_batch_fetch_returns_the_whole_batch_and_list_offsets_finds_times() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    setup(&mut c, "mid").await;
    let t0 = 1_700_000_000_000;
    assert_eq!(produce(&mut c, "mid", batch(10, t0)).await, 0);
    assert_eq!(produce(&mut c, "mid", batch(10, t0 + 100_000)).await, 10);

    let r = c.call(&fetch_req("mid", 5, 0), 11).await;
    let mut records = r.responses[0].partitions[0].records.clone().unwrap();
    let first = RecordBatchDecoder::decode(&mut records).unwrap();
    assert_eq!(
        first.records.first().map(|r| r.offset),
        Some(0),
        "the whole batch holding offset 5"
    );
    assert_eq!(first.records.len(), 10);

    let r = c.call(&fetch_req("mid", 21, 0), 11).await;
    assert_eq!(
        r.responses[0].partitions[0].error_code, 1,
        "OFFSET_OUT_OF_RANGE past the end"
    );

    let list = |ts: i64| {
        ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(name("mid"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(ts),
                    ]),
            ])
    };
    let at = |r: &kafka_protocol::messages::ListOffsetsResponse| {
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.offset, p.timestamp)
    };
    assert_eq!(at(&c.call(&list(-2), 7).await).1, 0, "earliest");
    assert_eq!(at(&c.call(&list(-1), 7).await).1, 20, "latest");
    assert_eq!(
        at(&c.call(&list(t0 + 3_500), 7).await),
        (0, 4, t0 + 4_000),
        "first record at or after"
    );
    assert_eq!(
        at(&c.call(&list(t0 + 100_000), 7).await),
        (0, 10, t0 + 100_000)
    );
    assert_eq!(
        at(&c.call(&list(t0 + 10_000_000), 7).await).1,
        -1,
        "none that late"
    );
    let (_, offset, ts) = at(&c.call(&list(-3), 7).await);
    assert_eq!((offset, ts), (19, t0 + 109_000), "max timestamp");
    assert_eq!(
        at(&c.call(&list(-4), 8).await),
        (0, 0, -1),
        "earliest local: the log start, nothing being tiered"
    );
    assert_eq!(
        at(&c.call(&list(-5), 9).await),
        (0, -1, -1),
        "latest tiered: none"
    );
    // A partition named twice is refused at each mention, as Kafka does.
    let mut twice = list(-1);
    let again = twice.topics[0].partitions[0].clone();
    twice.topics[0].partitions.push(again);
    let r = c.call(&twice, 10).await;
    let codes: Vec<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, vec![42, 42], "INVALID_REQUEST for both");
    broker.shutdown().await;
}

/// KIP-74: a response stays within `max_bytes` and each partition within its
/// `partition_max_bytes`, except the first batch of the first non-empty partition, which comes
/// whole however large; after it, a partition whose next batch does not fit returns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_batch_of_a_response_may_exceed_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let req = CreateTopicsRequest::default().with_topics(vec![
        kafka_protocol::messages::create_topics_request::CreatableTopic::default()
            .with_name(name("limits"))
            .with_num_partitions(3)
            .with_replication_factor(1),
    ]);
    assert_eq!(c.call(&req, 5).await.topics[0].error_code, 0);
    let value = vec![b'v'; 1000];
    let one = common::encode_batch(
        &[common::record(0, None, &value, 1_700_000_000_000)],
        Compression::None,
    );
    let size = one.len();
    for p in 0..3 {
        for _ in 0..2 {
            let r = c
                .call(&common::produce_request("limits", p, -1, one.clone()), 9)
                .await;
            assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        }
    }
    let fetch = |max_bytes: usize, partition_max: usize| {
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(max_bytes as i32)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(name("limits"))
                    .with_partitions(
                        (0..3)
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_partition_max_bytes(partition_max as i32)
                            })
                            .collect(),
                    ),
            ])
    };
    // (max_bytes, partition_max_bytes) -> bytes returned per partition.
    let cases = [
        ((size + size / 2, 1 << 20), [size, 0, 0]),
        ((size * 2, 1 << 20), [size * 2, 0, 0]),
        ((size * 3, size + size / 2), [size, size, size]),
        ((1 << 20, size / 2), [size, 0, 0]),
        ((1, 1), [size, 0, 0]),
        ((1 << 20, 1 << 20), [size * 2, size * 2, size * 2]),
    ];
    for ((max_bytes, partition_max), expected) in cases {
        let r = c.call(&fetch(max_bytes, partition_max), 4).await;
        let got: Vec<usize> = r.responses[0]
            .partitions
            .iter()
            .map(|p| {
                assert_eq!(p.error_code, 0);
                p.records.as_ref().map_or(0, |b| b.len())
            })
            .collect();
        assert_eq!(
            got, expected,
            "max_bytes {max_bytes}, partition_max_bytes {partition_max}"
        );
    }
    broker.shutdown().await;
}

/// A Fetch v12 on `session` at `epoch` naming `(partition, offset)` of `topic`, waiting up to
/// `max_wait_ms` for a byte.
fn session_fetch(
    topic: &str,
    session: i32,
    epoch: i32,
    parts: &[(i32, i64)],
    max_wait_ms: i32,
) -> FetchRequest {
    let partitions: Vec<_> = parts
        .iter()
        .map(|&(p, offset)| {
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    let topics = if partitions.is_empty() {
        Vec::new()
    } else {
        vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(partitions),
        ]
    };
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(session)
        .with_session_epoch(epoch)
        .with_topics(topics)
}

/// The (partition, record count) of each partition a fetch answered.
fn answered(r: &kafka_protocol::messages::FetchResponse) -> Vec<(i32, usize)> {
    r.responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| {
            let mut bytes = p.records.clone().unwrap_or_default();
            let mut n = 0;
            while !bytes.is_empty() {
                n += RecordBatchDecoder::decode(&mut bytes)
                    .unwrap()
                    .records
                    .len();
            }
            (p.partition_index, n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_fetch_sessions_answer_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let create = CreateTopicsRequest::default().with_topics(vec![
        kafka_protocol::messages::create_topics_request::CreatableTopic::default()
            .with_name(name("sess"))
            .with_num_partitions(3)
            .with_replication_factor(1),
    ]);
    assert_eq!(c.call(&create, 5).await.topics[0].error_code, 0);
    let produce_to =
        |p: i32, n: usize| common::produce_request("sess", p, -1, batch(n, 1_700_000_000_000));
    assert_eq!(
        c.call(&produce_to(0, 4), 9).await.responses[0].partition_responses[0].error_code,
        0
    );

    // A full fetch with epoch 0 makes a session and answers every partition.
    let all = [(0, 0), (1, 0), (2, 0)];
    let r = c.call(&session_fetch("sess", 0, 0, &all, 0), 12).await;
    assert_eq!(r.error_code, 0);
    let id = r.session_id;
    assert_ne!(id, 0, "a session was made");
    assert_eq!(answered(&r), [(0, 4), (1, 0), (2, 0)]);

    // Partition 0's new offset, nothing new anywhere: answered empty once the wait is over.
    let t = Instant::now();
    let r = c
        .call(&session_fetch("sess", id, 1, &[(0, 4)], 300), 12)
        .await;
    assert!(
        t.elapsed() >= Duration::from_millis(280),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((r.error_code, r.session_id), (0, id));
    assert_eq!(answered(&r), []);

    // Records on partition 2, with no partition named: only it is answered, early.
    let mut p = RawClient::connect(&broker.bootstrap()).await;
    let appended = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.call(&produce_to(2, 3), 9).await
    });
    let t = Instant::now();
    let r = call_within(
        &mut c,
        &session_fetch("sess", id, 2, &[], 20_000),
        12,
        77,
        Duration::from_secs(30),
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(10), "woken by the append");
    assert_eq!(
        appended.await.unwrap().responses[0].partition_responses[0].error_code,
        0
    );
    assert_eq!((r.error_code, r.session_id), (0, id));
    assert_eq!(answered(&r), [(2, 3)]);

    // Partition 2 moves on and partition 1 is forgotten: partition 0 gets new records.
    assert_eq!(
        c.call(&produce_to(0, 2), 9).await.responses[0].partition_responses[0].error_code,
        0
    );
    let mut forget = session_fetch("sess", id, 3, &[(2, 3)], 0);
    forget.forgotten_topics_data = vec![
        kafka_protocol::messages::fetch_request::ForgottenTopic::default()
            .with_topic(name("sess"))
            .with_partitions(vec![1]),
    ];
    let r = c.call(&forget, 12).await;
    assert_eq!(answered(&r), [(0, 2)]);
    let metrics = broker.broker.metrics.render(&broker.broker);
    assert!(metrics.contains("runnel_fetch_sessions 1\n"), "{metrics}");
    assert!(
        metrics.contains("runnel_fetch_session_partitions 2\n"),
        "{metrics}"
    );

    // The same epoch again, a session that does not exist, a v6 fetch: Kafka's answers.
    let r = c.call(&session_fetch("sess", id, 3, &[], 0), 12).await;
    assert_eq!(
        (r.error_code, r.session_id),
        (71, 0),
        "INVALID_FETCH_SESSION_EPOCH"
    );
    assert!(r.responses.is_empty());
    let r = c
        .call(&session_fetch("sess", id ^ 0x55, 1, &[], 0), 12)
        .await;
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    let r = c.call(&session_fetch("sess", 0, 0, &all, 0), 6).await;
    assert_eq!((r.error_code, r.session_id, answered(&r).len()), (0, 0, 3));

    // Epoch -1 closes the session and fetches in full without one.
    let r = c.call(&session_fetch("sess", id, -1, &all, 0), 12).await;
    assert_eq!((r.error_code, r.session_id), (0, 0));
    assert_eq!(answered(&r), [(0, 6), (1, 0), (2, 3)]);
    let metrics = broker.broker.metrics.render(&broker.broker);
    assert!(metrics.contains("runnel_fetch_sessions 0\n"), "{metrics}");
    broker.shutdown().await;
}

/// Produces `batches` batches of 8 records of 64 KiB of incompressible bytes (about 512 KiB
/// each) to partition 0 of `topic`.
async fn produce_incompressible(c: &mut RawClient, topic: &str, batches: i64) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for b in 0..batches {
        let records: Vec<_> = (0..8)
            .map(|i| {
                let value: Vec<u8> = (0..64 * 1024)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                common::record(i, None, &value, 1_700_000_000_000 + b)
            })
            .collect();
        produce(c, topic, common::encode_batch(&records, Compression::None)).await;
    }
}

/// A fetch of partition 0 of `topic` from offset 0, asking for up to 64 MiB at once.
fn fetch_all_of(topic: &str) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(64 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(64 << 20),
                ]),
        ])
}

/// The record bytes of the answer's first partition.
fn records_in(r: &kafka_protocol::messages::FetchResponse) -> usize {
    r.responses[0].partitions[0]
        .records
        .as_ref()
        .map_or(0, |b| b.len())
}

/// Consumers that do not read their answers hold no more than `broker.fetch_memory_bytes`
/// together (plus one batch each past it): once it is taken, an answer gets what is left, or
/// its first batch only, and a consumer that reads keeps getting data meanwhile. The memory
/// comes back as the answers are read, or their connections closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_waiting_to_be_read_share_the_brokers_fetch_memory() {
    use kafka_protocol::messages::ApiKey;
    // Answers much larger than what the kernel's socket buffers take in for a client that does
    // not read (a few MiB): they stay held until read.
    const LIMIT: usize = 24 << 20;
    const BATCH: usize = 530 << 10; // a produced batch, with its headers
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.fetch_max_bytes = 16 << 20;
    cfg.broker.fetch_memory_bytes = LIMIT as u64;
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let memory = broker.broker.fetch_memory.clone();
    let mut c = RawClient::connect(&addr).await;
    setup(&mut c, "shared").await;
    produce_incompressible(&mut c, "shared", 36).await;
    let fetches = || broker.broker.metrics.requests_of(ApiKey::Fetch);
    let req = fetch_all_of("shared");

    // Four consumers ask for everything and read nothing.
    let before = fetches();
    let mut stalled = Vec::new();
    for n in 0..4 {
        let mut s = RawClient::connect(&addr).await;
        s.send_raw(&common::request_frame(&req, 4, 100 + n, "stalled"))
            .await;
        stalled.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetches() - before < 4 {
        assert!(
            Instant::now() < deadline,
            "the four fetches were not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The two first answers fill it, each short of what it took by less than a batch.
    let held = memory.used();
    assert!(
        (LIMIT - 2 * BATCH..=LIMIT + 2 * BATCH).contains(&held),
        "the stalled answers hold {held} bytes (limit {LIMIT})"
    );
    assert!(memory.short() >= 2, "{} fetches trimmed", memory.short());

    // A consumer that reads still gets a batch each fetch meanwhile.
    let r = c.call(&req, 4).await;
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert!(
        (BATCH - (20 << 10)..=BATCH).contains(&records_in(&r)),
        "{} bytes while the memory is taken",
        records_in(&r)
    );

    // Once read, the answers give their memory back.
    let mut sizes = Vec::new();
    for (n, s) in stalled.iter_mut().enumerate() {
        let frame = s.read_frame().await.expect("an answer");
        let r = common::decode_response::<FetchRequest>(frame, 4, 100 + n as i32);
        sizes.push(records_in(&r));
    }
    let total: usize = sizes.iter().sum();
    assert!(
        total <= LIMIT + 2 * BATCH && sizes.iter().all(|&s| s >= BATCH - (20 << 10)),
        "answers of {sizes:?} bytes"
    );
    until_nothing_held(&memory).await;
    // A consumer alone gets all it may again.
    let r = c.call(&req, 4).await;
    assert!(records_in(&r) > (15 << 20), "{} bytes", records_in(&r));

    // Consumers that close without reading give it back too.
    let before = fetches();
    for s in &mut stalled[..3] {
        s.send_raw(&common::request_frame(&req, 4, 200, "stalled"))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetches() - before < 3 || memory.used() < LIMIT - 2 * BATCH {
        assert!(Instant::now() < deadline, "the fetches were not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stalled);
    until_nothing_held(&memory).await;
    broker.shutdown().await;
}

/// Waits (up to 5 s) until `memory` holds nothing.
async fn until_nothing_held(memory: &runnel::protocol::memory::Budget) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while memory.used() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} bytes still held",
            memory.used()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches sent ahead and never read hold no more than about one answer each (Kafka handles a
/// connection's next request once the previous answer is sent): the broker stops handling the
/// connection's requests while its answers wait to be written. Once the client reads, every
/// answer comes, in order, each no larger than `broker.fetch_max_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_sent_ahead_wait_for_their_answers_to_be_read() {
    use kafka_protocol::messages::ApiKey;
    const CAP: usize = 6 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.fetch_max_bytes = CAP as u64;
    let broker = common::start_with(cfg).await;
    let addr = broker.bootstrap();
    let mut c = RawClient::connect(&addr).await;
    setup(&mut c, "ahead").await;
    produce_incompressible(&mut c, "ahead", 40).await;
    let fetches = || broker.broker.metrics.requests_of(ApiKey::Fetch);
    let before = fetches();
    let mut reader = RawClient::connect(&addr).await;
    let req = fetch_all_of("ahead");
    for correlation in 0..10 {
        reader
            .send_raw(&common::request_frame(&req, 4, 100 + correlation, "ahead"))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handled = fetches() - before;
    assert!(
        (1..=3).contains(&handled),
        "{handled} of 10 fetches handled while their answers were not read"
    );
    for correlation in 0..10 {
        let frame = reader.read_frame().await.expect("an answer");
        let r = common::decode_response::<FetchRequest>(frame, 4, 100 + correlation);
        let bytes = records_in(&r);
        assert!(
            (CAP - (600 << 10)..=CAP).contains(&bytes),
            "an answer of {bytes} bytes (cap {CAP})"
        );
    }
    assert_eq!(fetches() - before, 10);
    broker.shutdown().await;
}

/// A Fetch v16 of partition 0 of the topic `id` from `offset`, on `session` at `epoch`, naming
/// leader epoch `current`; `forget` lists topic ids whose partition 0 leaves the session.
fn fetch_by_id(
    id: uuid::Uuid,
    offset: Option<i64>,
    (session, epoch): (i32, i32),
    current: i32,
    forget: &[uuid::Uuid],
) -> FetchRequest {
    let topics = offset
        .map(|offset| {
            vec![
                FetchTopic::default()
                    .with_topic_id(id)
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(current)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]
        })
        .unwrap_or_default();
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_id(session)
        .with_session_epoch(epoch)
        .with_topics(topics)
        .with_forgotten_topics_data(
            forget
                .iter()
                .map(|&id| {
                    kafka_protocol::messages::fetch_request::ForgottenTopic::default()
                        .with_topic_id(id)
                        .with_partitions(vec![0])
                })
                .collect(),
        )
}

#[tokio::test]
async fn fetch_v13_and_later_name_topics_by_id_and_a_topic_made_again_is_another() {
    use kafka_protocol::error::ResponseError as E;
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    setup(&mut c, "ids").await;
    produce(&mut c, "ids", batch(3, 1_700_000_000_000)).await;
    let id = broker.broker.catalog.get("ids").unwrap().id;
    let epoch_of = |b: &runnel::BrokerHandle| {
        let t = b.broker.catalog.get("ids").unwrap();
        t.partition(0).unwrap().leader_epoch()
    };
    let epoch = epoch_of(&broker);

    for v in 13..=16 {
        let r = c
            .call(&fetch_by_id(id, Some(0), (0, -1), epoch, &[]), v)
            .await;
        let t = &r.responses[0];
        assert_eq!((t.topic_id, t.topic.as_str()), (id, ""), "v{v}");
        assert_eq!(answered(&r), vec![(0, 3)], "v{v}");
        assert_eq!(t.partitions[0].high_watermark, 3, "v{v}");
    }

    // An id no topic has: UNKNOWN_TOPIC_ID, under that id.
    let stranger = uuid::Uuid::new_v4();
    let r = c
        .call(&fetch_by_id(stranger, Some(0), (0, -1), -1, &[]), 16)
        .await;
    assert_eq!(r.responses[0].topic_id, stranger);
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        E::UnknownTopicId.code()
    );

    // An old leader epoch (v16, KIP-951): fenced, with the leader, its epoch and its address.
    let r = c
        .call(&fetch_by_id(id, Some(0), (0, -1), epoch + 1, &[]), 16)
        .await;
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        E::UnknownLeaderEpoch.code()
    );
    drop(c);
    broker.shutdown().await;
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let r = c
        .call(&fetch_by_id(id, Some(0), (0, -1), epoch, &[]), 16)
        .await;
    let epoch = epoch_of(&broker);
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, E::FencedLeaderEpoch.code());
    assert_eq!(
        (p.current_leader.leader_id.0, p.current_leader.leader_epoch),
        (broker.broker.node_id, epoch)
    );
    let addr = broker.kafka_addr.unwrap();
    assert_eq!(
        r.node_endpoints
            .iter()
            .map(|e| (e.node_id.0, e.host.to_string(), e.port))
            .collect::<Vec<_>>(),
        [(
            broker.broker.node_id,
            addr.ip().to_string(),
            addr.port() as i32
        )]
    );

    // A session by id: made by a full fetch, then incremental fetches name only what changed.
    let r = c
        .call(&fetch_by_id(id, Some(0), (0, 0), epoch, &[]), 16)
        .await;
    let session = r.session_id;
    assert!(session > 0);
    assert_eq!(answered(&r), vec![(0, 3)]);
    // The consumer moved on to offset 3, and there is nothing there yet.
    let r = c
        .call(&fetch_by_id(id, Some(3), (session, 1), epoch, &[]), 16)
        .await;
    assert_eq!(answered(&r), vec![], "nothing new");
    produce(&mut c, "ids", batch(2, 1_700_000_000_000)).await;
    // Naming no partition: the session's offset (3) is read, and the new records come.
    let r = c
        .call(&fetch_by_id(id, None, (session, 2), epoch, &[]), 16)
        .await;
    assert_eq!((r.responses[0].topic_id, answered(&r)), (id, vec![(0, 2)]));
    // Forgetting the topic by id empties the session, which closes.
    let r = c
        .call(&fetch_by_id(id, None, (session, 3), epoch, &[id]), 16)
        .await;
    assert_eq!((r.error_code, r.session_id, r.responses.len()), (0, 0, 0));
    assert_eq!(broker.broker.fetch_sessions.counts(), (0, 0));

    // A session holding the topic when it is deleted and made again under its name: the old
    // id is no topic any more, so the consumer is told (UNKNOWN_TOPIC_ID) instead of reading
    // the new topic at the old one's offsets, and it can forget the old id.
    let r = c
        .call(&fetch_by_id(id, Some(5), (0, 0), epoch, &[]), 16)
        .await;
    let session = r.session_id;
    assert!(session > 0);
    c.delete_topic("ids").await;
    setup(&mut c, "ids").await;
    produce(&mut c, "ids", batch(8, 1_700_000_000_000)).await;
    let again = broker.broker.catalog.get("ids").unwrap().id;
    assert_ne!(again, id);
    let r = c
        .call(&fetch_by_id(id, None, (session, 1), epoch, &[]), 16)
        .await;
    assert_eq!(
        (
            r.responses[0].topic_id,
            r.responses[0].partitions[0].error_code,
            answered(&r)
        ),
        (id, E::UnknownTopicId.code(), vec![(0, 0)])
    );
    let r = c
        .call(&fetch_by_id(again, Some(0), (session, 2), -1, &[id]), 16)
        .await;
    assert_eq!(r.session_id, session);
    assert_eq!(
        (r.responses[0].topic_id, answered(&r)),
        (again, vec![(0, 8)])
    );
    assert_eq!(
        broker.broker.fetch_sessions.counts(),
        (1, 1),
        "the old id is forgotten"
    );
    // Without a session, the same.
    let r = c
        .call(&fetch_by_id(id, Some(5), (0, -1), -1, &[]), 16)
        .await;
    assert_eq!(
        (
            r.responses[0].topic_id,
            r.responses[0].partitions[0].error_code
        ),
        (id, E::UnknownTopicId.code())
    );
    broker.shutdown().await;
}
