//! One group's state under the consumer group protocol of KIP-848 (ConsumerGroupHeartbeat):
//! the coordinator assigns partitions, members reconcile towards their target one heartbeat at
//! a time, and a partition moves only after its owner has revoked it. No locks, no I/O, time
//! passed in; the coordinator (`mod.rs`) holds it in the group it belongs to.
//!
//! Epochs, as in Kafka: the group epoch rises with every change of membership, subscriptions
//! or the subscribed topics' partitions; the target assignment is computed for it at once (the
//! assignment epoch). A member's epoch reaches the assignment epoch when it holds nothing the
//! target gives to another: until then it is told to revoke those partitions (its epoch stays)
//! and is given only partitions no one else holds, the rest as their owners let go of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info};
use uuid::Uuid;

use super::error::GroupError;
use super::types::{
    GroupState, HeartbeatRequest, JoinRequest, JoinResponse, LeavingMember, SyncRequest,
    SyncResponse,
};
use crate::log_budget::client_text;

/// Partitions by topic id, as ConsumerGroupHeartbeat carries them.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The topics a group may subscribe to: name -> (id, partition count).
pub type TopicView = BTreeMap<String, (Uuid, i32)>;

/// The assignors the coordinator has (`group.remote.assignor`); the first is the default.
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// Longest subscription regex taken, and the most memory its compiled form may take: a regex
/// is compiled per member, and matched against every topic at each of its heartbeats.
const MAX_REGEX_LEN: usize = 1024;
const MAX_REGEX_BYTES: usize = 256 * 1024;

/// The coordinator's settings for these groups (Kafka's `group.consumer.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// A member that has not heartbeated for this long leaves the group.
    pub session_timeout: Duration,
    /// How often members are told to heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

/// ConsumerGroupHeartbeat v0-v1, as the coordinator reads it.
#[derive(Debug, Clone, Default)]
pub struct ConsumerHeartbeat {
    pub group_id: String,
    /// Empty on a v0 member's first heartbeat: the coordinator makes one.
    pub member_id: String,
    /// 0 to join, -1 to leave, -2 for a static member's leave, else the member's epoch.
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    /// `None`: unchanged.
    pub subscribed_topic_names: Option<Vec<String>>,
    /// `None`: unchanged; empty: none.
    pub subscribed_topic_regex: Option<String>,
    /// `subscribed_topic_regex` compiled ([`compile_regex`]) before the coordinator's lock is
    /// taken; compiled here when not.
    pub compiled_regex: Option<regex::Regex>,
    /// `None`: unchanged.
    pub server_assignor: Option<String>,
    /// The partitions the member holds; `None`: unchanged since its last heartbeat.
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer to a [`ConsumerHeartbeat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's whole assignment when it changed since the member was last told.
    pub assignment: Option<Assignment>,
}

/// Where a member is in reaching its target assignment (Kafka's `MemberState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum MemberState {
    /// It holds its target (at the assignment epoch).
    Stable,
    /// It must revoke partitions before it moves on; its epoch waits.
    UnrevokedPartitions,
    /// It is at the assignment epoch but waits for partitions others still hold.
    UnreleasedPartitions,
}

/// A static member's epoch once it left for now (a heartbeat of epoch -2), until its instance
/// id joins again or its session times out.
const LEFT_FOR_NOW: i32 = -2;

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    epoch: i32,
    previous_epoch: i32,
    state: MemberState,
    rebalance_timeout: Duration,
    topic_names: BTreeSet<String>,
    /// The regex's text, and the compiled regex (anchored to whole names, as Kafka's).
    regex: Option<(String, regex::Regex)>,
    /// The topics `regex` matched at the member's last heartbeat, of those it may see.
    regex_topics: BTreeSet<String>,
    /// The member epoch at which it was given each partition it holds: an OffsetCommit at an
    /// older epoch is taken for a partition held since then.
    assigned_at: HashMap<(Uuid, i32), i32>,
    assignor: Option<String>,
    assigned: Assignment,
    pending_revocation: Assignment,
    /// When it was told to revoke what `pending_revocation` holds.
    revoking_since: Option<Instant>,
    session_deadline: Instant,
    /// The assignment the member was last sent.
    last_sent: Option<Assignment>,
    /// Set for a member of the classic protocol the group hosts (JoinGroup, SyncGroup,
    /// Heartbeat), as Kafka's groups host them while consumers move between the protocols.
    classic: Option<ClassicMember>,
    /// A hosted classic member that joined must send its SyncGroup by then (its rebalance
    /// timeout), or it leaves the group (Kafka's sync timeout). Not saved.
    sync_deadline: Option<Instant>,
}

/// What the group keeps of a member of the classic protocol it hosts (Kafka's
/// `ClassicMemberMetadata`): its session timeout and the protocols of its last JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassicMember {
    pub session_timeout_ms: u64,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
}

impl ClassicMember {
    fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }
}

/// A classic member's subscription (`ConsumerProtocolSubscription`, any version): the topics,
/// and the partitions it says it still holds (v1+; an eager member holds none when it joins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassicSubscription {
    pub topics: Vec<String>,
    pub owned: Vec<(String, Vec<i32>)>,
    pub rack_id: Option<String>,
}

/// Reads a classic member's metadata in the consumer protocol: a 2-byte version, then the
/// subscription; `None` when it is not that.
pub fn read_subscription(metadata: &[u8]) -> Option<ClassicSubscription> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let (version, mut body) = split_version(metadata)?;
    let sub = ConsumerProtocolSubscription::decode(&mut body, version).ok()?;
    Some(ClassicSubscription {
        topics: sub.topics.iter().map(|t| t.to_string()).collect(),
        owned: sub
            .owned_partitions
            .iter()
            .map(|tp| (tp.topic.to_string(), tp.partitions.clone()))
            .collect(),
        rack_id: sub.rack_id.map(|r| r.to_string()).filter(|r| !r.is_empty()),
    })
}

/// Partitions by topic name, as the classic protocol carries them.
pub type NamedPartitions = Vec<(String, Vec<i32>)>;

/// Reads a classic assignment (`ConsumerProtocolAssignment`, any version): partitions by topic
/// name (what an assignor added as user data is left); `None` when it is not that (an empty
/// one is no partition).
pub fn read_assignment(bytes: &[u8]) -> Option<NamedPartitions> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let (version, mut body) = split_version(bytes)?;
    let a = ConsumerProtocolAssignment::decode(&mut body, version).ok()?;
    Some(
        a.assigned_partitions
            .iter()
            .map(|tp| (tp.topic.to_string(), tp.partitions.clone()))
            .collect(),
    )
}

/// The version the consumer protocol puts first, and the rest; versions past the newest this
/// broker knows are read as it (later versions only add fields at the end, as Kafka reads them).
fn split_version(bytes: &[u8]) -> Option<(i16, bytes::Bytes)> {
    if bytes.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    if version < 0 {
        return None;
    }
    Some((version.min(3), bytes::Bytes::copy_from_slice(&bytes[2..])))
}

/// One member of a classic group whose group becomes one of the consumer protocol
/// ([`ConsumerGroup::host_classic_members`]), as the classic group had it.
#[derive(Debug, Clone)]
pub struct ClassicSeed {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Vec<u8>)>,
    /// Its subscription in the group's protocol.
    pub subscription: ClassicSubscription,
    /// Its assignment of the last rebalance, by topic name.
    pub assigned: Vec<(String, Vec<i32>)>,
    /// What its subscription says it owned when it last joined, by topic name: a cooperative
    /// member may still hold some of it beyond `assigned` (it has not revoked them yet, or a
    /// rebalance cleared its assignment), which the group holds back from others until it
    /// joins again without them.
    pub owned: Vec<(String, Vec<i32>)>,
}

/// Whether every one of `members` supports the protocol (assignor) `name`.
fn supported_by_all(name: &str, members: &[&ClassicMember]) -> bool {
    members
        .iter()
        .all(|c| c.protocols.iter().any(|(n, _)| n == name))
}

/// A classic member the group hosted, as the classic group takes it back when the group's last
/// member of the consumer protocol left (Kafka's online downgrade).
#[derive(Debug, Clone)]
pub struct ReturningMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (name, metadata) of its last JoinGroup, in its order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// What it holds, in the classic encoding.
    pub assignment: bytes::Bytes,
    /// Its epoch: the generation it knows.
    pub epoch: i32,
}

impl Member {
    fn subscribes(&self, topic: &str) -> bool {
        self.topic_names.contains(topic) || self.regex_topics.contains(topic)
    }
}

/// One member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: Vec<String>,
    pub subscribed_topic_regex: Option<String>,
    pub assignment: Assignment,
    pub target_assignment: Assignment,
    /// Whether it is a member of the classic protocol the group hosts.
    pub classic: bool,
}

/// A group as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupDescription {
    pub state: GroupState,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<ConsumerMemberDescription>,
}

/// The members and assignments of one group under the consumer protocol.
#[derive(Debug, Clone, Default)]
pub struct ConsumerGroup {
    group_id: String,
    epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Assignment>,
    /// The subscribed topics (name, id, partitions) the target was computed from.
    metadata: Vec<(String, Uuid, i32)>,
    /// Something a restart needs changed since the group was last saved ([`Self::save`]).
    dirty: bool,
}

/// A group as the store keeps it ([`ConsumerGroup::save`]): what a restarted coordinator needs
/// to recognise its members' next heartbeats, as Kafka's reloads its groups. Sessions start
/// again at the restart.
#[derive(Serialize, Deserialize)]
struct Saved {
    format: u8,
    epoch: i32,
    assignment_epoch: i32,
    /// (name, topic id, partitions).
    metadata: Vec<(String, String, i32)>,
    members: Vec<SavedMember>,
}

#[derive(Serialize, Deserialize)]
struct SavedMember {
    id: String,
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    epoch: i32,
    previous_epoch: i32,
    state: MemberState,
    rebalance_timeout_ms: u64,
    topic_names: Vec<String>,
    regex: Option<String>,
    /// What `regex` matched of the topics the member may see, at its last heartbeat.
    #[serde(default)]
    regex_topics: Vec<String>,
    assignor: Option<String>,
    assigned: Vec<(String, Vec<i32>)>,
    pending_revocation: Vec<(String, Vec<i32>)>,
    target: Vec<(String, Vec<i32>)>,
    /// A member of the classic protocol the group hosts.
    #[serde(default)]
    classic: Option<ClassicMember>,
}

/// The format [`Saved`] is written in.
const SAVED_FORMAT: u8 = 1;

fn save_assignment(a: &Assignment) -> Vec<(String, Vec<i32>)> {
    a.iter()
        .map(|(t, ps)| (t.to_string(), ps.iter().copied().collect()))
        .collect()
}

fn restore_assignment(a: Vec<(String, Vec<i32>)>) -> Option<Assignment> {
    a.into_iter()
        .map(|(t, ps)| Some((Uuid::parse_str(&t).ok()?, ps.into_iter().collect())))
        .collect()
}

fn contains(a: &Assignment, topic: Uuid, partition: i32) -> bool {
    a.get(&topic).is_some_and(|p| p.contains(&partition))
}

fn insert(a: &mut Assignment, topic: Uuid, partition: i32) {
    a.entry(topic).or_default().insert(partition);
}

fn pairs(a: &Assignment) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    a.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
}

fn filter(a: &Assignment, mut keep: impl FnMut(Uuid, i32) -> bool) -> Assignment {
    let mut out = Assignment::new();
    for (t, p) in pairs(a) {
        if keep(t, p) {
            insert(&mut out, t, p);
        }
    }
    out
}

/// Compiles a subscription regex (Kafka's RE2 syntax, which the `regex` crate shares) to match
/// whole topic names; a long or costly one is refused.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, GroupError> {
    let invalid = |why: String| GroupError::InvalidRegularExpression(why);
    if pattern.len() > MAX_REGEX_LEN {
        return Err(invalid(format!(
            "SubscribedTopicRegex is {} bytes long; at most {MAX_REGEX_LEN} are taken",
            pattern.len()
        )));
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| invalid(format!("invalid SubscribedTopicRegex {pattern:?}: {e}")))
}

/// Kafka's checks of a heartbeat's fields, before anything changes.
pub(crate) fn check_request(req: &ConsumerHeartbeat) -> Result<(), GroupError> {
    let invalid = |why: &str| Err(GroupError::InvalidRequest(why.to_string()));
    if req.member_epoch < -2 {
        return invalid("MemberEpoch is invalid");
    }
    if req.member_id.is_empty() && req.member_epoch != 0 {
        return invalid("MemberId can't be empty");
    }
    if req.instance_id.as_deref() == Some("") {
        return invalid("InstanceId can't be empty");
    }
    if req.rack_id.as_deref() == Some("") {
        return invalid("RackId can't be empty");
    }
    if req.member_epoch == -2 && req.instance_id.is_none() {
        return invalid("InstanceId can't be null for a static member's leave (epoch -2)");
    }
    if req.member_epoch == 0 {
        if req.rebalance_timeout_ms < 0 {
            return invalid("RebalanceTimeoutMs must be provided in first request");
        }
        if req.owned.as_ref().is_none_or(|o| !o.is_empty()) {
            return invalid("TopicPartitions must be empty when (re-)joining");
        }
        if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
            return invalid(
                "SubscribedTopicNames or SubscribedTopicRegex must be set in first request",
            );
        }
    }
    if let Some(assignor) = &req.server_assignor
        && !ASSIGNORS.contains(&assignor.as_str())
    {
        return Err(GroupError::UnsupportedAssignor(assignor.clone()));
    }
    Ok(())
}

impl ConsumerGroup {
    pub fn new(group_id: String) -> Self {
        ConsumerGroup {
            group_id,
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the group changed since this was last asked; clears the mark.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Whether the group changed since it was last saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Marks the group to be saved again (its last save failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The bytes the store keeps for the group, members or not (an empty group stays one of
    /// the consumer protocol across a restart); `None` for one no member ever joined.
    pub fn save(&self) -> Option<Vec<u8>> {
        if !self.used() {
            return None;
        }
        let saved = Saved {
            format: SAVED_FORMAT,
            epoch: self.epoch,
            assignment_epoch: self.assignment_epoch,
            metadata: self
                .metadata
                .iter()
                .map(|(n, id, p)| (n.clone(), id.to_string(), *p))
                .collect(),
            members: self
                .members
                .iter()
                .map(|(id, m)| SavedMember {
                    id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    epoch: m.epoch,
                    previous_epoch: m.previous_epoch,
                    state: m.state,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    topic_names: m.topic_names.iter().cloned().collect(),
                    regex: m.regex.as_ref().map(|(p, _)| p.clone()),
                    regex_topics: m.regex_topics.iter().cloned().collect(),
                    assignor: m.assignor.clone(),
                    assigned: save_assignment(&m.assigned),
                    pending_revocation: save_assignment(&m.pending_revocation),
                    target: save_assignment(&self.target.get(id).cloned().unwrap_or_default()),
                    classic: m.classic.clone(),
                })
                .collect(),
        };
        serde_json::to_vec(&saved).ok()
    }

    /// A group from [`Self::save`]'s bytes, its members' sessions starting `now`; `None` when
    /// the bytes are not that (its members then join again, as after a restart without them).
    pub fn restore(
        group_id: String,
        bytes: &[u8],
        settings: ConsumerSettings,
        now: Instant,
    ) -> Option<ConsumerGroup> {
        let saved: Saved = serde_json::from_slice(bytes).ok()?;
        if saved.format != SAVED_FORMAT {
            return None;
        }
        let mut group = ConsumerGroup::new(group_id);
        group.epoch = saved.epoch;
        group.assignment_epoch = saved.assignment_epoch;
        group.metadata = saved
            .metadata
            .into_iter()
            .map(|(n, id, p)| Some((n, Uuid::parse_str(&id).ok()?, p)))
            .collect::<Option<_>>()?;
        for m in saved.members {
            let state = m.state;
            let regex = match m.regex {
                Some(p) => Some((p.clone(), compile_regex(&p).ok()?)),
                None => None,
            };
            group
                .target
                .insert(m.id.clone(), restore_assignment(m.target)?);
            let assigned = restore_assignment(m.assigned)?;
            // When each partition was given is not kept: commits at the restored epoch only.
            let assigned_at = pairs(&assigned).map(|tp| (tp, m.epoch)).collect();
            group.members.insert(
                m.id,
                Member {
                    instance_id: m.instance_id,
                    rack_id: m.rack_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    epoch: m.epoch,
                    previous_epoch: m.previous_epoch,
                    state,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                    topic_names: m.topic_names.into_iter().collect(),
                    regex,
                    regex_topics: m.regex_topics.into_iter().collect(),
                    assigned_at,
                    assignor: m.assignor,
                    assigned,
                    pending_revocation: restore_assignment(m.pending_revocation)?,
                    revoking_since: (state == MemberState::UnrevokedPartitions).then_some(now),
                    session_deadline: now
                        + m.classic
                            .as_ref()
                            .map_or(settings.session_timeout, ClassicMember::session_timeout),
                    last_sent: None,
                    classic: m.classic,
                    sync_deadline: None,
                },
            );
        }
        Some(group)
    }

    pub fn members_len(&self) -> usize {
        self.members.len()
    }

    /// Whether a member ever joined (the group's epoch moved).
    pub fn used(&self) -> bool {
        self.epoch > 0
    }

    /// The group's state (ListGroups, ConsumerGroupDescribe).
    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.assignment_epoch < self.epoch {
            GroupState::Assigning
        } else if self.members.values().any(|m| {
            m.epoch != LEFT_FOR_NOW
                && (m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        }) {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        }
    }

    /// The topics the members subscribe to (OffsetDelete refuses their offsets).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.metadata.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Handles one heartbeat. `view` is every topic now; `may_describe` tells the topics the
    /// member's principal may see (a regex subscription gets only those, as in Kafka 4);
    /// `settings` the coordinator's.
    pub fn heartbeat(
        &mut self,
        mut req: ConsumerHeartbeat,
        view: &TopicView,
        may_describe: &dyn Fn(&str) -> bool,
        settings: ConsumerSettings,
        now: Instant,
    ) -> Result<ConsumerHeartbeatReply, GroupError> {
        if let Some(owned) = &mut req.owned {
            owned.retain(|_, partitions| !partitions.is_empty());
        }
        check_request(&req)?;
        let regex = match req.subscribed_topic_regex.as_deref() {
            Some(p) if !p.is_empty() => {
                // Compiled once per member and pattern, not on every heartbeat that repeats it.
                let known = self
                    .members
                    .get(&req.member_id)
                    .and_then(|m| m.regex.clone())
                    .filter(|(q, _)| q == p);
                Some(Some(match (known, req.compiled_regex.take()) {
                    (Some(compiled), _) => compiled,
                    (None, Some(re)) => (p.to_string(), re),
                    (None, None) => (p.to_string(), compile_regex(p)?),
                }))
            }
            Some(_) => Some(None),
            None => None,
        };
        // Whether the group epoch moves: a member joins, a subscription or the assignor changes,
        // the subscribed topics change. Once per heartbeat, as in Kafka.
        let mut changed = false;
        let member_id = match req.member_epoch {
            LEFT_FOR_NOW => return self.leave_for_now(&req),
            -1 => return self.leave(&req),
            0 => {
                let (id, new) = self.join(&req, now)?;
                changed |= new;
                id
            }
            epoch => {
                let member = self
                    .members
                    .get(&req.member_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                let lost_reply = epoch == member.previous_epoch
                    && req
                        .owned
                        .as_ref()
                        .is_some_and(|o| pairs(o).all(|(t, p)| contains(&member.assigned, t, p)));
                if epoch != member.epoch && !lost_reply {
                    return Err(GroupError::FencedMemberEpoch {
                        given: epoch,
                        current: member.epoch,
                    });
                }
                if let Some(instance) = &req.instance_id
                    && self
                        .holder_of(instance)
                        .is_some_and(|h| *h != req.member_id)
                {
                    return Err(GroupError::FencedInstanceId);
                }
                req.member_id.clone()
            }
        };
        {
            let member = self.members.get_mut(&member_id).expect("joined above");
            member.session_deadline = now + settings.session_timeout;
            member.client_id = req.client_id.clone();
            member.client_host = req.client_host.clone();
            if req.rack_id.is_some() {
                member.rack_id = req.rack_id.clone();
            }
            if req.instance_id.is_some() {
                member.instance_id = req.instance_id.clone();
            }
            if req.rebalance_timeout_ms >= 0 {
                member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
            }
            if let Some(assignor) = &req.server_assignor {
                let assignor = (!assignor.is_empty()).then(|| assignor.clone());
                changed |= member.assignor != assignor;
                member.assignor = assignor;
            }
            if let Some(names) = &req.subscribed_topic_names {
                let names: BTreeSet<String> = names.iter().cloned().collect();
                changed |= member.topic_names != names;
                member.topic_names = names;
            }
            if let Some(regex) = regex {
                member.regex = regex;
            }
            // The topics its regex matches now, of those it may see (the catalog has none of
            // Kafka's internal topics, which a regex never matches).
            let matched: BTreeSet<String> = match &member.regex {
                Some((_, re)) => view
                    .keys()
                    .filter(|t| re.is_match(t) && may_describe(t))
                    .cloned()
                    .collect(),
                None => BTreeSet::new(),
            };
            changed |= member.regex_topics != matched;
            member.regex_topics = matched;
        }
        self.refresh(view, changed);
        self.reconcile(&member_id, req.owned.as_ref(), now);
        let member = self.members.get_mut(&member_id).expect("joined above");
        let send = req.member_epoch == 0
            || member.last_sent.as_ref() != Some(&member.assigned)
            || req.owned.as_ref().is_some_and(|o| *o != member.assigned);
        let assignment = send.then(|| member.assigned.clone());
        if send {
            member.last_sent = Some(member.assigned.clone());
        }
        Ok(ConsumerHeartbeatReply {
            member_id,
            member_epoch: member.epoch,
            heartbeat_interval_ms: i32::try_from(settings.heartbeat_interval.as_millis())
                .unwrap_or(i32::MAX),
            assignment,
        })
    }

    /// The member holding a static member's instance id, if one does.
    fn holder_of(&self, instance: &str) -> Option<&String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id)
    }

    /// A member's first heartbeat (epoch 0), or a member that lost its state joining again
    /// with its id. The latter replaces the member it was: whatever still runs as the old one
    /// is fenced at its next heartbeat (its epoch is gone), and the new one is given again
    /// what the old one held (its target stays, so the assignment sticks).
    /// Returns the member's id, and whether it is new.
    fn join(
        &mut self,
        req: &ConsumerHeartbeat,
        now: Instant,
    ) -> Result<(String, bool), GroupError> {
        let id = if req.member_id.is_empty() {
            super::uuid_like()
        } else {
            req.member_id.clone()
        };
        // A static member coming back: it replaces its old self once that one left for now
        // (epoch -2), taking what it held and its target, with no new group epoch; while the
        // old one (under another member id) is still in the group, it waits.
        let holder = req
            .instance_id
            .as_ref()
            .and_then(|instance| Some((instance, self.holder_of(instance)?.clone())));
        if let Some((instance, other)) = holder
            && (other != id || self.members[&other].epoch == LEFT_FOR_NOW)
        {
            // A member of the classic protocol holding the instance id is replaced as well: a
            // static member restarted with the other protocol (it sent no LeaveGroup), as Kafka
            // replaces it.
            let holder = &self.members[&other];
            if holder.epoch != LEFT_FOR_NOW && holder.classic.is_none() {
                return Err(GroupError::UnreleasedInstanceId {
                    instance_id: instance.clone(),
                    member_id: other,
                });
            }
            let mut back = self.members.remove(&other).expect("its holder");
            if let Some(target) = self.target.remove(&other) {
                self.target.insert(id.clone(), target);
            }
            back.epoch = 0;
            back.previous_epoch = -1;
            back.client_id = req.client_id.clone();
            back.client_host = req.client_host.clone();
            back.last_sent = None;
            // What it is now: classic_join sets it again for a classic member.
            back.classic = None;
            back.sync_deadline = None;
            self.members.insert(id.clone(), back);
            self.dirty = true;
            info!(group = %client_text(&self.group_id), member = %client_text(&id), instance = %client_text(instance), "static member back (consumer protocol): it takes its partitions again");
            return Ok((id, false));
        }
        if self.members.remove(&id).is_some() {
            info!(group = %client_text(&self.group_id), member = %client_text(&id), "member joins again (epoch 0): its earlier self is fenced");
        }
        info!(group = %client_text(&self.group_id), member = %client_text(&id), client = %client_text(&req.client_id), "member joins (consumer protocol)");
        self.members.insert(
            id.clone(),
            Member {
                instance_id: req.instance_id.clone(),
                rack_id: req.rack_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                epoch: 0,
                previous_epoch: -1,
                state: MemberState::Stable,
                rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
                topic_names: BTreeSet::new(),
                regex: None,
                regex_topics: BTreeSet::new(),
                assigned_at: HashMap::new(),
                assignor: None,
                assigned: Assignment::new(),
                pending_revocation: Assignment::new(),
                revoking_since: None,
                session_deadline: now,
                last_sent: None,
                classic: None,
                sync_deadline: None,
            },
        );
        Ok((id, true))
    }

    /// A static member's leave (epoch -2, a restart): it stays in the group with what it
    /// holds and its target until its session times out, so that the same instance id coming
    /// back takes them again and no other member is moved meanwhile, as in Kafka.
    fn leave_for_now(
        &mut self,
        req: &ConsumerHeartbeat,
    ) -> Result<ConsumerHeartbeatReply, GroupError> {
        let member = self
            .members
            .get_mut(&req.member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if member.instance_id.is_none() || member.instance_id != req.instance_id {
            return Err(GroupError::FencedInstanceId);
        }
        info!(group = %client_text(&self.group_id), member = %client_text(&req.member_id), "static member leaves for now (consumer protocol): its partitions wait for it until its session times out");
        // Fenced if it heartbeats again as itself; replaced when its instance id joins. What
        // it was giving up is free for the others now (it holds none of it any more), and no
        // rebalance timeout runs for it, as in Kafka.
        member.epoch = LEFT_FOR_NOW;
        member.previous_epoch = LEFT_FOR_NOW;
        member.pending_revocation.clear();
        member.revoking_since = None;
        member.state = MemberState::Stable;
        self.dirty = true;
        Ok(ConsumerHeartbeatReply {
            member_id: req.member_id.clone(),
            member_epoch: LEFT_FOR_NOW,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    fn leave(&mut self, req: &ConsumerHeartbeat) -> Result<ConsumerHeartbeatReply, GroupError> {
        if !self.members.contains_key(&req.member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        info!(group = %client_text(&self.group_id), member = %client_text(&req.member_id), "member leaves (consumer protocol)");
        self.remove(&req.member_id);
        Ok(ConsumerHeartbeatReply {
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    fn remove(&mut self, member_id: &str) {
        self.dirty = true;
        self.members.remove(member_id);
        self.target.remove(member_id);
        self.epoch += 1;
        if self.members.is_empty() {
            self.metadata.clear();
            self.assignment_epoch = self.epoch;
        }
    }

    /// Removes every member (a broker that starts as a cluster's follower).
    pub fn dismiss(&mut self) {
        if !self.members.is_empty() {
            self.dirty = true;
            self.members.clear();
            self.target.clear();
            self.metadata.clear();
            self.epoch += 1;
            self.assignment_epoch = self.epoch;
        }
    }

    /// Applies passed deadlines: members whose session expired, and members that did not revoke
    /// partitions within their rebalance timeout, leave. Returns whether any did.
    pub fn poll(&mut self, now: Instant) -> bool {
        let gone: Vec<(String, &'static str)> = self
            .members
            .iter()
            .filter_map(|(id, m)| {
                if now >= m.session_deadline {
                    Some((id.clone(), "session timeout"))
                } else if m.sync_deadline.is_some_and(|d| now >= d) {
                    Some((
                        id.clone(),
                        "joined but sent no SyncGroup within its rebalance timeout",
                    ))
                } else if m
                    .revoking_since
                    .is_some_and(|since| now >= since + m.rebalance_timeout)
                {
                    Some((
                        id.clone(),
                        if m.classic.is_some() {
                            "did not join again within its rebalance timeout when told to"
                        } else {
                            "did not revoke its partitions within its rebalance timeout"
                        },
                    ))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in &gone {
            info!(group = %client_text(&self.group_id), member = %client_text(id), reason, "member removed (consumer protocol)");
            self.remove(id);
        }
        !gone.is_empty()
    }

    /// Recomputes the target when the group epoch moved or the subscribed topics changed (a
    /// topic created, deleted or given more partitions).
    fn refresh(&mut self, view: &TopicView, mut changed: bool) {
        let metadata = self.subscribed_metadata(view);
        if metadata != self.metadata {
            changed = true;
            self.metadata = metadata;
        }
        if changed {
            self.epoch += 1;
            self.dirty = true;
        }
        if self.assignment_epoch < self.epoch {
            self.target = self.compute_target();
            self.assignment_epoch = self.epoch;
        }
    }

    /// The topics the members subscribe to that exist, with their ids and partition counts:
    /// from the members' subscriptions, not the broker's topics, so a heartbeat costs the
    /// group's subscriptions however many topics the broker has.
    fn subscribed_metadata(&self, view: &TopicView) -> Vec<(String, Uuid, i32)> {
        let subscribed: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.topic_names.iter().chain(&m.regex_topics))
            .collect();
        subscribed
            .into_iter()
            .filter_map(|name| view.get(name).map(|(id, n)| (name.clone(), *id, *n)))
            .collect()
    }

    /// The assignor most members ask for (the default when none does).
    fn assignor(&self) -> &'static str {
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        ASSIGNORS
            .iter()
            .copied()
            .max_by_key(|a| (votes.get(a).copied().unwrap_or(0), *a == ASSIGNORS[0]))
            .unwrap_or(ASSIGNORS[0])
    }

    fn compute_target(&self) -> BTreeMap<String, Assignment> {
        let mut target: BTreeMap<String, Assignment> = self
            .members
            .keys()
            .map(|id| (id.clone(), Assignment::new()))
            .collect();
        if self.assignor() == "range" {
            for (name, id, n) in &self.metadata {
                let subscribers: Vec<&String> = self
                    .members
                    .iter()
                    .filter(|(_, m)| m.subscribes(name))
                    .map(|(mid, _)| mid)
                    .collect();
                let k = subscribers.len() as i32;
                let mut next = 0;
                for (i, member) in subscribers.into_iter().enumerate() {
                    let count = *n / k + i32::from((i as i32) < *n % k);
                    let a = target.get_mut(member).expect("every member has an entry");
                    for p in next..next + count {
                        insert(a, *id, p);
                    }
                    next += count;
                }
            }
            return target;
        }
        self.uniform(target)
    }

    /// The uniform assignor: as even as the subscriptions allow, and sticky.
    ///
    /// First the shares, per member and topic: the partitions of the topics with the fewest
    /// subscribers go first, each to the subscriber with the fewest so far (ties to the one
    /// that held most of the topic before, then by id), so a member that alone reads a big
    /// topic does not starve the members that share a small one. Then the partitions: each
    /// member keeps what its previous target gave it of each topic, up to its share of that
    /// topic, and the rest go to the subscribers furthest below theirs. Shares per topic, not
    /// only in all: a member that reads two topics must not keep partitions of the one others
    /// could take while those only it and a few can take pile up on them.
    ///
    /// Each choice takes the least of a heap of the topic's subscribers, so a target costs
    /// about the partitions times the log of the members, not their product: a burst of joins
    /// recomputes it at each.
    fn uniform(&self, mut target: BTreeMap<String, Assignment>) -> BTreeMap<String, Assignment> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        // Each topic's subscribers, in member id order.
        let mut subscribers: BTreeMap<&str, Vec<&String>> = self
            .metadata
            .iter()
            .map(|(name, _, _)| (name.as_str(), Vec::new()))
            .collect();
        for (id, m) in &self.members {
            for name in m.topic_names.iter().chain(&m.regex_topics) {
                if let Some(ids) = subscribers.get_mut(name.as_str())
                    && ids.last() != Some(&id)
                {
                    ids.push(id);
                }
            }
        }
        let mut topics: Vec<&(String, Uuid, i32)> = self.metadata.iter().collect();
        topics.sort_by_key(|(name, _, _)| (subscribers[name.as_str()].len(), name.clone()));
        let by_id: HashMap<Uuid, (&str, i32)> = self
            .metadata
            .iter()
            .map(|(name, id, n)| (*id, (name.as_str(), *n)))
            .collect();
        // What each member keeps of its previous target: still subscribed, still there.
        let kept: HashMap<&String, Vec<(Uuid, i32)>> = self
            .members
            .iter()
            .map(|(id, m)| {
                let previous = self.target.get(id).cloned().unwrap_or_default();
                let valid = filter(&previous, |t, p| {
                    by_id
                        .get(&t)
                        .is_some_and(|(name, n)| p < *n && m.subscribes(name))
                });
                // Kept first: partitions of the topics fewest others could take.
                let mut valid: Vec<(Uuid, i32)> = pairs(&valid).collect();
                valid.sort_by_key(|(t, p)| {
                    let name = by_id.get(t).map_or("", |(name, _)| name);
                    (subscribers.get(name).map_or(0, Vec::len), name, *p)
                });
                (id, valid)
            })
            .collect();
        // Each member's share in all, and of each topic.
        let mut share: HashMap<&String, usize> = HashMap::new();
        let mut topic_share: HashMap<(&String, Uuid), usize> = HashMap::new();
        for (name, t, n) in &topics {
            // The subscriber with the fewest so far, then the one that held most of the
            // topic, then by id.
            let mut fewest: BinaryHeap<Reverse<(usize, Reverse<usize>, &String)>> = subscribers
                [name.as_str()]
            .iter()
            .map(|&id| {
                let had = kept
                    .get(id)
                    .map_or(0, |k| k.iter().filter(|(kt, _)| kt == t).count());
                Reverse((share.get(id).copied().unwrap_or(0), Reverse(had), id))
            })
            .collect();
            for _ in 0..*n {
                let Some(Reverse((have, had, id))) = fewest.pop() else {
                    break;
                };
                share.insert(id, have + 1);
                *topic_share.entry((id, *t)).or_default() += 1;
                fewest.push(Reverse((have + 1, had, id)));
            }
        }
        let mut count: HashMap<(&String, Uuid), usize> = HashMap::new();
        let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
        for (id, previous) in &kept {
            let a = target.get_mut(*id).expect("every member has an entry");
            for (t, p) in previous {
                let have = count.entry((*id, *t)).or_default();
                if *have < topic_share.get(&(*id, *t)).copied().unwrap_or(0) {
                    *have += 1;
                    taken.insert((*t, *p));
                    insert(a, *t, *p);
                }
            }
        }
        for (name, t, n) in &topics {
            // The subscriber furthest below its share of the topic (one at it last), then by
            // id.
            let key = |id: &'_ String, have: usize| {
                let quota = topic_share.get(&(id, *t)).copied().unwrap_or(0);
                (have >= quota, have)
            };
            let mut neediest: BinaryHeap<Reverse<((bool, usize), &String)>> = subscribers
                [name.as_str()]
            .iter()
            .map(|&id| Reverse((key(id, count.get(&(id, *t)).copied().unwrap_or(0)), id)))
            .collect();
            for p in 0..*n {
                if taken.contains(&(*t, p)) {
                    continue;
                }
                let Some(Reverse(((_, have), id))) = neediest.pop() else {
                    break;
                };
                count.insert((id, *t), have + 1);
                neediest.push(Reverse((key(id, have + 1), id)));
                insert(
                    target.get_mut(id).expect("every member has an entry"),
                    *t,
                    p,
                );
            }
        }
        target
    }

    /// Moves `member_id` towards its target (Kafka's `CurrentAssignmentBuilder`). `owned`: the
    /// partitions the member says it holds, when it says.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: Instant) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let Some(member) = self.members.get(member_id) else {
            return;
        };
        let gave_up =
            |a: &Assignment| owned.is_some_and(|o| pairs(a).all(|(t, p)| !contains(o, t, p)));
        match member.state {
            MemberState::UnrevokedPartitions if !gave_up(&member.pending_revocation) => return,
            MemberState::Stable if member.epoch == self.assignment_epoch => return,
            _ => {}
        }
        let held_by_others: BTreeSet<(Uuid, i32)> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .flat_map(|(_, m)| pairs(&m.assigned).chain(pairs(&m.pending_revocation)))
            .collect();
        let assignment_epoch = self.assignment_epoch;
        self.dirty = true;
        let member = self.members.get_mut(member_id).expect("looked up above");
        member.pending_revocation.clear();
        member.revoking_since = None;
        let revoke = filter(&member.assigned, |t, p| !contains(&target, t, p));
        member.assigned = filter(&member.assigned, |t, p| contains(&target, t, p));
        // Partitions to give up that the member says it no longer holds (a member that joined
        // again holds none) need no round trip.
        if !revoke.is_empty() && !gave_up(&revoke) {
            member.pending_revocation = revoke;
            member.revoking_since = Some(now);
            member.state = MemberState::UnrevokedPartitions;
            member
                .assigned_at
                .retain(|tp, _| contains(&member.assigned, tp.0, tp.1));
            return;
        }
        let assigned = filter(&target, |t, p| {
            contains(&member.assigned, t, p) || !held_by_others.contains(&(t, p))
        });
        if member.epoch != assignment_epoch {
            member.previous_epoch = member.epoch;
            member.epoch = assignment_epoch;
        }
        member.state = if assigned == target {
            MemberState::Stable
        } else {
            MemberState::UnreleasedPartitions
        };
        let epoch = member.epoch;
        member
            .assigned_at
            .retain(|tp, _| contains(&assigned, tp.0, tp.1));
        for tp in pairs(&assigned) {
            member.assigned_at.entry(tp).or_insert(epoch);
        }
        member.assigned = assigned;
    }

    /// Whether `member_id` is a member of the consumer protocol itself (not a classic member
    /// the group hosts).
    pub fn has_own_member(&self, member_id: &str) -> bool {
        self.members
            .get(member_id)
            .is_some_and(|m| m.classic.is_none())
    }

    /// Checks an OffsetCommit's member and epoch: a request without a member commits only to
    /// a group without members; a member commits at its epoch, or at an older one for
    /// partitions it has held since that epoch (so a commit in flight while its epoch moved on
    /// is taken, and one for a partition it gave up and got back since is not).
    /// `partitions` by topic name; none (TxnOffsetCommit's check) needs the exact epoch.
    pub fn check_commit(
        &self,
        member_id: &str,
        epoch: i32,
        partitions: &[(String, i32)],
    ) -> Result<(), GroupError> {
        if member_id.is_empty() && epoch < 0 {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
        }
        let member = self
            .members
            .get(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if epoch == member.epoch {
            return Ok(());
        }
        // A classic member commits at its generation, which is its epoch, as Kafka checks it.
        if member.classic.is_some() {
            return Err(GroupError::IllegalGeneration {
                given: epoch,
                current: member.epoch,
            });
        }
        let held_since = |name: &str, p: i32| {
            self.metadata
                .iter()
                .find(|(n, _, _)| n == name)
                .and_then(|(_, id, _)| member.assigned_at.get(&(*id, p)))
                .is_some_and(|since| *since <= epoch)
        };
        if epoch < member.epoch
            && !partitions.is_empty()
            && partitions.iter().all(|(n, p)| held_since(n, *p))
        {
            return Ok(());
        }
        Err(GroupError::StaleMemberEpoch {
            given: epoch,
            current: member.epoch,
        })
    }

    /// The group as DescribeGroups shows a classic one, as Kafka does for these groups so that
    /// older tools can read them: protocol type "consumer", the assignor as the protocol, each
    /// member's subscription and assignment in the classic consumer protocol's encoding (v0).
    pub fn classic_view(&self) -> (String, Vec<super::DescribedMember>) {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::StrBytes;
        let members = self
            .members
            .iter()
            .map(|(id, m)| {
                let topics: Vec<StrBytes> = self
                    .metadata
                    .iter()
                    .filter(|(n, _, _)| m.subscribes(n))
                    .map(|(n, _, _)| StrBytes::from_string(n.clone()))
                    // Named topics that do not exist (yet) are part of the subscription too.
                    .chain(
                        m.topic_names
                            .iter()
                            .filter(|n| !self.metadata.iter().any(|(t, _, _)| t == *n))
                            .map(|n| StrBytes::from_string(n.clone())),
                    )
                    .collect();
                let subscription = ConsumerProtocolSubscription::default().with_topics(topics);
                super::DescribedMember {
                    member_id: id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: encode_v0(&subscription),
                    assignment: self.classic_assignment(&m.assigned),
                }
            })
            .collect();
        (self.assignor().to_string(), members)
    }

    /// `assigned` as the classic consumer protocol carries an assignment (v0, which every
    /// client reads), by topic name.
    fn classic_assignment(&self, assigned: &Assignment) -> bytes::Bytes {
        use kafka_protocol::messages::ConsumerProtocolAssignment;
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::protocol::StrBytes;
        let name_of = |id: &Uuid| {
            self.metadata
                .iter()
                .find(|(_, t, _)| t == id)
                .map(|(n, _, _)| n.clone())
        };
        let partitions: Vec<TopicPartition> = assigned
            .iter()
            .filter_map(|(t, ps)| {
                Some(
                    TopicPartition::default()
                        .with_topic(StrBytes::from_string(name_of(t)?).into())
                        .with_partitions(ps.iter().copied().collect()),
                )
            })
            .collect();
        encode_v0(&ConsumerProtocolAssignment::default().with_assigned_partitions(partitions))
    }

    /// Takes in the members of a classic group of the consumer protocol type as they are, when
    /// a member of the consumer protocol joins it (Kafka's online upgrade): each keeps its
    /// member id and its partitions, with the classic group's generation as its epoch and the
    /// group's; the target is what they hold until the joining member moves the epoch, and
    /// then each is told, at its next Heartbeat, to join again and so reconcile.
    pub fn host_classic_members(
        &mut self,
        generation: i32,
        seeds: Vec<ClassicSeed>,
        view: &TopicView,
        now: Instant,
    ) {
        let by_id = |named: &[(String, Vec<i32>)]| {
            let mut a = Assignment::new();
            for (name, partitions) in named {
                if let Some((id, n)) = view.get(name) {
                    for p in partitions.iter().filter(|p| (0..*n).contains(*p)) {
                        insert(&mut a, *id, *p);
                    }
                }
            }
            a
        };
        self.epoch = self.epoch.max(generation);
        self.assignment_epoch = self.epoch;
        let epoch = self.epoch;
        for seed in seeds {
            // A partition two members claim (a faulty client-side assignor) stays with the first.
            let assigned = filter(&by_id(&seed.assigned), |t, p| {
                !self.members.values().any(|m| contains(&m.assigned, t, p))
            });
            let revoking = filter(&by_id(&seed.owned), |t, p| !contains(&assigned, t, p));
            info!(group = %client_text(&self.group_id), member = %client_text(&seed.member_id), "classic member hosted by the consumer protocol's group");
            self.target.insert(seed.member_id.clone(), assigned.clone());
            self.members.insert(
                seed.member_id,
                Member {
                    instance_id: seed.instance_id,
                    rack_id: seed.subscription.rack_id.clone(),
                    client_id: seed.client_id,
                    client_host: seed.client_host,
                    epoch,
                    previous_epoch: -1,
                    state: if revoking.is_empty() {
                        MemberState::Stable
                    } else {
                        MemberState::UnrevokedPartitions
                    },
                    rebalance_timeout: seed.rebalance_timeout,
                    topic_names: seed.subscription.topics.iter().cloned().collect(),
                    regex: None,
                    regex_topics: BTreeSet::new(),
                    assigned_at: pairs(&assigned).map(|tp| (tp, epoch)).collect(),
                    assignor: None,
                    last_sent: Some(assigned.clone()),
                    assigned,
                    revoking_since: (!revoking.is_empty()).then_some(now),
                    pending_revocation: revoking,
                    session_deadline: now + seed.session_timeout,
                    classic: Some(ClassicMember {
                        session_timeout_ms: seed.session_timeout.as_millis() as u64,
                        protocols: seed.protocols,
                    }),
                    sync_deadline: None,
                },
            );
        }
        // The subscribed topics as a heartbeat computes them, so that the taking in itself
        // moves no epoch.
        self.metadata = self.subscribed_metadata(view);
        self.dirty = true;
        // A partition the classic assignment gave no one (an assignor that left it out,
        // partitions added since its rebalance): the group moves to its next epoch, whose
        // target gives it out, rather than leaving it unread until something else changes (a
        // static member replacing its classic self moves no epoch of its own).
        let uncovered = self
            .metadata
            .iter()
            .any(|(_, id, n)| (0..*n).any(|p| !self.target.values().any(|a| contains(a, *id, p))));
        if uncovered {
            self.epoch += 1;
        }
    }

    /// Whether members are left, every one a classic member the group hosts, with a protocol
    /// (assignor) they all support: the group goes back to the classic protocol
    /// ([`Self::hand_back_classic_members`]).
    pub fn only_classic_members(&self) -> bool {
        // Asked at every poll of the group: the usual answer comes without allocating.
        if self.members.is_empty() || self.members.values().any(|m| m.classic.is_none()) {
            return false;
        }
        let classic: Vec<&ClassicMember> = self
            .members
            .values()
            .filter_map(|m| m.classic.as_ref())
            .collect();
        classic[0]
            .protocols
            .iter()
            .any(|(name, _)| supported_by_all(name, &classic))
    }

    /// Gives every member, each a hosted classic member, back to the classic group (Kafka's
    /// online downgrade, when the last member of the consumer protocol left); this group is
    /// left as one no member ever joined, and what was saved of it goes at the next save.
    pub fn hand_back_classic_members(&mut self) -> Vec<ReturningMember> {
        let members = std::mem::take(&mut self.members);
        let returning = members
            .into_iter()
            .filter_map(|(member_id, m)| {
                let classic = m.classic?;
                Some(ReturningMember {
                    assignment: self.classic_assignment(&m.assigned),
                    member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: classic.session_timeout(),
                    rebalance_timeout: m.rebalance_timeout,
                    protocols: classic.protocols,
                    epoch: m.epoch,
                })
            })
            .collect();
        *self = ConsumerGroup::new(std::mem::take(&mut self.group_id));
        self.dirty = true;
        returning
    }

    /// A classic member of this group, checked as Kafka checks a classic request to a group of
    /// the consumer protocol: a member id the group has (or the instance id's member), of the
    /// classic protocol.
    fn classic_member(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<&mut Member, GroupError> {
        if let Some(instance) = instance_id
            && self.holder_of(instance).is_some_and(|h| h != member_id)
        {
            return Err(GroupError::FencedInstanceId);
        }
        match self.members.get_mut(member_id) {
            Some(m) if m.classic.is_some() => Ok(m),
            _ => Err(GroupError::UnknownMemberId),
        }
    }

    /// A classic JoinGroup to this group (Kafka's `classicGroupJoinToConsumerGroup`). The member
    /// subscribes with the topics of its metadata in the consumer protocol and holds what it
    /// says it owns (nothing for an eager member, which gave everything up before joining); it
    /// moves towards its target as a heartbeat would move it and is answered at once, its epoch
    /// as the generation. It is not the leader: the group assigns, and its SyncGroup gets what
    /// it may hold now.
    pub fn classic_join(
        &mut self,
        req: &JoinRequest,
        member_id: String,
        view: &TopicView,
        settings: ConsumerSettings,
        now: Instant,
    ) -> Result<JoinResponse, GroupError> {
        let protocol = req
            .protocols
            .first()
            .filter(|_| req.protocol_type == "consumer")
            .ok_or(GroupError::InconsistentGroupProtocol)?;
        let subscription =
            read_subscription(&protocol.metadata).ok_or(GroupError::InconsistentGroupProtocol)?;
        // A static member that restarted (no member id) replaces the member of its instance
        // id, keeping its partitions and with no new group epoch, as Kafka replaces it (the
        // join below, at epoch 0); another member id claiming the instance id is fenced.
        if let Some(instance) = &req.group_instance_id
            && self.holder_of(instance).is_some_and(|h| *h != member_id)
            && !req.member_id.is_empty()
        {
            return Err(GroupError::FencedInstanceId);
        }
        let known = match self.members.get(&member_id) {
            Some(m) if m.classic.is_none() => return Err(GroupError::UnknownMemberId),
            Some(m) => Some(m.epoch),
            None => None,
        };
        // As Kafka: a classic member must share a protocol (assignor) with the other classic
        // members, so that they can form a classic group again once no member of the consumer
        // protocol is left (a static member's old self it replaces does not count).
        let replaced = req
            .group_instance_id
            .as_deref()
            .and_then(|i| self.holder_of(i).cloned());
        let others: Vec<&ClassicMember> = self
            .members
            .iter()
            .filter(|(id, _)| **id != member_id && Some(*id) != replaced.as_ref())
            .filter_map(|(_, m)| m.classic.as_ref())
            .collect();
        if !others.is_empty()
            && !req
                .protocols
                .iter()
                .any(|p| supported_by_all(&p.name, &others))
        {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        debug!(group = %client_text(&self.group_id), member = %client_text(&member_id), epoch = ?known, "classic member joins (hosted by the consumer protocol's group)");
        let mut owned = Assignment::new();
        if known.is_some() {
            for (name, partitions) in &subscription.owned {
                if let Some((id, _)) = view.get(name) {
                    owned
                        .entry(*id)
                        .or_default()
                        .extend(partitions.iter().copied());
                }
            }
        }
        let rebalance_timeout_ms = if req.rebalance_timeout_ms > 0 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms.max(0)
        };
        let heartbeat = ConsumerHeartbeat {
            group_id: self.group_id.clone(),
            member_id,
            member_epoch: known.unwrap_or(0),
            instance_id: req.group_instance_id.clone(),
            rack_id: subscription.rack_id.clone(),
            rebalance_timeout_ms,
            subscribed_topic_names: Some(subscription.topics.clone()),
            subscribed_topic_regex: None,
            compiled_regex: None,
            server_assignor: None,
            owned: Some(owned),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
        };
        let reply = self.heartbeat(heartbeat, view, &|_| true, settings, now)?;
        let classic = ClassicMember {
            session_timeout_ms: req.session_timeout_ms.max(0) as u64,
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.clone(), p.metadata.to_vec()))
                .collect(),
        };
        let member = self
            .members
            .get_mut(&reply.member_id)
            .expect("the heartbeat took it in");
        if member.classic.as_ref() != Some(&classic) {
            self.dirty = true;
        }
        member.session_deadline = now + classic.session_timeout();
        member.sync_deadline = Some(now + member.rebalance_timeout);
        member.classic = Some(classic);
        Ok(JoinResponse {
            generation_id: member.epoch,
            protocol_type: Some("consumer".to_string()),
            protocol_name: Some(protocol.name.clone()),
            leader: String::new(),
            skip_assignment: false,
            member_id: reply.member_id,
            members: Vec::new(),
        })
    }

    /// A classic SyncGroup to this group (Kafka's `classicGroupSyncToConsumerGroup`): the
    /// partitions the member may hold now, in the classic encoding. A member whose epoch the
    /// group has passed must join again first (REBALANCE_IN_PROGRESS), unless it is giving
    /// partitions up: a cooperative member learns which from this answer.
    pub fn classic_sync(
        &mut self,
        req: &SyncRequest,
        now: Instant,
    ) -> Result<SyncResponse, GroupError> {
        let group_epoch = self.epoch;
        let member = self.classic_member(&req.member_id, req.group_instance_id.as_deref())?;
        if req.generation_id != member.epoch {
            return Err(GroupError::IllegalGeneration {
                given: req.generation_id,
                current: member.epoch,
            });
        }
        let classic = member.classic.as_ref().expect("a classic member");
        let protocol_known = |name: &str| classic.protocols.iter().any(|(n, _)| n == name);
        if req
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != "consumer")
            || req
                .protocol_name
                .as_deref()
                .is_some_and(|n| !protocol_known(n))
        {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        if member.epoch < group_epoch && member.state != MemberState::UnrevokedPartitions {
            return Err(GroupError::RebalanceInProgress);
        }
        let protocol_name = req
            .protocol_name
            .clone()
            .or_else(|| classic.protocols.first().map(|(n, _)| n.clone()));
        member.session_deadline = now + classic.session_timeout();
        member.sync_deadline = None;
        member.last_sent = Some(member.assigned.clone());
        let assigned = member.assigned.clone();
        Ok(SyncResponse {
            protocol_type: Some("consumer".to_string()),
            protocol_name,
            assignment: self.classic_assignment(&assigned),
        })
    }

    /// A classic Heartbeat to this group (Kafka's `classicGroupHeartbeatToConsumerGroup`):
    /// REBALANCE_IN_PROGRESS tells the member to join again when the group's epoch passed its
    /// own, when it must give partitions up, or when partitions it waits for are free now.
    pub fn classic_heartbeat(
        &mut self,
        req: &HeartbeatRequest,
        now: Instant,
    ) -> Result<(), GroupError> {
        let group_epoch = self.epoch;
        let waiting = self.waits_for_others(&req.member_id);
        let member = self.classic_member(&req.member_id, req.group_instance_id.as_deref())?;
        if req.generation_id != member.epoch {
            return Err(GroupError::IllegalGeneration {
                given: req.generation_id,
                current: member.epoch,
            });
        }
        let timeout = member
            .classic
            .as_ref()
            .map_or(Duration::ZERO, ClassicMember::session_timeout);
        member.session_deadline = now + timeout;
        let rejoin = member.epoch < group_epoch
            || member.state == MemberState::UnrevokedPartitions
            || (member.state == MemberState::UnreleasedPartitions && !waiting);
        if rejoin {
            // It must join again within its rebalance timeout, or leave the group (Kafka's
            // join timeout): what it holds may be what another member waits for.
            member.revoking_since.get_or_insert(now);
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Whether partitions of the member's target that it does not hold are still held by
    /// another member.
    fn waits_for_others(&self, member_id: &str) -> bool {
        let (Some(member), Some(target)) =
            (self.members.get(member_id), self.target.get(member_id))
        else {
            return false;
        };
        pairs(target)
            .filter(|(t, p)| !contains(&member.assigned, *t, *p))
            .any(|(t, p)| {
                self.members.iter().any(|(id, m)| {
                    id != member_id
                        && (contains(&m.assigned, t, p) || contains(&m.pending_revocation, t, p))
                })
            })
    }

    /// A classic LeaveGroup's member (by member id, or by instance id alone for an operator's
    /// removal of a static member): it leaves the group.
    pub fn classic_leave(&mut self, leaving: &LeavingMember) -> Result<(), GroupError> {
        let id = if leaving.member_id.is_empty() {
            leaving
                .group_instance_id
                .as_deref()
                .and_then(|i| self.holder_of(i).cloned())
                .ok_or(GroupError::UnknownMemberId)?
        } else {
            self.classic_member(&leaving.member_id, leaving.group_instance_id.as_deref())?;
            leaving.member_id.clone()
        };
        info!(group = %client_text(&self.group_id), member = %client_text(&id), reason = leaving.reason.as_deref().map(client_text), "classic member leaves (consumer protocol's group)");
        self.remove(&id);
        Ok(())
    }

    pub fn describe(&self) -> ConsumerGroupDescription {
        ConsumerGroupDescription {
            state: self.state(),
            group_epoch: self.epoch,
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor().to_string(),
            members: self
                .members
                .iter()
                .map(|(id, m)| ConsumerMemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topic_names: m.topic_names.iter().cloned().collect(),
                    subscribed_topic_regex: m.regex.as_ref().map(|(p, _)| p.clone()),
                    assignment: m.assigned.clone(),
                    target_assignment: self.target.get(id).cloned().unwrap_or_default(),
                    classic: m.classic.is_some(),
                })
                .collect(),
        }
    }
}

/// A message of the classic consumer protocol in version 0, after the 2-byte version it puts
/// first.
fn encode_v0<M: kafka_protocol::protocol::Encodable>(m: &M) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::new();
    buf.extend_from_slice(&0i16.to_be_bytes());
    match m.encode(&mut buf, 0) {
        Ok(()) => buf.freeze(),
        Err(_) => bytes::Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Uuid = Uuid::from_u128(1);
    const U: Uuid = Uuid::from_u128(2);

    fn view(partitions: i32) -> TopicView {
        TopicView::from([
            ("t".to_string(), (T, partitions)),
            ("u".to_string(), (U, 2)),
        ])
    }

    fn settings() -> ConsumerSettings {
        ConsumerSettings {
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
        }
    }

    fn join(id: &str, topics: &[&str]) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 5_000,
            subscribed_topic_names: Some(topics.iter().map(|t| t.to_string()).collect()),
            owned: Some(Assignment::new()),
            ..Default::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Assignment) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Default::default()
        }
    }

    /// Every topic may be seen.
    fn visible(_: &str) -> bool {
        true
    }

    /// Over a group of two partitions of t: a joins and holds both, b joins, a is told to keep
    /// one. Returns what a held and what it keeps (a's epoch stays 1 until it confirms).
    fn a_then_b(g: &mut ConsumerGroup, v: &TopicView, now: Instant) -> (Assignment, Assignment) {
        let a = g
            .heartbeat(join("a", &["t"]), v, &visible, settings(), now)
            .unwrap();
        let owned = a.assignment.unwrap();
        g.heartbeat(join("b", &["t"]), v, &visible, settings(), now)
            .unwrap();
        let kept = g
            .heartbeat(beat("a", 1, &owned), v, &visible, settings(), now)
            .unwrap();
        (owned, kept.assignment.unwrap())
    }

    fn parts(a: &Assignment, topic: Uuid) -> Vec<i32> {
        a.get(&topic)
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(4);
        let a = g
            .heartbeat(join("a", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(a.member_epoch, 1);
        let a_owned = a.assignment.clone().unwrap();
        assert_eq!(parts(&a_owned, T), vec![0, 1, 2, 3]);

        // b joins: the target splits the partitions, but a still holds them all.
        let b = g
            .heartbeat(join("b", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(b.member_epoch, 2);
        assert_eq!(b.assignment, Some(Assignment::new()), "nothing is free yet");
        assert_eq!(g.state(), GroupState::Reconciling);

        // a is told to give two up, at its old epoch.
        let a2 = g
            .heartbeat(beat("a", 1, &a_owned), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(a2.member_epoch, 1);
        let kept = a2.assignment.clone().unwrap();
        assert_eq!(parts(&kept, T).len(), 2);
        // b still gets nothing while a has not confirmed.
        let b2 = g
            .heartbeat(
                beat("b", 2, &Assignment::new()),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap();
        assert_eq!(b2.assignment, None);
        // a confirms (it owns only what it kept): it reaches epoch 2, and b gets the rest.
        let a3 = g
            .heartbeat(beat("a", 1, &kept), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(a3.member_epoch, 2);
        let b3 = g
            .heartbeat(
                beat("b", 2, &Assignment::new()),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap();
        let b_owned = b3.assignment.unwrap();
        let mut all: Vec<i32> = parts(&kept, T);
        all.extend(parts(&b_owned, T));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert_eq!(parts(&b_owned, T).len(), 2);
        g.heartbeat(beat("b", 2, &b_owned), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(g.state(), GroupState::Stable);
    }

    #[test]
    fn epochs_are_checked_and_leaving_frees_partitions() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        let a = g
            .heartbeat(join("a", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        let err = g
            .heartbeat(
                beat("a", 7, &Assignment::new()),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap_err();
        assert_eq!(err.kafka_code(), 110, "{err}");
        let err = g
            .heartbeat(
                beat("nobody", 1, &Assignment::new()),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap_err();
        assert_eq!(err.kafka_code(), 25);
        let b = g
            .heartbeat(join("b", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(b.assignment, Some(Assignment::new()));
        let owned = a.assignment.unwrap();
        let leave = g
            .heartbeat(beat("a", -1, &owned), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(leave.member_epoch, -1);
        let b2 = g
            .heartbeat(
                beat("b", 2, &Assignment::new()),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap();
        assert_eq!(parts(&b2.assignment.unwrap(), T), vec![0, 1]);
        assert!(b2.member_epoch > 2);
    }

    #[test]
    fn a_silent_member_expires_and_one_that_does_not_revoke_is_removed() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        let a = g
            .heartbeat(join("a", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        let owned = a.assignment.unwrap();
        g.heartbeat(join("b", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        // a is asked to revoke one partition and never does: after its rebalance timeout (5 s)
        // it is removed, although it still heartbeats.
        g.heartbeat(beat("a", 1, &owned), &v, &visible, settings(), now)
            .unwrap();
        let later = now + Duration::from_secs(4);
        g.heartbeat(beat("a", 1, &owned), &v, &visible, settings(), later)
            .unwrap();
        g.heartbeat(
            beat("b", 2, &Assignment::new()),
            &v,
            &visible,
            settings(),
            later,
        )
        .unwrap();
        assert!(!g.poll(later));
        assert!(g.poll(now + Duration::from_secs(6)));
        assert_eq!(g.members_len(), 1);
        let b = g
            .heartbeat(
                beat("b", 2, &Assignment::new()),
                &v,
                &visible,
                settings(),
                now + Duration::from_secs(6),
            )
            .unwrap();
        assert_eq!(parts(&b.assignment.unwrap(), T), vec![0, 1]);
        // b's session: 10 s without a heartbeat.
        assert!(!g.poll(now + Duration::from_secs(15)));
        assert!(g.poll(now + Duration::from_secs(17)));
        assert!(g.is_empty());
        assert_eq!(g.state(), GroupState::Empty);
    }

    #[test]
    fn range_assigns_contiguous_blocks_per_topic() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(5);
        let mut req = join("a", &["t", "u"]);
        req.server_assignor = Some("range".into());
        g.heartbeat(req, &v, &visible, settings(), now).unwrap();
        let mut req = join("b", &["t", "u"]);
        req.server_assignor = Some("range".into());
        g.heartbeat(req, &v, &visible, settings(), now).unwrap();
        let d = g.describe();
        assert_eq!(d.assignor, "range");
        let targets: Vec<(Vec<i32>, Vec<i32>)> = d
            .members
            .iter()
            .map(|m| {
                (
                    parts(&m.target_assignment, T),
                    parts(&m.target_assignment, U),
                )
            })
            .collect();
        assert_eq!(
            targets,
            vec![(vec![0, 1, 2], vec![0]), (vec![3, 4], vec![1])]
        );
        let err = g
            .heartbeat(
                ConsumerHeartbeat {
                    server_assignor: Some("sticky".into()),
                    ..join("c", &["t"])
                },
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap_err();
        assert_eq!(err.kafka_code(), 112);
    }

    /// The uniform assignor as it was first written (a scan of every subscriber for each
    /// partition): the oracle the heap-based one must agree with.
    fn reference_uniform(
        g: &ConsumerGroup,
        mut target: BTreeMap<String, Assignment>,
    ) -> BTreeMap<String, Assignment> {
        let subscribers: BTreeMap<&str, Vec<&String>> = g
            .metadata
            .iter()
            .map(|(name, _, _)| {
                let ids = g
                    .members
                    .iter()
                    .filter(|(_, m)| m.subscribes(name))
                    .map(|(id, _)| id)
                    .collect();
                (name.as_str(), ids)
            })
            .collect();
        let mut topics: Vec<&(String, Uuid, i32)> = g.metadata.iter().collect();
        topics.sort_by_key(|(name, _, _)| (subscribers[name.as_str()].len(), name.clone()));
        // What each member keeps of its previous target: still subscribed, still there.
        let kept: HashMap<&String, Vec<(Uuid, i32)>> = g
            .members
            .iter()
            .map(|(id, m)| {
                let previous = g.target.get(id).cloned().unwrap_or_default();
                let valid = filter(&previous, |t, p| {
                    g.metadata
                        .iter()
                        .any(|(name, tid, n)| *tid == t && p < *n && m.subscribes(name))
                });
                // Kept first: partitions of the topics fewest others could take.
                let mut valid: Vec<(Uuid, i32)> = pairs(&valid).collect();
                valid.sort_by_key(|(t, p)| {
                    let name = g
                        .metadata
                        .iter()
                        .find(|(_, tid, _)| tid == t)
                        .map_or("", |(n, _, _)| n.as_str());
                    (
                        subscribers.get(name).map_or(0, Vec::len),
                        name.to_string(),
                        *p,
                    )
                });
                (id, valid)
            })
            .collect();
        let mut share: HashMap<&String, usize> = HashMap::new();
        let mut topic_share: HashMap<(&String, Uuid), usize> = HashMap::new();
        for (name, t, n) in &topics {
            for _ in 0..*n {
                let fewest = subscribers[name.as_str()].iter().min_by_key(|id| {
                    let had = kept
                        .get(**id)
                        .map_or(0, |k| k.iter().filter(|(kt, _)| kt == t).count());
                    (
                        share.get(**id).copied().unwrap_or(0),
                        std::cmp::Reverse(had),
                        (**id).clone(),
                    )
                });
                if let Some(id) = fewest {
                    *share.entry(id).or_default() += 1;
                    *topic_share.entry((id, *t)).or_default() += 1;
                }
            }
        }
        let mut count: HashMap<(&String, Uuid), usize> = HashMap::new();
        let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
        for (id, previous) in &kept {
            let a = target.get_mut(*id).expect("every member has an entry");
            for (t, p) in previous {
                let quota = topic_share.get(&(*id, *t)).copied().unwrap_or(0);
                let have = count.entry((*id, *t)).or_default();
                if *have < quota {
                    *have += 1;
                    taken.insert((*t, *p));
                    insert(a, *t, *p);
                }
            }
        }
        for (name, t, n) in &topics {
            for p in 0..*n {
                if taken.contains(&(*t, p)) {
                    continue;
                }
                let neediest = subscribers[name.as_str()].iter().min_by_key(|id| {
                    let have = count.get(&(**id, *t)).copied().unwrap_or(0);
                    let quota = topic_share.get(&(**id, *t)).copied().unwrap_or(0);
                    (have >= quota, have, (**id).clone())
                });
                if let Some(id) = neediest {
                    *count.entry((*id, *t)).or_default() += 1;
                    insert(
                        target.get_mut(*id).expect("every member has an entry"),
                        *t,
                        p,
                    );
                }
            }
        }
        target
    }

    /// The heap-based uniform assignor gives exactly the targets of the first, scanning one,
    /// over groups of random subscriptions that members join and leave.
    #[test]
    fn uniform_agrees_with_the_scanning_reference() {
        let names = ["a", "b", "c", "d"];
        let ids: Vec<Uuid> = (1..=4).map(Uuid::from_u128).collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let now = Instant::now();
        for _ in 0..40 {
            let view: TopicView = names
                .iter()
                .zip(&ids)
                .map(|(n, id)| (n.to_string(), (*id, 1 + next(12) as i32)))
                .collect();
            let mut g = ConsumerGroup::new("g".into());
            let mut members = Vec::new();
            for step in 0..12 {
                if members.len() > 2 && next(4) == 0 {
                    let gone: String = members.remove(next(members.len() as u64) as usize);
                    g.remove(&gone);
                } else {
                    let id = format!("m{step}");
                    let topics: Vec<&str> =
                        names.iter().copied().filter(|_| next(2) == 0).collect();
                    let topics = if topics.is_empty() { vec!["a"] } else { topics };
                    g.heartbeat(join(&id, &topics), &view, &visible, settings(), now)
                        .unwrap();
                    members.push(id);
                }
                let empty: BTreeMap<String, Assignment> = g
                    .members
                    .keys()
                    .map(|id| (id.clone(), Assignment::new()))
                    .collect();
                assert_eq!(g.uniform(empty.clone()), reference_uniform(&g, empty));
            }
        }
    }

    #[test]
    fn uniform_is_sticky_and_balanced_and_follows_new_partitions() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(6);
        for id in ["a", "b", "c"] {
            g.heartbeat(join(id, &["t"]), &v, &visible, settings(), now)
                .unwrap();
        }
        let before: Vec<Vec<i32>> = g
            .describe()
            .members
            .iter()
            .map(|m| parts(&m.target_assignment, T))
            .collect();
        assert!(before.iter().all(|p| p.len() == 2), "{before:?}");
        // Two more partitions: everyone keeps what it had, and the new ones are spread.
        let grown = view(8);
        g.heartbeat(
            beat(
                "a",
                g.describe().members[0].member_epoch,
                &Assignment::new(),
            ),
            &grown,
            &visible,
            settings(),
            now,
        )
        .unwrap();
        let after: Vec<Vec<i32>> = g
            .describe()
            .members
            .iter()
            .map(|m| parts(&m.target_assignment, T))
            .collect();
        for (b, a) in before.iter().zip(&after) {
            assert!(b.iter().all(|p| a.contains(p)), "{before:?} -> {after:?}");
        }
        let mut sizes: Vec<usize> = after.iter().map(Vec::len).collect();
        sizes.sort();
        assert_eq!(sizes, vec![2, 3, 3]);
    }

    /// Members that read two topics and members that read one of them: each topic's
    /// partitions go where they balance the group, whatever order the members joined in (a
    /// member of both kept partitions of the shared topic while those of the other, which only
    /// it and its like could take, piled up on them: 11-12 against 7-10 in QA).
    #[test]
    fn uniform_balances_members_of_two_topics_against_members_of_one() {
        let v = TopicView::from([("a".to_string(), (T, 60)), ("b".to_string(), (U, 60))]);
        let now = Instant::now();
        for both_first in [true, false] {
            let mut g = ConsumerGroup::new("g".into());
            let mut order: Vec<(String, Vec<&str>)> = (0..12)
                .map(|i| {
                    let topics = if i < 6 { vec!["a", "b"] } else { vec!["a"] };
                    (format!("m{i:02}"), topics)
                })
                .collect();
            if !both_first {
                order.reverse();
            }
            // One at a time, interleaving the kinds: every join moves the target.
            let (first, second): (Vec<_>, Vec<_>) = order
                .into_iter()
                .partition(|(id, _)| id.as_str() < "m03" || ("m06".."m09").contains(&id.as_str()));
            for (id, topics) in first.into_iter().chain(second) {
                g.heartbeat(join(&id, &topics), &v, &visible, settings(), now)
                    .unwrap();
            }
            let sizes: Vec<usize> = g
                .describe()
                .members
                .iter()
                .map(|m| {
                    parts(&m.target_assignment, T).len() + parts(&m.target_assignment, U).len()
                })
                .collect();
            assert_eq!(sizes, vec![10; 12], "both first: {both_first}");
        }
    }

    #[test]
    fn regex_subscriptions_match_whole_names_and_bad_ones_are_refused() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = TopicView::from([
            ("sensors.a".to_string(), (T, 1)),
            ("sensors.b".to_string(), (U, 1)),
            ("xsensors.c".to_string(), (Uuid::from_u128(3), 1)),
        ]);
        let req = ConsumerHeartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some("sensors\\..*".into()),
            ..join("a", &[])
        };
        let a = g.heartbeat(req, &v, &visible, settings(), now).unwrap();
        let got = a.assignment.unwrap();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![T, U]);
        let bad = ConsumerHeartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some("(".into()),
            ..join("b", &[])
        };
        let err = g.heartbeat(bad, &v, &visible, settings(), now).unwrap_err();
        assert_eq!(err.kafka_code(), 128, "INVALID_REGULAR_EXPRESSION");
        assert!(
            err.to_string().contains("invalid SubscribedTopicRegex"),
            "{err}"
        );
        let none = ConsumerHeartbeat {
            subscribed_topic_names: None,
            ..join("c", &[])
        };
        assert_eq!(
            g.heartbeat(none, &v, &visible, settings(), now)
                .unwrap_err()
                .kafka_code(),
            42
        );
    }

    #[test]
    fn commits_are_judged_by_member_and_epoch() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        assert!(
            g.check_commit("", -1, &[("t".into(), 0)]).is_ok(),
            "empty group"
        );
        let a = g
            .heartbeat(join("a", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(g.check_commit("", -1, &[]).unwrap_err().kafka_code(), 25);
        assert_eq!(g.check_commit("x", 1, &[]).unwrap_err().kafka_code(), 25);
        assert!(g.check_commit("a", 1, &[("t".into(), 0)]).is_ok());
        // b joins and a keeps partition 0 or 1 only; its epoch moves to 2 once it revoked.
        g.heartbeat(join("b", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        let kept = g
            .heartbeat(
                beat("a", 1, &a.assignment.unwrap()),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap()
            .assignment
            .unwrap();
        g.heartbeat(beat("a", 1, &kept), &v, &visible, settings(), now)
            .unwrap();
        let mine = parts(&kept, T)[0];
        assert!(g.check_commit("a", 2, &[("t".into(), 1 - mine)]).is_ok());
        // At the old epoch: only for the partition it still holds.
        assert!(g.check_commit("a", 1, &[("t".into(), mine)]).is_ok());
        let err = g
            .check_commit("a", 1, &[("t".into(), 1 - mine)])
            .unwrap_err();
        assert_eq!(err.kafka_code(), 113);
    }

    #[test]
    fn members_with_different_subscriptions_are_balanced_per_topic() {
        // a and b read t (4 partitions); c reads t and u (20 partitions). Kafka's uniform
        // assignor gives a and b two partitions of t each, c all of u.
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = TopicView::from([("t".to_string(), (T, 4)), ("u".to_string(), (U, 20))]);
        g.heartbeat(join("a", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        g.heartbeat(join("c", &["t", "u"]), &v, &visible, settings(), now)
            .unwrap();
        g.heartbeat(join("b", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        let d = g.describe();
        let target = |id: &str| {
            let m = d.members.iter().find(|m| m.member_id == id).unwrap();
            (
                parts(&m.target_assignment, T).len(),
                parts(&m.target_assignment, U).len(),
            )
        };
        assert_eq!(
            (target("a"), target("b"), target("c")),
            ((2, 0), (2, 0), (0, 20))
        );

        // One member reads both topics and holds everything; another joins for one topic: the
        // first keeps the topic only it reads and gives up the shared one, whichever of the
        // two topics' ids sorts first.
        for (first, second) in [(T, U), (U, T)] {
            let mut g = ConsumerGroup::new("g".into());
            let v = TopicView::from([
                ("hx1".to_string(), (first, 6)),
                ("hx2".to_string(), (second, 6)),
            ]);
            g.heartbeat(join("b", &["hx1", "hx2"]), &v, &visible, settings(), now)
                .unwrap();
            g.heartbeat(join("a", &["hx2"]), &v, &visible, settings(), now)
                .unwrap();
            let d = g.describe();
            let sizes: Vec<(String, usize)> = d
                .members
                .iter()
                .map(|m| (m.member_id.clone(), pairs(&m.target_assignment).count()))
                .collect();
            assert_eq!(sizes, [("a".to_string(), 6), ("b".to_string(), 6)]);
            let a = d.members.iter().find(|m| m.member_id == "a").unwrap();
            assert_eq!(
                a.target_assignment.keys().copied().collect::<Vec<_>>(),
                [second]
            );
        }
    }

    #[test]
    fn a_lost_reply_is_forgiven_and_static_members_keep_their_ids() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        // a gives one up and moves to epoch 2; the reply that said so is lost: a heartbeats
        // again at epoch 1 with what it holds.
        let (owned, kept) = a_then_b(&mut g, &v, now);
        let moved = g
            .heartbeat(beat("a", 1, &kept), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(moved.member_epoch, 2);
        let again = g
            .heartbeat(beat("a", 1, &kept), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(
            again.member_epoch, 2,
            "the previous epoch with what it holds: forgiven"
        );
        // At the previous epoch but claiming what it gave up: fenced.
        let err = g
            .heartbeat(beat("a", 1, &owned), &v, &visible, settings(), now)
            .unwrap_err();
        assert_eq!(err.kafka_code(), 110);

        let mut s1 = join("s1", &["t"]);
        s1.instance_id = Some("pump-7".into());
        g.heartbeat(s1, &v, &visible, settings(), now).unwrap();
        let mut s2 = join("s2", &["t"]);
        s2.instance_id = Some("pump-7".into());
        let err = g.heartbeat(s2, &v, &visible, settings(), now).unwrap_err();
        assert_eq!(err.kafka_code(), 111, "UNRELEASED_INSTANCE_ID");
        let mut stolen = beat(
            "b",
            g.describe().members[1].member_epoch,
            &Assignment::new(),
        );
        stolen.instance_id = Some("pump-7".into());
        let err = g
            .heartbeat(stolen, &v, &visible, settings(), now)
            .unwrap_err();
        assert_eq!(err.kafka_code(), 82, "FENCED_INSTANCE_ID");
    }

    /// A static member's leave for now (epoch -2, a rolling restart) keeps its partitions for
    /// it: the other member is not given them, and the same instance id joining again (under a
    /// new member id) gets them back with no new group epoch, as in Kafka. Its session timing
    /// out is a leave like any other.
    #[test]
    fn a_static_member_leaving_for_now_gets_its_partitions_back() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(4);
        let static_join = |id: &str, instance: &str| {
            let mut j = join(id, &["t"]);
            j.instance_id = Some(instance.into());
            j
        };
        let settle = |g: &mut ConsumerGroup, id: &str, now: Instant| {
            let mut owned = Assignment::new();
            for _ in 0..4 {
                let epoch = g
                    .describe()
                    .members
                    .iter()
                    .find(|m| m.member_id == id)
                    .unwrap()
                    .member_epoch;
                let mut b = beat(id, epoch, &owned);
                b.instance_id = Some(format!("i-{id}"));
                if let Some(a) = g
                    .heartbeat(b, &v, &visible, settings(), now)
                    .unwrap()
                    .assignment
                {
                    owned = a;
                }
            }
            owned
        };
        g.heartbeat(static_join("a", "i-a"), &v, &visible, settings(), now)
            .unwrap();
        g.heartbeat(static_join("b", "i-b"), &v, &visible, settings(), now)
            .unwrap();
        settle(&mut g, "a", now);
        let held_b = settle(&mut g, "b", now);
        let held_a = settle(&mut g, "a", now);
        assert_eq!((parts(&held_a, T).len(), parts(&held_b, T).len()), (2, 2));
        let group_epoch = g.describe().group_epoch;

        let mut away = beat("b", g.describe().members[1].member_epoch, &held_b);
        away.member_epoch = -2;
        away.instance_id = Some("i-b".into());
        let reply = g.heartbeat(away, &v, &visible, settings(), now).unwrap();
        assert_eq!(reply.member_epoch, -2);
        // a is not given b's partitions meanwhile.
        assert_eq!(parts(&settle(&mut g, "a", now), T), parts(&held_a, T));
        // b's old self is fenced; the instance id back under a new member id takes them again.
        let err = g
            .heartbeat(beat("b", 2, &held_b), &v, &visible, settings(), now)
            .unwrap_err();
        assert_eq!(err.kafka_code(), 110);
        let back = g
            .heartbeat(static_join("b2", "i-b"), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(parts(&back.assignment.unwrap(), T), parts(&held_b, T));
        assert_eq!(g.describe().group_epoch, group_epoch, "no rebalance");

        // Away again and not back within its session: its partitions go to a.
        let mut away = beat("b2", back.member_epoch, &held_b);
        away.member_epoch = -2;
        away.instance_id = Some("i-b".into());
        g.heartbeat(away, &v, &visible, settings(), now).unwrap();
        settle(&mut g, "a", now + Duration::from_secs(6));
        let later = now + Duration::from_secs(11);
        assert!(g.poll(later), "b2's session timed out");
        assert_eq!(g.describe().members.len(), 1);
        assert_eq!(parts(&settle(&mut g, "a", later), T), vec![0, 1, 2, 3]);
    }

    #[test]
    fn malformed_heartbeats_are_refused_as_kafka_refuses_them() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        let cases = [
            (beat("a", -3, &Assignment::new()), 42),
            (beat("", 4, &Assignment::new()), 42),
            (
                ConsumerHeartbeat {
                    rebalance_timeout_ms: -1,
                    ..join("a", &["t"])
                },
                42,
            ),
            (
                ConsumerHeartbeat {
                    owned: None,
                    ..join("a", &["t"])
                },
                42,
            ),
            (
                ConsumerHeartbeat {
                    owned: Some(Assignment::from([(T, BTreeSet::from([0]))])),
                    ..join("a", &["t"])
                },
                42,
            ),
            (
                ConsumerHeartbeat {
                    server_assignor: Some(String::new()),
                    ..join("a", &["t"])
                },
                112,
            ),
            (
                ConsumerHeartbeat {
                    subscribed_topic_regex: Some("x{1000}{1000}".into()),
                    ..join("a", &[])
                },
                128,
            ),
        ];
        for (req, code) in cases {
            let err = g.heartbeat(req, &v, &visible, settings(), now).unwrap_err();
            assert_eq!(err.kafka_code(), code, "{err}");
        }
        assert!(g.is_empty() && !g.used(), "nothing changed");
        let more = [
            (
                ConsumerHeartbeat {
                    instance_id: Some(String::new()),
                    ..join("a", &["t"])
                },
                42,
            ),
            (
                ConsumerHeartbeat {
                    rack_id: Some(String::new()),
                    ..join("a", &["t"])
                },
                42,
            ),
            (beat("a", -2, &Assignment::new()), 42),
        ];
        for (req, code) in more {
            let err = g.heartbeat(req, &v, &visible, settings(), now).unwrap_err();
            assert_eq!(err.kafka_code(), code, "{err}");
        }
    }

    #[test]
    fn joining_again_with_a_live_members_id_fences_the_earlier_one() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(3);
        let old = g
            .heartbeat(join("a", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        let held = old.assignment.unwrap();
        let new = g
            .heartbeat(join("a", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        assert!(new.member_epoch > old.member_epoch);
        assert_eq!(new.assignment.unwrap(), held, "given again what it held");
        let err = g
            .heartbeat(
                beat("a", old.member_epoch, &held),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap_err();
        assert_eq!(err.kafka_code(), 110, "the earlier one is fenced");
    }

    #[test]
    fn regex_matches_only_topics_the_member_may_see() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        let req = ConsumerHeartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some(".*".into()),
            ..join("a", &[])
        };
        let only_t = |topic: &str| topic == "t";
        let a = g.heartbeat(req, &v, &only_t, settings(), now).unwrap();
        assert_eq!(
            a.assignment.unwrap().keys().copied().collect::<Vec<_>>(),
            vec![T]
        );
    }

    #[test]
    fn commits_at_an_older_epoch_only_for_partitions_held_since() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        // b joins and leaves: a gives one partition up at epoch 1 and gets it back at epoch 3.
        let (_, kept) = a_then_b(&mut g, &v, now);
        let gone = 1 - parts(&kept, T)[0];
        g.heartbeat(beat("a", 1, &kept), &v, &visible, settings(), now)
            .unwrap();
        g.heartbeat(
            beat("b", -1, &Assignment::new()),
            &v,
            &visible,
            settings(),
            now,
        )
        .unwrap();
        let back = g
            .heartbeat(beat("a", 2, &kept), &v, &visible, settings(), now)
            .unwrap();
        assert_eq!(back.member_epoch, 3);
        assert_eq!(parts(&back.assignment.unwrap(), T), vec![0, 1]);
        let mine = parts(&kept, T)[0];
        assert!(
            g.check_commit("a", 1, &[("t".into(), mine)]).is_ok(),
            "held since epoch 1"
        );
        let err = g.check_commit("a", 1, &[("t".into(), gone)]).unwrap_err();
        assert_eq!(
            err.kafka_code(),
            113,
            "given up at 2, back at 3: an epoch-1 commit is stale"
        );
        assert_eq!(
            g.check_commit("a", 1, &[]).unwrap_err().kafka_code(),
            113,
            "TxnOffsetCommit"
        );
        assert!(g.check_commit("a", 3, &[]).is_ok());
    }

    #[test]
    fn a_saved_group_comes_back_as_it_was() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(4);
        let req = ConsumerHeartbeat {
            subscribed_topic_names: Some(vec!["t".into()]),
            subscribed_topic_regex: Some("u".into()),
            ..join("a", &[])
        };
        let a = g.heartbeat(req, &v, &visible, settings(), now).unwrap();
        g.heartbeat(join("b", &["t"]), &v, &visible, settings(), now)
            .unwrap();
        g.heartbeat(
            beat("a", a.member_epoch, &a.assignment.unwrap()),
            &v,
            &visible,
            settings(),
            now,
        )
        .unwrap();
        let saved = g.save().unwrap();
        let back = ConsumerGroup::restore("g".into(), &saved, settings(), now).unwrap();
        assert_eq!(back.describe(), g.describe());
        assert_eq!(back.metadata, g.metadata);
        // A member of the restored group heartbeats and nothing moves.
        let mut back = back;
        let d = g.describe();
        let b = d.members.iter().find(|m| m.member_id == "b").unwrap();
        let r = back
            .heartbeat(
                beat("b", b.member_epoch, &b.assignment),
                &v,
                &visible,
                settings(),
                now,
            )
            .unwrap();
        assert_eq!(r.member_epoch, b.member_epoch);
        assert_eq!(back.epoch, g.epoch, "no epoch bump");
    }

    /// Numbers below `n`, the same for the same seed (xorshift).
    fn numbers(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        }
    }

    /// No partition held (assigned or being revoked) by two of the group's members, nor by two
    /// of the clients' own accounts of what they hold.
    fn assert_held_once<'a>(
        seed: u64,
        g: &ConsumerGroup,
        clients: impl Iterator<Item = &'a Assignment>,
    ) {
        let mut seen = BTreeSet::new();
        for m in g.members.values() {
            for tp in pairs(&m.assigned).chain(pairs(&m.pending_revocation)) {
                assert!(seen.insert(tp), "seed {seed}: {tp:?} held twice");
            }
        }
        let mut held = BTreeSet::new();
        for a in clients {
            for tp in pairs(a) {
                assert!(held.insert(tp), "seed {seed}: clients both hold {tp:?}");
            }
        }
    }

    /// The protocol's promise: whatever members do, no partition is held (assigned or being
    /// revoked) by two members at once, and once everyone heartbeats with what it was told,
    /// every partition is held.
    #[test]
    fn no_partition_is_ever_held_twice() {
        let v = view(7);
        let ids = ["a", "b", "c", "d"];
        for seed in 0..200u64 {
            let mut next = numbers(seed);
            let mut g = ConsumerGroup::new("g".into());
            let mut now = Instant::now();
            // What each client believes: its epoch and the partitions it holds.
            let mut clients: HashMap<&str, (i32, Assignment)> = HashMap::new();
            for _ in 0..300 {
                let id = ids[next(4) as usize];
                now += Duration::from_millis(next(500));
                let req = match clients.get(id) {
                    None => join(id, &["t"]),
                    Some(_) if next(10) == 0 => beat(id, -1, &Assignment::new()),
                    Some((epoch, held)) => beat(id, *epoch, held),
                };
                let leaving = req.member_epoch == -1;
                match g.heartbeat(req, &v, &visible, settings(), now) {
                    Ok(r) if leaving => {
                        assert_eq!(r.member_epoch, -1);
                        clients.remove(id);
                    }
                    Ok(r) => {
                        let held = clients.get(id).map(|c| c.1.clone()).unwrap_or_default();
                        clients.insert(id, (r.member_epoch, r.assignment.unwrap_or(held)));
                    }
                    Err(_) => {
                        clients.remove(id);
                    }
                }
                g.poll(now);
                // One the coordinator dropped (session or rebalance timeout) is fenced: it
                // learns so at its next heartbeat and may commit nothing meanwhile.
                clients.retain(|id, _| g.members.contains_key(*id));
                assert_held_once(seed, &g, clients.values().map(|(_, a)| a));
            }
            // Everyone heartbeats a few times with what it was told: all partitions held.
            for _ in 0..4 {
                for id in ids {
                    if let Some((epoch, held)) = clients.get(id).cloned() {
                        let r = g
                            .heartbeat(beat(id, epoch, &held), &v, &visible, settings(), now)
                            .unwrap();
                        clients.insert(id, (r.member_epoch, r.assignment.unwrap_or(held)));
                    }
                }
            }
            if !clients.is_empty() {
                let total: usize = clients.values().map(|(_, a)| pairs(a).count()).sum();
                assert_eq!(total, 7, "seed {seed}: every partition is held");
            }
        }
    }

    /// A classic JoinGroup for `g` from `id` subscribing to t, saying it owns `owned`
    /// (ConsumerProtocolSubscription v1).
    fn classic_join_req(id: &str, owned: &Assignment) -> JoinRequest {
        let metadata =
            crate::groups::tests::subscription_owning(owned.get(&T).into_iter().flatten().copied());
        JoinRequest {
            group_id: "g".into(),
            member_id: id.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: vec![super::super::types::JoinProtocol {
                name: "cooperative-sticky".into(),
                metadata,
            }],
            require_known_member_id: false,
            supports_skip_assignment: false,
            reason: None,
        }
    }

    /// The partitions of t a classic assignment gives.
    fn classic_held(assignment: &[u8]) -> Assignment {
        let mut a = Assignment::new();
        for (name, ps) in read_assignment(assignment).unwrap() {
            assert_eq!(name, "t");
            for p in ps {
                insert(&mut a, T, p);
            }
        }
        a
    }

    /// Where a classic client is in its protocol, and what it holds meanwhile.
    #[derive(Clone, Debug)]
    enum Classic {
        /// Joined at a generation, its SyncGroup still to come.
        Joined(i32, Assignment),
        /// Synced at a generation.
        Synced(i32, Assignment),
        /// Told to join again.
        Rejoin(Assignment),
    }

    impl Classic {
        fn held(&self) -> &Assignment {
            match self {
                Classic::Joined(_, a) | Classic::Synced(_, a) | Classic::Rejoin(a) => a,
            }
        }
    }

    /// The same promise with classic members hosted beside the consumer protocol's, each
    /// request a step of its own: c gives everything up before it joins (eager), d keeps what
    /// it holds through its join and gives up what its SyncGroup leaves out (cooperative). No
    /// partition is ever held by two clients, and once all settle, every partition is held.
    #[test]
    fn no_partition_is_held_twice_with_classic_members_hosted() {
        use super::super::types::{HeartbeatRequest, LeavingMember, SyncRequest};
        let v = view(7);
        let ids = ["a", "b", "c", "d"];
        let eager = |id: &str| id == "c";
        // One step of classic client `id`: its next request, and where that leaves it.
        let classic_step = |g: &mut ConsumerGroup, id: &str, state: Option<Classic>, now| {
            let rejoin = |g: &mut ConsumerGroup, held: Assignment| {
                let held = if eager(id) { Assignment::new() } else { held };
                let req = classic_join_req(id, &held);
                match g.classic_join(&req, id.into(), &v, settings(), now) {
                    Ok(j) => Some(Classic::Joined(j.generation_id, held)),
                    Err(_) => None,
                }
            };
            match state {
                None => rejoin(g, Assignment::new()),
                Some(Classic::Rejoin(held)) => rejoin(g, held),
                Some(Classic::Joined(generation, held)) => {
                    let sync = SyncRequest {
                        group_id: "g".into(),
                        generation_id: generation,
                        member_id: id.into(),
                        group_instance_id: None,
                        protocol_type: Some("consumer".into()),
                        protocol_name: Some("cooperative-sticky".into()),
                        assignments: Vec::new(),
                    };
                    match g.classic_sync(&sync, now) {
                        Ok(s) => Some(Classic::Synced(generation, classic_held(&s.assignment))),
                        Err(GroupError::RebalanceInProgress) => Some(Classic::Rejoin(held)),
                        Err(_) => None,
                    }
                }
                Some(Classic::Synced(generation, held)) => {
                    let beat = HeartbeatRequest {
                        group_id: "g".into(),
                        generation_id: generation,
                        member_id: id.into(),
                        group_instance_id: None,
                    };
                    match g.classic_heartbeat(&beat, now) {
                        Ok(()) => Some(Classic::Synced(generation, held)),
                        Err(GroupError::RebalanceInProgress) => {
                            // An eager client gives everything up when told.
                            let held = if eager(id) { Assignment::new() } else { held };
                            Some(Classic::Rejoin(held))
                        }
                        Err(_) => None,
                    }
                }
            }
        };
        for seed in 0..300u64 {
            let mut next = numbers(seed);
            let mut g = ConsumerGroup::new("g".into());
            let mut now = Instant::now();
            let mut members: HashMap<&str, (i32, Assignment)> = HashMap::new();
            let mut classics: HashMap<&str, Classic> = HashMap::new();
            for _ in 0..400 {
                let id = ids[next(4) as usize];
                now += Duration::from_millis(next(400));
                if id == "c" || id == "d" {
                    if classics.contains_key(id) && next(15) == 0 {
                        let leaving = LeavingMember {
                            member_id: id.into(),
                            group_instance_id: None,
                            reason: None,
                        };
                        g.classic_leave(&leaving).unwrap();
                        classics.remove(id);
                    } else {
                        let state = classics.remove(id);
                        if let Some(after) = classic_step(&mut g, id, state, now) {
                            classics.insert(id, after);
                        }
                    }
                } else {
                    let req = match members.get(id) {
                        None => join(id, &["t"]),
                        Some(_) if next(10) == 0 => beat(id, -1, &Assignment::new()),
                        Some((epoch, held)) => beat(id, *epoch, held),
                    };
                    let leaving = req.member_epoch == -1;
                    match g.heartbeat(req, &v, &visible, settings(), now) {
                        Ok(_) if leaving => {
                            members.remove(id);
                        }
                        Ok(r) => {
                            let held = members.get(id).map(|c| c.1.clone()).unwrap_or_default();
                            members.insert(id, (r.member_epoch, r.assignment.unwrap_or(held)));
                        }
                        Err(_) => {
                            members.remove(id);
                        }
                    }
                }
                g.poll(now);
                members.retain(|id, _| g.members.contains_key(*id));
                classics.retain(|id, _| g.members.contains_key(*id));
                let clients = members.values().map(|(_, a)| a);
                assert_held_once(
                    seed,
                    &g,
                    clients.chain(classics.values().map(Classic::held)),
                );
            }
            // Everyone goes on as its protocol says, a few rounds: all partitions held.
            for _ in 0..8 {
                for id in ids {
                    if let Some(state) = classics.remove(id) {
                        let after = classic_step(&mut g, id, Some(state), now).unwrap();
                        classics.insert(id, after);
                    } else if let Some((epoch, held)) = members.get(id).cloned() {
                        let r = g
                            .heartbeat(beat(id, epoch, &held), &v, &visible, settings(), now)
                            .unwrap();
                        members.insert(id, (r.member_epoch, r.assignment.unwrap_or(held)));
                    }
                }
            }
            if !members.is_empty() || !classics.is_empty() {
                let total: usize = members
                    .values()
                    .map(|(_, a)| pairs(a).count())
                    .sum::<usize>()
                    + classics
                        .values()
                        .map(|c| pairs(c.held()).count())
                        .sum::<usize>();
                assert_eq!(
                    total, 7,
                    "seed {seed}: every partition is held: {members:?} {classics:?}"
                );
            }
        }
    }
}
