//! DescribeCluster (key 60): the brokers, the controller and the cluster id, as Metadata gives
//! them, for `AdminClient.describeCluster` (librdkafka's `rd_kafka_DescribeCluster`, the Java
//! client's). Like Metadata it needs no ACL; asked for, it tells the operations the client may
//! perform on the cluster (none without Describe on it, as in Kafka). Only broker endpoints are
//! described (v1's `endpoint_type` 1): a request for the controllers' gets
//! MISMATCHED_ENDPOINT_TYPE, as from a Kafka broker, and an unknown type
//! UNSUPPORTED_ENDPOINT_TYPE. No broker is ever fenced (v2).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::metadata::{self, cluster_operations};
use super::s;
use crate::protocol::Ctx;

/// `endpoint_type` of the brokers, and of the controllers.
const BROKERS: i8 = 1;
const CONTROLLERS: i8 = 2;

pub async fn handle(ctx: Ctx, req: DescribeClusterRequest) -> DescribeClusterResponse {
    if req.endpoint_type != BROKERS {
        let error = if req.endpoint_type == CONTROLLERS {
            E::MismatchedEndpointType
        } else {
            E::UnsupportedEndpointType
        };
        return DescribeClusterResponse::default()
            .with_error_code(error.code())
            .with_error_message(Some(s(
                "this broker describes broker endpoints only (endpoint_type 1)",
            )));
    }
    let b = &ctx.broker;
    let controller = b.cluster.as_ref().map_or(b.node_id, |c| c.leader);
    let brokers = metadata::brokers(&ctx)
        .into_iter()
        .map(|(id, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(s(host))
                .with_port(port)
        })
        .collect();
    DescribeClusterResponse::default()
        .with_endpoint_type(BROKERS)
        .with_cluster_id(s(b.cluster_id()))
        .with_controller_id(BrokerId(controller))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(cluster_operations(
            &ctx,
            req.include_cluster_authorized_operations,
        ))
}
