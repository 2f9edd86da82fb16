//! The commented default file, generated from the key table (comments) and from
//! `Config::default()` (values), so it cannot drift from the defaults the broker uses.

use std::fmt::Write as _;

use crate::Config;
use crate::keys::SECTIONS;

const HEADER: &str = "\
Runnel configuration. Every key is shown with its default; delete what you do not change.

Sizes: \"64MiB\", \"1GiB\", \"4KiB\" (powers of 1024), \"100MB\" (powers of 1000), or an
integer number of bytes. Durations: \"250ms\", \"10s\", \"5m\", \"2h\", \"7d\", or an integer
number of milliseconds.

Any key can be overridden by an environment variable RUNNEL_<SECTION>__<KEY>, with double
underscores between path segments: RUNNEL_BROKER__DATA_DIR=/var/lib/runnel,
RUNNEL_LISTENERS__KAFKA__ADDRESS=0.0.0.0:9092, RUNNEL_LOG__RETENTION=3d.
The environment wins over this file, which wins over the defaults.";

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            let _ = writeln!(out, "# {line}");
        }
    }
}

impl Config {
    /// The commented default config file: every section and key, its default value, and a
    /// comment saying what it does, what it costs and what is allowed. Parses back to
    /// `Config::default()`.
    pub fn default_toml() -> String {
        // Serializing plain structs of strings, integers and booleans cannot fail.
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let mut out = String::new();
        comment(&mut out, HEADER);
        for section in SECTIONS {
            let table = section
                .path
                .split('.')
                .try_fold(&defaults, |table, name| table.get(name)?.as_table())
                .expect("every section of the key table is in Config");
            out.push('\n');
            comment(&mut out, section.doc);
            let _ = writeln!(out, "[{}]", section.path);
            for key in section.keys {
                let value = &table[key.name];
                comment(&mut out, key.doc);
                let _ = writeln!(out, "{} = {value}", key.name);
            }
        }
        out
    }
}
