//! `[federation]`: local topics forwarded to central Kafka clusters (store and forward).
//!
//! ```toml
//! [federation]
//! retry_backoff = "1s"          # first wait after a failed send; doubles each time
//! retry_backoff_max = "30s"
//!
//! [[federation.links]]
//! name = "central"
//! bootstrap_servers = "kafka-1.example.com:9092,kafka-2.example.com:9092"
//! topics = ["readings", "alerts.*"]   # names, or prefixes ending in '*'
//! remote_topic = "site-7.{topic}"     # default "{topic}"
//!
//! [federation.links.client]           # librdkafka properties for this link's producer
//! "security.protocol" = "SASL_SSL"
//! "sasl.mechanism" = "PLAIN"
//! "sasl.username" = "site-7"
//! "sasl.password" = "..."
//! "compression.type" = "zstd"
//! ```
//!
//! Keys inside a `[[federation.links]]` entry are checked by serde (`deny_unknown_fields`);
//! names, patterns and client properties by [`FederationConfig::check`], whose errors name the
//! entry by index.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units;

/// `[federation]`: the links to remote Kafka clusters and how failed sends are retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Wait after a failed send (the remote refused the records, or the uplink stayed down past
    /// the client's own retries) before the records are sent again. Doubles after each failure
    /// in a row, up to `retry_backoff_max`. Default 1s.
    #[serde(with = "units::duration")]
    pub retry_backoff: Duration,
    /// The longest wait between two tries. Default 30s; at most 1d.
    #[serde(with = "units::duration")]
    pub retry_backoff_max: Duration,
    /// `[[federation.links]]`: one per remote cluster. Default none: nothing is forwarded.
    pub links: Vec<FederationLink>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(30),
            links: Vec::new(),
        }
    }
}

/// `[[federation.links]]`: one remote Kafka cluster and the local topics forwarded to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationLink {
    /// Names the link in logs and metrics, and keys its forwarding positions in the metadata
    /// database: renaming a link starts it again from each partition's log start. Unique.
    pub name: String,
    /// The remote cluster's `bootstrap.servers`: `host:port`, comma-separated.
    pub bootstrap_servers: String,
    /// Local topics to forward: exact names, or prefixes ending in `*` (`"sensors.*"`). Topics
    /// created later that match are picked up as they are made.
    pub topics: Vec<String>,
    /// The remote topic's name; `{topic}` stands for the local name. Default `"{topic}"`.
    #[serde(default = "same_name")]
    pub remote_topic: String,
    /// librdkafka producer properties for this link (TLS, SASL, compression, batching).
    /// `bootstrap.servers` comes from `bootstrap_servers`; idempotence, `acks` and the message
    /// timeout are set by the broker and may not be given here. Values may be strings,
    /// numbers or booleans (`"linger.ms" = 50`). Default none.
    #[serde(default, deserialize_with = "client_properties")]
    pub client: BTreeMap<String, String>,
}

fn same_name() -> String {
    "{topic}".to_owned()
}

/// librdkafka properties: every value is a string to librdkafka, so TOML numbers and booleans
/// are taken as the string they would be written as.
fn client_properties<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Property;
    impl serde::de::Visitor<'_> for Property {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string, a number or a boolean")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    struct Value(String);
    impl<'de> Deserialize<'de> for Value {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
            d.deserialize_any(Property).map(Value)
        }
    }
    let map = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, Value(v))| (k, v)).collect())
}

/// Producer properties the forwarder sets itself: ordering and no loss depend on them.
pub const RESERVED_CLIENT_KEYS: &[&str] = &[
    "bootstrap.servers",
    "enable.gapless.guarantee",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "transactional.id",
];

impl FederationLink {
    /// Whether the local topic `name` is one this link forwards.
    pub fn forwards(&self, name: &str) -> bool {
        self.topics.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }

    /// The remote name of local topic `name`.
    pub fn remote_name(&self, name: &str) -> String {
        self.remote_topic.replace("{topic}", name)
    }
}

impl FederationConfig {
    /// Cross-field checks, as (the key at fault, what is wrong).
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        if self.retry_backoff_max > Duration::from_secs(24 * 60 * 60) {
            return Err((
                "federation.retry_backoff_max".into(),
                format!(
                    "{} is more than a day; allowed: up to 1d",
                    units::format_duration(self.retry_backoff_max)
                ),
            ));
        }
        if self.retry_backoff > self.retry_backoff_max {
            return Err((
                "federation.retry_backoff".into(),
                "is more than federation.retry_backoff_max".into(),
            ));
        }
        for (i, link) in self.links.iter().enumerate() {
            let key = format!("federation.links[{i}]");
            let valid_name = !link.name.is_empty()
                && link
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !valid_name {
                return Err((
                    format!("{key}.name"),
                    format!(
                        "{:?} is not a link name (letters, digits, '.', '_' and '-')",
                        link.name
                    ),
                ));
            }
            if self.links[..i].iter().any(|l| l.name == link.name) {
                return Err((
                    format!("{key}.name"),
                    format!("{:?} names two links; names are unique", link.name),
                ));
            }
            if link.bootstrap_servers.trim().is_empty() {
                return Err((
                    format!("{key}.bootstrap_servers"),
                    "must name the remote cluster (host:port, comma-separated)".into(),
                ));
            }
            if link.topics.is_empty() {
                return Err((
                    format!("{key}.topics"),
                    "names no topic: give names, or prefixes ending in '*'".into(),
                ));
            }
            for t in &link.topics {
                let stem = t.strip_suffix('*').unwrap_or(t);
                let exact = stem.len() == t.len();
                if stem.contains('*') || (exact && !topic_name(t)) || !topic_chars(stem) {
                    return Err((
                        format!("{key}.topics"),
                        format!(
                            "{t:?} is neither a topic name nor a prefix ending in '*' (letters, digits, '.', '_' and '-')"
                        ),
                    ));
                }
            }
            if !topic_name(&link.remote_name("t")) {
                return Err((
                    format!("{key}.remote_topic"),
                    format!(
                        "{:?} does not make a topic name (letters, digits, '.', '_', '-' and {{topic}})",
                        link.remote_topic
                    ),
                ));
            }
            let many = link.topics.len() > 1 || link.topics.iter().any(|t| t.ends_with('*'));
            if !link.remote_topic.contains("{topic}") && many {
                return Err((
                    format!("{key}.remote_topic"),
                    format!(
                        "{:?} has no {{topic}}, so every forwarded topic would land in one remote topic",
                        link.remote_topic
                    ),
                ));
            }
            if let Some(k) = link
                .client
                .keys()
                .find(|k| RESERVED_CLIENT_KEYS.contains(&k.as_str()))
            {
                return Err((
                    format!("{key}.client.{k}"),
                    format!(
                        "{k:?} is set by the broker (idempotent, acks=all, no timeout, so that \
                         forwarding keeps order and loses nothing); leave it out"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A name Kafka takes for a topic: 1 to 249 of these characters, and not `.` or `..`.
pub(crate) fn topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 249 && s != "." && s != ".." && topic_chars(s)
}

fn topic_chars(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(topics: &[&str], remote: &str) -> FederationLink {
        FederationLink {
            name: "central".into(),
            bootstrap_servers: "k:9092".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            remote_topic: remote.into(),
            client: BTreeMap::new(),
        }
    }

    const FILE: &str = r#"
[federation]
retry_backoff = "500ms"

[[federation.links]]
name = "central"
bootstrap_servers = "kafka-1:9092,kafka-2:9092"
topics = ["readings", "alerts.*"]
remote_topic = "site-7.{topic}"

[federation.links.client]
"security.protocol" = "SASL_SSL"
"compression.type" = "zstd"
"#;

    #[test]
    fn a_link_is_read_from_the_file_and_its_errors_name_the_line() {
        let c = crate::Config::from_toml_str(FILE, "runnel.toml", &[]).unwrap();
        let f = &c.federation;
        assert_eq!(f.retry_backoff, Duration::from_millis(500));
        assert_eq!(f.retry_backoff_max, Duration::from_secs(30));
        let l = &f.links[0];
        assert_eq!(l.bootstrap_servers, "kafka-1:9092,kafka-2:9092");
        assert_eq!(l.remote_name("alerts.fire"), "site-7.alerts.fire");
        assert_eq!(l.client["compression.type"], "zstd");
        assert!(l.forwards("alerts.fire") && !l.forwards("alert"));

        let line_of = |text: &str, needle: &str| {
            text.lines().position(|l| l.starts_with(needle)).unwrap() + 1
        };
        let typo = FILE.replace("remote_topic", "remote");
        let e = crate::Config::from_toml_str(&typo, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("federation.links[0].remote"));
        let at = format!("runnel.toml:{}: ", line_of(&typo, "remote ="));
        assert!(e.to_string().starts_with(&at), "{e}");

        let reserved = FILE.replace("\"compression.type\"", "\"acks\"");
        let e = crate::Config::from_toml_str(&reserved, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("federation.links[0].client.acks"));
        let at = format!("runnel.toml:{}: ", line_of(&reserved, "\"acks\""));
        assert!(e.to_string().starts_with(&at), "{e}");

        let none = FILE.replace("[\"readings\", \"alerts.*\"]", "[]");
        let e = crate::Config::from_toml_str(&none, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("federation.links[0].topics"));
        let at = format!("runnel.toml:{}: ", line_of(&none, "topics"));
        assert!(e.to_string().starts_with(&at), "{e}");
    }

    #[test]
    fn client_numbers_and_booleans_are_taken_as_librdkafka_strings() {
        let file = FILE.replace(
            "\"compression.type\" = \"zstd\"",
            "\"linger.ms\" = 50\n\"enable.ssl.certificate.verification\" = false\n\"batch.size\" = 1e5",
        );
        let c = crate::Config::from_toml_str(&file, "runnel.toml", &[]).unwrap();
        let client = &c.federation.links[0].client;
        assert_eq!(client["linger.ms"], "50");
        assert_eq!(client["enable.ssl.certificate.verification"], "false");
        assert_eq!(client["batch.size"], "100000");

        let table = FILE.replace("\"compression.type\" = \"zstd\"", "\"linger.ms\" = [50]");
        let e = crate::Config::from_toml_str(&table, "runnel.toml", &[]).unwrap_err();
        assert!(
            e.to_string().contains("a string, a number or a boolean"),
            "{e}"
        );
    }

    #[test]
    fn names_and_prefixes_match() {
        let l = link(&["readings", "sensors.*"], "site.{topic}");
        assert!(l.forwards("readings"));
        assert!(!l.forwards("readings2"));
        assert!(l.forwards("sensors.temp"));
        assert!(!l.forwards("sensor"));
        assert_eq!(l.remote_name("readings"), "site.readings");
    }

    #[test]
    fn bad_links_name_the_key() {
        let check = |l: FederationLink| {
            FederationConfig {
                links: vec![l],
                ..Default::default()
            }
            .check()
            .unwrap_err()
            .0
        };
        assert_eq!(check(link(&[], "{topic}")), "federation.links[0].topics");
        assert_eq!(
            check(link(&["a*b"], "{topic}")),
            "federation.links[0].topics"
        );
        assert_eq!(
            check(link(&["a", "b"], "one")),
            "federation.links[0].remote_topic"
        );
        assert_eq!(
            check(link(&["a"], "x/{topic}")),
            "federation.links[0].remote_topic"
        );
        let mut l = link(&["a"], "{topic}");
        l.client.insert("acks".into(), "1".into());
        assert_eq!(check(l), "federation.links[0].client.acks");
        let mut l = link(&["a"], "{topic}");
        l.name = "two words".into();
        assert_eq!(check(l), "federation.links[0].name");
        let two = FederationConfig {
            links: vec![link(&["a"], "{topic}"), link(&["b"], "{topic}")],
            ..Default::default()
        };
        assert_eq!(two.check().unwrap_err().0, "federation.links[1].name");
        assert_eq!(
            check(link(&["sensors.*"], "all")),
            "federation.links[0].remote_topic"
        );
        assert_eq!(
            check(link(&[".."], "x.{topic}")),
            "federation.links[0].topics"
        );
        assert_eq!(
            check(link(&["a"], "..")),
            "federation.links[0].remote_topic"
        );
        let long = "x".repeat(250);
        assert_eq!(
            check(link(&["a"], &long)),
            "federation.links[0].remote_topic"
        );
        let everything = FederationConfig {
            links: vec![link(&["*"], "{topic}")],
            ..Default::default()
        };
        assert!(everything.check().is_ok());
    }
}
