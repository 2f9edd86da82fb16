//! Errors of the group coordinator, each variant one Kafka error code.
//!
//! The protocol layer calls [`GroupError::kafka_code`] when it builds a response; it never has to
//! guess. Variants carry the few values a response or a log line needs (the member id a
//! MEMBER_ID_REQUIRED response must return, the limits an INVALID_SESSION_TIMEOUT broke).

use thiserror::Error;

/// A failure of the [`OffsetStore`](super::OffsetStore) the broker plugs in (redb in production).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("offset store failure: {message}")]
pub struct StoreError {
    /// What went wrong, for the log.
    pub message: String,
}

impl StoreError {
    /// Wraps any displayable error (e.g. a `redb::Error`).
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }
}

/// Why [`GroupCoordinator::new`](super::GroupCoordinator::new) refused to start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Loading the committed offsets failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration contradicts itself (names the field).
    #[error("invalid group coordinator config: {0}")]
    Config(String),
}

/// An error returned to a client of the group APIs. Maps 1:1 to a Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupError {
    /// UNKNOWN_SERVER_ERROR (-1): an unexpected internal failure.
    #[error("unknown server error: {0}")]
    UnknownServerError(String),
    /// OFFSET_METADATA_TOO_LARGE (12).
    #[error("offset metadata of {size} bytes exceeds the limit of {max} bytes")]
    OffsetMetadataTooLarge { size: usize, max: usize },
    /// COORDINATOR_LOAD_IN_PROGRESS (14). Not produced today: offsets load before `new` returns.
    #[error("the coordinator is loading")]
    CoordinatorLoadInProgress,
    /// COORDINATOR_NOT_AVAILABLE (15): the group is being deleted, or a waiter lost its group.
    #[error("the coordinator is not available")]
    CoordinatorNotAvailable,
    /// ILLEGAL_GENERATION (22).
    #[error("generation {given} is not the group's generation {current}")]
    IllegalGeneration { given: i32, current: i32 },
    /// INCONSISTENT_GROUP_PROTOCOL (23): protocol type or protocol names do not match the group.
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    /// INVALID_GROUP_ID (24): empty group id on an API that needs one.
    #[error("invalid group id")]
    InvalidGroupId,
    /// UNKNOWN_MEMBER_ID (25).
    #[error("unknown member id")]
    UnknownMemberId,
    /// INVALID_SESSION_TIMEOUT (26).
    #[error("session timeout {timeout_ms} ms outside [{min_ms}, {max_ms}] ms")]
    InvalidSessionTimeout {
        timeout_ms: i32,
        min_ms: u64,
        max_ms: u64,
    },
    /// REBALANCE_IN_PROGRESS (27): the member must rejoin.
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// NON_EMPTY_GROUP (68).
    #[error("the group is not empty")]
    NonEmptyGroup,
    /// GROUP_ID_NOT_FOUND (69).
    #[error("group id not found")]
    GroupIdNotFound,
    /// GROUP_ID_NOT_FOUND (69) for a request of one group protocol to a group of the other
    /// (Kafka's answer when it does not convert the group); says which.
    #[error("{0}")]
    OtherProtocol(String),
    /// MEMBER_ID_REQUIRED (79): the JoinGroup response must carry `member_id`, which the client
    /// sends back in its next JoinGroup.
    #[error("member id required (assigned {member_id})")]
    MemberIdRequired { member_id: String },
    /// FENCED_INSTANCE_ID (82): another member id owns this group instance id.
    #[error("group instance id fenced by another member id")]
    FencedInstanceId,
    /// GROUP_SUBSCRIBED_TO_TOPIC (86): OffsetDelete of a topic the group's members consume.
    #[error("the group is subscribed to the topic")]
    GroupSubscribedToTopic,
    /// INVALID_REQUEST (42): a ConsumerGroupHeartbeat that breaks the protocol's rules.
    #[error("{0}")]
    InvalidRequest(String),
    /// FENCED_MEMBER_EPOCH (110): a consumer-protocol member's epoch is not the coordinator's;
    /// it must join again (epoch 0).
    #[error("member epoch {given} is fenced: the member's epoch is {current}; join again")]
    FencedMemberEpoch { given: i32, current: i32 },
    /// UNRELEASED_INSTANCE_ID (111): a static member's instance id is still held by another
    /// member id.
    #[error("instance id {instance_id} is still held by member {member_id}")]
    UnreleasedInstanceId {
        instance_id: String,
        member_id: String,
    },
    /// UNSUPPORTED_ASSIGNOR (112).
    #[error("assignor {name:?} is not one of this broker's: {}", super::consumer::ASSIGNORS.join(", "), name = .0)]
    UnsupportedAssignor(String),
    /// INVALID_REGULAR_EXPRESSION (128): a subscription regex that does not compile, or is too
    /// long or costly.
    #[error("{0}")]
    InvalidRegularExpression(String),
    /// STALE_MEMBER_EPOCH (113): an OffsetCommit at an older epoch for partitions the member no
    /// longer holds.
    #[error("member epoch {given} is stale: the member's epoch is {current}")]
    StaleMemberEpoch { given: i32, current: i32 },
    /// A store failure while committing or deleting (a full disk); reported as
    /// COORDINATOR_NOT_AVAILABLE (15), which clients retry, as Kafka answers a commit it could
    /// not write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl GroupError {
    /// The Kafka protocol error code for this error.
    pub fn kafka_code(&self) -> i16 {
        match self {
            GroupError::UnknownServerError(_) => -1,
            GroupError::OffsetMetadataTooLarge { .. } => 12,
            GroupError::CoordinatorLoadInProgress => 14,
            GroupError::CoordinatorNotAvailable | GroupError::Store(_) => 15,
            GroupError::IllegalGeneration { .. } => 22,
            GroupError::InconsistentGroupProtocol => 23,
            GroupError::InvalidGroupId => 24,
            GroupError::UnknownMemberId => 25,
            GroupError::InvalidSessionTimeout { .. } => 26,
            GroupError::RebalanceInProgress => 27,
            GroupError::NonEmptyGroup => 68,
            GroupError::GroupIdNotFound | GroupError::OtherProtocol(_) => 69,
            GroupError::MemberIdRequired { .. } => 79,
            GroupError::FencedInstanceId => 82,
            GroupError::GroupSubscribedToTopic => 86,
            GroupError::InvalidRequest(_) => 42,
            GroupError::FencedMemberEpoch { .. } => 110,
            GroupError::UnreleasedInstanceId { .. } => 111,
            GroupError::UnsupportedAssignor(_) => 112,
            GroupError::StaleMemberEpoch { .. } => 113,
            GroupError::InvalidRegularExpression(_) => 128,
        }
    }
}
