//! Kafka ACLs (`[acls]`): made, listed and deleted over the protocol by a super user, kept across
//! a restart, and enforced on librdkafka producers and consumers logged in with SASL: what no
//! ACL allows is refused with the authorization error Kafka gives, and nothing is written.

mod common;

use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateTopicsRequest, DeleteAclsRequest, DescribeAclsRequest,
    ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const USERS: &str = "admin adm1n-s3cret\nalice a11ce-s3cret\nbob b0b-s3cret\n";

// Wire codes of the ACL enums.
const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const ANY: i8 = 1;
const READ: i8 = 3;
const WRITE: i8 = 4;
const DESCRIBE: i8 = 8;
const ALL: i8 = 2;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

fn sasl_client(bootstrap: &str, user: &str, secret: &str) -> ClientConfig {
    common::sasl_client_config("SCRAM-SHA-256", bootstrap, user, secret)
}

fn st(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn acl(rt: i8, name: &str, pattern: i8, principal: &str, op: i8, perm: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(rt)
        .with_resource_name(st(name))
        .with_resource_pattern_type(pattern)
        .with_principal(st(principal))
        .with_host(st("*"))
        .with_operation(op)
        .with_permission_type(perm)
}

/// A raw connection logged in as the super user.
async fn admin(bootstrap: &str) -> common::RawClient {
    common::RawClient::logged_in(bootstrap, b"\0admin\0adm1n-s3cret").await
}

/// DescribeAcls for every ACL.
fn every_acl() -> DescribeAclsRequest {
    DescribeAclsRequest::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_pattern_type_filter(ANY)
        .with_operation(ANY)
        .with_permission_type(ANY)
}

/// Sends one reading as a producer on `c`; the error code of a failed delivery.
async fn produce(c: &ClientConfig, topic: &str, value: &str) -> Result<(), RDKafkaErrorCode> {
    let producer: FutureProducer = c
        .clone()
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<(), _>::to(topic).payload(value),
            Duration::from_secs(5),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.rdkafka_error_code().expect("a broker error code"))
}

/// The error code ListOffsets (latest) gives `topic` partition 0 on `raw`, and the offset.
async fn latest(raw: &mut common::RawClient, topic: &str) -> (i16, i64) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(st(topic)))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ]),
        ]);
    let resp = raw.call(&req, 7).await;
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// Polls `consumer` until a message or an error comes, for at most 20 s.
fn next(consumer: &BaseConsumer) -> Result<String, KafkaError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                return Ok(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    panic!("neither a message nor an error within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_decide_who_writes_reads_and_joins_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::secured_config(dir.path(), USERS);
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();

    let mut root = admin(&bootstrap).await;
    let topics = ["sensors.t1", "sensors.locked", "secret"]
        .map(|t| {
            CreatableTopic::default()
                .with_name(TopicName(st(t)))
                .with_num_partitions(1)
                .with_replication_factor(1)
        })
        .to_vec();
    let created = root
        .call(&CreateTopicsRequest::default().with_topics(topics), 7)
        .await;
    assert!(
        created.topics.iter().all(|t| t.error_code == 0),
        "{created:?}"
    );
    let made = root
        .call(
            &CreateAclsRequest::default().with_creations(vec![
                acl(TOPIC, "sensors.", PREFIXED, "User:alice", WRITE, ALLOW),
                acl(TOPIC, "sensors.locked", LITERAL, "User:alice", ALL, DENY),
                acl(TOPIC, "sensors.t1", LITERAL, "User:bob", READ, ALLOW),
                acl(GROUP, "dash", LITERAL, "User:bob", READ, ALLOW),
                // Not an ACL: an operation of ANY.
                acl(TOPIC, "x", LITERAL, "User:bob", ANY, ALLOW),
            ]),
            3,
        )
        .await;
    let codes: Vec<i16> = made.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, [0, 0, 0, 0, E::InvalidRequest.code()]);

    // Alice writes where a prefix lets her, and nowhere else.
    let alice = sasl_client(&bootstrap, "alice", "a11ce-s3cret");
    produce(&alice, "sensors.t1", "21.5").await.unwrap();
    produce(&alice, "sensors.t1", "21.7").await.unwrap();
    assert_eq!(
        produce(&alice, "secret", "x").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(
        produce(&alice, "sensors.locked", "x").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(latest(&mut root, "secret").await, (0, 0), "nothing written");
    assert_eq!(latest(&mut root, "sensors.locked").await, (0, 0));
    // Bob may read but not write.
    let bob = sasl_client(&bootstrap, "bob", "b0b-s3cret");
    assert_eq!(
        produce(&bob, "sensors.t1", "x").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(latest(&mut root, "sensors.t1").await, (0, 2));

    // Bob consumes in group dash and commits.
    let consumer: BaseConsumer = bob
        .clone()
        .set("group.id", "dash")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["sensors.t1"]).unwrap();
    assert_eq!(next(&consumer).unwrap(), "21.5");
    assert_eq!(next(&consumer).unwrap(), "21.7");
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(consumer);
    // In another group he is refused.
    let outsider: BaseConsumer = bob
        .clone()
        .set("group.id", "ops")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    outsider.subscribe(&["sensors.t1"]).unwrap();
    let err = next(&outsider).unwrap_err();
    assert_eq!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::GroupAuthorizationFailed),
        "{err}"
    );
    drop(outsider);

    // Bob's metadata lists only what he may see, with what he may do to it.
    let mut raw_bob = common::RawClient::logged_in(&bootstrap, b"\0bob\0b0b-s3cret").await;
    // OffsetFetch of the group he may not use: v1 has no top-level error code, so each
    // partition asked for carries GROUP_AUTHORIZATION_FAILED, as Kafka answers; v2 the top.
    for version in [1, 2] {
        use kafka_protocol::messages::OffsetFetchRequest;
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        let req = OffsetFetchRequest::default()
            .with_group_id(st("ops").into())
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(st("sensors.t1").into())
                    .with_partition_indexes(vec![0]),
            ]));
        let r = raw_bob.call(&req, version).await;
        let codes: Vec<i16> = r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect();
        match version {
            1 => assert_eq!(codes, [30], "v1"),
            _ => assert_eq!((r.error_code, codes.len()), (30, 0), "v2"),
        }
    }
    let md = raw_bob
        .call(
            &MetadataRequest::default()
                .with_topics(None)
                .with_include_topic_authorized_operations(true),
            12,
        )
        .await;
    let seen: Vec<(String, i32)> = md
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_deref().unwrap().to_string(),
                t.topic_authorized_operations,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("sensors.t1".to_string(), (1 << READ) | (1 << DESCRIBE))]
    );
    assert_eq!(
        latest(&mut raw_bob, "secret").await.0,
        E::TopicAuthorizationFailed.code()
    );
    // Nothing on the cluster is his, Describe included: no operation is named, by Metadata or
    // DescribeCluster, as Kafka answers.
    let md = raw_bob
        .call(
            &MetadataRequest::default()
                .with_topics(Some(Vec::new()))
                .with_include_cluster_authorized_operations(true),
            10,
        )
        .await;
    assert_eq!(md.cluster_authorized_operations, 0);
    let described = raw_bob
        .call(
            &kafka_protocol::messages::DescribeClusterRequest::default()
                .with_include_cluster_authorized_operations(true),
            1,
        )
        .await;
    assert_eq!(described.error_code, 0);
    assert_eq!(described.cluster_authorized_operations, 0);
    // Nor may he list or make ACLs.
    let listed = raw_bob.call(&every_acl(), 3).await;
    assert_eq!(listed.error_code, E::ClusterAuthorizationFailed.code());

    // The super user deletes bob's read ACL; his next request is refused.
    let deleted = root
        .call(
            &DeleteAclsRequest::default().with_filters(vec![
                DeleteAclsFilter::default()
                    .with_resource_type_filter(TOPIC)
                    .with_resource_name_filter(Some(st("sensors.t1")))
                    .with_pattern_type_filter(LITERAL)
                    .with_principal_filter(Some(st("User:bob")))
                    .with_host_filter(None)
                    .with_operation(ANY)
                    .with_permission_type(ANY),
            ]),
            3,
        )
        .await;
    let gone = &deleted.filter_results[0];
    assert_eq!((gone.error_code, gone.matching_acls.len()), (0, 1));
    assert_eq!(gone.matching_acls[0].operation, READ);
    assert_eq!(
        latest(&mut raw_bob, "sensors.t1").await.0,
        E::TopicAuthorizationFailed.code()
    );
    drop((root, raw_bob));
    broker.shutdown().await;

    // The three left are kept across a restart.
    let broker = common::start_with(cfg).await;
    let mut root = admin(&broker.bootstrap()).await;
    let listed = root.call(&every_acl(), 3).await;
    assert_eq!(listed.error_code, 0);
    let mut kept: Vec<(String, String, i8)> = listed
        .resources
        .iter()
        .flat_map(|r| {
            r.acls.iter().map(|a| {
                (
                    r.resource_name.to_string(),
                    a.principal.to_string(),
                    a.operation,
                )
            })
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            ("dash".into(), "User:bob".into(), READ),
            ("sensors.".into(), "User:alice".into(), WRITE),
            ("sensors.locked".into(), "User:alice".into(), ALL),
        ]
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acls_every_client_may_do_everything_and_the_acl_apis_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let bootstrap = broker.bootstrap();
    produce(&common::client_config(&bootstrap), "open", "1")
        .await
        .unwrap();
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let made = raw
        .call(
            &CreateAclsRequest::default()
                .with_creations(vec![acl(TOPIC, "open", LITERAL, "User:*", READ, ALLOW)]),
            3,
        )
        .await;
    assert_eq!(made.results[0].error_code, E::SecurityDisabled.code());
    // A client that proved nothing may not give itself a login, ACLs or not.
    let upsert = kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
        .with_name(st("admin"))
        .with_mechanism(1)
        .with_iterations(4096)
        .with_salt(bytes::Bytes::from_static(b"salt"))
        .with_salted_password(bytes::Bytes::from(vec![7u8; 32]));
    let altered = raw
        .call(
            &kafka_protocol::messages::AlterUserScramCredentialsRequest::default()
                .with_upsertions(vec![upsert]),
            0,
        )
        .await;
    assert_eq!(
        altered.results[0].error_code,
        E::ClusterAuthorizationFailed.code()
    );
    assert!(broker.broker.scram.all().is_empty());
    let md = raw
        .call(
            &MetadataRequest::default()
                .with_topics(None)
                .with_include_cluster_authorized_operations(true),
            10,
        )
        .await;
    // Every cluster operation: Create, Alter, Describe, ClusterAction, DescribeConfigs,
    // AlterConfigs, IdempotentWrite.
    assert_eq!(
        md.cluster_authorized_operations,
        [5, 7, 8, 9, 10, 11, 12]
            .iter()
            .fold(0, |b, op| b | (1 << op))
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_hold_for_devices_over_quic_as_for_kafka_clients() {
    use runnel::acl::{Acl, Operation, PatternType, Permission, ResourceType};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "sensor-7 s3cret-7\ndisplay-1 s3cret-d\n").unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.quic.enabled = true;
    cfg.listeners.quic.address = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.quic.client_auth = edge_config::QuicClientAuth::Token;
    cfg.listeners.quic.token_file = tokens;
    cfg.acls.enabled = true;
    let broker = common::start_with(cfg).await;
    // The device may create and write the topics under its own name, and nothing else.
    let own = |op| Acl {
        resource_type: ResourceType::Topic,
        pattern: PatternType::Prefixed,
        name: "sensor-7.".into(),
        principal: "User:sensor-7".into(),
        host: "*".into(),
        operation: op,
        permission: Permission::Allow,
    };
    // A display may read its one topic and do nothing else.
    let reads = Acl {
        pattern: PatternType::Literal,
        name: "sensor-7.temp".into(),
        principal: "User:display-1".into(),
        operation: Operation::Read,
        ..own(Operation::Read)
    };
    broker
        .broker
        .acls
        .create(&[own(Operation::Write), own(Operation::Create), reads])
        .unwrap();

    let mut device = runnel_device::DeviceConfig::new(
        broker.quic_addr.unwrap(),
        runnel_device::Trust::Fingerprint(broker.quic_fingerprint.clone().unwrap()),
    );
    device.linger = Duration::from_millis(2);
    device.identity = runnel_device::Identity::Token {
        device: "sensor-7".into(),
        token: "s3cret-7".into(),
    };
    let device = runnel_device::Device::connect(device).await.unwrap();
    assert_eq!(
        device
            .send("sensor-7.temp", None, b"21.5")
            .await
            .unwrap()
            .offset,
        0
    );
    match device.send("pump-2.flow", None, b"spoofed").await {
        Err(runnel_device::DeviceError::Broker { code, .. }) => {
            assert_eq!(code, E::TopicAuthorizationFailed.code())
        }
        other => panic!("refused with TOPIC_AUTHORIZATION_FAILED, got {other:?}"),
    }
    device.close().await;
    assert!(
        broker.broker.catalog.get("pump-2.flow").is_none(),
        "not created"
    );

    // A device the ACLs let only read connects all the same (it gets no producer id) and
    // subscribes; a send of its waits for rights it does not have.
    let mut display = runnel_device::DeviceConfig::new(
        broker.quic_addr.unwrap(),
        runnel_device::Trust::Fingerprint(broker.quic_fingerprint.clone().unwrap()),
    );
    display.identity = runnel_device::Identity::Token {
        device: "display-1".into(),
        token: "s3cret-d".into(),
    };
    let display = runnel_device::Device::connect(display)
        .await
        .expect("a read-only device connects");
    let mut sub = display
        .subscribe("sensor-7.temp", 0, runnel_device::StartAt::Earliest)
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("read in time")
        .unwrap();
    assert_eq!(m.value.as_deref(), Some(&b"21.5"[..]));
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        display.send("sensor-7.temp", None, b"22"),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a send without rights is not acknowledged"
    );
    // With that send waiting (the device asks again for a producer id after a back-off), the
    // connection and its subscription go on: no new connection in 3 s.
    let quic_connections = || {
        let m = broker.broker.metrics.render(&broker.broker);
        m.lines()
            .find_map(|l| l.strip_prefix("runnel_quic_connections_total "))
            .map(|n| n.trim().parse::<u64>().unwrap())
            .expect("the QUIC connections metric")
    };
    let before = quic_connections();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        quic_connections(),
        before,
        "the read-only device reconnected"
    );
    let mut sensor = runnel_device::DeviceConfig::new(
        broker.quic_addr.unwrap(),
        runnel_device::Trust::Fingerprint(broker.quic_fingerprint.clone().unwrap()),
    );
    sensor.identity = runnel_device::Identity::Token {
        device: "sensor-7".into(),
        token: "s3cret-7".into(),
    };
    let sensor = runnel_device::Device::connect(sensor).await.unwrap();
    sensor.send("sensor-7.temp", None, b"22.5").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("read in time")
        .unwrap();
    assert_eq!(m.value.as_deref(), Some(&b"22.5"[..]));
    sensor.close().await;
    drop(sub);
    // (Dropped, not closed: a close would wait for the send to be delivered.)
    drop(display);
    let denied = broker
        .broker
        .metrics
        .acl_denied
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(denied >= 1, "{denied}");
    broker.shutdown().await;
}

/// Envelope (KIP-590), which followers use to forward a client's admin request to the leader:
/// only a ClusterAction holder may send one, only for what followers forward, and the request
/// inside is judged by the rights of the principal it names, not the sender's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_is_judged_by_the_principal_it_names() {
    use kafka_protocol::messages::{CreateTopicsRequest, EnvelopeRequest};
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(common::secured_config(dir.path(), USERS)).await;
    let bootstrap = broker.bootstrap();
    let wrap = |inner: bytes::Bytes, principal: &str| {
        EnvelopeRequest::default()
            .with_request_data(inner.slice(4..))
            .with_request_principal(Some(bytes::Bytes::copy_from_slice(principal.as_bytes())))
            .with_client_host_address(bytes::Bytes::from_static(&[10, 0, 0, 7]))
    };
    let grant = CreateAclsRequest::default()
        .with_creations(vec![acl(TOPIC, "*", LITERAL, "User:bob", ALL, ALLOW)]);
    let create = common::request_frame(&grant, 3, 1, "forwarded");

    // Bob may not send one, whoever it names.
    let mut bob = common::RawClient::logged_in(&bootstrap, b"\0bob\0b0b-s3cret").await;
    let answer = bob.call(&wrap(create.clone(), "User:admin"), 0).await;
    assert_eq!(answer.error_code, E::ClusterAuthorizationFailed.code());
    assert!(answer.response_data.is_none());
    // The super user may; the request inside is Bob's, who may not create ACLs.
    let mut root = admin(&bootstrap).await;
    let answer = root.call(&wrap(create.clone(), "User:bob"), 0).await;
    assert_eq!(answer.error_code, 0, "{answer:?}");
    let inner: kafka_protocol::messages::CreateAclsResponse =
        common::decode_response::<CreateAclsRequest>(answer.response_data.unwrap(), 3, 1);
    assert_eq!(
        inner.results[0].error_code,
        E::ClusterAuthorizationFailed.code()
    );
    assert!(broker.broker.acls.acls().is_empty(), "nothing was granted");
    // Named as the super user, it is made.
    let answer = root.call(&wrap(create, "User:admin"), 0).await;
    let inner = common::decode_response::<CreateAclsRequest>(answer.response_data.unwrap(), 3, 1);
    assert_eq!(inner.results[0].error_code, 0);
    assert_eq!(broker.broker.acls.acls().len(), 1);

    // Only what followers forward, and only what parses.
    let topics = common::request_frame(&CreateTopicsRequest::default(), 7, 2, "forwarded");
    let answer = root.call(&wrap(topics, "User:admin"), 0).await;
    assert_eq!(answer.error_code, E::InvalidRequest.code());
    let garbage = bytes::Bytes::from_static(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    let answer = root.call(&wrap(garbage, "User:admin"), 0).await;
    assert_eq!(answer.error_code, E::InvalidRequest.code());
    let grant = common::request_frame(&grant, 3, 3, "forwarded");
    let answer = root.call(&wrap(grant, "no colon"), 0).await;
    assert_eq!(answer.error_code, E::InvalidRequest.code());
    broker.shutdown().await;
}

/// A group's own configs take DescribeConfigs and AlterConfigs on the group, as in Kafka: Read
/// on it (what a consumer has) allows neither, and AlterConfigs allows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_configs_need_describe_configs_and_alter_configs_on_the_group() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::incremental_alter_configs_request as inc;
    use kafka_protocol::messages::{DescribeConfigsRequest, IncrementalAlterConfigsRequest};
    const CONFIG_GROUP: i8 = 32;
    const ALTER_CONFIGS: i8 = 11;
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_with(common::secured_config(dir.path(), USERS)).await;
    let bootstrap = broker.bootstrap();
    let mut root = admin(&bootstrap).await;
    let mut bob = common::RawClient::logged_in(&bootstrap, b"\0bob\0b0b-s3cret").await;
    let describe = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(CONFIG_GROUP)
            .with_resource_name(st("dash")),
    ]);
    let alter = IncrementalAlterConfigsRequest::default().with_resources(vec![
        inc::AlterConfigsResource::default()
            .with_resource_type(CONFIG_GROUP)
            .with_resource_name(st("dash"))
            .with_configs(vec![
                inc::AlterableConfig::default()
                    .with_name(st("consumer.session.timeout.ms"))
                    .with_config_operation(0)
                    .with_value(Some(st("50000"))),
            ]),
    ]);
    let grant = |op: i8| {
        CreateAclsRequest::default()
            .with_creations(vec![acl(GROUP, "dash", LITERAL, "User:bob", op, ALLOW)])
    };
    let session_timeout = |r: &kafka_protocol::messages::DescribeConfigsResponse| {
        r.results[0].configs[0].value.as_deref().map(str::to_string)
    };

    let made = root.call(&grant(READ), 3).await;
    assert_eq!(made.results[0].error_code, 0);
    let r = bob.call(&describe, 4).await;
    assert_eq!(r.results[0].error_code, E::GroupAuthorizationFailed.code());
    let r = bob.call(&alter, 1).await;
    assert_eq!(
        r.responses[0].error_code,
        E::GroupAuthorizationFailed.code()
    );
    assert_eq!(
        session_timeout(&root.call(&describe, 4).await).as_deref(),
        Some("45000")
    );

    let made = root.call(&grant(ALTER_CONFIGS), 3).await;
    assert_eq!(made.results[0].error_code, 0);
    let r = bob.call(&alter, 1).await;
    assert_eq!(
        r.responses[0].error_code, 0,
        "{:?}",
        r.responses[0].error_message
    );
    let r = bob.call(&describe, 4).await;
    assert_eq!(r.results[0].error_code, 0);
    assert_eq!(session_timeout(&r).as_deref(), Some("50000"));
    broker.shutdown().await;
}
