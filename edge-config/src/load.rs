//! Loading: TOML text -> key check -> env overrides -> serde -> validation.
//!
//! The file is parsed twice: once into a `toml::Table` (the values, which env overrides then
//! change) and once into a spanned `DeTable` (the line of every key, for errors). The merged table
//! is rendered back to TOML and deserialized from that text, so that a bad value's error span
//! leads back to its key path, and the path to the file line or env variable that set it.

use std::path::Path;

use toml::Table;
use toml::de::DeTable;

use crate::error::{ConfigError, Location};
use crate::keys;
use crate::provenance::{self, Entry, Provenance};
use crate::{Config, env};

impl Config {
    /// Parses TOML text, applies `RUNNEL_*` overrides from `env`, and validates.
    ///
    /// `origin` names the file in errors (`runnel.toml:12: ...`). `env` holds the process
    /// environment as (name, value) pairs: the binary passes `std::env::vars()`, tests their own
    /// list. Keys missing from the text take their defaults.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let table: Table = text.parse().map_err(|e| syntax_error(origin, text, &e))?;
        let document = DeTable::parse(text).map_err(|e| syntax_error(origin, text, &e))?;
        let entries = provenance::entries(document.get_ref());
        let provenance = Provenance::from_file(origin, text, &entries);
        check_keys(&entries, &provenance)?;
        finish(table, provenance, env)
    }

    /// Reads the config file at `path` (or starts from the defaults when `None`), applies
    /// `RUNNEL_*` overrides from the process environment, and validates. A file with nothing
    /// in it (whitespace at most) is refused: it is more likely cut short than meant.
    ///
    /// Environment values that are not valid UTF-8 are converted lossily.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                name.starts_with(env::ENV_PREFIX)
                    .then(|| (name, value.to_string_lossy().into_owned()))
            })
            .collect();
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                if text.trim().is_empty() {
                    return Err(ConfigError::Empty {
                        path: path.to_owned(),
                    });
                }
                Config::from_toml_str(&text, &path.display().to_string(), &env)
            }
            None => finish(Table::new(), Provenance::defaults(), &env),
        }
    }
}

/// The line of the config file at `path` that sets `key` (a dotted path such as
/// `listeners.kafka_tls.cert`), for errors found after loading (a file the key names that
/// cannot be read). `None` when the file does not set it or cannot be read.
pub fn key_line(path: &Path, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let document = DeTable::parse(&text).ok()?;
    let entries = provenance::entries(document.get_ref());
    match Provenance::from_file("", &text, &entries).locate(key) {
        Location::Line { line, .. } => Some(line),
        _ => None,
    }
}

/// Env overrides, deserialization and validation of an already key-checked document.
fn finish(
    mut table: Table,
    mut provenance: Provenance,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    env::apply(&mut table, env, &mut provenance)?;
    let merged = toml::to_string(&table).map_err(|e| ConfigError::Syntax {
        at: provenance.locate(""),
        message: e.to_string(),
    })?;
    let config: Config =
        toml::from_str(&merged).map_err(|e| value_error(&merged, &e, &provenance))?;
    config.check(&provenance)?;
    Ok(config)
}

/// A TOML syntax error at its line.
fn syntax_error(origin: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let line = error
        .span()
        .map_or(1, |span| provenance::line_of(text, span.start));
    // The line itself names the key or table: toml's messages do not always ("duplicate key").
    let mut message = one_line(error.message());
    if let Some(source) = text.lines().nth(line - 1).map(str::trim)
        && !source.is_empty()
    {
        let shown: String = source.chars().take(80).collect();
        let cut = if shown.len() < source.len() {
            "..."
        } else {
            ""
        };
        message = format!("{message} (in `{shown}{cut}`)");
    }
    ConfigError::Syntax {
        at: Location::Line {
            origin: origin.to_owned(),
            line,
        },
        message,
    }
}

/// A deserialization error of the merged document, traced back to its key and origin.
fn value_error(merged: &str, error: &toml::de::Error, provenance: &Provenance) -> ConfigError {
    let message = one_line(error.message());
    let path = error.span().and_then(|span| {
        let document = DeTable::parse(merged).ok()?;
        provenance::path_at(&provenance::entries(document.get_ref()), &span)
    });
    match path {
        Some(path) => ConfigError::Invalid {
            at: provenance.locate(&path),
            message: with_allowed(message, &path),
            key: path,
        },
        None => ConfigError::Syntax {
            at: provenance.locate(""),
            message,
        },
    }
}

fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    in_words(&lines.join("; "))
}

/// serde's "expected i32" and the like, said for someone writing a config rather than Rust.
fn in_words(message: &str) -> String {
    const TYPES: [(&str, &str); 9] = [
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected i64", "expected a whole number"),
        (
            "expected i16",
            "expected a whole number from -32768 to 32767",
        ),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number from 0 up"),
        ("expected usize", "expected a whole number from 0 up"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut out = message.to_owned();
    for (rust, words) in TYPES {
        if let Some(at) = out.find(rust)
            && !out[at + rust.len()..].starts_with(|c: char| c.is_alphanumeric())
        {
            out.replace_range(at..at + rust.len(), words);
        }
    }
    out
}

/// A number of the wrong type or size names what the key allows ("0 or more") rather than the
/// range of the Rust type that holds it ("from -2147483648 to 2147483647"), when its
/// documentation says.
fn with_allowed(message: String, path: &str) -> String {
    let Some(at) = message.find("expected a whole number") else {
        return message;
    };
    let Some(allowed) = keys::key_at(path).and_then(|key| allowed_in(key.doc)) else {
        return message;
    };
    // A number too large for the type (which "0 or more" does not say) keeps its bound.
    let most = message[at..]
        .rsplit_once(" to ")
        .filter(|_| message.contains("invalid value"))
        .map(|(_, max)| format!(", at most {max}"))
        .unwrap_or_default();
    format!(
        "{}expected a whole number; allowed: {allowed}{most}",
        &message[..at]
    )
}

/// The "Allowed: ..." sentence of a key's documentation, on one line, without its full stop.
fn allowed_in(doc: &str) -> Option<String> {
    let (_, rest) = doc.split_once("Allowed: ")?;
    let rest = rest.replace('\n', " ");
    let sentence = match rest.find(". ") {
        Some(end) => &rest[..end],
        None => rest.trim_end().trim_end_matches('.'),
    };
    Some(sentence.to_owned())
}

/// Rejects keys the schema does not have and sections given a non-table value, reporting the
/// one that comes first in the file.
fn check_keys(entries: &[Entry], provenance: &Provenance) -> Result<(), ConfigError> {
    let mut in_file_order: Vec<&Entry> = entries.iter().collect();
    in_file_order.sort_by_key(|e| e.key_span.start);
    for entry in in_file_order {
        let allowed = keys::allowed_under(&entry.parent);
        if allowed.is_empty() {
            // Inside a key's value (a table where a scalar belongs): serde reports the key.
            continue;
        }
        if !allowed.contains(&entry.name.as_str()) {
            return Err(ConfigError::UnknownKey {
                at: provenance.locate(&entry.path),
                key: entry.path.clone(),
                allowed,
            });
        }
        if keys::key_at(&entry.path).is_none() && !entry.is_table {
            return Err(ConfigError::Invalid {
                at: provenance.locate(&entry.path),
                key: entry.path.clone(),
                message: format!("must be a table: [{}]", entry.path),
            });
        }
    }
    Ok(())
}
