//! Redact/enrich transform: masks named fields of JSON record values, adds headers to every
//! record, and optionally writes a copy of each (masked) record to a second topic.
//!
//! Config, a JSON object (every key optional):
//!
//! ```json
//! {"mask": ["owner.email", "gps"], "headers": {"gateway-id": "gw-7"}, "copy_to": "audit"}
//! ```
//!
//! - `mask`: dotted paths into nested objects; a present field's value (whatever its type,
//!   objects included) becomes the string `"***"`. Missing fields are left alone.
//! - `headers`: added to every record; a header of the same name is replaced.
//! - `copy_to`: a topic that also receives every output record (fan-out: two outputs per
//!   input). Default none.
//!
//! Values that are not JSON objects (malformed JSON, arrays, scalars, null) pass unchanged: this
//! plugin does not judge data (chain a json-filter before it to drop malformed records), but
//! they still get the headers. A value with nothing to mask keeps its exact bytes; in a masked
//! value only the masked fields change: the others keep their order and their exact text
//! (numbers of any size or precision among them), between the objects' braces written anew.

use std::fmt;

use runnel_plugin::{NewRecord, Output, Record, Transform};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// What masked fields become.
pub const MASK: &str = "***";

/// The parsed config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub mask: Vec<Vec<String>>,
    pub headers: Vec<(String, String)>,
    pub copy_to: Option<String>,
}

impl Config {
    pub fn parse(text: &str) -> Result<Self, String> {
        let err = |m: String| format!("redact-enrich config: {m}");
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let Value::Object(doc) = doc else {
            return Err(err("expected a JSON object".into()));
        };
        let mut config = Config::default();
        for (key, value) in doc {
            match (key.as_str(), value) {
                ("mask", Value::Array(paths)) => {
                    for p in paths {
                        let Value::String(p) = p else {
                            return Err(err("mask: expected strings (dotted paths)".into()));
                        };
                        if p.split('.').any(str::is_empty) {
                            return Err(err(format!("mask: {p:?} is not a dotted path")));
                        }
                        config.mask.push(p.split('.').map(str::to_owned).collect());
                    }
                }
                ("headers", Value::Object(h)) => {
                    for (k, v) in h {
                        let Value::String(v) = v else {
                            return Err(err(format!("headers.{k}: expected a string")));
                        };
                        config.headers.push((k, v));
                    }
                }
                ("copy_to", Value::String(t)) if !t.is_empty() => config.copy_to = Some(t),
                ("mask" | "headers" | "copy_to", _) => {
                    return Err(err(format!(
                        "{key}: wrong type (mask: [\"a.b\"], headers: {{\"k\": \"v\"}}, copy_to: \"topic\")"
                    )));
                }
                (other, _) => {
                    return Err(err(format!(
                        "unknown key {other:?}; allowed: mask, headers, copy_to"
                    )));
                }
            }
        }
        Ok(config)
    }

    /// The value with the configured fields masked, or `None` when it stays as it is (not a
    /// JSON object, or no configured field present).
    pub fn redact(&self, value: &[u8]) -> Option<Vec<u8>> {
        if self.mask.is_empty() {
            return None;
        }
        let Ok(mut doc) = serde_json::from_slice::<Fields>(value) else {
            return None;
        };
        let mut masked = false;
        for path in &self.mask {
            masked |= mask(&mut doc, path);
        }
        masked.then(|| doc.to_json().into_bytes())
    }
}

/// A JSON object's fields as written: in their order, duplicate names kept, and each name and
/// value as its own JSON text, so that what is not masked keeps its exact text (numbers of any
/// size or precision, escapes in names and strings).
struct Fields(Vec<(Box<RawValue>, Box<RawValue>)>);

impl Fields {
    /// The object as compact JSON, each name and value as it was written.
    fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(name.get());
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

/// Whether the JSON text of a field's name names `wanted` (escapes resolved).
fn names(name: &RawValue, wanted: &str) -> bool {
    serde_json::from_str::<std::borrow::Cow<'_, str>>(name.get()).is_ok_and(|n| n == wanted)
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Vec::new();
        while let Some(entry) = map.next_entry()? {
            fields.push(entry);
        }
        Ok(Fields(fields))
    }
}

/// Masks every field at `path` in `doc`; whether one was present.
fn mask(doc: &mut Fields, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let mut found = false;
    for (_, value) in doc.0.iter_mut().filter(|(name, _)| names(name, first)) {
        if rest.is_empty() {
            *value = masked();
            found = true;
        } else if let Ok(mut inner) = serde_json::from_str::<Fields>(value.get())
            && mask(&mut inner, rest)
            && let Ok(text) = RawValue::from_string(inner.to_json())
        {
            *value = text;
            found = true;
        }
    }
    found
}

/// [`MASK`] as a JSON string.
fn masked() -> Box<RawValue> {
    serde_json::value::to_raw_value(MASK).expect("a plain string serializes")
}

/// The plugin.
pub struct RedactEnrich(Config);

impl Transform for RedactEnrich {
    fn init(config: &str) -> Result<Self, String> {
        Config::parse(config).map(RedactEnrich)
    }

    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<(), String> {
        let config = &self.0;
        let redacted = record.value().and_then(|v| config.redact(v));
        if redacted.is_none() && config.headers.is_empty() && config.copy_to.is_none() {
            out.keep(record);
            return Ok(());
        }
        let mut new = NewRecord::from(record);
        if let Some(v) = &redacted {
            new = new.with_value(Some(v));
        }
        for (k, v) in &config.headers {
            new = new.with_header(k, Some(v.as_bytes()));
        }
        out.push(&new);
        if let Some(topic) = &config.copy_to {
            out.push(&new.to_topic(topic));
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
runnel_plugin::transform!(RedactEnrich);

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_plugin::frame::Writer;
    use runnel_plugin::output::{OwnedRecord, read_output};

    fn run(config: &str, values: &[&[u8]]) -> Vec<OwnedRecord> {
        let mut w = Writer::new("readings", 0);
        for (i, v) in values.iter().enumerate() {
            w.record(
                i as i64,
                Some(b"dev"),
                Some(v),
                &[("gateway-id", Some(b"old"))],
            );
        }
        let mut t = RedactEnrich::init(config).unwrap();
        let frame = runnel_plugin::run_transform(&mut t, &w.finish()).unwrap();
        read_output(&frame).unwrap()
    }

    fn text(v: &Option<Vec<u8>>) -> &str {
        std::str::from_utf8(v.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn masks_nested_fields_in_order_and_adds_headers() {
        let config = r#"{"mask": ["owner.email", "gps", "absent.x"], "headers": {"gateway-id": "gw-7", "site": "north"}}"#;
        let out = run(
            config,
            &[
                br#"{"z":1,"owner":{"name":"ann","email":"a@x"},"gps":[1,2],"a":true}"#,
                br#"{ "temp" : 20 }"#,
                b"not json",
                b"[1,2]",
            ],
        );
        assert_eq!(out.len(), 4);
        assert_eq!(
            text(&out[0].value),
            r#"{"z":1,"owner":{"name":"ann","email":"***"},"gps":"***","a":true}"#
        );
        // Nothing to mask: the exact bytes, spaces included.
        assert_eq!(text(&out[1].value), r#"{ "temp" : 20 }"#);
        assert_eq!(text(&out[2].value), "not json");
        assert_eq!(text(&out[3].value), "[1,2]");
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r.topic, None);
            assert_eq!(r.timestamp, i as i64);
            assert_eq!(r.key.as_deref(), Some(&b"dev"[..]));
            assert_eq!(
                r.headers,
                vec![
                    ("gateway-id".to_string(), Some(b"gw-7".to_vec())),
                    ("site".to_string(), Some(b"north".to_vec())),
                ]
            );
        }
    }

    /// Only the masked fields change: numbers of any size or precision, and nested values,
    /// keep their exact text.
    #[test]
    fn what_is_not_masked_keeps_its_text() {
        let out = run(
            r#"{"mask": ["gps", "d.pin"]}"#,
            &[br#"{"gps":[1,2],"id":123456789012345678901234567890,"price":0.30000000000000004441,"n":1E5,"neg":-9223372036854775809,"d":{"pin":1,"x":1.50,"\u0041":2},"s":"\u00e9","\u0042":3}"#],
        );
        assert_eq!(
            text(&out[0].value),
            r#"{"gps":"***","id":123456789012345678901234567890,"price":0.30000000000000004441,"n":1E5,"neg":-9223372036854775809,"d":{"pin":"***","x":1.50,"\u0041":2},"s":"\u00e9","\u0042":3}"#
        );
        // A name written with escapes is still the name it spells.
        let out = run(r#"{"mask": ["pin"]}"#, &[br#"{"\u0070in":1}"#]);
        assert_eq!(text(&out[0].value), r#"{"\u0070in":"***"}"#);
    }

    #[test]
    fn copy_to_fans_out_each_record() {
        let out = run(
            r#"{"mask": ["pin"], "copy_to": "audit"}"#,
            &[br#"{"pin":1234}"#, br#"{"x":1}"#],
        );
        let topics: Vec<_> = out.iter().map(|r| r.topic.as_deref()).collect();
        assert_eq!(topics, vec![None, Some("audit"), None, Some("audit")]);
        assert_eq!(text(&out[1].value), r#"{"pin":"***"}"#);
        assert_eq!(out[0].value, out[1].value);
    }

    #[test]
    fn empty_config_keeps_records_and_bad_configs_are_refused() {
        let out = run("", &[br#"{"a":1}"#]);
        assert_eq!(text(&out[0].value), r#"{"a":1}"#);
        assert_eq!(
            out[0].headers,
            vec![("gateway-id".into(), Some(b"old".to_vec()))]
        );
        for bad in [
            "nope",
            "[1]",
            r#"{"mask": "a"}"#,
            r#"{"mask": ["a..b"]}"#,
            r#"{"headers": {"k": 1}}"#,
            r#"{"copy_to": 3}"#,
            r#"{"mask": [], "extra": 1}"#,
        ] {
            assert!(RedactEnrich::init(bad).is_err(), "{bad} accepted");
        }
    }
}
