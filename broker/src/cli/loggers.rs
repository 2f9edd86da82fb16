//! `runnel loggers list|set|reset`: a broker's log levels while it runs, as Kafka's
//! `kafka-configs --entity-type broker-loggers` changes them (DescribeConfigs and
//! IncrementalAlterConfigs on the BROKER_LOGGER resource; `crate::logging`). A logger is a
//! module path (`runnel::net`, `runnel::storage::compaction`, `quinn`) or `root`; a change lasts
//! until the broker stops. Connections are made as `runnel quotas` makes them.

use anyhow::{Context as _, bail};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{DescribeConfigsRequest, IncrementalAlterConfigsRequest};
use kafka_protocol::protocol::StrBytes;

use super::Conn;
use super::client::runtime;
use super::quotas::{bootstrap, connect, refusal};
use crate::protocol::apis::describe_configs::RESOURCE_BROKER_LOGGER;
use crate::replication::peer::Peer;

/// Prints each logger of the broker with its level: `root`, those set, the broker's modules.
pub(super) fn list(conn: &Conn, broker: Option<i32>) -> anyhow::Result<()> {
    let response = runtime()?.block_on(async {
        let (mut peer, id) = connect_to(conn, broker).await?;
        let resource = DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_BROKER_LOGGER)
            .with_resource_name(StrBytes::from(id.to_string()));
        peer.call(
            &DescribeConfigsRequest::default().with_resources(vec![resource]),
            1,
        )
        .await
    })?;
    let result = response
        .results
        .first()
        .context("the broker answered with no result")?;
    if result.error_code != 0 {
        bail!(
            "the broker refused: {}",
            refusal(result.error_code, result.error_message.as_deref())
        );
    }
    for c in &result.configs {
        println!(
            "{}\t{}",
            c.name.as_str(),
            c.value.as_ref().map_or("", |v| v.as_str())
        );
    }
    Ok(())
}

/// Sets `LOGGER=LEVEL` pairs (TRACE, DEBUG, INFO, WARN, ERROR or OFF), together.
pub(super) fn set(conn: &Conn, broker: Option<i32>, pairs: &[String]) -> anyhow::Result<()> {
    let changes = pairs
        .iter()
        .map(|p| {
            let (logger, level) = p
                .split_once('=')
                .with_context(|| format!("{p}: expected LOGGER=LEVEL, e.g. runnel::net=debug"))?;
            Ok((logger.to_string(), Some(level.to_string())))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    alter(conn, broker, &changes)?;
    println!("set\t{}", pairs.join("\t"));
    Ok(())
}

/// Lets loggers log at the root's level again.
pub(super) fn reset(conn: &Conn, broker: Option<i32>, loggers: &[String]) -> anyhow::Result<()> {
    let changes: Vec<_> = loggers.iter().map(|l| (l.clone(), None)).collect();
    alter(conn, broker, &changes)?;
    println!("reset\t{}", loggers.join("\t"));
    Ok(())
}

fn alter(
    conn: &Conn,
    broker: Option<i32>,
    changes: &[(String, Option<String>)],
) -> anyhow::Result<()> {
    let configs = changes
        .iter()
        .map(|(logger, level)| {
            AlterableConfig::default()
                .with_name(StrBytes::from(logger.clone()))
                // 0: SET, 1: DELETE.
                .with_config_operation(if level.is_some() { 0 } else { 1 })
                .with_value(level.clone().map(StrBytes::from))
        })
        .collect();
    let response = runtime()?.block_on(async {
        let (mut peer, id) = connect_to(conn, broker).await?;
        let resource = AlterConfigsResource::default()
            .with_resource_type(RESOURCE_BROKER_LOGGER)
            .with_resource_name(StrBytes::from(id.to_string()))
            .with_configs(configs);
        peer.call(
            &IncrementalAlterConfigsRequest::default().with_resources(vec![resource]),
            0,
        )
        .await
    })?;
    match response.responses.first() {
        Some(r) if r.error_code != 0 => bail!(
            "the broker refused: {}",
            refusal(r.error_code, r.error_message.as_deref())
        ),
        Some(_) => Ok(()),
        None => bail!("the broker answered with no result"),
    }
}

/// A connection to the broker `id` (with none: the cluster's only broker) and its id.
async fn connect_to(conn: &Conn, id: Option<i32>) -> anyhow::Result<(Peer, i32)> {
    let b = bootstrap(conn).await?;
    let ids: Vec<i32> = b.metadata.brokers.iter().map(|x| x.node_id.0).collect();
    let wanted = match (id, ids.as_slice()) {
        (Some(id), _) => id,
        (None, [only]) => *only,
        (None, _) => bail!(
            "the cluster has brokers {}: say which with --broker",
            ids.iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let Some(broker) = b.metadata.brokers.iter().find(|x| x.node_id.0 == wanted) else {
        bail!("the cluster has no broker {wanted} (it has {ids:?})");
    };
    let address = format!("{}:{}", broker.host.as_str(), broker.port);
    if ids.len() == 1 || address == b.address {
        return Ok((b.peer, wanted));
    }
    let peer = connect(&address, &b.settings)
        .await
        .with_context(|| format!("cannot reach broker {wanted} at {address}"))?;
    Ok((peer, wanted))
}
