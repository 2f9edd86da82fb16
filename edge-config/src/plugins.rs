//! `[plugins]`: WebAssembly plugins to load, their limits, and which topics run them.
//!
//! ```toml
//! [plugins]
//! call_timeout = "100ms"
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
//! ```
//!
//! Keys inside `[[plugins.load]]` and `[[plugins.bindings]]` entries are checked by serde
//! (`deny_unknown_fields`); cross-references (a chain naming a plugin that is not loaded, two
//! bindings of one topic) by [`PluginsConfig::check`], whose errors name the entry by index.

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
    /// and fails. Default 100ms. The produce request waits this long at most per plugin of the
    /// chain; a plugin that loops forever costs this much per batch.
    #[serde(with = "units::duration")]
    pub call_timeout: Duration,
    /// Linear memory one plugin instance may grow to; a call that needs more traps and fails.
    /// Default 64MiB. Each instance reserves address space for this much, and one instance per
    /// plugin is alive per concurrently running call.
    #[serde(with = "units::bytes")]
    pub memory_limit: u64,
    /// A plugin whose calls fail this many times in a row is disabled until the broker
    /// restarts: one WARN log line names it and its last error, and from then on every binding
    /// running it applies its `on_error` policy without calling it. Default 10; 0 = never.
    pub disable_after: u32,
    /// `[[plugins.load]]`: the plugins to load at start-up. Default none.
    pub load: Vec<PluginSpec>,
    /// `[[plugins.bindings]]`: which topics run which plugins on produce. Default none: every
    /// topic stores batches as received.
    pub bindings: Vec<Binding>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            call_timeout: Duration::from_millis(100),
            memory_limit: 64 * MIB,
            disable_after: 10,
            load: Vec::new(),
            bindings: Vec::new(),
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

/// `plugins.memory_limit`.
pub(crate) const MEMORY_LIMIT: std::ops::RangeInclusive<u64> = MIB..=4 * GIB;

impl PluginsConfig {
    /// The chain bound to `topic`, if any.
    pub fn binding(&self, topic: &str) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.topic == topic)
    }

    /// Cross-reference checks; `Err((key, message))`, the key naming the entry by index.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
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
        }
        for (i, b) in self.bindings.iter().enumerate() {
            let key = format!("plugins.bindings[{i}]");
            if b.topic.is_empty() {
                return Err((format!("{key}.topic"), "must name a topic".into()));
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
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const GOOD: &str = r#"
[plugins]
call_timeout = "50ms"

[[plugins.load]]
name = "hot"
path = "json_filter.wasm"
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

        let unknown = GOOD.replace("chain = [\"hot\"]", "chain = [\"cold\"]");
        // Located at the `[[plugins.bindings]]` header of the entry.
        let e = Config::from_toml_str(&unknown, "runnel.toml", &[]).unwrap_err();
        assert_eq!(e.key(), Some("plugins.bindings[0].chain"));
        let text = e.to_string();
        assert!(
            text.starts_with("runnel.toml:10: ")
                && text.contains("\"cold\" is not a loaded plugin"),
            "{text}"
        );

        let extra = GOOD.replace("config = \"temp > 20\"", "config = \"x\"\nconfg = 1");
        let e = Config::from_toml_str(&extra, "runnel.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("confg"), "{e}");

        let big = GOOD.replace("call_timeout = \"50ms\"", "memory_limit = \"8GiB\"");
        let e = Config::from_toml_str(&big, "runnel.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plugins.memory_limit") && e.contains("out of range"),
            "{e}"
        );
    }
}
