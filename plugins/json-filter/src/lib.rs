//! JSON field filter: keeps the records whose JSON value has a field that compares to a
//! constant, e.g. `temp > 20`, `device.kind == "pump"`, `ok != false`.
//!
//! Config grammar: `FIELD OP VALUE` where FIELD is a dotted path into nested objects (`a.b.c`),
//! OP is one of `>` `>=` `<` `<=` `==` `!=`, and VALUE is a JSON literal (number, "string",
//! true, false, null). Numbers compare numerically; strings compare by bytes; `==`/`!=` work on
//! any JSON value, ordering ops only on number-number and string-string pairs.
//!
//! Dropped: records whose value is null or not valid JSON, whose field is missing, or whose field
//! cannot be ordered against the constant (`"hot" > 20`). Note that `!=` also drops a missing
//! field: a record is kept only when the field exists and the comparison holds.

use std::cmp::Ordering;

use runnel_plugin::{Filter, Record};
use serde::de::{
    DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;
use serde_json::Value;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

/// A parsed `FIELD OP VALUE` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub path: Vec<String>,
    pub op: Op,
    pub value: Value,
}

impl Condition {
    /// Parses the plugin config.
    pub fn parse(config: &str) -> Result<Self, String> {
        let config = config.trim();
        // Two-character operators first, so `>=` is not read as `>`.
        const OPS: [(&str, Op); 6] = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        let (at, text, op) = OPS
            .iter()
            .filter_map(|(text, op)| config.find(text).map(|at| (at, *text, *op)))
            .min_by_key(|(at, text, _)| (*at, std::cmp::Reverse(text.len())))
            .ok_or_else(|| {
                format!("json-filter config {config:?}: expected `FIELD OP VALUE`, OP one of > >= < <= == !=")
            })?;
        let field = config[..at].trim();
        let literal = config[at + text.len()..].trim();
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(format!(
                "json-filter config {config:?}: the field name is empty"
            ));
        }
        let value: Value = serde_json::from_str(literal).map_err(|e| {
            format!("json-filter config {config:?}: {literal:?} is not a JSON literal ({e}); quote strings")
        })?;
        if matches!(value, Value::Array(_) | Value::Object(_)) {
            return Err(format!(
                "json-filter config {config:?}: compare to a number, string, bool or null"
            ));
        }
        Ok(Condition {
            path: field.split('.').map(str::to_owned).collect(),
            op,
            value,
        })
    }

    /// Whether a record value (raw bytes) passes.
    pub fn matches(&self, raw: Option<&[u8]>) -> bool {
        let Some(raw) = raw else { return false };
        // One pass over the document that checks all of it is valid JSON but builds only the
        // field on the path (no tree of the whole record: that allocation dominated the cost).
        let mut de = serde_json::Deserializer::from_slice(raw);
        let found = match (Path(&self.path).deserialize(&mut de), de.end()) {
            (Ok(found), Ok(())) => found,
            _ => return false,
        };
        let Some(field) = found else { return false };
        let field = &field;
        match self.op {
            Op::Eq => equal(field, &self.value),
            Op::Ne => !equal(field, &self.value),
            op => match order(field, &self.value) {
                None => false,
                Some(ord) => match op {
                    Op::Gt => ord == Ordering::Greater,
                    Op::Ge => ord != Ordering::Less,
                    Op::Lt => ord == Ordering::Less,
                    Op::Le => ord != Ordering::Greater,
                    Op::Eq | Op::Ne => unreachable!("handled above"),
                },
            },
        }
    }
}

/// Finds the value at a dotted path while reading (and so validating) the whole document: the
/// field on the path is built as a [`Value`], everything else is skipped as `IgnoredAny`.
struct Path<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for Path<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        match self.0.split_first() {
            None => Value::deserialize(d).map(Some),
            Some(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Path<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let (first, rest) = self.0.split_first().expect("a non-empty path");
        let mut found = None;
        while let Some(hit) = map.next_key_seed(Key(first))? {
            if hit {
                found = map.next_value_seed(Path(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
}

/// Reads an object key and says whether it is the wanted one, without allocating for keys
/// that need no unescaping.
struct Key<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Equality where 20 and 20.0 are equal.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => order(a, b) == Some(Ordering::Equal),
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return Some(x.cmp(&y));
            }
            x.as_f64()?.partial_cmp(&y.as_f64()?)
        }
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

/// The plugin: one condition.
pub struct JsonFilter(Condition);

impl Filter for JsonFilter {
    fn init(config: &str) -> Result<Self, String> {
        Condition::parse(config).map(JsonFilter)
    }

    fn keep(&mut self, record: &Record<'_>) -> bool {
        self.0.matches(record.value())
    }
}

#[cfg(target_arch = "wasm32")]
runnel_plugin::filter!(JsonFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_plugin::frame::Writer;

    fn keeps(config: &str, value: &str) -> bool {
        Condition::parse(config)
            .unwrap()
            .matches(Some(value.as_bytes()))
    }

    #[test]
    fn parses_every_operator() {
        for (text, op) in [
            (">", Op::Gt),
            (">=", Op::Ge),
            ("<", Op::Lt),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
        ] {
            let c = Condition::parse(&format!(" a.b {text} 1 ")).unwrap();
            assert_eq!(
                (c.path.clone(), c.op, c.value),
                (vec!["a".into(), "b".into()], op, Value::from(1))
            );
        }
        for bad in [
            "",
            "temp",
            "temp >",
            "> 3",
            "temp > hot",
            "temp > [1]",
            "a..b > 1",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn compares_numbers_strings_and_literals() {
        assert!(keeps("temp > 20", r#"{"temp": 21}"#));
        assert!(!keeps("temp > 20", r#"{"temp": 20}"#));
        assert!(keeps("temp >= 20", r#"{"temp": 20.0}"#));
        assert!(keeps("temp < 20", r#"{"temp": 19.5}"#));
        assert!(keeps("temp <= -1", r#"{"temp": -3}"#));
        assert!(keeps("temp == 20", r#"{"temp": 20.0}"#));
        assert!(keeps("temp != 20", r#"{"temp": 21}"#));
        assert!(keeps(r#"kind == "pump""#, r#"{"kind": "pump"}"#));
        assert!(keeps(r#"kind > "a""#, r#"{"kind": "b"}"#));
        assert!(keeps("ok == true", r#"{"ok": true}"#));
        assert!(keeps("gone == null", r#"{"gone": null}"#));
        assert!(keeps("d.t > 1", r#"{"d": {"t": 2}}"#));
    }

    #[test]
    fn drops_malformed_missing_and_mismatched() {
        assert!(!keeps("temp > 20", "{not json"));
        assert!(!keeps("temp > 20", r#"{"other": 30}"#));
        assert!(!keeps("temp != 20", r#"{"other": 30}"#));
        assert!(!keeps("temp > 20", r#"{"temp": "hot"}"#));
        assert!(!keeps("temp > 20", "[21]"));
        assert!(!Condition::parse("temp > 20").unwrap().matches(None));
    }

    #[test]
    fn bitmap_over_a_framed_batch() {
        let mut w = Writer::new("readings", 0);
        for v in [r#"{"temp":25}"#, r#"{"temp":5}"#, "junk", r#"{"temp":30}"#] {
            w.record(0, None, Some(v.as_bytes()), &[]);
        }
        let mut f = JsonFilter::init("temp > 20").unwrap();
        let bitmap = runnel_plugin::run_filter(&mut f, &w.finish()).unwrap();
        assert_eq!(bitmap, vec![0b1001]);
    }
}
