//! One group's state machine (Kafka's classic protocol), with no locks, no I/O and no clock:
//! every method takes `now`.
//!
//! States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable, back to
//! PreparingRebalance on any membership change, and to Empty when the last member goes.
//!
//! Invariants:
//! - `rebalance` is `Some` exactly while the state is PreparingRebalance.
//! - A member's `awaiting_join` sender is held only while PreparingRebalance (answered at
//!   completion); `awaiting_sync` only while CompletingRebalance (answered by the leader's sync or
//!   with an error when a new rebalance starts). Senders are always answered or dropped with the
//!   member; a waiter whose client went away is simply a failed send.
//! - `static_members` maps each instance id to the member id of a member in `members`.
//! - `leader` is `Some` iff `members` is non-empty.
//!
//! Timers are deadlines checked by [`Group::poll`], which the coordinator calls before and after
//! every operation on the group and on every tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info};

use super::consumer::ConsumerGroup;
use super::error::GroupError;
use super::offsets::{CommittedOffset, MemberRecord, Membership};
use super::types::*;
use crate::log_budget::client_text;

/// How long a brand-new member may wait in a JoinGroup before it is dropped (Kafka's
/// `NewMemberJoinTimeoutMs`): its session timer cannot run yet, and a client that gave up and
/// retried must not leave a defunct member behind forever.
pub(crate) const NEW_MEMBER_JOIN_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) type JoinSender = oneshot::Sender<Result<JoinResponse, GroupError>>;
pub(crate) type SyncSender = oneshot::Sender<Result<SyncResponse, GroupError>>;

/// What a join or sync call gets from the state machine: an answer now, or a channel to await
/// outside the coordinator lock.
pub(crate) enum Outcome<T> {
    Now(Result<T, GroupError>),
    Wait(oneshot::Receiver<Result<T, GroupError>>),
}

pub(crate) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<JoinProtocol>,
    pub assignment: Bytes,
    pub awaiting_join: Option<JoinSender>,
    pub awaiting_sync: Option<SyncSender>,
    /// Joined but not yet through a completed rebalance: expires on `session_deadline` even while
    /// waiting in JoinGroup (set to NEW_MEMBER_JOIN_TIMEOUT).
    pub is_new: bool,
    pub session_deadline: Instant,
}

impl Member {
    /// The topics this member subscribes to, from its metadata for `protocol` in the consumer
    /// protocol (`ConsumerProtocolSubscription`); `None` if it cannot be read.
    fn subscription(&self, protocol: &str) -> Option<Vec<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        let mut metadata = self
            .protocols
            .iter()
            .find(|p| p.name == protocol)?
            .metadata
            .clone();
        if metadata.len() < 2 {
            return None;
        }
        let version = i16::from_be_bytes([metadata[0], metadata[1]]);
        let _ = bytes::Buf::get_i16(&mut metadata);
        let sub = ConsumerProtocolSubscription::decode(&mut metadata, version.clamp(0, 3)).ok()?;
        Some(sub.topics.iter().map(|t| t.to_string()).collect())
    }

    fn matches(&self, protocols: &[JoinProtocol]) -> bool {
        self.protocols == protocols
    }

    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    /// Members waiting in a join or sync satisfy the heartbeat requirement, except new ones.
    fn expired(&self, now: Instant) -> bool {
        if now < self.session_deadline {
            return false;
        }
        self.is_new || (self.awaiting_join.is_none() && self.awaiting_sync.is_none())
    }

    fn touch(&mut self, now: Instant) {
        self.session_deadline = now + self.session_timeout;
    }

    fn answer_join(&mut self, result: Result<JoinResponse, GroupError>, now: Instant) {
        if let Some(tx) = self.awaiting_join.take() {
            let _ = tx.send(result);
            self.touch(now);
        }
    }

    fn answer_sync(&mut self, result: Result<SyncResponse, GroupError>, now: Instant) {
        if let Some(tx) = self.awaiting_sync.take() {
            let _ = tx.send(result);
            self.touch(now);
        }
    }
}

struct Rebalance {
    deadline: Instant,
    /// Set for a rebalance that started from Empty: Kafka's delayed initial rebalance.
    initial: Option<InitialDelay>,
}

struct InitialDelay {
    /// How much of the rebalance timeout is left for further extensions.
    remaining: Duration,
    /// A new member joined during the current delay: extend once more.
    new_member_added: bool,
}

pub(crate) struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    /// In join order; the order decides leader re-election and protocol vote ties.
    pub members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their expiry.
    pending_members: HashMap<String, Instant>,
    static_members: HashMap<String, String>,
    rebalance: Option<Rebalance>,
    /// Members that must send SyncGroup before `sync_deadline`.
    pending_sync: HashSet<String>,
    sync_deadline: Option<Instant>,
    initial_rebalance_delay: Duration,
    pub offsets: BTreeMap<String, BTreeMap<i32, CommittedOffset>>,
    /// When the group last became Empty (or was created).
    pub empty_since: Instant,
    /// Last offset commit (or load); offsets retention counts from the later of the two.
    pub last_commit: Instant,
    /// The membership of the last completed rebalance (none once the group emptied), kept
    /// for the store: a restart resumes from it.
    last_completed: Option<Membership>,
    /// `last_completed` changed since it was last saved.
    membership_changed: bool,
    /// Members of the consumer protocol (KIP-848); none in a classic group.
    pub consumer: ConsumerGroup,
}

impl Group {
    /// The topics the members subscribe to, as Kafka reads them for OffsetDelete: none for a
    /// group without members or not of the consumer protocol; `None` when a member's
    /// subscription cannot be read (then every topic counts as subscribed).
    pub(crate) fn subscribed_topics(&self) -> Option<std::collections::HashSet<String>> {
        let mut topics = std::collections::HashSet::new();
        if self.uses_consumer_protocol() {
            return Some(self.consumer.subscribed_topics().into_iter().collect());
        }
        if self.members.is_empty() || self.protocol_type.as_deref() != Some("consumer") {
            return Some(topics);
        }
        let protocol = self.protocol_name.as_deref()?;
        for m in &self.members {
            topics.extend(m.subscription(protocol)?);
        }
        Some(topics)
    }

    /// Drops the committed offsets of `partitions` (already removed from the store).
    pub(crate) fn forget_offsets(&mut self, partitions: &[(String, i32)]) {
        for (topic, partition) in partitions {
            if let Some(parts) = self.offsets.get_mut(topic) {
                parts.remove(partition);
                if parts.is_empty() {
                    self.offsets.remove(topic);
                }
            }
        }
    }

    pub fn new(id: String, initial_rebalance_delay: Duration, now: Instant) -> Self {
        let id_for_consumer = id.clone();
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
            pending_members: HashMap::new(),
            static_members: HashMap::new(),
            rebalance: None,
            pending_sync: HashSet::new(),
            sync_deadline: None,
            initial_rebalance_delay,
            offsets: BTreeMap::new(),
            empty_since: now,
            last_commit: now,
            last_completed: None,
            membership_changed: false,
            consumer: ConsumerGroup::new(id_for_consumer),
        }
    }

    /// Whether the membership to save has changed since [`Group::take_membership_change`].
    pub fn membership_changed(&self) -> bool {
        self.membership_changed
    }

    /// The membership to save if it changed since the last call: that of the last completed
    /// rebalance (with no member once the group emptied: its protocol type and generation
    /// stay, as Kafka keeps them), or `Some(None)` when there is none to keep.
    pub fn take_membership_change(&mut self) -> Option<Option<Membership>> {
        std::mem::take(&mut self.membership_changed).then(|| self.last_completed.clone())
    }

    /// Asks for the membership to be saved again (the last write failed).
    pub fn mark_membership_unsaved(&mut self) {
        self.membership_changed = true;
    }

    /// The group as it is now, for the store.
    fn snapshot(&self) -> Membership {
        let protocol_name = self.protocol_name.clone().unwrap_or_default();
        Membership {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            leader: self.leader.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|m| MemberRecord {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u32,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u32,
                    metadata: m.metadata_for(&protocol_name),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            protocol_name,
        }
    }

    /// Takes up a membership saved before a restart: the group is Stable with those members,
    /// each with a fresh session (a member that does not come back within its session timeout
    /// is removed, as usual).
    pub fn restore(&mut self, saved: Membership, now: Instant) {
        if saved.members.is_empty() {
            // An emptied group: what ListGroups and DescribeGroups show of it, and the
            // generation a next rebalance counts on from.
            self.generation = saved.generation;
            self.protocol_type = Some(saved.protocol_type.clone()).filter(|t| !t.is_empty());
            self.last_completed = Some(saved);
            return;
        }
        let kept = saved.clone();
        self.generation = saved.generation;
        self.protocol_type = Some(saved.protocol_type);
        self.leader = Some(saved.leader);
        self.static_members = saved
            .members
            .iter()
            .filter_map(|m| Some((m.instance_id.clone()?, m.member_id.clone())))
            .collect();
        self.members = saved
            .members
            .into_iter()
            .map(|m| {
                let session_timeout = Duration::from_millis(m.session_timeout_ms as u64);
                Member {
                    id: m.member_id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms as u64),
                    protocols: vec![JoinProtocol {
                        name: saved.protocol_name.clone(),
                        metadata: m.metadata,
                    }],
                    assignment: m.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    is_new: false,
                    session_deadline: now + session_timeout,
                }
            })
            .collect();
        self.protocol_name = Some(saved.protocol_name);
        self.last_completed = Some(kept);
        self.state = GroupState::Stable;
        info!(group = %client_text(&self.id), generation = self.generation, members = self.members.len(),
            "group membership restored");
        if self.leader.as_deref() == Some("") {
            // Saved when the group came back from the consumer protocol, before its members
            // joined again (`take_back_classic_members`): the rebalance is still to be made.
            self.leader = None;
            self.prepare_rebalance(now);
        }
    }

    fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    fn has(&self, id: &str) -> bool {
        self.member(id).is_some()
    }

    fn is_leader(&self, id: &str) -> bool {
        self.leader.as_deref() == Some(id)
    }

    /// True when `member_id` claims an instance id that belongs to another member id.
    fn is_fenced(&self, instance_id: Option<&str>, member_id: &str) -> bool {
        instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|owner| owner != member_id)
    }

    /// True when nothing is left: the coordinator may forget the group.
    pub fn is_idle_and_empty(&self) -> bool {
        self.state == GroupState::Empty
            && self.consumer.is_empty()
            && self.offsets.is_empty()
            && self.pending_members.is_empty()
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[JoinProtocol]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|p| {
                self.members
                    .iter()
                    .all(|m| m.protocols.iter().any(|q| q.name == p.name))
            })
    }

    fn transition(&mut self, to: GroupState, now: Instant) {
        debug!(group = %client_text(&self.id), from = self.state.as_str(), to = to.as_str(), "group state");
        if to == GroupState::Empty {
            self.empty_since = now;
        }
        // A completed rebalance is saved; so is a group left without members (its saved
        // membership goes). Rebalances in progress are not: a restart resumes from the last
        // completed one, whose members then rejoin.
        if to == GroupState::Stable {
            self.last_completed = Some(self.snapshot());
            self.membership_changed = true;
        } else if to != self.state && to == GroupState::Empty {
            // Kept without members: the protocol type and generation of an empty group
            // survive a restart, as Kafka's group record keeps them.
            self.last_completed = self.protocol_type.clone().map(|protocol_type| Membership {
                generation: self.generation,
                protocol_type,
                protocol_name: String::new(),
                leader: String::new(),
                members: Vec::new(),
            });
            self.membership_changed = true;
        } else if to != self.state && to == GroupState::Dead {
            self.last_completed = None;
            self.membership_changed = true;
        }
        self.state = to;
    }

    // ---- JoinGroup -------------------------------------------------------------------------

    /// Handles a validated JoinGroup (group id and session timeout already checked).
    pub fn join(
        &mut self,
        req: JoinRequest,
        member_id_prefix_uuid: String,
        now: Instant,
    ) -> Outcome<JoinResponse> {
        if self.state == GroupState::Dead {
            return Outcome::Now(Err(GroupError::CoordinatorNotAvailable));
        }
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            return Outcome::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        if req.member_id.is_empty() {
            self.join_new_member(req, member_id_prefix_uuid, now)
        } else {
            self.join_known_member(req, now)
        }
    }

    fn join_new_member(
        &mut self,
        req: JoinRequest,
        uuid: String,
        now: Instant,
    ) -> Outcome<JoinResponse> {
        let prefix = req.group_instance_id.as_deref().unwrap_or(&req.client_id);
        let new_id = format!("{prefix}-{uuid}");
        if let Some(instance) = req.group_instance_id.clone() {
            return match self.static_members.get(&instance).cloned() {
                Some(old_id) => self.replace_static_member(req, old_id, new_id, now),
                None => self.add_member_and_rebalance(req, new_id, now),
            };
        }
        if req.require_known_member_id {
            let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
            self.pending_members.insert(new_id.clone(), now + session);
            debug!(group = %client_text(&self.id), member = %client_text(&new_id), "member id required");
            return Outcome::Now(Err(GroupError::MemberIdRequired { member_id: new_id }));
        }
        self.add_member_and_rebalance(req, new_id, now)
    }

    fn join_known_member(&mut self, req: JoinRequest, now: Instant) -> Outcome<JoinResponse> {
        if self.pending_members.contains_key(&req.member_id) {
            if req.group_instance_id.is_some() {
                // Pending ids are only handed to dynamic members.
                return Outcome::Now(Err(GroupError::UnknownMemberId));
            }
            self.pending_members.remove(&req.member_id);
            let id = req.member_id.clone();
            return self.add_member_and_rebalance(req, id, now);
        }
        let instance = req.group_instance_id.as_deref();
        if self.is_fenced(instance, &req.member_id) {
            return Outcome::Now(Err(GroupError::FencedInstanceId));
        }
        let unknown_instance = instance.is_some_and(|i| !self.static_members.contains_key(i));
        if !self.has(&req.member_id) || unknown_instance {
            return Outcome::Now(Err(GroupError::UnknownMemberId));
        }
        let is_leader = self.is_leader(&req.member_id);
        let matches = self
            .member(&req.member_id)
            .is_some_and(|m| m.matches(&req.protocols));
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(req, now),
            GroupState::CompletingRebalance if matches => {
                // Same metadata: the member probably lost our response; answer it again.
                self.touch(&req.member_id, now);
                Outcome::Now(Ok(self.join_response(&req.member_id, is_leader)))
            }
            GroupState::Stable if matches && !is_leader => {
                self.touch(&req.member_id, now);
                Outcome::Now(Ok(self.join_response(&req.member_id, false)))
            }
            // A changed member, or the leader in Stable (it may have seen a metadata change that
            // only it can act on), forces a rebalance.
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(req, now)
            }
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Outcome::Now(Err(GroupError::UnknownMemberId)),
        }
    }

    fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(m) = self.member_mut(member_id) {
            m.touch(now);
        }
    }

    fn join_response(&self, member_id: &str, with_members: bool) -> JoinResponse {
        JoinResponse {
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            skip_assignment: false,
            member_id: member_id.to_owned(),
            members: if with_members {
                self.member_list()
            } else {
                Vec::new()
            },
        }
    }

    fn member_list(&self) -> Vec<JoinMember> {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        self.members
            .iter()
            .map(|m| JoinMember {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(protocol),
            })
            .collect()
    }

    fn add_member_and_rebalance(
        &mut self,
        req: JoinRequest,
        id: String,
        now: Instant,
    ) -> Outcome<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        let session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        let rebalance_timeout = if req.rebalance_timeout_ms > 0 {
            Duration::from_millis(req.rebalance_timeout_ms as u64)
        } else {
            session_timeout
        };
        if self.state == GroupState::PreparingRebalance
            && self.generation == 0
            && let Some(initial) = self.rebalance.as_mut().and_then(|r| r.initial.as_mut())
        {
            initial.new_member_added = true;
        }
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        info!(group = %client_text(&self.id), member = %client_text(&id), instance = req.group_instance_id.as_deref().map(client_text), reason = req.reason.as_deref().map(client_text), "member joins");
        self.members.push(Member {
            id,
            instance_id: req.group_instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout,
            rebalance_timeout,
            protocols: req.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(tx),
            awaiting_sync: None,
            is_new: true,
            session_deadline: now + NEW_MEMBER_JOIN_TIMEOUT,
        });
        self.maybe_prepare_rebalance(now);
        Outcome::Wait(rx)
    }

    fn update_member_and_rebalance(
        &mut self,
        req: JoinRequest,
        now: Instant,
    ) -> Outcome<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        let Some(m) = self.member_mut(&req.member_id) else {
            return Outcome::Now(Err(GroupError::UnknownMemberId));
        };
        m.protocols = req.protocols;
        m.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        m.rebalance_timeout = if req.rebalance_timeout_ms > 0 {
            Duration::from_millis(req.rebalance_timeout_ms as u64)
        } else {
            m.session_timeout
        };
        // A JoinGroup retried on a new connection replaces the old waiter; answer the old one.
        m.answer_join(Err(GroupError::RebalanceInProgress), now);
        m.awaiting_join = Some(tx);
        m.touch(now);
        self.maybe_prepare_rebalance(now);
        Outcome::Wait(rx)
    }

    /// A known static member rejoined with an empty member id: it takes over the old member's
    /// place under a new id. In Stable with an unchanged protocol choice there is no rebalance.
    fn replace_static_member(
        &mut self,
        req: JoinRequest,
        old_id: String,
        new_id: String,
        now: Instant,
    ) -> Outcome<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        let old_leader = self.leader.clone().unwrap_or_default();
        let Some(m) = self.member_mut(&old_id) else {
            return Outcome::Now(Err(GroupError::UnknownMemberId));
        };
        m.answer_join(Err(GroupError::FencedInstanceId), now);
        m.answer_sync(Err(GroupError::FencedInstanceId), now);
        m.id = new_id.clone();
        m.protocols = req.protocols;
        m.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        m.rebalance_timeout = if req.rebalance_timeout_ms > 0 {
            Duration::from_millis(req.rebalance_timeout_ms as u64)
        } else {
            m.session_timeout
        };
        m.awaiting_join = Some(tx);
        m.touch(now);
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(&old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        info!(group = %client_text(&self.id), old = %client_text(&old_id), new = %client_text(&new_id), instance = req.group_instance_id.as_deref().map(client_text), "static member replaced");
        // Saved too, whatever the state: a restart must know the instance's new member id, or
        // it would fence the live consumer.
        if let Some(saved) = self.last_completed.as_mut() {
            for m in saved.members.iter_mut().filter(|m| m.member_id == old_id) {
                m.member_id = new_id.clone();
            }
            if saved.leader == old_id {
                saved.leader = new_id.clone();
            }
            self.membership_changed = true;
        }
        match self.state {
            GroupState::Stable => {
                if self.select_protocol().as_deref() == self.protocol_name.as_deref() {
                    let skip = req.supports_skip_assignment;
                    let is_leader = self.is_leader(&new_id);
                    let mut response = self.join_response(&new_id, skip && is_leader);
                    response.skip_assignment = skip;
                    // Before v9 the old leader id is returned so that a rejoining static leader
                    // does not recompute an assignment the stable group would ignore.
                    if !skip {
                        response.leader = old_leader;
                    }
                    if let Some(m) = self.member_mut(&new_id) {
                        m.answer_join(Ok(response), now);
                    }
                } else {
                    self.prepare_rebalance(now);
                }
            }
            // The leader may already hold the old member id in its assignment: rebalance.
            GroupState::CompletingRebalance => self.prepare_rebalance(now),
            GroupState::PreparingRebalance => {}
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {
                return Outcome::Now(Err(GroupError::UnknownMemberId));
            }
        }
        Outcome::Wait(rx)
    }

    fn maybe_prepare_rebalance(&mut self, now: Instant) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(now);
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_assignments(GroupError::RebalanceInProgress, now);
        }
        self.pending_sync.clear();
        self.sync_deadline = None;
        let timeout = self.rebalance_timeout();
        self.rebalance = Some(if self.state == GroupState::Empty {
            let delay = self.initial_rebalance_delay;
            Rebalance {
                deadline: now + delay,
                initial: Some(InitialDelay {
                    remaining: timeout.saturating_sub(delay),
                    new_member_added: false,
                }),
            }
        } else {
            Rebalance {
                deadline: now + timeout,
                initial: None,
            }
        });
        info!(group = %client_text(&self.id), generation = self.generation, members = self.members.len(), "preparing rebalance");
        self.transition(GroupState::PreparingRebalance, now);
    }

    /// Clears assignments and fails waiting SyncGroup calls.
    fn reset_assignments(&mut self, error: GroupError, now: Instant) {
        for m in &mut self.members {
            m.assignment = Bytes::new();
            m.answer_sync(Err(error.clone()), now);
        }
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.iter().all(|m| m.awaiting_join.is_some())
    }

    /// Completes the rebalance if its time has come.
    fn try_complete_join(&mut self, now: Instant) {
        loop {
            if self.state != GroupState::PreparingRebalance {
                return;
            }
            let all_joined = self.all_members_joined();
            let delay = self.initial_rebalance_delay;
            let Some(rebalance) = self.rebalance.as_mut() else {
                return;
            };
            match rebalance.initial.as_mut() {
                Some(initial) => {
                    if now < rebalance.deadline {
                        return;
                    }
                    if initial.new_member_added && !initial.remaining.is_zero() {
                        let extension = delay.min(initial.remaining);
                        initial.remaining -= extension;
                        initial.new_member_added = false;
                        rebalance.deadline += extension;
                        continue;
                    }
                }
                None => {
                    if !all_joined && now < rebalance.deadline {
                        return;
                    }
                }
            }
            self.complete_join(now);
            return;
        }
    }

    /// Kafka's `onCompleteJoin`: drop dynamic members that did not rejoin, start the next
    /// generation and answer every waiting JoinGroup.
    fn complete_join(&mut self, now: Instant) {
        let absent: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.awaiting_join.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in absent {
            info!(group = %client_text(&self.id), member = %client_text(&id), "member did not rejoin in time; removed");
            self.remove_member(&id, now);
        }
        if !self.members.is_empty() && !self.elect_joined_leader() {
            // Only static members that have not rejoined are left: wait another round; their
            // session timeouts will remove them if they are gone.
            let deadline = now + self.rebalance_timeout();
            self.rebalance = Some(Rebalance {
                deadline,
                initial: None,
            });
            return;
        }
        self.rebalance = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol_name = None;
            info!(group = %client_text(&self.id), generation = self.generation, "group is empty");
            self.transition(GroupState::Empty, now);
            return;
        }
        self.protocol_name = self.select_protocol();
        self.transition(GroupState::CompletingRebalance, now);
        info!(group = %client_text(&self.id), generation = self.generation, protocol = self.protocol_name.as_deref().map(client_text),
            leader = self.leader.as_deref().map(client_text), members = self.members.len(), "rebalance complete");
        let list = self.member_list();
        let base = self.join_response("", false);
        for m in &mut self.members {
            let mut response = base.clone();
            response.member_id = m.id.clone();
            if base.leader == m.id {
                response.members = list.clone();
            }
            m.answer_join(Ok(response), now);
            m.touch(now);
            m.is_new = false;
        }
        self.pending_sync = self.members.iter().map(|m| m.id.clone()).collect();
        self.sync_deadline = Some(now + self.rebalance_timeout());
    }

    /// Keeps the leader if it rejoined, else picks the first member that did. False if none did.
    fn elect_joined_leader(&mut self) -> bool {
        if let Some(leader) = self.leader.as_deref()
            && self
                .member(leader)
                .is_some_and(|m| m.awaiting_join.is_some())
        {
            return true;
        }
        match self.members.iter().find(|m| m.awaiting_join.is_some()) {
            Some(m) => {
                self.leader = Some(m.id.clone());
                true
            }
            None => false,
        }
    }

    /// The protocol every member supports that most members prefer (each member votes for the
    /// first protocol of its list that all support). Ties go to the leader's preference order.
    pub(crate) fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| {
                self.members
                    .iter()
                    .all(|m| m.protocols.iter().any(|q| q.name == *name))
            })
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in &self.members {
            if let Some(vote) = m
                .protocols
                .iter()
                .find(|p| candidates.contains(&p.name.as_str()))
            {
                *votes.entry(vote.name.as_str()).or_default() += 1;
            }
        }
        let preference: Vec<&str> = self
            .leader
            .as_deref()
            .and_then(|l| self.member(l))
            .unwrap_or(first)
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| candidates.contains(n))
            .collect();
        let mut best: Option<(&str, usize)> = None;
        for name in preference {
            let n = votes.get(name).copied().unwrap_or(0);
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((name, n));
            }
        }
        best.map(|(name, _)| name.to_owned())
            .or_else(|| first.protocols.first().map(|p| p.name.clone()))
    }

    /// Removes a member from every index and re-elects the leader; answers its waiters.
    fn remove_member(&mut self, id: &str, now: Instant) -> Option<Member> {
        let pos = self.members.iter().position(|m| m.id == id)?;
        let mut m = self.members.remove(pos);
        m.answer_join(Err(GroupError::UnknownMemberId), now);
        m.answer_sync(Err(GroupError::UnknownMemberId), now);
        if let Some(instance) = &m.instance_id
            && self
                .static_members
                .get(instance)
                .is_some_and(|owner| owner == id)
        {
            self.static_members.remove(instance);
        }
        self.pending_sync.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        Some(m)
    }

    /// Kafka's `removeMemberAndUpdateGroup`.
    fn remove_member_and_rebalance(&mut self, id: &str, now: Instant) {
        if self.remove_member(id, now).is_none() {
            return;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(now)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {}
        }
    }

    // ---- SyncGroup -------------------------------------------------------------------------

    pub fn sync(&mut self, req: SyncRequest, now: Instant) -> Outcome<SyncResponse> {
        if let Err(e) = self.check_member(
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        ) {
            return Outcome::Now(Err(e));
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| self.protocol_type.as_ref() != Some(t))
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|n| self.protocol_name.as_ref() != Some(n))
        {
            return Outcome::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        match self.state {
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Outcome::Now(Err(GroupError::UnknownMemberId)),
            GroupState::PreparingRebalance => Outcome::Now(Err(GroupError::RebalanceInProgress)),
            GroupState::Stable => {
                self.pending_sync.remove(&req.member_id);
                let response = self.sync_response(&req.member_id);
                self.touch(&req.member_id, now);
                Outcome::Now(Ok(response))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                self.pending_sync.remove(&req.member_id);
                if let Some(m) = self.member_mut(&req.member_id) {
                    m.answer_sync(Err(GroupError::RebalanceInProgress), now);
                    m.awaiting_sync = Some(tx);
                    m.touch(now);
                }
                if self.is_leader(&req.member_id) {
                    let mut given: HashMap<String, Bytes> = req
                        .assignments
                        .into_iter()
                        .map(|a| (a.member_id, a.assignment))
                        .collect();
                    for m in &mut self.members {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    if !given.is_empty() {
                        debug!(group = %client_text(&self.id), unknown = ?given.keys().collect::<Vec<_>>(), "leader assigned to unknown members");
                    }
                    let protocol_type = self.protocol_type.clone();
                    let protocol_name = self.protocol_name.clone();
                    for m in &mut self.members {
                        let response = SyncResponse {
                            protocol_type: protocol_type.clone(),
                            protocol_name: protocol_name.clone(),
                            assignment: m.assignment.clone(),
                        };
                        m.answer_sync(Ok(response), now);
                    }
                    info!(group = %client_text(&self.id), generation = self.generation, "assignment received; group stable");
                    self.transition(GroupState::Stable, now);
                }
                Outcome::Wait(rx)
            }
        }
    }

    fn sync_response(&self, member_id: &str) -> SyncResponse {
        SyncResponse {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .member(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// The fencing, membership and generation checks shared by sync, heartbeat and commit.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if self.is_fenced(instance_id, member_id) {
            return Err(GroupError::FencedInstanceId);
        }
        if !self.has(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration {
                given: generation,
                current: self.generation,
            });
        }
        Ok(())
    }

    // ---- Heartbeat, LeaveGroup ---------------------------------------------------------------

    pub fn heartbeat(&mut self, req: &HeartbeatRequest, now: Instant) -> Result<(), GroupError> {
        self.check_member(
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        )?;
        match self.state {
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Err(GroupError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                self.touch(&req.member_id, now);
                Err(GroupError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.touch(&req.member_id, now);
                Ok(())
            }
        }
    }

    pub fn leave(&mut self, member: &LeavingMember, now: Instant) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        let id = if member.member_id.is_empty() {
            // Administrative removal of a static member by instance id.
            match member
                .group_instance_id
                .as_ref()
                .and_then(|i| self.static_members.get(i))
            {
                Some(id) => id.clone(),
                None => return Err(GroupError::UnknownMemberId),
            }
        } else if self.pending_members.remove(&member.member_id).is_some() {
            self.try_complete_join(now);
            return Ok(());
        } else if self.is_fenced(member.group_instance_id.as_deref(), &member.member_id) {
            return Err(GroupError::FencedInstanceId);
        } else if self.has(&member.member_id) {
            member.member_id.clone()
        } else {
            return Err(GroupError::UnknownMemberId);
        };
        info!(group = %client_text(&self.id), member = %client_text(&id), reason = member.reason.as_deref().map(client_text), "member leaves");
        self.remove_member_and_rebalance(&id, now);
        Ok(())
    }

    // ---- Offsets -----------------------------------------------------------------------------

    /// Kafka's `validateOffsetCommit` plus the state checks of `doCommitOffsets`.
    pub fn check_commit(
        &mut self,
        req: &OffsetCommitRequest,
        now: Instant,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if self.uses_consumer_protocol() {
            let partitions: Vec<(String, i32)> = req
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.partition)))
                .collect();
            return self
                .consumer
                .check_commit(&req.member_id, req.generation_id, &partitions);
        }
        let managed =
            req.generation_id >= 0 || !req.member_id.is_empty() || req.group_instance_id.is_some();
        if managed {
            self.check_member(
                &req.member_id,
                req.group_instance_id.as_deref(),
                req.generation_id,
            )?;
        } else if self.state != GroupState::Empty {
            // Only members may commit to a group that has members.
            return Err(GroupError::UnknownMemberId);
        }
        if !managed {
            return Ok(());
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        self.touch(&req.member_id, now);
        Ok(())
    }

    // ---- Timers ------------------------------------------------------------------------------

    /// Applies every deadline that has passed: pending member ids, member sessions, the sync
    /// deadline, and the rebalance (initial delay or rebalance timeout).
    pub fn poll(&mut self, now: Instant) {
        if self.consumer.poll(now) && self.consumer.is_empty() {
            self.empty_since = now;
        }
        if self.members.is_empty() && self.consumer.only_classic_members() {
            self.take_back_classic_members(now);
        }
        let before = self.pending_members.len();
        self.pending_members.retain(|_, deadline| *deadline > now);
        if self.pending_members.len() != before {
            self.try_complete_join(now);
        }
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.expired(now))
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            info!(group = %client_text(&self.id), member = %client_text(&id), "session timeout; member removed");
            self.remove_member_and_rebalance(&id, now);
        }
        if self.sync_deadline.is_some_and(|d| now >= d) {
            self.sync_deadline = None;
            if matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
            {
                let missing: Vec<String> = self.pending_sync.drain().collect();
                info!(group = %client_text(&self.id), members = %missing.iter().map(|m| client_text(m)).collect::<Vec<_>>().join(", "), "members did not send SyncGroup in time; removed");
                for id in missing {
                    self.remove_member(&id, now);
                }
                self.maybe_prepare_rebalance(now);
            }
        }
        self.try_complete_join(now);
    }

    /// How many members the group has (of either protocol).
    pub fn members_len(&self) -> usize {
        self.members.len() + self.consumer.members_len()
    }

    /// Whether the group is one of the consumer protocol (KIP-848): it has such members, or
    /// had them last and no classic member joined since.
    pub fn uses_consumer_protocol(&self) -> bool {
        self.members.is_empty() && (!self.consumer.is_empty() || self.consumer.used())
    }

    /// The state ListGroups and DescribeGroups show.
    pub fn listed_state(&self) -> GroupState {
        if !self.uses_consumer_protocol() || self.state == GroupState::Dead {
            return self.state;
        }
        self.consumer.state()
    }

    /// Forgets every member, keeping the committed offsets: the group is Empty and its saved
    /// membership goes. For a broker that starts as a follower, before it serves anything:
    /// members restored from the store have no join or sync waiting, so none is answered.
    pub fn dismiss(&mut self, now: Instant) {
        self.consumer.dismiss();
        if self.members.is_empty() {
            return;
        }
        self.members.clear();
        self.static_members.clear();
        self.leader = None;
        self.protocol_name = None;
        self.rebalance = None;
        self.transition(GroupState::Empty, now);
    }

    /// Hands the members over to the group of the consumer protocol, when a member of that
    /// protocol joins (Kafka's online upgrade): each with its subscription and the assignment
    /// it holds (that of the last completed rebalance, kept while another is prepared), and the
    /// generation; the classic group is left Empty (its saved membership goes). A rebalance in
    /// progress ends: its waiting joins and syncs are told REBALANCE_IN_PROGRESS, and their
    /// members join again into the new group. Refused, with nothing changed and the reason,
    /// for a group of another protocol type (Kafka Connect's, say) or one whose metadata is
    /// not the consumer protocol's.
    pub fn hand_over_to_consumer_protocol(
        &mut self,
        now: Instant,
    ) -> Result<(i32, Vec<super::consumer::ClassicSeed>), String> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return Err(format!(
                "its protocol type is {:?}, not the consumer protocol's",
                self.protocol_type.as_deref().unwrap_or("")
            ));
        }
        let protocol = self
            .protocol_name
            .clone()
            .or_else(|| self.select_protocol())
            .unwrap_or_default();
        let mut seeds = Vec::new();
        for m in &self.members {
            let unreadable = || {
                format!(
                    "member {}'s metadata is not the consumer protocol's",
                    client_text(&m.id)
                )
            };
            let metadata = m
                .protocols
                .iter()
                .find(|p| p.name == protocol)
                .or(m.protocols.first())
                .ok_or_else(unreadable)?
                .metadata
                .clone();
            let subscription =
                super::consumer::read_subscription(&metadata).ok_or_else(unreadable)?;
            // Data an assignor added for its members (librdkafka's cooperative-sticky adds
            // some) is not kept, as Kafka does not keep it: the broker assigns from now on.
            let assigned =
                super::consumer::read_assignment(&m.assignment).ok_or_else(unreadable)?;
            seeds.push(super::consumer::ClassicSeed {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout: m.session_timeout,
                rebalance_timeout: m.rebalance_timeout,
                protocols: m
                    .protocols
                    .iter()
                    .map(|p| (p.name.clone(), p.metadata.to_vec()))
                    .collect(),
                owned: subscription.owned.clone(),
                subscription,
                assigned,
            });
        }
        for m in &mut self.members {
            m.answer_join(Err(GroupError::RebalanceInProgress), now);
            m.answer_sync(Err(GroupError::RebalanceInProgress), now);
        }
        info!(group = %client_text(&self.id), generation = self.generation, members = self.members.len(), "classic group taken over by the consumer protocol (a member of it joined)");
        self.members.clear();
        self.static_members.clear();
        self.pending_members.clear();
        self.pending_sync.clear();
        self.sync_deadline = None;
        self.rebalance = None;
        self.leader = None;
        self.protocol_name = None;
        self.transition(GroupState::Empty, now);
        Ok((self.generation, seeds))
    }

    /// Takes back the classic members the group of the consumer protocol hosted, once its last
    /// member of that protocol left (Kafka's online downgrade): a classic group of the consumer
    /// protocol type again, with them as they are (ids, instance ids, timeouts, protocols and
    /// what they hold), which at once prepares a rebalance, so that they join again and their
    /// leader assigns with their own assignor. Its generation is the highest of their epochs,
    /// so that a member at it is told REBALANCE_IN_PROGRESS at its next Heartbeat (one behind
    /// is told ILLEGAL_GENERATION, and joins again too).
    fn take_back_classic_members(&mut self, now: Instant) {
        let returning = self.consumer.hand_back_classic_members();
        let Some(generation) = returning.iter().map(|m| m.epoch).max() else {
            return;
        };
        self.generation = generation;
        self.protocol_type = Some("consumer".to_string());
        self.static_members = returning
            .iter()
            .filter_map(|m| Some((m.instance_id.clone()?, m.member_id.clone())))
            .collect();
        self.members = returning
            .into_iter()
            .map(|m| Member {
                id: m.member_id,
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: m.session_timeout,
                rebalance_timeout: m.rebalance_timeout,
                protocols: m
                    .protocols
                    .into_iter()
                    .map(|(name, metadata)| JoinProtocol {
                        name,
                        metadata: Bytes::from(metadata),
                    })
                    .collect(),
                assignment: m.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                is_new: false,
                session_deadline: now + m.session_timeout,
            })
            .collect();
        self.protocol_name = self.select_protocol().or_else(|| {
            let first = self.members.first()?.protocols.first()?;
            Some(first.name.clone())
        });
        // No leader until they join again: saved so, a restart before the rebalance completes
        // prepares it again (see `restore`).
        self.leader = None;
        self.pending_members.clear();
        self.pending_sync.clear();
        self.sync_deadline = None;
        info!(group = %client_text(&self.id), generation, members = self.members.len(), "group back to the classic protocol (its last member of the consumer protocol left)");
        self.transition(GroupState::Stable, now);
        self.prepare_rebalance(now);
    }

    /// Marks the group deleted (DeleteGroups); only an Empty group may be deleted.
    pub fn mark_dead(&mut self, now: Instant) {
        self.transition(GroupState::Dead, now);
    }

    /// Undoes `mark_dead` when the store refused the delete.
    pub fn revive(&mut self, now: Instant) {
        self.transition(GroupState::Empty, now);
    }

    // ---- Read-only views ---------------------------------------------------------------------

    pub fn describe(&self) -> GroupDescription {
        let stable = self.state == GroupState::Stable;
        let protocol = if stable {
            self.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        GroupDescription {
            group_id: self.id.clone(),
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
            protocol,
        }
    }
}
