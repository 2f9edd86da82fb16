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
use tracing::info;
use uuid::Uuid;

use super::error::GroupError;
use super::types::GroupState;

/// Partitions by topic id, as ConsumerGroupHeartbeat carries them.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The topics a group may subscribe to: name -> (id, partition count).
pub type TopicView = BTreeMap<String, (Uuid, i32)>;

/// The assignors the coordinator has (`group.remote.assignor`); the first is the default.
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// How long a member may take to revoke partitions when its heartbeat did not say
/// (`rebalance_timeout_ms` -1 on its first heartbeat): Kafka's `max.poll.interval.ms` default.
const DEFAULT_REBALANCE_TIMEOUT: Duration = Duration::from_secs(300);

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberState {
    /// It holds its target (at the assignment epoch).
    Stable,
    /// It must revoke partitions before it moves on; its epoch waits.
    UnrevokedPartitions,
    /// It is at the assignment epoch but waits for partitions others still hold.
    UnreleasedPartitions,
}

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
    assignor: Option<String>,
    assigned: Assignment,
    pending_revocation: Assignment,
    /// When it was told to revoke what `pending_revocation` holds.
    revoking_since: Option<Instant>,
    session_deadline: Instant,
    /// The assignment the member was last sent.
    last_sent: Option<Assignment>,
}

impl Member {
    fn subscribes(&self, topic: &str) -> bool {
        self.topic_names.contains(topic)
            || self
                .regex
                .as_ref()
                .is_some_and(|(_, re)| !topic.starts_with("__") && re.is_match(topic))
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
    /// 0 stable, 1 revoking, 2 waiting for partitions others hold.
    state: u8,
    rebalance_timeout_ms: u64,
    topic_names: Vec<String>,
    regex: Option<String>,
    assignor: Option<String>,
    assigned: Vec<(String, Vec<i32>)>,
    pending_revocation: Vec<(String, Vec<i32>)>,
    target: Vec<(String, Vec<i32>)>,
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
/// whole topic names.
fn compile(pattern: &str) -> Result<regex::Regex, GroupError> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        GroupError::InvalidRequest(format!("invalid SubscribedTopicRegex {pattern:?}: {e}"))
    })
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

    /// Marks the group to be saved again (its last save failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The bytes the store keeps for the group; `None` when it has no members (nothing to keep).
    pub fn save(&self) -> Option<Vec<u8>> {
        if self.members.is_empty() {
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
                    state: match m.state {
                        MemberState::Stable => 0,
                        MemberState::UnrevokedPartitions => 1,
                        MemberState::UnreleasedPartitions => 2,
                    },
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    topic_names: m.topic_names.iter().cloned().collect(),
                    regex: m.regex.as_ref().map(|(p, _)| p.clone()),
                    assignor: m.assignor.clone(),
                    assigned: save_assignment(&m.assigned),
                    pending_revocation: save_assignment(&m.pending_revocation),
                    target: save_assignment(&self.target.get(id).cloned().unwrap_or_default()),
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
            let state = match m.state {
                0 => MemberState::Stable,
                1 => MemberState::UnrevokedPartitions,
                _ => MemberState::UnreleasedPartitions,
            };
            let regex = match m.regex {
                Some(p) => Some((p.clone(), compile(&p).ok()?)),
                None => None,
            };
            group
                .target
                .insert(m.id.clone(), restore_assignment(m.target)?);
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
                    assignor: m.assignor,
                    assigned: restore_assignment(m.assigned)?,
                    pending_revocation: restore_assignment(m.pending_revocation)?,
                    revoking_since: (state == MemberState::UnrevokedPartitions).then_some(now),
                    session_deadline: now + settings.session_timeout,
                    last_sent: None,
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
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        }
    }

    /// The topics the members subscribe to (OffsetDelete refuses their offsets).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.metadata.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Handles one heartbeat. `view` is every topic now; `settings` the coordinator's.
    pub fn heartbeat(
        &mut self,
        mut req: ConsumerHeartbeat,
        view: &TopicView,
        settings: ConsumerSettings,
        now: Instant,
    ) -> Result<ConsumerHeartbeatReply, GroupError> {
        if let Some(owned) = &mut req.owned {
            owned.retain(|_, partitions| !partitions.is_empty());
        }
        if let Some(assignor) = &req.server_assignor
            && !assignor.is_empty()
            && !ASSIGNORS.contains(&assignor.as_str())
        {
            return Err(GroupError::UnsupportedAssignor(assignor.clone()));
        }
        let regex = match req.subscribed_topic_regex.as_deref() {
            Some(p) if !p.is_empty() => {
                // Compiled once per member and pattern, not on every heartbeat that repeats it.
                let known = self
                    .members
                    .get(&req.member_id)
                    .and_then(|m| m.regex.clone())
                    .filter(|(q, _)| q == p);
                Some(Some(match known {
                    Some(compiled) => compiled,
                    None => (p.to_string(), compile(p)?),
                }))
            }
            Some(_) => Some(None),
            None => None,
        };
        // Whether the group epoch moves: a member joins, a subscription or the assignor changes,
        // the subscribed topics change. Once per heartbeat, as in Kafka.
        let mut changed = false;
        let member_id = match req.member_epoch {
            -2 | -1 => return self.leave(&req, now),
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
                let before = member.regex.as_ref().map(|(p, _)| p.clone());
                changed |= before != regex.as_ref().map(|(p, _)| p.clone());
                member.regex = regex;
            }
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

    /// A member's first heartbeat (epoch 0), or a member that lost its state joining again
    /// with its id: it keeps what it was given and is sent all of it.
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
        if let Some(member) = self.members.get_mut(&id) {
            member.last_sent = None;
            return Ok((id, false));
        }
        if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
            return Err(GroupError::InvalidRequest(
                "a member's first heartbeat must name its subscription \
                 (SubscribedTopicNames or SubscribedTopicRegex)"
                    .to_string(),
            ));
        }
        if let Some(instance) = &req.instance_id
            && let Some((other, _)) = self
                .members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
        {
            let other = other.clone();
            // A static member coming back: it replaces its old self only once that one left.
            return Err(GroupError::UnreleasedInstanceId {
                instance_id: instance.clone(),
                member_id: other,
            });
        }
        info!(group = %self.group_id, member = %id, client = %req.client_id, "member joins (consumer protocol)");
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
                rebalance_timeout: if req.rebalance_timeout_ms >= 0 {
                    Duration::from_millis(req.rebalance_timeout_ms as u64)
                } else {
                    DEFAULT_REBALANCE_TIMEOUT
                },
                topic_names: BTreeSet::new(),
                regex: None,
                assignor: None,
                assigned: Assignment::new(),
                pending_revocation: Assignment::new(),
                revoking_since: None,
                session_deadline: now,
                last_sent: None,
            },
        );
        Ok((id, true))
    }

    fn leave(
        &mut self,
        req: &ConsumerHeartbeat,
        now: Instant,
    ) -> Result<ConsumerHeartbeatReply, GroupError> {
        if !self.members.contains_key(&req.member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        info!(group = %self.group_id, member = %req.member_id, "member leaves (consumer protocol)");
        self.remove(&req.member_id, now);
        Ok(ConsumerHeartbeatReply {
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    fn remove(&mut self, member_id: &str, _now: Instant) {
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
                } else if m
                    .revoking_since
                    .is_some_and(|since| now >= since + m.rebalance_timeout)
                {
                    Some((
                        id.clone(),
                        "did not revoke its partitions within its rebalance timeout",
                    ))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in &gone {
            info!(group = %self.group_id, member = %id, reason, "member removed (consumer protocol)");
            self.remove(id, now);
        }
        !gone.is_empty()
    }

    /// Recomputes the target when the group epoch moved or the subscribed topics changed (a
    /// topic created, deleted or given more partitions).
    fn refresh(&mut self, view: &TopicView, mut changed: bool) {
        let metadata: Vec<(String, Uuid, i32)> = view
            .iter()
            .filter(|(name, _)| self.members.values().any(|m| m.subscribes(name)))
            .map(|(name, (id, n))| (name.clone(), *id, *n))
            .collect();
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
        // Uniform: balanced, and sticky (a member keeps what its previous target gave it, up to
        // its share), then every partition left goes to the subscriber holding fewest.
        let all: Vec<(String, Uuid, i32)> = self
            .metadata
            .iter()
            .flat_map(|(name, id, n)| (0..*n).map(move |p| (name.clone(), *id, p)))
            .collect();
        let eligible = self
            .members
            .values()
            .filter(|m| self.metadata.iter().any(|(n, _, _)| m.subscribes(n)))
            .count()
            .max(1);
        let base = all.len() / eligible;
        let mut extra = all.len() % eligible;
        let valid = |member: &Member, t: Uuid, p: i32| {
            self.metadata
                .iter()
                .any(|(name, id, n)| *id == t && p < *n && member.subscribes(name))
        };
        let mut keepers: Vec<(&String, Assignment)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let previous = self.target.get(id).cloned().unwrap_or_default();
                (id, filter(&previous, |t, p| valid(m, t, p)))
            })
            .collect();
        keepers.sort_by_key(|(id, kept)| (std::cmp::Reverse(pairs(kept).count()), (*id).clone()));
        let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
        for (id, kept) in keepers {
            let cap = base + usize::from(extra > 0);
            let a = target.get_mut(id).expect("every member has an entry");
            for (t, p) in pairs(&kept).take(cap) {
                if taken.insert((t, p)) {
                    insert(a, t, p);
                }
            }
            if pairs(a).count() > base && extra > 0 {
                extra -= 1;
            }
        }
        for (name, t, p) in all {
            if taken.contains(&(t, p)) {
                continue;
            }
            let fewest = self
                .members
                .iter()
                .filter(|(_, m)| m.subscribes(&name))
                .map(|(id, _)| id)
                .min_by_key(|id| (pairs(&target[*id]).count(), (*id).clone()));
            if let Some(id) = fewest {
                let id = id.clone();
                insert(target.get_mut(&id).expect("member"), t, p);
            }
        }
        target
    }

    /// Moves `member_id` towards its target (Kafka's `CurrentAssignmentBuilder`).
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: Instant) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let Some(member) = self.members.get(member_id) else {
            return;
        };
        match member.state {
            MemberState::UnrevokedPartitions => {
                let revoked = owned.is_some_and(|o| {
                    pairs(&member.pending_revocation).all(|(t, p)| !contains(o, t, p))
                });
                if !revoked {
                    return;
                }
            }
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
        if !revoke.is_empty() {
            member.assigned = filter(&member.assigned, |t, p| contains(&target, t, p));
            member.pending_revocation = revoke;
            member.revoking_since = Some(now);
            member.state = MemberState::UnrevokedPartitions;
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
        member.assigned = assigned;
    }

    /// Checks an OffsetCommit's member and epoch (Kafka's rules for these groups): a request
    /// without a member commits only to a group without members; a member commits at its epoch,
    /// or at an older one for partitions it still holds. `partitions` by topic name.
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
        let holds = |name: &str, p: i32| {
            self.metadata
                .iter()
                .any(|(n, id, _)| n == name && contains(&member.assigned, *id, p))
        };
        if epoch < member.epoch && partitions.iter().all(|(n, p)| holds(n, *p)) {
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
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let name_of = |id: &Uuid| {
            self.metadata
                .iter()
                .find(|(_, t, _)| t == id)
                .map(|(n, _, _)| n.clone())
        };
        // Version 0 of both, after the 2-byte version the classic protocol puts first.
        fn encode<M: Encodable>(m: &M) -> bytes::Bytes {
            let mut buf = bytes::BytesMut::new();
            buf.extend_from_slice(&0i16.to_be_bytes());
            match m.encode(&mut buf, 0) {
                Ok(()) => buf.freeze(),
                Err(_) => bytes::Bytes::new(),
            }
        }
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
                let assigned: Vec<TopicPartition> = m
                    .assigned
                    .iter()
                    .filter_map(|(t, ps)| {
                        Some(
                            TopicPartition::default()
                                .with_topic(StrBytes::from_string(name_of(t)?).into())
                                .with_partitions(ps.iter().copied().collect()),
                        )
                    })
                    .collect();
                let assignment =
                    ConsumerProtocolAssignment::default().with_assigned_partitions(assigned);
                super::DescribedMember {
                    member_id: id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: encode(&subscription),
                    assignment: encode(&assignment),
                }
            })
            .collect();
        (self.assignor().to_string(), members)
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
                })
                .collect(),
        }
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
        let a = g.heartbeat(join("a", &["t"]), &v, settings(), now).unwrap();
        assert_eq!(a.member_epoch, 1);
        let a_owned = a.assignment.clone().unwrap();
        assert_eq!(parts(&a_owned, T), vec![0, 1, 2, 3]);

        // b joins: the target splits the partitions, but a still holds them all.
        let b = g.heartbeat(join("b", &["t"]), &v, settings(), now).unwrap();
        assert_eq!(b.member_epoch, 2);
        assert_eq!(b.assignment, Some(Assignment::new()), "nothing is free yet");
        assert_eq!(g.state(), GroupState::Reconciling);

        // a is told to give two up, at its old epoch.
        let a2 = g
            .heartbeat(beat("a", 1, &a_owned), &v, settings(), now)
            .unwrap();
        assert_eq!(a2.member_epoch, 1);
        let kept = a2.assignment.clone().unwrap();
        assert_eq!(parts(&kept, T).len(), 2);
        // b still gets nothing while a has not confirmed.
        let b2 = g
            .heartbeat(beat("b", 2, &Assignment::new()), &v, settings(), now)
            .unwrap();
        assert_eq!(b2.assignment, None);
        // a confirms (it owns only what it kept): it reaches epoch 2, and b gets the rest.
        let a3 = g
            .heartbeat(beat("a", 1, &kept), &v, settings(), now)
            .unwrap();
        assert_eq!(a3.member_epoch, 2);
        let b3 = g
            .heartbeat(beat("b", 2, &Assignment::new()), &v, settings(), now)
            .unwrap();
        let b_owned = b3.assignment.unwrap();
        let mut all: Vec<i32> = parts(&kept, T);
        all.extend(parts(&b_owned, T));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert_eq!(parts(&b_owned, T).len(), 2);
        g.heartbeat(beat("b", 2, &b_owned), &v, settings(), now)
            .unwrap();
        assert_eq!(g.state(), GroupState::Stable);
    }

    #[test]
    fn epochs_are_checked_and_leaving_frees_partitions() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        let a = g.heartbeat(join("a", &["t"]), &v, settings(), now).unwrap();
        let err = g
            .heartbeat(beat("a", 7, &Assignment::new()), &v, settings(), now)
            .unwrap_err();
        assert_eq!(err.kafka_code(), 110, "{err}");
        let err = g
            .heartbeat(beat("nobody", 1, &Assignment::new()), &v, settings(), now)
            .unwrap_err();
        assert_eq!(err.kafka_code(), 25);
        let b = g.heartbeat(join("b", &["t"]), &v, settings(), now).unwrap();
        assert_eq!(b.assignment, Some(Assignment::new()));
        let owned = a.assignment.unwrap();
        let leave = g
            .heartbeat(beat("a", -1, &owned), &v, settings(), now)
            .unwrap();
        assert_eq!(leave.member_epoch, -1);
        let b2 = g
            .heartbeat(beat("b", 2, &Assignment::new()), &v, settings(), now)
            .unwrap();
        assert_eq!(parts(&b2.assignment.unwrap(), T), vec![0, 1]);
        assert!(b2.member_epoch > 2);
    }

    #[test]
    fn a_silent_member_expires_and_one_that_does_not_revoke_is_removed() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(2);
        let a = g.heartbeat(join("a", &["t"]), &v, settings(), now).unwrap();
        let owned = a.assignment.unwrap();
        g.heartbeat(join("b", &["t"]), &v, settings(), now).unwrap();
        // a is asked to revoke one partition and never does: after its rebalance timeout (5 s)
        // it is removed, although it still heartbeats.
        g.heartbeat(beat("a", 1, &owned), &v, settings(), now)
            .unwrap();
        let later = now + Duration::from_secs(4);
        g.heartbeat(beat("a", 1, &owned), &v, settings(), later)
            .unwrap();
        g.heartbeat(beat("b", 2, &Assignment::new()), &v, settings(), later)
            .unwrap();
        assert!(!g.poll(later));
        assert!(g.poll(now + Duration::from_secs(6)));
        assert_eq!(g.members_len(), 1);
        let b = g
            .heartbeat(
                beat("b", 2, &Assignment::new()),
                &v,
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
        g.heartbeat(req, &v, settings(), now).unwrap();
        let mut req = join("b", &["t", "u"]);
        req.server_assignor = Some("range".into());
        g.heartbeat(req, &v, settings(), now).unwrap();
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
                settings(),
                now,
            )
            .unwrap_err();
        assert_eq!(err.kafka_code(), 112);
    }

    #[test]
    fn uniform_is_sticky_and_balanced_and_follows_new_partitions() {
        let mut g = ConsumerGroup::new("g".into());
        let now = Instant::now();
        let v = view(6);
        for id in ["a", "b", "c"] {
            g.heartbeat(join(id, &["t"]), &v, settings(), now).unwrap();
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
        let a = g.heartbeat(req, &v, settings(), now).unwrap();
        let got = a.assignment.unwrap();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![T, U]);
        let bad = ConsumerHeartbeat {
            subscribed_topic_names: None,
            subscribed_topic_regex: Some("(".into()),
            ..join("b", &[])
        };
        let err = g.heartbeat(bad, &v, settings(), now).unwrap_err();
        assert_eq!(err.kafka_code(), 42);
        assert!(
            err.to_string().contains("invalid SubscribedTopicRegex"),
            "{err}"
        );
        let none = ConsumerHeartbeat {
            subscribed_topic_names: None,
            ..join("c", &[])
        };
        assert_eq!(
            g.heartbeat(none, &v, settings(), now)
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
        let a = g.heartbeat(join("a", &["t"]), &v, settings(), now).unwrap();
        assert_eq!(g.check_commit("", -1, &[]).unwrap_err().kafka_code(), 25);
        assert_eq!(g.check_commit("x", 1, &[]).unwrap_err().kafka_code(), 25);
        assert!(g.check_commit("a", 1, &[("t".into(), 0)]).is_ok());
        // b joins and a keeps partition 0 or 1 only; its epoch moves to 2 once it revoked.
        g.heartbeat(join("b", &["t"]), &v, settings(), now).unwrap();
        let kept = g
            .heartbeat(beat("a", 1, &a.assignment.unwrap()), &v, settings(), now)
            .unwrap()
            .assignment
            .unwrap();
        g.heartbeat(beat("a", 1, &kept), &v, settings(), now)
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
}
