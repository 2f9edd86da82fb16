//! The Kafka protocol layer: framing glue, the route table and one handler file per API.
//!
//! ```text
//! frame (frame.rs) -> header -> Dispatcher::dispatch -> route for the API key
//!   -> decode body (kafka-protocol) -> apis/<api>.rs handler -> encode response frame
//! ```
//!
//! The route table is the single source of the versions we advertise: ApiVersions is answered
//! from it, so an advertised version always has a handler. Registering an API twice panics at
//! start-up (a programming error, never reachable from the network).
//!
//! Around every handler (`Typed`): a request under a `request_percentage` client quota is timed
//! (decoding and the polls of its handler) and charged (`client_quotas::timed`), and the
//! response's `throttle_time_ms` is raised to the longest throttle any quota gave the request.
//!
//! Handlers never touch files; they call the catalog, the partition logs and the group
//! coordinator, and map their typed errors to Kafka error codes in `error.rs`.

pub mod apis;
pub mod auth;
pub mod error;
pub mod fetch_sessions;
pub mod frame;
pub mod memory;
pub mod oauth;
pub mod scram;
pub mod scram_store;

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::{Encodable, Request as KafkaRequest};

use crate::acl;
use crate::broker::Broker;
use crate::client_quotas::{self, QuotaKey};

/// Which kind of listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Plaintext,
    Tls,
    /// A bidirectional stream of a QUIC connection (`net::quic`).
    Quic,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Plaintext => "kafka",
            ListenerKind::Tls => "kafka_tls",
            ListenerKind::Quic => "quic",
        }
    }
}

/// What the broker knows about one client connection.
#[derive(Debug)]
pub struct Session {
    pub peer: SocketAddr,
    pub listener: ListenerKind,
    /// Host and port this listener tells clients to connect to (Metadata, FindCoordinator).
    pub advertised_host: String,
    pub advertised_port: i32,
    /// Who the client is; shared by every session of one connection (all streams of a QUIC
    /// connection), so a principal proven on one stream holds for all.
    pub identity: Arc<auth::Identity>,
}

/// Everything a handler gets besides its request.
#[derive(Clone)]
pub struct Ctx {
    pub broker: Arc<Broker>,
    pub session: Arc<Session>,
    pub api_version: i16,
    pub client_id: Arc<str>,
    /// Milliseconds a quota policy throttled this request (`plugins::quota`); the connection
    /// reads and clears it after the response and mutes itself that long. One cell per
    /// connection: requests on a connection are handled one at a time.
    pub throttle_ms: Arc<AtomicU32>,
    /// Where a Fetch answer leaves the share of `broker.fetch_memory_bytes` it holds; the
    /// connection keeps it until the answer is written. One cell per connection.
    pub holding: Arc<memory::Holding>,
}

impl Ctx {
    /// Who sent the request, for the ACLs.
    pub fn asker(&self) -> acl::Asker<'_> {
        acl::Asker {
            // An unauthenticated SASL connection gets no further than SaslAuthenticate.
            principal: self.session.identity.principal().unwrap_or(auth::ANONYMOUS),
            host: self.session.peer.ip(),
        }
    }

    /// Whether the ACLs let the client perform `op` on the resource; a refusal is counted and
    /// logged at debug.
    pub fn allowed(&self, op: acl::Operation, resource: acl::ResourceType, name: &str) -> bool {
        let who = self.asker();
        let allowed = self.broker.acls.allowed(who, op, resource, name);
        if !allowed {
            self.refused(op, resource, name);
        }
        allowed
    }

    /// Whether the client may see the resource (Describe), for requests that list what there
    /// is: what it may not see is left out, not refused, so nothing is counted.
    pub fn sees(&self, resource: acl::ResourceType, name: &str) -> bool {
        self.broker
            .acls
            .allowed(self.asker(), acl::Operation::Describe, resource, name)
    }

    /// The operations the client may perform on the resource, as Metadata and DescribeGroups
    /// report them when asked, or `apis::OPERATIONS_NOT_ASKED`.
    pub fn operations(&self, asked: bool, resource: acl::ResourceType, name: &str) -> i32 {
        if !asked {
            return apis::OPERATIONS_NOT_ASKED;
        }
        self.broker.acls.operations(self.asker(), resource, name)
    }

    /// Why this broker does not serve a request on the group `id`: NOT_COORDINATOR on a
    /// cluster's follower (the leader coordinates every group), GROUP_AUTHORIZATION_FAILED when
    /// the ACLs refuse `op`.
    pub fn group_refusal(&self, op: acl::Operation, id: &str) -> Option<i16> {
        use kafka_protocol::error::ResponseError as E;
        if self.follows() {
            return Some(E::NotCoordinator.code());
        }
        (!self.allowed(op, acl::ResourceType::Group, id))
            .then_some(E::GroupAuthorizationFailed.code())
    }

    /// NOT_CONTROLLER on a cluster's follower, for the requests that change topics: the leader
    /// (Metadata's controller) takes them.
    pub fn controller_refusal(&self) -> Option<i16> {
        use kafka_protocol::error::ResponseError as E;
        self.follows().then_some(E::NotController.code())
    }

    /// Whether this broker follows another in a cluster (`crate::replication`).
    pub fn follows(&self) -> bool {
        self.broker.cluster.as_ref().is_some_and(|c| !c.is_leader())
    }

    /// Whether the client may perform `op` on the cluster.
    pub fn allowed_on_cluster(&self, op: acl::Operation) -> bool {
        self.allowed(op, acl::ResourceType::Cluster, acl::CLUSTER_NAME)
    }

    /// Counts and logs a refusal by the ACLs.
    pub fn refused(&self, op: acl::Operation, resource: acl::ResourceType, name: &str) {
        self.broker
            .metrics
            .acl_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let who = self.asker();
        tracing::debug!(principal = who.principal, host = %who.host, ?op, ?resource, name, "refused by the ACLs");
    }
}

/// What the connection does once a request is handled.
#[derive(Debug)]
pub enum Outcome {
    /// Send this response frame (size prefix included).
    Respond(Bytes),
    /// The request takes no response (produce with acks=0).
    Silent,
    /// Close the connection, for the reason given (logged with the peer): a response that
    /// cannot be produced (a handler bug), or a refused request that takes no response (produce
    /// with acks=0), so that the client learns of the failure at once instead of never.
    Close(&'static str),
}

pub type Reply = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Why a request could not be handled at all; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{api:?} v{version} is not supported (supported {min}..={max})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("{api:?} is not supported")]
    UnsupportedApi { api: ApiKey },
    #[error("malformed {api:?} v{version} request body: {reason}")]
    BadBody {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

trait Route: Send + Sync {
    fn versions(&self) -> (i16, i16);
    fn call(&self, ctx: Ctx, req: frame::Request) -> Result<Reply, DispatchError>;
}

/// A handler for one API whose requests and responses the kafka-protocol crate encodes.
struct Typed<R: KafkaRequest, F> {
    min: i16,
    max: i16,
    handler: F,
    /// Requests that take no response (produce with acks=0).
    silent: fn(&R) -> bool,
    /// What a request that takes no response ends in, from the response it would have had:
    /// `Outcome::Silent`, or `Outcome::Close` when that response carries an error.
    silent_end: fn(&R::Response) -> Outcome,
    _req: PhantomData<fn(R)>,
}

impl<R, F, Fut> Route for Typed<R, F>
where
    R: KafkaRequest + Send + 'static,
    R::Response: Throttle + Send + 'static,
    F: Fn(Ctx, R) -> Fut + Send + Sync,
    Fut: Future<Output = R::Response> + Send + 'static,
{
    fn versions(&self) -> (i16, i16) {
        (self.min, self.max)
    }

    fn call(&self, ctx: Ctx, req: frame::Request) -> Result<Reply, DispatchError> {
        let api = req.api_key;
        let version = req.header.request_api_version;
        let correlation_id = req.header.correlation_id;
        let decoding = ctx.broker.client_quotas.times_requests().then(Instant::now);
        let mut body = req.body;
        let decoded = R::decode(&mut body, version).map_err(|e| DispatchError::BadBody {
            api,
            version,
            reason: frame::one_line(&e),
        })?;
        let silent = (self.silent)(&decoded);
        let silent_end = self.silent_end;
        // A request under a request_percentage quota keeps a copy of its context to be charged
        // (one that takes no answer, a produce with acks 0, is exempt, as in Kafka).
        let timed = decoding
            .filter(|_| !silent && client_quotas::timed(&ctx, api, &decoded))
            .map(|start| (ctx.clone(), start.elapsed()));
        let throttle = ctx.throttle_ms.clone();
        let fut = (self.handler)(ctx, decoded);
        Ok(Box::pin(async move {
            let mut response = match timed {
                None => fut.await,
                Some((ctx, decoded_in)) => {
                    let (response, polled) = polled_for(fut).await;
                    let spent = decoded_in + polled;
                    client_quotas::charge(&ctx, QuotaKey::RequestPercentage, spent.as_secs_f64());
                    response
                }
            };
            if silent {
                return (silent_end)(&response);
            }
            let ms = throttle.load(Ordering::Relaxed);
            if ms > 0 {
                response.raise_throttle(ms.min(i32::MAX as u32) as i32);
            }
            encode_response(api, version, correlation_id, &response)
        }))
    }
}

/// Runs `fut` to its end, with the time spent inside its polls: the time a runtime thread
/// worked on it, not the time it waited.
async fn polled_for<F: Future>(fut: F) -> (F::Output, Duration) {
    let mut fut = std::pin::pin!(fut);
    let mut spent = Duration::ZERO;
    let output = std::future::poll_fn(|cx| {
        let start = Instant::now();
        let poll = fut.as_mut().poll(cx);
        spent += start.elapsed();
        poll
    })
    .await;
    (output, spent)
}

/// A response's `throttle_time_ms`, raised to the longest throttle any quota gave its request.
/// (A version without the field leaves it out when encoding.)
pub trait Throttle {
    fn raise_throttle(&mut self, ms: i32);
}

macro_rules! throttle_time_ms {
    ($($response:ident),* $(,)?) => {$(
        impl Throttle for kafka_protocol::messages::$response {
            fn raise_throttle(&mut self, ms: i32) {
                self.throttle_time_ms = self.throttle_time_ms.max(ms);
            }
        }
    )*};
}

macro_rules! no_throttle_time_ms {
    ($($response:ident),* $(,)?) => {$(
        impl Throttle for kafka_protocol::messages::$response {
            fn raise_throttle(&mut self, _ms: i32) {}
        }
    )*};
}

throttle_time_ms!(
    ProduceResponse,
    FetchResponse,
    ListOffsetsResponse,
    OffsetForLeaderEpochResponse,
    MetadataResponse,
    CreateTopicsResponse,
    DeleteTopicsResponse,
    CreatePartitionsResponse,
    DescribeConfigsResponse,
    ListConfigResourcesResponse,
    AlterConfigsResponse,
    IncrementalAlterConfigsResponse,
    DeleteRecordsResponse,
    DescribeLogDirsResponse,
    DescribeClusterResponse,
    ElectLeadersResponse,
    BrokerHeartbeatResponse,
    ListPartitionReassignmentsResponse,
    DescribeUserScramCredentialsResponse,
    AlterUserScramCredentialsResponse,
    DescribeClientQuotasResponse,
    AlterClientQuotasResponse,
    DescribeAclsResponse,
    CreateAclsResponse,
    DeleteAclsResponse,
    InitProducerIdResponse,
    AddPartitionsToTxnResponse,
    AddOffsetsToTxnResponse,
    EndTxnResponse,
    TxnOffsetCommitResponse,
    DescribeTransactionsResponse,
    DescribeProducersResponse,
    ListTransactionsResponse,
    FindCoordinatorResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    HeartbeatResponse,
    LeaveGroupResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    ListGroupsResponse,
    DescribeGroupsResponse,
    DeleteGroupsResponse,
    OffsetDeleteResponse,
    ConsumerGroupHeartbeatResponse,
    ConsumerGroupDescribeResponse,
);

no_throttle_time_ms!(
    EnvelopeResponse,
    WriteTxnMarkersResponse,
    SaslHandshakeResponse,
    SaslAuthenticateResponse,
);

/// Encodes a whole response frame: size, response header, body.
pub fn encode_response<M: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &M,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let result = header
        .encode(&mut buf, api.response_header_version(version))
        .and_then(|_| body.encode(&mut buf, version));
    if let Err(e) = result {
        // Only reachable through a handler bug (a field that the version cannot carry).
        tracing::error!(?api, version, error = %e, "cannot encode response; closing connection");
        return Outcome::Close("a response could not be encoded");
    }
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Outcome::Respond(buf.freeze())
}

/// The route table: API key -> handler, with the versions each supports.
pub struct Dispatcher {
    routes: BTreeMap<i16, Box<dyn Route>>,
    legacy_produce: bool,
}

impl Dispatcher {
    fn new() -> Self {
        Dispatcher {
            routes: BTreeMap::new(),
            legacy_produce: false,
        }
    }

    fn add<R, F, Fut>(&mut self, min: i16, max: i16, handler: F) -> &mut Self
    where
        R: KafkaRequest + Send + 'static,
        R::Response: Throttle + Send + 'static,
        F: Fn(Ctx, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R::Response> + Send + 'static,
    {
        self.add_with_silence::<R, F, Fut>(min, max, handler, |_| false, |_| Outcome::Silent)
    }

    fn add_with_silence<R, F, Fut>(
        &mut self,
        min: i16,
        max: i16,
        handler: F,
        silent: fn(&R) -> bool,
        silent_end: fn(&R::Response) -> Outcome,
    ) -> &mut Self
    where
        R: KafkaRequest + Send + 'static,
        R::Response: Throttle + Send + 'static,
        F: Fn(Ctx, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R::Response> + Send + 'static,
    {
        assert!(
            min >= R::VERSIONS.min && max <= R::VERSIONS.max && min <= max,
            "API {} registered with versions {min}..={max} outside the codec's {}",
            R::KEY,
            R::VERSIONS
        );
        let route = Typed {
            min,
            max,
            handler,
            silent,
            silent_end,
            _req: PhantomData,
        };
        let previous = self.routes.insert(R::KEY, Box::new(route));
        assert!(previous.is_none(), "API {} registered twice", R::KEY);
        self
    }

    /// Versions advertised in ApiVersions: (api key, min, max).
    pub fn advertised(&self) -> Vec<(i16, i16, i16)> {
        let mut list: Vec<(i16, i16, i16)> = self
            .routes
            .iter()
            .map(|(key, route)| {
                let (mut min, max) = route.versions();
                // Advertise Produce from v0 although v0-2 are refused: librdkafka only uses
                // compression with a broker that lists produce v0 (KAFKA-18659).
                if *key == ApiKey::Produce as i16 && self.legacy_produce {
                    min = 0;
                }
                // OffsetCommit v1 is read by hand (`offset_commit::handle_v1`).
                if *key == ApiKey::OffsetCommit as i16 {
                    min = 1;
                }
                (*key, min, max)
            })
            .collect();
        list.push((
            ApiKey::ApiVersions as i16,
            0,
            apis::api_versions::MAX_VERSION,
        ));
        list.sort_unstable();
        list
    }

    /// Whether `version` of `api` has a handler.
    pub fn serves(&self, api: ApiKey, version: i16) -> bool {
        self.routes.get(&(api as i16)).is_some_and(|r| {
            let (min, max) = r.versions();
            (min..=max).contains(&version)
        })
    }

    /// Routes one decoded request to its handler.
    pub fn dispatch(&self, ctx: Ctx, req: frame::Request) -> Result<Reply, DispatchError> {
        let api = req.api_key;
        let version = req.header.request_api_version;
        if api == ApiKey::ApiVersions {
            return Ok(apis::api_versions::handle(ctx, req, self.advertised()));
        }
        if api == ApiKey::Produce && (0..3).contains(&version) && self.legacy_produce {
            return Ok(apis::produce::refuse_legacy(req));
        }
        if api == ApiKey::OffsetCommit && version == 1 && self.routes.contains_key(&(api as i16)) {
            return apis::offset_commit::handle_v1(ctx, req);
        }
        let Some(route) = self.routes.get(&(api as i16)) else {
            return Err(DispatchError::UnsupportedApi { api });
        };
        let (min, max) = route.versions();
        if version < min || version > max {
            return Err(DispatchError::UnsupportedVersion {
                api,
                version,
                min,
                max,
            });
        }
        route.call(ctx, req)
    }
}

/// The APIs this broker serves and the versions of each. The maxima are the newest versions
/// whose semantics the handlers honour in full; clients negotiate down to them.
pub fn routes() -> Dispatcher {
    use apis::*;
    use kafka_protocol::messages::*;
    let mut d = Dispatcher::new();
    d.legacy_produce = true;
    d.add_with_silence::<ProduceRequest, _, _>(
        3,
        10,
        produce::handle,
        |r| r.acks == 0,
        produce::unacknowledged_end,
    )
    .add::<FetchRequest, _, _>(4, 16, fetch::handle)
    .add::<ListOffsetsRequest, _, _>(1, 10, list_offsets::handle)
    .add::<OffsetForLeaderEpochRequest, _, _>(2, 4, offset_for_leader_epoch::handle)
    .add::<MetadataRequest, _, _>(0, 13, metadata::handle)
    .add::<CreateTopicsRequest, _, _>(2, 7, create_topics::handle)
    .add::<DeleteTopicsRequest, _, _>(1, 6, delete_topics::handle)
    .add::<CreatePartitionsRequest, _, _>(0, 3, create_partitions::handle)
    .add::<DescribeConfigsRequest, _, _>(1, 4, describe_configs::handle)
    .add::<ListConfigResourcesRequest, _, _>(0, 1, list_config_resources::handle)
    .add::<AlterConfigsRequest, _, _>(0, 2, alter_configs::handle)
    .add::<IncrementalAlterConfigsRequest, _, _>(0, 1, incremental_alter_configs::handle)
    .add::<DeleteRecordsRequest, _, _>(0, 2, delete_records::handle)
    .add::<DescribeLogDirsRequest, _, _>(1, 4, describe_log_dirs::handle)
    .add::<DescribeClusterRequest, _, _>(0, 2, describe_cluster::handle)
    .add::<ElectLeadersRequest, _, _>(0, 2, elect_leaders::handle)
    .add::<ListPartitionReassignmentsRequest, _, _>(0, 0, list_partition_reassignments::handle)
    .add::<DescribeUserScramCredentialsRequest, _, _>(0, 0, describe_user_scram_credentials::handle)
    .add::<AlterUserScramCredentialsRequest, _, _>(0, 0, alter_user_scram_credentials::handle)
    .add::<DescribeClientQuotasRequest, _, _>(0, 1, describe_client_quotas::handle)
    .add::<EnvelopeRequest, _, _>(0, 0, envelope::handle)
    .add::<AlterClientQuotasRequest, _, _>(0, 1, alter_client_quotas::handle)
    .add::<DescribeAclsRequest, _, _>(1, 3, describe_acls::handle)
    .add::<CreateAclsRequest, _, _>(1, 3, create_acls::handle)
    .add::<DeleteAclsRequest, _, _>(1, 3, delete_acls::handle)
    .add::<InitProducerIdRequest, _, _>(0, 4, init_producer_id::handle)
    .add::<AddPartitionsToTxnRequest, _, _>(0, 3, add_partitions_to_txn::handle)
    .add::<AddOffsetsToTxnRequest, _, _>(0, 3, add_offsets_to_txn::handle)
    .add::<EndTxnRequest, _, _>(0, 3, end_txn::handle)
    .add::<TxnOffsetCommitRequest, _, _>(0, 3, txn_offset_commit::handle)
    .add::<DescribeTransactionsRequest, _, _>(0, 0, describe_transactions::handle)
    .add::<DescribeProducersRequest, _, _>(0, 0, describe_producers::handle)
    .add::<WriteTxnMarkersRequest, _, _>(1, 1, write_txn_markers::handle)
    .add::<BrokerHeartbeatRequest, _, _>(0, 1, broker_heartbeat::handle)
    .add::<ListTransactionsRequest, _, _>(0, 1, list_transactions::handle)
    .add::<SaslHandshakeRequest, _, _>(0, 1, sasl::handshake)
    .add::<SaslAuthenticateRequest, _, _>(0, 2, sasl::authenticate);
    groups_routes(&mut d);
    d
}

fn groups_routes(d: &mut Dispatcher) {
    use apis::*;
    use kafka_protocol::messages::*;
    d.add::<FindCoordinatorRequest, _, _>(0, 4, find_coordinator::handle)
        .add::<JoinGroupRequest, _, _>(0, 9, join_group::handle)
        .add::<SyncGroupRequest, _, _>(0, 5, sync_group::handle)
        .add::<HeartbeatRequest, _, _>(0, 4, heartbeat::handle)
        .add::<LeaveGroupRequest, _, _>(0, 5, leave_group::handle)
        .add::<OffsetCommitRequest, _, _>(2, 9, offset_commit::handle)
        .add::<OffsetFetchRequest, _, _>(1, 9, offset_fetch::handle)
        .add::<ListGroupsRequest, _, _>(0, 5, list_groups::handle)
        .add::<DescribeGroupsRequest, _, _>(0, 5, describe_groups::handle)
        .add::<DeleteGroupsRequest, _, _>(0, 2, delete_groups::handle)
        .add::<OffsetDeleteRequest, _, _>(0, 0, offset_delete::handle)
        .add::<ConsumerGroupHeartbeatRequest, _, _>(0, 1, consumer_group_heartbeat::handle)
        .add::<ConsumerGroupDescribeRequest, _, _>(0, 1, consumer_group_describe::handle);
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_table_builds_and_advertises_produce_from_v0() {
        let d = super::routes();
        let adv = d.advertised();
        let produce = adv.iter().find(|(k, _, _)| *k == 0).unwrap();
        assert_eq!((produce.1, produce.2), (0, 10));
        let mut keys: Vec<i16> = adv.iter().map(|(k, _, _)| *k).collect();
        keys.dedup();
        assert_eq!(keys.len(), adv.len());
    }
}
