//! Leader epochs (KIP-101, KIP-320) with a real broker on real sockets: every start leads at a
//! new epoch, stamped into the batches it appends; Metadata and ListOffsets report epochs;
//! OffsetForLeaderEpoch says where each epoch's records end; requests naming an older or newer
//! epoch are fenced; and librdkafka consumers ride out the change of epoch at a restart.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::RawClient;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// A batch of `n` records whose header carries `epoch` as its partitionLeaderEpoch, as a
/// producer may send any value there.
fn batch(n: usize, first_ts: i64, epoch: i32) -> Bytes {
    let records: Vec<_> = (0..n)
        .map(|i| common::record(i as i64, None, b"v", first_ts + i as i64))
        .collect();
    let mut b = common::encode_batch(&records, Compression::None).to_vec();
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    Bytes::from(b)
}

async fn produce(c: &mut RawClient, topic: &str, records: Bytes) {
    let r = c
        .call(&common::produce_request(topic, 0, -1, records), 9)
        .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
}

async fn metadata_epoch(c: &mut RawClient, topic: &str) -> i32 {
    let r = c
        .call(
            &MetadataRequest::default().with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(name(topic))),
            ])),
            12,
        )
        .await;
    r.topics[0].partitions[0].leader_epoch
}

/// OffsetForLeaderEpoch v4 for partition 0 of `topic`: (error, epoch, end offset).
async fn end_of_epoch(c: &mut RawClient, topic: &str, current: i32, epoch: i32) -> (i16, i32, i64) {
    let r = c
        .call(
            &OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    OffsetForLeaderTopic::default()
                        .with_topic(name(topic))
                        .with_partitions(vec![
                            OffsetForLeaderPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(current)
                                .with_leader_epoch(epoch),
                        ]),
                ]),
            4,
        )
        .await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

/// Fetch v12 of partition 0 of `topic` from offset 0 naming `current`: (error, the base offset
/// and epoch of every batch), fetching on while batches come.
async fn fetch_epochs(c: &mut RawClient, topic: &str, current: i32) -> (i16, Vec<(i64, i32)>) {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let (error, batches) = fetch_from(c, topic, current, from).await;
        if error != 0 || batches.is_empty() {
            return (error, out);
        }
        from = batches.last().unwrap().2;
        out.extend(batches.iter().map(|&(base, epoch, _)| (base, epoch)));
    }
}

/// One Fetch v12 of partition 0 of `topic` from `offset` naming `current`: (error, the base
/// offset, epoch and next offset of each batch returned).
async fn fetch_from(
    c: &mut RawClient,
    topic: &str,
    current: i32,
    offset: i64,
) -> (i16, Vec<(i64, i32, i64)>) {
    let r = c
        .call(
            &FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_max_bytes(1 << 20)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(name(topic))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(current)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]),
            12,
        )
        .await;
    let p = &r.responses[0].partitions[0];
    let records = p.records.clone().unwrap_or_default();
    let epochs = runnel::storage::headers(&records)
        .map(|h| (h.base_offset, h.partition_leader_epoch, h.next_offset()))
        .collect();
    (p.error_code, epochs)
}

/// ListOffsets v7 of partition 0 of `topic` at `timestamp` naming `current`: (error, offset,
/// epoch).
async fn list_offset(
    c: &mut RawClient,
    topic: &str,
    current: i32,
    timestamp: i64,
) -> (i16, i64, i32) {
    let r = c
        .call(
            &ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(vec![
                            ListOffsetsPartition::default()
                                .with_partition_index(0)
                                .with_current_leader_epoch(current)
                                .with_timestamp(timestamp),
                        ]),
                ]),
            7,
        )
        .await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset, p.leader_epoch)
}

#[tokio::test]
async fn every_start_leads_at_a_new_epoch_that_offset_for_leader_epoch_answers_for() {
    let dir = tempfile::tempdir().unwrap();
    let fenced = E::FencedLeaderEpoch.code();
    let unknown = E::UnknownLeaderEpoch.code();

    // First start: epoch 0; a topic made now leads at the next one, 1, stamped over whatever
    // the producer wrote.
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    assert_eq!(broker.broker.catalog.leader_epoch(), 0);
    let r = c
        .call(
            &CreateTopicsRequest::default().with_topics(vec![
                kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                    .with_name(name("t"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ]),
            5,
        )
        .await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(metadata_epoch(&mut c, "t").await, 1);
    produce(&mut c, "t", batch(2, 1_000, 42)).await;
    assert_eq!(end_of_epoch(&mut c, "t", 1, 1).await, (0, 1, 2));
    broker.shutdown().await;

    // Second start: epoch 2 for every topic, which begins at the log end before anything is
    // written.
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    assert_eq!(metadata_epoch(&mut c, "t").await, 2);
    assert_eq!(end_of_epoch(&mut c, "t", 2, 2).await, (0, 2, 2));
    produce(&mut c, "t", batch(3, 2_000, -1)).await;
    assert_eq!(
        fetch_epochs(&mut c, "t", 2).await,
        (0, vec![(0, 1), (2, 2)])
    );
    assert_eq!(fetch_epochs(&mut c, "t", -1).await.0, 0);
    // Where each epoch's records end; for one older than any, where the first began; for an
    // epoch newer than any, nothing.
    assert_eq!(end_of_epoch(&mut c, "t", 2, 0).await, (0, 0, 0));
    assert_eq!(end_of_epoch(&mut c, "t", 2, 1).await, (0, 1, 2));
    assert_eq!(end_of_epoch(&mut c, "t", 2, 2).await, (0, 2, 5));
    assert_eq!(end_of_epoch(&mut c, "t", -1, 2).await, (0, 2, 5));
    assert_eq!(end_of_epoch(&mut c, "t", 2, 3).await, (0, -1, -1));
    // ListOffsets names the epoch of what it finds.
    assert_eq!(list_offset(&mut c, "t", 2, -2).await, (0, 0, 1));
    assert_eq!(list_offset(&mut c, "t", 2, -1).await, (0, 5, 2));
    assert_eq!(list_offset(&mut c, "t", 2, 1_001).await, (0, 1, 1));
    assert_eq!(list_offset(&mut c, "t", 2, 2_000).await, (0, 2, 2));
    // A client that knows an older epoch (stale metadata) or a newer one is refused.
    assert_eq!(fetch_epochs(&mut c, "t", 1).await, (fenced, vec![]));
    assert_eq!(fetch_epochs(&mut c, "t", 3).await, (unknown, vec![]));
    assert_eq!(list_offset(&mut c, "t", 1, -1).await.0, fenced);
    assert_eq!(list_offset(&mut c, "t", 3, -1).await.0, unknown);
    assert_eq!(end_of_epoch(&mut c, "t", 1, 1).await, (fenced, -1, -1));
    assert_eq!(end_of_epoch(&mut c, "t", 3, 1).await, (unknown, -1, -1));
    broker.shutdown().await;

    // A third start with nothing written in epoch 2's place: epoch 3, and the answers hold.
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    assert_eq!(metadata_epoch(&mut c, "t").await, 3);
    assert_eq!(end_of_epoch(&mut c, "t", 3, 2).await, (0, 2, 5));
    assert_eq!(end_of_epoch(&mut c, "t", 3, 3).await, (0, 3, 5));
    // A topic made now (auto-created) leads at a later epoch than every topic before it.
    assert_eq!(metadata_epoch(&mut c, "fresh").await, 4);
    produce(&mut c, "fresh", batch(1, 3_000, 0)).await;
    assert_eq!(fetch_epochs(&mut c, "fresh", 4).await, (0, vec![(0, 4)]));
    assert_eq!(metadata_epoch(&mut c, "t").await, 3);
    assert_eq!(broker.broker.catalog.leader_epoch(), 4);
    broker.shutdown().await;
}

/// Reads `want` messages from `consumer`, failing on any error it reports.
fn read_values(consumer: &rdkafka::consumer::BaseConsumer, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want {
        assert!(Instant::now() < deadline, "read only {out:?}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned()),
            // A broker restarting, or a topic gone a moment, is reported and passed over.
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                            | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                            | rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                            | rdkafka::types::RDKafkaErrorCode::UnknownTopic
                            | rdkafka::types::RDKafkaErrorCode::UnknownTopicId
                    )
                ) => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

async fn produce_values(bootstrap: &str, topic: &str, values: std::ops::Range<usize>) {
    let producer: FutureProducer = common::client_config(bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    for i in values {
        let v = format!("v-{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(&v),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_consumer_reads_on_across_the_new_epoch_of_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = || {
        let mut cfg = common::test_config(dir.path());
        cfg.listeners.kafka.address = format!("127.0.0.1:{port}").parse().unwrap();
        cfg
    };
    let broker = common::start_with(config()).await;
    let bootstrap = broker.bootstrap();
    produce_values(&bootstrap, "t", 0..10).await;
    let consumer = common::reader(&bootstrap, "t");
    let first = read_values(&consumer, 10);
    assert_eq!(first, (0..10).map(|i| format!("v-{i}")).collect::<Vec<_>>());

    broker.shutdown().await;
    let broker = common::start_with(config()).await;
    produce_values(&bootstrap, "t", 10..20).await;
    // The consumer's next fetch names epoch 0 and is fenced; it reads the new epoch from
    // Metadata, checks its position against it and reads on: nothing missed, nothing twice.
    let rest = read_values(&consumer, 10);
    assert_eq!(rest, (10..20).map(|i| format!("v-{i}")).collect::<Vec<_>>());
    assert!(
        broker
            .broker
            .metrics
            .requests_of(ApiKey::OffsetForLeaderEpoch)
            > 0,
        "librdkafka did not check its position against the new epoch"
    );
    // Nothing more comes.
    assert!(
        consumer
            .poll(Duration::from_millis(500))
            .is_none_or(|m| m.is_err())
    );
    drop(consumer);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_a_topic_deleted_and_made_again_reads_the_new_one_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    let mut c = RawClient::connect(&bootstrap).await;
    let create = || {
        CreateTopicsRequest::default().with_topics(vec![
            kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                .with_name(name("again"))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])
    };
    assert_eq!(c.call(&create(), 5).await.topics[0].error_code, 0);
    let first = metadata_epoch(&mut c, "again").await;
    produce_values(&bootstrap, "again", 0..100).await;
    let consumer = common::reader(&bootstrap, "again");
    assert_eq!(read_values(&consumer, 100).len(), 100);

    // Made again under its name, with more records than the consumer had read of the old one.
    c.delete_topic("again").await;
    assert_eq!(c.call(&create(), 5).await.topics[0].error_code, 0);
    // A topic made while the broker runs leads at a later epoch than the topics before it,
    // so that clients see the change of topic as a change of leader epoch.
    let second = metadata_epoch(&mut c, "again").await;
    assert!(second > first, "{second} after {first}");
    produce_values(&bootstrap, "again", 100..300).await;
    // The consumer, at offset 100 of the old topic, checks its position against the new
    // one (its epoch changed) and goes back to offset 0: it reads every record of it.
    let read = read_values(&consumer, 200);
    assert_eq!(
        read,
        (100..300).map(|i| format!("v-{i}")).collect::<Vec<_>>()
    );
    drop(consumer);
    broker.shutdown().await;
}
