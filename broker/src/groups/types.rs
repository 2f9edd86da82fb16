//! Plain request and response types of the group APIs.
//!
//! The protocol layer fills these from kafka-protocol messages and back. Fields hold what the
//! newest supported version carries; for older versions the protocol layer fills the documented
//! default. Timeouts stay `i32` milliseconds as on the wire so that out-of-range values reach the
//! coordinator and get the Kafka error, not a conversion failure.

use bytes::Bytes;

use super::error::GroupError;

/// State of a classic consumer group, as Kafka names it in ListGroups and DescribeGroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members; may hold committed offsets.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joins answered; waiting for the leader's SyncGroup (Kafka's AwaitingSync).
    CompletingRebalance,
    /// Assignment handed out (classic); every member holds its target (consumer protocol).
    Stable,
    /// Consumer protocol (KIP-848): the target assignment is being computed.
    Assigning,
    /// Consumer protocol: members are moving to the target assignment.
    Reconciling,
    /// Deleted, or unknown (DescribeGroups of a group that does not exist).
    Dead,
}

impl GroupState {
    /// The name Kafka uses on the wire ("Empty", "PreparingRebalance", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
        }
    }

    /// Parses a state name case-insensitively (ListGroups v4 `states_filter`).
    pub fn parse(name: &str) -> Option<Self> {
        [
            GroupState::Empty,
            GroupState::PreparingRebalance,
            GroupState::CompletingRebalance,
            GroupState::Stable,
            GroupState::Dead,
            GroupState::Assigning,
            GroupState::Reconciling,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

/// One protocol a member supports (JoinGroup `protocols`), in the member's order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinProtocol {
    pub name: String,
    pub metadata: Bytes,
}

/// JoinGroup v0-v9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub group_id: String,
    /// "" for a member joining for the first time.
    pub member_id: String,
    /// Static membership (v5+); None for dynamic members.
    pub group_instance_id: Option<String>,
    /// From the request header; prefix of generated member ids.
    pub client_id: String,
    /// Client address as text (DescribeGroups `client_host`).
    pub client_host: String,
    pub session_timeout_ms: i32,
    /// v0 has none: pass `session_timeout_ms`. Values <= 0 are treated as the session timeout.
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<JoinProtocol>,
    /// True for v4+: a new dynamic member first gets MEMBER_ID_REQUIRED and an id.
    pub require_known_member_id: bool,
    /// True for v9+: a rejoining static leader may be told to skip the assignment.
    pub supports_skip_assignment: bool,
    /// v8+; logged only.
    pub reason: Option<String>,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// A successful JoinGroup response. Errors come as [`GroupError`]; for MEMBER_ID_REQUIRED the
/// response's `member_id` is in the error variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub generation_id: i32,
    /// v7+ carries it.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    /// v9+.
    pub skip_assignment: bool,
    pub member_id: String,
    /// Non-empty for the leader only.
    pub members: Vec<JoinMember>,
}

/// One member's assignment in the leader's SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAssignment {
    pub member_id: String,
    pub assignment: Bytes,
}

/// SyncGroup v0-v5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    /// v3+.
    pub group_instance_id: Option<String>,
    /// v5+; checked against the group when present.
    pub protocol_type: Option<String>,
    /// v5+; checked against the group when present.
    pub protocol_name: Option<String>,
    /// Only the leader's are used; members it leaves out get an empty assignment.
    pub assignments: Vec<SyncAssignment>,
}

/// A successful SyncGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    /// v5+.
    pub protocol_type: Option<String>,
    /// v5+.
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// Heartbeat v0-v4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    /// v3+.
    pub group_instance_id: Option<String>,
}

/// One member to remove (LeaveGroup v3+ `members`; v0-v2: one entry built from `member_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeavingMember {
    /// "" to remove a static member by `group_instance_id` alone.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// v5+; logged only.
    pub reason: Option<String>,
}

/// LeaveGroup v0-v5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveRequest {
    pub group_id: String,
    pub members: Vec<LeavingMember>,
}

/// Outcome for one leaving member. For v0-v2 the protocol layer uses the single member's
/// `result` as the top-level error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveMemberResult {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub result: Result<(), GroupError>,
}

/// One partition of an OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitPartition {
    pub partition: i32,
    pub offset: i64,
    /// v6+; -1 otherwise.
    pub leader_epoch: i32,
    /// None is stored as "".
    pub metadata: Option<String>,
    /// v1 only (client-chosen commit time); None means "now".
    pub commit_timestamp_ms: Option<i64>,
}

/// One topic of an OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitTopic {
    pub name: String,
    pub partitions: Vec<OffsetCommitPartition>,
}

/// OffsetCommit v0-v8. `retention_time_ms` (v2-v4) is ignored, as Kafka does since 2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    /// -1 for a standalone commit (v0 has none: -1).
    pub generation_id: i32,
    /// "" for a standalone commit.
    pub member_id: String,
    /// v7+.
    pub group_instance_id: Option<String>,
    pub topics: Vec<OffsetCommitTopic>,
}

/// Result for one partition (commit and other per-partition answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionResult {
    pub partition: i32,
    pub result: Result<(), GroupError>,
}

/// Results of one topic of an OffsetCommit, partitions in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitTopicResult {
    pub name: String,
    pub partitions: Vec<PartitionResult>,
}

/// Partitions of one topic to fetch committed offsets for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchTopic {
    pub name: String,
    pub partitions: Vec<i32>,
}

/// One fetched partition. Never committed: offset -1, leader epoch -1, metadata "".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPartition {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// One topic of an OffsetFetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedTopic {
    pub name: String,
    pub partitions: Vec<FetchedPartition>,
}

/// One row of ListGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    /// "" for groups that only store offsets.
    pub protocol_type: String,
    /// v4+.
    pub state: GroupState,
    /// v5+: "classic", or "consumer" for a group of the consumer protocol (KIP-848).
    pub group_type: &'static str,
}

/// One member in DescribeGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedMember {
    pub member_id: String,
    /// v4+.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Metadata for the chosen protocol; empty unless the group is Stable (as Kafka).
    pub metadata: Bytes,
    /// Empty unless the group is Stable (as Kafka).
    pub assignment: Bytes,
}

/// DescribeGroups answer for one group. A group that does not exist is described as Dead with
/// no members (error NONE), as Kafka does for v0-v5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    /// The chosen protocol when Stable, "" otherwise.
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}
