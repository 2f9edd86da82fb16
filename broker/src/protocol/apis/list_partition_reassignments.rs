//! ListPartitionReassignments (key 46): `kafka-reassign-partitions.sh --list` and
//! `AdminClient.listPartitionReassignments`. Every broker holds every partition and replicas
//! are not moved (AlterPartitionReassignments is not served), so none is ever in progress: the
//! answer lists no topic, as Kafka's does with none ongoing. The client needs Describe on the
//! cluster, else CLUSTER_AUTHORIZATION_FAILED; a follower answers NOT_CONTROLLER.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};

use crate::protocol::Ctx;

pub async fn handle(
    ctx: Ctx,
    _req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let code = if !ctx.allowed_on_cluster(crate::acl::Operation::Describe) {
        E::ClusterAuthorizationFailed.code()
    } else {
        ctx.controller_refusal().unwrap_or(0)
    };
    ListPartitionReassignmentsResponse::default().with_error_code(code)
}
