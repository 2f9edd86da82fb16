//! The high watermarks kept on disk (`<data_dir>/replication-checkpoint`), as Kafka keeps its
//! `replication-offset-checkpoint`: a broker that starts as leader takes them back instead of
//! taking its whole log as replicated, so records only it had (acks=1 writes its followers never
//! copied) stay unread until the followers have them or have left the in-sync set.
//!
//! One line per partition, `<high watermark> <partition> <topic>`, written whole (a temporary
//! file renamed over the old one) every few seconds while it changes and at shutdown. A partition
//! missing from the file (the cluster's first start) starts with its log end.
//!
//! A leader whose log ends below the high watermark it saved lost records every in-sync broker
//! had (a power cut took the log's unsynced tail): it takes no writes to that partition until
//! every follower has said how far its log goes, nor while one holds records it lacks (then the
//! lead must move there) ([`super::lost_records`]).
//!
//! `<data_dir>/replication-leader` names the broker whose records the log holds above its high
//! watermark: this one while it leads, the leader once it has compared logs with it as a
//! follower. A follower cuts records its leader does not have only when they may be its own
//! (taken while it led, or from another leader): records the same leader gave it are kept, as
//! the leader lost them ([`super::follower`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ReplicaState, set_high_watermark};
use crate::broker::Broker;

const FILE: &str = "replication-checkpoint";
const LEADER_FILE: &str = "replication-leader";

/// The broker whose records the log holds above its high watermark, as last written; `None`
/// when unknown (a data directory from before this file).
pub fn records_leader(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join(LEADER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A broker alone: whatever it takes is its own, so the note of another leader's records goes
/// (a follower again later compares its log with its leader as one that led).
pub fn forget_records_leader(data_dir: &Path) {
    let path = data_dir.join(LEADER_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove the note of whose records the log holds")
        }
    }
}

/// Notes that the log's records above its high watermark are `node`'s.
pub fn set_records_leader(data_dir: &Path, node: i32) {
    let path = data_dir.join(LEADER_FILE);
    if records_leader(data_dir) == Some(node) {
        return;
    }
    if let Err(e) = crate::storage::write_file_atomic(&path, format!("{node}\n").as_bytes()) {
        tracing::warn!(file = %path.display(), error = %e, "cannot note whose records the log holds");
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The file's contents, or what the broker knows now if the file is missing or damaged (a
/// damaged line is skipped with a warning).
fn read(data_dir: &Path) -> HashMap<(String, i32), i64> {
    let path = path(data_dir);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.splitn(3, ' ');
        let parsed = (|| {
            let hw = fields.next()?.parse().ok()?;
            let partition = fields.next()?.parse().ok()?;
            Some(((fields.next()?.to_string(), partition), hw))
        })();
        match parsed {
            Some((key, hw)) => {
                out.insert(key, hw);
            }
            None => tracing::warn!(file = %path.display(), line = n + 1, "skipping a damaged line"),
        }
    }
    out
}

/// Sets every partition's high watermark from the file (never above its log end). On a leader,
/// a log that ends below it lost records: see the module docs.
pub fn restore(broker: &Broker) {
    let data_dir = &broker.config.broker.data_dir;
    let saved = read(data_dir);
    let leader = broker.cluster.as_ref().filter(|c| c.is_leader());
    if let Some(c) = leader {
        set_records_leader(data_dir, c.node_id);
    }
    for topic in broker.catalog.list() {
        for p in topic.partitions() {
            if let Some(&hw) = saved.get(&(topic.name.to_string(), p.index)) {
                let end = p.log().log_end_offset();
                if leader.is_some() && hw > end {
                    tracing::error!(topic = %topic.name, partition = p.index, log_end = end, high_watermark = hw,
                        "the log ends below the high watermark it had: records every in-sync broker had are missing here (a power cut took the log's unsynced tail?); the partition takes no writes until every follower has said how far its log goes (move the lead to one that has them)");
                    super::lost_at_start(&p, hw);
                }
                let hw = hw.min(end).max(0);
                ReplicaState::restore(&p.replica, hw);
                set_high_watermark(&p, hw);
            }
        }
    }
}

/// The high watermarks now, as the file holds them.
fn render(broker: &Broker) -> String {
    let cluster = broker.cluster.as_ref();
    let mut out = String::new();
    for topic in broker.catalog.list() {
        for p in topic.partitions() {
            let end = p.log().log_end_offset();
            let hw = super::readable_end(cluster, &p, end);
            out.push_str(&format!("{hw} {} {}\n", p.index, topic.name));
        }
    }
    out
}

/// Writes the file if the high watermarks changed since `last` (what was written last time).
pub fn save(broker: &Broker, last: &mut String) {
    let now = render(broker);
    if now == *last {
        return;
    }
    let path = path(&broker.config.broker.data_dir);
    match crate::storage::write_file_atomic(&path, now.as_bytes()) {
        Ok(()) => *last = now,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the high watermarks")
        }
    }
}
