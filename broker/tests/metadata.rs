//! Metadata and topic auto-creation, on and off.

mod common;

use common::RawClient;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

fn ask(topic: &str, allow: bool) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.into())))),
        ]))
        .with_allow_auto_topic_creation(allow)
}

#[tokio::test]
async fn auto_creation_follows_the_config_and_the_request_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.default_partitions = 3;
    let broker = common::start_with(cfg).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;

    let r = c.call(&ask("wanted", false), 9).await;
    assert_eq!(
        r.topics[0].error_code, 3,
        "not created when the client does not allow it"
    );
    let r = c.call(&ask("wanted", true), 12).await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].partitions.len(), 3, "default partition count");
    assert!(!r.topics[0].topic_id.is_nil(), "v10+ carries the topic id");
    assert_eq!(r.brokers[0].port, broker.kafka_addr.unwrap().port() as i32);
    // v0 requests have no flag (it is v4+) and always allow auto-creation.
    let r = c.call(&ask("old-client", true), 0).await;
    assert_eq!(r.topics[0].error_code, 0);
    // All topics (null list).
    let r = c
        .call(&MetadataRequest::default().with_topics(None), 9)
        .await;
    let mut names: Vec<String> = r
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect();
    names.sort();
    assert_eq!(names, ["old-client", "wanted"]);
    let r = c.call(&ask("bad name!", true), 9).await;
    assert_eq!(r.topics[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");
    broker.shutdown().await;
}

#[tokio::test]
async fn with_auto_creation_off_unknown_topics_stay_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.auto_create_topics = false;
    let broker = common::start_with(cfg).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let r = c.call(&ask("nope", true), 9).await;
    assert_eq!(r.topics[0].error_code, 3);
    let r = c
        .call(&MetadataRequest::default().with_topics(None), 9)
        .await;
    assert!(r.topics.is_empty());
    broker.shutdown().await;
}

/// Kafka's naming rules beyond the characters: a name that differs from an existing one only in
/// '.' against '_' collides with it, and Kafka's internal topic names are not for users. Both are
/// INVALID_TOPIC_EXCEPTION (17) with a message; Metadata auto-creation refuses them the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_and_internal_topic_names_are_refused() {
    use kafka_protocol::messages::CreateTopicsRequest;
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let create = |name: &str| {
        CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name.into())))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ])
            .with_timeout_ms(5000)
    };
    let r = c.call(&create("has.dot_x"), 5).await;
    assert_eq!(r.topics[0].error_code, 0);
    for name in ["has_dot.x", "has_dot_x", "__consumer_offsets"] {
        let r = c.call(&create(name), 5).await;
        assert_eq!(r.topics[0].error_code, 17, "{name}");
        let message = r.topics[0].error_message.as_deref().unwrap_or("");
        assert!(
            message.contains("collides with the existing topic \"has.dot_x\"")
                || message.contains("internal topics"),
            "{name}: {message}"
        );
        let r = c.call(&ask(name, true), 9).await;
        assert_ne!(r.topics[0].error_code, 0, "{name} auto-created");
    }
    let r = c
        .call(&MetadataRequest::default().with_topics(None), 9)
        .await;
    assert_eq!(r.topics.len(), 1, "only has.dot_x exists");
    broker.shutdown().await;
}

/// DescribeConfigs tells where each value comes from, as Kafka does: a topic override, the
/// broker's static config (`[log]`), or the default; with synonyms on request; the broker
/// resource under Kafka's broker config names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_sources_and_synonyms_follow_kafka() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{CreateTopicsRequest, DescribeConfigsRequest};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.log.retention = Some(std::time::Duration::from_secs(86_400));
    let broker = common::start_with(cfg).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let name = |n: &str| StrBytes::from_string(n.into());
    let create = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(name("described")))
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(vec![
                    CreatableTopicConfig::default()
                        .with_name(name("segment.bytes"))
                        .with_value(Some(name("1048576"))),
                ]),
        ])
        .with_timeout_ms(5000);
    let created = c.call(&create, 5).await;
    assert_eq!(created.topics[0].error_code, 0);
    // The configs CreateTopics answers with carry the sources DescribeConfigs gives (below):
    // the topic's own, the broker's config file, Kafka's default.
    let source_of = |k: &str| {
        let configs = created.topics[0].configs.as_ref().unwrap();
        configs
            .iter()
            .find(|c| c.name.as_str() == k)
            .unwrap()
            .config_source
    };
    assert_eq!(
        (
            source_of("segment.bytes"),
            source_of("retention.ms"),
            source_of("max.message.bytes")
        ),
        (1, 4, 5)
    );
    let describe = |resource_type: i8, resource: &str| {
        DescribeConfigsRequest::default()
            .with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(name(resource))
                    .with_configuration_keys(None),
            ])
            .with_include_synonyms(true)
    };
    let r = c.call(&describe(2, "described"), 4).await;
    let get = |k: &str| {
        r.results[0]
            .configs
            .iter()
            .find(|e| e.name.as_str() == k)
            .unwrap_or_else(|| panic!("{k}"))
            .clone()
    };
    let synonyms =
        |e: &kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult| {
            e.synonyms
                .iter()
                .map(|s| {
                    (
                        s.name.to_string(),
                        s.value.as_deref().unwrap_or("").to_string(),
                        s.source,
                    )
                })
                .collect::<Vec<_>>()
        };
    // Overridden on the topic: DYNAMIC_TOPIC_CONFIG (1), then the broker-level default.
    let seg = get("segment.bytes");
    assert_eq!(
        (seg.value.as_deref(), seg.config_source),
        (Some("1048576"), 1)
    );
    assert_eq!(
        synonyms(&seg),
        vec![
            ("segment.bytes".into(), "1048576".into(), 1),
            ("log.segment.bytes".into(), "1073741824".into(), 5)
        ]
    );
    // Set in [log]: STATIC_BROKER_CONFIG (4), then Kafka's default, under the name Kafka
    // keeps it (so that clients that key synonyms by name see both).
    let ret = get("retention.ms");
    assert_eq!(
        (ret.value.as_deref(), ret.config_source),
        (Some("86400000"), 4)
    );
    assert_eq!(
        synonyms(&ret),
        vec![
            ("log.retention.ms".into(), "86400000".into(), 4),
            ("log.retention.hours".into(), "168".into(), 5)
        ]
    );
    assert_eq!(
        synonyms(&get("segment.ms")),
        vec![("log.roll.hours".into(), "168".into(), 5)]
    );
    // Neither: DEFAULT_CONFIG (5).
    assert_eq!(get("max.message.bytes").config_source, 5);
    // Documentation only when asked for.
    assert_eq!(get("retention.ms").documentation, None);
    let documented = c
        .call(
            &describe(2, "described").with_include_documentation(true),
            4,
        )
        .await;
    assert!(
        documented.results[0]
            .configs
            .iter()
            .all(|e| e.documentation.as_deref().is_some_and(|d| d.len() > 20)),
        "{documented:?}"
    );
    assert_eq!(get("cleanup.policy").config_type, 7, "a list");
    // A topic that does not exist, and a name no topic can have (Kafka validates it first).
    for (topic, code) in [
        ("absent", 3),
        ("__consumer_offsets", 3),
        ("", 17),
        ("bad name!", 17),
        ("..", 17),
    ] {
        let r = c.call(&describe(2, topic), 4).await;
        assert_eq!(r.results[0].error_code, code, "{topic:?}: {r:?}");
        assert!(r.results[0].configs.is_empty());
    }

    let r = c
        .call(&describe(4, &broker.broker.node_id.to_string()), 4)
        .await;
    let names: Vec<&str> = r.results[0]
        .configs
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        names.contains(&"log.retention.ms") && names.contains(&"message.max.bytes"),
        "{names:?}"
    );
    let ret = r.results[0]
        .configs
        .iter()
        .find(|e| e.name.as_str() == "log.retention.ms")
        .unwrap();
    assert_eq!(
        (ret.value.as_deref(), ret.config_source),
        (Some("86400000"), 4)
    );
    broker.shutdown().await;
}

/// DescribeCluster (AdminClient.describeCluster) gives the brokers, controller and cluster id
/// Metadata gives, at every version; the controllers' endpoints are not served, as by a Kafka
/// broker; the cluster's operations come when asked for.
#[tokio::test]
async fn describe_cluster_agrees_with_metadata() {
    use kafka_protocol::error::ResponseError as E;
    use kafka_protocol::messages::DescribeClusterRequest;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.broker.node_id = 7;
    let broker = common::start_with(cfg).await;
    let mut c = RawClient::connect(&broker.bootstrap()).await;
    let metadata = c
        .call(
            &MetadataRequest::default().with_topics(Some(Vec::new())),
            12,
        )
        .await;
    for version in 0..=2 {
        let r = c.call(&DescribeClusterRequest::default(), version).await;
        assert_eq!(r.error_code, 0, "v{version}: {r:?}");
        assert_eq!(Some(&r.cluster_id), metadata.cluster_id.as_ref());
        assert_eq!(r.controller_id, metadata.controller_id);
        assert_eq!(r.controller_id.0, 7);
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.brokers[0].broker_id.0, 7);
        assert_eq!(r.brokers[0].host, metadata.brokers[0].host);
        assert_eq!(r.brokers[0].port, broker.kafka_addr.unwrap().port() as i32);
        assert!(!r.brokers[0].is_fenced);
        assert_eq!(r.cluster_authorized_operations, i32::MIN, "not asked for");
    }
    let r = c
        .call(
            &DescribeClusterRequest::default().with_include_cluster_authorized_operations(true),
            1,
        )
        .await;
    assert_ne!(r.cluster_authorized_operations, i32::MIN);
    assert!(r.cluster_authorized_operations > 0, "{r:?}");
    let r = c
        .call(&DescribeClusterRequest::default().with_endpoint_type(2), 1)
        .await;
    assert_eq!(r.error_code, E::MismatchedEndpointType.code());
    assert!(r.brokers.is_empty());
    let r = c
        .call(&DescribeClusterRequest::default().with_endpoint_type(9), 1)
        .await;
    assert_eq!(r.error_code, E::UnsupportedEndpointType.code());
    broker.shutdown().await;
}

/// A listener bound to 0.0.0.0 with no advertised_host advertises the address each client
/// reached, not 0.0.0.0, which no client can connect to (QA: remote clients bootstrapped and
/// then could neither produce nor consume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_listener_advertises_the_address_the_client_reached() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.kafka.address = "0.0.0.0:0".parse().unwrap();
    let broker = common::start_with(cfg).await;
    let port = broker.kafka_addr.unwrap().port();
    for host in ["127.0.0.1", "127.0.0.2"] {
        let mut c = RawClient::connect(&format!("{host}:{port}")).await;
        let md = c
            .call(&MetadataRequest::default().with_topics(Some(vec![])), 12)
            .await;
        assert_eq!(md.brokers.len(), 1);
        assert_eq!(md.brokers[0].host.as_str(), host);
        assert_eq!(md.brokers[0].port, port as i32);
    }
    broker.shutdown().await;
}
