//! Admin: health and Prometheus metrics over HTTP reflect real traffic; DescribeLogDirs reports
//! the data dir and each partition's bytes on disk.

mod common;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: runnel\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A broker in `dir` with its admin HTTP listener on a free port, and that port's address.
async fn with_admin_listener(
    dir: &std::path::Path,
) -> (runnel::BrokerHandle, std::net::SocketAddr) {
    let mut cfg = common::test_config(dir);
    cfg.listeners.admin.enabled = true;
    cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
    let broker = common::start_with(cfg).await;
    let admin = broker.admin_addr.unwrap();
    (broker, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_report_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = with_admin_listener(dir.path()).await;
    assert!(get(admin, "/health").await.starts_with("HTTP/1.1 200"));

    let p: FutureProducer = common::client_config(&broker.bootstrap()).create().unwrap();
    for i in 0..7 {
        p.send(
            FutureRecord::<(), _>::to("metered")
                .payload(&format!("r{i}"))
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let m = get(admin, "/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("runnel_log_end_offset{topic=\"metered\",partition=\"0\"} 7"),
        "{m}"
    );
    assert!(m.contains("runnel_records_in_total 7"), "{m}");
    assert!(m.contains("runnel_requests_total{api=\"Produce\"}"), "{m}");
    assert!(m.contains("runnel_connections_open "), "{m}");
    // The process's own figures, under the names Prometheus' client libraries use.
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(m.contains(&format!("\n{family} ")), "{family} missing: {m}");
    }

    // A group that committed offset 3 of the 7: its committed offset and lag 4, and no members
    // once its consumer is gone.
    {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let c: BaseConsumer = common::client_config(&broker.bootstrap())
            .set("group.id", "dash\"board")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("metered", 0, rdkafka::Offset::Offset(3))
            .unwrap();
        tokio::task::block_in_place(|| c.commit(&tpl, CommitMode::Sync)).unwrap();
    }
    let m = get(admin, "/metrics").await;
    let labels = r#"{group="dash\"board",topic="metered",partition="0"}"#;
    assert!(
        m.contains(&format!("runnel_group_committed_offset{labels} 3")),
        "{m}"
    );
    assert!(m.contains(&format!("runnel_group_lag{labels} 4")), "{m}");
    assert!(
        m.contains(r#"runnel_group_members{group="dash\"board"} 0"#),
        "{m}"
    );
    assert!(get(admin, "/nope").await.starts_with("HTTP/1.1 404"));
    broker.shutdown().await;
}

/// Bytes of the `.log` segment files in `dir`: what a partition's log takes on disk.
fn segment_bytes(dir: &std::path::Path) -> i64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len() as i64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_log_dirs_reports_the_data_dir_and_partition_sizes() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    use kafka_protocol::messages::describe_log_dirs_response::DescribeLogDirsResult;
    use kafka_protocol::messages::{CreateTopicsRequest, DescribeLogDirsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn name(t: &str) -> TopicName {
        TopicName(StrBytes::from_string(t.to_string()))
    }
    /// (topic, partition, size, offset lag, is future) of each partition in `result`.
    fn sizes(result: &DescribeLogDirsResult) -> Vec<(String, i32, i64, i64, bool)> {
        result
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        t.name.to_string(),
                        p.partition_index,
                        p.partition_size,
                        p.offset_lag,
                        p.is_future_key,
                    )
                })
            })
            .collect()
    }

    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = common::RawClient::connect(&broker.bootstrap()).await;
    let create = CreateTopicsRequest::default().with_topics(vec![
        CreatableTopic::default()
            .with_name(name("disk-a"))
            .with_num_partitions(2)
            .with_replication_factor(1),
        CreatableTopic::default()
            .with_name(name("disk-b"))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    let r = c.call(&create, 5).await;
    assert!(r.topics.iter().all(|t| t.error_code == 0), "{r:?}");
    for (topic, partition, n) in [("disk-a", 0, 3), ("disk-a", 1, 1), ("disk-b", 0, 2)] {
        let records: Vec<_> = (0..n)
            .map(|i| common::record(i, None, b"reading", 1_700_000_000_000))
            .collect();
        let batch = common::encode_batch(&records, kafka_protocol::records::Compression::None);
        let r = c
            .call(&common::produce_request(topic, partition, -1, batch), 9)
            .await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let on_disk = |topic: &str, partition: i32| {
        let size = segment_bytes(&dir.path().join(format!("{topic}-{partition}")));
        assert!(size > 0, "{topic}-{partition} holds records");
        size
    };
    let log_dir = std::path::absolute(dir.path()).unwrap();

    let asked = |topics: &[(&str, &[i32])]| {
        DescribeLogDirsRequest::default().with_topics(Some(
            topics
                .iter()
                .map(|(t, ps)| {
                    DescribableLogDirTopic::default()
                        .with_topic(name(t))
                        .with_partitions(ps.to_vec())
                })
                .collect(),
        ))
    };
    for v in 1..=4 {
        // Null: every partition of every topic, each with its log's bytes on disk.
        let r = c
            .call(&DescribeLogDirsRequest::default().with_topics(None), v)
            .await;
        assert_eq!(r.error_code, 0, "v{v}");
        assert_eq!(r.results.len(), 1, "v{v}: one log dir");
        let result = &r.results[0];
        assert_eq!(result.error_code, 0, "v{v}");
        assert_eq!(result.log_dir.as_str(), log_dir.to_str().unwrap(), "v{v}");
        if v >= 4 {
            // The data dir's file system: its size, and what is free of it.
            let (total, usable) = (result.total_bytes, result.usable_bytes);
            assert!(
                total > 0 && (0..=total).contains(&usable),
                "v{v}: {total} {usable}"
            );
        } else {
            assert_eq!((result.total_bytes, result.usable_bytes), (-1, -1), "v{v}");
        }
        let mut all = sizes(result);
        all.sort();
        assert_eq!(
            all,
            vec![
                ("disk-a".to_string(), 0, on_disk("disk-a", 0), 0, false),
                ("disk-a".to_string(), 1, on_disk("disk-a", 1), 0, false),
                ("disk-b".to_string(), 0, on_disk("disk-b", 0), 0, false),
            ],
            "v{v}"
        );

        // Named: only what was asked for and exists; an unknown topic, an unknown partition and
        // a topic with no partitions asked for are left out; a partition asked twice is one.
        let r = c
            .call(
                &asked(&[
                    ("disk-a", &[1, 7, 1]),
                    ("no-such-topic", &[0]),
                    ("disk-b", &[]),
                ]),
                v,
            )
            .await;
        assert_eq!(r.results.len(), 1, "v{v}");
        assert_eq!(
            sizes(&r.results[0]),
            vec![("disk-a".to_string(), 1, on_disk("disk-a", 1), 0, false)],
            "v{v}"
        );
        assert_eq!(r.results[0].topics.len(), 1, "v{v}");

        // Empty: no topics, but still the log dir.
        let r = c.call(&asked(&[]), v).await;
        assert_eq!(r.results.len(), 1, "v{v}");
        assert_eq!(r.results[0].error_code, 0, "v{v}");
        assert_eq!(r.results[0].log_dir.as_str(), log_dir.to_str().unwrap());
        assert!(r.results[0].topics.is_empty(), "v{v}: {:?}", r.results[0]);
    }
    broker.shutdown().await;
}

/// CreateTopics and CreatePartitions take replica assignments only where the partitions are
/// (each on every broker: this one alone here) and in the shape Kafka asks for; anything else
/// is INVALID_REPLICA_ASSIGNMENT (or INVALID_REQUEST) and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_assignments_are_checked_as_kafka_checks_them() {
    use kafka_protocol::messages::create_partitions_request::{
        CreatePartitionsAssignment, CreatePartitionsTopic,
    };
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic,
    };
    use kafka_protocol::messages::{
        BrokerId, CreatePartitionsRequest, CreateTopicsRequest, MetadataRequest, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = common::RawClient::connect(&broker.bootstrap()).await;
    let name = |t: &str| TopicName(StrBytes::from_string(t.to_string()));
    let on = |ids: &[i32]| ids.iter().map(|&i| BrokerId(i)).collect::<Vec<_>>();
    let me = broker.broker.node_id;
    let assigned = |partitions: &[i32]| {
        partitions
            .iter()
            .map(|&p| {
                CreatableReplicaAssignment::default()
                    .with_partition_index(p)
                    .with_broker_ids(on(&[me]))
            })
            .collect::<Vec<_>>()
    };
    let mut create = async |topic: &str, assignments, partitions: i32| {
        let r = c
            .call(
                &CreateTopicsRequest::default().with_topics(vec![
                    CreatableTopic::default()
                        .with_name(name(topic))
                        .with_num_partitions(partitions)
                        .with_replication_factor(-1)
                        .with_assignments(assignments),
                ]),
                5,
            )
            .await;
        (r.topics[0].error_code, r.topics[0].num_partitions)
    };
    // A gap in the partitions, or a count that contradicts the assignments: refused.
    assert_eq!(create("gap", assigned(&[0, 2]), -1).await.0, 39);
    assert_eq!(create("both", assigned(&[0, 1]), 3).await.0, 42);
    assert_eq!(create("assigned", assigned(&[0, 1]), -1).await, (0, 2));

    let mut grow = async |count: i32, assignments: Option<Vec<&[i32]>>| {
        let assignments = assignments.map(|a| {
            a.into_iter()
                .map(|ids| CreatePartitionsAssignment::default().with_broker_ids(on(ids)))
                .collect()
        });
        let r = c
            .call(
                &CreatePartitionsRequest::default()
                    .with_timeout_ms(5000)
                    .with_topics(vec![
                        CreatePartitionsTopic::default()
                            .with_name(name("assigned"))
                            .with_count(count)
                            .with_assignments(assignments),
                    ]),
                2,
            )
            .await;
        r.results[0].error_code
    };
    // A broker that does not exist, one assignment too many: refused, nothing added.
    assert_eq!(grow(3, Some(vec![&[9]])).await, 39);
    assert_eq!(grow(3, Some(vec![&[me], &[me]])).await, 39);
    assert_eq!(grow(3, Some(vec![&[me]])).await, 0);
    let md = c
        .call(
            &MetadataRequest::default().with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(name("assigned"))),
            ])),
            9,
        )
        .await;
    assert_eq!(md.topics[0].partitions.len(), 3);
    broker.shutdown().await;
}

/// A request naming a topic or resource twice, a topic by both name and id (or neither), or a
/// config with a null value is refused with INVALID_REQUEST (INVALID_CONFIG for CreateTopics'
/// null values) and changes nothing, as Kafka's controller refuses them; a broker resource
/// answers for this broker only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_contradictory_admin_requests_are_refused_and_change_nothing() {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{
        AlterConfigsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
        DescribeConfigsRequest, IncrementalAlterConfigsRequest, TopicName, alter_configs_request,
        incremental_alter_configs_request as inc,
    };
    use kafka_protocol::protocol::StrBytes;

    const INVALID_REQUEST: i16 = 42;
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let catalog = &broker.broker.catalog;
    let mut c = common::RawClient::connect(&broker.bootstrap()).await;
    let s = |t: &str| StrBytes::from_string(t.to_string());
    let name = |t: &str| TopicName(s(t));
    let topic = |t: &str, partitions: i32| {
        CreatableTopic::default()
            .with_name(name(t))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
    };
    let create = CreateTopicsRequest::default().with_topics(vec![
        topic("twice", 1),
        topic("once", 2),
        topic("twice", 3),
    ]);
    let r = c.call(&create, 7).await;
    let answers: Vec<(&str, i16)> = r
        .topics
        .iter()
        .map(|t| (t.name.as_str(), t.error_code))
        .collect();
    assert_eq!(answers, [("twice", INVALID_REQUEST), ("once", 0)]);
    assert!(catalog.get("twice").is_none(), "neither entry made");
    let null = topic("null-config", 1).with_configs(vec![
        CreatableTopicConfig::default()
            .with_name(s("retention.ms"))
            .with_value(None),
    ]);
    let r = c
        .call(&CreateTopicsRequest::default().with_topics(vec![null]), 7)
        .await;
    assert_eq!(r.topics[0].error_code, 40, "INVALID_CONFIG");
    assert!(catalog.get("null-config").is_none());
    // An INT config past i32::MAX is refused, as Kafka refuses it; i32::MAX is taken.
    for (value, code) in [("2147483648", 40), ("2147483647", 0)] {
        let t = topic("int-config", 1).with_configs(vec![
            CreatableTopicConfig::default()
                .with_name(s("segment.bytes"))
                .with_value(Some(s(value))),
        ]);
        let r = c
            .call(&CreateTopicsRequest::default().with_topics(vec![t]), 7)
            .await;
        assert_eq!(r.topics[0].error_code, code, "segment.bytes={value}");
        let message = r.topics[0].error_message.as_deref().unwrap_or_default();
        assert!(code == 0 || message.contains("type INT"), "{message}");
        assert_eq!(catalog.get("int-config").is_some(), code == 0);
    }

    let grow = |count| {
        CreatePartitionsTopic::default()
            .with_name(name("once"))
            .with_count(count)
    };
    let r = c
        .call(
            &CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![grow(3), grow(4)]),
            3,
        )
        .await;
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].error_code, INVALID_REQUEST);
    assert_eq!(catalog.get("once").unwrap().partition_count(), 2);

    // A topic id that is not the topic's (it was made again since) beside its name: the topic
    // made since is not deleted. Neither a name nor an id, or a name given twice: refused.
    let id = catalog.get("once").unwrap().id;
    let by = |n: Option<&str>, id| {
        DeleteTopicState::default()
            .with_name(n.map(name))
            .with_topic_id(id)
    };
    for (states, what) in [
        (
            vec![by(Some("once"), uuid::Uuid::new_v4())],
            "name and a stale id",
        ),
        (vec![by(Some("once"), id)], "name and its id"),
        (vec![by(None, uuid::Uuid::nil())], "neither"),
        (
            vec![
                by(Some("once"), uuid::Uuid::nil()),
                by(Some("once"), uuid::Uuid::nil()),
            ],
            "the name twice",
        ),
        (vec![by(None, id), by(None, id)], "the id twice"),
    ] {
        let r = c
            .call(&DeleteTopicsRequest::default().with_topics(states), 6)
            .await;
        assert_eq!(r.responses.len(), 1, "{what}");
        assert_eq!(r.responses[0].error_code, INVALID_REQUEST, "{what}");
        assert!(catalog.get("once").is_some(), "{what}: deleted");
    }

    // Configs: a resource twice, a key twice, a null value to SET.
    let altered = |op: i8, key: &str, value: Option<&str>| {
        inc::AlterableConfig::default()
            .with_name(s(key))
            .with_config_operation(op)
            .with_value(value.map(s))
    };
    let resource = |configs| {
        inc::AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s("once"))
            .with_configs(configs)
    };
    let set = |v: &str| altered(0, "retention.ms", Some(v));
    for (resources, what) in [
        (
            vec![resource(vec![set("1000")]), resource(vec![set("2000")])],
            "resource twice",
        ),
        (vec![resource(vec![set("1000"), set("2000")])], "key twice"),
        (
            vec![resource(vec![altered(0, "retention.ms", None)])],
            "null value",
        ),
    ] {
        let r = c
            .call(
                &IncrementalAlterConfigsRequest::default().with_resources(resources),
                1,
            )
            .await;
        assert_eq!(r.responses.len(), 1, "{what}");
        assert_eq!(r.responses[0].error_code, INVALID_REQUEST, "{what}");
    }
    assert_eq!(catalog.get("once").unwrap().configs().len(), 0);
    // AlterConfigs (not incremental) of topic "once" with one config.
    let replace_config = |key: &str, value: Option<&str>| {
        AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("once"))
                .with_configs(vec![
                    alter_configs_request::AlterableConfig::default()
                        .with_name(s(key))
                        .with_value(value.map(s)),
                ]),
        ])
    };
    // With an override, AlterConfigs' null value does not remove it.
    let r = c
        .call(
            &IncrementalAlterConfigsRequest::default()
                .with_resources(vec![resource(vec![set("5000")])]),
            1,
        )
        .await;
    assert_eq!(r.responses[0].error_code, 0);
    let r = c.call(&replace_config("retention.ms", None), 1).await;
    assert_eq!(r.responses[0].error_code, INVALID_REQUEST);
    assert_eq!(
        catalog
            .get("once")
            .unwrap()
            .configs()
            .get("retention.ms")
            .map(String::as_str),
        Some("5000")
    );
    let too_large = "2147483648";
    let r = c
        .call(
            &IncrementalAlterConfigsRequest::default().with_resources(vec![resource(vec![
                altered(0, "max.message.bytes", Some(too_large)),
            ])]),
            1,
        )
        .await;
    assert_eq!(r.responses[0].error_code, 40, "INVALID_CONFIG");
    let r = c
        .call(&replace_config("index.interval.bytes", Some(too_large)), 1)
        .await;
    assert_eq!(r.responses[0].error_code, 40, "INVALID_CONFIG");
    assert_eq!(catalog.get("once").unwrap().configs().len(), 1);
    // A value an earlier build stored (or a follower copies from such a leader) is still taken.
    catalog
        .alter_configs(
            "once",
            vec![runnel::catalog::ConfigChange::Set(
                "segment.bytes".to_string(),
                too_large.to_string(),
            )],
            true,
            false,
        )
        .unwrap();

    // Broker configs: this broker's id, or "" (the cluster's defaults); another id or a name
    // that is no id is refused.
    let me = broker.broker.node_id;
    for (resource_name, code) in [
        (me.to_string(), 0),
        (String::new(), 0),
        ((me + 6).to_string(), INVALID_REQUEST),
        ("abc".to_string(), INVALID_REQUEST),
    ] {
        let r = c
            .call(
                &DescribeConfigsRequest::default().with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s(&resource_name)),
                ]),
                4,
            )
            .await;
        assert_eq!(r.results[0].error_code, code, "broker {resource_name:?}");
        // "" asks for the cluster's dynamic defaults, as kafka-configs --entity-default does:
        // none here, where the broker's configs are its config file's.
        let configs = r.results[0].configs.len();
        match resource_name.as_str() {
            "" => assert_eq!(configs, 0),
            name if name == me.to_string() => assert!(configs > 50, "{configs}"),
            _ => {}
        }
    }

    // A topic by its id alone, and by name and id in another entry: the second is refused for
    // naming both, the first deletes the topic (not a duplicate, as Kafka counts them).
    let id = catalog.get("once").unwrap().id;
    let r = c
        .call(
            &DeleteTopicsRequest::default().with_topics(vec![by(None, id), by(Some("once"), id)]),
            6,
        )
        .await;
    let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, [0, INVALID_REQUEST]);
    assert!(catalog.get("once").is_none());
    broker.shutdown().await;
}

/// Once an fsync of a partition's data fails, what was acknowledged since the last good one may
/// not be on the disk whatever a later fsync says: the partition refuses writes and reads
/// (KAFKA_STORAGE_ERROR, with the reason) instead of acknowledging more, and `/health` reports
/// the failure (`runnel serve` then stops, as Kafka halts). The failure is injected where an
/// fsync's error enters the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_writes_and_reads_and_makes_the_broker_unhealthy() {
    use kafka_protocol::messages::FetchRequest;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use runnel::storage::StorageError;

    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = with_admin_listener(dir.path()).await;
    let mut c = common::RawClient::connect(&broker.bootstrap()).await;
    let produce = || {
        let records = [common::record(0, None, b"r", 1_700_000_000_000)];
        let batch = common::encode_batch(&records, kafka_protocol::records::Compression::None);
        common::produce_request("synced", 0, -1, batch)
    };
    let now = runnel::broker::now_ms();
    let catalog = &broker.broker.catalog;
    catalog
        .create_topic("synced", 1, 1, Default::default(), false, now)
        .unwrap();
    let r = c.call(&produce(), 9).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert!(get(admin, "/health").await.starts_with("HTTP/1.1 200"));

    let p = broker
        .broker
        .catalog
        .get("synced")
        .unwrap()
        .partition(0)
        .unwrap();
    p.log().note_error(StorageError::Sync {
        path: dir.path().join("synced-0/00000000000000000000.log"),
        source: std::io::Error::from_raw_os_error(libc::EIO),
    });
    let r = c.call(&produce(), 9).await;
    let refused = &r.responses[0].partition_responses[0];
    assert_eq!(refused.error_code, 56, "KAFKA_STORAGE_ERROR");
    let why = refused.error_message.as_deref().unwrap_or_default();
    assert!(
        why.contains("fsync of") && why.contains("restarted"),
        "{why}"
    );
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("synced"),
                ))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let r = c.call(&fetch, 12).await;
    assert_eq!(r.responses[0].partitions[0].error_code, 56);
    assert_eq!(
        p.log().log_end_offset(),
        1,
        "nothing written after the failure"
    );
    // The flusher notices within its tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let h = get(admin, "/health").await;
        if h.starts_with("HTTP/1.1 503") || std::time::Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains("storage failed: synced-0"),
        "{health}"
    );
    assert!(broker.broker.storage_failure.borrow().is_some());
    broker.shutdown().await;
}

/// The admin listener holds at most 64 connections, closing one more at once, and closes a
/// connection that stops sending (here after `connections_max_idle`, 1 s): a hung scraper or
/// a half-open probe cannot take the file descriptors the Kafka side needs (QA held 1,100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_bounds_its_connections_and_closes_idle_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.admin.enabled = true;
    cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
    cfg.broker.connections_max_idle = Duration::from_secs(1);
    let broker = common::start_with(cfg).await;
    let admin = broker.admin_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // The 65th is closed as soon as it is accepted: well before the 1 s idle close.
    let mut extra = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf))
        .await
        .expect("closed at once, not when idle");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The half-sent requests are closed once idle; then a probe is served again.
    for s in &mut held {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed when idle");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    assert!(get(admin, "/health").await.starts_with("HTTP/1.1 200"));
    broker.shutdown().await;
}

/// A data directory removed under the running broker (an unmounted card, an `rm -rf`) makes
/// `/health` 503: what is written after it is lost at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_when_the_data_directory_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (broker, admin) = with_admin_listener(&data).await;
    assert!(get(admin, "/health").await.starts_with("HTTP/1.1 200"));
    std::fs::remove_dir_all(&data).unwrap();
    let health = get(admin, "/health").await;
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains("is gone"),
        "{health}"
    );
    broker.shutdown().await;
}

/// Config changes of one topic sent at the same moment over many connections each hold (none
/// is written over by another built on an older state), and a topic deleted while its configs
/// are being changed stays deleted, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_sent_at_once_all_hold_and_a_deleted_topic_stays_deleted() {
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    use kafka_protocol::messages::incremental_alter_configs_request as inc;
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    let s = |t: &str| StrBytes::from_string(t.to_string());
    let set = |topic: &str, key: &str, value: String| {
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            inc::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(topic))
                .with_configs(vec![
                    inc::AlterableConfig::default()
                        .with_name(s(key))
                        .with_config_operation(0)
                        .with_value(Some(s(&value))),
                ]),
        ])
    };
    let mut admin = common::RawClient::connect(&bootstrap).await;
    admin.create_topic("racing").await;
    const KEYS: [&str; 8] = [
        "retention.ms",
        "retention.bytes",
        "segment.ms",
        "segment.bytes",
        "max.message.bytes",
        "delete.retention.ms",
        "min.insync.replicas",
        "message.timestamp.type",
    ];
    let value = |key: &str, round: usize| match key {
        "min.insync.replicas" => (1 + round % 2).to_string(),
        "message.timestamp.type" if round.is_multiple_of(2) => "LogAppendTime".to_string(),
        "message.timestamp.type" => "CreateTime".to_string(),
        _ => (10_000_000 + round).to_string(),
    };
    let mut clients = Vec::new();
    for _ in KEYS {
        clients.push(common::RawClient::connect(&bootstrap).await);
    }
    for round in 0..10 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(KEYS.len()));
        let sent: Vec<_> = clients
            .into_iter()
            .zip(KEYS)
            .map(|(mut c, key)| {
                let (barrier, request) = (barrier.clone(), set("racing", key, value(key, round)));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let r = c.call(&request, 1).await;
                    assert_eq!(r.responses[0].error_code, 0, "{key}");
                    c
                })
            })
            .collect();
        clients = Vec::new();
        for task in sent {
            clients.push(task.await.unwrap());
        }
        let configs = broker.broker.catalog.get("racing").unwrap().configs();
        for key in KEYS {
            assert_eq!(
                configs.get(key),
                Some(&value(key, round)),
                "round {round}: {key} lost ({configs:?})"
            );
        }
    }

    // Deleted while six connections keep changing its configs.
    for t in 0..20 {
        admin.create_topic(&format!("doomed-{t}")).await;
    }
    for t in 0..20 {
        let topic = format!("doomed-{t}");
        let busy = clients
            .drain(..6)
            .zip(KEYS)
            .map(|(mut c, key)| {
                let request = set(&topic, key, value(key, 0));
                tokio::spawn(async move {
                    // Until the topic is gone: UNKNOWN_TOPIC_OR_PARTITION.
                    loop {
                        match c.call(&request, 1).await.responses[0].error_code {
                            0 => {}
                            3 => break,
                            other => panic!("error {other}"),
                        }
                    }
                    c
                })
            })
            .collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_millis(30)).await;
        admin.delete_topic(&topic).await;
        for task in busy {
            clients.push(task.await.unwrap());
        }
    }
    drop(clients);
    drop(admin);
    broker.shutdown().await;
    let broker = common::start(dir.path()).await;
    let left: Vec<String> = broker
        .broker
        .catalog
        .list()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(
        left,
        ["racing"],
        "a deleted topic came back after a restart"
    );
    broker.shutdown().await;
}
