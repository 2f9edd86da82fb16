//! Replication to peer brokers (`[cluster]`): one leader, followers that copy it.
//!
//! The brokers of a cluster are named in `cluster.brokers`; one of them, the leader, takes
//! every write and serves every consumer, group and admin request; the others follow it. A
//! follower ([`follower`]) keeps the leader's topics (names, ids, partition counts, configs) and
//! fetches its record batches with Kafka's replica Fetch (a Fetch request carrying the
//! follower's node id), appending them unchanged at the same offsets.
//!
//! The leader learns from each replica fetch how far the follower's log reaches, and keeps, per
//! partition ([`ReplicaState`]):
//! * the in-sync set (ISR): the leader, and each follower that caught up with the leader's log
//!   end within `cluster.replica_lag_time_max` (Kafka's rule: a fetch from at least the log end
//!   the leader had at the follower's previous fetch counts as caught up);
//! * the high watermark: the lowest log end among the in-sync brokers. Consumers read below it
//!   only, and a produce with acks=all is answered once it covers the produced records.
//!
//! With fewer in-sync brokers than the topic's `min.insync.replicas` (by default
//! `cluster.min_insync_replicas`), a produce with acks=all is refused (NOT_ENOUGH_REPLICAS) and
//! nothing is written. A broker alone (no `[cluster]`) has no followers: its high watermark is
//! its log end and nothing here runs.
//!
//! Leadership is fixed by the config (`cluster.leader`); there is no automatic failover. A
//! broker that starts as a follower cuts from its log, above the high watermark it knew, what
//! the leader does not have (records it took as a leader that no follower copied), so moving the
//! lead by hand to a broker that was in sync loses only writes that were not acknowledged with
//! acks=all. Records the same leader gave it are never cut: a leader without them lost them (a
//! power cut), and takes no writes to the partition until the lead moves ([`lost_records`]).

pub mod checkpoint;
pub mod follower;
pub(crate) mod peer;

pub use peer::Login;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_config::{ClusterBroker, ClusterConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::catalog::Partition;
use crate::log_budget::{LogBudget, within_budget};
use crate::protocol::ListenerKind;

/// How long a follower waits for the leader's answer to a request it forwards
/// ([`Cluster::forward`]).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The start of the client id a broker's requests to another carry (`runnel-replica-<node>`).
pub const PEER_CLIENT_ID_PREFIX: &str = "runnel-replica-";

/// The cluster as this broker sees it: who is in it, who leads.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub node_id: i32,
    pub leader: i32,
    /// Every broker, this one included, sorted by node id.
    pub brokers: Vec<ClusterBroker>,
    pub replica_lag_time_max: Duration,
    pub replica_fetch_wait: Duration,
    /// Set when a follower should read the leader's topics again before its next fetch.
    resync: Arc<AtomicBool>,
    /// On a follower: whether it is connected to the leader and fetching.
    following: Arc<AtomicBool>,
    /// On a follower: stop without telling the leader, as a broker that crashes or is cut
    /// off does ([`Cluster::stop_unannounced`]).
    stop_unannounced: Arc<AtomicBool>,
    /// On a follower: why it last could not follow the leader, until it follows again.
    follow_error: Arc<Mutex<Option<String>>>,
    /// On a follower: the topics it last asked the leader to create, and when.
    creating: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    /// On a follower: the topics whose creation the leader refused, and when that was said.
    create_refused: Arc<Mutex<HashMap<String, std::time::Instant>>>,
    /// How a follower logs in to the leader, if it must.
    pub login: Option<Login>,
    /// Every broker's TLS listener (`cluster.tls_brokers`), sorted by node id; empty when not
    /// given.
    pub tls_brokers: Vec<ClusterBroker>,
    /// With `cluster.tls`: how this broker's connections to the leader are secured.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// On the leader: the connection each follower fetches on, to tell two brokers that were
    /// given one node id apart ([`Cluster::claim_fetches`]).
    fetchers: Arc<Mutex<HashMap<i32, Fetcher>>>,
    /// On the leader: told when a follower says it copied more of the committed offsets.
    offsets_copied: Arc<tokio::sync::Notify>,
    /// When this broker started (ms since the epoch): a leader counts a follower not heard
    /// from since then in sync until `replica_lag_time_max` has passed.
    started_ms: i64,
}

/// The connection a follower's replica fetches come on, as the leader last saw it.
#[derive(Debug)]
struct Fetcher {
    session: std::sync::Weak<crate::protocol::Session>,
    peer: std::net::SocketAddr,
    last_fetch_ms: i64,
    /// Another connection refused as the same follower, and when it last was.
    contender: Option<(std::net::SocketAddr, i64)>,
    /// How many of the leader's changes of committed offsets the follower has copied, as its
    /// last fetch said ([`OFFSETS_COPIED_TAG`]); `None` when it does not say.
    offsets_copied: Option<u64>,
    /// The follower said it is stopping ([`Cluster::follower_stopping`]): nothing waits for
    /// it until it fetches again.
    stopped: bool,
}

/// How long a connection that stopped fetching keeps its follower's node id: a follower
/// fetches at least every `cluster.replica_fetch_wait`, so one silent this long is gone (its
/// connection half-open) or stuck, and the follower may fetch on a new one.
pub(crate) const FETCHER_SILENT_MS: i64 = 10_000;

/// Brokers found fetching with another's node id, said a minute.
static SHARED_NODE_ID: LogBudget = LogBudget::new(4);

impl Cluster {
    /// The cluster of a validated config, or `None` for a broker alone. Fails when the TLS
    /// files of `cluster.tls_*` cannot be read.
    pub fn from_config(node_id: i32, config: &ClusterConfig) -> anyhow::Result<Option<Cluster>> {
        let mut brokers = config.parsed_brokers().map_err(anyhow::Error::msg)?;
        let (false, Some(leader)) = (brokers.is_empty(), config.leader_id()) else {
            return Ok(None);
        };
        brokers.sort_by_key(|b| b.node_id);
        let mut tls_brokers = config.parsed_tls_brokers().map_err(anyhow::Error::msg)?;
        tls_brokers.sort_by_key(|b| b.node_id);
        let tls = if config.tls {
            Some(client_tls(config)?)
        } else {
            None
        };
        Ok(Some(Cluster {
            node_id,
            leader,
            brokers,
            replica_lag_time_max: config.replica_lag_time_max,
            replica_fetch_wait: config.replica_fetch_wait,
            resync: Arc::default(),
            following: Arc::default(),
            stop_unannounced: Arc::default(),
            follow_error: Arc::default(),
            creating: Arc::default(),
            create_refused: Arc::default(),
            login: (!config.sasl_mechanism.is_empty()).then(|| Login {
                mechanism: config.sasl_mechanism.clone(),
                username: config.sasl_username.clone(),
                password: config.sasl_password.clone(),
            }),
            tls_brokers,
            tls,
            fetchers: Arc::default(),
            offsets_copied: Arc::default(),
            started_ms: crate::broker::now_ms(),
        }))
    }

    /// On the leader: whether the replica fetches of follower `id` may come on the connection
    /// of `session`. A follower fetches on one connection at a time. A second connection
    /// fetching as the same node is refused while the first is open and fetching: it is the
    /// follower's next connection while the last one's fetch is still being answered, or
    /// another broker given the same `broker.node_id` (a copied config or image), which shows
    /// when the first fetches again. Kafka refuses a second registration of a broker id for
    /// the same reason: taken as one follower, the two would pass for a single copy, whichever
    /// fetched last, and the in-sync set could vouch for a broker that is down. The node id
    /// passes to a new connection once the old one closed or has not fetched for
    /// [`FETCHER_SILENT_MS`].
    pub(crate) fn claim_fetches(
        &self,
        id: i32,
        session: &Arc<crate::protocol::Session>,
        now_ms: i64,
    ) -> bool {
        let mut fetchers = self.fetchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fetchers.get_mut(&id) {
            if std::ptr::eq(f.session.as_ptr(), Arc::as_ptr(session)) {
                f.last_fetch_ms = now_ms;
                f.stopped = false;
                if let Some((refused, _)) = f
                    .contender
                    .filter(|(_, at)| now_ms - at < FETCHER_SILENT_MS)
                {
                    within_budget!(SHARED_NODE_ID, error, node_id = id, fetching = %f.peer, %refused,
                        "two brokers fetch as the same follower: each broker of a cluster needs its own broker.node_id; the second one's replica fetches are refused while the first fetches");
                }
                return true;
            }
            if !f.stopped
                && f.session.strong_count() > 0
                && now_ms - f.last_fetch_ms < FETCHER_SILENT_MS
            {
                f.contender = Some((session.peer, now_ms));
                return false;
            }
        }
        fetchers.insert(
            id,
            Fetcher {
                session: Arc::downgrade(session),
                peer: session.peer,
                last_fetch_ms: now_ms,
                contender: None,
                offsets_copied: None,
                stopped: false,
            },
        );
        true
    }

    /// On the leader: follower `id` says, on the connection of `session`, that it is stopping
    /// (a BrokerHeartbeat with `want_shut_down`, as a Kafka broker tells its controller in a
    /// controlled shutdown). It leaves the in-sync set of every partition at once, rather than
    /// after `replica_lag_time_max` of silence, so acks=all produces and commits stop waiting
    /// for it; it is back in once it fetches and catches up again. Refused (as another broker
    /// with its node id) while another connection fetches as that follower.
    pub(crate) fn follower_stopping(
        &self,
        broker: &Broker,
        id: i32,
        session: &Arc<crate::protocol::Session>,
    ) -> Result<(), kafka_protocol::error::ResponseError> {
        let now = crate::broker::now_ms();
        {
            let mut fetchers = self.fetchers.lock().unwrap_or_else(|e| e.into_inner());
            match fetchers.get_mut(&id) {
                Some(f) if std::ptr::eq(f.session.as_ptr(), Arc::as_ptr(session)) => {
                    f.stopped = true;
                }
                Some(f)
                    if !f.stopped
                        && f.session.strong_count() > 0
                        && now - f.last_fetch_ms < FETCHER_SILENT_MS =>
                {
                    return Err(kafka_protocol::error::ResponseError::DuplicateBrokerRegistration);
                }
                _ => {
                    fetchers.insert(
                        id,
                        Fetcher {
                            session: Arc::downgrade(session),
                            peer: session.peer,
                            last_fetch_ms: now,
                            contender: None,
                            offsets_copied: None,
                            stopped: true,
                        },
                    );
                }
            }
        }
        for topic in broker.catalog.list() {
            for p in topic.partitions() {
                follower_stopped(self, &p, id, now);
            }
        }
        self.offsets_copied.notify_waiters();
        tracing::info!(
            follower = id,
            "a follower is stopping: it leaves the in-sync set of every partition until it is back and caught up"
        );
        Ok(())
    }

    /// On the leader: whether follower `id` said it is stopping and has not fetched since.
    pub(crate) fn stopped(&self, id: i32) -> bool {
        let fetchers = self.fetchers.lock().unwrap_or_else(|e| e.into_inner());
        fetchers.get(&id).is_some_and(|f| f.stopped)
    }

    /// On the leader: notes how many of its changes of committed offsets follower `id` has
    /// copied, as its replica fetch on this connection says.
    pub(crate) fn copied_offsets(&self, id: i32, copied: Option<u64>) {
        let mut fetchers = self.fetchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fetchers.get_mut(&id)
            && f.offsets_copied != copied
        {
            f.offsets_copied = copied;
            self.offsets_copied.notify_waiters();
        }
    }

    /// On the leader: waits, for at most `timeout`, until every follower in sync has copied
    /// the first `changes` changes of committed offsets (`GroupCoordinator::offsets_changes`),
    /// as Kafka's coordinator answers a commit once the in-sync replicas of its offsets topic
    /// have it. A follower counts as the in-sync set counts it: while it fetched within
    /// `replica_lag_time_max` (also on a connection since closed: it may be reconnecting), and,
    /// not heard from since this leader started, until that long after the start. One that
    /// does not say what it copied (an older build) is not waited for. Whether they all have.
    pub async fn wait_offsets_copied(&self, changes: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let told = self.offsets_copied.notified();
            tokio::pin!(told);
            told.as_mut().enable();
            let now = crate::broker::now_ms();
            let lag_max = self.lag_max_ms();
            let behind = {
                let fetchers = self.fetchers.lock().unwrap_or_else(|e| e.into_inner());
                self.followers().any(|id| match fetchers.get(&id) {
                    Some(f) => {
                        !f.stopped
                            && now - f.last_fetch_ms < lag_max
                            && f.offsets_copied.is_some_and(|c| c < changes)
                    }
                    None => now - self.started_ms < lag_max,
                })
            };
            if !behind {
                return true;
            }
            // Also looked at again as a follower falls silent, which it tells no one.
            let until = deadline.min(tokio::time::Instant::now() + self.replica_fetch_wait);
            if tokio::time::timeout_at(until, told).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return false;
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        self.node_id == self.leader
    }

    /// Sends `req` to the leader as this broker and returns its answer: for the requests a
    /// follower forwards, as Kafka's brokers forward theirs to the controller. One connection
    /// per request: these are rare admin requests.
    pub async fn forward<R: kafka_protocol::protocol::Request>(
        &self,
        req: &R,
        version: i16,
    ) -> anyhow::Result<R::Response> {
        let mut peer = self.connect_to_leader(FORWARD_TIMEOUT).await?;
        peer.call(req, version).await
    }

    /// Sends a client's request to the leader inside an Envelope (KIP-590) that names the
    /// client's principal and address, so that the leader judges it as the client's: for the
    /// admin requests a follower forwards (ACLs, client quotas). Returns the leader's answer.
    pub async fn forward_as<R: kafka_protocol::protocol::Request>(
        &self,
        req: &R,
        version: i16,
        client: (&str, std::net::IpAddr, &str),
    ) -> anyhow::Result<R::Response> {
        use bytes::Bytes;
        use kafka_protocol::messages::{ApiKey, EnvelopeRequest, RequestHeader, ResponseHeader};
        use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
        let (principal, host, client_id) = client;
        let api = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("API key {}", R::KEY))?;
        let mut inner = bytes::BytesMut::with_capacity(256);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_client_id(Some(StrBytes::from_string(client_id.to_string())))
            .encode(&mut inner, api.request_header_version(version))?;
        req.encode(&mut inner, version)?;
        let address = match host {
            std::net::IpAddr::V4(ip) => Bytes::copy_from_slice(&ip.octets()),
            std::net::IpAddr::V6(ip) => Bytes::copy_from_slice(&ip.octets()),
        };
        let envelope = EnvelopeRequest::default()
            .with_request_data(inner.freeze())
            .with_request_principal(Some(Bytes::copy_from_slice(principal.as_bytes())))
            .with_client_host_address(address);
        let mut peer = self.connect_to_leader(FORWARD_TIMEOUT).await?;
        let answer = peer.call(&envelope, 0).await?;
        if answer.error_code != 0 {
            let error = kafka_protocol::error::ResponseError::try_from_code(answer.error_code);
            anyhow::bail!("the leader refused the forwarded request: {error:?}");
        }
        let mut data = answer
            .response_data
            .ok_or_else(|| anyhow::anyhow!("the leader's Envelope answer has no response"))?;
        ResponseHeader::decode(&mut data, api.response_header_version(version))?;
        R::Response::decode(&mut data, version)
    }

    /// Where this broker reaches the leader: its `tls_brokers` address with `cluster.tls`, its
    /// `brokers` address without.
    pub fn leader_address(&self) -> &str {
        let list = if self.tls.is_some() {
            &self.tls_brokers
        } else {
            &self.brokers
        };
        list.iter()
            .find(|b| b.node_id == self.leader)
            .map_or("", |b| b.address.as_str())
    }

    /// A connection to the leader as this broker: over TLS with `cluster.tls`, logged in with
    /// `cluster.sasl_*` when set; every request on it must be answered within `timeout`.
    pub(crate) async fn connect_to_leader(&self, timeout: Duration) -> anyhow::Result<peer::Peer> {
        let address = self.leader_address();
        let tls = match &self.tls {
            None => None,
            Some(config) => Some((config.clone(), server_name(address)?)),
        };
        let client_id = format!("{PEER_CLIENT_ID_PREFIX}{}", self.node_id);
        let mut peer =
            peer::Peer::connect_as(address, &client_id, "the leader", tls, timeout).await?;
        if let Some(login) = &self.login {
            peer.login(login).await?;
        }
        Ok(peer)
    }

    /// The followers' node ids.
    pub fn followers(&self) -> impl Iterator<Item = i32> + '_ {
        self.brokers
            .iter()
            .map(|b| b.node_id)
            .filter(|&id| id != self.leader)
    }

    /// Every replica of a partition, the leader first (Metadata's `replica_nodes`).
    pub fn replicas(&self) -> Vec<i32> {
        std::iter::once(self.leader)
            .chain(self.followers())
            .collect()
    }

    pub fn replication_factor(&self) -> i16 {
        self.brokers.len() as i16
    }

    /// Where clients of `listener` reach broker `node_id`: its `tls_brokers` address for a TLS
    /// listener when those are given, else its `brokers` address.
    pub fn address_of(&self, node_id: i32, listener: ListenerKind) -> Option<&str> {
        let list = match listener {
            ListenerKind::Tls if !self.tls_brokers.is_empty() => &self.tls_brokers,
            _ => &self.brokers,
        };
        list.iter()
            .find(|b| b.node_id == node_id)
            .map(|b| b.address.as_str())
    }

    /// On a follower: read the leader's topics, ACLs and offsets again before the next fetch
    /// (after a change forwarded to it).
    pub fn copy_soon(&self) {
        self.resync.store(true, Ordering::Release);
    }

    /// On a follower: why it last could not follow the leader, while it does not.
    pub fn follow_error(&self) -> Option<String> {
        self.follow_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// On a follower: when it stops, do not tell the leader, as a broker that crashes or is
    /// cut off from it does not (for tests and drills: the leader then counts it in sync until
    /// `replica_lag_time_max` has passed).
    pub fn stop_unannounced(&self) {
        self.stop_unannounced.store(true, Ordering::Release);
    }

    /// On a follower: whether it is connected to the leader and fetching.
    pub fn following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }

    fn lag_max_ms(&self) -> i64 {
        self.replica_lag_time_max.as_millis() as i64
    }
}

/// The TLS client config of `cluster.tls`: the leader's certificate checked against `tls_ca`,
/// and the follower's own certificate when `tls_cert` is set.
fn client_tls(config: &ClusterConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let identity = (!config.tls_cert.as_os_str().is_empty()).then_some((
        (config.tls_cert.as_path(), "cluster.tls_cert"),
        (config.tls_key.as_path(), "cluster.tls_key"),
    ));
    crate::net::tls::client_config((&config.tls_ca, "cluster.tls_ca"), identity)
}

/// The name a broker's TLS certificate must carry: the host of its `host:port` address.
pub(crate) fn server_name(address: &str) -> anyhow::Result<rustls_pki_types::ServerName<'static>> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| anyhow::anyhow!("{host} is not a host name for TLS"))
}

/// Where one follower's copy of a partition stands, as the leader last heard.
#[derive(Debug, Clone, Copy)]
struct FollowerPosition {
    /// The follower's log end: the offset of its last fetch.
    log_end: i64,
    /// When it last fetched, and the leader's log end then.
    last_fetch_ms: i64,
    leader_end_at_last_fetch: i64,
    /// When it last had everything the leader had (Kafka's lastCaughtUpTimeMs).
    caught_up_ms: i64,
}

/// The replication state of one partition.
///
/// On a leader: its followers' positions and the high watermark. On a follower: the in-sync
/// set the leader last reported (for Metadata). On a broker alone: unused, and the high
/// watermark is the log end.
#[derive(Debug)]
pub struct ReplicaState {
    high_watermark: AtomicI64,
    /// Positions of the followers heard from; a follower not heard from since the partition
    /// was opened counts as caught up at `opened_ms` with the log end of that time.
    followers: Mutex<HashMap<i32, FollowerPosition>>,
    opened_ms: i64,
    opened_end: AtomicI64,
    /// The ISR a follower learnt from the leader.
    reported_isr: Mutex<Vec<i32>>,
    /// On a leader: what says it lost records its followers hold (a power cut took its log's
    /// unsynced tail); while it does, the partition takes no writes, which would give the same
    /// offsets to other records.
    lost: Mutex<Lost>,
    /// Whether `lost` blocks writes now: read without the lock by every append.
    blocked: AtomicBool,
    /// When the partition was made here (0: opened at start): a follower's fetch past the end
    /// of a partition just made is its copy of an earlier topic of the same name.
    made_ms: AtomicI64,
    /// On a follower: the offset below which the leader last said every broker holds the log
    /// ([`copied_by_all_below`]); 0 until it has.
    copied_by_all_below: AtomicI64,
}

/// How long after a partition is made a follower's fetch past its end is taken for a copy of
/// an earlier topic of the same name (deleted and made again), which the follower drops at its
/// next read of the leader's topics, not for records the leader lost.
const JUST_MADE: i64 = 30_000;

/// On a leader: what says it lost records (see [`lost_records`]).
#[derive(Debug, Default)]
struct Lost {
    /// At start the log ended below this high watermark, saved before; cleared once every
    /// follower has fetched from no further than the log end.
    below_saved: Option<i64>,
    /// The followers heard from since start.
    heard: std::collections::HashSet<i32>,
    /// Followers whose last fetch started past this log's end, with that offset.
    ahead: HashMap<i32, i64>,
}

impl ReplicaState {
    /// The state of a partition opened with `log_end`: everything already in the log counts
    /// as replicated (a restarted leader does not keep its followers' positions).
    pub fn new(log_end: i64, now_ms: i64) -> ReplicaState {
        ReplicaState {
            high_watermark: AtomicI64::new(log_end),
            followers: Mutex::new(HashMap::new()),
            opened_ms: now_ms,
            opened_end: AtomicI64::new(log_end),
            reported_isr: Mutex::new(Vec::new()),
            lost: Mutex::new(Lost::default()),
            blocked: AtomicBool::new(false),
            made_ms: AtomicI64::new(0),
            copied_by_all_below: AtomicI64::new(0),
        }
    }

    /// At start-up, the high watermark saved last time: followers not heard from yet count as
    /// holding the log up to it ([`checkpoint`]).
    pub(crate) fn restore(&self, high_watermark: i64) {
        self.opened_end.store(high_watermark, Ordering::Release);
    }

    /// Notes that the partition was made now, not opened at start.
    pub(crate) fn made_at(&self, now_ms: i64) {
        self.made_ms.store(now_ms, Ordering::Release);
    }

    fn lost(&self) -> std::sync::MutexGuard<'_, Lost> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn followers(&self) -> std::sync::MutexGuard<'_, HashMap<i32, FollowerPosition>> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn position(&self, followers: &HashMap<i32, FollowerPosition>, id: i32) -> FollowerPosition {
        let opened_end = self.opened_end.load(Ordering::Acquire);
        followers.get(&id).copied().unwrap_or(FollowerPosition {
            log_end: opened_end,
            last_fetch_ms: self.opened_ms,
            leader_end_at_last_fetch: opened_end,
            caught_up_ms: self.opened_ms,
        })
    }
}

/// Bits of a producer id that name the broker that made it, in a cluster.
const PRODUCER_ID_NODE_BITS: u32 = 16;

/// The producer id made from a broker's `n`-th count. A broker alone hands out `n` itself; in a
/// cluster every broker hands out ids (InitProducerId goes to any broker) and any may lead
/// later, so the ids carry the node id in their low bits: no two brokers make the same id.
pub fn producer_id(cluster: Option<&Cluster>, n: i64) -> i64 {
    match cluster {
        None => n,
        Some(c) => ((n + 1) << PRODUCER_ID_NODE_BITS) | i64::from(c.node_id),
    }
}

/// The least producer id count that makes ids above `max_seen`, the highest id in the logs
/// (which may come from before the cluster, or from another broker).
pub fn producer_count_above(max_seen: i64) -> i64 {
    (max_seen >> PRODUCER_ID_NODE_BITS) + 1
}

/// The offset consumers read below: the high watermark on a leader, the log end on a broker
/// alone.
pub fn readable_end(cluster: Option<&Cluster>, p: &Partition, log_end: i64) -> i64 {
    match cluster {
        Some(_) => p
            .replica
            .high_watermark
            .load(Ordering::Acquire)
            .min(log_end),
        None => log_end,
    }
}

/// The in-sync set of a partition on the leader, the leader first.
pub fn isr(cluster: &Cluster, p: &Partition, now_ms: i64) -> Vec<i32> {
    if !cluster.is_leader() {
        let reported = p
            .replica
            .reported_isr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        return if reported.is_empty() {
            cluster.replicas()
        } else {
            reported
        };
    }
    // A follower holding records this leader lost is not in sync with its log.
    let ahead: Vec<i32> = if p.replica.blocked.load(Ordering::Acquire) {
        p.replica.lost().ahead.keys().copied().collect()
    } else {
        Vec::new()
    };
    let followers = p.replica.followers();
    std::iter::once(cluster.leader)
        .chain(cluster.followers().filter(|&id| {
            !ahead.contains(&id)
                && !stopped_before(cluster, &followers, id)
                && in_sync(cluster, &p.replica.position(&followers, id), now_ms)
        }))
        .collect()
}

/// Whether follower `id`, not heard from for this partition, said it is stopping: a partition
/// made since (its positions hold none for it) does not count it in sync either.
fn stopped_before(cluster: &Cluster, followers: &HashMap<i32, FollowerPosition>, id: i32) -> bool {
    !followers.contains_key(&id) && cluster.stopped(id)
}

fn in_sync(cluster: &Cluster, f: &FollowerPosition, now_ms: i64) -> bool {
    now_ms - f.caught_up_ms <= cluster.lag_max_ms()
}

/// A follower's fetch from `offset` reached the leader, whose log ends at `leader_end`: its
/// position is noted and the high watermark moved if it can.
pub fn follower_fetched(
    cluster: &Cluster,
    p: &Partition,
    follower: i32,
    offset: i64,
    leader_end: i64,
    now_ms: i64,
) {
    let made = p.replica.made_ms.load(Ordering::Acquire);
    if offset > leader_end && made > 0 && now_ms - made < JUST_MADE {
        // The follower's copy of the topic this one replaced: not caught up, and no alarm.
        return;
    }
    if offset > leader_end || p.replica.blocked.load(Ordering::Acquire) {
        let mut lost = p.replica.lost();
        lost.heard.insert(follower);
        if offset > leader_end {
            if lost.ahead.insert(follower, offset) != Some(offset) {
                within_budget!(AHEAD, error, topic = %p.topic, partition = p.index, follower, follower_log_end = offset, log_end = leader_end,
                    "a follower holds records this leader lost (its log's unsynced tail, in a power cut?); the partition takes no writes: move the lead to that follower (docs/replication.md, Moving the lead)");
            }
        } else {
            lost.ahead.remove(&follower);
        }
        if lost.ahead.is_empty() && cluster.followers().all(|id| lost.heard.contains(&id)) {
            lost.below_saved = None;
        }
        let blocked = lost.below_saved.is_some() || !lost.ahead.is_empty();
        p.replica.blocked.store(blocked, Ordering::Release);
        if offset > leader_end {
            // Not caught up, and its position is not taken: writes here would be acknowledged
            // for offsets that hold other records there.
            return;
        }
    }
    {
        let mut followers = p.replica.followers();
        let mut f = p.replica.position(&followers, follower);
        if offset >= leader_end {
            f.caught_up_ms = now_ms;
        } else if offset >= f.leader_end_at_last_fetch {
            f.caught_up_ms = f.caught_up_ms.max(f.last_fetch_ms);
        }
        f.log_end = offset;
        f.last_fetch_ms = now_ms;
        f.leader_end_at_last_fetch = leader_end;
        followers.insert(follower, f);
    }
    advance(cluster, p, leader_end, now_ms);
}

/// On the leader: follower `id` said it is stopping ([`Cluster::follower_stopping`]). It is out
/// of `p`'s in-sync set from now on, and back in once a fetch of it catches up with the log end
/// (not merely with the end of its last fetch before it stopped). Its log end stays what it
/// last said, for compaction; one not heard from since the start holds nothing known.
fn follower_stopped(cluster: &Cluster, p: &Partition, id: i32, now_ms: i64) {
    {
        let mut followers = p.replica.followers();
        let log_end = followers.get(&id).map_or(0, |f| f.log_end);
        followers.insert(
            id,
            FollowerPosition {
                log_end,
                last_fetch_ms: now_ms,
                leader_end_at_last_fetch: i64::MAX,
                caught_up_ms: i64::MIN / 2,
            },
        );
    }
    advance(cluster, p, p.log().log_end_offset(), now_ms);
}

/// At start, a leader's log ending below its saved high watermark `hw`: writes wait until
/// every follower has said how far its log goes ([`lost_records`]).
pub(crate) fn lost_at_start(p: &Partition, hw: i64) {
    p.replica.lost().below_saved = Some(hw);
    p.replica.blocked.store(true, Ordering::Release);
}

/// Followers found ahead of their leader, said a minute.
static AHEAD: LogBudget = LogBudget::new(10);

/// On a leader: why a partition takes no writes, if it lost records. A follower's fetch
/// starting past the log's end says it holds records this leader does not: no write is taken
/// while one does (whatever writes would do to the log's end), and the lead must move to it.
/// A log that ended at start below the high watermark saved before takes none until every
/// follower has said how far its log goes. Every append to the partition checks it
/// (`catalog::Partition`).
pub fn lost_records(p: &Partition) -> Option<String> {
    if !p.replica.blocked.load(Ordering::Acquire) {
        return None;
    }
    let lost = p.replica.lost();
    // The follower that holds the most is the one to lead.
    if let Some((node, end)) = lost.ahead.iter().max_by_key(|(id, end)| (**end, -**id)) {
        return Some(format!(
            "this leader's log of {}-{} lacks records broker {node} holds (up to {end}): it lost \
             them, and takes no writes; move the lead to broker {node} (docs/replication.md)",
            p.topic, p.index
        ));
    }
    lost.below_saved.map(|hw| {
        format!(
            "this leader's log of {}-{} ends below the high watermark {hw} it had: it lost \
             records every in-sync broker had, and takes no writes until every follower has said \
             how far its log goes (docs/replication.md)",
            p.topic, p.index
        )
    })
}

/// Moves the high watermark up to the lowest log end of the in-sync brokers (never down), and
/// wakes what waits on it: consumers' long polls and acks=all produces. Returns the high
/// watermark.
pub fn advance(cluster: &Cluster, p: &Partition, leader_end: i64, now_ms: i64) -> i64 {
    let low = {
        let followers = p.replica.followers();
        cluster
            .followers()
            .filter(|&id| !stopped_before(cluster, &followers, id))
            .map(|id| p.replica.position(&followers, id))
            .filter(|f| in_sync(cluster, f, now_ms))
            .map(|f| f.log_end)
            .fold(leader_end, i64::min)
    };
    let before = p.replica.high_watermark.fetch_max(low, Ordering::AcqRel);
    if low > before {
        p.appended.notify_waiters();
    }
    before.max(low)
}

/// On the leader, each follower's log end for `p` as last heard (the log end at start-up for
/// one not heard from).
pub fn follower_ends(cluster: &Cluster, p: &Partition) -> Vec<(i32, i64)> {
    let followers = p.replica.followers();
    cluster
        .followers()
        .map(|id| (id, p.replica.position(&followers, id).log_end))
        .collect()
}

/// The offset below which every broker holds `p`'s log, for compaction: no delete (tombstone,
/// transaction marker) at or above it is removed. On the leader, the least log end of its
/// followers, where a follower not heard from since the start counts as holding nothing of
/// what the others hold: a follower that was down across the leader's restart still gets the
/// deletes written meanwhile. On a follower, what the leader last said of it in a replica
/// fetch ([`COPIED_BY_ALL_TAG`]), 0 before: a follower may lead next, so it keeps the deletes
/// another follower may lack.
pub fn copied_by_all_below(cluster: &Cluster, p: &Partition) -> i64 {
    if !cluster.is_leader() {
        return p.replica.copied_by_all_below.load(Ordering::Acquire);
    }
    let followers = p.replica.followers();
    cluster
        .followers()
        .map(|id| followers.get(&id).map_or(0, |f| f.log_end))
        .min()
        .unwrap_or(i64::MAX)
}

/// Whether a produce with acks=all may be taken now: enough brokers in sync.
pub fn enough_in_sync(cluster: &Cluster, p: &Partition, now_ms: i64) -> bool {
    too_few_in_sync(Some(cluster), p, now_ms).is_none()
}

/// Why a produce with acks=all may not be taken now: fewer brokers in sync than the topic's
/// `min.insync.replicas` (a broker alone is its only replica, as a Kafka topic of replication
/// factor 1 is).
pub fn too_few_in_sync(cluster: Option<&Cluster>, p: &Partition, now_ms: i64) -> Option<String> {
    let needed = p.log().config().min_insync_replicas;
    let in_sync = cluster.map_or(1, |c| isr(c, p, now_ms).len());
    (in_sync < usize::try_from(needed).unwrap_or(0)).then(|| {
        format!(
            "{in_sync} of the min.insync.replicas = {needed} brokers a write with acks=all needs are in sync"
        )
    })
}

/// How a wait for acks=all ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Replicated {
    Yes,
    /// The in-sync set shrank below `min_insync_replicas` meanwhile.
    TooFewInSync,
    TimedOut,
}

/// Waits until the high watermark reaches `end` (every in-sync broker has the records before
/// it), for at most `timeout`. As in Kafka, reaching it with fewer than `min_insync_replicas`
/// in sync (a follower left the set meanwhile) is not enough.
pub async fn wait_replicated(
    cluster: &Cluster,
    p: &Partition,
    end: i64,
    timeout: Duration,
) -> Replicated {
    wait_for_high_watermark(cluster, p, end, timeout, true).await
}

/// [`wait_replicated`] whatever the topic's `min.insync.replicas`: until every broker in sync
/// has the records before `end`, for transaction markers (which a topic asking for more
/// brokers than are in sync must not skip the wait for).
pub async fn wait_copied_in_sync(
    cluster: &Cluster,
    p: &Partition,
    end: i64,
    timeout: Duration,
) -> Replicated {
    wait_for_high_watermark(cluster, p, end, timeout, false).await
}

async fn wait_for_high_watermark(
    cluster: &Cluster,
    p: &Partition,
    end: i64,
    timeout: Duration,
    min_insync: bool,
) -> Replicated {
    // Markers wait for the brokers in sync, however few.
    let enough = |now| !min_insync || enough_in_sync(cluster, p, now);
    let deadline = tokio::time::Instant::now() + timeout;
    // A follower leaving the in-sync set moves the high watermark without any fetch or append
    // to wake us: look again at least this often.
    let recheck = Duration::from_millis(100);
    loop {
        let notified = p.appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = crate::broker::now_ms();
        let leader_end = p.log().log_end_offset();
        if !enough(now) {
            return Replicated::TooFewInSync;
        }
        if advance(cluster, p, leader_end, now) >= end {
            // The leader's tick may have moved the high watermark because a follower just
            // left the set: the set must still be large enough when the records are covered.
            return if enough(crate::broker::now_ms()) {
                Replicated::Yes
            } else {
                Replicated::TooFewInSync
            };
        }
        let until = deadline.min(tokio::time::Instant::now() + recheck);
        if tokio::time::timeout_at(until, notified).await.is_err()
            && tokio::time::Instant::now() >= deadline
        {
            return Replicated::TimedOut;
        }
    }
}

/// The periodic work of a cluster's broker: on the leader, every partition's high watermark is
/// moved twice a second (a follower leaving the in-sync set lets it move with no fetch or append
/// to do it); on every broker, the high watermarks are saved every 5 s while they change, and at
/// shutdown ([`checkpoint`]).
pub fn spawn_tick(
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let cluster = broker.cluster.clone()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut saved = String::new();
        // Per follower, the partitions it was out of the in-sync set of at the last tick.
        let mut out_of_sync: HashMap<i32, usize> = HashMap::new();
        for n in 0u64.. {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            if cluster.is_leader() {
                let now = crate::broker::now_ms();
                let mut out: HashMap<i32, (usize, String)> = HashMap::new();
                for topic in broker.catalog.list() {
                    for p in topic.partitions() {
                        let end = p.log().log_end_offset();
                        advance(&cluster, &p, end, now);
                        let isr = isr(&cluster, &p, now);
                        for id in cluster.followers().filter(|id| !isr.contains(id)) {
                            let entry = out.entry(id).or_default();
                            entry.0 += 1;
                            if entry.1.is_empty() {
                                entry.1 = format!("{}-{}", p.topic, p.index);
                            }
                        }
                    }
                }
                log_in_sync_changes(&cluster, &mut out_of_sync, out);
            }
            if n % 10 == 9 {
                let b = broker.clone();
                let mut last = std::mem::take(&mut saved);
                saved = tokio::task::spawn_blocking(move || {
                    checkpoint::save(&b, &mut last);
                    last
                })
                .await
                .unwrap_or_default();
            }
        }
        let b = broker.clone();
        let _ = tokio::task::spawn_blocking(move || checkpoint::save(&b, &mut saved)).await;
    }))
}

/// Logs, per follower, when it leaves the in-sync set of partitions or is back in all of them
/// (Kafka's "Shrinking ISR" and "Expanding ISR", one line per follower rather than per
/// partition).
fn log_in_sync_changes(
    cluster: &Cluster,
    last: &mut HashMap<i32, usize>,
    now: HashMap<i32, (usize, String)>,
) {
    for id in cluster.followers() {
        let before = last.get(&id).copied().unwrap_or(0);
        let (count, example) = now.get(&id).cloned().unwrap_or_default();
        if count > before && cluster.stopped(id) {
            tracing::info!(
                follower = id,
                partitions = count,
                "a follower that is stopping left the in-sync set"
            );
        } else if count > before {
            tracing::warn!(follower = id, partitions = count, example = %example, "a follower left the in-sync set: it has not caught up for cluster.replica_lag_time_max");
        } else if count == 0 && before > 0 {
            tracing::info!(
                follower = id,
                "a follower is back in the in-sync set of every partition"
            );
        }
        last.insert(id, count);
    }
}

/// What a follower learnt of a partition's in-sync set from the leader.
pub(crate) fn set_reported_isr(p: &Partition, isr: Vec<i32>) {
    *p.replica
        .reported_isr
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = isr;
}

/// The tagged field of a partition in the leader's answer to a replica fetch (Fetch v12 and
/// later) that carries [`copied_by_all_below`], as 8 bytes big-endian. Runnel's own: Kafka's
/// tags of that message are 0-2, and only a follower asks for it.
pub(crate) const COPIED_BY_ALL_TAG: i32 = 10_000;

/// The tagged field of a replica fetch (Fetch v12 and later) in which a follower says how many
/// of the leader's changes of committed offsets it has copied, as 8 bytes big-endian; and that
/// of the leader's answer, in which the leader says how many there have been. A follower told
/// of changes it lacks copies the offsets before it fetches again; a leader whose offsets
/// change answers a waiting replica fetch at once. Runnel's own, as [`COPIED_BY_ALL_TAG`].
pub(crate) const OFFSETS_COPIED_TAG: i32 = 10_001;

/// The tagged field of the leader's answer to a replica fetch that names the groups whose
/// offsets changed since the changes the follower says it copied ([`OFFSETS_COPIED_TAG`]),
/// each as a 2-byte big-endian length and the id: the follower copies the offsets of those
/// groups alone. Left out when the leader no longer knows them all, or there are more than
/// [`CHANGED_GROUPS_MOST`]: the follower then copies every group's.
pub(crate) const CHANGED_GROUPS_TAG: i32 = 10_002;

/// The most groups [`CHANGED_GROUPS_TAG`] names.
pub(crate) const CHANGED_GROUPS_MOST: usize = 100;

/// `groups` in the form [`CHANGED_GROUPS_TAG`] carries; `None` when an id is too long for it.
pub(crate) fn groups_field(groups: &[String]) -> Option<bytes::Bytes> {
    let mut out = Vec::new();
    for g in groups {
        out.extend_from_slice(&u16::try_from(g.len()).ok()?.to_be_bytes());
        out.extend_from_slice(g.as_bytes());
    }
    Some(out.into())
}

/// The groups a [`CHANGED_GROUPS_TAG`] field names; `None` when absent or malformed.
pub(crate) fn read_groups(field: Option<&bytes::Bytes>) -> Option<Vec<String>> {
    let mut rest = &field?[..];
    let mut groups = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let id = after.get(..len)?;
        groups.push(String::from_utf8(id.to_vec()).ok()?);
        rest = &after[len..];
    }
    Some(groups)
}

/// A count of 8 bytes big-endian, as the tagged fields above carry it.
pub(crate) fn count_field(n: u64) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&n.to_be_bytes())
}

/// The count a tagged field above carries; `None` when absent or not 8 bytes.
pub(crate) fn read_count(field: Option<&bytes::Bytes>) -> Option<u64> {
    field
        .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
        .map(u64::from_be_bytes)
}

/// The leader's [`copied_by_all_below`] in the form [`COPIED_BY_ALL_TAG`] carries.
pub(crate) fn copied_by_all_field(cluster: &Cluster, p: &Partition) -> bytes::Bytes {
    count_field(copied_by_all_below(cluster, p).max(0) as u64)
}

/// On a follower, what the leader said in [`COPIED_BY_ALL_TAG`] (none, from a leader of an
/// earlier build: 0, every delete kept).
pub(crate) fn set_copied_by_all_below(p: &Partition, field: Option<&bytes::Bytes>) {
    let below = read_count(field).map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
    p.replica
        .copied_by_all_below
        .store(below, Ordering::Release);
}

/// Records a follower has in its log beyond the leader's high watermark it last heard: kept
/// for Metadata on followers, nothing reads below it.
pub(crate) fn set_high_watermark(p: &Partition, hw: i64) {
    p.replica.high_watermark.store(hw, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tagged_fields_read_back_what_was_written() {
        assert_eq!(read_count(Some(&count_field(7))), Some(7));
        assert_eq!(read_count(Some(&bytes::Bytes::from_static(b"short"))), None);
        assert_eq!(read_count(None), None);
        let groups = vec!["g".to_string(), String::new(), "caf\u{e9}-7".to_string()];
        let field = groups_field(&groups).unwrap();
        assert_eq!(read_groups(Some(&field)), Some(groups));
        assert_eq!(read_groups(Some(&field.slice(..field.len() - 1))), None);
        assert_eq!(groups_field(&["x".repeat(70_000)]), None);
    }
}
