//! `runnel quotas list|set|remove`: Kafka's client quotas from the command line, as
//! `kafka-configs.sh --entity-type users|clients` manages them, against Runnel or any Kafka
//! cluster.
//!
//! librdkafka has no client-quota API, so DescribeClientQuotas and AlterClientQuotas are sent by
//! the broker's own Kafka client (`replication::peer`): plaintext or TLS, with a SASL PLAIN or
//! SCRAM login, set with the librdkafka properties of the same meaning (`-X
//! security.protocol=sasl_ssl -X sasl.mechanism=SCRAM-SHA-256 -X sasl.username=... -X
//! sasl.password=... -X ssl.ca.location=ca.pem`); any other property is refused by name rather
//! than ignored. The requests go to the cluster's controller, found with Metadata (a Runnel
//! cluster's leader, which keeps the quotas).

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, DescribeClientQuotasRequest, MetadataRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::Conn;
use super::client::{TIMEOUT, runtime};
use crate::client_quotas::{CLIENT_ID, IP, USER};
use crate::replication::Login;
use crate::replication::peer::Peer;

/// The user and client id (or the IP address) a command is about; for `list`, a filter (none:
/// every quota).
#[derive(Args, Clone, Debug)]
pub(super) struct Entity {
    /// A user: the principal's name (`alice` for User:alice; ANONYMOUS for clients that did
    /// not log in).
    #[arg(long, conflicts_with = "user_default")]
    user: Option<String>,
    /// The default user: every user without a quota of its own.
    #[arg(long)]
    user_default: bool,
    /// A client id (`client.id` of the client).
    #[arg(long, conflicts_with = "client_default")]
    client_id: Option<String>,
    /// The default client id: every client id without a quota of its own.
    #[arg(long)]
    client_default: bool,
    /// An IP address, for connection_creation_rate (alone: not with a user or client id).
    #[arg(long, conflicts_with_all = ["ip_default", "user", "user_default", "client_id", "client_default"])]
    ip: Option<String>,
    /// The default IP address: every address without a quota of its own, each counted alone.
    #[arg(long, conflicts_with_all = ["user", "user_default", "client_id", "client_default"])]
    ip_default: bool,
}

impl Entity {
    /// The (type, name) parts given; `None` names the default.
    fn parts(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut parts = Vec::new();
        if let Some(u) = &self.user {
            parts.push((USER, Some(u.as_str())));
        } else if self.user_default {
            parts.push((USER, None));
        }
        if let Some(c) = &self.client_id {
            parts.push((CLIENT_ID, Some(c.as_str())));
        } else if self.client_default {
            parts.push((CLIENT_ID, None));
        }
        if let Some(ip) = &self.ip {
            parts.push((IP, Some(ip.as_str())));
        } else if self.ip_default {
            parts.push((IP, None));
        }
        parts
    }

    fn required(&self) -> anyhow::Result<Vec<(&'static str, Option<&str>)>> {
        let parts = self.parts();
        if parts.is_empty() {
            bail!(
                "name the entity: --user NAME or --user-default, --client-id NAME or \
                 --client-default, or one of each; or --ip ADDRESS or --ip-default"
            );
        }
        Ok(parts)
    }
}

fn st(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// Prints the quotas the entity's parts match, one entity per line.
pub(super) fn list(conn: &Conn, entity: &Entity) -> anyhow::Result<()> {
    let components = entity
        .parts()
        .into_iter()
        .map(|(kind, name)| {
            // 0: this name exactly; 1: the default.
            ComponentData::default()
                .with_entity_type(st(kind))
                .with_match_type(if name.is_some() { 0 } else { 1 })
                .with_match(name.map(st))
        })
        .collect();
    let request = DescribeClientQuotasRequest::default()
        .with_components(components)
        .with_strict(false);
    let response = runtime()?.block_on(async {
        let mut peer = controller(conn).await?;
        peer.call(&request, 1).await
    })?;
    if response.error_code != 0 {
        bail!(
            "the broker refused: {}",
            refusal(response.error_code, response.error_message.as_deref())
        );
    }
    let mut lines: Vec<String> = response
        .entries
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let mut line = e
                .entity
                .iter()
                .map(|p| {
                    let name = p.entity_name.as_deref().unwrap_or("<default>");
                    format!("{}={name}", p.entity_type.as_str())
                })
                .collect::<Vec<_>>()
                .join(" ");
            let mut values: Vec<_> = e.values.iter().collect();
            values.sort_by(|a, b| a.key.cmp(&b.key));
            for v in values {
                let _ = write!(line, "\t{}={}", v.key.as_str(), v.value);
            }
            line
        })
        .collect();
    lines.sort();
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Sets `KEY=VALUE` quotas of the entity; byte rates take sizes (`1MiB` = 1,048,576 a second),
/// the other keys numbers.
pub(super) fn set(conn: &Conn, entity: &Entity, quotas: &[String]) -> anyhow::Result<()> {
    let ops = quotas
        .iter()
        .map(|q| {
            let (key, value) = q
                .split_once('=')
                .with_context(|| format!("{q}: expected KEY=VALUE"))?;
            let size = key
                .ends_with("_byte_rate")
                .then(|| edge_config::units::parse_bytes(value))
                .flatten();
            let value = match size {
                Some(bytes) => bytes as f64,
                None => value.parse::<f64>().ok().with_context(|| {
                    if key.ends_with("_byte_rate") {
                        format!("{q}: {value:?} is not a number (or a size, e.g. 512KiB)")
                    } else {
                        format!("{q}: {value:?} is not a number")
                    }
                })?,
            };
            Ok(OpData::default().with_key(st(key)).with_value(value))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let said: Vec<String> = ops
        .iter()
        .map(|op| format!("{}={}", op.key.as_str(), op.value))
        .collect();
    alter(conn, entity, ops)?;
    println!("set\t{}\t{}", entity_text(entity)?, said.join("\t"));
    Ok(())
}

/// Removes quotas of the entity, by key.
pub(super) fn remove(conn: &Conn, entity: &Entity, keys: &[String]) -> anyhow::Result<()> {
    let ops = keys
        .iter()
        .map(|k| OpData::default().with_key(st(k)).with_remove(true))
        .collect();
    alter(conn, entity, ops)?;
    println!("removed\t{}\t{}", entity_text(entity)?, keys.join("\t"));
    Ok(())
}

/// The entity as `list` prints it: `user=bob client-id=<default>`.
fn entity_text(entity: &Entity) -> anyhow::Result<String> {
    Ok(entity
        .required()?
        .into_iter()
        .map(|(kind, name)| format!("{kind}={}", name.unwrap_or("<default>")))
        .collect::<Vec<_>>()
        .join(" "))
}

fn alter(conn: &Conn, entity: &Entity, ops: Vec<OpData>) -> anyhow::Result<()> {
    let parts = entity
        .required()?
        .into_iter()
        .map(|(kind, name)| {
            EntityData::default()
                .with_entity_type(st(kind))
                .with_entity_name(name.map(st))
        })
        .collect();
    let request = AlterClientQuotasRequest::default()
        .with_entries(vec![EntryData::default().with_entity(parts).with_ops(ops)]);
    let response = runtime()?.block_on(async {
        let mut peer = controller(conn).await?;
        peer.call(&request, 1).await
    })?;
    match response.entries.first() {
        Some(e) if e.error_code != 0 => bail!(
            "the broker refused: {}",
            refusal(e.error_code, e.error_message.as_deref())
        ),
        Some(_) => Ok(()),
        None => bail!("the broker answered with no result"),
    }
}

pub(super) fn refusal(code: i16, message: Option<&str>) -> String {
    let name = ResponseError::try_from_code(code)
        .map_or_else(|| format!("error {code}"), |e| format!("{e:?}"));
    match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("{name}: {m}"),
        None => name,
    }
}

/// How to reach the brokers, from `--bootstrap` and the `-X` properties.
pub(super) struct Settings {
    tls: Option<Arc<rustls::ClientConfig>>,
    login: Option<Login>,
    client_id: String,
}

/// The `-X` properties this command takes.
const TAKEN: &str = "bootstrap.servers, security.protocol, sasl.mechanism, sasl.username, \
                     sasl.password, ssl.ca.location, ssl.certificate.location, ssl.key.location, \
                     client.id";

fn settings(conn: &Conn) -> anyhow::Result<Settings> {
    let mut protocol = "plaintext".to_string();
    let (mut mechanism, mut username, mut password) = (None, None, None);
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut client_id = "runnel-cli".to_string();
    for p in conn.properties()? {
        let value = p.value.as_str();
        match p.key.as_str() {
            "security.protocol" => protocol = value.to_ascii_lowercase(),
            "sasl.mechanism" | "sasl.mechanisms" => mechanism = Some(value.to_ascii_uppercase()),
            "sasl.username" => username = Some(value.to_string()),
            "sasl.password" => password = Some(value.to_string()),
            "ssl.ca.location" => ca = Some(std::path::PathBuf::from(value)),
            "ssl.certificate.location" => cert = Some(std::path::PathBuf::from(value)),
            "ssl.key.location" => key = Some(std::path::PathBuf::from(value)),
            "client.id" => client_id = value.to_string(),
            // Taken by `Conn::bootstrap` when -b is not given.
            "bootstrap.servers" => {}
            _ => bail!(
                "{}: not taken by this command (`runnel quotas`, `runnel topics alter \
                 --config`), which talks to the broker itself (librdkafka has no API for it); \
                 it takes {TAKEN}",
                p.name()
            ),
        }
    }
    let (uses_tls, uses_sasl) = match protocol.as_str() {
        "plaintext" => (false, false),
        "ssl" => (true, false),
        "sasl_plaintext" => (false, true),
        "sasl_ssl" => (true, true),
        other => bail!(
            "-X security.protocol={other}: expected plaintext, ssl, sasl_plaintext or sasl_ssl"
        ),
    };
    let login = if uses_sasl {
        let mechanism = mechanism.unwrap_or_else(|| "PLAIN".to_string());
        if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
            bail!("-X sasl.mechanism={mechanism}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512");
        }
        Some(Login {
            mechanism,
            username: username.context("SASL needs -X sasl.username")?,
            password: password.context("SASL needs -X sasl.password")?,
        })
    } else {
        None
    };
    let tls = if uses_tls {
        let ca = ca.context(
            "TLS needs -X ssl.ca.location=CA.pem: this command does not read the system's \
             trust store",
        )?;
        let identity = match (&cert, &key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                (cert.as_path(), "ssl.certificate.location"),
                (key.as_path(), "ssl.key.location"),
            )),
            _ => bail!(
                "a client certificate needs -X ssl.certificate.location and -X ssl.key.location"
            ),
        };
        Some(crate::net::tls::client_config(
            (&ca, "ssl.ca.location"),
            identity,
        )?)
    } else {
        None
    };
    Ok(Settings {
        tls,
        login,
        client_id,
    })
}

/// A connection to `address` (`host:port`), logged in when the settings say so.
pub(super) async fn connect(address: &str, settings: &Settings) -> anyhow::Result<Peer> {
    let tls = match &settings.tls {
        None => None,
        Some(config) => Some((config.clone(), crate::replication::server_name(address)?)),
    };
    let mut peer =
        Peer::connect_as(address, &settings.client_id, "the broker", tls, TIMEOUT).await?;
    if let Some(login) = &settings.login {
        peer.login(login).await?;
    }
    Ok(peer)
}

/// The first bootstrap broker, connected as the settings say, with the cluster's brokers
/// (Metadata): the connection, the answer, the settings and the broker's address, for a
/// command to stay on that broker or go to another.
pub(super) struct Bootstrapped {
    pub peer: Peer,
    pub metadata: kafka_protocol::messages::MetadataResponse,
    pub settings: Settings,
    pub address: String,
}

pub(super) async fn bootstrap(conn: &Conn) -> anyhow::Result<Bootstrapped> {
    let settings = settings(conn)?;
    let servers = conn.bootstrap()?;
    let address = servers
        .split(',')
        .map(str::trim)
        .find(|b| !b.is_empty())
        .context("--bootstrap names no broker")?
        .to_string();
    let mut peer = connect(&address, &settings).await?;
    let metadata = peer
        .call(&MetadataRequest::default().with_topics(Some(Vec::new())), 4)
        .await?;
    Ok(Bootstrapped {
        peer,
        metadata,
        settings,
        address,
    })
}

/// A connection to the cluster's controller (the bootstrap broker when it is the controller
/// or the cluster does not say).
pub(super) async fn controller(conn: &Conn) -> anyhow::Result<Peer> {
    let b = bootstrap(conn).await?;
    let Some(controller) = b
        .metadata
        .brokers
        .iter()
        .find(|x| x.node_id == b.metadata.controller_id)
    else {
        return Ok(b.peer);
    };
    let address = format!("{}:{}", controller.host.as_str(), controller.port);
    if address == b.address || b.metadata.brokers.len() == 1 {
        return Ok(b.peer);
    }
    connect(&address, &b.settings).await.with_context(|| {
        format!(
            "cannot reach the controller, broker {}",
            controller.node_id.0
        )
    })
}
