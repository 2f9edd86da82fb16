//! AlterClientQuotas (key 49, KIP-546): sets and removes client quotas
//! (`crate::client_quotas`), for `kafka-configs --alter --add-config producer_byte_rate=N
//! --entity-type users --entity-name alice` (or `--entity-default`, `--delete-config`) and
//! `AdminClient.alterClientQuotas`. They take effect at once and are kept across restarts.
//!
//! As in Kafka, each entry is answered alone: an entry with an unknown or repeated entity type,
//! an IP address beside a user or client id or one that is not an address, an unknown key or
//! one the entity does not take (connection_creation_rate is for IP addresses, and they take
//! nothing else), or a value that is not positive (for a byte rate, not a whole number a LONG
//! holds) gets INVALID_REQUEST with the reason and changes nothing; the valid entries are kept in one metadata transaction
//! (`validate_only` checks them and keeps nothing). Removing a quota that is not set is not an
//! error.
//!
//! The client needs AlterConfigs on the cluster (`crate::acl`), else
//! CLUSTER_AUTHORIZATION_FAILED. In a cluster the leader keeps and enforces the quotas: a
//! follower checks the client's rights with its copy of the leader's ACLs, then forwards the
//! request to the leader in an Envelope naming the client (`apis::forward_to_leader`), whose
//! rights the leader checks again, and answers with the leader's answer, or NOT_CONTROLLER when
//! it cannot reach it.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_client_quotas_request::EntryData as AskedEntry;
use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
use kafka_protocol::messages::{AlterClientQuotasRequest, AlterClientQuotasResponse};

use super::s;
use crate::acl::Operation;
use crate::client_quotas::{Change, Entity, QuotaKey, check_value};
use crate::protocol::Ctx;

/// An entry's entity and changes, or the error code and reason it is refused with.
type Checked = Result<(Entity, Vec<Change>), (E, String)>;

pub async fn handle(ctx: Ctx, req: AlterClientQuotasRequest) -> AlterClientQuotasResponse {
    let refusal = if !ctx.allowed_on_cluster(Operation::AlterConfigs) {
        Some((
            E::ClusterAuthorizationFailed,
            "altering client quotas needs AlterConfigs on the cluster".to_string(),
        ))
    } else {
        match super::forward_to_leader(&ctx, &req).await {
            None => None,
            Some(Ok(answer)) => return answer,
            Some(Err(why)) => Some((E::NotController, why)),
        }
    };
    let checked: Vec<Checked> = req
        .entries
        .iter()
        .map(|entry| match &refusal {
            Some(r) => Err(r.clone()),
            None => check(entry).map_err(|reason| (E::InvalidRequest, reason)),
        })
        .collect();
    let valid: Vec<(Entity, Vec<Change>)> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().cloned())
        .collect();
    let mut stored = Ok(());
    if !valid.is_empty() && !req.validate_only {
        let broker = ctx.broker.clone();
        let count = valid.len();
        stored = match tokio::task::spawn_blocking(move || broker.client_quotas.alter(&valid)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match &stored {
            Ok(()) => tracing::info!(
                entities = count,
                principal = ctx.asker().principal,
                "client quotas altered"
            ),
            Err(e) => tracing::warn!(error = %e, "client quotas not stored"),
        }
    }
    let entries = req
        .entries
        .iter()
        .zip(checked)
        .map(|(asked, result)| {
            let entity = asked
                .entity
                .iter()
                .map(|e| {
                    EntityData::default()
                        .with_entity_type(e.entity_type.clone())
                        .with_entity_name(e.entity_name.clone())
                })
                .collect();
            let error = match (result, &stored) {
                (Err(refused), _) => Some(refused),
                (Ok(_), Err(e)) => Some((
                    E::KafkaStorageError,
                    format!("the quotas could not be stored: {e}"),
                )),
                (Ok(_), Ok(())) => None,
            };
            // No message on success (the codec's default is an empty one).
            let out = EntryData::default()
                .with_entity(entity)
                .with_error_message(None);
            match error {
                Some((code, message)) => out
                    .with_error_code(code.code())
                    .with_error_message(Some(s(message))),
                None => out,
            }
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}

/// The entity and changes of one entry, or why it is refused.
fn check(entry: &AskedEntry) -> Result<(Entity, Vec<Change>), String> {
    let entity = Entity::from_components(
        entry
            .entity
            .iter()
            .map(|e| (e.entity_type.as_str(), e.entity_name.as_deref())),
    )?;
    let mut changes: Vec<Change> = Vec::with_capacity(entry.ops.len());
    for op in &entry.ops {
        let key = QuotaKey::parse(&op.key)?;
        entity.takes(key)?;
        if changes.iter().any(|(k, _)| *k == key) {
            return Err(format!("{} is changed twice", key.name()));
        }
        if op.remove {
            changes.push((key, None));
        } else {
            check_value(key, op.value)?;
            changes.push((key, Some(op.value)));
        }
    }
    Ok((entity, changes))
}
