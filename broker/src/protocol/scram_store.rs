//! SCRAM credentials made over the protocol (AlterUserScramCredentials, KIP-554:
//! `kafka-configs --alter --add-config 'SCRAM-SHA-256=[password=...]' --entity-type users`,
//! admin clients' `alter_user_scram_credentials`).
//!
//! They are kept in the metadata database as Kafka keeps them: per user and mechanism, the salt,
//! the iteration count, the StoredKey and the ServerKey; the client salts the password itself,
//! so the broker never sees it. They serve SCRAM logins on every Kafka listener that takes SASL
//! (one with a `sasl_plain_file`), and for their mechanism they take precedence over the users
//! file's: a user made or changed here logs in with the password given here. A user only made
//! here has no password for PLAIN. Users of the file itself are changed in the file.
//!
//! The salt and iteration count of such a user are the ones given, so unlike a file user's
//! they tell a client that asks that the user exists (as in Kafka).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::scram::{Scram, ScramUser};
use crate::meta::{MetaError, MetaStore};

/// The credentials of users and mechanisms.
pub type Credentials = BTreeMap<(String, Scram), Arc<ScramUser>>;

/// The SCRAM credentials made with AlterUserScramCredentials.
pub struct ScramStore {
    meta: MetaStore,
    users: RwLock<Arc<Credentials>>,
    /// Held by a change from its read to its swap, so that two at once lose nothing.
    changing: Mutex<()>,
}

impl std::fmt::Debug for ScramStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramStore")
            .field("credentials", &self.current().len())
            .finish_non_exhaustive()
    }
}

/// One change of an AlterUserScramCredentials request.
pub enum Change {
    Upsert(String, Scram, ScramUser),
    Delete(String, Scram),
}

impl ScramStore {
    /// The credentials kept in `meta`.
    pub fn open(meta: MetaStore) -> Result<ScramStore, MetaError> {
        let users = meta.scram_credentials()?;
        Ok(ScramStore {
            meta,
            users: RwLock::new(Arc::new(users)),
            changing: Mutex::new(()),
        })
    }

    fn current(&self) -> Arc<Credentials> {
        self.users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `user`'s credentials for `mechanism`, if made here.
    pub fn get(&self, mechanism: Scram, user: &str) -> Option<Arc<ScramUser>> {
        self.current().get(&(user.to_string(), mechanism)).cloned()
    }

    /// Every credential made here.
    pub fn all(&self) -> Arc<Credentials> {
        self.current()
    }

    /// Applies `changes` in one metadata transaction. A deletion of a credential that is not
    /// here is the caller's to refuse first ([`ScramStore::get`]).
    pub fn apply(&self, changes: Vec<Change>) -> Result<(), MetaError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Credentials::clone(&self.current());
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for change in changes {
            match change {
                Change::Upsert(user, mechanism, keys) => {
                    let keys = Arc::new(keys);
                    puts.push((user.clone(), mechanism, keys.clone()));
                    next.insert((user, mechanism), keys);
                }
                Change::Delete(user, mechanism) => {
                    next.remove(&(user.clone(), mechanism));
                    deletes.push((user, mechanism));
                }
            }
        }
        self.meta.change_scram_credentials(&puts, &deletes)?;
        *self.users.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }
}
