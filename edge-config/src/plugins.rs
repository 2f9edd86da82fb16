//! `[plugins]`: WebAssembly plugins to load, their limits, and which topics run them.
//!
//! ```toml
//! [plugins]
//! call_timeout = "1s"
//! memory_limit = "64MiB"
//!
//! [[plugins.load]]
//! name = "hot-only"
//! path = "plugins/json_filter.wasm"
//! config = "temp > 20"
//!
//! [[plugins.bindings]]
//! topic = "readings"
//! chain = ["hot-only"]
//! on_error = "fail-closed"
//!
//! [[plugins.bindings]]
//! topic = "raw"
//! chain = ["redact"]
//! on_error = "dead-letter"
//! dead_letter_topic = "raw-failed"
//!
//! [[plugins.load]]
//! name = "per-client"
//! path = "plugins/token_bucket.wasm"
//! config = 'rate = "1MiB/s", burst = "2MiB", key = "client-id"'
//!
//! [[plugins.quotas]]
//! plugin = "per-client"
//! listeners = ["kafka", "quic"]      # default: every listener
//! principals = ["User:ANONYMOUS"]    # default: every principal
//! apis = ["produce", "fetch"]        # default: ["produce"]
//! on_error = "fail-open"             # default: fail-open
//! ```
//!
//! Keys inside `[[plugins.load]]`, `[[plugins.bindings]]` and `[[plugins.quotas]]` entries are
//! checked by serde (`deny_unknown_fields`); cross-references (a chain naming a plugin that is
//! not loaded, two bindings of one topic, a quota naming a filter) by [`PluginsConfig::check`],
//! whose errors name the entry by index.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::UnknownValue;
use crate::units::{self, GIB, MIB};

/// `[plugins]`: the plugins and their bindings to topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Longest one plugin call (one batch through one plugin) may run before it is interrupted
    /// and fails. Default 1s. The time is the wall clock's, waits for a CPU included, so it must
    /// leave a busy gateway room: a healthy filter takes tens of milliseconds over a batch of
    /// 10,000 records when the CPU is free. The produce request waits this long at most per
    /// plugin of the chain; a plugin that loops forever costs this much per batch until
    /// `disable_after` disables it.
    #[serde(with = "units::duration")]
    pub call_timeout: Duration,
    /// Linear memory one plugin instance may grow to; a call that needs more traps and fails.
    /// Default 64MiB. A plugin has up to 4 instances, one per call running at once; each
    /// reserves 8 GiB of address space (not memory) whatever this is, so that bounds checks
    /// are left to guard pages: 32 GiB a plugin, twice that during a reload.
    #[serde(with = "units::bytes")]
    pub memory_limit: u64,
    /// A plugin whose calls fail this many times in a row is disabled until the next reload or
    /// restart: one WARN log line names it and its last error, and from then on every binding
    /// running it applies its `on_error` policy without calling it. Default 10; 0 = never.
    pub disable_after: u32,
    /// `[[plugins.load]]`: the plugins to load at start-up. Default none.
    pub load: Vec<PluginSpec>,
    /// `[[plugins.bindings]]`: which topics run which plugins on produce. Default none: every
    /// topic stores batches as received.
    pub bindings: Vec<Binding>,
    /// `[[plugins.quotas]]`: quota policies consulted on produce (and fetch) requests. Default
    /// none: no request pays for a quota check.
    pub quotas: Vec<QuotaBinding>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            call_timeout: Duration::from_secs(1),
            memory_limit: 64 * MIB,
            disable_after: 10,
            load: Vec::new(),
            bindings: Vec::new(),
            quotas: Vec::new(),
        }
    }
}

/// `[[plugins.load]]`: one plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// The name bindings refer to; unique.
    pub name: String,
    /// The `.wasm` component (built for wasm32-wasip2 with the runnel-plugin SDK). A relative
    /// path starts at the working directory.
    pub path: PathBuf,
    /// Passed to the plugin's `init` as is. Default `""`.
    #[serde(default)]
    pub config: String,
}

/// `[[plugins.bindings]]`: a topic's plugin chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The topic whose produced batches go through the chain.
    pub topic: String,
    /// Plugin names, run in order; a record must be kept by every filter to be stored.
    pub chain: Vec<String>,
    /// What a failing call (trap, timeout, memory cap, error result) does to the batch.
    /// Default `fail-closed`.
    #[serde(default)]
    pub on_error: OnError,
    /// With `on_error = "dead-letter"` (and only then): the topic a failing batch's original
    /// records go to. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
}

/// What happens to a batch when a plugin call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OnError {
    /// The batch passes that plugin unchanged (and goes on to the rest of the chain). Keeps data
    /// flowing; a broken filter then filters nothing.
    FailOpen,
    /// The produce fails for that partition (POLICY_VIOLATION); the producer may retry. Nothing
    /// unfiltered is stored.
    #[default]
    FailClosed,
    /// The batch's records, as produced, are appended to the binding's `dead_letter_topic`
    /// with headers naming the plugin, the error and the original topic and partition; the
    /// produce succeeds and nothing is stored in the bound topic for that batch.
    DeadLetter,
}

impl OnError {
    /// The accepted spellings.
    pub const ALLOWED: &'static [&'static str] = &["fail-open", "fail-closed", "dead-letter"];

    pub fn as_str(&self) -> &'static str {
        match self {
            OnError::FailOpen => "fail-open",
            OnError::FailClosed => "fail-closed",
            OnError::DeadLetter => "dead-letter",
        }
    }
}

impl FromStr for OnError {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "fail-open" => Ok(OnError::FailOpen),
            "fail-closed" => Ok(OnError::FailClosed),
            "dead-letter" => Ok(OnError::DeadLetter),
            _ => Err(UnknownValue {
                value: s.to_owned(),
                allowed: Self::ALLOWED,
            }),
        }
    }
}

impl Serialize for OnError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OnError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[[plugins.quotas]]`: one quota policy and the requests it is asked about.
///
/// A request is asked about when its API is in `apis`, its listener in `listeners` and its
/// principal in `principals`; every matching entry is asked, in file order, and the strictest
/// answer wins (a reject over a throttle, the longest throttle over a shorter one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaBinding {
    /// A `[[plugins.load]]` name; the plugin implements the `quota` world.
    pub plugin: String,
    /// Listener names (`kafka`, `kafka_tls`, `quic`) whose requests are asked about. Default
    /// empty: every listener.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Principals (`User:ANONYMOUS`, `User:<CN>`) whose requests are asked about. Default
    /// empty: every principal.
    #[serde(default)]
    pub principals: Vec<String>,
    /// APIs asked about: `produce` (once per topic of a request, with that topic's bytes and
    /// records) and `fetch` (once per topic of the response, with the bytes it returns). Default
    /// `["produce"]`.
    #[serde(default = "QuotaBinding::default_apis")]
    pub apis: Vec<QuotaApi>,
    /// What a failing call (trap, timeout, memory cap) decides: `fail-open` allows the request,
    /// `fail-closed` rejects it (POLICY_VIOLATION). Default `fail-open`: a broken rate limiter
    /// does not stop the data.
    #[serde(default = "QuotaBinding::default_on_error")]
    pub on_error: OnError,
}

impl QuotaBinding {
    /// The listener names a quota may name (`[listeners.<name>]`).
    pub const LISTENERS: &'static [&'static str] = &["kafka", "kafka_tls", "quic"];

    fn default_apis() -> Vec<QuotaApi> {
        vec![QuotaApi::Produce]
    }

    fn default_on_error() -> OnError {
        OnError::FailOpen
    }

    /// Whether a request of `api` on `listener` by `principal` is asked about.
    pub fn applies(&self, api: QuotaApi, listener: &str, principal: &str) -> bool {
        self.apis.contains(&api)
            && (self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener))
            && (self.principals.is_empty() || self.principals.iter().any(|p| p == principal))
    }
}

/// The Kafka APIs a quota policy can be asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaApi {
    Produce,
    Fetch,
}

impl QuotaApi {
    /// The accepted spellings.
    pub const ALLOWED: &'static [&'static str] = &["produce", "fetch"];

    pub fn as_str(&self) -> &'static str {
        match self {
            QuotaApi::Produce => "produce",
            QuotaApi::Fetch => "fetch",
        }
    }
}

impl FromStr for QuotaApi {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "produce" => Ok(QuotaApi::Produce),
            "fetch" => Ok(QuotaApi::Fetch),
            _ => Err(UnknownValue {
                value: s.to_owned(),
                allowed: Self::ALLOWED,
            }),
        }
    }
}

impl Serialize for QuotaApi {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QuotaApi {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `plugins.memory_limit`.
pub(crate) const MEMORY_LIMIT: std::ops::RangeInclusive<u64> = MIB..=4 * GIB;

impl PluginsConfig {
    /// The chain bound to `topic`, if any.
    pub fn binding(&self, topic: &str) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.topic == topic)
    }

    /// Whether `plugin` is named by a `[[plugins.quotas]]` entry (it implements the `quota`
    /// world, not `filter`).
    pub fn is_quota_plugin(&self, plugin: &str) -> bool {
        self.quotas.iter().any(|q| q.plugin == plugin)
    }

    /// Cross-reference checks; `Err((key, message))`, the key naming the entry by index.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        self.check_quotas()?;
        for (i, p) in self.load.iter().enumerate() {
            let key = format!("plugins.load[{i}]");
            if p.name.is_empty() || p.name.contains(char::is_whitespace) {
                return Err((
                    format!("{key}.name"),
                    format!("{:?} is not a plugin name (non-empty, no spaces)", p.name),
                ));
            }
            if self.load[..i].iter().any(|q| q.name == p.name) {
                return Err((
                    format!("{key}.name"),
                    format!("{:?} is loaded twice; names are unique", p.name),
                ));
            }
            if p.path.as_os_str().is_empty() {
                return Err((
                    format!("{key}.path"),
                    "must name the plugin's .wasm file".into(),
                ));
            }
            if !p.path.is_file() {
                return Err((
                    format!("{key}.path"),
                    format!(
                        "{}: no such file (a relative path starts at the working directory)",
                        p.path.display()
                    ),
                ));
            }
        }
        for (i, b) in self.bindings.iter().enumerate() {
            let key = format!("plugins.bindings[{i}]");
            if b.topic.is_empty() {
                return Err((format!("{key}.topic"), "must name a topic".into()));
            }
            let not_a_topic = |t: &str| {
                format!(
                    "{t:?} is not a topic name: 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-', and not \".\" or \"..\""
                )
            };
            if !crate::federation::topic_name(&b.topic) {
                return Err((format!("{key}.topic"), not_a_topic(&b.topic)));
            }
            if let Some(t) = b.dead_letter_topic.as_deref().filter(|t| !t.is_empty())
                && !crate::federation::topic_name(t)
            {
                return Err((format!("{key}.dead_letter_topic"), not_a_topic(t)));
            }
            if self.bindings[..i].iter().any(|c| c.topic == b.topic) {
                return Err((
                    format!("{key}.topic"),
                    format!(
                        "{:?} is bound twice; put all its plugins in one chain",
                        b.topic
                    ),
                ));
            }
            if b.chain.is_empty() {
                return Err((
                    format!("{key}.chain"),
                    "must name at least one plugin".into(),
                ));
            }
            if let Some(name) = b
                .chain
                .iter()
                .find(|n| !self.load.iter().any(|p| &p.name == *n))
            {
                let loaded: Vec<&str> = self.load.iter().map(|p| p.name.as_str()).collect();
                return Err((
                    format!("{key}.chain"),
                    format!(
                        "{name:?} is not a loaded plugin; loaded: [{}]",
                        loaded.join(", ")
                    ),
                ));
            }
            match (b.on_error, b.dead_letter_topic.as_deref()) {
                (OnError::DeadLetter, None | Some("")) => {
                    return Err((
                        format!("{key}.dead_letter_topic"),
                        format!(
                            "on_error = \"dead-letter\" needs the topic to send failing batches to \
                             (the binding of {:?})",
                            b.topic
                        ),
                    ));
                }
                (OnError::DeadLetter, Some(t))
                    if t == "__consumer_offsets" || t == "__transaction_state" =>
                {
                    return Err((
                        format!("{key}.dead_letter_topic"),
                        format!("{t:?} is one of Kafka's internal topics, which take no records"),
                    ));
                }
                (OnError::DeadLetter, Some(t)) if t == b.topic => {
                    return Err((
                        format!("{key}.dead_letter_topic"),
                        format!("{t:?} is the bound topic itself; name another topic"),
                    ));
                }
                (OnError::FailOpen | OnError::FailClosed, Some(_)) => {
                    return Err((
                        format!("{key}.dead_letter_topic"),
                        format!(
                            "only used with on_error = \"dead-letter\" (this binding has {:?})",
                            b.on_error.as_str()
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_quotas(&self) -> Result<(), (String, String)> {
        for (i, q) in self.quotas.iter().enumerate() {
            let key = format!("plugins.quotas[{i}]");
            if !self.load.iter().any(|p| p.name == q.plugin) {
                let loaded: Vec<&str> = self.load.iter().map(|p| p.name.as_str()).collect();
                return Err((
                    format!("{key}.plugin"),
                    format!(
                        "{:?} is not a loaded plugin; loaded: [{}]",
                        q.plugin,
                        loaded.join(", ")
                    ),
                ));
            }
            if let Some((b, _)) = self
                .bindings
                .iter()
                .enumerate()
                .find(|(_, b)| b.chain.contains(&q.plugin))
            {
                return Err((
                    format!("{key}.plugin"),
                    format!(
                        "{:?} is also in the chain of plugins.bindings[{b}]; a plugin is either a \
                         filter or a quota policy",
                        q.plugin
                    ),
                ));
            }
            if let Some(l) = q
                .listeners
                .iter()
                .find(|l| !QuotaBinding::LISTENERS.contains(&l.as_str()))
            {
                return Err((
                    format!("{key}.listeners"),
                    format!(
                        "unknown listener {l:?}; allowed: {}",
                        QuotaBinding::LISTENERS.join(", ")
                    ),
                ));
            }
            if q.principals.iter().any(|p| p.is_empty()) {
                return Err((
                    format!("{key}.principals"),
                    "a principal is not empty (e.g. \"User:ANONYMOUS\")".into(),
                ));
            }
            if q.on_error == OnError::DeadLetter {
                return Err((
                    format!("{key}.on_error"),
                    "a quota policy fails \"fail-open\" (allow) or \"fail-closed\" (reject); \
                     \"dead-letter\" is for topic bindings"
                        .into(),
                ));
            }
            if q.apis.is_empty() {
                return Err((
                    format!("{key}.apis"),
                    format!(
                        "must name at least one API; allowed: {}",
                        QuotaApi::ALLOWED.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const GOOD: &str = r#"
[plugins]
call_timeout = "50ms"

[[plugins.load]]
name = "hot"
path = "testdata/json_filter.wasm"
config = "temp > 20"

[[plugins.bindings]]
topic = "readings"
chain = ["hot"]
on_error = "fail-open"
"#;

    #[test]
    fn loads_plugins_and_bindings_with_defaults() {
        let c = Config::from_toml_str(GOOD, "runnel.toml", &[]).unwrap();
        assert_eq!(c.plugins.call_timeout.as_millis(), 50);
        assert_eq!(c.plugins.memory_limit, 64 << 20);
        assert_eq!(c.plugins.load[0].config, "temp > 20");
        let b = c.plugins.binding("readings").unwrap();
        assert_eq!(b.on_error, super::OnError::FailOpen);
        let without = GOOD.replace("on_error = \"fail-open\"\n", "");
        let c = Config::from_toml_str(&without, "runnel.toml", &[]).unwrap();
        assert_eq!(c.plugins.bindings[0].on_error, super::OnError::FailClosed);
        assert!(Config::default().plugins.bindings.is_empty());
        assert_eq!(Config::default().plugins.disable_after, 10);
        assert_eq!(c.plugins.bindings[0].dead_letter_topic, None);
    }

    #[test]
    fn dead_letter_needs_its_topic_and_disable_after_parses() {
        let dl = GOOD.replace(
            "on_error = \"fail-open\"",
            "on_error = \"dead-letter\"\ndead_letter_topic = \"failed\"",
        );
        let dl = dl.replace("call_timeout = \"50ms\"", "disable_after = 0");
        let c = Config::from_toml_str(&dl, "runnel.toml", &[]).unwrap();
        let b = c.plugins.binding("readings").unwrap();
        assert_eq!(b.on_error, super::OnError::DeadLetter);
        assert_eq!(b.dead_letter_topic.as_deref(), Some("failed"));
        assert_eq!(c.plugins.disable_after, 0);

        let missing = GOOD.replace("on_error = \"fail-open\"", "on_error = \"dead-letter\"");
        let e = Config::from_toml_str(&missing, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].dead_letter_topic"));
        let text = e.to_string();
        assert!(
            text.contains("needs the topic") && text.contains("\"readings\""),
            "{text}"
        );

        let stray = GOOD.replace(
            "on_error = \"fail-open\"",
            "on_error = \"fail-open\"\ndead_letter_topic = \"failed\"",
        );
        let e = Config::from_toml_str(&stray, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].dead_letter_topic"));
        assert!(e.to_string().contains("only used with"), "{e}");

        let bad = dl.replace("\"failed\"", "\"bad topic!\"");
        let e = Config::from_toml_str(&bad, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].dead_letter_topic"));
        assert!(
            e.to_string().contains("\"bad topic!\" is not a topic name"),
            "{e}"
        );
        let internal = dl.replace("\"failed\"", "\"__consumer_offsets\"");
        let e = Config::from_toml_str(&internal, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].dead_letter_topic"));
        assert!(e.to_string().contains("internal topics"), "{e}");
        let bad = dl.replace("topic = \"readings\"", "topic = \"..\"");
        let e = Config::from_toml_str(&bad, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].topic"));

        let itself = dl.replace("\"failed\"", "\"readings\"");
        let e = Config::from_toml_str(&itself, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].dead_letter_topic"));
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let typo = GOOD.replace("on_error = \"fail-open\"", "on_error = \"fail-maybe\"");
        let e = Config::from_toml_str(&typo, "runnel.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runnel.toml:")
                && e.contains("fail-maybe")
                && e.contains("fail-open, fail-closed, dead-letter"),
            "{e}"
        );

        let missing = GOOD.replace("testdata/json_filter.wasm", "testdata/missing.wasm");
        let e = Config::from_toml_str(&missing, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.load[0].path"));
        assert!(
            e.to_string().starts_with("runnel.toml:")
                && e.to_string()
                    .contains("testdata/missing.wasm: no such file"),
            "{e}"
        );

        let unknown = GOOD.replace("chain = [\"hot\"]", "chain = [\"cold\"]");
        // Located at the key's own line in the entry.
        let e = Config::from_toml_str(&unknown, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].chain"));
        let text = e.to_string();
        assert!(
            text.starts_with("runnel.toml:12: ")
                && text.contains("\"cold\" is not a loaded plugin"),
            "{text}"
        );

        let extra = GOOD.replace("config = \"temp > 20\"", "config = \"x\"\nconfg = 1");
        let e = Config::from_toml_str(&extra, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.load[0].confg"));
        let line = extra.lines().position(|l| l == "confg = 1").unwrap() + 1;
        assert!(
            e.to_string().starts_with(&format!("runnel.toml:{line}: ")),
            "{e}"
        );

        let big = GOOD.replace("call_timeout = \"50ms\"", "memory_limit = \"8GiB\"");
        let e = Config::from_toml_str(&big, "runnel.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plugins.memory_limit") && e.contains("out of range"),
            "{e}"
        );
    }

    const QUOTA: &str = r#"
[[plugins.load]]
name = "per-client"
path = "testdata/token_bucket.wasm"
config = 'rate = "1MiB/s"'

[[plugins.quotas]]
plugin = "per-client"
"#;

    #[test]
    fn quotas_load_with_defaults_and_match_requests() {
        use super::QuotaApi;
        let c = Config::from_toml_str(QUOTA, "runnel.toml", &[]).unwrap();
        let q = &c.plugins.quotas[0];
        assert_eq!(q.apis, vec![QuotaApi::Produce]);
        assert_eq!(q.on_error, super::OnError::FailOpen);
        assert!(q.listeners.is_empty() && q.principals.is_empty());
        assert!(q.applies(QuotaApi::Produce, "quic", "User:x"));
        assert!(!q.applies(QuotaApi::Fetch, "quic", "User:x"));
        assert!(c.plugins.is_quota_plugin("per-client"));
        assert!(Config::default().plugins.quotas.is_empty());

        let full = format!(
            "{QUOTA}listeners = [\"kafka\", \"quic\"]\nprincipals = [\"User:ANONYMOUS\"]\n\
             apis = [\"produce\", \"fetch\"]\non_error = \"fail-closed\"\n"
        );
        let c = Config::from_toml_str(&full, "runnel.toml", &[]).unwrap();
        let q = &c.plugins.quotas[0];
        assert_eq!(q.on_error, super::OnError::FailClosed);
        assert!(q.applies(QuotaApi::Fetch, "kafka", "User:ANONYMOUS"));
        assert!(!q.applies(QuotaApi::Fetch, "kafka_tls", "User:ANONYMOUS"));
        assert!(!q.applies(QuotaApi::Produce, "kafka", "User:device-7"));
    }

    #[test]
    fn quota_errors_name_the_entry_and_key() {
        let check = |text: String, key: &str, says: &str| {
            let e = Config::from_toml_str(&text, "runnel.toml", &[]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains(says), "{msg}");
        };
        check(
            QUOTA.replace("plugin = \"per-client\"", "plugin = \"nope\""),
            "plugins.quotas[0].plugin",
            "\"nope\" is not a loaded plugin; loaded: [per-client]",
        );
        check(
            format!("{QUOTA}listeners = [\"kafka-tls\"]\n"),
            "plugins.quotas[0].listeners",
            "unknown listener \"kafka-tls\"; allowed: kafka, kafka_tls, quic",
        );
        check(
            format!("{QUOTA}apis = []\n"),
            "plugins.quotas[0].apis",
            "at least one API",
        );
        check(
            format!("{QUOTA}apis = [\"metadata\"]\n"),
            "runnel.toml:",
            "allowed: produce, fetch",
        );
        check(
            format!("{QUOTA}principals = [\"\"]\n"),
            "plugins.quotas[0].principals",
            "not empty",
        );
        check(
            format!("{QUOTA}on_eror = \"fail-open\"\n"),
            "runnel.toml:",
            "on_eror",
        );
        check(
            format!("{QUOTA}\n[[plugins.bindings]]\ntopic = \"t\"\nchain = [\"per-client\"]\n"),
            "plugins.quotas[0].plugin",
            "also in the chain of plugins.bindings[0]",
        );
    }
}
