//! Every advertised version of every API answers a realistic request with a response that
//! decodes at that version (a field the version cannot carry would close the connection).

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::RawClient;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

/// Commits `offset` for partition `partition` of `topic` with OffsetCommit v1 (metadata
/// "v1", generation -1: a standalone consumer), encoded by hand; the partition's error code.
async fn offset_commit_v1(
    c: &mut RawClient,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> i16 {
    fn string(b: &mut BytesMut, v: &str) {
        b.put_i16(v.len() as i16);
        b.put_slice(v.as_bytes());
    }
    let mut b = BytesMut::new();
    b.put_i16(ApiKey::OffsetCommit as i16);
    b.put_i16(1);
    b.put_i32(4242);
    string(&mut b, "sarama");
    string(&mut b, group);
    b.put_i32(-1); // generation
    string(&mut b, ""); // member id
    b.put_i32(1);
    string(&mut b, topic);
    b.put_i32(1);
    b.put_i32(partition);
    b.put_i64(offset);
    b.put_i64(-1); // commit timestamp: now
    string(&mut b, "v1");
    c.send_frame(&b).await;
    let frame = c.read_frame().await.expect("an OffsetCommit v1 response");
    // v1's response is v2's, byte for byte.
    let r = common::decode_response::<OffsetCommitRequest>(frame, 2, 4242);
    assert_eq!(r.topics.len(), 1);
    r.topics[0].partitions[0].error_code
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic(v: &str) -> TopicName {
    TopicName(s(v))
}

fn batch() -> Bytes {
    common::encode_batch(
        &[common::record(0, Some(b"k"), b"v", 1_700_000_000_000)],
        Compression::None,
    )
}

#[tokio::test]
async fn every_version_of_every_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start(dir.path()).await;
    let addr = broker.bootstrap();
    let mut c = RawClient::connect(&addr).await;
    let advertised = c.call(&ApiVersionsRequest::default(), 3).await.api_keys;
    let range = |key: ApiKey| {
        let a = advertised
            .iter()
            .find(|a| a.api_key == key as i16)
            .expect("advertised");
        // Produce v0-2 are advertised but refused (tested elsewhere); start at what is served.
        let min = if key == ApiKey::Produce {
            3
        } else {
            a.min_version
        };
        min..=a.max_version
    };
    let mut calls = 0;

    for v in range(ApiKey::CreateTopics) {
        let name = format!("v-{v}");
        let r = c
            .call(
                &CreateTopicsRequest::default().with_topics(vec![
                    create_topics_request::CreatableTopic::default()
                        .with_name(topic(&name))
                        .with_num_partitions(2)
                        .with_replication_factor(1),
                ]),
                v,
            )
            .await;
        assert_eq!(r.topics[0].error_code, 0, "CreateTopics v{v}");
        calls += 1;
    }
    for v in range(ApiKey::Produce) {
        let r = c
            .call(
                &ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(5000)
                    .with_topic_data(vec![
                        produce_request::TopicProduceData::default()
                            .with_name(topic("v-2"))
                            .with_partition_data(vec![
                                produce_request::PartitionProduceData::default()
                                    .with_index(0)
                                    .with_records(Some(batch())),
                            ]),
                    ]),
                v,
            )
            .await;
        assert_eq!(
            r.responses[0].partition_responses[0].error_code, 0,
            "Produce v{v}"
        );
        calls += 1;
    }
    for v in range(ApiKey::Metadata) {
        let r = c
            .call(
                &MetadataRequest::default().with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default().with_name(Some(topic("v-2"))),
                ])),
                v,
            )
            .await;
        assert_eq!(r.topics[0].partitions.len(), 2, "Metadata v{v}");
        calls += 1;
    }
    for v in range(ApiKey::Fetch) {
        // From v13 topics are named by id.
        let named = if v >= 13 {
            let id = broker.broker.catalog.get("v-2").unwrap().id;
            fetch_request::FetchTopic::default().with_topic_id(id)
        } else {
            fetch_request::FetchTopic::default().with_topic(topic("v-2"))
        };
        let r = c
            .call(
                &FetchRequest::default()
                    .with_max_wait_ms(0)
                    .with_min_bytes(0)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![named.with_partitions(vec![
                                fetch_request::FetchPartition::default()
                                    .with_partition(0)
                                    .with_fetch_offset(0)
                                    .with_partition_max_bytes(1 << 20),
                                fetch_request::FetchPartition::default()
                                    .with_partition(9)
                                    .with_partition_max_bytes(1),
                            ])]),
                v,
            )
            .await;
        let parts = &r.responses[0].partitions;
        assert!(
            parts[0].records.as_ref().is_some_and(|r| !r.is_empty()),
            "Fetch v{v}"
        );
        assert_eq!(parts[1].error_code, 3, "Fetch v{v}: unknown partition");
        calls += 1;
    }
    for v in range(ApiKey::ListOffsets) {
        for ts in [-1, -2, 0] {
            let r = c
                .call(
                    &ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![
                            list_offsets_request::ListOffsetsTopic::default()
                                .with_name(topic("v-2"))
                                .with_partitions(vec![
                                    list_offsets_request::ListOffsetsPartition::default()
                                        .with_partition_index(0)
                                        .with_timestamp(ts),
                                ]),
                        ]),
                    v,
                )
                .await;
            assert_eq!(
                r.topics[0].partitions[0].error_code, 0,
                "ListOffsets v{v} ts {ts}"
            );
            calls += 1;
        }
    }
    for v in range(ApiKey::OffsetForLeaderEpoch) {
        // The partition's epoch (a topic made while the broker runs has its own) ends at the
        // log end.
        let epoch = broker
            .broker
            .catalog
            .get("v-2")
            .unwrap()
            .partition(0)
            .unwrap()
            .leader_epoch();
        let r = c
            .call(
                &OffsetForLeaderEpochRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(topic("v-2"))
                            .with_partitions(vec![
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default(
                                )
                                .with_partition(0)
                                .with_current_leader_epoch(epoch)
                                .with_leader_epoch(epoch),
                            ]),
                    ]),
                v,
            )
            .await;
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "OffsetForLeaderEpoch v{v}");
        assert_eq!(
            (p.leader_epoch, p.end_offset > 0),
            (epoch, true),
            "OffsetForLeaderEpoch v{v}"
        );
        calls += 1;
    }
    for v in range(ApiKey::DescribeConfigs) {
        let r = c
            .call(
                &DescribeConfigsRequest::default().with_resources(vec![
                    describe_configs_request::DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("v-2")),
                    describe_configs_request::DescribeConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s("1")),
                ]),
                v,
            )
            .await;
        assert!(
            r.results
                .iter()
                .all(|x| x.error_code == 0 && !x.configs.is_empty()),
            "DescribeConfigs v{v}: {r:?}"
        );
        calls += 1;
    }
    for v in range(ApiKey::AlterConfigs) {
        let r = c
            .call(
                &AlterConfigsRequest::default().with_resources(vec![
                    alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("v-2"))
                        .with_configs(vec![
                            alter_configs_request::AlterableConfig::default()
                                .with_name(s("retention.ms"))
                                .with_value(Some(s("86400000"))),
                        ]),
                ]),
                v,
            )
            .await;
        assert_eq!(r.responses[0].error_code, 0, "AlterConfigs v{v}");
        calls += 1;
    }
    for v in range(ApiKey::IncrementalAlterConfigs) {
        let r = c
            .call(
                &IncrementalAlterConfigsRequest::default().with_resources(vec![
                    incremental_alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("v-2"))
                        .with_configs(vec![
                            incremental_alter_configs_request::AlterableConfig::default()
                                .with_name(s("retention.bytes"))
                                .with_config_operation(0)
                                .with_value(Some(s("1000000"))),
                        ]),
                ]),
                v,
            )
            .await;
        assert_eq!(r.responses[0].error_code, 0, "IncrementalAlterConfigs v{v}");
        calls += 1;
    }
    for v in range(ApiKey::CreatePartitions) {
        let r = c
            .call(
                &CreatePartitionsRequest::default().with_topics(vec![
                    create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(topic(&format!("v-{}", 2 + v)))
                        .with_count(3),
                ]),
                v,
            )
            .await;
        assert_eq!(r.results[0].error_code, 0, "CreatePartitions v{v}");
        calls += 1;
    }
    for v in range(ApiKey::DeleteRecords) {
        let r = c
            .call(
                &DeleteRecordsRequest::default().with_topics(vec![
                    delete_records_request::DeleteRecordsTopic::default()
                        .with_name(topic("v-3"))
                        .with_partitions(vec![
                            delete_records_request::DeleteRecordsPartition::default()
                                .with_partition_index(0)
                                .with_offset(0),
                        ]),
                ]),
                v,
            )
            .await;
        assert_eq!(
            r.topics[0].partitions[0].error_code, 0,
            "DeleteRecords v{v}"
        );
        calls += 1;
    }
    for v in range(ApiKey::InitProducerId) {
        let r = c
            .call(
                &InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_transaction_timeout_ms(60_000),
                v,
            )
            .await;
        assert_eq!(r.error_code, 0, "InitProducerId v{v}");
        assert!(r.producer_id.0 >= 0);
        calls += 1;
    }
    for v in range(ApiKey::FindCoordinator) {
        let req = if v >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g")])
        } else {
            FindCoordinatorRequest::default().with_key(s("g"))
        };
        let r = c.call(&req, v).await;
        let (code, port) = if v >= 4 {
            (r.coordinators[0].error_code, r.coordinators[0].port)
        } else {
            (r.error_code, r.port)
        };
        assert_eq!(
            (code, port),
            (0, broker.kafka_addr.unwrap().port() as i32),
            "FindCoordinator v{v}"
        );
        calls += 1;
    }
    for v in range(ApiKey::OffsetCommit) {
        if v == 1 {
            // The codec cannot write v1 (sarama before 1.41 sends it): by hand.
            assert_eq!(offset_commit_v1(&mut c, "standalone", "v-2", 0, 7).await, 0);
            let fetched = c
                .call(
                    &OffsetFetchRequest::default()
                        .with_group_id(GroupId(s("standalone")))
                        .with_topics(Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopic::default()
                                .with_name(topic("v-2"))
                                .with_partition_indexes(vec![0]),
                        ])),
                    1,
                )
                .await;
            let p = &fetched.topics[0].partitions[0];
            assert_eq!(
                (p.committed_offset, p.metadata.as_deref()),
                (7, Some("v1")),
                "OffsetCommit v1 stored"
            );
            calls += 1;
            continue;
        }
        let r = c
            .call(
                &OffsetCommitRequest::default()
                    .with_group_id(GroupId(s("standalone")))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![
                        offset_commit_request::OffsetCommitRequestTopic::default()
                            .with_name(topic("v-2"))
                            .with_partitions(vec![
                                offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(1)
                                    .with_committed_metadata(Some(s("m"))),
                            ]),
                    ]),
                v,
            )
            .await;
        assert_eq!(r.topics[0].partitions[0].error_code, 0, "OffsetCommit v{v}");
        calls += 1;
    }
    for v in range(ApiKey::OffsetFetch) {
        let req = if v >= 8 {
            OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s("standalone")))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(topic("v-2"))
                            .with_partition_indexes(vec![0, 1]),
                    ])),
            ])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(GroupId(s("standalone")))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(topic("v-2"))
                        .with_partition_indexes(vec![0, 1]),
                ]))
        };
        let r = c.call(&req, v).await;
        let offsets: Vec<i64> = if v >= 8 {
            r.groups[0].topics[0]
                .partitions
                .iter()
                .map(|p| p.committed_offset)
                .collect()
        } else {
            r.topics[0]
                .partitions
                .iter()
                .map(|p| p.committed_offset)
                .collect()
        };
        assert_eq!(offsets, [1, -1], "OffsetFetch v{v}");
        calls += 1;
    }
    for v in range(ApiKey::JoinGroup) {
        // A session timeout below the minimum is refused at once, on every version.
        let r = c
            .call(
                &JoinGroupRequest::default()
                    .with_group_id(GroupId(s("joiners")))
                    .with_session_timeout_ms(1)
                    .with_rebalance_timeout_ms(if v >= 1 { 1000 } else { -1 })
                    .with_protocol_type(s("consumer"))
                    .with_protocols(vec![
                        join_group_request::JoinGroupRequestProtocol::default()
                            .with_name(s("range"))
                            .with_metadata(Bytes::new()),
                    ]),
                v,
            )
            .await;
        assert_eq!(r.error_code, 26, "JoinGroup v{v}: INVALID_SESSION_TIMEOUT");
        calls += 1;
    }
    for v in range(ApiKey::SyncGroup) {
        let r = c
            .call(
                &SyncGroupRequest::default()
                    .with_group_id(GroupId(s("joiners")))
                    .with_generation_id(1)
                    .with_member_id(s("nobody")),
                v,
            )
            .await;
        assert_ne!(r.error_code, 0, "SyncGroup v{v}");
        calls += 1;
    }
    for v in range(ApiKey::Heartbeat) {
        let r = c
            .call(
                &HeartbeatRequest::default()
                    .with_group_id(GroupId(s("joiners")))
                    .with_generation_id(1)
                    .with_member_id(s("nobody")),
                v,
            )
            .await;
        assert_ne!(r.error_code, 0, "Heartbeat v{v}");
        calls += 1;
    }
    for v in range(ApiKey::LeaveGroup) {
        let req = if v >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("joiners")))
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("nobody")),
                ])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("joiners")))
                .with_member_id(s("nobody"))
        };
        let r = c.call(&req, v).await;
        let code = if v >= 3 {
            r.members.first().map_or(r.error_code, |m| m.error_code)
        } else {
            r.error_code
        };
        assert_ne!(code, 0, "LeaveGroup v{v}");
        calls += 1;
    }
    for v in range(ApiKey::ListGroups) {
        let r = c.call(&ListGroupsRequest::default(), v).await;
        assert!(
            r.groups
                .iter()
                .any(|g| g.group_id.0.as_str() == "standalone"),
            "ListGroups v{v}"
        );
        calls += 1;
    }
    for v in range(ApiKey::DescribeGroups) {
        let r = c
            .call(
                &DescribeGroupsRequest::default().with_groups(vec![GroupId(s("standalone"))]),
                v,
            )
            .await;
        assert_eq!(r.groups[0].error_code, 0, "DescribeGroups v{v}");
        calls += 1;
    }
    for v in range(ApiKey::DeleteGroups) {
        let r = c
            .call(
                &DeleteGroupsRequest::default()
                    .with_groups_names(vec![GroupId(s(&format!("none-{v}")))]),
                v,
            )
            .await;
        assert_eq!(
            r.results[0].error_code, 69,
            "DeleteGroups v{v}: GROUP_ID_NOT_FOUND"
        );
        calls += 1;
    }
    for v in range(ApiKey::OffsetDelete) {
        let r = c
            .call(
                &OffsetDeleteRequest::default().with_group_id(GroupId(s(&format!("none-{v}")))),
                v,
            )
            .await;
        assert_eq!(r.error_code, 69, "OffsetDelete v{v}: GROUP_ID_NOT_FOUND");
        calls += 1;
    }
    for v in range(ApiKey::DeleteTopics) {
        let name = format!("v-{}", 2 + v - 1);
        let req = if v >= 6 {
            DeleteTopicsRequest::default().with_topics(vec![
                delete_topics_request::DeleteTopicState::default().with_name(Some(topic(&name))),
            ])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![topic(&name)])
        };
        let r = c.call(&req, v).await;
        assert_eq!(r.responses[0].error_code, 0, "DeleteTopics v{v}");
        calls += 1;
    }
    // No election is ever needed (one broker leads every partition), and no reassignment is
    // ever in progress: as Kafka answers in those cases.
    let now = runnel::broker::now_ms();
    let catalog = &broker.broker.catalog;
    catalog
        .create_topic("elect", 1, 1, Default::default(), false, now)
        .unwrap();
    for v in range(ApiKey::ElectLeaders) {
        let asked = elect_leaders_request::TopicPartitions::default()
            .with_topic(topic("elect"))
            .with_partitions(vec![0, 7]);
        let r = c
            .call(
                &ElectLeadersRequest::default()
                    .with_topic_partitions(Some(vec![asked]))
                    .with_timeout_ms(1000),
                v,
            )
            .await;
        let codes: Vec<i16> = r.replica_election_results[0]
            .partition_result
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            codes,
            [84, 3],
            "ElectLeaders v{v}: ELECTION_NOT_NEEDED, unknown"
        );
        let all = c
            .call(
                &ElectLeadersRequest::default().with_topic_partitions(None),
                v,
            )
            .await;
        assert!(all.replica_election_results.is_empty(), "ElectLeaders v{v}");
        calls += 1;
    }
    for v in range(ApiKey::ListPartitionReassignments) {
        let r = c
            .call(
                &ListPartitionReassignmentsRequest::default().with_timeout_ms(1000),
                v,
            )
            .await;
        assert_eq!((r.error_code, r.topics.len()), (0, 0));
        calls += 1;
    }
    assert!(calls > 100, "{calls} calls");
    broker.shutdown().await;
}
