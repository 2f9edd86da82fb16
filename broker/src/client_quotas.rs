//! Kafka client quotas per user and client id, as Kafka enforces them: byte rates, the share of
//! request-handling time, and the rate of topic and partition changes; and per IP address, the
//! rate of new connections; set with
//! AlterClientQuotas (`kafka-configs --alter --add-config producer_byte_rate=1048576
//! --entity-type users --entity-name alice`, an admin client's `alterClientQuotas`) and kept in
//! the metadata database across restarts.
//!
//! The map:
//! - [`Entity`]: what a quota is set on: a user, a client id, or a user and a client id; each
//!   part a name or the default (`--entity-default`), as in Kafka.
//! - [`ClientQuotas`]: the quotas in force ([`ClientQuotas::alter`], [`ClientQuotas::describe`])
//!   and the byte counts of the clients they apply to ([`ClientQuotas::charge`],
//!   [`ClientQuotas::allowance`]).
//! - Callers: `protocol::apis::produce` charges the record bytes of the request (after its
//!   appends; refused partitions count too, as Kafka counts the request) and answers with the
//!   throttle; `protocol::apis::fetch` bounds a consumer's response by what its quota has
//!   left, answers a consumer over its quota at once with nothing and the time to wait, and
//!   charges the record bytes it returns. Replica fetches of a cluster's followers are exempt,
//!   as in Kafka.
//! - `request_percentage` (KIP-124): `protocol::Typed` times each request's decoding and the
//!   polls of its handler (the time a runtime thread spent on it: not the time it waited, say
//!   for a long poll or for replicas; not the blocking work it handed to other threads, such as
//!   plugin calls) and charges it, in seconds, to a quota of `request_percentage / 100` seconds
//!   a second (100 is one thread's whole time, as in Kafka). Its throttle is at most a second,
//!   Kafka's quota window. Exempt, as in Kafka: SASL's requests, the requests only brokers send
//!   (Envelope, WriteTxnMarkers, replica fetches), and produce requests with acks 0.
//! - `controller_mutation_rate` (KIP-599): partitions created (CreateTopics, CreatePartitions)
//!   and deleted (DeleteTopics) a second. From CreateTopics v6, DeleteTopics v5 and
//!   CreatePartitions v3 on the quota is strict ([`take`]): a topic that passes every other
//!   check goes through whole while the client's bucket is not in debt, without a throttle, and
//!   one asked for while it is gets THROTTLING_QUOTA_EXCEEDED and the time to wait (the admin
//!   clients retry it then) while the others go on; older versions are let through and
//!   throttled after ([`charge`]), as Kafka does. Its debt is not capped (a change of thousands
//!   of partitions holds further changes back for as long as they take at the rate, as in
//!   Kafka); `validate_only` requests are neither refused nor charged.
//! - `connection_creation_rate` (KIP-612) on an IP address, or the default IP (each address
//!   counted alone): new connections a second from it, on every client listener of the broker
//!   that keeps the quotas (a cluster's leader); one over it is closed once its throttle has
//!   passed (TCP, TLS, as Kafka delays the close) or refused (QUIC)
//!   ([`ClientQuotas::take_connection`]). IP entities take this key only, and it is taken by
//!   them only, as in Kafka.
//!
//! Which quota applies to a request: for each key separately, the first entity that has one, in
//! Kafka's order: user and client id, user and default client id, user, default user and client
//! id, default user and default client id, default user, client id, default client id. The
//! clients counted together are Kafka's too: a quota on a user (or the default user) is shared
//! by all that user's client ids, one on a client id by all users of that client id, and one on
//! a pair counts that pair alone. The user is the principal's name (`alice` of `User:alice`;
//! `ANONYMOUS` for a client that proved nothing).
//!
//! How a rate is held: a token bucket per counted group of clients, filled at the quota's rate
//! and holding at most one second of it ([`BURST`]). A request takes its bytes out; a bucket
//! below zero answers with the time it takes to fill back to zero, which the client is told
//! (`throttle_time_ms`) and for which its connection is muted (`net::conn`), as Kafka does
//! since KIP-219. A byte rate's throttle is at most [`quota::MAX_THROTTLE_MS`], the cap the
//! quota plugins have too, and the debt behind it is bounded the same way (at the rate in
//! force: a lowered quota does not hold a client for the hours its old debt would take at the
//! new rate); `request_percentage` and `controller_mutation_rate` are bounded as above.
//!
//! Every response with a `throttle_time_ms` carries the longest throttle of its request,
//! whichever quota set it (`protocol::Typed`).
//!
//! Quota plugins (`plugins::quota`) throttle and reject by any rule besides; a request gets the
//! longer of the two throttles.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use kafka_protocol::messages::{ApiKey, FetchRequest};

use crate::acl::{CLUSTER_NAME, Operation, ResourceType};
use crate::broker::Broker;
use crate::log_budget::{LogBudget, within_budget};
use crate::meta::{MetaError, MetaStore};
use crate::plugins::quota;
use crate::protocol::Ctx;

/// The entity types of a quota, as the protocol names them.
pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const IP: &str = "ip";

/// How many seconds of its rate a bucket holds: the burst a client may send at once after a
/// quiet second, before it is throttled.
pub const BURST: f64 = 1.0;

/// Buckets kept before idle ones (full again) are dropped.
const MAX_BUCKETS: usize = 10_000;

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKey {
    /// Record bytes produced per second.
    ProducerByteRate,
    /// Record bytes fetched per second.
    ConsumerByteRate,
    /// Percent of one runtime thread's time spent on the client's requests.
    RequestPercentage,
    /// Partitions created or deleted per second.
    ControllerMutationRate,
    /// Connections opened per second from an IP address.
    ConnectionCreationRate,
}

impl QuotaKey {
    pub fn name(self) -> &'static str {
        match self {
            QuotaKey::ProducerByteRate => "producer_byte_rate",
            QuotaKey::ConsumerByteRate => "consumer_byte_rate",
            QuotaKey::RequestPercentage => "request_percentage",
            QuotaKey::ControllerMutationRate => "controller_mutation_rate",
            QuotaKey::ConnectionCreationRate => "connection_creation_rate",
        }
    }

    /// The key of `name`, or why it is refused.
    pub fn parse(name: &str) -> Result<QuotaKey, String> {
        match name {
            "producer_byte_rate" => Ok(QuotaKey::ProducerByteRate),
            "consumer_byte_rate" => Ok(QuotaKey::ConsumerByteRate),
            "request_percentage" => Ok(QuotaKey::RequestPercentage),
            "controller_mutation_rate" => Ok(QuotaKey::ControllerMutationRate),
            "connection_creation_rate" => Ok(QuotaKey::ConnectionCreationRate),
            _ => Err(format!(
                "{name:?} is not a client quota (producer_byte_rate, consumer_byte_rate, \
                 request_percentage, controller_mutation_rate or connection_creation_rate)"
            )),
        }
    }
}

impl QuotaKey {
    /// The rate a bucket of this key fills at, from the quota's value: the amounts charged are
    /// bytes, partitions, or seconds of a thread's time for `request_percentage`.
    fn rate(self, value: f64) -> f64 {
        match self {
            QuotaKey::RequestPercentage => value / 100.0,
            _ => value,
        }
    }

    /// The longest throttle of this key: for request time Kafka's quota window (a second).
    fn max_throttle_ms(self) -> u32 {
        match self {
            QuotaKey::RequestPercentage => 1000,
            _ => quota::MAX_THROTTLE_MS,
        }
    }

    /// The most a bucket of this key at `rate` may owe: what its longest throttle pays back;
    /// for partition changes, anything, as in Kafka.
    fn max_debt(self, rate: f64) -> f64 {
        match self {
            QuotaKey::ControllerMutationRate => f64::INFINITY,
            _ => rate * f64::from(self.max_throttle_ms()) / 1000.0,
        }
    }
}

/// One part of an entity: a name, or the default for every name without a quota of its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Name {
    Default,
    Named(String),
}

impl Name {
    fn as_option(&self) -> Option<&str> {
        match self {
            Name::Default => None,
            Name::Named(n) => Some(n),
        }
    }

    /// The kind and name kept in the metadata database (`meta::CLIENT_QUOTAS`).
    fn stored(part: &Option<Name>) -> (i8, String) {
        match part {
            None => (0, String::new()),
            Some(Name::Default) => (1, String::new()),
            Some(Name::Named(n)) => (2, n.clone()),
        }
    }

    fn from_stored((kind, name): (i8, String)) -> Option<Option<Name>> {
        match kind {
            0 => Some(None),
            1 => Some(Some(Name::Default)),
            2 => Some(Some(Name::Named(name))),
            _ => None,
        }
    }
}

/// What a quota is set on: a user, a client id or both; or an IP address alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity {
    pub user: Option<Name>,
    pub client_id: Option<Name>,
    /// A named IP address is kept in its canonical form (`IpAddr`'s, IPv4 for a mapped one).
    pub ip: Option<Name>,
}

impl Entity {
    /// The entity of a request's (type, name) components; a missing name is the default.
    pub fn from_components<'a>(
        parts: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<Entity, String> {
        let mut entity = Entity::default();
        for (kind, name) in parts {
            let name = match name {
                Some(n) => Name::Named(n.to_string()),
                None => Name::Default,
            };
            let slot = match kind {
                USER => &mut entity.user,
                CLIENT_ID => &mut entity.client_id,
                IP => &mut entity.ip,
                other => {
                    return Err(format!(
                        "{other:?} is not an entity type (user, client-id, ip)"
                    ));
                }
            };
            let name = match (kind, name) {
                // As Kafka refuses it: the default entity is the one without a name.
                (_, Name::Named(n)) if n.is_empty() => {
                    return Err(format!("an empty {kind} name is not supported"));
                }
                (IP, Name::Named(n)) => match n.parse::<IpAddr>() {
                    Ok(addr) => Name::Named(addr.to_canonical().to_string()),
                    Err(_) => return Err(format!("{n:?} is not an IP address")),
                },
                (_, name) => name,
            };
            if slot.replace(name).is_some() {
                return Err(format!("the entity names {kind} twice"));
            }
        }
        if entity.ip.is_some() && (entity.user.is_some() || entity.client_id.is_some()) {
            return Err(
                "an IP address quota names the address alone (no user or client id)".into(),
            );
        }
        if entity.user.is_none() && entity.client_id.is_none() && entity.ip.is_none() {
            return Err("the entity is empty (name a user, a client id or both, or an IP)".into());
        }
        Ok(entity)
    }

    /// Whether `key` may be set on this entity: connection_creation_rate on an IP address and
    /// the other keys on users and client ids, as Kafka has it.
    pub fn takes(&self, key: QuotaKey) -> Result<(), String> {
        match (self.ip.is_some(), key == QuotaKey::ConnectionCreationRate) {
            (true, false) => Err(format!(
                "{}: an IP address takes connection_creation_rate only",
                key.name()
            )),
            (false, true) => {
                Err("connection_creation_rate is set on an IP address (entity type ip)".to_string())
            }
            _ => Ok(()),
        }
    }

    /// The parts kept in the metadata database (`meta::CLIENT_QUOTAS`): (kind, name) of the
    /// user and of the client id; an IP entity's address takes the user's place, kinds 3
    /// (default) and 4 (named).
    fn stored(&self) -> ((i8, String), (i8, String)) {
        match &self.ip {
            Some(Name::Default) => ((3, String::new()), (0, String::new())),
            Some(Name::Named(ip)) => ((4, ip.clone()), (0, String::new())),
            None => (Name::stored(&self.user), Name::stored(&self.client_id)),
        }
    }

    fn from_stored(user: (i8, String), client: (i8, String)) -> Option<Entity> {
        match user {
            (3, _) => Some(Entity {
                ip: Some(Name::Default),
                ..Entity::default()
            }),
            (4, ip) => Some(Entity {
                ip: Some(Name::Named(ip)),
                ..Entity::default()
            }),
            user => Some(Entity {
                user: Name::from_stored(user)?,
                client_id: Name::from_stored(client)?,
                ip: None,
            }),
        }
    }

    /// The entity's (type, name) components, user first; `None` is the default.
    pub fn components(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut out = Vec::with_capacity(2);
        if let Some(u) = &self.user {
            out.push((USER, u.as_option()));
        }
        if let Some(c) = &self.client_id {
            out.push((CLIENT_ID, c.as_option()));
        }
        if let Some(ip) = &self.ip {
            out.push((IP, ip.as_option()));
        }
        out
    }

    fn part(&self, kind: &str) -> Option<&Name> {
        match kind {
            USER => self.user.as_ref(),
            CLIENT_ID => self.client_id.as_ref(),
            IP => self.ip.as_ref(),
            _ => None,
        }
    }
}

/// How a filter of DescribeClientQuotas matches one entity type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// That name.
    Exact(String),
    /// The default entity.
    Default,
    /// Any entity of the type, the default included.
    Any,
}

/// A DescribeClientQuotas filter: its components, and whether entities may have parts the
/// filter does not name (`strict` false).
pub struct Filter {
    pub components: Vec<(String, Match)>,
    pub strict: bool,
}

impl Filter {
    /// Checks the filter: known entity types, each at most once.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = Vec::new();
        for (kind, _) in &self.components {
            match kind.as_str() {
                USER | CLIENT_ID | IP => {}
                other => {
                    return Err(format!(
                        "{other:?} is not an entity type (user, client-id, ip)"
                    ));
                }
            }
            if seen.contains(&kind) {
                return Err(format!("the filter names {kind} twice"));
            }
            seen.push(kind);
        }
        Ok(())
    }

    fn matches(&self, entity: &Entity) -> bool {
        let named = |kind: &str| self.components.iter().any(|(k, _)| k == kind);
        if self.strict
            && ((entity.user.is_some() && !named(USER))
                || (entity.client_id.is_some() && !named(CLIENT_ID))
                || (entity.ip.is_some() && !named(IP)))
        {
            return false;
        }
        self.components
            .iter()
            .all(|(kind, m)| match (entity.part(kind), m) {
                (None, _) => false,
                (Some(_), Match::Any) => true,
                (Some(Name::Default), Match::Default) => true,
                (Some(Name::Named(n)), Match::Exact(want)) if kind == IP => {
                    // Addresses are kept canonical: so is the one asked for.
                    want.parse::<IpAddr>()
                        .map_or(n == want, |ip| *n == ip.to_canonical().to_string())
                }
                (Some(Name::Named(n)), Match::Exact(want)) => n == want,
                _ => false,
            })
    }
}

/// What one part of an entity is, whatever the name: the shape of the entities a quota lookup
/// tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Absent,
    Default,
    Named,
}

impl Part {
    fn of(name: &Option<Name>) -> Part {
        match name {
            None => Part::Absent,
            Some(Name::Default) => Part::Default,
            Some(Name::Named(_)) => Part::Named,
        }
    }
}

/// The entities a client's quota is looked up in, first match wins: Kafka's order.
const ORDER: [(Part, Part); 8] = [
    (Part::Named, Part::Named),
    (Part::Named, Part::Default),
    (Part::Named, Part::Absent),
    (Part::Default, Part::Named),
    (Part::Default, Part::Default),
    (Part::Default, Part::Absent),
    (Part::Absent, Part::Named),
    (Part::Absent, Part::Default),
];

fn shape_bit(user: Part, client_id: Part) -> u16 {
    1 << (user as u16 * 3 + client_id as u16)
}

/// The shapes of the entities that have a quota, as bits of [`shape_bit`].
fn shapes(table: &Table) -> u16 {
    table.keys().filter(|e| e.ip.is_none()).fold(0, |bits, e| {
        bits | shape_bit(Part::of(&e.user), Part::of(&e.client_id))
    })
}

/// One change of an AlterClientQuotas entry: a value to set, or `None` to remove the key.
pub type Change = (QuotaKey, Option<f64>);

/// The quotas of each entity.
type Table = BTreeMap<Entity, BTreeMap<QuotaKey, f64>>;

/// The quotas in force and the shapes of their entities ([`shapes`]), swapped together.
struct InForce {
    quotas: Table,
    shapes: u16,
}

impl InForce {
    fn new(quotas: Table) -> Arc<InForce> {
        let shapes = shapes(&quotas);
        Arc::new(InForce { quotas, shapes })
    }

    /// Whether some entity has a `request_percentage`: then requests are timed.
    fn times_requests(&self) -> bool {
        self.quotas
            .values()
            .any(|keys| keys.contains_key(&QuotaKey::RequestPercentage))
    }
}

/// Whose bytes a bucket counts: the key, the shape of the entity whose quota it is (a
/// [`shape_bit`]), and the user and client id of the counted group ("" for a part the quota
/// does not tell apart).
type BucketKey = (QuotaKey, u16, String, String);

struct Bucket {
    /// Bytes (partitions, seconds) that may still pass before a throttle; below zero, owed.
    credit: f64,
    /// The rate it was last filled at.
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, key: QuotaKey, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        // Never more than a second's worth, and never a debt longer than the longest throttle
        // at the rate now in force (the quota may have been lowered since it was run up).
        self.credit = (self.credit + elapsed * rate).clamp(-key.max_debt(rate), rate * BURST);
        self.rate = rate;
        self.at = now;
    }

    /// Takes `amount` out, down to the key's longest debt; the throttle it earns (ms).
    fn charge(&mut self, key: QuotaKey, rate: f64, amount: f64) -> u32 {
        self.credit = (self.credit - amount).max(-key.max_debt(rate));
        owed_ms(key, self.credit, rate)
    }

    /// Takes `amount` out if the bucket is not in debt (Kafka's strict quota: what is asked goes
    /// through whole while anything is left, without a throttle); `Err`: the throttle it is
    /// under (ms), nothing taken.
    fn take(&mut self, key: QuotaKey, rate: f64, amount: f64) -> Result<(), u32> {
        match owed_ms(key, self.credit, rate) {
            0 => {
                self.charge(key, rate, amount);
                Ok(())
            }
            ms => Err(ms),
        }
    }

    /// Whether it would be full by `now`: then it holds nothing a new bucket would not.
    fn full_by(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.credit + elapsed * self.rate >= self.rate * BURST
    }
}

/// The buckets of the clients under a quota, and when full ones were last dropped.
struct Buckets {
    map: HashMap<BucketKey, Bucket>,
    swept: Instant,
}

/// What a quota lets the client take now: for a consumer's, what its next fetch may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// No quota applies.
    Unlimited,
    /// At most this much (for a fetch, the first batch always passes whole, as for
    /// `max_bytes`).
    Bytes(u64),
    /// Nothing before this many milliseconds.
    Throttled(u32),
}

/// The client quotas in force and the byte counts they are held to.
pub struct ClientQuotas {
    meta: MetaStore,
    table: RwLock<Arc<InForce>>,
    /// Whether any quota is set: when none is, requests skip every lookup.
    any: AtomicBool,
    /// Whether a `request_percentage` is set: when none is, requests are not timed.
    timing: AtomicBool,
    buckets: Mutex<Buckets>,
    /// Held by a change from its read to its swap, so that two at once lose nothing.
    changing: Mutex<()>,
}

impl std::fmt::Debug for ClientQuotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientQuotas")
            .field("entities", &self.current().quotas.len())
            .finish_non_exhaustive()
    }
}

impl ClientQuotas {
    /// The quotas kept in `meta`; a row that cannot be read is skipped with a warning.
    pub fn open(meta: MetaStore) -> Result<ClientQuotas, MetaError> {
        let mut table = Table::new();
        for record in meta.client_quotas()? {
            let ((uk, user), (ck, client), key, value) = record;
            match (
                Entity::from_stored((uk, user), (ck, client)),
                QuotaKey::parse(&key),
            ) {
                (Some(entity), Ok(k)) => {
                    table.entry(entity).or_default().insert(k, value);
                }
                _ => tracing::warn!(key, "unreadable client quota skipped"),
            }
        }
        let in_force = InForce::new(table);
        let quotas = ClientQuotas {
            meta,
            any: AtomicBool::new(!in_force.quotas.is_empty()),
            timing: AtomicBool::new(in_force.times_requests()),
            table: RwLock::new(in_force),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
            changing: Mutex::new(()),
        };
        Ok(quotas)
    }

    fn current(&self) -> Arc<InForce> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The entities the filter matches, with their quotas.
    pub fn describe(&self, filter: &Filter) -> Vec<(Entity, Vec<(QuotaKey, f64)>)> {
        self.current()
            .quotas
            .iter()
            .filter(|(entity, _)| filter.matches(entity))
            .map(|(entity, values)| {
                let values = values.iter().map(|(k, v)| (*k, *v)).collect();
                (entity.clone(), values)
            })
            .collect()
    }

    /// Applies the changes of each entity in one metadata transaction; they take effect at once.
    pub fn alter(&self, changes: &[(Entity, Vec<Change>)]) -> Result<(), MetaError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows = Vec::new();
        let mut next = Table::clone(&self.current().quotas);
        for (entity, ops) in changes {
            let quotas = next.entry(entity.clone()).or_default();
            let (user, client_id) = entity.stored();
            for (key, value) in ops {
                rows.push((
                    user.clone(),
                    client_id.clone(),
                    key.name().to_string(),
                    *value,
                ));
                match value {
                    Some(v) => quotas.insert(*key, *v),
                    None => quotas.remove(key),
                };
            }
            if quotas.is_empty() {
                next.remove(entity);
            }
        }
        self.meta.change_client_quotas(&rows)?;
        let next = InForce::new(next);
        let (any, timing) = (!next.quotas.is_empty(), next.times_requests());
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = next;
        self.any.store(any, Ordering::Relaxed);
        self.timing.store(timing, Ordering::Relaxed);
        Ok(())
    }

    /// The quota of `key` for `user` and `client_id`, and the group of clients it counts
    /// together (Kafka's order; see the module's documentation).
    fn resolve(&self, key: QuotaKey, user: &str, client_id: &str) -> Option<(BucketKey, f64)> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let table = self.current();
        let part = |kind: Part, name: &str| match kind {
            Part::Absent => None,
            Part::Default => Some(Name::Default),
            Part::Named => Some(Name::Named(name.to_string())),
        };
        ORDER.into_iter().find_map(|(u, c)| {
            // Shapes no quota has are skipped without building their entity.
            if table.shapes & shape_bit(u, c) == 0 {
                return None;
            }
            let entity = Entity {
                user: part(u, user),
                client_id: part(c, client_id),
                ip: None,
            };
            let rate = key.rate(*table.quotas.get(&entity)?.get(&key)?);
            // A quota on a user (or the default user) alone counts all its client ids
            // together; one that names no user counts all users of a client id together.
            let group = (
                key,
                shape_bit(u, c),
                if u == Part::Absent { "" } else { user }.to_string(),
                if c == Part::Absent { "" } else { client_id }.to_string(),
            );
            Some((group, rate))
        })
    }

    /// Whether requests are timed for a `request_percentage` quota.
    pub fn times_requests(&self) -> bool {
        self.timing.load(Ordering::Relaxed)
    }

    /// Takes `amount` (bytes, partitions or seconds, as `key` counts) from the quota of `key`
    /// that applies to the client; the throttle it earns in milliseconds (0 when within its
    /// quota or under none).
    pub fn charge(&self, key: QuotaKey, user: &str, client_id: &str, amount: f64) -> u32 {
        self.charge_at(key, user, client_id, amount, Instant::now())
    }

    fn charge_at(
        &self,
        key: QuotaKey,
        user: &str,
        client_id: &str,
        amount: f64,
        now: Instant,
    ) -> u32 {
        let Some((group, rate)) = self.resolve(key, user, client_id) else {
            return 0;
        };
        self.with_bucket(group, rate, now, |b| b.charge(key, rate, amount))
    }

    /// Takes `amount` from the quota of `key` that applies to the client if its bucket is not
    /// in debt (Kafka's strict quota: what is asked goes through whole while anything is left,
    /// without a throttle); `Err`: the throttle it is under (ms), nothing taken.
    pub fn take(&self, key: QuotaKey, user: &str, client_id: &str, amount: f64) -> Result<(), u32> {
        self.take_at(key, user, client_id, amount, Instant::now())
    }

    fn take_at(
        &self,
        key: QuotaKey,
        user: &str,
        client_id: &str,
        amount: f64,
        now: Instant,
    ) -> Result<(), u32> {
        let Some((group, rate)) = self.resolve(key, user, client_id) else {
            return Ok(());
        };
        self.with_bucket(group, rate, now, |b| b.take(key, rate, amount))
    }

    /// The `connection_creation_rate` of `ip` (canonical): the address's own, else the default
    /// IP's; none when neither is set.
    fn connection_rate(&self, ip: &str) -> Option<f64> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let table = self.current();
        [Name::Named(ip.to_string()), Name::Default]
            .into_iter()
            .find_map(|name| {
                let entity = Entity {
                    ip: Some(name),
                    ..Entity::default()
                };
                table
                    .quotas
                    .get(&entity)?
                    .get(&QuotaKey::ConnectionCreationRate)
                    .copied()
            })
    }

    /// Counts a new connection from `ip` against its `connection_creation_rate` (the address's
    /// own, else the default IP's, each address counted alone): `Err(ms)` when the address is
    /// over it, and the connection is to be turned away.
    pub fn take_connection(&self, ip: IpAddr) -> Result<(), u32> {
        let ip = ip.to_canonical().to_string();
        let Some(rate) = self.connection_rate(&ip) else {
            return Ok(());
        };
        let key = QuotaKey::ConnectionCreationRate;
        self.with_bucket((key, 0, ip, String::new()), rate, Instant::now(), |b| {
            b.take(key, rate, 1.0)
        })
    }

    /// Whether a `connection_creation_rate` applies to connections from `ip`.
    pub fn limits_connections(&self, ip: IpAddr) -> bool {
        self.connection_rate(&ip.to_canonical().to_string())
            .is_some()
    }

    /// Whether a quota of `key` applies to the client.
    pub fn limits(&self, key: QuotaKey, user: &str, client_id: &str) -> bool {
        self.resolve(key, user, client_id).is_some()
    }

    /// What the quota of `key` lets the client take now, without taking it.
    pub fn allowance(&self, key: QuotaKey, user: &str, client_id: &str) -> Allowance {
        self.allowance_at(key, user, client_id, Instant::now())
    }

    fn allowance_at(&self, key: QuotaKey, user: &str, client_id: &str, now: Instant) -> Allowance {
        let Some((group, rate)) = self.resolve(key, user, client_id) else {
            return Allowance::Unlimited;
        };
        self.with_bucket(group, rate, now, |b| match owed_ms(key, b.credit, rate) {
            0 => Allowance::Bytes(b.credit.max(0.0) as u64),
            ms => Allowance::Throttled(ms),
        })
    }

    fn with_bucket<T>(
        &self,
        group: BucketKey,
        rate: f64,
        now: Instant,
        f: impl FnOnce(&mut Bucket) -> T,
    ) -> T {
        let mut guard = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Buckets { map, swept } = &mut *guard;
        // Full buckets are dropped (a new one starts full: nothing is lost), at most once a
        // second, so a fleet of more client ids than that does not pay a sweep per request.
        if map.len() >= MAX_BUCKETS
            && !map.contains_key(&group)
            && now.saturating_duration_since(*swept) >= std::time::Duration::from_secs(1)
        {
            map.retain(|_, b| !b.full_by(now));
            *swept = now;
        }
        let key = group.0;
        let bucket = map.entry(group).or_insert(Bucket {
            credit: rate * BURST,
            rate,
            at: now,
        });
        bucket.refill(key, rate, now);
        f(bucket)
    }
}

/// The user and client id a request's quotas are looked up by.
fn client_of(ctx: &Ctx) -> (&str, &str) {
    (user_of(ctx.asker().principal), &ctx.client_id)
}

/// Takes `amount` (bytes, partitions or seconds) from the client's quota of `key`: the
/// throttle it earns (ms), handed to the connection to mute it and counted.
pub fn charge(ctx: &Ctx, key: QuotaKey, amount: f64) -> i32 {
    let quotas = &ctx.broker.client_quotas;
    if !quotas.any.load(Ordering::Relaxed) {
        return 0;
    }
    let (user, client_id) = client_of(ctx);
    let ms = quotas.charge(key, user, client_id, amount);
    if ms > 0 {
        throttled(ctx, key, user, client_id, ms);
    }
    ms as i32
}

/// What the client's quota of `key` lets it take now; a throttle is handed to the connection
/// and counted as [`charge`]'s.
pub fn allowance(ctx: &Ctx, key: QuotaKey) -> Allowance {
    let quotas = &ctx.broker.client_quotas;
    if !quotas.any.load(Ordering::Relaxed) {
        return Allowance::Unlimited;
    }
    let (user, client_id) = client_of(ctx);
    let allowance = quotas.allowance(key, user, client_id);
    if let Allowance::Throttled(ms) = allowance {
        throttled(ctx, key, user, client_id, ms);
    }
    allowance
}

/// Whether a request is one whose handling time counts against `request_percentage`: a quota
/// of it is set, and the request is not exempt. Exempt, as in Kafka: SASL's requests (Kafka
/// answers them outside its request handlers) and the requests only brokers send (Envelope,
/// WriteTxnMarkers, the replica fetches of a client allowed ClusterAction). (Produce requests
/// with acks 0, also exempt, are left out by the caller.)
pub fn timed(ctx: &Ctx, api: ApiKey, request: &dyn Any) -> bool {
    if !ctx.broker.client_quotas.times_requests() {
        return false;
    }
    let replica_fetch = || {
        request
            .downcast_ref::<FetchRequest>()
            .is_some_and(|f| f.replica_id.0 >= 0 || f.replica_state.replica_id.0 >= 0)
            && ctx.broker.acls.allowed(
                ctx.asker(),
                Operation::ClusterAction,
                ResourceType::Cluster,
                CLUSTER_NAME,
            )
    };
    match api {
        ApiKey::SaslHandshake
        | ApiKey::SaslAuthenticate
        | ApiKey::Envelope
        | ApiKey::WriteTxnMarkers => false,
        ApiKey::Fetch => !replica_fetch(),
        _ => true,
    }
}

/// Connections turned away by a `connection_creation_rate`, logged per minute.
static REFUSED_CONNECTIONS: LogBudget = LogBudget::new(10);

/// Whether a new connection from `peer` on `listener` may go on by its address's
/// `connection_creation_rate` ([`ClientQuotas::take_connection`]); one that may not (`Err`: the
/// throttle, ms) is counted as a throttle and logged (within a budget), and the caller closes
/// or refuses it.
pub fn admit_connection(broker: &Broker, peer: SocketAddr, listener: &str) -> Result<(), u32> {
    match broker.client_quotas.take_connection(peer.ip()) {
        Ok(()) => Ok(()),
        Err(ms) => {
            broker
                .metrics
                .client_quota_throttled
                .fetch_add(1, Ordering::Relaxed);
            within_budget!(REFUSED_CONNECTIONS, info, %peer, listener, retry_in_ms = ms, "connection turned away: its address is over its connection_creation_rate");
            Err(ms)
        }
    }
}

/// Whether a quota of `key` applies to the client.
pub fn limits(ctx: &Ctx, key: QuotaKey) -> bool {
    let quotas = &ctx.broker.client_quotas;
    if !quotas.any.load(Ordering::Relaxed) {
        return false;
    }
    let (user, client_id) = client_of(ctx);
    quotas.limits(key, user, client_id)
}

/// Takes `amount` from the client's quota of `key` if it is not in debt (Kafka's strict
/// quota, for `controller_mutation_rate` from CreateTopics v6, CreatePartitions v3 and
/// DeleteTopics v5): `Err(ms)`, the throttle it is under, when it is; that throttle is handed
/// to the connection and counted as [`charge`]'s. What goes through is not throttled.
pub fn take(ctx: &Ctx, key: QuotaKey, amount: f64) -> Result<(), u32> {
    let quotas = &ctx.broker.client_quotas;
    if !quotas.any.load(Ordering::Relaxed) {
        return Ok(());
    }
    let (user, client_id) = client_of(ctx);
    quotas.take(key, user, client_id, amount).inspect_err(|ms| {
        throttled(ctx, key, user, client_id, *ms);
    })
}

/// Gives back what [`take`] took for a change that then failed.
pub fn give_back(ctx: &Ctx, key: QuotaKey, amount: f64) {
    let (user, client_id) = client_of(ctx);
    ctx.broker
        .client_quotas
        .charge(key, user, client_id, -amount);
}

/// What a topic or partition change refused by [`take`] is answered with
/// (THROTTLING_QUOTA_EXCEEDED).
pub fn mutation_refusal(ms: u32) -> String {
    format!("the client's controller_mutation_rate quota is used up: try again in {ms} ms")
}

fn throttled(ctx: &Ctx, key: QuotaKey, user: &str, client_id: &str, ms: u32) {
    ctx.broker
        .metrics
        .client_quota_throttled
        .fetch_add(1, Ordering::Relaxed);
    ctx.throttle_ms.fetch_max(ms, Ordering::Relaxed);
    tracing::trace!(
        user,
        client_id,
        quota = key.name(),
        ms,
        "throttled by a client quota"
    );
}

/// Milliseconds until a bucket of `key` at `credit` is back at zero, at most the key's longest
/// throttle.
fn owed_ms(key: QuotaKey, credit: f64, rate: f64) -> u32 {
    if credit >= 0.0 || rate <= 0.0 {
        return 0;
    }
    let ms = (-credit / rate * 1000.0).ceil();
    (ms as u32).clamp(1, key.max_throttle_ms())
}

/// The user part of a principal: `alice` of `User:alice`.
pub fn user_of(principal: &str) -> &str {
    principal.strip_prefix("User:").unwrap_or(principal)
}

/// Checks a quota's value: a positive number, and for a byte rate or a connection rate a whole
/// one (Kafka's byte rates are LONG, its connection rate an INT, its other keys DOUBLE).
pub fn check_value(key: QuotaKey, value: f64) -> Result<(), String> {
    if !value.is_finite() || value <= 0.0 {
        return Err(format!(
            "{}: {value:?} is not a positive number",
            key.name()
        ));
    }
    if matches!(
        key,
        QuotaKey::RequestPercentage | QuotaKey::ControllerMutationRate
    ) {
        // A rate too small for the buckets to tell from none.
        if key.rate(value) < 1e-9 {
            return Err(format!("{}: {value:?} is too small", key.name()));
        }
        return Ok(());
    }
    if value.fract() != 0.0 {
        return Err(format!("{}: {value:?} is not a whole number", key.name()));
    }
    if key == QuotaKey::ConnectionCreationRate {
        // Kafka's connection_creation_rate is an INT.
        return if value > f64::from(i32::MAX) {
            Err(format!(
                "{}: {value:?} is more than an INT holds (2147483647)",
                key.name()
            ))
        } else {
            Ok(())
        };
    }
    // Kafka's byte rates are LONG values.
    if value >= i64::MAX as f64 {
        return Err(format!(
            "{}: {value:?} is more than a LONG holds (9223372036854775807)",
            key.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn quotas(dir: &std::path::Path) -> ClientQuotas {
        ClientQuotas::open(MetaStore::open(&dir.join("meta.redb")).unwrap()).unwrap()
    }

    fn entity(user: Option<Option<&str>>, client: Option<Option<&str>>) -> Entity {
        let part = |p: Option<Option<&str>>| {
            p.map(|n| n.map_or(Name::Default, |n| Name::Named(n.to_string())))
        };
        Entity {
            user: part(user),
            client_id: part(client),
            ip: None,
        }
    }

    fn set(q: &ClientQuotas, e: Entity, key: QuotaKey, v: f64) {
        q.alter(&[(e, vec![(key, Some(v))])]).unwrap();
    }

    #[test]
    fn kafkas_order_picks_the_quota_and_the_group_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(dir.path());
        let p = QuotaKey::ProducerByteRate;
        assert_eq!(q.resolve(p, "alice", "app"), None);
        set(&q, entity(None, Some(None)), p, 8.0);
        let at = |u: &str, c: &str| q.resolve(p, u, c).map(|((_, _, u, c), r)| (u, c, r));
        assert_eq!(at("alice", "app"), Some(("".into(), "app".into(), 8.0)));
        set(&q, entity(None, Some(Some("app"))), p, 7.0);
        assert_eq!(at("alice", "app"), Some(("".into(), "app".into(), 7.0)));
        set(&q, entity(Some(None), None), p, 6.0);
        assert_eq!(at("alice", "app"), Some(("alice".into(), "".into(), 6.0)));
        set(&q, entity(Some(None), Some(None)), p, 5.0);
        assert_eq!(
            at("alice", "app"),
            Some(("alice".into(), "app".into(), 5.0))
        );
        set(&q, entity(Some(None), Some(Some("app"))), p, 4.0);
        assert_eq!(
            at("alice", "app"),
            Some(("alice".into(), "app".into(), 4.0))
        );
        set(&q, entity(Some(Some("alice")), None), p, 3.0);
        assert_eq!(at("alice", "app"), Some(("alice".into(), "".into(), 3.0)));
        set(&q, entity(Some(Some("alice")), Some(None)), p, 2.0);
        assert_eq!(
            at("alice", "app"),
            Some(("alice".into(), "app".into(), 2.0))
        );
        set(&q, entity(Some(Some("alice")), Some(Some("app"))), p, 1.0);
        assert_eq!(
            at("alice", "app"),
            Some(("alice".into(), "app".into(), 1.0))
        );
        // Another user falls to the defaults; the consumer key is resolved on its own.
        assert_eq!(at("bob", "app"), Some(("bob".into(), "app".into(), 4.0)));
        assert_eq!(q.resolve(QuotaKey::ConsumerByteRate, "alice", "app"), None);
    }

    #[test]
    fn a_bucket_throttles_for_the_time_its_debt_takes_to_pay() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(dir.path());
        let p = QuotaKey::ProducerByteRate;
        set(&q, entity(Some(Some("alice")), None), p, 1000.0);
        let t0 = Instant::now();
        // A second's worth passes at once; 500 more are owed: half a second.
        assert_eq!(q.charge_at(p, "alice", "a", 1000.0, t0), 0);
        assert_eq!(q.charge_at(p, "alice", "b", 500.0, t0), 500);
        assert_eq!(
            q.allowance_at(p, "alice", "a", t0 + Duration::from_millis(100)),
            Allowance::Throttled(400)
        );
        // Paid back, then refilled: 300 bytes after 0.8 s.
        assert_eq!(
            q.allowance_at(p, "alice", "a", t0 + Duration::from_millis(800)),
            Allowance::Bytes(300)
        );
        // Never more than a second's worth, and a debt of at most the longest throttle.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            q.allowance_at(p, "alice", "a", later),
            Allowance::Bytes(1000)
        );
        assert_eq!(
            q.charge_at(p, "alice", "a", 10_000_000.0, later),
            quota::MAX_THROTTLE_MS
        );
        let after = later + Duration::from_millis(u64::from(quota::MAX_THROTTLE_MS));
        assert_eq!(q.allowance_at(p, "alice", "a", after), Allowance::Bytes(0));
        // Other users are not counted with alice.
        assert_eq!(q.charge_at(p, "bob", "a", 10.0, t0), 0);
    }

    #[test]
    fn a_lowered_quota_holds_a_debt_to_its_longest_throttle() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(dir.path());
        let c = QuotaKey::ConsumerByteRate;
        let e = entity(None, Some(Some("reader")));
        set(&q, e.clone(), c, 1_000_000.0);
        let t0 = Instant::now();
        // 30 MB owed at 1 MB/s: the longest throttle.
        assert_eq!(
            q.charge_at(c, "u", "reader", 31_000_000.0, t0),
            quota::MAX_THROTTLE_MS
        );
        // At 1 KB/s that debt would take 8 hours: it is held to 30 s of the new rate.
        set(&q, e, c, 1000.0);
        assert_eq!(
            q.allowance_at(c, "u", "reader", t0),
            Allowance::Throttled(quota::MAX_THROTTLE_MS)
        );
        assert_eq!(
            q.allowance_at(c, "u", "reader", t0 + Duration::from_secs(31)),
            Allowance::Bytes(1000)
        );
    }

    #[test]
    fn dropping_idle_buckets_keeps_a_debt() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(dir.path());
        let p = QuotaKey::ConsumerByteRate;
        set(&q, entity(None, Some(Some("debtor"))), p, 1000.0);
        set(&q, entity(None, Some(None)), p, 1e9);
        let t0 = Instant::now();
        assert_eq!(q.charge_at(p, "u", "debtor", 30_000.0, t0), 29_000);
        // More client ids than the table keeps, seconds later: the full buckets go, the debt
        // stays.
        let later = t0 + Duration::from_millis(1500);
        for i in 0..MAX_BUCKETS {
            q.charge_at(p, "u", &format!("client-{i}"), 1.0, later);
        }
        q.charge_at(p, "u", "one-more", 1.0, later + Duration::from_millis(1500));
        let buckets = q.buckets.lock().unwrap().map.len();
        assert_eq!(buckets, 2, "the debtor's and the new one's are kept");
        assert_eq!(
            q.allowance_at(p, "u", "debtor", t0 + Duration::from_secs(3)),
            Allowance::Throttled(26_000)
        );
    }

    #[test]
    fn quotas_survive_a_restart_and_removal_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let e = entity(Some(None), Some(Some("app")));
        {
            let q = quotas(dir.path());
            q.alter(&[(
                e.clone(),
                vec![
                    (QuotaKey::ProducerByteRate, Some(1024.0)),
                    (QuotaKey::ConsumerByteRate, Some(2048.0)),
                ],
            )])
            .unwrap();
        }
        let q = quotas(dir.path());
        let all = Filter {
            components: vec![],
            strict: false,
        };
        assert_eq!(
            q.describe(&all),
            vec![(
                e.clone(),
                vec![
                    (QuotaKey::ProducerByteRate, 1024.0),
                    (QuotaKey::ConsumerByteRate, 2048.0)
                ]
            )]
        );
        q.alter(&[(e.clone(), vec![(QuotaKey::ProducerByteRate, None)])])
            .unwrap();
        q.alter(&[(e, vec![(QuotaKey::ConsumerByteRate, None)])])
            .unwrap();
        assert!(q.describe(&all).is_empty());
        assert_eq!(q.resolve(QuotaKey::ConsumerByteRate, "x", "app"), None);
        drop(q);
        assert!(quotas(dir.path()).describe(&all).is_empty());
    }

    #[test]
    fn request_time_and_mutations_are_rates_too() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(dir.path());
        let t0 = Instant::now();
        let alice = || entity(Some(Some("alice")), None);
        // 10% of a thread: 0.1 s of handling a second, at most 0.1 s at once.
        set(&q, alice(), QuotaKey::RequestPercentage, 10.0);
        let r = QuotaKey::RequestPercentage;
        assert_eq!(q.charge_at(r, "alice", "a", 0.05, t0), 0);
        // 0.08 s more leaves 0.03 s owed: 300 ms at 0.1 s a second.
        assert_eq!(q.charge_at(r, "alice", "a", 0.08, t0), 300);
        // A long request owes at most a second's worth: Kafka's quota window.
        assert_eq!(q.charge_at(r, "alice", "a", 5.0, t0), 1000);
        assert!(matches!(
            q.allowance_at(r, "alice", "a", t0 + Duration::from_millis(600)),
            Allowance::Throttled(400..=401)
        ));
        assert!(matches!(
            q.allowance_at(r, "alice", "a", t0 + Duration::from_millis(1000)),
            Allowance::Bytes(_)
        ));
        // Two partitions a second, strict: a change of 6 goes through whole on a bucket that
        // is not in debt, and the next waits the 2 s the debt takes.
        set(&q, alice(), QuotaKey::ControllerMutationRate, 2.0);
        let m = QuotaKey::ControllerMutationRate;
        assert_eq!(q.take_at(m, "alice", "a", 6.0, t0), Ok(()));
        assert_eq!(q.take_at(m, "alice", "a", 1.0, t0), Err(2000));
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(q.take_at(m, "alice", "a", 1.0, later), Err(500));
        let paid = t0 + Duration::from_secs(2);
        assert_eq!(q.take_at(m, "alice", "a", 1.0, paid), Ok(()));
        // Its debt is not capped, unlike a byte rate's: 10,000 partitions at 2 a second hold
        // further changes for 5,000 s (each throttle at most 30 s).
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(q.take_at(m, "alice", "a", 10_000.0, t1), Ok(()));
        assert_eq!(q.take_at(m, "alice", "a", 1.0, t1), Err(30_000));
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(q.take_at(m, "alice", "a", 1.0, t2), Err(30_000));
        // The keys count apart: bob has neither.
        assert!(q.limits(m, "alice", "a") && !q.limits(m, "bob", "a"));
        assert_eq!(q.take_at(m, "bob", "a", 100.0, t2), Ok(()));
        assert!(q.times_requests());
        q.alter(&[(alice(), vec![(r, None)])]).unwrap();
        assert!(!q.times_requests());
    }

    #[test]
    fn connections_are_counted_per_address_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(dir.path());
        let rate = |ip: Option<&str>, v: f64| {
            let entity = Entity::from_components([(IP, ip)]).unwrap();
            q.alter(&[(entity, vec![(QuotaKey::ConnectionCreationRate, Some(v))])])
                .unwrap();
        };
        rate(Some("10.0.0.1"), 1.0);
        rate(None, 3.0);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let (two, three): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "::1".parse().unwrap());
        // 10.0.0.1's own rate: one, and the one after it while not in debt.
        assert!(q.take_connection(one).is_ok() && q.take_connection(one).is_ok());
        assert!(q.take_connection(one).is_err());
        // The default: each address its own bucket of three.
        for ip in [two, three] {
            assert!((0..4).all(|_| q.take_connection(ip).is_ok()), "{ip}");
            assert!(q.take_connection(ip).is_err());
        }
        assert!(q.limits_connections(two));
        drop(q);
        let q = quotas(dir.path());
        let kept: Vec<_> = q
            .describe(&Filter {
                components: vec![(IP.to_string(), Match::Any)],
                strict: true,
            })
            .into_iter()
            .map(|(e, v)| (e.ip, v))
            .collect();
        let rate = QuotaKey::ConnectionCreationRate;
        assert_eq!(
            kept,
            vec![
                (Some(Name::Default), vec![(rate, 3.0)]),
                (Some(Name::Named("10.0.0.1".into())), vec![(rate, 1.0)]),
            ]
        );
    }

    #[test]
    fn filters_match_as_kafkas() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(dir.path());
        let p = QuotaKey::ProducerByteRate;
        let alice = entity(Some(Some("alice")), None);
        let alice_app = entity(Some(Some("alice")), Some(Some("app")));
        let default_user = entity(Some(None), None);
        let app = entity(None, Some(Some("app")));
        for e in [&alice, &alice_app, &default_user, &app] {
            set(&q, e.clone(), p, 10.0);
        }
        let found = |components: Vec<(&str, Match)>, strict| -> Vec<Entity> {
            let filter = Filter {
                components: components
                    .into_iter()
                    .map(|(k, m)| (k.to_string(), m))
                    .collect(),
                strict,
            };
            filter.check().unwrap();
            q.describe(&filter).into_iter().map(|(e, _)| e).collect()
        };
        let exact = |n: &str| Match::Exact(n.to_string());
        assert_eq!(
            found(vec![(USER, exact("alice"))], false),
            vec![alice.clone(), alice_app.clone()]
        );
        assert_eq!(
            found(vec![(USER, exact("alice"))], true),
            vec![alice.clone()]
        );
        assert_eq!(
            found(vec![(USER, Match::Default)], false),
            vec![default_user.clone()]
        );
        assert_eq!(
            found(vec![(USER, Match::Any)], true),
            vec![default_user.clone(), alice.clone()]
        );
        assert_eq!(
            found(vec![(CLIENT_ID, Match::Any)], false),
            vec![app.clone(), alice_app.clone()]
        );
        assert_eq!(found(vec![], true), Vec::<Entity>::new());
        assert_eq!(found(vec![], false).len(), 4);
        let twice = Filter {
            components: vec![(USER.into(), Match::Any), (USER.into(), Match::Default)],
            strict: false,
        };
        assert!(twice.check().is_err());
    }

    #[test]
    fn entities_and_values_are_checked() {
        let ok = Entity::from_components([(USER, Some("alice")), (CLIENT_ID, None)]).unwrap();
        assert_eq!(ok, entity(Some(Some("alice")), Some(None)));
        assert_eq!(
            ok.components(),
            vec![(USER, Some("alice")), (CLIENT_ID, None)]
        );
        for bad in [
            vec![],
            vec![(USER, Some("a")), (USER, Some("b"))],
            vec![("group", Some("g"))],
            vec![(IP, Some("10.0.0.1")), (CLIENT_ID, None)],
            vec![(IP, Some("10.0.0"))],
            vec![(USER, Some(""))],
            vec![(USER, Some("alice")), (CLIENT_ID, Some(""))],
            vec![(IP, Some(""))],
        ] {
            assert!(Entity::from_components(bad.clone()).is_err(), "{bad:?}");
        }
        // An address is kept in its canonical form; it takes connection_creation_rate only.
        let ip = Entity::from_components([(IP, Some("::ffff:192.0.2.7"))]).unwrap();
        assert_eq!(ip.components(), vec![(IP, Some("192.0.2.7"))]);
        assert!(ip.takes(QuotaKey::ConnectionCreationRate).is_ok());
        assert!(ip.takes(QuotaKey::ProducerByteRate).is_err());
        assert!(ok.takes(QuotaKey::ConnectionCreationRate).is_err());
        let c = QuotaKey::ConnectionCreationRate;
        assert!(check_value(c, 20.0).is_ok());
        for bad in [0.5, 2.5, 3e9] {
            assert!(check_value(c, bad).is_err(), "{bad}");
        }
        assert_eq!(
            QuotaKey::parse("request_percentage"),
            Ok(QuotaKey::RequestPercentage)
        );
        assert!(QuotaKey::parse("bogus").is_err());
        let p = QuotaKey::ProducerByteRate;
        assert!(check_value(p, 1024.0).is_ok());
        for bad in [0.0, -1.0, 1.5, f64::NAN, f64::INFINITY, 1e300, 5e-324] {
            assert!(check_value(p, bad).is_err(), "{bad}");
        }
        // Kafka's other keys are DOUBLE: fractions and values over 100% are fine.
        for key in [
            QuotaKey::RequestPercentage,
            QuotaKey::ControllerMutationRate,
        ] {
            for good in [0.5, 1.0, 250.0] {
                assert!(check_value(key, good).is_ok(), "{good}");
            }
            for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
                assert!(check_value(key, bad).is_err(), "{bad}");
            }
        }
        assert_eq!(user_of("User:alice"), "alice");
        assert_eq!(user_of("CN=device-7"), "CN=device-7");
    }
}
