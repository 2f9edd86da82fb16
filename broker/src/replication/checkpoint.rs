//! The high watermarks kept on disk (`<data_dir>/replication-checkpoint`), as Kafka keeps its
//! `replication-offset-checkpoint`: a broker that starts as leader takes them back instead of
//! taking its whole log as replicated, so records only it had (acks=1 writes its followers never
//! copied) stay unread until the followers have them or have left the in-sync set.
//!
//! One line per partition, `<high watermark> <partition> <topic>`, written whole (a temporary
//! file renamed over the old one) every few seconds while it changes and at shutdown. A partition
//! missing from the file (the cluster's first start) starts with its log end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ReplicaState, set_high_watermark};
use crate::broker::Broker;

const FILE: &str = "replication-checkpoint";

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

/// Sets every partition's high watermark from the file (never above its log end).
pub fn restore(broker: &Broker) {
    let saved = read(&broker.config.broker.data_dir);
    for topic in broker.catalog.list() {
        for p in topic.partitions() {
            if let Some(&hw) = saved.get(&(topic.name.to_string(), p.index)) {
                let end = p.log().log_end_offset();
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
