//! [`ConfigError`]: every way a configuration can be wrong, each naming where the value came from
//! ([`Location`]), the key path and what is allowed.
//!
//! Messages read like `runnel.toml:12: log.flush: unknown value "sometimes"; allowed: never,
//! interval, always`, or `env RUNNEL_LOG__RETENTION: log.retention: invalid duration "3 parsecs"`.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A line (1-based) of the config file named `origin`.
    Line { origin: String, line: usize },
    /// The key was set nowhere; its value is the built-in default. `origin` names the config
    /// file, if there was one.
    Default { origin: Option<String> },
    /// Set by the environment variable `var`.
    Env { var: String },
    /// No source is known: a `Config` built in code and checked with [`crate::Config::validate`].
    Unknown,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line { origin, line } => write!(f, "{origin}:{line}"),
            Location::Default {
                origin: Some(origin),
            } => write!(f, "{origin}:(default)"),
            Location::Default { origin: None } => f.write_str("(default)"),
            Location::Env { var } => write!(f, "env {var}"),
            Location::Unknown => Ok(()),
        }
    }
}

/// Displays a location followed by `": "`, or nothing when the location is unknown.
struct At<'a>(&'a Location);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Location::Unknown => Ok(()),
            at => write!(f, "{at}: "),
        }
    }
}

/// `" (did you mean X?)"` for the allowed name nearest to the last part of a dotted key, when
/// it is near enough to be a typo; nothing otherwise. It comes before the list of allowed names,
/// which clients may cut short.
struct DidYouMean<'a, S>(&'a str, &'a [S]);

impl<S: AsRef<str>> fmt::Display for DidYouMean<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DidYouMean(key, allowed) = self;
        // A key path (`log.retenton`) is compared by its last part; a topic config name whole.
        let name = match allowed.iter().any(|a| a.as_ref().contains('.')) {
            true => *key,
            false => key.rsplit('.').next().unwrap_or(key),
        };
        let nearest = allowed
            .iter()
            .map(|a| (strsim::levenshtein(name, a.as_ref()), a.as_ref()))
            .min();
        match nearest {
            Some((distance, a)) if distance <= 2.max(name.len() / 5) => {
                write!(f, " (did you mean {a}?)")
            }
            _ => Ok(()),
        }
    }
}

/// An invalid configuration, or a config file that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file holds nothing at all: a file cut short (a full disk, a failed copy)
    /// more likely than a wish for the defaults, which starting without a file gives.
    #[error(
        "{}: the config file is empty (a truncated file?): to run on the defaults, start without --config",
        path.display()
    )]
    Empty { path: PathBuf },
    /// The file is not valid TOML.
    #[error("{}{message}", At(at))]
    Syntax { at: Location, message: String },
    /// A key (or section) that the schema does not have.
    #[error("{}unknown key {key}{}; allowed keys: {}", At(at), DidYouMean(key, allowed), allowed.join(", "))]
    UnknownKey {
        at: Location,
        key: String,
        allowed: Vec<&'static str>,
    },
    /// A value of the wrong type or form: `invalid duration "3 parsecs"`.
    #[error("{}{key}: {message}", At(at))]
    Invalid {
        at: Location,
        key: String,
        message: String,
    },
    /// A well-formed value outside its allowed range.
    #[error("{}{key}: {value} is out of range; allowed: {allowed}", At(at))]
    OutOfRange {
        at: Location,
        key: String,
        value: String,
        allowed: String,
    },
    /// Values that are fine alone but contradict each other.
    #[error("{}{key}: {message}", At(at))]
    Conflict {
        at: Location,
        key: String,
        message: String,
    },
    /// A per-topic config name that [`crate::LogConfig::apply_topic_override`] does not know.
    #[error("unknown topic config {name}{}; allowed: {}", DidYouMean(name, allowed), allowed.join(", "))]
    UnknownTopicConfig {
        name: String,
        allowed: &'static [&'static str],
    },
    /// A per-topic config value that is malformed or out of range.
    #[error("topic config {name}: {message}")]
    InvalidTopicConfig { name: String, message: String },
}

impl ConfigError {
    /// The key path (`log.flush`) or Kafka topic config name (`retention.ms`) the error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } | ConfigError::Empty { .. } | ConfigError::Syntax { .. } => {
                None
            }
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::OutOfRange { key, .. }
            | ConfigError::Conflict { key, .. } => Some(key),
            ConfigError::UnknownTopicConfig { name, .. }
            | ConfigError::InvalidTopicConfig { name, .. } => Some(name),
        }
    }

    /// Where the offending value came from, when the error is about a value of the file or env.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Syntax { at, .. }
            | ConfigError::UnknownKey { at, .. }
            | ConfigError::Invalid { at, .. }
            | ConfigError::OutOfRange { at, .. }
            | ConfigError::Conflict { at, .. } => Some(at),
            _ => None,
        }
    }
}
