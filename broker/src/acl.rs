//! Authorization by Kafka ACLs (`[acls]`): who may do what to which topic, group or cluster.
//!
//! An ACL allows or denies one principal (`User:alice`, or `User:*` for everyone), from one host
//! (an IP address, or `*`), one operation on the resources one pattern names: a literal name
//! (`*` for every name) or a name prefix. As in Kafka:
//!
//! - a super user (`acls.super_users`) may do everything;
//! - an ACL that denies wins over any that allows, and a denied `All` denies every operation;
//! - allowing Read, Write, Delete or Alter also allows Describe, and allowing AlterConfigs also
//!   allows DescribeConfigs;
//! - what no ACL allows is refused, unless no ACL names the resource at all and
//!   `acls.allow_if_no_acl` is set.
//!
//! ACLs are made and removed with CreateAcls and DeleteAcls and kept in the metadata database
//! (`meta`), with a copy in memory that every check reads: a check walks the list once, which
//! suits the tens or hundreds of ACLs of an edge site. With `acls.enabled = false` (the default)
//! every check allows, and the ACL APIs answer SECURITY_DISABLED, as Kafka without an authorizer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use edge_config::AclsConfig;

use crate::meta::{MetaError, MetaStore};

/// The one cluster resource's name, as Kafka names it.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// The principal of an ACL that applies to every user.
pub const ANY_USER: &str = "User:*";

/// The host of an ACL that applies from every address; also the literal name of every resource.
pub const WILDCARD: &str = "*";

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The code Kafka gives it on the wire.
            pub fn code(self) -> i8 {
                match self { $($name::$variant => $code),+ }
            }

            /// The value with this wire code, if it is one (not ANY or UNKNOWN).
            pub fn from_code(code: i8) -> Option<$name> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

wire_enum!(
    /// What kind of thing an ACL is about.
    ResourceType {
        Topic = 2,
        Group = 3,
        Cluster = 4,
        TransactionalId = 5,
        DelegationToken = 6,
        User = 7,
    }
);

wire_enum!(
    /// How an ACL's resource name matches names.
    PatternType {
        Literal = 3,
        Prefixed = 4,
    }
);

wire_enum!(
    /// What is done to a resource.
    Operation {
        All = 2,
        Read = 3,
        Write = 4,
        Create = 5,
        Delete = 6,
        Alter = 7,
        Describe = 8,
        ClusterAction = 9,
        DescribeConfigs = 10,
        AlterConfigs = 11,
        IdempotentWrite = 12,
        CreateTokens = 13,
        DescribeTokens = 14,
    }
);

wire_enum!(
    /// Whether an ACL allows or denies.
    Permission {
        Deny = 2,
        Allow = 3,
    }
);

/// The wire code of ANY in the filters of DescribeAcls and DeleteAcls.
pub const ANY: i8 = 1;
/// The wire code of MATCH, the pattern filter that finds every ACL applying to a name.
pub const MATCH: i8 = 2;

/// The operations of each resource type, as Metadata and DescribeGroups report them (and, with
/// All, those kafka-acls lets an ACL name).
pub(crate) fn operations_of(resource: ResourceType) -> &'static [Operation] {
    use Operation::*;
    match resource {
        ResourceType::Topic => &[
            Read,
            Write,
            Create,
            Delete,
            Alter,
            Describe,
            DescribeConfigs,
            AlterConfigs,
        ],
        ResourceType::Group => &[Read, Delete, Describe, DescribeConfigs, AlterConfigs],
        ResourceType::Cluster => &[
            Create,
            Alter,
            Describe,
            ClusterAction,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
        ],
        ResourceType::TransactionalId => &[Write, Describe],
        ResourceType::DelegationToken => &[Describe],
        ResourceType::User => &[CreateTokens, DescribeTokens],
    }
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acl {
    pub resource_type: ResourceType,
    pub pattern: PatternType,
    pub name: String,
    pub principal: String,
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Why an ACL or a filter is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("{0}")]
    Invalid(String),
    #[error("the metadata database failed: {0}")]
    Store(String),
}

impl Acl {
    /// The ACL a CreateAcls entry asks for, checked as Kafka checks it.
    pub fn new(
        (resource_type, name, pattern): (i8, &str, i8),
        principal: &str,
        host: &str,
        operation: i8,
        permission: i8,
    ) -> Result<Acl, AclError> {
        let invalid = |what: String| Err(AclError::Invalid(what));
        let Some(resource_type) = ResourceType::from_code(resource_type) else {
            return invalid(format!(
                "resource type {resource_type} is not one an ACL can name"
            ));
        };
        let Some(pattern) = PatternType::from_code(pattern) else {
            return invalid(format!(
                "pattern type {pattern} is not one an ACL can have (LITERAL or PREFIXED)"
            ));
        };
        let Some(operation) = Operation::from_code(operation) else {
            return invalid(format!("operation {operation} is not one an ACL can name"));
        };
        let Some(permission) = Permission::from_code(permission) else {
            return invalid(format!(
                "permission {permission} is not one an ACL can have (ALLOW or DENY)"
            ));
        };
        if name.is_empty() {
            return invalid("the resource name is empty".into());
        }
        if resource_type == ResourceType::Cluster && name != CLUSTER_NAME {
            return invalid(format!("the cluster resource is named {CLUSTER_NAME:?}"));
        }
        if !is_principal(principal) {
            return invalid(format!(
                "{principal:?} is not a principal (write it as User:<name>, or User:* for all)"
            ));
        }
        // Hosts are compared as text, so each address is kept in one form (`::1` for Java's
        // `0:0:0:0:0:0:0:1`, an IPv4-mapped address as IPv4): a deny written otherwise would
        // never match. A name is refused for the same reason: the client's address is what is
        // compared.
        let host = if host == WILDCARD {
            WILDCARD.to_string()
        } else {
            match host.parse::<IpAddr>() {
                Ok(ip) => ip.to_canonical().to_string(),
                Err(_) => {
                    return invalid(format!(
                        "host {host:?} is not an IP address (give one, or * for any)"
                    ));
                }
            }
        };
        Ok(Acl {
            resource_type,
            pattern,
            name: name.to_string(),
            principal: principal.to_string(),
            host,
            operation,
            permission,
        })
    }

    /// Whether this ACL's pattern names the resource `name`.
    fn names(&self, name: &str) -> bool {
        match self.pattern {
            PatternType::Literal => self.name == name || self.name == WILDCARD,
            PatternType::Prefixed => name.starts_with(&self.name),
        }
    }

    /// Whether this ACL, if it allows, allows `op`.
    fn allows(&self, op: Operation) -> bool {
        use Operation::*;
        self.operation == All
            || self.operation == op
            || (op == Describe && matches!(self.operation, Read | Write | Delete | Alter))
            || (op == DescribeConfigs && self.operation == AlterConfigs)
    }
}

/// `Type:name` with both parts present.
fn is_principal(text: &str) -> bool {
    text.split_once(':')
        .is_some_and(|(kind, name)| !kind.is_empty() && !name.is_empty())
}

/// Which ACLs a DescribeAcls or DeleteAcls filter selects; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

/// How a filter's resource name is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternFilter {
    /// ACLs of either pattern type whose name is the filter's.
    Any,
    /// Every ACL that applies to the filter's name: the literal one, the `*` one and the
    /// prefixes of it.
    Match,
    /// ACLs of this pattern type whose name is the filter's.
    Only(PatternType),
}

impl AclFilter {
    /// The filter of a DescribeAcls or DeleteAcls request.
    pub fn new(
        (resource_type, name, pattern): (i8, Option<&str>, i8),
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> Result<AclFilter, AclError> {
        let invalid = |what: String| Err(AclError::Invalid(what));
        let resource_type = match resource_type {
            ANY => None,
            code => match ResourceType::from_code(code) {
                Some(t) => Some(t),
                None => return invalid(format!("resource type filter {code} is not valid")),
            },
        };
        let pattern = match pattern {
            ANY => PatternFilter::Any,
            MATCH => PatternFilter::Match,
            code => match PatternType::from_code(code) {
                Some(p) => PatternFilter::Only(p),
                None => return invalid(format!("pattern type filter {code} is not valid")),
            },
        };
        let operation = match operation {
            ANY => None,
            code => match Operation::from_code(code) {
                Some(op) => Some(op),
                None => return invalid(format!("operation filter {code} is not valid")),
            },
        };
        let permission = match permission {
            ANY => None,
            code => match Permission::from_code(code) {
                Some(p) => Some(p),
                None => return invalid(format!("permission filter {code} is not valid")),
            },
        };
        // A principal filter is matched as text, as Kafka matches it: "alice" (no type) or ""
        // selects nothing, and is no error (`runnel acls` refuses such a --principal itself).
        Ok(AclFilter {
            resource_type,
            name: name.map(str::to_string),
            pattern,
            principal: principal.map(str::to_string),
            host: host.map(str::to_string),
            operation,
            permission,
        })
    }

    /// Whether the filter selects `acl`.
    pub fn selects(&self, acl: &Acl) -> bool {
        let resource = self.resource_type.is_none_or(|t| t == acl.resource_type)
            && match (self.pattern, &self.name) {
                (PatternFilter::Only(p), _) if p != acl.pattern => false,
                (_, None) => true,
                (PatternFilter::Match, Some(name)) => acl.names(name),
                (_, Some(name)) => acl.name == *name,
            };
        resource
            && self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.host.as_ref().is_none_or(|h| *h == acl.host)
            && self.operation.is_none_or(|op| op == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

/// The address a client connects from, written as ACL hosts are, once needed.
struct Host {
    ip: IpAddr,
    text: std::cell::OnceCell<String>,
}

impl Host {
    fn of(ip: IpAddr) -> Host {
        Host {
            ip: ip.to_canonical(),
            text: std::cell::OnceCell::new(),
        }
    }

    /// Whether an ACL's host (`*` or an address) matches.
    fn matches(&self, acl_host: &str) -> bool {
        acl_host == WILDCARD || acl_host == self.text.get_or_init(|| self.ip.to_string())
    }
}

/// Who asks: the principal of a connection and the address it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub principal: &'a str,
    pub host: IpAddr,
}

/// The ACLs in force, and the decisions made from them.
pub struct Authorizer {
    enabled: bool,
    super_users: HashSet<String>,
    allow_if_no_acl: bool,
    meta: MetaStore,
    acls: RwLock<Arc<InForce>>,
    /// Held by a change (create, delete) from its read of the ACLs to its swap, so that two
    /// changes at once do not lose one another.
    changing: Mutex<()>,
}

/// The ACLs in force, and the same grouped by resource type and principal, so that a check
/// reads only those of the principal asking and of `User:*` (a site with an ACL or two per
/// device has thousands). Made again whole at each change, which is rare.
struct InForce {
    all: Arc<BTreeSet<Acl>>,
    by_principal: HashMap<String, HashMap<ResourceType, Vec<Acl>>>,
}

impl InForce {
    fn new(all: BTreeSet<Acl>) -> InForce {
        let mut by_principal: HashMap<String, HashMap<ResourceType, Vec<Acl>>> = HashMap::new();
        for acl in &all {
            by_principal
                .entry(acl.principal.clone())
                .or_default()
                .entry(acl.resource_type)
                .or_default()
                .push(acl.clone());
        }
        InForce {
            all: Arc::new(all),
            by_principal,
        }
    }

    /// The ACLs on resources of type `resource` that concern `principal`: its own and those of
    /// every user.
    fn of<'a>(&'a self, resource: ResourceType, principal: &str) -> impl Iterator<Item = &'a Acl> {
        let list = |p: &str| {
            self.by_principal
                .get(p)
                .and_then(|kinds| kinds.get(&resource))
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        let everyone = if principal == ANY_USER {
            &[][..]
        } else {
            list(ANY_USER)
        };
        list(principal).iter().chain(everyone)
    }
}

impl Authorizer {
    /// The authorizer of `config`, with the ACLs kept in `meta`.
    pub fn open(config: &AclsConfig, meta: MetaStore) -> Result<Authorizer, MetaError> {
        let acls = meta.acls()?;
        let authorizer = Authorizer {
            enabled: config.enabled,
            super_users: config.super_users.iter().cloned().collect(),
            allow_if_no_acl: config.allow_if_no_acl,
            meta,
            acls: RwLock::new(Arc::new(InForce::new(acls))),
            changing: Mutex::new(()),
        };
        if authorizer.enabled {
            let admins = authorizer.acls().iter().any(|a| {
                a.resource_type == ResourceType::Cluster
                    && a.permission == Permission::Allow
                    && a.allows(Operation::Alter)
            });
            if authorizer.super_users.is_empty() && !admins && !authorizer.allow_if_no_acl {
                tracing::warn!(
                    "acls.enabled with no super user and no ACL allowing Alter on the cluster: \
                     no client can create or remove ACLs; name one in acls.super_users"
                );
            }
            tracing::info!(
                acls = authorizer.acls().len(),
                super_users = authorizer.super_users.len(),
                "ACLs enabled"
            );
        }
        Ok(authorizer)
    }

    /// Whether requests are checked at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The ACLs in force now.
    pub fn acls(&self) -> Arc<BTreeSet<Acl>> {
        self.in_force().all.clone()
    }

    fn in_force(&self) -> Arc<InForce> {
        self.acls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `who` may perform `op` on the resource `name` of type `resource`.
    pub fn allowed(
        &self,
        who: Asker<'_>,
        op: Operation,
        resource: ResourceType,
        name: &str,
    ) -> bool {
        if !self.enabled || self.super_users.contains(who.principal) {
            return true;
        }
        let host = Host::of(who.host);
        let now = self.in_force();
        let mut allowed = false;
        for acl in now.of(resource, who.principal) {
            if !acl.names(name) || !host.matches(&acl.host) {
                continue;
            }
            match acl.permission {
                Permission::Deny if acl.operation == op || acl.operation == Operation::All => {
                    return false;
                }
                Permission::Allow if acl.allows(op) => allowed = true,
                _ => {}
            }
        }
        allowed
            || (self.allow_if_no_acl
                && !now
                    .all
                    .iter()
                    .any(|a| a.resource_type == resource && a.names(name)))
    }

    /// Whether `who` may write as an idempotent producer: IdempotentWrite on the cluster, or
    /// Write on some topic (KIP-679). A topic counts when an ACL allows writing to it and no ACL
    /// denies writing to every name it covers.
    pub fn may_write_idempotently(&self, who: Asker<'_>) -> bool {
        if self.allowed(
            who,
            Operation::IdempotentWrite,
            ResourceType::Cluster,
            CLUSTER_NAME,
        ) {
            return true;
        }
        let host = Host::of(who.host);
        let now = self.in_force();
        let writes = |a: &&Acl| {
            host.matches(&a.host)
                && (a.operation == Operation::Write || a.operation == Operation::All)
        };
        let denies: Vec<&Acl> = now
            .of(ResourceType::Topic, who.principal)
            .filter(writes)
            .filter(|a| a.permission == Permission::Deny)
            .collect();
        let covered = |allow: &Acl| {
            denies.iter().any(|d| match (d.pattern, allow.pattern) {
                (PatternType::Literal, _) if d.name == WILDCARD => true,
                (PatternType::Literal, PatternType::Literal) => d.name == allow.name,
                (PatternType::Prefixed, _) => allow.name.starts_with(&d.name),
                (PatternType::Literal, PatternType::Prefixed) => false,
            })
        };
        now.of(ResourceType::Topic, who.principal)
            .filter(writes)
            .any(|a| a.permission == Permission::Allow && !covered(a))
            // As Kafka's `authorizeByResourceType`: with allow_if_no_acl, a topic no ACL names
            // (Kafka asks about one called "hardcode") may be written.
            || (self.allow_if_no_acl
                && self.allowed(who, Operation::Write, ResourceType::Topic, "hardcode"))
    }

    /// The operations `who` may perform on the resource, as the bit field Metadata and
    /// DescribeGroups report (bit n for the operation with code n).
    pub fn operations(&self, who: Asker<'_>, resource: ResourceType, name: &str) -> i32 {
        operations_of(resource)
            .iter()
            .filter(|op| self.allowed(who, **op, resource, name))
            .fold(0, |bits, op| bits | (1 << op.code()))
    }

    /// Adds `acls` (one metadata transaction); one already in force is not added twice.
    pub fn create(&self, acls: &[Acl]) -> Result<(), AclError> {
        let _one_change_at_a_time = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.in_force();
        self.meta
            .put_acls(acls)
            .map_err(|e| AclError::Store(e.to_string()))?;
        let mut next = BTreeSet::clone(&current.all);
        next.extend(acls.iter().cloned());
        self.swap(next);
        Ok(())
    }

    /// Puts `next` in force; checks meanwhile wait only for the swap.
    fn swap(&self, next: BTreeSet<Acl>) {
        let next = Arc::new(InForce::new(next));
        *self.acls.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    /// Makes `next` the ACLs in force (one metadata transaction): a follower's copy of its
    /// leader's. Returns how many were added and removed.
    pub fn replace_all(&self, next: BTreeSet<Acl>) -> Result<(usize, usize), AclError> {
        let _one_change_at_a_time = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.in_force();
        let added: Vec<Acl> = next.difference(&current.all).cloned().collect();
        let removed: BTreeSet<Acl> = current.all.difference(&next).cloned().collect();
        if added.is_empty() && removed.is_empty() {
            return Ok((0, 0));
        }
        self.meta
            .replace_acls(&added, &removed)
            .map_err(|e| AclError::Store(e.to_string()))?;
        self.swap(next);
        Ok((added.len(), removed.len()))
    }

    /// Removes every ACL one of `filters` selects (one metadata transaction) and returns, for
    /// each filter, those it selected.
    pub fn delete(&self, filters: &[AclFilter]) -> Result<Vec<Vec<Acl>>, AclError> {
        let _one_change_at_a_time = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.in_force();
        let selected: Vec<Vec<Acl>> = filters
            .iter()
            .map(|f| {
                current
                    .all
                    .iter()
                    .filter(|a| f.selects(a))
                    .cloned()
                    .collect()
            })
            .collect();
        let gone: BTreeSet<Acl> = selected.iter().flatten().cloned().collect();
        if gone.is_empty() {
            return Ok(selected);
        }
        self.meta
            .delete_acls(&gone)
            .map_err(|e| AclError::Store(e.to_string()))?;
        self.swap(current.all.difference(&gone).cloned().collect());
        Ok(selected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        rt: ResourceType,
        name: &str,
        pattern: PatternType,
        who: &str,
        op: Operation,
        perm: Permission,
    ) -> Acl {
        Acl {
            resource_type: rt,
            pattern,
            name: name.into(),
            principal: who.into(),
            host: WILDCARD.into(),
            operation: op,
            permission: perm,
        }
    }

    fn authorizer(config: AclsConfig, acls: &[Acl]) -> (Authorizer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let a = Authorizer::open(&config, meta).unwrap();
        a.create(acls).unwrap();
        (a, dir)
    }

    fn on() -> AclsConfig {
        AclsConfig {
            enabled: true,
            ..AclsConfig::default()
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn asker(principal: &str) -> Asker<'_> {
        Asker {
            principal,
            host: LOCAL,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn allow_deny_prefixes_and_implied_describe() {
        let (a, _dir) = authorizer(
            on(),
            &[
                acl(Topic, "site-", Prefixed, "User:alice", Write, Allow),
                acl(Topic, "site-secret", Literal, "User:alice", All, Deny),
                acl(Topic, "*", Literal, "User:*", Describe, Allow),
                acl(Group, "g", Literal, "User:bob", Read, Allow),
            ],
        );
        let alice = asker("User:alice");
        assert!(a.allowed(alice, Write, Topic, "site-7"));
        assert!(a.allowed(alice, Describe, Topic, "site-7"));
        assert!(!a.allowed(alice, Read, Topic, "site-7"));
        assert!(!a.allowed(alice, Write, Topic, "site-secret"));
        assert!(!a.allowed(alice, Describe, Topic, "site-secret"));
        assert!(!a.allowed(alice, Write, Topic, "other"));
        assert!(a.allowed(asker("User:bob"), Describe, Topic, "other"));
        assert!(a.allowed(asker("User:bob"), Describe, Group, "g"));
        assert!(!a.allowed(asker("User:bob"), Delete, Group, "g"));
        assert!(!a.allowed(asker("User:bob"), Read, Group, "h"));
        // Bits of Write and Describe.
        assert_eq!(a.operations(alice, Topic, "site-1"), (1 << 4) | (1 << 8));
        assert!(a.may_write_idempotently(alice));
        assert!(!a.may_write_idempotently(asker("User:bob")));
    }

    #[test]
    fn a_fleet_of_devices_each_writes_under_its_own_prefix() {
        let acls: Vec<Acl> = (0..1000)
            .map(|d| {
                acl(
                    Topic,
                    &format!("site-1/dev-{d}/"),
                    Prefixed,
                    &format!("User:dev-{d}"),
                    Write,
                    Allow,
                )
            })
            .chain([acl(
                Topic,
                "site-1/commands",
                Literal,
                "User:*",
                Read,
                Allow,
            )])
            .collect();
        let (a, _dir) = authorizer(on(), &acls);
        let dev = asker("User:dev-500");
        assert!(a.allowed(dev, Write, Topic, "site-1/dev-500/temp"));
        assert!(!a.allowed(dev, Write, Topic, "site-1/dev-501/temp"));
        assert!(!a.allowed(dev, Write, Topic, "site-1/dev-50"));
        assert!(a.allowed(dev, Read, Topic, "site-1/commands"));
        assert!(a.allowed(asker("User:other"), Describe, Topic, "site-1/commands"));
        assert!(!a.allowed(asker("User:other"), Write, Topic, "site-1/dev-1/temp"));
        assert!(a.may_write_idempotently(dev));
        assert!(!a.may_write_idempotently(asker("User:other")));
    }

    #[test]
    fn hosts_super_users_and_acls_that_name_nothing() {
        let mut config = on();
        config.super_users = vec!["User:admin".into()];
        let mut from_one_host = acl(Topic, "t", Literal, "User:alice", Read, Allow);
        from_one_host.host = "10.0.0.7".into();
        let (a, _dir) = authorizer(config, &[from_one_host]);
        let at = |ip: &str| Asker {
            principal: "User:alice",
            host: ip.parse().unwrap(),
        };
        assert!(a.allowed(at("10.0.0.7"), Read, Topic, "t"));
        // Hosts are kept in one form, whatever form they were given in.
        let java = Acl::new((2, "t", 3), "User:a", "0:0:0:0:0:0:0:1", 3, 2).unwrap();
        assert_eq!(java.host, "::1");
        assert_eq!(
            Acl::new((2, "t", 3), "User:a", "::FFFF:10.0.0.7", 3, 2)
                .unwrap()
                .host,
            "10.0.0.7"
        );
        assert!(Acl::new((2, "t", 3), "User:a", "localhost", 3, 2).is_err());
        assert!(a.allowed(at("::ffff:10.0.0.7"), Read, Topic, "t"));
        assert!(!a.allowed(at("10.0.0.8"), Read, Topic, "t"));
        assert!(a.allowed(asker("User:admin"), Alter, Cluster, CLUSTER_NAME));
        assert!(!a.allowed(asker("User:alice"), Read, Topic, "u"));

        let mut lenient = on();
        lenient.allow_if_no_acl = true;
        let (b, _dir) = authorizer(
            lenient,
            &[acl(Topic, "t", Literal, "User:alice", Read, Allow)],
        );
        assert!(b.allowed(asker("User:bob"), Write, Topic, "u"));
        assert!(!b.allowed(asker("User:bob"), Read, Topic, "t"));
        // Bob may write topics no ACL names, so he may have a producer id (as in Kafka).
        assert!(b.may_write_idempotently(asker("User:bob")));

        let (off, _dir) = authorizer(AclsConfig::default(), &[]);
        assert!(off.allowed(asker("User:ANONYMOUS"), Alter, Cluster, CLUSTER_NAME));
    }

    #[test]
    fn acls_are_checked_kept_across_a_restart_and_deleted_by_filter() {
        assert!(Acl::new((1, "t", 3), "User:a", "*", 3, 3).is_err());
        assert!(Acl::new((2, "t", 2), "User:a", "*", 3, 3).is_err());
        assert!(Acl::new((2, "", 3), "User:a", "*", 3, 3).is_err());
        assert!(Acl::new((2, "t", 3), "alice", "*", 3, 3).is_err());
        assert!(Acl::new((2, "t", 3), "User:a", "", 3, 3).is_err());
        assert!(Acl::new((4, "c", 3), "User:a", "*", 7, 3).is_err());
        assert!(Acl::new((2, "t", 3), "User:a", "*", 1, 3).is_err());
        let made = Acl::new((2, "t", 3), "User:a", "*", 3, 3).unwrap();
        let prefixed = Acl::new((2, "t", 4), "User:a", "*", 4, 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let a = Authorizer::open(&on(), MetaStore::open(&path).unwrap()).unwrap();
            a.create(&[made.clone(), prefixed.clone(), made.clone()])
                .unwrap();
        }
        let a = Authorizer::open(&on(), MetaStore::open(&path).unwrap()).unwrap();
        assert_eq!(a.acls().len(), 2);
        let literal_only = AclFilter::new((2, Some("t"), 3), None, None, ANY, ANY).unwrap();
        let matching = AclFilter::new((2, Some("tx"), MATCH), None, None, ANY, ANY).unwrap();
        assert!(literal_only.selects(&made) && !literal_only.selects(&prefixed));
        assert!(!matching.selects(&made) && matching.selects(&prefixed));
        // A principal filter matches the principal's text, as Kafka's does: one without its
        // type, or empty, selects nothing.
        for text in ["User:a", "a", ""] {
            let by = AclFilter::new((2, None, ANY), Some(text), None, ANY, ANY).unwrap();
            assert_eq!(by.selects(&made), text == "User:a", "{text:?}");
        }
        let deleted = a.delete(&[literal_only]).unwrap();
        assert_eq!(deleted, vec![vec![made]]);
        drop(a);
        let a = Authorizer::open(&on(), MetaStore::open(&path).unwrap()).unwrap();
        assert_eq!(*a.acls(), BTreeSet::from([prefixed]));
    }
}
