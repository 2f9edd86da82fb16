//! `RUNNEL_*` environment overrides.
//!
//! A variable `RUNNEL_<SECTION>__<KEY>` sets one key, with a double underscore between path
//! segments: `RUNNEL_BROKER__DATA_DIR=/var/lib/runnel`, `RUNNEL_LISTENERS__KAFKA__ADDRESS=
//! 0.0.0.0:9092`, `RUNNEL_LOG__RETENTION=3d`. Segments are matched without regard to case.
//! Overrides are applied to the parsed document before it is deserialized, so they take
//! precedence over the file, which takes precedence over the defaults.
//!
//! Variables starting with `RUNNEL_` but containing no `__` (`RUNNEL_LOG`, `RUNNEL_CONFIG`) are
//! not config keys and are ignored: they are left for the binary's own flags and logging, unless
//! one names a key once a `_` is made `__` (`RUNNEL_LOG_RETENTION`), which is an error saying
//! so. A variable with `__` that names no key is an error naming the variable, so a misspelt
//! override never goes unnoticed.
//!
//! The text of a variable is typed by the key it sets: `true`/`false` become booleans for
//! boolean keys; an integer becomes a TOML integer for numeric, size and duration keys (so
//! `RUNNEL_LOG__RETENTION=-1` means forever); everything else, and every path, host, address and
//! enum value, stays a string.

use toml::{Table, Value};

use crate::error::{ConfigError, Location};
use crate::keys::{self, Kind};
use crate::provenance::Provenance;

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "RUNNEL_";
/// Separator between path segments in an override variable.
pub const ENV_SEPARATOR: &str = "__";

/// Applies every `RUNNEL_*__*` variable of `env` to `table`, recording each in `provenance`.
/// A variable that appears twice takes its last value.
pub(crate) fn apply(
    table: &mut Table,
    env: &[(String, String)],
    provenance: &mut Provenance,
) -> Result<(), ConfigError> {
    for (var, text) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains(ENV_SEPARATOR) {
            // Not an override, unless it is one with a single underscore where two belong
            // (`RUNNEL_LOG_RETENTION`), which would otherwise be ignored without a word.
            if let Some(meant) = double_underscore_meant(rest) {
                return Err(ConfigError::Invalid {
                    at: Location::Env { var: var.clone() },
                    key: meant.replace(ENV_SEPARATOR, ".").to_ascii_lowercase(),
                    message: format!(
                        "{var} is not read: did you mean {ENV_PREFIX}{meant}? (a section and its \
                         key are joined by two underscores)"
                    ),
                });
            }
            continue;
        }
        let at = || Location::Env { var: var.clone() };
        let lower = rest.to_ascii_lowercase();
        let segments: Vec<&str> = lower.split(ENV_SEPARATOR).collect();
        let path = segments.join(".");
        if let Some((bad, allowed)) = keys::first_unknown(&segments) {
            if allowed.is_empty() {
                let (parent, _) = bad.rsplit_once('.').unwrap_or((&bad, ""));
                return Err(ConfigError::Invalid {
                    at: at(),
                    key: bad.clone(),
                    message: format!("{parent} is a key, not a section"),
                });
            }
            return Err(ConfigError::UnknownKey {
                at: at(),
                key: bad,
                allowed,
            });
        }
        let Some(key) = keys::key_at(&path) else {
            return Err(ConfigError::Invalid {
                at: at(),
                key: path.clone(),
                message: format!(
                    "is a section, not a key; set one of its keys: {}",
                    keys::allowed_under(&path).join(", ")
                ),
            });
        };
        insert(table, &segments, typed(key.kind, text));
        provenance.set_env(&path, var);
    }
    Ok(())
}

/// The override `rest` (after `RUNNEL_`, no `__` in it) was meant to be, if putting `__` for
/// some of its `_` names a key: `LOG_RETENTION` -> `LOG__RETENTION`,
/// `LISTENERS_KAFKA_ADDRESS` -> `LISTENERS__KAFKA__ADDRESS`.
fn double_underscore_meant(rest: &str) -> Option<String> {
    let at: Vec<usize> = rest.match_indices('_').map(|(i, _)| i).collect();
    if at.is_empty() || at.len() > 12 {
        return None;
    }
    (1u32..1 << at.len()).find_map(|chosen| {
        let mut meant = String::with_capacity(rest.len() + at.len());
        for (i, c) in rest.char_indices() {
            meant.push(c);
            if let Some(k) = at.iter().position(|&u| u == i)
                && chosen & (1 << k) != 0
            {
                meant.push('_');
            }
        }
        let path = meant.to_ascii_lowercase().replace(ENV_SEPARATOR, ".");
        keys::key_at(&path).map(|_| meant)
    })
}

/// The TOML value for an override's text, typed by the key's kind.
fn typed(kind: Kind, text: &str) -> Value {
    match kind {
        Kind::Bool => match text.trim() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => Value::String(text.to_owned()),
        },
        Kind::Int | Kind::Bytes | Kind::Duration => match text.trim().parse::<i64>() {
            Ok(n) => Value::Integer(n),
            Err(_) => Value::String(text.to_owned()),
        },
        Kind::Float => match text.trim().parse::<f64>() {
            Ok(n) => Value::Float(n),
            Err(_) => Value::String(text.to_owned()),
        },
        // Split on `;` when the text holds one (as Kafka's super.users: a principal's DN holds
        // commas), else on `,`.
        Kind::List => Value::Array(
            text.split(if text.contains(';') { ';' } else { ',' })
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect(),
        ),
        // An array of tables from an env string fails deserialization, naming the variable.
        Kind::Text | Kind::Choice | Kind::Addr | Kind::Tables => Value::String(text.to_owned()),
    }
}

/// Sets `segments` (a path to a key) in `table`, creating the tables on the way.
fn insert(table: &mut Table, segments: &[&str], value: Value) {
    let (last, parents) = segments.split_last().expect("a key path has a segment");
    let mut current = table;
    for segment in parents {
        let slot = current
            .entry(segment.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !slot.is_table() {
            // The file gave a section a non-table value; the override replaces it.
            *slot = Value::Table(Table::new());
        }
        current = slot.as_table_mut().expect("made a table above");
    }
    current.insert(last.to_string(), value);
}
