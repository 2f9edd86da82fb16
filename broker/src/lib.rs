//! Runnel: a compact Kafka-compatible broker appliance for edge gateways.
//!
//! The map (one responsibility per module):
//!
//! | module | owns |
//! | --- | --- |
//! | [`admin`] | admin HTTP: health and Prometheus metrics |
//! | [`broker`] | shared state, start-up ([`start_broker`]) and shutdown, background log work |
//! | [`net`] | listeners: Kafka over TCP and TLS; one task per connection |
//! | [`protocol`] | framing glue, the route table (which also answers ApiVersions), one file per API |
//! | [`acl`] | authorization: the Kafka ACLs in force and the decisions made from them |
//! | [`catalog`] | topics, partitions and per-topic configs |
//! | [`storage`] | the segment log of one partition: segments, indexes, recovery, retention, compaction |
//! | [`meta`] | redb: topics, committed offsets, producer ids, federation cursors, ACLs |
//! | [`groups`] | the consumer-group coordinator |
//! | [`transactions`] | the transaction coordinator: transactional producers, their markers |
//! | [`plugins`] | the wasmtime host: loading, caching, limits, the topic filter chains |
//! | [`cli`] | the `runnel` command line |
//!
//! Data path of a produce: `net::conn` reads a frame -> `protocol::frame` decodes the header ->
//! `protocol::Dispatcher` routes it -> `protocol::apis::produce` -> `plugins` runs the topic's chain, if it has one ->
//! `acl` checks the principal may write -> `catalog` finds the partition -> `storage::PartitionLog::append` validates and stamps the batch -> the response.
//! A handler never touches files; storage never knows about sockets.

pub mod acl;
pub mod admin;
mod alloc;
pub mod broker;
pub mod catalog;
pub mod cli;
pub mod client_quotas;
pub mod federation;
pub mod groups;
mod log_budget;
pub mod logging;
pub mod meta;
pub mod net;
pub mod plugins;
pub mod protocol;
pub mod replication;
pub mod storage;
pub mod transactions;

pub use broker::{Broker, BrokerHandle, start_broker, start_broker_from};
pub use edge_config::Config;
