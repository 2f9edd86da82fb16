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
//!
//! Valid JSON is what serde_json's `Value` parser accepts (RFC 8259, UTF-8, numbers within f64
//! range, at most 127 nested arrays and objects); when an object repeats a key, its last value
//! counts. [`scan`] checks all of that in one pass over the bytes and decodes only the field.

use std::cmp::Ordering;

use runnel_plugin::{Filter, Record};
use serde_json::{Number, Value};

pub mod scan;

use scan::Found;

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
        // One pass over the document that checks all of it is valid JSON and decodes only the
        // field on the path (see `scan`).
        let field = match scan::find(raw, &self.path) {
            Ok(Some(field)) => field,
            _ => return false,
        };
        let Some((equal, ord)) = compare(field, &self.value) else {
            return false;
        };
        match self.op {
            Op::Eq => equal,
            Op::Ne => !equal,
            op => match ord {
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

/// Compares a found field with the constant: whether they are equal (20 and 20.0 are), and
/// their order when both are numbers or both strings. `None` when the field cannot be decoded
/// (which the scanner's checks rule out).
fn compare(field: Found<'_>, value: &Value) -> Option<(bool, Option<Ordering>)> {
    let ordered = |ord: Ordering| Some((ord == Ordering::Equal, Some(ord)));
    match (field, value) {
        (Found::Number(text), Value::Number(y)) => {
            let x = number(text)?;
            // Integers (i64 or u64) compare exactly, and with a float exactly too: 2^63 and
            // 2^63 + 1 differ, though both are the same f64.
            match (integer(&x), integer(y)) {
                (Some(x), Some(y)) => ordered(x.cmp(&y)),
                (Some(x), None) => ordered(integer_with_float(x, y.as_f64()?)?),
                (None, Some(y)) => ordered(integer_with_float(y, x.as_f64()?)?.reverse()),
                (None, None) => ordered(x.as_f64()?.partial_cmp(&y.as_f64()?)?),
            }
        }
        (Found::Str { raw, escaped }, Value::String(y)) => {
            if escaped {
                ordered(scan::unescape(raw).ok()?.as_bytes().cmp(y.as_bytes()))
            } else {
                ordered(raw.cmp(y.as_bytes()))
            }
        }
        (Found::Bool(x), Value::Bool(y)) => Some((x == *y, None)),
        (Found::Null, Value::Null) => Some((true, None)),
        _ => Some((false, None)),
    }
}

/// A number that is an integer of serde_json's (i64 or u64), as one type.
fn integer(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// How the integer `x` orders with the float `y`, exactly (`None` for a NaN).
fn integer_with_float(x: i128, y: f64) -> Option<Ordering> {
    if y.is_nan() {
        return None;
    }
    // Past every i128 (2^127 is about 1.7e38), and every integer serde_json makes.
    if y >= 1.0e38 {
        return Some(Ordering::Less);
    }
    if y <= -1.0e38 {
        return Some(Ordering::Greater);
    }
    let whole = y.trunc();
    // Exact: an f64 holding a whole number below 2^127 converts to i128 without loss.
    Some(x.cmp(&(whole as i128)).then(if y > whole {
        Ordering::Less
    } else if y < whole {
        Ordering::Greater
    } else {
        Ordering::Equal
    }))
}

/// Powers of ten that are exact in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Decodes a number's text (validated by the scanner) to the same [`Number`] serde_json makes
/// of it: integers as u64 or i64 when they fit (`-0` as the float -0.0), others as f64. Plain
/// integers and decimals of at most 19 digits are decoded here with serde_json's own arithmetic
/// (the significand as f64, divided by an exact power of ten); the rest by serde_json.
fn number(text: &[u8]) -> Option<Number> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let mut significand: u64 = 0;
    let mut count = 0;
    let mut fraction: Option<usize> = None;
    for &b in digits {
        match b {
            b'0'..=b'9' if count < 19 => {
                significand = significand * 10 + (b - b'0') as u64;
                count += 1;
                if let Some(f) = &mut fraction {
                    *f += 1;
                }
            }
            b'.' => fraction = Some(0),
            _ => return serde_json::from_slice(text).ok(),
        }
    }
    match fraction {
        None if !negative => Some(Number::from(significand)),
        None => {
            let n = (significand as i64).wrapping_neg();
            if n >= 0 {
                Number::from_f64(-(significand as f64))
            } else {
                Some(Number::from(n))
            }
        }
        Some(f) => match POW10.get(f) {
            Some(pow) => {
                let x = significand as f64 / pow;
                Number::from_f64(if negative { -x } else { x })
            }
            None => serde_json::from_slice(text).ok(),
        },
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

    /// 64-bit serials and hashes compare exactly, past i64 and against floats alike.
    #[test]
    fn large_integers_compare_exactly() {
        let id = |n: &str| format!(r#"{{"id": {n}}}"#);
        assert!(!keeps(
            "id == 12345678901234567891",
            &id("12345678901234567890")
        ));
        assert!(keeps(
            "id == 12345678901234567891",
            &id("12345678901234567891")
        ));
        assert!(!keeps(
            "id == 12345678901234567891",
            &id("1.2345678901234567e19")
        ));
        assert!(!keeps(
            "id > 9223372036854775807",
            &id("9223372036854775807")
        ));
        assert!(keeps(
            "id > 9223372036854775807",
            &id("9223372036854775808")
        ));
        assert!(keeps(
            "id > 9223372036854775807",
            &id("18446744073709551615")
        ));
        assert!(keeps(
            "id < 18446744073709551615",
            &id("-9223372036854775808")
        ));
        // 2^63 is a float exactly; 2^63 + 1 is not, and is larger.
        assert!(keeps(
            "id == 9223372036854775808.0",
            &id("9223372036854775808")
        ));
        assert!(keeps(
            "id > 9223372036854775808.0",
            &id("9223372036854775809")
        ));
        assert!(keeps("id < 1e20", &id("18446744073709551615")));
        assert!(keeps("id > 100.5", &id("101")));
        assert!(!keeps("id > 100.5", &id("100")));
        assert!(keeps("id > -0.5", &id("0")));
        assert!(keeps("id < -0.5", &id("-1")));
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

    /// The reference: serde_json parses the whole document into a `Value` (its verdict on
    /// validity), then the path is looked up in it (a duplicate key's last value wins there).
    fn oracle(doc: &[u8], path: &[&str]) -> Result<Option<Value>, ()> {
        let mut v: &Value = &serde_json::from_slice(doc).map_err(|_| ())?;
        let whole = v.clone();
        v = &whole;
        for seg in path {
            match v.as_object().and_then(|m| m.get(*seg)) {
                Some(next) => v = next,
                None => return Ok(None),
            }
        }
        Ok(Some(v.clone()))
    }

    /// What the scanner found, as the `Value` serde_json would have made (arrays and objects
    /// as an empty array: the scanner only says "compound").
    fn decoded(found: Found<'_>) -> Value {
        match found {
            Found::Null => Value::Null,
            Found::Bool(b) => Value::Bool(b),
            Found::Number(text) => Value::Number(number(text).expect("a valid number decodes")),
            Found::Str {
                raw,
                escaped: false,
            } => Value::String(std::str::from_utf8(raw).unwrap().to_owned()),
            Found::Str { raw, escaped: true } => Value::String(scan::unescape(raw).unwrap()),
            Found::Compound => Value::Array(Vec::new()),
        }
    }

    /// Checks the scanner against the oracle on one document and path.
    fn agrees(doc: &[u8], path: &[&str]) {
        let mine = scan::find(doc, path).map(|f| f.map(decoded));
        let theirs = oracle(doc, path).map(|f| {
            f.map(|v| match v {
                Value::Array(_) | Value::Object(_) => Value::Array(Vec::new()),
                v => v,
            })
        });
        let mine = mine.map_err(|_| ());
        assert_eq!(
            mine,
            theirs,
            "document {:?} path {path:?}",
            String::from_utf8_lossy(doc)
        );
        // Same number representation too (u64 / i64 / f64), not only equal values.
        if let (Ok(Some(Value::Number(a))), Ok(Some(Value::Number(b)))) = (&mine, &theirs) {
            assert_eq!(
                (a.is_u64(), a.is_i64(), a.is_f64()),
                (b.is_u64(), b.is_i64(), b.is_f64()),
                "{a} vs {b}"
            );
        }
    }

    const PATHS: [&[&str]; 7] = [
        &["temp"],
        &["a", "b"],
        &["a"],
        &["b", "temp"],
        &["\u{e9}"],
        &["t\"x"],
        &[],
    ];

    #[test]
    fn scanner_agrees_with_serde_json_on_hand_written_documents() {
        let docs: &[&str] = &[
            r#"{"temp": 21}"#,
            r#"  {"temp":21.5}  "#,
            "\t{\r\n\"temp\"\n:\t-3 }\n",
            r#"{"temp": 21,}"#,
            r#"{"temp": 21 "x": 1}"#,
            r#"{"temp" 21}"#,
            r#"{temp: 21}"#,
            r#"{"temp": 01}"#,
            r#"{"temp": -0}"#,
            r#"{"temp": -0.0}"#,
            r#"{"temp": 0.5e1}"#,
            r#"{"temp": 1e5}"#,
            r#"{"temp": 1E+5}"#,
            r#"{"temp": 1e-5}"#,
            r#"{"temp": 1.}"#,
            r#"{"temp": .5}"#,
            r#"{"temp": 1.e5}"#,
            r#"{"temp": 1e}"#,
            r#"{"temp": 1e+}"#,
            r#"{"temp": -}"#,
            r#"{"temp": +1}"#,
            r#"{"temp": 1e308}"#,
            r#"{"temp": 1.7976931348623157e308}"#,
            r#"{"temp": 1.8e308}"#,
            r#"{"temp": 1e309}"#,
            r#"{"temp": 0.000001e310}"#,
            r#"{"temp": 1e-400}"#,
            r#"{"temp": 0e999999999999}"#,
            r#"{"temp": 1e999999999999}"#,
            r#"{"temp": 9223372036854775807}"#,
            r#"{"temp": 9223372036854775808}"#,
            r#"{"temp": -9223372036854775808}"#,
            r#"{"temp": -9223372036854775809}"#,
            r#"{"temp": 18446744073709551615}"#,
            r#"{"temp": 18446744073709551616}"#,
            r#"{"temp": 1234567890123456789.123}"#,
            r#"{"temp": 0.1234567890123456789012345}"#,
            r#"{"temp": 4.9e-324}"#,
            r#"{"temp": 21, "temp": "hot"}"#,
            r#"{"a": {"b": 1}, "a": {"c": 2}}"#,
            r#"{"a": {"b": 1}, "a": 2}"#,
            r#"{"a": 2, "a": {"b": 1}}"#,
            r#"{"a": {"b": [1, {"b": 2}]}}"#,
            r#"{"a": [], "b": {}, "temp": [1, 2]}"#,
            r#"{"a": {}}"#,
            r#"{}"#,
            r#"[]"#,
            r#"[21]"#,
            r#""temp""#,
            r#"21"#,
            r#"null"#,
            r#"nul"#,
            r#"tru"#,
            r#"{"temp": true}"#,
            r#"{"temp": false}"#,
            r#"{"temp": null}"#,
            r#"{"temp": nulll}"#,
            r#"{"t\u0065mp": 5}"#,
            r#"{"t\"x": 5}"#,
            r#"{"\u00e9": 5}"#,
            "{\"\u{e9}\": 5}",
            r#"{"temp": "a\nb"}"#,
            r#"{"temp": "\ud83d\ude00"}"#,
            r#"{"temp": "\ud83d"}"#,
            r#"{"temp": "\ude00"}"#,
            r#"{"temp": "\ud83d\u0041"}"#,
            r#"{"temp": "\ud83dx"}"#,
            r#"{"temp": "\x"}"#,
            r#"{"temp": "\u12"}"#,
            r#"{"temp": "\u12G4"}"#,
            r#"{"temp": "\/\b\f\r\t\\\""}"#,
            "{\"temp\": \"tab\there\"}",
            "{\"temp\": \"nul\u{0}\"}",
            "{\"temp\": \"del\u{7f}\"}",
            r#"{"pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "temp": 3}"#,
            r#"{"pad": "xxxxxxxxxxxxxxx\"xxxxxxxx\\xxxxxxxxx", "temp": 3}"#,
            r#"{"temp": 21} x"#,
            r#"{"temp": 21}}"#,
            r#"{"temp": 21"#,
            r#"{"temp": "21"#,
            r#"{"temp": [1, 2,]}"#,
            r#"{"temp": [1 2]}"#,
            r#"{"temp": [,]}"#,
            r#"{,}"#,
            r#"{"a":1,,"temp":2}"#,
            "",
            "   ",
        ];
        for doc in docs {
            for path in PATHS {
                agrees(doc.as_bytes(), path);
            }
        }
        // Bytes that are not UTF-8, inside and outside strings.
        for doc in [
            &b"{\"temp\": \"\xff\"}"[..],
            b"{\"temp\": \"\xc3\"}",
            b"{\"x\": \"\xed\xa0\x80\", \"temp\": 1}",
            b"{\"temp\": 1}\xff",
            b"{\"temp\": \xc3\xa9}",
            b"{\"xxxxxxxxxxxxxxxxxxxx\xc3\xa9xxxxxx\": 1, \"temp\": 1}",
        ] {
            for path in PATHS {
                agrees(doc, path);
            }
        }
    }

    #[test]
    fn nesting_limit_is_serde_jsons() {
        for depth in [1, 100, 125, 126, 127, 128, 129, 300] {
            for (open, close) in [("[", "]"), ("{\"a\":", "}"), ("{\"b\":[", "]}")] {
                let inner = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                for doc in [
                    inner.clone(),
                    format!("{{\"temp\": 3, \"x\": {inner}}}"),
                    format!("{{\"temp\": {inner}}}"),
                    format!("{{\"a\": {{\"b\": {inner}}}}}"),
                ] {
                    for path in PATHS {
                        agrees(doc.as_bytes(), path);
                    }
                }
            }
        }
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }
        fn ws(&mut self, out: &mut String) {
            if self.below(4) == 0 {
                out.push_str(self.pick(&[" ", "\n", "\t", "\r\n  ", "  "]));
            }
        }

        fn number(&mut self, out: &mut String) {
            const NASTY: [&str; 16] = [
                "0",
                "-0",
                "-0.0",
                "1e5",
                "2E-3",
                "1e+2",
                "9223372036854775808",
                "-9223372036854775809",
                "18446744073709551616",
                "1.7976931348623157e308",
                "1e309",
                "4.9e-324",
                "12345678901234567890.5",
                "0.12345678901234567890123",
                "20",
                "20.0",
            ];
            if self.below(3) == 0 {
                out.push_str(self.pick(&NASTY));
                return;
            }
            if self.below(2) == 0 {
                out.push('-');
            }
            let int = self.next() % [10, 100, 100_000, u64::MAX][self.below(4)];
            out.push_str(&int.to_string());
            if self.below(2) == 0 {
                out.push('.');
                for _ in 0..1 + self.below(25) {
                    out.push((b'0' + self.below(10) as u8) as char);
                }
            }
            if self.below(5) == 0 {
                out.push_str(self.pick(&["e", "E", "e-", "e+", "E-"]));
                out.push_str(&self.below(400).to_string());
            }
        }

        fn string(&mut self, out: &mut String) {
            const PIECES: [&str; 14] = [
                "x",
                "temp",
                "xxxxxxxxxxxxxxxxxxxxxxx",
                "\\n",
                "\\\"",
                "\\\\",
                "\\/",
                "\\u00e9",
                "\\u0041",
                "\\ud83d\\ude00",
                "\u{e9}",
                "\u{1f600}",
                "a b",
                "\\t",
            ];
            out.push('"');
            for _ in 0..self.below(6) {
                out.push_str(self.pick(&PIECES));
            }
            out.push('"');
        }

        fn value(&mut self, out: &mut String, depth: usize) {
            self.ws(out);
            let kind = if depth > 4 {
                self.below(5)
            } else {
                self.below(7)
            };
            match kind {
                0 | 1 => self.number(out),
                2 => self.string(out),
                3 => out.push_str(self.pick(&["true", "false", "null"])),
                4 => self.string(out),
                5 => {
                    out.push('[');
                    for i in 0..self.below(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        self.value(out, depth + 1);
                    }
                    self.ws(out);
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    for i in 0..self.below(5) {
                        if i > 0 {
                            out.push(',');
                        }
                        self.ws(out);
                        let key = self.pick(&[
                            "\"temp\"",
                            "\"a\"",
                            "\"b\"",
                            "\"t\\u0065mp\"",
                            "\"\u{e9}\"",
                            "\"\\u00e9\"",
                            "\"t\\\"x\"",
                            "\"pad\"",
                            "\"\"",
                        ]);
                        out.push_str(key);
                        self.ws(out);
                        out.push(':');
                        self.value(out, depth + 1);
                    }
                    self.ws(out);
                    out.push('}');
                }
            }
            self.ws(out);
        }

        /// A document: mostly objects, sometimes broken by a few random edits.
        fn document(&mut self) -> Vec<u8> {
            let mut text = String::new();
            if self.below(5) == 0 {
                self.value(&mut text, 0);
            } else {
                text.push('{');
                let mut map = String::new();
                self.value(&mut map, 1);
                text.push_str("\"a\":");
                text.push_str(&map);
                text.push_str(",\"temp\":");
                self.value(&mut text, 1);
                text.push('}');
            }
            let mut doc = text.into_bytes();
            if self.below(2) == 0 {
                const BYTES: [u8; 20] = [
                    b',', b'}', b']', b'{', b'[', b'"', b'\\', b'0', b'.', b'e', b'-', b' ', b':',
                    0, 0x1f, 0xff, 0xc3, 0xa9, b'u', b'd',
                ];
                for _ in 0..1 + self.below(3) {
                    let at = self.below(doc.len() + 1);
                    match self.below(4) {
                        0 if at < doc.len() => {
                            doc.remove(at);
                        }
                        1 if at < doc.len() => doc[at] = self.pick(&BYTES),
                        2 => doc.truncate(at),
                        _ => doc.insert(at, self.pick(&BYTES)),
                    }
                }
            }
            doc
        }
    }

    #[test]
    fn scanner_agrees_with_serde_json_on_generated_documents() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (mut valid, mut found) = (0, 0);
        for _ in 0..100_000 {
            let doc = g.document();
            for path in PATHS {
                agrees(&doc, path);
            }
            if let Ok(v) = oracle(&doc, &["temp"]) {
                valid += 1;
                found += v.is_some() as usize;
            }
        }
        // The generator makes enough of each kind for the comparison to mean something.
        assert!(valid > 30_000 && valid < 90_000, "{valid} valid");
        assert!(found > 20_000, "{found} found");
    }

    /// The filter's verdict as it was defined on serde_json's `Value`s.
    fn reference_keeps(c: &Condition, doc: &[u8]) -> bool {
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
        let path: Vec<&str> = c.path.iter().map(String::as_str).collect();
        let Ok(Some(field)) = oracle(doc, &path) else {
            return false;
        };
        let equal = match (&field, &c.value) {
            (Value::Number(_), Value::Number(_)) => {
                order(&field, &c.value) == Some(Ordering::Equal)
            }
            _ => field == c.value,
        };
        match c.op {
            Op::Eq => equal,
            Op::Ne => !equal,
            op => order(&field, &c.value).is_some_and(|o| match op {
                Op::Gt => o == Ordering::Greater,
                Op::Ge => o != Ordering::Less,
                Op::Lt => o == Ordering::Less,
                Op::Le => o != Ordering::Greater,
                Op::Eq | Op::Ne => unreachable!(),
            }),
        }
    }

    #[test]
    fn verdicts_agree_with_the_value_based_reference() {
        let conditions: Vec<Condition> = [
            "temp > 20",
            "temp >= 20",
            "temp < 0",
            "temp <= -0",
            "temp == 20",
            "temp != 20",
            "temp == 9223372036854775808",
            "temp > 1e300",
            "temp < 0.5",
            r#"temp == "temp""#,
            r#"temp > "x""#,
            r#"temp == "é""#,
            "temp == true",
            "temp != null",
            "a.b > 0",
            "a.temp == 20",
        ]
        .iter()
        .map(|c| Condition::parse(c).unwrap())
        .collect();
        let mut g = Gen(42);
        for _ in 0..30_000 {
            let doc = g.document();
            for c in &conditions {
                assert_eq!(
                    c.matches(Some(&doc)),
                    reference_keeps(c, &doc),
                    "{c:?} on {:?}",
                    String::from_utf8_lossy(&doc)
                );
            }
        }
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
