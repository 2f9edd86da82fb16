//! The `runnel` command line: `serve`, `config`, and Kafka client commands (`topics`,
//! `produce`, `consume`) that work against any Kafka-compatible broker via librdkafka.

/// `println!` for the commands: when standard output is closed early (`runnel ... | head`), the
/// process ends quietly with status 141, as a C tool ended by SIGPIPE does, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(&e);
        }
    }};
}

mod acls;
mod bench;
mod bench_devices;
mod bench_federation;
mod bench_plugins;
mod bench_quic_floor;
mod bench_replication;
mod bench_transactions;
mod client;
mod groups;
mod loggers;
mod plugin;
mod quotas;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "runnel",
    version,
    about = "A compact Kafka-compatible broker for edge gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (with no --config: the embedded default, on loopback).
    Serve {
        /// TOML config file; every key has a default (`runnel config default` prints them).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check or print configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// List, describe (committed offsets, lag, members), reset the offsets of and delete consumer
    /// groups, as Kafka's kafka-consumer-groups does.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// List, add and remove ACLs (the broker needs ACLs on), as Kafka's kafka-acls does.
    #[command(subcommand)]
    Acls(AclsCommand),
    /// List, set and remove client quotas (per user and client id, or per IP address), as
    /// Kafka's kafka-configs --entity-type users|clients|ips does.
    #[command(subcommand)]
    Quotas(QuotasCommand),
    /// Show and change a broker's log levels while it runs (until it stops), as Kafka's
    /// kafka-configs --entity-type broker-loggers does.
    #[command(subcommand)]
    Loggers(LoggersCommand),
    /// Produce lines from stdin: `value`, or `key<TAB>value` when the line holds a tab.
    Produce {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        topic: String,
        #[command(flatten)]
        conn: Conn,
        /// acks: 0, 1 or all (-1).
        #[arg(long, default_value = "all", allow_hyphen_values = true,
              value_parser = ["0", "1", "all", "-1"])]
        acks: String,
        /// Compression codec: none, gzip, snappy, lz4 or zstd.
        #[arg(long, default_value = "none")]
        compression: String,
    },
    /// Test a plugin locally; list or reload the plugins of a running broker.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Measure produce and consume throughput and produce latency against a broker
    /// (`bench devices`: many QUIC devices sending acknowledged readings).
    Bench(Box<bench::BenchArgs>),
    /// Print records as `value`, or `key<TAB>value` for keyed records (`null` for a null value,
    /// a tombstone).
    Consume {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        topic: String,
        #[command(flatten)]
        conn: Conn,
        /// Consumer group; offsets are committed to it. Without one, no offsets are kept.
        #[arg(long)]
        group: Option<String>,
        /// Start at the earliest offset when the group has no committed offset.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Stop after this long without a record (e.g. 5s); by default wait forever.
        #[arg(long)]
        idle_timeout: Option<humantime_arg::Duration>,
    },
}

#[derive(Subcommand)]
enum AclsCommand {
    /// The ACLs matching the filter (all without one), one per line: resource type, name,
    /// pattern, principal, host, operation, permission.
    List {
        #[command(flatten)]
        filter: acls::Filter,
        #[command(flatten)]
        conn: Conn,
    },
    /// Allow (or with --deny, deny) a principal operations on a topic, group or the cluster.
    Add {
        #[command(flatten)]
        acl: acls::NewAcl,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove the ACLs matching the filter (a resource, a principal, or both) and print them.
    Remove {
        #[command(flatten)]
        filter: acls::Filter,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum QuotasCommand {
    /// The quotas set, one entity per line (all, or those of the user and client id given).
    List {
        #[command(flatten)]
        entity: quotas::Entity,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set quotas of a user, a client id or both: producer_byte_rate=1MiB,
    /// consumer_byte_rate=512KiB (bytes a second), request_percentage=50 (percent of one
    /// thread's time), controller_mutation_rate=10 (partitions created or deleted a second);
    /// of an IP address: connection_creation_rate=20 (connections a second).
    Set {
        #[command(flatten)]
        entity: quotas::Entity,
        #[arg(required = true, value_name = "KEY=VALUE")]
        quotas: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove quotas of a user, a client id or both, by key (e.g. producer_byte_rate).
    Remove {
        #[command(flatten)]
        entity: quotas::Entity,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum LoggersCommand {
    /// Each logger with its level: root (every target not named), those set, the broker's
    /// modules.
    List {
        #[command(flatten)]
        broker: LoggerBroker,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set loggers' levels: runnel::net=debug, quinn=warn, root=info (TRACE, DEBUG, INFO,
    /// WARN, ERROR or OFF). A logger is a module path and covers the modules under it.
    Set {
        #[arg(required = true, value_name = "LOGGER=LEVEL")]
        levels: Vec<String>,
        #[command(flatten)]
        broker: LoggerBroker,
        #[command(flatten)]
        conn: Conn,
    },
    /// Let loggers log at the root's level again.
    Reset {
        #[arg(required = true, value_name = "LOGGER")]
        loggers: Vec<String>,
        #[command(flatten)]
        broker: LoggerBroker,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Which broker's log levels (each broker has its own).
#[derive(Args, Clone, Copy, Debug)]
struct LoggerBroker {
    /// The broker's node id; needed when the cluster has more than one.
    #[arg(long = "broker")]
    id: Option<i32>,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// List loaded plugins with call counts, faults and time spent.
    List {
        #[command(flatten)]
        admin: Admin,
    },
    /// Reload `[plugins]` from the broker's config file and swap them in (like SIGHUP).
    Reload {
        #[command(flatten)]
        admin: Admin,
    },
    /// Run a plugin locally over sample records (filters, transforms) or requests (quota
    /// policies), one JSON object per line, and print what it kept, changed or decided.
    Test {
        /// The plugin component (`.wasm`).
        plugin: PathBuf,
        /// JSON lines: records `{"key":..,"value":..,"headers":{..},"timestamp":..}` or, for a
        /// quota policy, requests `{"client_id":..,"api":"produce","topic":..,"bytes":..,
        /// "records":..,"now_ms":..}`.
        #[arg(long)]
        input: PathBuf,
        /// The plugin's config string, as `config` in its `[[plugins.load]]` entry.
        #[arg(long, default_value = "")]
        config: String,
        /// The topic the records claim to be produced to.
        #[arg(long, default_value = "test")]
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: i32,
        /// Records per call; 0 = the whole input as one batch.
        #[arg(long, default_value_t = 0)]
        batch: usize,
    },
}

#[derive(Args, Clone)]
struct Admin {
    /// The broker's admin HTTP listener (`[listeners.admin].address`).
    #[arg(long, default_value = "127.0.0.1:9094", env = "RUNNEL_ADMIN")]
    admin: String,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate FILE (and RUNNEL_* overrides), and read the certificates, keys, CAs,
    /// users and token files it names as the broker would; print the first error with its line.
    Validate {
        file: PathBuf,
        /// Check the config alone, not the files it names (for a config written for another
        /// machine).
        #[arg(long)]
        skip_files: bool,
    },
    /// Print the default config file, every key commented.
    Default,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create a topic, as kafka-topics --create.
    Create {
        name: String,
        /// Number of partitions. Default -1: the broker's default (broker.default_partitions),
        /// as kafka-topics takes num.partitions.
        #[arg(long, default_value_t = -1, allow_hyphen_values = true, value_parser = count_or_default)]
        partitions: i32,
        /// Copies of each partition: every broker holds every topic, so the number of brokers
        /// (1 for a broker alone) or -1 (that number, the default), as kafka-topics takes it.
        #[arg(long, default_value_t = -1, allow_hyphen_values = true, value_parser = count_or_default)]
        replication_factor: i32,
        /// Topic config override, e.g. --config retention.ms=3600000 (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Succeed without a word when the topic exists already, as kafka-topics does.
        #[arg(long)]
        if_not_exists: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// The names of the topics, one per line.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// A topic's partitions (leader, replicas, in-sync replicas, offsets) and its own configs;
    /// every topic's without a name, as kafka-topics --describe.
    Describe {
        name: Option<String>,
        /// Only the partitions with fewer in-sync replicas than replicas (and only the topics
        /// holding any), as kafka-topics --under-replicated-partitions.
        #[arg(long)]
        under_replicated_partitions: bool,
        /// Only the partitions without a leader, as kafka-topics --unavailable-partitions.
        #[arg(long, conflicts_with = "under_replicated_partitions")]
        unavailable_partitions: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Add partitions to a topic, or set or remove its config overrides, as kafka-topics
    /// --alter and kafka-configs --alter do. Config changes are sent by Runnel's own Kafka
    /// client (librdkafka has no IncrementalAlterConfigs here), which takes the -X properties
    /// of plaintext, TLS and SASL PLAIN/SCRAM logins only.
    Alter {
        name: String,
        /// The new number of partitions (more than it has: partitions are never removed).
        #[arg(long)]
        partitions: Option<i32>,
        /// A config override to set, e.g. --config retention.ms=3600000 (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// A config override to remove, back to the broker's default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a topic and its records.
    Delete {
        name: String,
        /// Succeed without a word when there is no such topic, as kafka-topics does.
        #[arg(long)]
        if_exists: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// Every group with its state and member count.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// A group's partitions: committed offset, log end offset, lag and the member holding each.
    Describe {
        #[arg(required_unless_present = "all_groups", conflicts_with = "all_groups")]
        group: Option<String>,
        /// Every group, one after another, as kafka-consumer-groups --describe --all-groups.
        #[arg(long)]
        all_groups: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set a group's committed offsets (only while it has no members). Prints the plan; commits
    /// it only with --execute.
    ResetOffsets {
        group: String,
        /// A topic, or some of its partitions as NAME:0,2 (repeatable).
        #[arg(long = "topic", value_name = "NAME[:P,P..]")]
        topics: Vec<String>,
        /// Every partition the group has a committed offset for.
        #[arg(long)]
        all_topics: bool,
        #[command(flatten)]
        to: ResetToArgs,
        /// Commit the new offsets (without it, nothing changes).
        #[arg(long)]
        execute: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a group's own configs (consumer.session.timeout.ms, consumer.heartbeat.interval.ms:
    /// Kafka 4's group configs, for consumers of group.protocol=consumer) beside the broker's,
    /// and set or remove them first when asked, as kafka-configs --entity-type groups does.
    Configs {
        group: String,
        /// A config of the group's own to set, e.g. --config consumer.session.timeout.ms=60000
        /// (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// A config of the group's own to remove, back to the broker's (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a group (it must have no members) and its committed offsets.
    Delete {
        group: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where reset-offsets moves each partition: exactly one of these.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
struct ResetToArgs {
    /// The log start offset.
    #[arg(long)]
    to_earliest: bool,
    /// The log end offset.
    #[arg(long)]
    to_latest: bool,
    /// This offset (moved into the log's range when outside it, so a negative one means the
    /// earliest).
    #[arg(long, value_name = "OFFSET", allow_negative_numbers = true)]
    to_offset: Option<i64>,
    /// The committed offset plus N (N may be negative).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// The first offset whose timestamp is at or after this time, e.g. 2026-12-04T09:30:00Z
    /// (RFC 3339; UTC when no offset is given).
    #[arg(long, value_name = "TIME")]
    to_datetime: Option<String>,
}

/// [`ResetToArgs`], checked.
enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    ShiftBy(i64),
    /// Milliseconds since the Unix epoch.
    Datetime(i64),
}

impl ResetToArgs {
    fn resolve(&self) -> anyhow::Result<ResetTo> {
        Ok(if self.to_earliest {
            ResetTo::Earliest
        } else if self.to_latest {
            ResetTo::Latest
        } else if let Some(o) = self.to_offset {
            ResetTo::Offset(o)
        } else if let Some(n) = self.shift_by {
            ResetTo::ShiftBy(n)
        } else if let Some(t) = &self.to_datetime {
            ResetTo::Datetime(
                epoch_millis(t).map_err(|e| anyhow::anyhow!("--to-datetime {t}: {e}"))?,
            )
        } else {
            anyhow::bail!(
                "say where to: --to-earliest, --to-latest, --to-offset, --shift-by or --to-datetime"
            )
        })
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 time: `2026-12-04T09:30:00Z`, with a zone
/// offset (`+02:00`, `-0500`), or without one (UTC).
/// A count of at least 1, or -1 for the broker's default, as kafka-topics takes them.
fn count_or_default(text: &str) -> Result<i32, String> {
    match text.parse::<i32>() {
        Ok(n) if n == -1 || n >= 1 => Ok(n),
        _ => Err("a count of at least 1, or -1 for the broker's default".into()),
    }
}

fn epoch_millis(t: &str) -> anyhow::Result<i64> {
    let example = "expected e.g. 2026-12-04T09:30:00Z or 2026-12-04T10:30:00+01:00";
    // A zone offset is a sign after the time of day, then hours and minutes.
    let time_starts = t.find(['T', 't', ' ']).unwrap_or(t.len());
    let (local, offset_secs) = match t[time_starts..].rfind(['+', '-']) {
        Some(i) => {
            let (local, zone) = t.split_at(time_starts + i);
            let digits: String = zone[1..].chars().filter(|&c| c != ':').collect();
            let (hours, minutes) = match (digits.len(), digits.parse::<i64>()) {
                (4, Ok(n)) if n / 100 < 24 && n % 100 < 60 => (n / 100, n % 100),
                (2, Ok(h)) if h < 24 => (h, 0),
                _ => anyhow::bail!("zone offset {zone} is not +hh:mm or -hh:mm ({example})"),
            };
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            (local, sign * (hours * 3600 + minutes * 60))
        }
        None => (t, 0),
    };
    let at =
        humantime::parse_rfc3339_weak(local).map_err(|e| anyhow::anyhow!("{e} ({example})"))?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow::anyhow!("before 1970"))?
        .as_millis() as i64;
    let ms = ms - offset_secs * 1000;
    // Negative times are ListOffsets' "latest" and "earliest", not times.
    anyhow::ensure!(ms >= 0, "before 1970");
    Ok(ms)
}

#[derive(Args, Clone)]
struct Conn {
    /// Broker to connect to (any Kafka-compatible broker) [default: bootstrap.servers of the
    /// client properties, else 127.0.0.1:9092]
    #[arg(long, short, env = "RUNNEL_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// A librdkafka client property, e.g. -X security.protocol=ssl (repeatable), as in kcat.
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// A file of librdkafka client properties, one KEY=VALUE per line (`#` comments), as kcat's
    /// -F: keeps secrets such as sasl.password off the command line. -X properties override it.
    #[arg(
        short = 'F',
        long = "config-file",
        value_name = "FILE",
        env = "RUNNEL_CLIENT_CONFIG"
    )]
    config_file: Option<PathBuf>,
}

/// A librdkafka client that could not be made (`what`), said without the value of a property
/// it refused: it may be a password with a typo in its key.
fn client_error(e: rdkafka::error::KafkaError, what: &str) -> anyhow::Error {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, _) => {
            anyhow::anyhow!("{what}: {key}: {description}")
        }
        other => anyhow::anyhow!("{what}: {other}"),
    }
}

/// The client property `-b` stands for.
const BOOTSTRAP: &str = "bootstrap.servers";

/// One client property and where it was given.
struct Property {
    key: String,
    value: String,
    /// `-X`, or `<file>:<line>`.
    from: String,
}

impl Property {
    /// How errors name it: `-X KEY` or `FILE:LINE: KEY` (never with its value: it may be a
    /// password).
    fn name(&self) -> String {
        if self.from == "-X" {
            format!("-X {}", self.key)
        } else {
            format!("{}: {}", self.from, self.key)
        }
    }
}

impl Conn {
    /// Every client property: the -F file's, then the -X ones (a later one wins).
    fn properties(&self) -> anyhow::Result<Vec<Property>> {
        use anyhow::Context as _;
        let mut out = Vec::new();
        if let Some(path) = &self.config_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("-F {}: cannot read it", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let from = format!("{}:{}", path.display(), i + 1);
                let (key, value) = line
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("{from}: expected KEY=VALUE"))?;
                out.push(Property {
                    key: key.trim().to_string(),
                    value: value.trim().to_string(),
                    from,
                });
            }
        }
        for p in &self.properties {
            // (The whole argument is not echoed: it may be a password with a typo.)
            let (key, value) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("a -X property without '=': expected KEY=VALUE"))?;
            out.push(Property {
                key: key.to_string(),
                value: value.to_string(),
                from: "-X".to_string(),
            });
        }
        Ok(out)
    }

    /// The brokers to bootstrap from: `-b` (or `RUNNEL_BOOTSTRAP`), else the properties'
    /// `bootstrap.servers`, else this machine's default listener.
    fn bootstrap(&self) -> anyhow::Result<String> {
        if let Some(b) = &self.bootstrap {
            return Ok(b.clone());
        }
        let given = self
            .properties()?
            .into_iter()
            .rev()
            .find(|p| p.key == BOOTSTRAP);
        Ok(given.map_or_else(|| "127.0.0.1:9092".to_string(), |p| p.value))
    }

    /// A librdkafka config with the bootstrap servers and every other property set, once one
    /// of the servers takes a TCP connection: librdkafka's own word for a broker that is not
    /// there differs by command (a metadata error, a timeout after 10 s), so every command says
    /// it the same way, at once.
    fn client_config(&self) -> anyhow::Result<rdkafka::config::ClientConfig> {
        let mut cfg = rdkafka::config::ClientConfig::new();
        for p in self.properties()? {
            cfg.set(p.key, p.value);
        }
        let bootstrap = self.bootstrap()?;
        reachable(&bootstrap)?;
        cfg.set(BOOTSTRAP, bootstrap);
        Ok(cfg)
    }
}

/// Whether one of the comma-separated `servers` (`host:port`, optionally `PROTOCOL://` first)
/// takes a TCP connection within 5 s; the error names each one and why not.
fn reachable(servers: &str) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let mut why = Vec::new();
    for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let address = server.rsplit("://").next().unwrap_or(server);
        let addrs = match address.to_socket_addrs() {
            Ok(addrs) => addrs.collect::<Vec<_>>(),
            Err(e) => {
                why.push(format!("{server}: {e}"));
                continue;
            }
        };
        let mut last = None;
        for a in addrs {
            match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        why.push(match last {
            Some(e) => format!("{server}: {e}"),
            None => format!("{server}: the name has no address"),
        });
    }
    anyhow::bail!("cannot connect to {}", why.join("; nor to "))
}

/// A duration argument in human form ("5s", "250ms").
mod humantime_arg {
    #[derive(Clone, Copy, Debug)]
    pub struct Duration(pub std::time::Duration);
    impl std::str::FromStr for Duration {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            // A bare number would be milliseconds (as in the config); on a command line "3"
            // is too easily meant as seconds, so a unit is asked for.
            if s.trim().bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?} needs a unit, e.g. {s}s or {s}ms"));
            }
            edge_config::units::parse_duration(s)
                .map(Duration)
                .ok_or_else(|| format!("invalid duration {s:?}; e.g. 5s, 250ms, 2m"))
        }
    }
}

fn init_tracing() {
    let parsed = tracing_subscriber::EnvFilter::try_from_default_env().is_ok();
    if let Ok(given) = std::env::var("RUST_LOG")
        && parsed
        && !given.trim().is_empty()
        && !names_runnel(&given)
    {
        // A filter of other targets only (a typo, `RUNNEL=info`) turns every line of the
        // broker's off, its start-up lines and QUIC fingerprint included, without a word.
        eprintln!(
            "runnel: RUST_LOG={given:?} enables no level and no runnel target, so the broker \
             logs nothing; e.g. RUST_LOG=info or RUST_LOG=runnel=debug (targets are lower case)"
        );
    }
    let filter = match std::env::var("RUST_LOG") {
        Ok(given) if parsed && !given.trim().is_empty() => given,
        _ => "info".to_string(),
    };
    // Colours only on a terminal: logs sent to a file or a journal stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    crate::logging::init(&filter, ansi);
}

/// Whether a `RUST_LOG` filter lets any of runnel's lines through: a directive that is a level
/// alone, or one for a `runnel` target.
fn names_runnel(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    filter.split(',').map(str::trim).any(|d| {
        let target = d.split(['=', '[']).next().unwrap_or("");
        let level_only = !d.contains('=') && LEVELS.contains(&d.to_ascii_lowercase().as_str());
        level_only || target == "runnel" || target.starts_with("runnel::")
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve { config } => serve::run(config.as_deref()),
        Command::Config(ConfigCommand::Validate { file, skip_files }) => {
            serve::validate(&file, !skip_files)
        }
        Command::Config(ConfigCommand::Default) => {
            out!("{}", edge_config::Config::default_toml().trim_end());
            Ok(())
        }
        Command::Topics(cmd) => client::topics(cmd),
        Command::Groups(cmd) => groups::run(cmd),
        Command::Acls(AclsCommand::List { filter, conn }) => acls::list(&conn, &filter),
        Command::Acls(AclsCommand::Add { acl, conn }) => acls::add(&conn, &acl),
        Command::Acls(AclsCommand::Remove { filter, conn }) => acls::remove(&conn, &filter),
        Command::Quotas(QuotasCommand::List { entity, conn }) => quotas::list(&conn, &entity),
        Command::Quotas(QuotasCommand::Set {
            entity,
            quotas,
            conn,
        }) => quotas::set(&conn, &entity, &quotas),
        Command::Quotas(QuotasCommand::Remove { entity, keys, conn }) => {
            quotas::remove(&conn, &entity, &keys)
        }
        Command::Loggers(LoggersCommand::List { broker, conn }) => loggers::list(&conn, broker.id),
        Command::Loggers(LoggersCommand::Set {
            levels,
            broker,
            conn,
        }) => loggers::set(&conn, broker.id, &levels),
        Command::Loggers(LoggersCommand::Reset {
            loggers: names,
            broker,
            conn,
        }) => loggers::reset(&conn, broker.id, &names),
        Command::Bench(args) => bench::run(*args),
        Command::Plugin(PluginCommand::List { admin }) => plugin::list(&admin.admin),
        Command::Plugin(PluginCommand::Reload { admin }) => plugin::reload(&admin.admin),
        Command::Plugin(PluginCommand::Test {
            plugin,
            input,
            config,
            topic,
            partition,
            batch,
        }) => plugin::test(plugin::TestArgs {
            wasm: &plugin,
            input: &input,
            config: &config,
            topic: &topic,
            partition,
            batch,
        }),
        Command::Produce {
            topic,
            conn,
            acks,
            compression,
        } => client::produce(&conn, &topic, &acks, &compression),
        Command::Consume {
            topic,
            conn,
            group,
            from_beginning,
            max,
            idle_timeout,
        } => client::consume(
            &conn,
            &topic,
            group.as_deref(),
            from_beginning,
            max,
            idle_timeout.map(|d| d.0),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runnel: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Where [`out!`] goes when standard output cannot be written.
pub(crate) fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        eprintln!("runnel: cannot write to standard output: {e}");
        std::process::exit(1);
    }
    std::process::exit(141);
}

/// An error and its causes on one line, as `{:#}` writes them, leaving out a cause whose text
/// the message already holds (many errors repeat their source's text in their own).
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{epoch_millis, error_chain};

    #[test]
    fn a_log_filter_that_turns_the_broker_off_is_noticed() {
        for ok in [
            "info",
            "warn,hyper=debug",
            "runnel=debug",
            "runnel::groups=trace",
            "DEBUG",
        ] {
            assert!(super::names_runnel(ok), "{ok}");
        }
        for silent in [
            "garbage!!",
            "RUNNEL=info",
            "hyper=debug",
            "runnelx=info",
            "",
        ] {
            assert!(!super::names_runnel(silent), "{silent}");
        }
    }

    /// --to-datetime takes RFC 3339 times with any zone offset, as Kafka's tool does.
    #[test]
    fn datetimes_take_zone_offsets() {
        let utc = 1_796_376_600_000; // 2026-12-04T09:30:00Z
        for t in [
            "2026-12-04T09:30:00Z",
            "2026-12-04T09:30:00",
            "2026-12-04T09:30:00+00:00",
            "2026-12-04T11:30:00+02:00",
            "2026-12-04T04:30:00-05:00",
            "2026-12-04T04:30:00-0500",
            "2026-12-04T14:00:00+04:30",
            "2026-12-04T10:30:00+01",
        ] {
            assert_eq!(epoch_millis(t).unwrap(), utc, "{t}");
        }
        assert_eq!(
            epoch_millis("2026-12-04T11:30:00.250+02:00").unwrap(),
            utc + 250
        );
        assert!(epoch_millis("1970-01-01T00:59:59.999+01:00").is_err());
        assert_eq!(epoch_millis("1970-01-01T01:00:00+01:00").unwrap(), 0);
        for bad in [
            "2026-12-04T09:30:00+2:00",
            "2026-12-04T09:30:00+25:00",
            "2026-13-04T09:30:00Z",
            "yesterday",
        ] {
            let e = epoch_millis(bad).unwrap_err().to_string();
            assert!(e.contains("expected e.g."), "{bad}: {e}");
        }
    }

    #[test]
    fn a_cause_the_message_repeats_is_written_once() {
        let io = std::io::Error::other("Not a redb database");
        let e = anyhow::Error::new(io)
            .context("metadata database m.redb: I/O error: Not a redb database");
        assert_eq!(
            error_chain(&e),
            "metadata database m.redb: I/O error: Not a redb database"
        );
        let e = anyhow::anyhow!("disk full").context("cannot append");
        assert_eq!(error_chain(&e), "cannot append: disk full");
    }
}
