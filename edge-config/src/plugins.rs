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
}

impl OnError {
    /// The accepted spellings.
    pub const ALLOWED: &'static [&'static str] = &["fail-open", "fail-closed"];

    pub fn as_str(&self) -> &'static str {
        match self {
            OnError::FailOpen => "fail-open",
            OnError::FailClosed => "fail-closed",
        }
    }
}

impl FromStr for OnError {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "fail-open" => Ok(OnError::FailOpen),
            "fail-closed" => Ok(OnError::FailClosed),
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
                && e.contains("fail-open, fail-closed"),
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
