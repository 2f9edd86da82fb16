//! Deduplicator keyed by device: drops a reading whose value equals the last reading KEPT for
//! the same device, unless the window has passed since that one (record timestamps).
//!
//! Config, a JSON object (every key optional):
//!
//! ```json
//! {"device": "device", "value": "temp", "window_ms": 60000, "max_devices": 100000}
//! ```
//!
//! - `device`: dotted path of the JSON field naming the device; default: the record key.
//! - `value`: dotted path of the JSON field compared; default: the whole record value (bytes).
//! - `window_ms`: an unchanged value is kept again once this many milliseconds of record time
//!   have passed since the last kept reading of that device (a heartbeat). Default 60000.
//! - `max_devices`: devices remembered; when a new device would exceed it, all are forgotten
//!   (the next reading of each is kept). Default 100000.
//!
//! Records without a device (no key, or the field is missing or the value is not JSON), or
//! without the compared field, pass: nothing to compare them with. A reading older than the
//! last kept one (timestamp going backwards) is compared like any other.
//!
//! State is per plugin instance, in memory. When the broker rebuilds an instance (after a trap,
//! a timeout or the memory cap, or on restart) it starts empty: the first reading of each
//! device after that is kept, so a fault may let one duplicate per device through, never drop
//! a changed value. The broker may run several instances of one plugin for concurrent produce
//! requests; each has its own state, so when readings of one device arrive on concurrent
//! requests, a repeated value may be kept by an instance that did not see the first one.

use std::collections::BTreeMap;

use runnel_plugin::{Filter, Record};
use serde_json::Value;

/// The parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub device: Option<Vec<String>>,
    pub value: Option<Vec<String>>,
    pub window_ms: i64,
    pub max_devices: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device: None,
            value: None,
            window_ms: 60_000,
            max_devices: 100_000,
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Self, String> {
        let err = |m: String| format!("dedup config: {m}");
        let mut config = Config::default();
        if text.trim().is_empty() {
            return Ok(config);
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let Value::Object(doc) = doc else {
            return Err(err("expected a JSON object".into()));
        };
        let path = |key: &str, v: &Value| -> Result<Vec<String>, String> {
            match v.as_str() {
                Some(p) if !p.split('.').any(str::is_empty) => {
                    Ok(p.split('.').map(str::to_owned).collect())
                }
                _ => Err(err(format!("{key}: expected a dotted path string"))),
            }
        };
        for (key, v) in &doc {
            match key.as_str() {
                "device" => config.device = Some(path(key, v)?),
                "value" => config.value = Some(path(key, v)?),
                "window_ms" => {
                    config.window_ms = v
                        .as_i64()
                        .filter(|w| *w >= 0)
                        .ok_or_else(|| err("window_ms: expected milliseconds, 0 or more".into()))?
                }
                "max_devices" => {
                    config.max_devices = v
                        .as_u64()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| err("max_devices: expected a positive integer".into()))?
                        as usize
                }
                other => {
                    return Err(err(format!(
                        "unknown key {other:?}; allowed: device, value, window_ms, max_devices"
                    )));
                }
            }
        }
        Ok(config)
    }
}

/// The last kept reading of a device.
struct Last {
    value: Vec<u8>,
    timestamp: i64,
}

/// The plugin: its config and the last kept reading per device.
pub struct Dedup {
    config: Config,
    /// A BTreeMap, not a HashMap: std's RandomState needs a random seed from WASI, which the
    /// broker does not give plugins (creating one would trap).
    last: BTreeMap<Vec<u8>, Last>,
}

fn field<'v>(doc: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(doc, |v, p| v.get(p))
}

impl Dedup {
    /// The (device, compared value) of a record, when it has both.
    fn identify(&self, record: &Record<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
        let raw = record.value();
        let needs_json = self.config.device.is_some() || self.config.value.is_some();
        let doc = match (needs_json, raw) {
            (true, Some(raw)) => Some(serde_json::from_slice::<Value>(raw).ok()?),
            (true, None) => return None,
            (false, _) => None,
        };
        let device = match (&self.config.device, &doc) {
            (Some(path), Some(doc)) => match field(doc, path)? {
                // A string device id by its text, anything else by its JSON.
                Value::String(s) => s.as_bytes().to_vec(),
                v => v.to_string().into_bytes(),
            },
            _ => record.key()?.to_vec(),
        };
        let value = match (&self.config.value, &doc) {
            (Some(path), Some(doc)) => field(doc, path)?.to_string().into_bytes(),
            _ => raw?.to_vec(),
        };
        Some((device, value))
    }
}

impl Filter for Dedup {
    fn init(config: &str) -> Result<Self, String> {
        Ok(Dedup {
            config: Config::parse(config)?,
            last: BTreeMap::new(),
        })
    }

    fn keep(&mut self, record: &Record<'_>) -> bool {
        let Some((device, value)) = self.identify(record) else {
            return true;
        };
        let ts = record.timestamp();
        if let Some(last) = self.last.get(&device) {
            let within = ts.saturating_sub(last.timestamp) < self.config.window_ms;
            if last.value == value && within {
                return false;
            }
        } else if self.last.len() >= self.config.max_devices {
            self.last.clear();
        }
        self.last.insert(
            device,
            Last {
                value,
                timestamp: ts,
            },
        );
        true
    }
}

#[cfg(target_arch = "wasm32")]
runnel_plugin::filter!(Dedup);

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_plugin::frame::Writer;

    /// Runs the filter over (timestamp, key, value) records; the kept indexes.
    fn kept(d: &mut Dedup, records: &[(i64, Option<&str>, &str)]) -> Vec<usize> {
        let mut w = Writer::new("readings", 0);
        for (ts, key, value) in records {
            w.record(*ts, key.map(str::as_bytes), Some(value.as_bytes()), &[]);
        }
        let bitmap = runnel_plugin::run_filter(d, &w.finish()).unwrap();
        (0..records.len())
            .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
            .collect()
    }

    #[test]
    fn by_key_and_whole_value_with_a_window() {
        let mut d = Dedup::init(r#"{"window_ms": 1000}"#).unwrap();
        let got = kept(
            &mut d,
            &[
                (0, Some("a"), "1"),
                (10, Some("a"), "1"),   // repeat: dropped
                (20, Some("b"), "1"),   // other device
                (30, Some("a"), "2"),   // changed
                (40, Some("a"), "1"),   // changed back
                (1039, Some("a"), "1"), // 999 ms after the last kept: dropped
                (1040, Some("a"), "1"), // 1000 ms: kept again (heartbeat)
                (1050, None, "1"),      // no device: passes
                (1060, None, "1"),
            ],
        );
        assert_eq!(got, vec![0, 2, 3, 4, 6, 7, 8]);
        // State carries over to the next batch.
        assert_eq!(
            kept(&mut d, &[(1100, Some("a"), "1"), (1100, Some("b"), "2")]),
            vec![1]
        );
    }

    #[test]
    fn by_json_fields() {
        let mut d = Dedup::init(r#"{"device": "id.serial", "value": "temp"}"#).unwrap();
        let got = kept(
            &mut d,
            &[
                (0, None, r#"{"id":{"serial":"s1"},"temp":20,"seq":1}"#),
                (1, None, r#"{"id":{"serial":"s1"},"temp":20,"seq":2}"#), // same temp: dropped
                (2, None, r#"{"id":{"serial":"s2"},"temp":20}"#),
                (3, None, r#"{"id":{"serial":"s1"},"temp":21}"#),
                (4, None, r#"{"id":{"serial":"s1"}}"#), // no temp: passes
                (5, None, "not json"),                  // passes
                (6, None, r#"{"temp":21}"#),            // no device: passes
            ],
        );
        assert_eq!(got, vec![0, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn forgets_everything_past_max_devices_and_refuses_bad_configs() {
        let mut d = Dedup::init(r#"{"max_devices": 2}"#).unwrap();
        assert_eq!(
            kept(&mut d, &[(0, Some("a"), "1"), (0, Some("b"), "1")]),
            vec![0, 1]
        );
        // A third device clears the memory: a's repeat is kept.
        assert_eq!(
            kept(
                &mut d,
                &[
                    (1, Some("c"), "1"),
                    (2, Some("a"), "1"),
                    (3, Some("c"), "1")
                ]
            ),
            vec![0, 1]
        );
        for bad in [
            "x",
            "[]",
            r#"{"window_ms": -1}"#,
            r#"{"max_devices": 0}"#,
            r#"{"device": ""}"#,
            r#"{"device": 3}"#,
            r#"{"windw_ms": 3}"#,
        ] {
            assert!(Dedup::init(bad).is_err(), "{bad} accepted");
        }
    }
}
