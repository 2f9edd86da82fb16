//! Where each key's value came from: a line of the file, an environment variable, or the
//! default. Built from the spans of the parsed document so that errors found after
//! deserialization (ranges, contradictions) can still name a line.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::error::Location;
use crate::keys;

/// A key of a parsed document: its dotted path and the byte spans of its name and its value.
pub(crate) struct Entry {
    pub path: String,
    /// The path of the table holding the key ("" for the document root).
    pub parent: String,
    /// The key's own name.
    pub name: String,
    pub key_span: Range<usize>,
    pub value_span: Range<usize>,
    /// Whether the value is a table (a section) rather than a leaf value.
    pub is_table: bool,
}

/// Every key of a document, sections and leaves, depth first.
pub(crate) fn entries(table: &DeTable<'_>) -> Vec<Entry> {
    let mut out = Vec::new();
    collect(table, "", &mut out);
    out
}

fn collect(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (key, value) in table {
        let path = keys::join(prefix, key.get_ref());
        let is_table = matches!(value.get_ref(), DeValue::Table(_));
        out.push(Entry {
            path: path.clone(),
            parent: prefix.to_owned(),
            name: key.get_ref().to_string(),
            key_span: key.span(),
            value_span: value.span(),
            is_table,
        });
        match value.get_ref() {
            DeValue::Table(inner) => collect(inner, &path, out),
            // The entries of an array of tables (`[[plugins.load]]`) by index: `plugins.load[0]`.
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        let at = format!("{path}[{i}]");
                        out.push(Entry {
                            path: at.clone(),
                            parent: path.clone(),
                            name: format!("[{i}]"),
                            key_span: item.span(),
                            value_span: item.span(),
                            is_table: true,
                        });
                        collect(inner, &at, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted path of the innermost key whose value (or, failing that, whose name) holds `span`.
pub(crate) fn path_at(entries: &[Entry], span: &Range<usize>) -> Option<String> {
    let holds = |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
    let innermost = |range: fn(&Entry) -> &Range<usize>| {
        entries
            .iter()
            .filter(|e| holds(range(e)))
            .min_by_key(|e| range(e).len())
    };
    innermost(|e| &e.value_span)
        .or_else(|| innermost(|e| &e.key_span))
        .map(|e| e.path.clone())
}

/// Where each key path was set; keys not recorded came from the defaults.
#[derive(Default)]
pub(crate) struct Provenance {
    /// False for configs built in code: nothing is known about any key.
    known: bool,
    origin: Option<String>,
    set: BTreeMap<String, Location>,
}

impl Provenance {
    /// No source known: for configs built in code.
    pub fn unknown() -> Self {
        Provenance::default()
    }

    /// Records the line of every key of the file `origin`.
    pub fn from_file(origin: &str, text: &str, entries: &[Entry]) -> Self {
        let set = entries
            .iter()
            .map(|e| {
                let line = line_of(text, e.key_span.start);
                let at = Location::Line {
                    origin: origin.to_owned(),
                    line,
                };
                (e.path.clone(), at)
            })
            .collect();
        Provenance {
            known: true,
            origin: Some(origin.to_owned()),
            set,
        }
    }

    /// Defaults only, with no file: errors say `(default)` or name an env variable.
    pub fn defaults() -> Self {
        Provenance {
            known: true,
            origin: None,
            set: BTreeMap::new(),
        }
    }

    /// Records that `var` set `path`.
    pub fn set_env(&mut self, path: &str, var: &str) {
        let at = Location::Env {
            var: var.to_owned(),
        };
        self.set.insert(path.to_owned(), at);
    }

    /// Where `path` was set: a line, an env variable, or the default.
    pub fn locate(&self, path: &str) -> Location {
        if let Some(at) = self.set.get(path) {
            return at.clone();
        }
        if !self.known {
            return Location::Unknown;
        }
        Location::Default {
            origin: self.origin.clone(),
        }
    }

    /// Whether `path` was set (in the file or from the environment) rather than left at its
    /// default.
    pub fn is_set(&self, path: &str) -> bool {
        self.set.contains_key(path)
    }

    /// The location of the first of `paths` that was set explicitly, else of the first one.
    pub fn locate_first(&self, paths: &[&str]) -> Location {
        paths
            .iter()
            .find_map(|p| self.set.get(*p).cloned())
            .unwrap_or_else(|| self.locate(paths[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_located_by_line_env_or_default() {
        let text = "[log]\n\nflush = \"never\"\n";
        let document = DeTable::parse(text).unwrap();
        let mut provenance =
            Provenance::from_file("runnel.toml", text, &entries(document.get_ref()));
        provenance.set_env("log.retention", "RUNNEL_LOG__RETENTION");
        let line = |line| Location::Line {
            origin: "runnel.toml".into(),
            line,
        };
        assert_eq!(provenance.locate("log"), line(1));
        assert_eq!(provenance.locate("log.flush"), line(3));
        assert_eq!(
            provenance.locate("log.retention").to_string(),
            "env RUNNEL_LOG__RETENTION"
        );
        assert_eq!(
            provenance.locate("log.flush_interval").to_string(),
            "runnel.toml:(default)"
        );
        assert_eq!(
            provenance.locate_first(&["log.flush_interval", "log.flush"]),
            line(3)
        );
        assert_eq!(
            Provenance::defaults().locate("log.flush").to_string(),
            "(default)"
        );
        assert_eq!(Provenance::unknown().locate("log.flush"), Location::Unknown);
    }

    #[test]
    fn spans_lead_back_to_leaf_keys() {
        let text = "[broker]\nnode_id = 1\n[listeners.kafka]\naddress = \"x\"\n";
        let document = DeTable::parse(text).unwrap();
        let entries = entries(document.get_ref());
        let at = text.find("\"x\"").unwrap();
        assert_eq!(
            path_at(&entries, &(at..at + 3)).as_deref(),
            Some("listeners.kafka.address")
        );
        assert_eq!(line_of(text, at), 4);
    }
}
