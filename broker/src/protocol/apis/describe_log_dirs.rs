//! DescribeLogDirs (key 35): which log directories a broker has and how many bytes each
//! partition's log takes in them, for `kafka-log-dirs.sh`, `AdminClient.describeLogDirs` and the
//! disk-usage panels of Kafka UIs. This broker has one log directory, `broker.data_dir`, and no
//! replicas or future logs: it answers one result for the data dir's absolute path, each partition
//! asked for (all when `topics` is null, none when it is empty) with the bytes of its segments,
//! an offset lag of 0 and `is_future_key` false. Topics and partitions it does not have are left
//! out, as Kafka leaves them out. v4 adds the size of the data dir's file system and the bytes
//! free on it for the broker (statvfs), or -1 (unknown to clients) when they cannot be read.
//! The client needs Describe on the cluster (`crate::acl`); without it, as in Kafka, the answer
//! lists no directory and (v3+) carries CLUSTER_AUTHORIZATION_FAILED.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::s;
use crate::catalog::{Partition, Topic};
use crate::protocol::Ctx;

pub async fn handle(ctx: Ctx, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    let catalog = &ctx.broker.catalog;
    if !ctx.allowed_on_cluster(crate::acl::Operation::Describe) {
        return DescribeLogDirsResponse::default().with_error_code(
            kafka_protocol::error::ResponseError::ClusterAuthorizationFailed.code(),
        );
    }
    // Each topic with the partitions of it that exist and were asked for; a name or partition
    // asked for twice is described once.
    let chosen: Vec<(Arc<Topic>, Vec<Arc<Partition>>)> = match req.topics {
        None => catalog
            .list()
            .into_iter()
            .map(|t| {
                let parts = t.partitions();
                (t, parts)
            })
            .collect(),
        Some(asked) => {
            let mut wanted: BTreeMap<TopicName, BTreeSet<i32>> = BTreeMap::new();
            for t in asked {
                wanted.entry(t.topic).or_default().extend(t.partitions);
            }
            wanted
                .into_iter()
                .filter_map(|(name, indexes)| {
                    let topic = catalog.get(&name)?;
                    let parts = indexes
                        .into_iter()
                        .filter_map(|i| topic.partition(i))
                        .collect();
                    Some((topic, parts))
                })
                .collect()
        }
    };
    let topics = chosen
        .into_iter()
        .filter(|(_, parts)| !parts.is_empty())
        .map(|(topic, parts)| {
            let partitions = parts
                .iter()
                .map(|p| {
                    let size = p.log().size_bytes();
                    DescribeLogDirsPartition::default()
                        .with_partition_index(p.index)
                        .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                        .with_offset_lag(0)
                        .with_is_future_key(false)
                })
                .collect();
            DescribeLogDirsTopic::default()
                .with_name(TopicName(s(&*topic.name)))
                .with_partitions(partitions)
        })
        .collect();
    let data_dir = &ctx.broker.config.broker.data_dir;
    // Kafka reports the absolute path; `absolute` only fails on an empty path or without a
    // working directory, and then the configured path is the best there is.
    let log_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone());
    // As Java's `FileStore` reports them: all blocks, and those free to an unprivileged user.
    let (total, usable) = match rustix::fs::statvfs(&log_dir) {
        Ok(v) => (
            v.f_blocks.saturating_mul(v.f_frsize),
            v.f_bavail.saturating_mul(v.f_frsize),
        ),
        Err(e) => {
            tracing::debug!(dir = %log_dir.display(), error = %e, "cannot read the data dir's file system size");
            (u64::MAX, u64::MAX)
        }
    };
    let bytes = |n: u64| i64::try_from(n).unwrap_or(-1);
    let result = DescribeLogDirsResult::default()
        .with_error_code(0)
        .with_log_dir(s(log_dir.to_string_lossy()))
        .with_topics(topics)
        // The codec writes these only at v4.
        .with_total_bytes(bytes(total))
        .with_usable_bytes(bytes(usable));
    DescribeLogDirsResponse::default()
        .with_error_code(0)
        .with_results(vec![result])
}
