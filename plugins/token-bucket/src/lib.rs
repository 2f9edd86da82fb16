//! Token-bucket quota policy: one bucket per client id (or principal) and API, refilled at a
//! configured rate in bytes or records per second.
//!
//! Config (the plugin's `config` string), `name = value` pairs separated by commas or new lines;
//! values may be quoted:
//!
//! ```text
//! rate = "1MiB/s", burst = "2MiB", key = "client-id"
//! rate = "500 records/s", key = "principal", mode = "reject"
//! ```
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `rate` | required | `SIZE/s` (bytes: `B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`; decimals allowed) or `N records/s` |
//! | `burst` | one second of `rate` | bucket size, in the unit of `rate` (`2MiB`, `1000 records`) |
//! | `key` | `client-id` | what a bucket belongs to: `client-id` or `principal` |
//! | `mode` | `throttle` | `throttle`: accept and throttle; `reject`: refuse what does not fit |
//! | `max_request` | none | one request (one topic of it) larger than this is rejected |
//! | `max_throttle` | `30s` | the longest throttle answered (`500ms`, `30s`, `2m`) |
//!
//! Semantics (Kafka's): a request takes its bytes (or records) from its bucket, which may go
//! into debt; a request that leaves the bucket in debt is accepted and the client is throttled
//! for the time the refill needs to pay the debt back (`debt / rate`, at most `max_throttle`).
//! So a client that keeps sending gets, over time, `rate` and no more. With `mode = "reject"` a
//! request that does not fit the tokens left is refused instead, and takes nothing. Produce and
//! fetch have separate buckets, so one plugin bound to both limits each to `rate`.
//!
//! Buckets that have refilled completely are forgotten when there are more than
//! [`MAX_IDLE_BUCKETS`] (a full bucket and a new one are the same), so the state stays bounded.

use std::collections::BTreeMap;

use runnel_plugin::quota::{Api, Decision, QuotaPolicy, Request};

/// More buckets than this and the full ones are dropped.
pub const MAX_IDLE_BUCKETS: usize = 10_000;

/// What a rate counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Records,
}

/// What a bucket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    ClientId,
    Principal,
}

/// What happens to a request over the quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Throttle,
    Reject,
}

/// The parsed config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub unit: Unit,
    /// Units per second.
    pub rate: f64,
    /// Bucket size, in units.
    pub burst: f64,
    pub key: Key,
    pub mode: Mode,
    pub max_request: Option<f64>,
    pub max_throttle_ms: u32,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut rate = None;
        let mut burst = None;
        let mut key = Key::ClientId;
        let mut mode = Mode::Throttle;
        let mut max_request = None;
        let mut max_throttle_ms = 30_000;
        for item in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("token-bucket: {item:?} is not `name = value`"))?;
            let name = name.trim();
            let value = unquote(value.trim());
            let bad = |what: &str| format!("token-bucket: {name} = {value:?}: {what}");
            match name {
                "rate" => {
                    let per = value
                        .strip_suffix("/s")
                        .ok_or_else(|| bad("expected SIZE/s or N records/s, e.g. \"1MiB/s\""))?;
                    let (n, unit) = amount(per).map_err(|e| bad(&e))?;
                    if n <= 0.0 {
                        return Err(bad("must be more than 0"));
                    }
                    rate = Some((n, unit));
                }
                "burst" => burst = Some(amount(value).map_err(|e| bad(&e))?),
                "max_request" => max_request = Some(amount(value).map_err(|e| bad(&e))?),
                "key" => {
                    key = match value {
                        "client-id" => Key::ClientId,
                        "principal" => Key::Principal,
                        _ => return Err(bad("allowed: client-id, principal")),
                    }
                }
                "mode" => {
                    mode = match value {
                        "throttle" => Mode::Throttle,
                        "reject" => Mode::Reject,
                        _ => return Err(bad("allowed: throttle, reject")),
                    }
                }
                "max_throttle" => max_throttle_ms = duration_ms(value).map_err(|e| bad(&e))?,
                _ => {
                    return Err(format!(
                        "token-bucket: unknown key {name:?}; allowed: rate, burst, key, mode, \
                         max_request, max_throttle"
                    ));
                }
            }
        }
        let (rate, unit) =
            rate.ok_or("token-bucket: `rate` is required, e.g. rate = \"1MiB/s\"")?;
        let same_unit = |name: &str, v: Option<(f64, Unit)>| match v {
            Some((_, u)) if u != unit => Err(format!(
                "token-bucket: {name} is in {u:?} but rate is in {unit:?}"
            )),
            Some((n, _)) => Ok(Some(n)),
            None => Ok(None),
        };
        let burst = same_unit("burst", burst)?.unwrap_or(rate);
        if burst <= 0.0 {
            return Err("token-bucket: burst must be more than 0".into());
        }
        let max_request = same_unit("max_request", max_request)?;
        Ok(Config {
            unit,
            rate,
            burst,
            key,
            mode,
            max_request,
            max_throttle_ms,
        })
    }
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v)
}

/// `2MiB`, `1.5 KB`, `300` (bytes) or `100 records`.
fn amount(text: &str) -> Result<(f64, Unit), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let (mult, unit) = match suffix.trim() {
        "" | "B" => (1.0, Unit::Bytes),
        "KB" => (1e3, Unit::Bytes),
        "KiB" => (1024.0, Unit::Bytes),
        "MB" => (1e6, Unit::Bytes),
        "MiB" => (1024.0 * 1024.0, Unit::Bytes),
        "GB" => (1e9, Unit::Bytes),
        "GiB" => (1024.0 * 1024.0 * 1024.0, Unit::Bytes),
        "records" | "record" => (1.0, Unit::Records),
        other => {
            return Err(format!(
                "unknown unit {other:?}; allowed: B, KB, KiB, MB, MiB, GB, GiB, records"
            ));
        }
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{number:?} is not a non-negative number"));
    }
    Ok((n * mult, unit))
}

/// `500ms`, `30s`, `2m`.
fn duration_ms(text: &str) -> Result<u32, String> {
    let (number, mult) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err("expected a duration such as 500ms, 30s or 2m".into());
    };
    number
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not a duration"))
}

/// One bucket: tokens left (negative = debt) when it was last touched.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    /// Refills up to `now_ms` (a clock that steps back refills nothing).
    fn refill(&mut self, cfg: &Config, now_ms: i64) {
        if now_ms > self.at_ms {
            let secs = (now_ms - self.at_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + cfg.rate * secs).min(cfg.burst);
            self.at_ms = now_ms;
        }
    }

    fn is_full(&self, cfg: &Config, now_ms: i64) -> bool {
        let mut b = self.clone();
        b.refill(cfg, now_ms);
        b.tokens >= cfg.burst
    }
}

/// The policy: the config and the buckets by (API, key).
pub struct TokenBucket {
    pub config: Config,
    // A BTreeMap: std's HashMap seeds its hasher from WASI randomness, which plugins do not get.
    buckets: BTreeMap<(Api, String), Bucket>,
}

impl TokenBucket {
    pub fn new(config: Config) -> TokenBucket {
        TokenBucket {
            config,
            buckets: BTreeMap::new(),
        }
    }

    /// Buckets alive now (for tests).
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    fn size(&self, request: &Request) -> f64 {
        match self.config.unit {
            Unit::Bytes => request.bytes as f64,
            Unit::Records => request.records as f64,
        }
    }

    fn unit_name(&self) -> &'static str {
        match self.config.unit {
            Unit::Bytes => "bytes",
            Unit::Records => "records",
        }
    }

    fn bucket(&mut self, request: &Request, now_ms: i64) -> &mut Bucket {
        let name = match self.config.key {
            Key::ClientId => &request.client_id,
            Key::Principal => &request.principal,
        };
        let key = (request.api, name.clone());
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_IDLE_BUCKETS {
            let cfg = &self.config;
            self.buckets.retain(|_, b| !b.is_full(cfg, now_ms));
        }
        let burst = self.config.burst;
        self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        })
    }
}

impl QuotaPolicy for TokenBucket {
    fn init(config: &str) -> Result<Self, String> {
        Config::parse(config).map(TokenBucket::new)
    }

    fn decide(&mut self, request: &Request, now_ms: i64) -> Decision {
        let size = self.size(request);
        let unit = self.unit_name();
        if let Some(max) = self.config.max_request
            && size > max
        {
            return Decision::Reject(format!(
                "a request of {size} {unit} is over max_request ({max} {unit})"
            ));
        }
        let cfg = self.config.clone();
        let bucket = self.bucket(request, now_ms);
        bucket.refill(&cfg, now_ms);
        match cfg.mode {
            Mode::Reject if bucket.tokens < size => Decision::Reject(format!(
                "over quota: {size} {unit} asked, {:.0} left of {} {unit}/s",
                bucket.tokens.max(0.0),
                cfg.rate
            )),
            _ => {
                bucket.tokens -= size;
                if bucket.tokens >= 0.0 {
                    Decision::Allow
                } else {
                    let ms = (-bucket.tokens / cfg.rate * 1000.0).ceil();
                    Decision::Throttle((ms as u32).clamp(1, cfg.max_throttle_ms.max(1)))
                }
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
runnel_plugin::quota!(TokenBucket);

#[cfg(test)]
mod tests {
    use super::*;

    fn req(client: &str, bytes: u64) -> Request {
        Request {
            client_id: client.into(),
            principal: "User:ANONYMOUS".into(),
            listener: "kafka".into(),
            api: Api::Produce,
            topic: "t".into(),
            bytes,
            records: 1,
        }
    }

    fn policy(config: &str) -> TokenBucket {
        TokenBucket::init(config).unwrap()
    }

    #[test]
    fn parses_units_defaults_and_quotes() {
        let c = Config::parse(r#"rate = "1MiB/s", burst = "2MiB", key = "principal""#).unwrap();
        assert_eq!((c.rate, c.burst), (1048576.0, 2097152.0));
        assert_eq!(
            (c.unit, c.key, c.mode),
            (Unit::Bytes, Key::Principal, Mode::Throttle)
        );
        assert_eq!((c.max_request, c.max_throttle_ms), (None, 30_000));
        let c = Config::parse("rate = 100 records/s\nmode = 'reject'\nmax_throttle = 2s").unwrap();
        assert_eq!((c.unit, c.rate, c.burst), (Unit::Records, 100.0, 100.0));
        assert_eq!((c.mode, c.max_throttle_ms), (Mode::Reject, 2000));
        let c = Config::parse("rate = 1.5KB/s, max_request = 4KiB").unwrap();
        assert_eq!((c.rate, c.max_request), (1500.0, Some(4096.0)));
    }

    #[test]
    fn config_errors_say_what_is_wrong() {
        let err = |text: &str| Config::parse(text).unwrap_err();
        assert!(err("burst = 1MiB").contains("`rate` is required"));
        assert!(err("rate = 1MiB").contains("expected SIZE/s"));
        assert!(err("rate = 0/s").contains("more than 0"));
        assert!(err("rate = 1 parsec/s").contains("unknown unit"));
        assert!(err("rate = 1MiB/s, burst = 10 records").contains("burst is in Records"));
        assert!(err("rate = 1MiB/s, key = topic").contains("allowed: client-id, principal"));
        assert!(err("rate = 1MiB/s, colour = blue").contains("unknown key \"colour\""));
        assert!(err("rate = 1MiB/s, max_throttle = 5").contains("duration"));
        assert!(err("rate").contains("not `name = value`"));
    }

    /// A request that leaves the bucket in debt is accepted and throttled for debt / rate.
    #[test]
    fn debt_is_paid_back_by_a_throttle() {
        let mut p = policy("rate = 1000/s, burst = 2000");
        assert_eq!(p.decide(&req("a", 1500), 0), Decision::Allow);
        // 500 left; 1000 more is 500 in debt: 0.5s at 1000/s.
        assert_eq!(p.decide(&req("a", 1000), 0), Decision::Throttle(500));
        // After the throttle the debt is paid: 0 tokens; 100ms later 100 tokens.
        assert_eq!(p.decide(&req("a", 100), 600), Decision::Allow);
        // Another client has its own bucket; fetch has its own bucket too.
        assert_eq!(p.decide(&req("b", 2000), 600), Decision::Allow);
        let mut fetch = req("a", 1000);
        fetch.api = Api::Fetch;
        assert_eq!(p.decide(&fetch, 600), Decision::Allow);
        assert_eq!(p.buckets(), 3);
    }

    /// A client that always sends right after its throttle ends gets `rate` on average.
    #[test]
    fn a_steady_sender_converges_to_the_rate() {
        let mut p = policy("rate = 10KiB/s, burst = 20KiB");
        let mut now = 0i64;
        let mut sent = 0u64;
        while now < 60_000 {
            sent += 4096;
            if let Decision::Throttle(ms) = p.decide(&req("a", 4096), now) {
                now += ms as i64;
            }
            now += 1; // the client's own time between requests
        }
        let rate = sent as f64 / (now as f64 / 1000.0);
        let want = 10.0 * 1024.0;
        // Over a minute the burst (and the last request) add about 24KiB / 60s to the rate.
        assert!(rate <= want * 1.06 && rate >= want * 0.95, "{rate} B/s");
    }

    #[test]
    fn reject_mode_and_max_request_refuse_without_taking_tokens() {
        let mut p = policy("rate = 10 records/s, mode = reject");
        let mut r = req("a", 0);
        r.records = 8;
        assert_eq!(p.decide(&r, 0), Decision::Allow);
        let Decision::Reject(reason) = p.decide(&r, 0) else {
            panic!("rejected")
        };
        assert!(
            reason.contains("over quota: 8 records asked, 2 left"),
            "{reason}"
        );
        r.records = 2;
        assert_eq!(p.decide(&r, 0), Decision::Allow);

        let mut p = policy("rate = 1MiB/s, max_request = 1KiB");
        let Decision::Reject(reason) = p.decide(&req("a", 2048), 0) else {
            panic!("rejected")
        };
        assert!(reason.contains("over max_request (1024 bytes)"), "{reason}");
        assert_eq!(p.buckets(), 0);
        assert_eq!(p.decide(&req("a", 1024), 0), Decision::Allow);
    }

    #[test]
    fn throttles_are_capped_and_a_clock_stepping_back_refills_nothing() {
        let mut p = policy("rate = 100/s, burst = 100, max_throttle = 2s");
        assert_eq!(p.decide(&req("a", 10_000), 1_000), Decision::Throttle(2000));
        let mut p = policy("rate = 100/s, burst = 100");
        assert_eq!(p.decide(&req("a", 100), 5_000), Decision::Allow);
        assert_eq!(p.decide(&req("a", 50), 1_000), Decision::Throttle(500));
    }

    #[test]
    fn full_buckets_are_forgotten_when_there_are_many() {
        let mut p = policy("rate = 1000/s");
        for i in 0..MAX_IDLE_BUCKETS {
            p.decide(&req(&format!("c{i}"), 10), 0);
        }
        assert_eq!(p.buckets(), MAX_IDLE_BUCKETS);
        // One second later every bucket is full again: a new client sweeps them.
        p.decide(&req("new", 10), 1000);
        assert_eq!(p.buckets(), 1);
    }
}
