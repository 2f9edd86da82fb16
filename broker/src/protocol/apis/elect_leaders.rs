//! ElectLeaders (key 43): `kafka-leader-election.sh` and `AdminClient.electLeaders`, which
//! operators run after a broker came back, to give partitions back to their preferred leaders.
//! Here every partition's leader is the one broker that leads them all (this broker alone, or
//! `cluster.leader`: the lead moves by configuration, docs/replication.md), so no election is
//! ever needed: each partition asked for is answered ELECTION_NOT_NEEDED, as Kafka answers for
//! a partition already led by its preferred replica, and an unknown one
//! UNKNOWN_TOPIC_OR_PARTITION. Asked for every partition (a null list), the answer lists none, as
//! Kafka leaves out those that needed no election. The client needs Alter on the cluster, else
//! CLUSTER_AUTHORIZATION_FAILED; a follower answers NOT_CONTROLLER, so that clients ask the
//! leader.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};

use super::s;
use crate::protocol::Ctx;

/// Why no election is needed.
const LED_ALREADY: &str = "the partition is led by the broker that leads every partition (this \
                           broker, or cluster.leader): the lead moves by configuration";

pub async fn handle(ctx: Ctx, req: ElectLeadersRequest) -> ElectLeadersResponse {
    let refusal = if !ctx.allowed_on_cluster(crate::acl::Operation::Alter) {
        Some(E::ClusterAuthorizationFailed.code())
    } else {
        ctx.controller_refusal()
    };
    let Some(asked) = req.topic_partitions else {
        return ElectLeadersResponse::default().with_error_code(refusal.unwrap_or(0));
    };
    let results = asked
        .into_iter()
        .map(|t| {
            let topic = ctx.broker.catalog.get(&t.topic);
            let partition_result = t
                .partitions
                .into_iter()
                .map(|p| {
                    let (code, why) = match (refusal, &topic) {
                        (Some(code), _) => (code, None),
                        (None, Some(topic)) if topic.partition(p).is_some() => {
                            (E::ElectionNotNeeded.code(), Some(s(LED_ALREADY)))
                        }
                        (None, _) => (E::UnknownTopicOrPartition.code(), None),
                    };
                    PartitionResult::default()
                        .with_partition_id(p)
                        .with_error_code(code)
                        .with_error_message(why)
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(t.topic)
                .with_partition_result(partition_result)
        })
        .collect();
    ElectLeadersResponse::default()
        .with_error_code(refusal.unwrap_or(0))
        .with_replica_election_results(results)
}
