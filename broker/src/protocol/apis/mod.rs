//! One file per Kafka API. Each `handle(ctx, request) -> response` is registered in
//! `protocol::routes()` with the versions it serves.

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_client_quotas;
pub mod alter_configs;
pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod broker_heartbeat;
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_client_quotas;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_transactions;
pub mod describe_user_scram_credentials;
pub mod elect_leaders;
pub mod end_txn;
pub mod envelope;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_config_resources;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sasl;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod write_txn_markers;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::protocol::StrBytes;

use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

/// A `StrBytes` from an owned or borrowed string.
pub(crate) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// The items given more than once: a request naming a topic or resource twice is refused for
/// it (INVALID_REQUEST, as Kafka's controller does) rather than applied twice.
pub(crate) fn repeated<T: std::hash::Hash + Eq>(
    items: impl IntoIterator<Item = T>,
) -> std::collections::HashSet<T> {
    let mut seen = std::collections::HashSet::new();
    let mut twice = std::collections::HashSet::new();
    for item in items {
        if let Some(again) = seen.replace(item) {
            twice.insert(again);
        }
    }
    twice
}

/// `items` with each key kept once, at its first place: a read request that asks the same
/// thing many times (a topic, group or resource with the same options) is answered once for
/// it, so that a small request cannot make an answer thousands of times its size (Kafka's
/// Metadata takes its topics as a set as well).
pub(crate) fn first_of_each<T, K: std::hash::Hash + Eq>(
    items: Vec<T>,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().filter(|i| seen.insert(key(i))).collect()
}

/// Why a resource of an AlterConfigs or IncrementalAlterConfigs request is refused before
/// anything else is looked at, as Kafka's brokers check it: named twice in the request, a key
/// given twice, or keys without a value (`nulls`: those of operations that need one).
pub(crate) fn config_resource_refusal<'a>(
    resource_twice: bool,
    keys: impl Iterator<Item = &'a str>,
    nulls: impl Iterator<Item = &'a str>,
) -> Option<String> {
    if resource_twice {
        return Some("Each resource must appear at most once.".to_string());
    }
    if !repeated(keys).is_empty() {
        return Some("Error due to duplicate config keys".to_string());
    }
    let nulls: Vec<&str> = nulls.collect();
    (!nulls.is_empty()).then(|| format!("Null value not supported for : {}", nulls.join(", ")))
}

/// Checks the leader epoch a client names for a partition (`current`, -1 for none: no check)
/// against the partition's here (`here`, KIP-320): FENCED_LEADER_EPOCH when the client's is
/// older (its metadata is stale), UNKNOWN_LEADER_EPOCH when it is newer (this broker's is), as
/// Kafka's leaders answer.
pub(crate) fn check_leader_epoch(here: i32, current: i32) -> Result<(), i16> {
    if current < 0 || current == here {
        Ok(())
    } else if current < here {
        Err(E::FencedLeaderEpoch.code())
    } else {
        Err(E::UnknownLeaderEpoch.code())
    }
}

/// Why the ACL APIs are refused while ACLs are off.
pub(crate) const ACLS_OFF: &str = "ACLs are off on this broker (set acls.enabled = true)";

/// On a cluster's follower, `req` forwarded to the leader (which keeps what it changes or
/// reads, as Kafka's controller does) in an Envelope naming the client, and its answer, or why
/// it could not be: `None` on a broker that is not a follower. The client's rights are checked
/// here first, by the caller, and again by the leader. A request another broker forwarded is
/// not passed on again (the leader's Envelope handler also refuses on a follower): two brokers
/// that each take the other for the leader would pass it back and forth.
pub(crate) async fn forward_to_leader<R: kafka_protocol::protocol::Request>(
    ctx: &Ctx,
    req: &R,
) -> Option<Result<R::Response, String>> {
    let cluster = ctx.broker.cluster.as_ref().filter(|_| ctx.follows())?;
    if ctx
        .client_id
        .starts_with(crate::replication::PEER_CLIENT_ID_PREFIX)
    {
        return Some(Err(format!(
            "forwarded by another broker, which takes this one for the leader; this one \
             follows node {}: the brokers disagree on the leader",
            cluster.leader
        )));
    }
    tracing::info!(
        api = R::KEY,
        principal = ctx.asker().principal,
        leader = cluster.leader,
        "request forwarded to the leader"
    );
    let who = ctx.asker();
    let client = (who.principal, who.host, &*ctx.client_id);
    Some(
        cluster
            .forward_as(req, ctx.api_version, client)
            .await
            .map_err(|e| {
                let error = format!("{e:#}");
                tracing::warn!(%error, leader = cluster.leader, "cannot forward a request to the leader");
                format!(
                    "this broker follows node {}, which keeps this, and could not forward the \
                     request to it: {error}",
                    cluster.leader
                )
            }),
    )
}

/// [`forward_to_leader`] for a change to the ACLs, which the follower then copies again from the
/// leader before it answers, so that the client's next request here is judged by what it just
/// changed.
pub(crate) async fn forward_acl_change<R: kafka_protocol::protocol::Request>(
    ctx: &Ctx,
    req: &R,
) -> Option<Result<R::Response, String>> {
    let answer = forward_to_leader(ctx, req).await?;
    if answer.is_ok()
        && let Err(e) = crate::replication::follower::copy_acls_now(&ctx.broker).await
    {
        tracing::warn!(error = %format!("{e:#}"), "cannot copy the leader's ACLs after a change");
        if let Some(cluster) = &ctx.broker.cluster {
            cluster.copy_soon();
        }
    }
    Some(answer)
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
