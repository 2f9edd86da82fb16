//! BrokerHeartbeat (key 63), of which a follower sends one kind: `want_shut_down` as it stops,
//! as a Kafka broker tells its controller in a controlled shutdown. The leader then takes the
//! follower out of every partition's in-sync set at once (`Cluster::follower_stopping`), so
//! acks=all produces and commits stop waiting for it; without it they would wait until
//! `cluster.replica_lag_time_max` had passed with no fetch from it. It comes on the connection
//! the follower fetches on, after its last fetch was answered, so no fetch of it is handled
//! later. The sender needs ClusterAction on the cluster (CLUSTER_AUTHORIZATION_FAILED); a
//! broker that does not lead a cluster answers NOT_CONTROLLER, and one not among its followers
//! BROKER_ID_NOT_REGISTERED. A heartbeat that does not ask to shut down changes nothing: in
//! Runnel a follower's fetches say it is alive.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{BrokerHeartbeatRequest, BrokerHeartbeatResponse};

use crate::acl::Operation;
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse {
    let id = req.broker_id.0;
    let answer = |e: Option<E>| {
        BrokerHeartbeatResponse::default()
            .with_error_code(e.map_or(0, |e| e.code()))
            .with_is_caught_up(e.is_none())
            .with_is_fenced(e.is_none() && req.want_shut_down)
            .with_should_shut_down(e.is_none() && req.want_shut_down)
    };
    if !ctx.allowed_on_cluster(Operation::ClusterAction) {
        return answer(Some(E::ClusterAuthorizationFailed));
    }
    let Some(cluster) = ctx.broker.cluster.as_ref().filter(|c| c.is_leader()) else {
        return answer(Some(E::NotController));
    };
    if !cluster.followers().any(|f| f == id) {
        return answer(Some(E::BrokerIdNotRegistered));
    }
    if !req.want_shut_down {
        return answer(None);
    }
    answer(
        cluster
            .follower_stopping(&ctx.broker, id, &ctx.session)
            .err(),
    )
}
