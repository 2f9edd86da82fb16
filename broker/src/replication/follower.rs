//! A follower: copies the leader's topics and record batches.
//!
//! One task per follower broker, with one connection to the leader. It alternates two things:
//! * every [`SYNC_EVERY`] (and whenever the leader's answer to a fetch names a partition this
//!   broker does not have), it reads the leader's topics (Metadata) and their overrides (DescribeConfigs) and makes
//!   the local catalog match: topics created with the leader's ids, partitions added, configs
//!   set, topics the leader no longer has deleted;
//! * at the same time, the consumer groups' committed offsets (ListGroups, OffsetFetch): a
//!   follower that is made leader knows where each group stopped;
//! * in between, replica fetches of every local partition from its log end, long-polling at the
//!   leader for up to `cluster.replica_fetch_wait`; what comes back is appended unchanged
//!   ([`crate::storage::PartitionLog::append_replica`]).
//!
//! Before the first fetch of a connection, and whenever a fetch goes past the leader's log end,
//! the logs are reconciled ([`reconcile`]): this broker may have led once and taken records no
//! follower copied, and the new leader may have other records at those offsets. The last batch
//! of each local partition above the high watermark this broker last knew is compared with the
//! leader's batch at the same offset (base offset and CRC: a follower stores the leader's bytes,
//! so equal batches have equal CRCs; a batch the leader compacted since it was copied is the
//! same batch with records removed and counts as equal, one whose records it removed all of is
//! cut without a word). Where the leader has nothing, the log is cut to the leader's high
//! watermark; where it has another batch, batch by batch, never below the high watermark known
//! here. Behind the leader's log start, the partition starts again there. A lost connection is
//! retried with a growing pause (up to 5 s); nothing is lost meanwhile: the next fetch starts
//! where the log ends.
//!
//! As the broker stops, the fetch under way is let finish, and the leader is told on the same
//! connection that this broker is stopping ([`say_stopping`]): it leaves the in-sync set then,
//! rather than after `cluster.replica_lag_time_max` without a fetch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerHeartbeatRequest, BrokerId, DescribeAclsRequest,
    DescribeConfigsRequest, FetchRequest, GroupId, ListConfigResourcesRequest, ListGroupsRequest,
    MetadataRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::Cluster;
use super::peer::Peer;
use crate::acl::Acl;
use crate::broker::{Broker, now_ms};
use crate::catalog::Partition;
use crate::groups::{
    OffsetCommitPartition, OffsetCommitRequest as CommitRequest, OffsetCommitTopic,
};
use crate::log_budget::{LogBudget, client_text, within_budget};

/// Longest a request to the leader may take beyond the fetch's own wait.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the leader's topics are read again.
const SYNC_EVERY: Duration = Duration::from_secs(2);
/// Bytes one replica fetch asks for, and per partition.
pub(crate) const FETCH_MAX_BYTES: i32 = 32 * 1024 * 1024;
const PARTITION_MAX_BYTES: i32 = 4 * 1024 * 1024;
/// Versions spoken to the leader (a Runnel broker of the same build): Fetch v12 is the last
/// with the replica id in the request body and topics by name.
const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 12;
const DESCRIBE_CONFIGS_VERSION: i16 = 4;
const LIST_CONFIG_RESOURCES_VERSION: i16 = 1;
const LIST_GROUPS_VERSION: i16 = 4;
const OFFSET_FETCH_VERSION: i16 = 8;
const DESCRIBE_ACLS_VERSION: i16 = 3;
const RESOURCE_TOPIC: i8 = 2;
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const RESOURCE_GROUP: i8 = 32;
const GROUP_CONFIG: i8 = 8;

/// Groups whose offsets the leader refuses this broker, said a minute.
static OFFSETS_REFUSED: LogBudget = LogBudget::new(3);

/// Partitions where the leader took other records over ones it lost, said a minute.
static OTHER_RECORDS: LogBudget = LogBudget::new(5);

/// Leaders found behind this follower, said a minute.
static LEADER_BEHIND: LogBudget = LogBudget::new(2);

/// "following the leader" lines a minute.
static FOLLOWING: LogBudget = LogBudget::new(3);
/// Groups whose own configs the leader's ACLs keep from this broker, said a minute.
static GROUP_CONFIGS_REFUSED: LogBudget = LogBudget::new(2);

/// Starts following the leader, if this broker is a follower.
pub fn spawn(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    let cluster = broker.cluster.clone().filter(|c| !c.is_leader())?;
    Some(tokio::spawn(async move {
        let address = cluster.leader_address().to_string();
        // Whether records above the high watermark may be this broker's own (taken while it
        // led, or another leader's) and so cut where the leader does not have them; once the
        // logs were compared with this leader, they are all its.
        let data_dir = broker.config.broker.data_dir.clone();
        let mut may_cut = super::checkpoint::records_leader(&data_dir) != Some(cluster.leader);
        let mut pause = Duration::from_millis(100);
        let mut failures = 0u32;
        let mut last_error = String::new();
        loop {
            let started = Instant::now();
            let mut established = false;
            let result = {
                let following = follow(
                    &broker,
                    &cluster,
                    &address,
                    &mut established,
                    &mut may_cut,
                    shutdown.clone(),
                );
                tokio::pin!(following);
                tokio::select! {
                    r = &mut following => r,
                    _ = shutdown.changed() => {
                        // A connection in its fetch loop finishes the fetch under way and
                        // tells the leader this broker is stopping; any other (connecting,
                        // or reading the leader's topics first) is let go at once.
                        if cluster.following() {
                            let grace = cluster.replica_fetch_wait + STOPPING_TIMEOUT;
                            let _ = tokio::time::timeout(grace, following).await;
                        }
                        return;
                    }
                }
            };
            // Stopped, the leader told.
            let Err(e) = result else {
                return;
            };
            // A new outage after a while of following: said at once, and tried again soon. A
            // connection that fails right after it was made (say, on the first records it
            // fetched) is the same outage going on: its pause keeps growing and its reason is
            // said as any other's, not at every try.
            let followed_a_while = started.elapsed() > Duration::from_secs(10);
            if established && followed_a_while {
                failures = 0;
                last_error.clear();
                pause = Duration::from_millis(100);
            }
            // Said when it starts or its reason changes, then every 30 tries. Numbers do not
            // count as a change: an expired certificate's error carries the time.
            let error = format!("{e:#}");
            let reason = |e: &str| e.replace(|c: char| c.is_ascii_digit(), "");
            if failures.is_multiple_of(30) || reason(&error) != reason(&last_error) {
                tracing::warn!(leader = cluster.leader, %address, %error, "cannot follow the leader; retrying");
            }
            *cluster
                .follow_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
            last_error = error;
            failures += 1;
            if followed_a_while {
                pause = Duration::from_millis(100);
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }))
}

/// A client asked this follower for a topic it does not have, to be auto-created: the leader
/// is asked to create it (with a Metadata request, as a client would), and the follower reads
/// the leader's topics again before its next fetch. The client is meanwhile answered
/// LEADER_NOT_AVAILABLE and asks again.
pub fn ask_leader_to_create(broker: &Arc<Broker>, topic: &str) {
    let Some(cluster) = broker.cluster.clone().filter(|c| !c.is_leader()) else {
        return;
    };
    {
        // Clients ask again every few hundred milliseconds until the topic is there: one
        // request to the leader a second per topic is enough.
        let mut asked = cluster.creating.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        asked.retain(|_, at| now.duration_since(*at) < Duration::from_secs(1));
        if asked.contains_key(topic) {
            return;
        }
        asked.insert(topic.to_string(), now);
    }
    let topic = topic.to_string();
    tokio::spawn(async move {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(topic.clone())))),
            ]))
            .with_allow_auto_topic_creation(true);
        let asked = async {
            let mut peer = cluster.connect_to_leader(PEER_TIMEOUT).await?;
            peer.call(&request, METADATA_VERSION).await
        };
        match tokio::time::timeout(Duration::from_secs(10), asked).await {
            Ok(Ok(answer)) => {
                let code = answer.topics.first().map_or(0, |t| t.error_code);
                if code == 0 || code == E::LeaderNotAvailable.code() {
                    cluster.resync.store(true, Ordering::Release);
                } else {
                    // Often the ACLs: the leader checks Create for this broker's principal.
                    // Clients keep asking: said once a minute per topic.
                    let mut said = cluster
                        .create_refused
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    said.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
                    if !said.contains_key(&topic) {
                        said.insert(topic.clone(), now);
                        tracing::warn!(%topic, error = ?E::try_from_code(code).unwrap_or(E::UnknownServerError), "the leader did not create a topic a client asked this broker for");
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(%topic, error = %format!("{e:#}"), "cannot ask the leader to create a topic")
            }
            Err(_) => tracing::warn!(%topic, "the leader did not answer a topic creation in 10 s"),
        }
    });
}

/// One connection's worth of following; returns with an error, or once `stopping` is set and
/// the leader was told.
async fn follow(
    broker: &Broker,
    cluster: &Cluster,
    address: &str,
    established: &mut bool,
    may_cut: &mut bool,
    mut stopping: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let timeout = PEER_TIMEOUT + cluster.replica_fetch_wait;
    let mut peer = cluster.connect_to_leader(timeout).await?;
    check_leader(cluster, &mut peer).await?;
    // A leader of an older Runnel may not list config resources (asking would close the
    // connection): the configs of groups that do not exist yet are then not copied.
    let lists_group_configs = leader_serves(
        &mut peer,
        ApiKey::ListConfigResources,
        LIST_CONFIG_RESOURCES_VERSION,
    )
    .await?;
    // Topics that could not be copied, with why: said again only when the reason changes.
    let mut warned: HashMap<String, String> = HashMap::new();
    sync_topics(broker, cluster, &mut peer, &mut warned).await?;
    // The last refusal of the leader's ACLs: said again only when it changes.
    let mut acls_refused: Option<String> = None;
    sync_acls(broker, &mut peer, &mut acls_refused, true).await?;
    reconcile(broker, &mut peer, *may_cut).await?;
    if *may_cut {
        super::checkpoint::set_records_leader(&broker.config.broker.data_dir, cluster.leader);
        *may_cut = false;
    }
    // A connection that keeps failing right after it is made says so a few times a minute.
    within_budget!(FOLLOWING, info, leader = cluster.leader, %address, "following the leader");
    *established = true;
    cluster.following.store(true, Ordering::Relaxed);
    *cluster
        .follow_error
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = None;
    // Cleared however this connection ends (an error, or shutdown dropping the future).
    struct NotFollowing<'a>(&'a Cluster);
    impl Drop for NotFollowing<'_> {
        fn drop(&mut self) {
            self.0.following.store(false, Ordering::Relaxed);
        }
    }
    let _following = NotFollowing(cluster);
    let mut synced = Instant::now();
    // Fetches in a row that found the leader's log ending before this one's.
    let mut behind_rounds = 0u32;
    // Topics the leader named that are not here, as of the last fetch that named any.
    let mut still_unknown: HashSet<String> = HashSet::new();
    // Whether this connection has caught up with the leader: the in-sync set read from it
    // before then (at the first sync) left this broker out, and it answers Metadata with it.
    let mut caught_up = false;
    let mut round = 0usize;
    // The leader's changes of committed offsets: how many it last said there were, and how
    // many of them are copied here. The leader answers a commit once its followers have it.
    let mut offsets_changes = 0u64;
    let mut offsets_copied = 0u64;
    loop {
        if *stopping.borrow() {
            say_stopping(cluster, &mut peer).await;
            return Ok(());
        }
        round = round.wrapping_add(1);
        if synced.elapsed() >= SYNC_EVERY || cluster.resync.swap(false, Ordering::AcqRel) {
            sync_topics(broker, cluster, &mut peer, &mut warned).await?;
            sync_acls(broker, &mut peer, &mut acls_refused, false).await?;
            sync_offsets(broker, &mut peer, Some(lists_group_configs)).await?;
            offsets_copied = offsets_changes;
            synced = Instant::now();
        }
        let mut request = fetch_request(broker, cluster, round);
        request.unknown_tagged_fields.insert(
            super::OFFSETS_COPIED_TAG,
            super::count_field(offsets_copied),
        );
        if request.topics.is_empty() {
            tokio::time::sleep(cluster.replica_fetch_wait).await;
            synced = Instant::now() - SYNC_EVERY;
            continue;
        }
        let answered = {
            let call = peer.call(&request, FETCH_VERSION);
            tokio::pin!(call);
            tokio::select! {
                r = &mut call => Some(r?),
                _ = async { let _ = stopping.wait_for(|&s| s).await; } => {
                    // The leader handles a connection's requests in turn: the one that says
                    // this broker stops must come after this fetch's answer. What it brought
                    // is not taken: the leader has this broker's log end from the fetch.
                    call.await?;
                    None
                }
            }
        };
        let Some(response) = answered else {
            say_stopping(cluster, &mut peer).await;
            return Ok(());
        };
        if response.error_code != 0 {
            return Err(refused(cluster, response.error_code));
        }
        let tags = &response.unknown_tagged_fields;
        if let Some(changes) = super::read_count(tags.get(&super::OFFSETS_COPIED_TAG)) {
            offsets_changes = changes;
            if offsets_changes > offsets_copied {
                // The groups that changed, when the leader names them; else every group.
                match super::read_groups(tags.get(&super::CHANGED_GROUPS_TAG)) {
                    Some(changed) => copy_offsets(broker, &mut peer, &changed, &[]).await?,
                    None => sync_offsets(broker, &mut peer, None).await?,
                }
                offsets_copied = offsets_changes;
            }
        }
        if !caught_up
            && response
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .all(|d| d.error_code == 0 && d.records.as_ref().is_none_or(|r| r.is_empty()))
        {
            // Nothing left to copy: read the in-sync set again (the leader now counts this
            // broker in it) rather than answer Metadata with the old one until the next sync.
            caught_up = true;
            synced = Instant::now() - SYNC_EVERY;
        }
        let mut unknown: HashSet<String> = HashSet::new();
        let mut diverged = false;
        for topic in response.responses {
            let Some(local) = broker.catalog.get(&topic.topic) else {
                unknown.insert(topic.topic.to_string());
                continue;
            };
            for data in topic.partitions {
                let Some(p) = local.partition(data.partition_index) else {
                    unknown.insert(topic.topic.to_string());
                    continue;
                };
                match apply(&p, &data)? {
                    Applied::Done => {}
                    Applied::Unknown => {
                        unknown.insert(topic.topic.to_string());
                    }
                    Applied::Diverged => diverged = true,
                }
            }
        }
        if !unknown.is_empty() {
            if unknown.is_subset(&still_unknown) {
                // Known already and not copied at the last read of the topics (a topic that
                // cannot be made here): the periodic read tries again; meanwhile the leader
                // answers at once, so do not ask it in a loop.
                tokio::time::sleep(cluster.replica_fetch_wait).await;
            } else {
                synced = Instant::now() - SYNC_EVERY;
            }
        }
        still_unknown = unknown;
        if diverged && reconcile(broker, &mut peer, *may_cut).await? == 0 {
            // The leader's log ends before records this broker copied from it. A topic deleted
            // and made again under the same name looks so until the topics are read again
            // (this copy is then dropped): read them first. If it goes on, the leader lost
            // the records, and nothing here is cut. Said, and asked again at the pace of a
            // long poll rather than in a loop.
            if behind_rounds > 0 {
                within_budget!(
                    LEADER_BEHIND,
                    warn,
                    leader = cluster.leader,
                    "the leader's log ends before records this broker copied from it: it lost them (a power cut?); it takes no writes to those partitions until the lead moves here or to another in-sync follower (docs/replication.md)"
                );
            }
            behind_rounds += 1;
            synced = Instant::now() - SYNC_EVERY;
            tokio::time::sleep(cluster.replica_fetch_wait).await;
        } else if !diverged {
            behind_rounds = 0;
        }
    }
}

/// How long a stopping follower waits for the leader to hear that it stops.
const STOPPING_TIMEOUT: Duration = Duration::from_secs(3);

/// Tells the leader, on the connection this broker fetches on, that it is stopping, with a
/// BrokerHeartbeat asking to shut down (Kafka's controlled shutdown): the leader takes it out of
/// the in-sync set at once. A leader of an older Runnel, which does not serve it, is not asked.
async fn say_stopping(cluster: &Cluster, peer: &mut Peer) {
    if cluster.stop_unannounced.load(Ordering::Acquire) {
        return;
    }
    let request = BrokerHeartbeatRequest::default()
        .with_broker_id(BrokerId(cluster.node_id))
        .with_broker_epoch(-1)
        .with_current_metadata_offset(-1)
        .with_want_shut_down(true);
    let told = async {
        if !leader_serves(peer, ApiKey::BrokerHeartbeat, 0).await? {
            return Ok(None);
        }
        peer.call(&request, 0).await.map(Some)
    };
    match tokio::time::timeout(STOPPING_TIMEOUT, told).await {
        Ok(Ok(Some(r))) if r.error_code == 0 => tracing::info!(
            leader = cluster.leader,
            "told the leader this broker is stopping: it leaves the in-sync set until it is back and caught up"
        ),
        Ok(Ok(Some(r))) => tracing::warn!(
            leader = cluster.leader,
            error = ?E::try_from_code(r.error_code).unwrap_or(E::UnknownServerError),
            "the leader refused to hear that this broker is stopping: writes with acks=all wait for it until cluster.replica_lag_time_max"
        ),
        Ok(Ok(None)) => tracing::debug!(
            "the leader does not serve BrokerHeartbeat (an older Runnel): not told of the stop"
        ),
        Ok(Err(e)) => {
            tracing::warn!(leader = cluster.leader, error = %format!("{e:#}"), "cannot tell the leader this broker is stopping")
        }
        Err(_) => tracing::warn!(
            leader = cluster.leader,
            "the leader did not hear in time that this broker is stopping"
        ),
    }
}

/// A replica fetch of every local partition from its log end, starting at the `round`-th
/// partition and wrapping around: only the response's first batch may be larger than what is
/// left of its budget (KIP-74), so the order turns from fetch to fetch, as librdkafka's does,
/// and no partition waits for the ones before it to go idle.
fn fetch_request(broker: &Broker, cluster: &Cluster, round: usize) -> FetchRequest {
    let mut wanted: Vec<(Arc<str>, FetchPartition)> = Vec::new();
    for t in broker.catalog.list() {
        for p in t.partitions().iter() {
            let asked = FetchPartition::default()
                .with_partition(p.index)
                .with_fetch_offset(p.log().log_end_offset())
                .with_log_start_offset(-1)
                .with_partition_max_bytes(PARTITION_MAX_BYTES);
            wanted.push((t.name.clone(), asked));
        }
    }
    if !wanted.is_empty() {
        let start = round % wanted.len();
        wanted.rotate_left(start);
    }
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (name, asked) in wanted {
        match topics.last_mut() {
            Some(last) if last.topic.as_str() == &*name => last.partitions.push(asked),
            _ => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(name.to_string())))
                    .with_partitions(vec![asked]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(cluster.node_id))
        .with_max_wait_ms(cluster.replica_fetch_wait.as_millis() as i32)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_isolation_level(0)
        .with_topics(topics)
}

/// What became of one partition of a replica fetch.
enum Applied {
    Done,
    /// The leader does not know the partition: the topics are read again.
    Unknown,
    /// The local log goes past the leader's: the logs are reconciled.
    Diverged,
}

/// Applies one partition of a replica fetch. An error ends the connection (it is made again
/// after a pause): a partition the leader refuses, or that cannot be stored here.
fn apply(p: &Partition, data: &PartitionData) -> anyhow::Result<Applied> {
    let now = now_ms();
    let code = data.error_code;
    if code == E::UnknownTopicOrPartition.code() {
        return Ok(Applied::Unknown);
    }
    let mut log = p.log();
    let result = if code == E::OffsetOutOfRange.code() {
        let end = log.log_end_offset();
        if end >= data.log_start_offset {
            return Ok(Applied::Diverged);
        }
        tracing::info!(topic = %p.topic, partition = p.index, from = end, to = data.log_start_offset, "behind the leader's log start: the partition starts again there");
        log.restart_at(data.log_start_offset, now)
    } else if code != 0 {
        bail!(
            "the leader refused {}-{} in a replica fetch: {:?}",
            p.topic,
            p.index,
            E::try_from_code(code)
        );
    } else {
        match data.records.as_deref() {
            Some(records) if !records.is_empty() => log.append_replica(records, now).map(|_| ()),
            _ => Ok(()),
        }
        .and_then(|()| {
            // Records the leader deleted (DeleteRecords, retention) go here too.
            let start = data.log_start_offset.min(log.log_end_offset());
            if start > log.log_start_offset() {
                log.delete_records_before(start).map(|_| ())
            } else {
                Ok(())
            }
        })
    };
    let end = log.log_end_offset();
    drop(log);
    result.with_context(|| {
        format!(
            "cannot store the leader's records of {}-{}",
            p.topic, p.index
        )
    })?;
    super::set_high_watermark(p, data.high_watermark.min(end));
    let copied = data.unknown_tagged_fields.get(&super::COPIED_BY_ALL_TAG);
    super::set_copied_by_all_below(p, copied);
    Ok(Applied::Done)
}

/// Asks the leader for an empty replica fetch: a broker that does not lead (the brokers'
/// `cluster.leader` differ) or that the ACLs keep this broker from fetching says so, before
/// anything local is changed after what it says.
async fn check_leader(cluster: &Cluster, peer: &mut Peer) -> anyhow::Result<()> {
    let mut request = FetchRequest::default()
        .with_replica_id(BrokerId(cluster.node_id))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(FETCH_MAX_BYTES);
    // Nothing copied yet on this connection: the leader's commits wait for this broker from
    // now on, not only from its first fetch of records.
    request
        .unknown_tagged_fields
        .insert(super::OFFSETS_COPIED_TAG, super::count_field(0));
    // Refused as a second connection of this node: this broker's last connection, closed,
    // may still be finishing its fetch on the leader. Asked again until the leader would
    // have given the node to this one, unless another broker holds it.
    let until = Instant::now() + Duration::from_millis(super::FETCHER_SILENT_MS as u64 + 1_000);
    loop {
        let response = peer.call(&request, FETCH_VERSION).await?;
        match response.error_code {
            0 => return Ok(()),
            code if code == E::DuplicateBrokerRegistration.code() && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            code => return Err(refused(cluster, code)),
        }
    }
}

/// Why the leader refused a replica fetch with `code`, said for the operator.
fn refused(cluster: &Cluster, code: i16) -> anyhow::Error {
    let leader = cluster.leader;
    match E::try_from_code(code) {
        Some(E::NotLeaderOrFollower) => anyhow::anyhow!(
            "broker {leader} does not take this broker as its follower: is cluster.leader the same on every broker?"
        ),
        Some(E::ClusterAuthorizationFailed) => anyhow::anyhow!(
            "broker {leader} refuses this broker's replica fetches: with ACLs, its principal needs ClusterAction on the cluster"
        ),
        Some(E::DuplicateBrokerRegistration) => anyhow::anyhow!(
            "broker {leader} refuses this broker's replica fetches: another broker fetches as node {} (broker.node_id); each broker of the cluster needs its own",
            cluster.node_id
        ),
        Some(e) => anyhow::anyhow!("broker {leader} refuses replica fetches: {e:?}"),
        None => anyhow::anyhow!("broker {leader} refuses replica fetches: error code {code}"),
    }
}

/// Cuts every local partition back to the last batch it shares with the leader (see the
/// module docs). One fetch asks for the leader's batch at the base offset of each partition's
/// last batch; the partitions that differ are cut and asked again.
///
/// The fetches are a consumer's (no replica id): a replica fetch tells the leader where the
/// follower's log ends, and a log not yet cut back would lie about it (the leader would count
/// records the follower holds other ones at as replicated). A consumer's fetch reads below the
/// high watermark only, which is all the comparison needs: above it, the log is cut anyway.
async fn reconcile(broker: &Broker, peer: &mut Peer, may_cut: bool) -> anyhow::Result<u64> {
    let mut pending: Vec<Arc<Partition>> = broker
        .catalog
        .list()
        .iter()
        .flat_map(|t| t.partitions())
        .collect();
    let mut cut = 0u64;
    while !pending.is_empty() {
        let mut asked = HashMap::new();
        for p in pending.drain(..) {
            let (last, end) = {
                let log = p.log();
                (log.last_batch()?, log.log_end_offset())
            };
            // Below the high watermark this broker last knew, its records were on every
            // in-sync broker: nothing there is compared (compaction, which each broker runs on
            // its own, rewrites those batches differently anyway).
            let floor = super::readable_end(broker.cluster.as_ref(), &p, end);
            if let Some(h) = last.filter(|h| h.base_offset >= floor) {
                asked.insert((p.topic.clone(), p.index), (p, h, floor));
            }
        }
        if asked.is_empty() {
            break;
        }
        let mut by_topic: BTreeMap<Arc<str>, Vec<FetchPartition>> = BTreeMap::new();
        for ((topic, index), (_, h, _)) in &asked {
            by_topic.entry(topic.clone()).or_default().push(
                FetchPartition::default()
                    .with_partition(*index)
                    .with_fetch_offset(h.base_offset)
                    .with_log_start_offset(-1)
                    // Only the first batch is compared, but it must fit: past the first
                    // partition of the response, a batch larger than its budget is not sent
                    // (KIP-74) and its partition is asked again in the next round.
                    .with_partition_max_bytes(PARTITION_MAX_BYTES),
            );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, parts)| {
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(parts)
                    })
                    .collect(),
            );
        let response = peer.call(&request, FETCH_VERSION).await?;
        let now = now_ms();
        let mut answered = 0usize;
        for topic in response.responses {
            for data in topic.partitions {
                let key = (Arc::<str>::from(topic.topic.as_str()), data.partition_index);
                let Some((p, ours, floor)) = asked.remove(&key) else {
                    continue;
                };
                let code = data.error_code;
                if code == E::UnknownTopicOrPartition.code() {
                    continue;
                }
                if code != 0 && code != E::OffsetOutOfRange.code() {
                    bail!(
                        "the leader refused {}-{} while comparing logs: {:?}",
                        p.topic,
                        p.index,
                        E::try_from_code(code)
                    );
                }
                let theirs = data
                    .records
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .and_then(|r| crate::storage::BatchHeader::parse(r).ok());
                if code == 0 && theirs.is_none() && ours.base_offset < data.high_watermark {
                    // The leader has records there but the response had no room left for
                    // them (its byte limit): asked again, nothing cut.
                    pending.push(p);
                    continue;
                }
                answered += 1;
                if code == 0
                    && theirs
                        .is_some_and(|h| h.base_offset == ours.base_offset && h.crc == ours.crc)
                {
                    continue;
                }
                if code == 0
                    && let (Some(h), Some(records)) = (theirs, data.records.as_ref())
                    && compacted_since(&p, &ours, &h, records)?
                {
                    continue;
                }
                let mut log = p.log();
                if code == 0 && theirs.is_some_and(|h| h.base_offset > ours.last_offset()) {
                    // The leader has no record at this batch's offsets, below its high
                    // watermark: its compaction removed them all, whether this broker's copy
                    // was of its records or of others taken before it led. Cut without a word
                    // (no key loses its latest value: what removed them is on the leader), and
                    // the batch before compared in turn.
                    log.truncate_to(ours.base_offset, now)?;
                    if log.log_end_offset() > log.log_start_offset() {
                        drop(log);
                        pending.push(p);
                    }
                    continue;
                }
                if code == E::OffsetOutOfRange.code() && ours.base_offset < data.log_start_offset {
                    log.restart_at(data.log_start_offset, now)?;
                    continue;
                }
                if !may_cut {
                    // These records came from this leader: where it has none or others now,
                    // it lost them, and this copy is the one left. Kept; the leader, told by
                    // the next fetch, takes no writes there. Where it took others in their
                    // place (before any follower could tell it), the logs differ: said.
                    if theirs.is_some() {
                        within_budget!(OTHER_RECORDS, error, topic = %p.topic, partition = p.index, offset = ours.base_offset,
                            "the leader holds other records at offsets this broker copied from it: it lost them (a power cut?) and took new ones there; this copy is kept and the partition cannot be followed until the lead moves here (docs/replication.md)");
                    }
                    continue;
                }
                // Where the leader has nothing (its committed log ends at its high watermark),
                // the log is cut there at once; where it has another batch, no lower than what
                // this broker knew to be committed, then batch by batch.
                let before = log.log_end_offset();
                let leader_end = data.high_watermark.max(0);
                let to = match theirs {
                    None => ours.base_offset.min(leader_end),
                    Some(_) => ours.base_offset.min(leader_end).max(floor),
                };
                log.truncate_to(to, now)?;
                cut += (before - log.log_end_offset()).max(0) as u64;
                if log.log_end_offset() > log.log_start_offset() {
                    drop(log);
                    pending.push(p);
                }
            }
        }
        // Partitions the response left out (a response throttled by a client quota on this
        // broker's login has none) are asked again, after the throttle as a client waits it.
        pending.extend(asked.into_values().map(|(p, _, _)| p));
        let throttle = Duration::from_millis(response.throttle_time_ms.max(0) as u64);
        if answered == 0 && !pending.is_empty() && throttle.is_zero() {
            bail!("the leader answered none of the partitions being compared");
        }
        tokio::time::sleep(throttle).await;
    }
    if cut > 0 {
        tracing::warn!(
            offsets = cut,
            "cut records above the leader's high watermark, or where it has other records (taken while this broker led and never copied, or not yet committed when the leader restarted; what the two have alike is fetched again)"
        );
    }
    Ok(cut)
}

/// Whether the leader's first batch from `ours`' base offset (`theirs`, at the start of
/// `records`) is this broker's last batch `ours` as the leader's compaction left it since it
/// was copied: the batch with some of its records removed (its CRC is another). The logs hold
/// the same records where both hold any; nothing is cut. Records taken in this batch's place,
/// while another broker led, are another batch (see
/// [`crate::storage::record_spans::compacted_from`]).
fn compacted_since(
    p: &Partition,
    ours: &crate::storage::BatchHeader,
    theirs: &crate::storage::BatchHeader,
    records: &bytes::Bytes,
) -> anyhow::Result<bool> {
    if theirs.base_offset != ours.base_offset {
        return Ok(false);
    }
    let plan = p.log().plan_read(ours.base_offset, 1)?;
    let mine = plan.read()?;
    Ok(crate::storage::record_spans::compacted_from(records, &mine))
}

/// Makes the local topics those of the leader.
async fn sync_topics(
    broker: &Broker,
    cluster: &Cluster,
    peer: &mut Peer,
    warned: &mut HashMap<String, String>,
) -> anyhow::Result<()> {
    let metadata = peer
        .call(
            &MetadataRequest::default()
                .with_topics(None)
                .with_allow_auto_topic_creation(false),
            METADATA_VERSION,
        )
        .await?;
    if metadata.controller_id.0 != cluster.leader {
        bail!(
            "broker {} says broker {} leads: is cluster.leader the same on every broker?",
            cluster.leader,
            metadata.controller_id.0
        );
    }
    if let Some(id) = &metadata.cluster_id {
        // A leader of another cluster, holding none of this broker's topics: one that lost its
        // data dir or its metadata, or another cluster's data here. Following it would delete
        // every topic it does not hold. (One that holds some of them by id is this broker's
        // leader, though its id was not kept here: a follower from before followers took the
        // leader's id, or whose write of it failed.)
        let ours = broker.cluster_id();
        let shares_a_topic = || {
            let theirs: std::collections::HashSet<Uuid> =
                metadata.topics.iter().map(|t| t.topic_id).collect();
            broker.catalog.list().iter().any(|t| theirs.contains(&t.id))
        };
        if !id.is_empty()
            && id.as_str() != ours
            && broker.catalog.holds_topics()
            && !shares_a_topic()
        {
            bail!(
                "broker {} (the leader) is of cluster {id} and this broker's topics of cluster \
                 {ours}: it is not followed, so that its topics are not deleted here. If the \
                 leader lost its data dir or its meta.redb, move the lead to a broker that holds \
                 the data (docs/replication.md); to have this broker join cluster {id} afresh, \
                 stop it and empty its data dir",
                cluster.leader
            );
        }
        broker
            .adopt_cluster_id(id)
            .context("cannot keep the leader's cluster id")?;
    }
    // The leader's latest epoch, kept: should the lead move here, it leads at a later one.
    // (Each partition's is reported as the leader reports it, below.)
    let epoch = metadata
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.leader_epoch)
        .max();
    if let Some(epoch) = epoch.filter(|&e| e != broker.catalog.leader_epoch()) {
        // Kept before it is reported: a failed write is tried again at the next sync.
        broker
            .meta
            .raise_leader_epoch(epoch)
            .context("cannot keep the leader's epoch")?;
        broker.catalog.note_leaders_epoch(epoch);
    }
    // Each topic's id, partition count, and each partition's in-sync set and leader epoch.
    type Copied = (Uuid, i32, Vec<(Vec<i32>, i32)>);
    let mut leader: BTreeMap<String, Copied> = BTreeMap::new();
    for t in metadata.topics.iter().filter(|t| t.error_code == 0) {
        let Some(name) = &t.name else { continue };
        let mut isr: Vec<(i32, Vec<i32>, i32)> = t
            .partitions
            .iter()
            .map(|p| {
                let nodes = p.isr_nodes.iter().map(|n| n.0).collect();
                (p.partition_index, nodes, p.leader_epoch)
            })
            .collect();
        isr.sort_by_key(|(i, ..)| *i);
        leader.insert(
            name.to_string(),
            (
                t.topic_id,
                t.partitions.len() as i32,
                isr.into_iter().map(|(_, n, e)| (n, e)).collect(),
            ),
        );
    }
    // Topics the leader dropped go first: a new topic may reuse a name ('.' against '_').
    let missing: Vec<String> = broker
        .catalog
        .list()
        .iter()
        .filter(|t| !leader.contains_key(&*t.name))
        .map(|t| t.name.to_string())
        .collect();
    for name in gone(peer, missing).await? {
        tracing::info!(topic = %name, "the leader has no such topic any more: deleting the copy");
        crate::broker::waiting_for_disk(|| broker.catalog.delete_topic(&name))?;
        broker.groups.topic_deleted(&name);
    }
    let overrides = topic_overrides(peer, leader.keys()).await?;
    let now = now_ms();
    for (name, (id, partitions, isr)) in &leader {
        // A topic that cannot be copied is skipped (and said why): the others go on.
        let copied = match overrides.get(name) {
            // Opening or deleting partitions waits for the disk (and for other changes).
            Some(configs) => crate::broker::waiting_for_disk(|| {
                copy_topic(broker, name, *id, *partitions, configs, now)
            }),
            None => Err(anyhow::anyhow!(
                "the leader does not describe its configs to this broker (with ACLs, it needs DescribeConfigs on the topic)"
            )),
        };
        match copied {
            Ok(topic) => {
                warned.remove(name);
                for (p, (isr, epoch)) in topic.partitions().iter().zip(isr) {
                    super::set_reported_isr(p, isr.clone());
                    p.note_leaders_epoch(*epoch);
                }
            }
            Err(e) => {
                // The copy as it is still reports the leader's epochs: clients that read
                // metadata here are not sent to the leader with stale ones.
                if let Some(topic) = broker.catalog.get(name).filter(|t| t.id == *id) {
                    for (p, (_, epoch)) in topic.partitions().iter().zip(isr) {
                        p.note_leaders_epoch(*epoch);
                    }
                }
                let error = format!("{e:#}");
                if warned.get(name) != Some(&error) {
                    tracing::warn!(topic = %name, %error, "cannot copy the leader's topic; the others are copied");
                    warned.insert(name.clone(), error);
                }
            }
        }
    }
    Ok(())
}

/// Makes the local copy of the leader's topic `name` match it: its id (a copy of an older topic
/// of that name is deleted), its partitions and its overrides.
fn copy_topic(
    broker: &Broker,
    name: &str,
    id: Uuid,
    partitions: i32,
    configs: &BTreeMap<String, String>,
    now: i64,
) -> anyhow::Result<Arc<crate::catalog::Topic>> {
    match broker.catalog.get(name) {
        Some(t) if t.id == id => {
            if t.partition_count() < partitions {
                broker
                    .catalog
                    .create_partitions(name, partitions, false, true, now)?;
            }
            if t.configs() != *configs {
                let changes = configs
                    .clone()
                    .into_iter()
                    .map(|(k, v)| crate::catalog::ConfigChange::Set(k, v))
                    .collect();
                broker.catalog.alter_configs(name, changes, false, false)?;
            }
            Ok(t)
        }
        Some(_) => {
            tracing::info!(topic = %name, "the leader's topic of this name is a new one: deleting the old copy");
            broker.catalog.delete_topic(name)?;
            broker.groups.topic_deleted(name);
            copy_topic(broker, name, id, partitions, configs, now)
        }
        None => {
            Ok(broker
                .catalog
                .create_replica_topic(name, id, partitions, configs.clone(), now)?)
        }
    }
}

/// Which of `names` (topics the leader did not list) the leader says do not exist: a topic
/// the ACLs hide from this broker is not listed either, and must not be deleted for it.
async fn gone(peer: &mut Peer, names: Vec<String>) -> anyhow::Result<Vec<String>> {
    if names.is_empty() {
        return Ok(names);
    }
    let topics = names
        .iter()
        .map(|n| {
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
        })
        .collect();
    let asked = peer
        .call(
            &MetadataRequest::default()
                .with_topics(Some(topics))
                .with_allow_auto_topic_creation(false),
            METADATA_VERSION,
        )
        .await?;
    let mut out = Vec::new();
    for t in asked.topics {
        let Some(name) = t.name else { continue };
        if t.error_code == E::UnknownTopicOrPartition.code() {
            out.push(name.to_string());
        } else if t.error_code != 0 {
            tracing::warn!(topic = %name.as_str(), error = ?E::try_from_code(t.error_code).unwrap_or(E::UnknownServerError), "the leader does not describe a topic to this broker: keeping the copy");
        }
    }
    Ok(out)
}

/// Makes the local ACLs the leader's, as Kafka's ACLs are the cluster's, kept by its
/// controller: read with DescribeAcls, which needs Describe on the cluster for this broker's
/// principal. A leader without ACLs (SECURITY_DISABLED) leaves the local ones alone; so does a
/// refusal, or an ACL this broker cannot take: said once per reason (`refused`). ACLs the
/// `first` copy of a connection removes were this broker's own (or deleted while it was away):
/// a warning; later removals are the leader's deletions.
async fn sync_acls(
    broker: &Broker,
    peer: &mut Peer,
    refused: &mut Option<String>,
    first: bool,
) -> anyhow::Result<()> {
    let answer = peer
        .call(&every_acl_request(), DESCRIBE_ACLS_VERSION)
        .await?;
    take_leaders_acls(broker, &answer, refused, first)
}

/// DescribeAcls for every ACL.
fn every_acl_request() -> DescribeAclsRequest {
    use crate::acl::ANY;
    DescribeAclsRequest::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(ANY)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_operation(ANY)
        .with_permission_type(ANY)
}

/// Reads the leader's ACLs again now, on a follower (after forwarding a change to them, so that
/// the client's next request here is judged by them).
pub async fn copy_acls_now(broker: &Broker) -> anyhow::Result<()> {
    let Some(cluster) = broker.cluster.as_ref().filter(|c| !c.is_leader()) else {
        return Ok(());
    };
    let answer = cluster
        .forward(&every_acl_request(), DESCRIBE_ACLS_VERSION)
        .await?;
    take_leaders_acls(broker, &answer, &mut None, false)
}

/// [`sync_acls`] with the leader's answer.
fn take_leaders_acls(
    broker: &Broker,
    answer: &kafka_protocol::messages::DescribeAclsResponse,
    refused: &mut Option<String>,
    first: bool,
) -> anyhow::Result<()> {
    let mut say_once = |reason: String, message: &str| {
        if refused.as_deref() != Some(reason.as_str()) {
            tracing::warn!(%reason, "{message}");
        }
        *refused = Some(reason);
    };
    if answer.error_code == E::SecurityDisabled.code() {
        if broker.acls.enabled() {
            say_once(
                "the leader has acls.enabled = false".into(),
                "this broker keeps its own ACLs, and ACL changes sent to it fail: enable ACLs on \
                 the leader, or disable them here",
            );
        }
        return Ok(());
    }
    if answer.error_code != 0 {
        let error = E::try_from_code(answer.error_code).unwrap_or(E::UnknownServerError);
        say_once(
            format!(
                "{error:?}: {}",
                answer.error_message.as_deref().unwrap_or_default()
            ),
            "the leader does not give this broker its ACLs: keeping this broker's own",
        );
        return Ok(());
    }
    let mut acls = BTreeSet::new();
    for resource in &answer.resources {
        for d in &resource.acls {
            let acl = Acl::new(
                (
                    resource.resource_type,
                    &resource.resource_name,
                    resource.pattern_type,
                ),
                &d.principal,
                &d.host,
                d.operation,
                d.permission_type,
            );
            match acl {
                Ok(acl) => {
                    acls.insert(acl);
                }
                Err(e) => {
                    // A copy without it would allow or refuse what the leader does not.
                    say_once(
                        format!("{e} (resource {})", resource.resource_name.as_str()),
                        "an ACL of the leader's cannot be taken here: keeping this broker's own",
                    );
                    return Ok(());
                }
            }
        }
    }
    *refused = None;
    let (added, removed) = broker.acls.replace_all(acls)?;
    if removed > 0 && first {
        tracing::warn!(
            added,
            removed,
            "ACLs copied from the leader: ACLs it does not have are removed here"
        );
    } else if added + removed > 0 {
        tracing::info!(added, removed, "ACLs copied from the leader");
    }
    Ok(())
}

/// Makes the local committed offsets those of the leader: offsets that differ are committed
/// here (as a commit without a generation, which an empty group takes), groups the leader no
/// longer has are deleted. ListGroups leaves out what the ACLs hide, so a local group it does
/// not list is asked for by name, and deleted only if the leader answers it has no offsets.
/// With `group_configs` the groups' configs are copied first (`Some(false)`: from a leader
/// that does not list the groups that have them, only those of the groups known).
async fn sync_offsets(
    broker: &Broker,
    peer: &mut Peer,
    group_configs: Option<bool>,
) -> anyhow::Result<()> {
    let listed = peer
        .call(&ListGroupsRequest::default(), LIST_GROUPS_VERSION)
        .await?;
    if listed.error_code != 0 {
        bail!(
            "the leader refused ListGroups: {:?}",
            E::try_from_code(listed.error_code)
        );
    }
    let listed: Vec<String> = listed
        .groups
        .iter()
        .map(|g| g.group_id.to_string())
        .collect();
    let mut ids = listed.clone();
    for local in broker.groups.list_groups(&[]) {
        if !ids.contains(&local.group_id) {
            ids.push(local.group_id);
        }
    }
    if let Some(listed) = group_configs {
        sync_group_configs(broker, peer, &ids, listed).await?;
    }
    copy_offsets(broker, peer, &ids, &listed).await
}

/// Makes the local committed offsets of groups `ids` those of the leader (as
/// [`sync_offsets`]); a group the leader answers with no offsets is deleted here unless it is
/// one of the groups the leader `listed`.
async fn copy_offsets(
    broker: &Broker,
    peer: &mut Peer,
    ids: &[String],
    listed: &[String],
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let request = OffsetFetchRequest::default().with_groups(
        ids.iter()
            .map(|id| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(id.clone())))
                    .with_topics(None)
            })
            .collect(),
    );
    let fetched = peer.call(&request, OFFSET_FETCH_VERSION).await?;
    // Stored lazily, group by group, and synced once at the end.
    let mut last_ticket = 0;
    for group in &fetched.groups {
        let id = group.group_id.to_string();
        if group.error_code != 0 {
            within_budget!(OFFSETS_REFUSED, warn, group = %client_text(&id), error = ?E::try_from_code(group.error_code),
                "the leader does not give this broker a group's offsets: its commits are not copied here, and are lost if the lead moves here (give this broker's principal Describe on the groups)");
            continue;
        }
        if !listed.contains(&id) && group.topics.is_empty() {
            let _ = broker.groups.delete_group(&id);
            continue;
        }
        let local = broker.groups.fetch_offsets(&id, None).unwrap_or_default();
        let known = |topic: &str, partition: i32| {
            local
                .iter()
                .find(|t| t.name == topic)
                .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
                .map(|p| (p.offset, p.leader_epoch, p.metadata.clone()))
        };
        let topics: Vec<OffsetCommitTopic> = group
            .topics
            .iter()
            .map(|t| OffsetCommitTopic {
                name: t.name.to_string(),
                partitions: t
                    .partitions
                    .iter()
                    .filter(|p| p.error_code == 0 && p.committed_offset >= 0)
                    .filter(|p| {
                        let metadata = p.metadata.as_deref().unwrap_or_default().to_string();
                        known(&t.name, p.partition_index)
                            != Some((p.committed_offset, p.committed_leader_epoch, metadata))
                    })
                    .map(|p| OffsetCommitPartition {
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.metadata.as_ref().map(|m| m.to_string()),
                        commit_timestamp_ms: None,
                    })
                    .collect(),
            })
            .filter(|t: &OffsetCommitTopic| !t.partitions.is_empty())
            .collect();
        // Offsets here that the leader's list lacks: deleted there (OffsetDelete, expiry), or
        // hidden from this broker by the ACLs. Asked for by name, they are deleted here only if
        // the leader answers that they are not committed.
        let theirs: HashSet<(&str, i32)> = group
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.as_str(), p.partition_index))
            })
            .collect();
        let only_here: Vec<(String, i32)> = local
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.clone(), p.partition))
            })
            .filter(|(t, p)| !theirs.contains(&(t.as_str(), *p)))
            .collect();
        if !only_here.is_empty() {
            let gone = uncommitted(peer, &id, &only_here).await?;
            if !gone.is_empty() {
                let _ = broker.groups.delete_offsets(&id, &gone);
            }
        }
        if topics.is_empty() {
            continue;
        }
        let (results, ticket) = broker.groups.commit_offsets_lazily(&CommitRequest {
            group_id: id.clone(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            topics,
        });
        last_ticket = last_ticket.max(ticket);
        if let Some(e) = results
            .iter()
            .flat_map(|t| &t.partitions)
            .find_map(|p| p.result.as_ref().err())
        {
            tracing::warn!(group = %client_text(&id), error = %e, "cannot copy the leader's committed offsets");
        }
    }
    // Not on disk: not said to be copied (the connection ends and the copy is made again).
    broker
        .groups
        .durable(last_ticket)
        .await
        .map_err(|e| anyhow::anyhow!("cannot store the leader's committed offsets: {e}"))?;
    Ok(())
}

/// Whether the leader serves `api` at `version`, by its ApiVersions: a request it does not serve
/// would close the connection.
async fn leader_serves(peer: &mut Peer, api: ApiKey, version: i16) -> anyhow::Result<bool> {
    let r = peer.call(&ApiVersionsRequest::default(), 0).await?;
    Ok(r.api_keys
        .iter()
        .any(|k| k.api_key == api as i16 && (k.min_version..=k.max_version).contains(&version)))
}

/// Makes the own configs (`crate::groups::config`) of groups `ids`, of every group with configs
/// here, and (`listed`: the leader lists them) of every group with configs on the leader, those
/// the leader has. A group's configs may exist before the group does.
async fn sync_group_configs(
    broker: &Broker,
    peer: &mut Peer,
    ids: &[String],
    listed: bool,
) -> anyhow::Result<()> {
    let mut names: BTreeSet<String> = ids.iter().cloned().collect();
    names.extend(broker.groups.group_configs().into_iter().map(|(g, _)| g));
    if listed {
        let request =
            ListConfigResourcesRequest::default().with_resource_types(vec![RESOURCE_GROUP]);
        let response = peer.call(&request, LIST_CONFIG_RESOURCES_VERSION).await?;
        match E::try_from_code(response.error_code) {
            None => names.extend(
                response
                    .config_resources
                    .into_iter()
                    .map(|r| r.resource_name.to_string()),
            ),
            Some(e) => {
                tracing::debug!(error = ?e, "the leader does not list the groups with configs to this broker")
            }
        }
    }
    let resources: Vec<_> = names
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(|g| {
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_GROUP)
                .with_resource_name(StrBytes::from_string(g))
        })
        .collect();
    if resources.is_empty() {
        return Ok(());
    }
    let response = peer
        .call(
            &DescribeConfigsRequest::default().with_resources(resources),
            DESCRIBE_CONFIGS_VERSION,
        )
        .await?;
    for r in response.results {
        let group = r.resource_name.to_string();
        if r.error_code == E::GroupAuthorizationFailed.code() {
            within_budget!(GROUP_CONFIGS_REFUSED, warn, group = %client_text(&group),
                "the leader's ACLs keep a group's own configs from this broker (it needs DescribeConfigs on the groups: docs/replication.md)");
            continue;
        }
        if r.error_code != 0 {
            tracing::debug!(group = %client_text(&group), error = ?E::try_from_code(r.error_code), "the leader does not give this broker a group's configs");
            continue;
        }
        let theirs = r
            .configs
            .into_iter()
            .filter(|c| c.config_source == GROUP_CONFIG)
            .filter_map(|c| Some((c.name.to_string(), c.value?.parse::<i32>().ok()?)))
            .collect();
        if let Err(e) = broker.groups.replace_group_config(&group, theirs) {
            tracing::warn!(group = %client_text(&group), error = %e, "cannot copy the leader's group configs");
        }
    }
    Ok(())
}

/// Which of `partitions` the leader says group `id` has no offset for (asked by name, so that a
/// partition the ACLs hide is answered with an error, not as uncommitted).
async fn uncommitted(
    peer: &mut Peer,
    id: &str,
    partitions: &[(String, i32)],
) -> anyhow::Result<Vec<(String, i32)>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, ps)| {
            kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopics::default()
                .with_name(TopicName(StrBytes::from_string(t.to_string())))
                .with_partition_indexes(ps)
        })
        .collect();
    let request = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(StrBytes::from_string(id.to_string())))
            .with_topics(Some(topics)),
    ]);
    let response = peer.call(&request, OFFSET_FETCH_VERSION).await?;
    Ok(response
        .groups
        .iter()
        .filter(|g| g.error_code == 0)
        .flat_map(|g| &g.topics)
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.error_code == 0 && p.committed_offset < 0)
                .map(move |p| (t.name.to_string(), p.partition_index))
        })
        .collect())
}

/// The per-topic overrides of `topics` at the leader.
async fn topic_overrides(
    peer: &mut Peer,
    topics: impl Iterator<Item = &String>,
) -> anyhow::Result<HashMap<String, BTreeMap<String, String>>> {
    let resources: Vec<_> = topics
        .map(|t| {
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(StrBytes::from_string(t.clone()))
        })
        .collect();
    if resources.is_empty() {
        return Ok(HashMap::new());
    }
    let response = peer
        .call(
            &DescribeConfigsRequest::default().with_resources(resources),
            DESCRIBE_CONFIGS_VERSION,
        )
        .await?;
    Ok(response
        .results
        .into_iter()
        .filter(|r| r.error_code == 0)
        .map(|r| {
            let overrides = r
                .configs
                .into_iter()
                .filter(|c| c.config_source == DYNAMIC_TOPIC_CONFIG)
                .filter_map(|c| Some((c.name.to_string(), c.value?.to_string())))
                .collect();
            (r.resource_name.to_string(), overrides)
        })
        .collect())
}
