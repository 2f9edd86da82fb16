//! `runnel acls list|add|remove`: Kafka's ACLs from the command line, as `kafka-acls.sh` manages
//! them, against Runnel or any Kafka cluster (the broker needs ACLs on: Runnel's `[acls]`).
//!
//! The rdkafka crate has no ACL admin API, so librdkafka's own (`rd_kafka_CreateAcls`,
//! `rd_kafka_DescribeAcls`, `rd_kafka_DeleteAcls`) is called through the bindings rdkafka
//! exports, on the handle of an rdkafka admin client: connection, TLS and SASL are librdkafka's,
//! set with `-X` as for the other commands. Every librdkafka object made here is owned by a guard
//! that destroys it, and every string it returns is copied before its event is destroyed.
#![allow(unsafe_code)] // The FFI calls above; each `unsafe` block says what it relies on.

use std::ffi::{CStr, CString, c_char};
use std::ptr;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use kafka_protocol::messages::DescribeAclsRequest;
use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;

use super::Conn;
use super::client::{TIMEOUT, runtime};

/// What kind of resource an ACL names, and its name.
#[derive(Args, Clone, Debug)]
#[group(multiple = false)]
pub(super) struct Resource {
    /// A topic name (with --prefixed, a prefix of names; `*` for every topic).
    #[arg(long)]
    topic: Option<String>,
    /// A consumer group id (with --prefixed, a prefix; `*` for every group).
    #[arg(long)]
    group: Option<String>,
    /// A transactional producer's `transactional.id` (with --prefixed, a prefix; `*` for
    /// every one).
    #[arg(long)]
    transactional_id: Option<String>,
    /// The cluster (creating topics, managing ACLs, idempotent producers).
    #[arg(long)]
    cluster: bool,
}

impl Resource {
    /// The librdkafka resource type and name, if one is given.
    fn named(&self) -> Option<(rd::rd_kafka_ResourceType_t, &str)> {
        use rd::rd_kafka_ResourceType_t::*;
        match (
            &self.topic,
            &self.group,
            &self.transactional_id,
            self.cluster,
        ) {
            (Some(t), ..) => Some((RD_KAFKA_RESOURCE_TOPIC, t)),
            (_, Some(g), ..) => Some((RD_KAFKA_RESOURCE_GROUP, g)),
            (_, _, Some(id), _) => Some((RD_KAFKA_RESOURCE_TRANSACTIONAL_ID, id)),
            (.., true) => Some((RD_KAFKA_RESOURCE_BROKER, "kafka-cluster")),
            _ => None,
        }
    }
}

impl Resource {
    /// The resource type's name and kind.
    fn kind(&self) -> (&'static str, crate::acl::ResourceType) {
        use crate::acl::ResourceType;
        if self.topic.is_some() {
            ("a topic", ResourceType::Topic)
        } else if self.group.is_some() {
            ("a group", ResourceType::Group)
        } else if self.transactional_id.is_some() {
            ("a transactional id", ResourceType::TransactionalId)
        } else {
            ("the cluster", ResourceType::Cluster)
        }
    }
}

/// An operation an ACL allows or denies.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl Op {
    /// As given on the command line.
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }

    fn code(self) -> rd::rd_kafka_AclOperation_t {
        use rd::rd_kafka_AclOperation_t::*;
        match self {
            Op::All => RD_KAFKA_ACL_OPERATION_ALL,
            Op::Read => RD_KAFKA_ACL_OPERATION_READ,
            Op::Write => RD_KAFKA_ACL_OPERATION_WRITE,
            Op::Create => RD_KAFKA_ACL_OPERATION_CREATE,
            Op::Delete => RD_KAFKA_ACL_OPERATION_DELETE,
            Op::Alter => RD_KAFKA_ACL_OPERATION_ALTER,
            Op::Describe => RD_KAFKA_ACL_OPERATION_DESCRIBE,
            Op::ClusterAction => RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION,
            Op::DescribeConfigs => RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
            Op::AlterConfigs => RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
            Op::IdempotentWrite => RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
        }
    }
}

/// Which ACLs `list` and `remove` select; what is not given matches anything.
#[derive(Args, Clone, Debug)]
pub(super) struct Filter {
    #[command(flatten)]
    resource: Resource,
    /// Only ACLs of this principal (e.g. User:alice).
    #[arg(long)]
    principal: Option<String>,
    /// Only ACLs of this operation.
    #[arg(long, value_enum)]
    operation: Option<Op>,
    /// Only prefixed ACLs (with a resource: the one with that prefix).
    #[arg(long)]
    prefixed: bool,
    /// With a resource: every ACL that applies to it (its literal ACL, `*` and the prefixes of
    /// its name), as Kafka's MATCH filter.
    #[arg(long, conflicts_with = "prefixed")]
    matching: bool,
}

/// One ACL for `add`.
#[derive(Args, Clone, Debug)]
pub(super) struct NewAcl {
    #[command(flatten)]
    resource: Resource,
    /// Who: User:<name>, or User:* for every user.
    #[arg(long)]
    principal: String,
    /// From where: an IP address, or * for anywhere.
    #[arg(long, default_value = "*")]
    host: String,
    /// The operations (repeatable): read, write, create, delete, alter, describe, ...
    #[arg(long = "operation", value_enum, required = true)]
    operations: Vec<Op>,
    /// The resource name is a prefix of the names the ACL applies to.
    #[arg(long)]
    prefixed: bool,
    /// Deny the operations instead of allowing them (a deny wins over any allow).
    #[arg(long)]
    deny: bool,
}

/// A librdkafka object destroyed with `destroy` when the guard goes.
struct Owned<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` was returned by the librdkafka constructor `destroy` belongs to and
            // is destroyed only here.
            unsafe { (self.destroy)(self.ptr) }
        }
    }
}

/// Longest string the Kafka protocol carries (a signed 16-bit length).
const MAX_STRING: usize = i16::MAX as usize;

fn cstring(what: &str, text: &str) -> anyhow::Result<CString> {
    if text.len() > MAX_STRING {
        bail!(
            "{what} has {} bytes; Kafka allows at most {MAX_STRING}",
            text.len()
        );
    }
    CString::new(text).with_context(|| format!("{what} {text:?} holds a NUL byte"))
}

/// A string librdkafka returned, copied (`-` for none).
fn text(p: *const c_char) -> String {
    if p.is_null() {
        return "-".into();
    }
    // SAFETY: librdkafka returns NUL-terminated strings that live as long as their object,
    // which outlives this copy.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A name as one column of a tab-separated line: control characters (a tab, a newline) written
/// as escapes, so that the columns hold.
fn column(p: *const c_char) -> String {
    text(p)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The message of a librdkafka error object, if there is one.
fn error_of(e: *const rd::rd_kafka_error_t) -> Option<String> {
    if e.is_null() {
        return None;
    }
    // SAFETY: `e` is a live error object owned by the result being read.
    let code = unsafe { rd::rd_kafka_error_code(e) };
    if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    // SAFETY: as above.
    Some(text(unsafe { rd::rd_kafka_error_string(e) }))
}

/// One ACL as `list` and `remove` print it: resource, pattern, principal, host, operation,
/// permission, tab-separated.
fn describe(acl: *const rd::rd_kafka_AclBinding_t) -> String {
    // SAFETY: `acl` is a live binding of a result whose event is not destroyed yet; the names
    // functions return static strings.
    unsafe {
        let kind = match rd::rd_kafka_AclBinding_restype(acl) {
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_BROKER => "cluster".to_string(),
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID => {
                "transactional-id".to_string()
            }
            t => text(rd::rd_kafka_ResourceType_name(t)).to_lowercase(),
        };
        let pattern = text(rd::rd_kafka_ResourcePatternType_name(
            rd::rd_kafka_AclBinding_resource_pattern_type(acl),
        ))
        .to_lowercase();
        let op = text(rd::rd_kafka_AclOperation_name(
            rd::rd_kafka_AclBinding_operation(acl),
        ));
        let permission = text(rd::rd_kafka_AclPermissionType_name(
            rd::rd_kafka_AclBinding_permission_type(acl),
        ));
        format!(
            "{kind}\t{}\t{pattern}\t{}\t{}\t{op}\t{permission}",
            column(rd::rd_kafka_AclBinding_name(acl)),
            column(rd::rd_kafka_AclBinding_principal(acl)),
            column(rd::rd_kafka_AclBinding_host(acl)),
        )
    }
}

/// An admin client of `conn`, a queue for the results of its requests, and its main queue,
/// where its errors and log lines arrive.
struct Session {
    admin: AdminClient<DefaultClientContext>,
    queue: Owned<rd::rd_kafka_queue_t>,
    main: Owned<rd::rd_kafka_queue_t>,
}

impl Session {
    fn open(conn: &Conn) -> anyhow::Result<Session> {
        let admin: AdminClient<DefaultClientContext> = conn
            .client_config()?
            .create()
            .map_err(|e| super::client_error(e, "cannot create a Kafka admin client"))?;
        // SAFETY: the client handle is live for as long as `admin`; the session's `Drop`
        // destroys the queue before `admin` goes.
        let (queue, main) = unsafe {
            let rk = admin.inner().native_ptr();
            (rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_get_main(rk))
        };
        Ok(Session {
            admin,
            queue: Owned {
                ptr: queue,
                destroy: rd::rd_kafka_queue_destroy,
            },
            main: Owned {
                ptr: main,
                destroy: rd::rd_kafka_queue_destroy,
            },
        })
    }

    fn rk(&self) -> *mut rd::rd_kafka_t {
        self.admin.inner().native_ptr()
    }

    /// Waits for the result event of the request made, up to the commands' timeout; stops at
    /// once with the broker's reason when it refused the login.
    fn result(&self) -> anyhow::Result<Owned<rd::rd_kafka_event_t>> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.serve_main()?;
            // SAFETY: the queue is live; a returned event is owned by the guard.
            let ev = unsafe { rd::rd_kafka_queue_poll(self.queue.ptr, 200) };
            if !ev.is_null() {
                let ev = Owned {
                    ptr: ev,
                    destroy: rd::rd_kafka_event_destroy,
                };
                // SAFETY: `ev` is live.
                let err = unsafe { rd::rd_kafka_event_error(ev.ptr) };
                if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    // SAFETY: as above.
                    bail!(
                        "{}",
                        text(unsafe { rd::rd_kafka_event_error_string(ev.ptr) })
                    );
                }
                return Ok(ev);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no answer from the broker within {}s (is it reachable, and are the -X \
                     security settings those of its listener?)",
                    TIMEOUT.as_secs()
                );
            }
        }
    }
}

impl Session {
    /// Reads the client's own events: a login the broker refused ends the command with the
    /// broker's reason; other errors and log lines go to the log (at debug: librdkafka retries
    /// them, and the command's own timeout reports a broker it cannot reach).
    fn serve_main(&self) -> anyhow::Result<()> {
        loop {
            // SAFETY: the main queue is live; a returned event is owned by the guard.
            let ev = unsafe { rd::rd_kafka_queue_poll(self.main.ptr, 0) };
            if ev.is_null() {
                return Ok(());
            }
            let ev = Owned {
                ptr: ev,
                destroy: rd::rd_kafka_event_destroy,
            };
            // SAFETY: `ev` is live; its strings are copied before it is destroyed.
            unsafe {
                match rd::rd_kafka_event_type(ev.ptr) {
                    rd::RD_KAFKA_EVENT_ERROR => {
                        let why = text(rd::rd_kafka_event_error_string(ev.ptr));
                        if rd::rd_kafka_event_error(ev.ptr)
                            == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__AUTHENTICATION
                        {
                            bail!("the broker refused the login: {why}");
                        }
                        tracing::debug!("librdkafka: {why}");
                    }
                    rd::RD_KAFKA_EVENT_LOG => {
                        let (mut fac, mut line, mut level) = (ptr::null(), ptr::null(), 0);
                        if rd::rd_kafka_event_log(ev.ptr, &mut fac, &mut line, &mut level) == 0 {
                            tracing::debug!("librdkafka {}: {}", text(fac), text(line));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The queues before the client they belong to.
        for q in [&mut self.queue.ptr, &mut self.main.ptr] {
            let queue = std::mem::replace(q, ptr::null_mut());
            if !queue.is_null() {
                // SAFETY: made by `rd_kafka_queue_new` or `rd_kafka_queue_get_main` on this
                // session's client, destroyed once.
                unsafe { rd::rd_kafka_queue_destroy(queue) }
            }
        }
    }
}

/// A librdkafka ACL filter for `filter`.
fn binding_filter(f: &Filter) -> anyhow::Result<Owned<rd::rd_kafka_AclBindingFilter_t>> {
    use rd::rd_kafka_ResourcePatternType_t::*;
    let (kind, name) = match f.resource.named() {
        Some((kind, name)) => (kind, Some(cstring("the resource name", name)?)),
        None => (rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY, None),
    };
    let pattern = match (f.prefixed, f.matching) {
        (true, _) => RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
        (_, true) => RD_KAFKA_RESOURCE_PATTERN_MATCH,
        _ if name.is_some() => RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        _ => RD_KAFKA_RESOURCE_PATTERN_ANY,
    };
    // Checked here: librdkafka does not send a principal without its type as it was given.
    if let Some(p) = f.principal.as_deref().filter(|p| !p.contains(':')) {
        bail!("--principal {p:?} is not a principal (write it as User:<name>)");
    }
    let principal = f
        .principal
        .as_deref()
        .map(|p| cstring("the principal", p))
        .transpose()?;
    let op = f.operation.map_or(
        rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
        Op::code,
    );
    let mut errstr = [0 as c_char; 512];
    // SAFETY: every string is NUL-terminated and outlives the call (librdkafka copies them);
    // `errstr` is as long as said.
    let made = unsafe {
        rd::rd_kafka_AclBindingFilter_new(
            kind,
            name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
            pattern,
            principal.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
            ptr::null(),
            op,
            rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if made.is_null() {
        bail!("{}", text(errstr.as_ptr()));
    }
    Ok(Owned {
        ptr: made,
        destroy: rd::rd_kafka_AclBinding_destroy,
    })
}

/// Prints the ACLs `filter` selects.
pub(super) fn list(conn: &Conn, filter: &Filter) -> anyhow::Result<()> {
    let session = Session::open(conn)?;
    let f = binding_filter(filter)?;
    // SAFETY: the client, the filter and the queue are live; librdkafka copies the filter.
    unsafe { rd::rd_kafka_DescribeAcls(session.rk(), f.ptr, ptr::null(), session.queue.ptr) };
    let ev = session.result()?;
    // SAFETY: `ev` is a DescribeAcls result event; the bindings live until it is destroyed,
    // which happens after they are printed.
    unsafe {
        let result = rd::rd_kafka_event_DescribeAcls_result(ev.ptr);
        if result.is_null() {
            bail!("the broker's answer is not a DescribeAcls result");
        }
        let mut n = 0usize;
        let acls = rd::rd_kafka_DescribeAcls_result_acls(result, &mut n);
        for i in 0..n {
            out!("{}", describe(*acls.add(i)));
        }
        if n == 0 {
            not_refused(conn)?;
            eprintln!("no ACLs matched");
        }
    }
    Ok(())
}

/// librdkafka drops DescribeAcls' error code (CLUSTER_AUTHORIZATION_FAILED, SECURITY_DISABLED),
/// so an empty answer is asked again through the broker's own client, which reads it: a
/// refusal is an error, not "no ACLs matched".
fn not_refused(conn: &Conn) -> anyhow::Result<()> {
    const ANY: i8 = 1;
    // Every filter field "any": the request's defaults are empty strings, which match nothing.
    let request = DescribeAclsRequest::default()
        .with_resource_type_filter(ANY)
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_pattern_type_filter(ANY)
        .with_operation(ANY)
        .with_permission_type(ANY);
    let response = runtime()?.block_on(async {
        let mut peer = super::quotas::controller(conn).await?;
        peer.call(&request, 1).await
    })?;
    if response.error_code != 0 {
        bail!(
            "the broker refused: {}",
            super::quotas::refusal(response.error_code, response.error_message.as_deref())
        );
    }
    Ok(())
}

/// Creates one ACL per operation of `acl`.
pub(super) fn add(conn: &Conn, acl: &NewAcl) -> anyhow::Result<()> {
    use rd::rd_kafka_ResourcePatternType_t::*;
    let Some((kind, name)) = acl.resource.named() else {
        bail!("say which resource: --topic NAME, --group ID, --transactional-id ID or --cluster");
    };
    if acl.resource.cluster && acl.prefixed {
        bail!(
            "--prefixed names a prefix of topic, group or transactional id names; the cluster has none"
        );
    }
    // As kafka-acls: an operation the resource type has no use for is refused, not stored.
    let (what, resource_type) = acl.resource.kind();
    let valid: Vec<Op> = Op::value_variants()
        .iter()
        .copied()
        .filter(|op| {
            *op == Op::All
                || crate::acl::operations_of(resource_type)
                    .iter()
                    .any(|o| o.code() == op.code() as i8)
        })
        .collect();
    if let Some(op) = acl.operations.iter().find(|op| !valid.contains(op)) {
        let names: Vec<String> = valid.iter().map(|v| v.name()).collect();
        bail!(
            "{what} takes the operations {}, not {}",
            names.join(", "),
            op.name()
        );
    }
    let name_c = cstring("the resource name", name)?;
    let principal = cstring("the principal", &acl.principal)?;
    // An address in the form the broker keeps it (it keeps `::1` for `0:0:0:0:0:0:0:1`), so
    // that what is printed is what is stored.
    let host = match acl.host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => acl.host.clone(),
    };
    let host = cstring("the host", &host)?;
    let mut operations = acl.operations.clone();
    operations.sort_by_key(|op| op.code() as u32);
    operations.dedup();
    let pattern = if acl.prefixed {
        RD_KAFKA_RESOURCE_PATTERN_PREFIXED
    } else {
        RD_KAFKA_RESOURCE_PATTERN_LITERAL
    };
    let permission = if acl.deny {
        rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_DENY
    } else {
        rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW
    };
    let mut bindings = Vec::new();
    for op in &operations {
        let mut errstr = [0 as c_char; 512];
        // SAFETY: as in `binding_filter`.
        let made = unsafe {
            rd::rd_kafka_AclBinding_new(
                kind,
                name_c.as_ptr(),
                pattern,
                principal.as_ptr(),
                host.as_ptr(),
                op.code(),
                permission,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if made.is_null() {
            bail!("{}", text(errstr.as_ptr()));
        }
        bindings.push(Owned {
            ptr: made,
            destroy: rd::rd_kafka_AclBinding_destroy,
        });
    }
    let session = Session::open(conn)?;
    let mut ptrs: Vec<*mut rd::rd_kafka_AclBinding_t> = bindings.iter().map(|b| b.ptr).collect();
    // SAFETY: the client, the bindings and the queue are live; librdkafka copies the bindings.
    unsafe {
        rd::rd_kafka_CreateAcls(
            session.rk(),
            ptrs.as_mut_ptr(),
            ptrs.len(),
            ptr::null(),
            session.queue.ptr,
        )
    };
    let ev = session.result()?;
    let mut failures = Vec::new();
    // SAFETY: `ev` is a CreateAcls result event with one result per binding, in order.
    unsafe {
        let result = rd::rd_kafka_event_CreateAcls_result(ev.ptr);
        if result.is_null() {
            bail!("the broker's answer is not a CreateAcls result");
        }
        let mut n = 0usize;
        let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut n);
        for (i, b) in bindings.iter().enumerate().take(n) {
            let line = describe(b.ptr);
            match error_of(rd::rd_kafka_acl_result_error(*results.add(i))) {
                None => out!("created\t{line}"),
                Some(why) => failures.push(format!("{line}: {why}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!("cannot create ACLs:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Deletes the ACLs `filter` selects and prints them.
pub(super) fn remove(conn: &Conn, filter: &Filter) -> anyhow::Result<()> {
    if filter.matching {
        bail!(
            "--matching is for list (it selects every ACL that applies to a name, whoever it is \
             for); remove takes the ACLs' own resource and pattern"
        );
    }
    if filter.resource.named().is_none() && filter.principal.is_none() {
        bail!(
            "say which ACLs to remove: a resource (--topic, --group, --transactional-id, --cluster) \
             or a --principal, \
             or both"
        );
    }
    let session = Session::open(conn)?;
    let f = binding_filter(filter)?;
    let mut filters = [f.ptr];
    // SAFETY: as in `list`.
    unsafe {
        rd::rd_kafka_DeleteAcls(
            session.rk(),
            filters.as_mut_ptr(),
            1,
            ptr::null(),
            session.queue.ptr,
        )
    };
    let ev = session.result()?;
    // SAFETY: `ev` is a DeleteAcls result event with one response per filter.
    unsafe {
        let result = rd::rd_kafka_event_DeleteAcls_result(ev.ptr);
        if result.is_null() {
            bail!("the broker's answer is not a DeleteAcls result");
        }
        let mut n = 0usize;
        let responses = rd::rd_kafka_DeleteAcls_result_responses(result, &mut n);
        for i in 0..n {
            let response = *responses.add(i);
            if let Some(why) = error_of(rd::rd_kafka_DeleteAcls_result_response_error(response)) {
                bail!("cannot remove ACLs: {why}");
            }
            let mut m = 0usize;
            let acls = rd::rd_kafka_DeleteAcls_result_response_matching_acls(response, &mut m);
            for j in 0..m {
                out!("removed\t{}", describe(*acls.add(j)));
            }
            if m == 0 {
                eprintln!("no ACL matched");
            }
        }
    }
    Ok(())
}
