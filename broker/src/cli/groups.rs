//! `runnel groups`: consumer groups as Kafka's `kafka-consumer-groups` tool shows and changes
//! them: list, describe (members, committed offsets, lag), reset offsets, delete; and a group's
//! own configs, as `kafka-configs --entity-type groups`. Built on librdkafka like the other
//! client commands, so it works against any Kafka-compatible broker; the configs go by the
//! broker's own client (librdkafka has no GROUP config resource).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::client::{AuthWatch, TIMEOUT, admin, admin_options, metadata, runtime};
use super::{Conn, GroupsCommand, ResetTo};

pub fn run(cmd: GroupsCommand) -> anyhow::Result<()> {
    match cmd {
        GroupsCommand::List { conn } => list(&conn),
        GroupsCommand::Describe {
            group: Some(group),
            conn,
            ..
        } => describe(&conn, &group),
        GroupsCommand::Describe { conn, .. } => {
            for (i, group) in group_names(&conn)?.iter().enumerate() {
                if i > 0 {
                    out!("");
                }
                describe(&conn, group)?;
            }
            Ok(())
        }
        GroupsCommand::ResetOffsets {
            group,
            topics,
            all_topics,
            to,
            execute,
            conn,
        } => reset_offsets(&conn, &group, &topics, all_topics, &to.resolve()?, execute),
        GroupsCommand::Configs {
            group,
            configs,
            delete_configs,
            conn,
        } => group_configs(&conn, &group, &configs, &delete_configs),
        GroupsCommand::Delete { group, conn } => delete(&conn, &group),
    }
}

/// Sets and removes `group`'s own configs (at the controller, which coordinates the groups),
/// then prints every group config: `KEY\tVALUE\tSOURCE`, the source `group` for the group's
/// own, `broker` for the broker's setting, `default` for Kafka's default.
fn group_configs(
    conn: &Conn,
    group: &str,
    configs: &[String],
    delete_configs: &[String],
) -> anyhow::Result<()> {
    use super::client::{GROUP, config_pairs, config_refusal_of, incremental_alter_request};
    use kafka_protocol::messages::DescribeConfigsRequest;
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::protocol::StrBytes;
    let pairs = config_pairs(configs)?;
    let rt = runtime()?;
    let mut peer = rt.block_on(super::quotas::controller(conn))?;
    if !pairs.is_empty() || !delete_configs.is_empty() {
        let request = incremental_alter_request(GROUP, group, &pairs, delete_configs);
        config_refusal_of(
            &format!("group {group}"),
            rt.block_on(peer.call(&request, 0))?,
        )?;
    }
    let request = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(GROUP)
            .with_resource_name(StrBytes::from_string(group.to_string())),
    ]);
    let described = rt.block_on(peer.call(&request, 4))?;
    let Some(result) = described.results.first() else {
        bail!("the broker answered with no result");
    };
    if result.error_code != 0 {
        bail!(
            "cannot describe the configs of group {group}: {}",
            super::quotas::refusal(result.error_code, result.error_message.as_deref())
        );
    }
    for c in &result.configs {
        let source = match c.config_source {
            8 => "group",
            // The dynamic broker configs (2, 3) and the static (4).
            2..=4 => "broker",
            _ => "default",
        };
        out!(
            "{}\t{}\t{source}",
            c.name.as_str(),
            c.value.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// A client that reads `group`'s committed offsets. It never subscribes, so it does not join
/// the group. Without a group (to list them) it asks for no group's coordinator, which the
/// ACLs may refuse.
fn group_client(conn: &Conn, group: Option<&str>) -> anyhow::Result<BaseConsumer<AuthWatch>> {
    let mut cfg = conn.client_config()?;
    if let Some(group) = group {
        if group.is_empty() {
            bail!("a group id cannot be empty");
        }
        cfg.set("group.id", group);
    }
    let client = cfg
        .set("enable.auto.commit", "false")
        .create_with_context(AuthWatch::default())
        .map_err(|e| super::client_error(e, "cannot create a Kafka client"))?;
    // Reaches the broker first: a refused login is said at once, with the broker's reason.
    metadata(&client, None)?;
    Ok(client)
}

fn list(conn: &Conn) -> anyhow::Result<()> {
    let client = group_client(conn, None)?;
    let list = client
        .fetch_group_list(None, TIMEOUT)
        .context("listing the consumer groups failed")?;
    let mut groups: Vec<_> = list.groups().iter().collect();
    groups.sort_by(|a, b| a.name().cmp(b.name()));
    out!("{:<32} {:<20} MEMBERS", "GROUP", "STATE");
    for g in groups {
        out!("{:<32} {:<20} {}", g.name(), g.state(), g.members().len());
    }
    Ok(())
}

/// The names of the broker's groups, sorted.
fn group_names(conn: &Conn) -> anyhow::Result<Vec<String>> {
    let client = group_client(conn, None)?;
    let list = client
        .fetch_group_list(None, TIMEOUT)
        .context("listing the consumer groups failed")?;
    let mut names: Vec<String> = list.groups().iter().map(|g| g.name().to_string()).collect();
    names.sort();
    Ok(names)
}

/// A group as its coordinator describes it.
struct Group {
    state: String,
    members: Vec<Member>,
}

struct Member {
    id: String,
    host: String,
    client_id: String,
    /// The partitions assigned to it, from its consumer-protocol assignment.
    partitions: Vec<(String, i32)>,
}

/// Describes `group` (state "Dead" and no members when the coordinator does not know it).
fn describe_group(client: &BaseConsumer<AuthWatch>, group: &str) -> anyhow::Result<Group> {
    let list = client
        .fetch_group_list(Some(group), TIMEOUT)
        .with_context(|| format!("describing consumer group {group} failed"))?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(Group {
            state: "Dead".into(),
            members: Vec::new(),
        });
    };
    let members = info
        .members()
        .iter()
        .map(|m| Member {
            id: m.id().to_string(),
            host: m.client_host().to_string(),
            client_id: m.client_id().to_string(),
            partitions: m
                .assignment()
                .and_then(decode_assignment)
                .map(|a| {
                    a.assigned_partitions
                        .into_iter()
                        .flat_map(|tp| {
                            let topic = tp.topic.to_string();
                            tp.partitions.into_iter().map(move |p| (topic.clone(), p))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(Group {
        state: info.state().to_string(),
        members,
    })
}

/// Every partition of every topic the broker has, as (topic, partition).
fn all_partitions(client: &BaseConsumer<AuthWatch>) -> anyhow::Result<Vec<(String, i32)>> {
    let md = client
        .fetch_metadata(None, TIMEOUT)
        .context("metadata request failed")?;
    Ok(md
        .topics()
        .iter()
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(|p| (t.name().to_string(), p.id()))
        })
        .collect())
}

/// The group's committed offsets among `partitions` (those without one left out).
fn committed(
    client: &BaseConsumer<AuthWatch>,
    group: &str,
    partitions: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    // Asked in short steps, so that a group the ACLs refuse is said at once (librdkafka hands
    // the refusal to the context only when the client is polled, and retries until its timeout).
    let deadline = std::time::Instant::now() + TIMEOUT;
    let got = loop {
        match client.committed_offsets(tpl.clone(), std::time::Duration::from_millis(500)) {
            Ok(got) => break got,
            Err(e) => {
                let _ = client.poll(std::time::Duration::ZERO);
                if client.context().group_refused() {
                    bail!("not authorized to access group {group} (GROUP_AUTHORIZATION_FAILED)");
                }
                // A refused login, with the broker's reason.
                client.context().check()?;
                let timed_out = e.rdkafka_error_code()
                    == Some(rdkafka::types::RDKafkaErrorCode::OperationTimedOut);
                if !timed_out || std::time::Instant::now() >= deadline {
                    return Err(e).context("reading the committed offsets failed");
                }
            }
        }
    };
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// A consumer-protocol assignment (version, then the body at that version); `None` for
/// another protocol's bytes.
fn decode_assignment(bytes: &[u8]) -> Option<ConsumerProtocolAssignment> {
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16().clamp(0, 3);
    ConsumerProtocolAssignment::decode(&mut buf, version).ok()
}

fn describe(conn: &Conn, group: &str) -> anyhow::Result<()> {
    let client = group_client(conn, Some(group))?;
    let info = describe_group(&client, group)?;
    let offsets = committed(&client, group, &all_partitions(&client)?)?;
    if offsets.is_empty() && info.members.is_empty() && info.state == "Dead" {
        bail!("consumer group {group} does not exist (no members and no committed offsets)");
    }
    let owners: BTreeMap<&(String, i32), &Member> = info
        .members
        .iter()
        .flat_map(|m| m.partitions.iter().map(move |tp| (tp, m)))
        .collect();
    out!(
        "group {group}: {}, {} member(s)",
        info.state,
        info.members.len()
    );
    out!(
        "{:<24} {:>9} {:>14} {:>14} {:>8}  {:<40} {:<16} CLIENT-ID",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST"
    );
    let mut rows: Vec<&(String, i32)> = offsets.keys().chain(owners.keys().copied()).collect();
    rows.sort();
    rows.dedup();
    for key in rows {
        let (topic, partition) = key;
        let current = offsets.get(key).copied();
        let end = client
            .fetch_watermarks(topic, *partition, TIMEOUT)
            .map(|(_, high)| high)
            .ok();
        let lag = match (current, end) {
            (Some(c), Some(e)) => (e - c).max(0).to_string(),
            _ => "-".into(),
        };
        let dash = || "-".to_string();
        let owner = owners.get(key);
        let (id, host, client_id) = match owner {
            Some(m) => (m.id.as_str(), m.host.as_str(), m.client_id.as_str()),
            None => ("-", "-", "-"),
        };
        out!(
            "{:<24} {:>9} {:>14} {:>14} {:>8}  {:<40} {:<16} {}",
            topic,
            partition,
            current.map_or_else(dash, |c| c.to_string()),
            end.map_or_else(dash, |e| e.to_string()),
            lag,
            id,
            host,
            client_id
        );
    }
    // Members that hold no partition, as kafka-consumer-groups lists them.
    for m in info.members.iter().filter(|m| m.partitions.is_empty()) {
        out!(
            "{:<24} {:>9} {:>14} {:>14} {:>8}  {:<40} {:<16} {}",
            "-",
            "-",
            "-",
            "-",
            "-",
            m.id,
            m.host,
            m.client_id
        );
    }
    Ok(())
}

fn reset_offsets(
    conn: &Conn,
    group: &str,
    topics: &[String],
    all_topics: bool,
    to: &ResetTo,
    execute: bool,
) -> anyhow::Result<()> {
    // Exactly one of the two: topics named, or all of them.
    if !topics.is_empty() && all_topics {
        bail!("--all-topics and --topic exclude each other: give one of them");
    }
    if topics.is_empty() && !all_topics {
        bail!("name the partitions to reset: --topic NAME[:P,P..] (repeatable) or --all-topics");
    }
    let client = group_client(conn, Some(group))?;
    let info = describe_group(&client, group)?;
    if !info.members.is_empty() {
        bail!(
            "offsets of group {group} can only be reset while it has no members, but it is {} \
             with {} member(s): stop its consumers first",
            info.state,
            info.members.len()
        );
    }
    let everything = all_partitions(&client)?;
    let current = committed(&client, group, &everything)?;
    let mut chosen: Vec<(String, i32)> = Vec::new();
    if all_topics {
        chosen.extend(current.keys().cloned());
    }
    for spec in topics {
        let (name, parts) = match spec.split_once(':') {
            Some((n, ps)) => {
                let parts = ps
                    .split(',')
                    .map(|p| p.trim().parse::<i32>())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("--topic {spec}: expected NAME or NAME:P,P.."))?;
                (n, Some(parts))
            }
            None => (spec.as_str(), None),
        };
        let known: Vec<i32> = everything
            .iter()
            .filter(|(t, _)| t == name)
            .map(|(_, p)| *p)
            .collect();
        if known.is_empty() {
            bail!("topic {name} does not exist");
        }
        for p in parts.unwrap_or_else(|| known.clone()) {
            if !known.contains(&p) {
                bail!("topic {name} has no partition {p}");
            }
            chosen.push((name.to_string(), p));
        }
    }
    chosen.sort();
    chosen.dedup();
    if chosen.is_empty() {
        bail!("group {group} has no committed offsets to reset");
    }
    // Checked before the plan is printed, so that a refusal prints no part of it.
    if matches!(to, ResetTo::ShiftBy(_))
        && let Some((topic, partition)) = chosen.iter().find(|k| !current.contains_key(*k))
    {
        bail!("{topic}-{partition} has no committed offset to shift from");
    }

    let times = match to {
        ResetTo::Datetime(ms) => {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &chosen {
                tpl.add_partition_offset(t, *p, Offset::Offset(*ms))?;
            }
            let found = client
                .offsets_for_times(tpl, TIMEOUT)
                .context("looking the offsets up by time failed")?;
            found
                .elements()
                .iter()
                .map(|e| ((e.topic().to_string(), e.partition()), e.offset()))
                .collect::<BTreeMap<_, _>>()
        }
        _ => BTreeMap::new(),
    };

    let mut plan = TopicPartitionList::new();
    out!(
        "{:<24} {:>9} {:>14} {:>11}",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "NEW-OFFSET"
    );
    for key in &chosen {
        let (topic, partition) = key;
        let (low, high) = client
            .fetch_watermarks(topic, *partition, TIMEOUT)
            .with_context(|| format!("reading the offsets of {topic}-{partition} failed"))?;
        let now = current.get(key).copied();
        let wanted = match to {
            ResetTo::Earliest => low,
            ResetTo::Latest => high,
            ResetTo::Offset(o) => *o,
            // Every partition has one (checked above).
            ResetTo::ShiftBy(n) => now.unwrap_or(low).saturating_add(*n),
            // No record at or after the time: the end, as Kafka's tool does.
            ResetTo::Datetime(_) => match times.get(key) {
                Some(Offset::Offset(o)) => *o,
                _ => high,
            },
        };
        // As Kafka's tool: an offset outside the log is moved to its nearer end.
        let new = wanted.min(high).max(low);
        out!(
            "{:<24} {:>9} {:>14} {:>11}",
            topic,
            partition,
            now.map_or_else(|| "-".to_string(), |c| c.to_string()),
            new
        );
        plan.add_partition_offset(topic, *partition, Offset::Offset(new))?;
    }
    if !execute {
        out!("(dry run: nothing changed; add --execute to commit these offsets)");
        return Ok(());
    }
    client
        .commit(&plan, CommitMode::Sync)
        .with_context(|| format!("committing the offsets of group {group} failed"))?;
    out!("committed {} offset(s) for group {group}", plan.count());
    Ok(())
}

fn delete(conn: &Conn, group: &str) -> anyhow::Result<()> {
    let admin = admin(conn)?;
    let results = runtime()?.block_on(admin.delete_groups(&[group], &admin_options()))?;
    for r in results {
        match r {
            Ok(g) => out!("deleted consumer group {g}"),
            Err((g, code)) => bail!("cannot delete consumer group {g}: {code}"),
        }
    }
    Ok(())
}
