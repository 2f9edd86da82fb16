//! WriteTxnMarkers (key 27): ends a producer's transaction in the partitions named with a
//! COMMIT or ABORT marker. In Kafka the coordinator sends it to the partitions' leaders; here
//! the coordinator writes its markers itself (`crate::transactions`), so this serves operators:
//! `kafka-transactions.sh abort` and `AdminClient.abortTransaction` end a hanging transaction
//! (one open in a partition that no coordinator will end) with an abort marker. The client
//! needs ClusterAction on the cluster, else CLUSTER_AUTHORIZATION_FAILED. A marker older than
//! the producer's epoch in the partition gets INVALID_PRODUCER_EPOCH; an unknown partition
//! UNKNOWN_TOPIC_OR_PARTITION; a cluster's follower NOT_LEADER_OR_FOLLOWER. The coordinator
//! epoch is not checked (operators send -1).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use crate::acl::Operation;
use crate::broker::now_ms;
use crate::protocol::Ctx;
use crate::protocol::error::storage_code;
use crate::storage::Marker;

pub async fn handle(ctx: Ctx, req: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    let b = &ctx.broker;
    let refused = if !ctx.allowed_on_cluster(Operation::ClusterAction) {
        Some(E::ClusterAuthorizationFailed)
    } else if ctx.follows() {
        Some(E::NotLeaderOrFollower)
    } else {
        None
    };
    let markers = req
        .markers
        .into_iter()
        .map(|m| {
            let pid = m.producer_id.0;
            let marker = if m.transaction_result {
                Marker::Commit
            } else {
                Marker::Abort
            };
            let topics = m
                .topics
                .into_iter()
                .map(|t| {
                    let topic = b.catalog.get(&t.name);
                    let partitions = t
                        .partition_indexes
                        .into_iter()
                        .map(|index| {
                            let code = match (refused, topic.as_ref().and_then(|t| t.partition(index))) {
                                (Some(e), _) => e.code(),
                                (None, None) => E::UnknownTopicOrPartition.code(),
                                (None, Some(p)) => {
                                    let now = now_ms();
                                    match p.append_requested_marker(pid, m.producer_epoch, marker, now) {
                                        Ok(offset) => {
                                            if let Some(c) = &b.cluster {
                                                crate::replication::advance(c, &p, offset + 1, now);
                                            }
                                            tracing::info!(topic = %t.name.as_str(), partition = index, producer_id = pid, epoch = m.producer_epoch, ?marker, offset, principal = ctx.asker().principal, "transaction marker written as asked");
                                            0
                                        }
                                        Err(e) => storage_code(&e),
                                    }
                                }
                            };
                            WritableTxnMarkerPartitionResult::default()
                                .with_partition_index(index)
                                .with_error_code(code)
                        })
                        .collect();
                    WritableTxnMarkerTopicResult::default()
                        .with_name(t.name)
                        .with_partitions(partitions)
                })
                .collect();
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics)
        })
        .collect();
    WriteTxnMarkersResponse::default().with_markers(markers)
}
