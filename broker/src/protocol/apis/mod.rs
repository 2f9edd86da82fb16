//! One file per Kafka API. Each `handle(ctx, request) -> response` is registered in
//! `protocol::routes()` with the versions it serves.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_user_scram_credentials;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod produce;
pub mod sasl;
pub mod sync_group;

use kafka_protocol::protocol::StrBytes;

/// A `StrBytes` from an owned or borrowed string.
pub(crate) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// The operations a principal may perform on a resource, as the bit field of ACL operation codes
/// that Metadata and DescribeGroups return when asked (`include_*_authorized_operations`). This
/// broker has no ACLs, so, as Kafka without an authorizer, it reports every operation the
/// resource type has; tools use it to decide what to offer (delete a group, alter a topic).
pub(crate) mod authorized {
    const READ: u8 = 3;
    const WRITE: u8 = 4;
    const CREATE: u8 = 5;
    const DELETE: u8 = 6;
    const ALTER: u8 = 7;
    const DESCRIBE: u8 = 8;
    const CLUSTER_ACTION: u8 = 9;
    const DESCRIBE_CONFIGS: u8 = 10;
    const ALTER_CONFIGS: u8 = 11;
    const IDEMPOTENT_WRITE: u8 = 12;

    const fn bits(ops: &[u8]) -> i32 {
        let mut field = 0;
        let mut i = 0;
        while i < ops.len() {
            field |= 1 << ops[i];
            i += 1;
        }
        field
    }

    /// What was not asked for.
    pub const NOT_ASKED: i32 = i32::MIN;
    pub const TOPIC: i32 = bits(&[
        READ,
        WRITE,
        CREATE,
        DELETE,
        ALTER,
        DESCRIBE,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
    ]);
    pub const GROUP: i32 = bits(&[READ, DELETE, DESCRIBE]);
    pub const CLUSTER: i32 = bits(&[
        CREATE,
        ALTER,
        DESCRIBE,
        CLUSTER_ACTION,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
        IDEMPOTENT_WRITE,
    ]);
}
