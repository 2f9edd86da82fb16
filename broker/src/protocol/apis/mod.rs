//! One file per Kafka API. Each `handle(ctx, request) -> response` is registered in
//! `protocol::routes()` with the versions it serves.

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_client_quotas;
pub mod alter_configs;
pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_client_quotas;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_transactions;
pub mod describe_user_scram_credentials;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod produce;
pub mod sasl;
pub mod sync_group;
pub mod txn_offset_commit;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::protocol::StrBytes;

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

/// A `StrBytes` from an owned or borrowed string.
pub(crate) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Why the ACL APIs are refused while ACLs are off.
pub(crate) const ACLS_OFF: &str = "ACLs are off on this broker (set acls.enabled = true)";

/// Why a follower could not forward a request to the cluster's leader.
pub(crate) fn leader_unreachable(
    cluster: &crate::replication::Cluster,
    e: &anyhow::Error,
) -> String {
    format!(
        "this broker follows node {}, which keeps this, and could not forward the request: {e:#}",
        cluster.leader
    )
}

/// The bit field Metadata and DescribeGroups return for authorized operations that were not
/// asked for (`include_*_authorized_operations` false).
pub(crate) const OPERATIONS_NOT_ASKED: i32 = i32::MIN;

/// PRODUCER_FENCED as a request version from before it (KIP-588) knows it:
/// INVALID_PRODUCER_EPOCH below `since`, as Kafka answers.
pub(crate) fn for_version(code: i16, version: i16, since: i16) -> i16 {
    if version < since && code == E::ProducerFenced.code() {
        E::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// Why this broker does not take a transactional request for `id`: NOT_COORDINATOR on a
/// cluster's follower (the leader coordinates), TRANSACTIONAL_ID_AUTHORIZATION_FAILED when the
/// client may not Write the transactional id.
pub(crate) fn coordinator_refusal(ctx: &Ctx, id: &str) -> Option<i16> {
    if ctx.follows() {
        return Some(E::NotCoordinator.code());
    }
    (!ctx.allowed(Operation::Write, ResourceType::TransactionalId, id))
        .then_some(E::TransactionalIdAuthorizationFailed.code())
}
