//! AlterUserScramCredentials (key 51, KIP-554): makes, changes and deletes users' SCRAM
//! credentials, for `kafka-configs --alter --add-config 'SCRAM-SHA-256=[password=...]'
//! --entity-type users --entity-name alice` and `AdminClient.alterUserScramCredentials`. The
//! client salts the password; the broker keeps the salt, the iteration count and the keys
//! derived from the salted password (`scram_store`), in one metadata transaction per request.
//!
//! As in Kafka, the answer has one result per user, and a user's changes apply only if all of
//! them are valid: a name that is empty, a mechanism other than SCRAM-SHA-256 or -512
//! (UNSUPPORTED_SASL_MECHANISM), fewer than 4,096 or more than 16,384 iterations, an empty salt
//! or a salted password of the wrong length (UNACCEPTABLE_CREDENTIAL), a user and mechanism
//! changed twice (DUPLICATE_RESOURCE), or the deletion of a credential not made this way
//! (RESOURCE_NOT_FOUND: users of a users file are removed from the file).
//!
//! Who may: with ACLs on, a client allowed Alter on the cluster (`crate::acl`); with ACLs off,
//! only a client that logged in with SASL on a Kafka listener (a user of a users file, or one
//! made here). Kafka without an authorizer lets any client alter credentials; here the plaintext
//! listener on loopback and the QUIC listener serve clients that proved nothing by default, and
//! such a client could otherwise give itself any user's login. Others get
//! CLUSTER_AUTHORIZATION_FAILED.
//!
//! In a cluster a follower forwards the request to the leader in an Envelope (judged there by
//! the client's rights; with ACLs off the leader refuses it, as a client that did not log in on
//! it), so credentials made over the protocol are the leader's, and log clients in there only.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};

use super::s;
use crate::protocol::scram::{ITERATIONS, Scram, ScramUser, salted_password_len};
use crate::protocol::scram_store::Change;
use crate::protocol::{Ctx, ListenerKind};

/// Kafka's bounds on the iteration count of a SCRAM credential.
const MAX_ITERATIONS: i32 = 16_384;

/// Why a change is refused: the error code and the message.
type Refusal = (E, String);

/// A user's changes, or why they are refused.
type UserChanges = Result<Vec<Change>, Refusal>;

pub async fn handle(
    ctx: Ctx,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let refused = if ctx.broker.acls.enabled() {
        !ctx.allowed_on_cluster(crate::acl::Operation::Alter)
    } else {
        let session = &ctx.session;
        session.listener == ListenerKind::Quic || !session.identity.uses_sasl()
    };
    // In a cluster the credentials are made on the leader, judged by the client's rights there
    // (an Envelope): a follower's own super users or users may not mint a login that the leader
    // would then take forwarded requests from.
    if !refused {
        match super::forward_to_leader(&ctx, &req).await {
            None => {}
            Some(Ok(answer)) => return answer,
            Some(Err(why)) => {
                let results = req
                    .deletions
                    .iter()
                    .map(|d| d.name.clone())
                    .chain(req.upsertions.iter().map(|u| u.name.clone()))
                    .map(|user| {
                        AlterUserScramCredentialsResult::default()
                            .with_user(user)
                            .with_error_code(E::NotController.code())
                            .with_error_message(Some(s(why.as_str())))
                    })
                    .collect();
                return AlterUserScramCredentialsResponse::default().with_results(results);
            }
        }
    }
    // Users in the order first named, each with its changes or the first error among them.
    let mut users: BTreeMap<String, (usize, UserChanges)> = BTreeMap::new();
    // A credential named twice is refused before anything else is checked, as in Kafka.
    let twice = super::repeated(
        req.deletions
            .iter()
            .map(|d| (d.name.to_string(), d.mechanism))
            .chain(
                req.upsertions
                    .iter()
                    .map(|u| (u.name.to_string(), u.mechanism)),
            ),
    );
    let mut add = |user: &str, mechanism: i8, change: Result<Change, Refusal>| {
        let order = users.len();
        let entry = users
            .entry(user.to_string())
            .or_insert_with(|| (order, Ok(Vec::new())));
        let change = if twice.contains(&(user.to_string(), mechanism)) {
            Err((
                E::DuplicateResource,
                "a credential is altered twice in the request".to_string(),
            ))
        } else {
            change
        };
        match (&mut entry.1, change) {
            (Ok(changes), Ok(c)) => changes.push(c),
            (Ok(_), Err(e)) => entry.1 = Err(e),
            (Err(_), _) => {}
        }
    };
    for d in &req.deletions {
        let change = checked_user(&d.name)
            .and_then(|_| mechanism(d.mechanism))
            .and_then(|m| match ctx.broker.scram.get(m, &d.name) {
                Some(_) => Ok(Change::Delete(d.name.to_string(), m)),
                None => Err((
                    E::ResourceNotFound,
                    format!(
                        "no {} credential of {:?} was made with AlterUserScramCredentials \
                         (users of a users file are removed from the file)",
                        m.name(),
                        d.name.as_str()
                    ),
                )),
            });
        add(&d.name, d.mechanism, change);
    }
    for u in &req.upsertions {
        let change = checked_user(&u.name)
            .and_then(|_| mechanism(u.mechanism))
            .and_then(|m| {
                if u.iterations < ITERATIONS as i32 {
                    return Err((
                        E::UnacceptableCredential,
                        format!("too few iterations: at least {ITERATIONS}"),
                    ));
                }
                if u.iterations > MAX_ITERATIONS {
                    return Err((
                        E::UnacceptableCredential,
                        format!("too many iterations: at most {MAX_ITERATIONS}"),
                    ));
                }
                if u.salt.is_empty() {
                    return Err((E::UnacceptableCredential, "the salt is empty".to_string()));
                }
                if u.salted_password.len() != salted_password_len(m) {
                    return Err((
                        E::UnacceptableCredential,
                        format!(
                            "a {} salted password has {} bytes, not {}",
                            m.name(),
                            salted_password_len(m),
                            u.salted_password.len()
                        ),
                    ));
                }
                let keys = ScramUser::from_salted_password(
                    m,
                    u.salt.to_vec(),
                    u.iterations as u32,
                    &u.salted_password,
                );
                Ok(Change::Upsert(u.name.to_string(), m, keys))
            });
        add(&u.name, u.mechanism, change);
    }
    let mut users: Vec<(String, usize, UserChanges)> = users
        .into_iter()
        .map(|(user, (order, r))| (user, order, r))
        .collect();
    users.sort_by_key(|(_, order, _)| *order);

    let mut changes = Vec::new();
    let mut results: Vec<(String, Option<Refusal>)> = Vec::new();
    for (user, _, r) in users {
        match r {
            _ if refused => results.push((
                user,
                Some((
                    E::ClusterAuthorizationFailed,
                    if ctx.broker.acls.enabled() {
                        "altering credentials needs Alter on the cluster".to_string()
                    } else {
                        "altering credentials needs a SASL login on a Kafka listener (or ACLs \
                         allowing Alter on the cluster)"
                            .to_string()
                    },
                )),
            )),
            Ok(mut c) => {
                changes.append(&mut c);
                results.push((user, None));
            }
            Err(e) => results.push((user, Some(e))),
        }
    }
    if !changes.is_empty() {
        let store = ctx.broker.scram.clone();
        let stored = tokio::task::spawn_blocking(move || store.apply(changes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match stored {
            Ok(()) => tracing::info!(
                users = results.iter().filter(|(_, e)| e.is_none()).count(),
                principal = ctx.asker().principal,
                "SCRAM credentials altered"
            ),
            Err(why) => {
                for (_, e) in results.iter_mut().filter(|(_, e)| e.is_none()) {
                    *e = Some((E::UnknownServerError, format!("not stored: {why}")));
                }
            }
        }
    }
    let results = results
        .into_iter()
        .map(|(user, e)| {
            let r = AlterUserScramCredentialsResult::default().with_user(s(user));
            match e {
                None => r,
                Some((code, why)) => r
                    .with_error_code(code.code())
                    .with_error_message(Some(s(why))),
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

fn checked_user(name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err((
            E::UnacceptableCredential,
            "the user name is empty".to_string(),
        ));
    }
    Ok(())
}

fn mechanism(code: i8) -> Result<Scram, Refusal> {
    Scram::from_kafka_type(code).ok_or_else(|| {
        (
            E::UnsupportedSaslMechanism,
            format!("mechanism {code} is not SCRAM-SHA-256 (1) or SCRAM-SHA-512 (2)"),
        )
    })
}
