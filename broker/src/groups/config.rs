//! A group's own configs (Kafka's group configs, KIP-848): `consumer.session.timeout.ms` and
//! `consumer.heartbeat.interval.ms` set for one group of the consumer protocol over the
//! coordinator's (`groups.consumer_session_timeout`, `groups.consumer_heartbeat_interval`),
//! with IncrementalAlterConfigs or AlterConfigs on a GROUP resource (`kafka-configs
//! --entity-type groups`). No locks, no I/O: the coordinator (`mod.rs`) keeps each group's
//! overrides and saves them.
//!
//! As in Kafka, a group's configs live apart from the group: they may be set before it exists
//! and stay when it empties or is deleted. Its members take a change at their next heartbeat
//! (their session deadline and the interval they are told). The values a group may set lie
//! within the coordinator's bounds (`groups.consumer_min_session_timeout` and the like, Kafka's
//! `group.consumer.min.session.timeout.ms` ...), which always hold the coordinator's own
//! values; and its session timeout must stay above its heartbeat interval.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use super::ConsumerSettings;

/// How long a member of the group may go without a heartbeat.
pub const SESSION_TIMEOUT: &str = "consumer.session.timeout.ms";
/// How often the group's members are told to heartbeat.
pub const HEARTBEAT_INTERVAL: &str = "consumer.heartbeat.interval.ms";
/// Every key a group config may set, in the order they are described.
pub const KEYS: [&str; 2] = [SESSION_TIMEOUT, HEARTBEAT_INTERVAL];

/// The broker config each key overrides (its synonym), with Kafka's default in milliseconds.
pub fn broker_synonym(key: &str) -> Option<(&'static str, i64)> {
    match key {
        SESSION_TIMEOUT => Some(("group.consumer.session.timeout.ms", 45_000)),
        HEARTBEAT_INTERVAL => Some(("group.consumer.heartbeat.interval.ms", 5_000)),
        _ => None,
    }
}

/// A group's overrides: key -> milliseconds, as set.
pub type Overrides = BTreeMap<String, i32>;

/// The values a group's own configs may take (Kafka's `group.consumer.min.*` and `max.*`),
/// inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerBounds {
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    pub min_heartbeat_interval: Duration,
    pub max_heartbeat_interval: Duration,
}

impl Default for ConsumerBounds {
    /// Kafka's defaults.
    fn default() -> Self {
        ConsumerBounds {
            min_session_timeout: Duration::from_secs(45),
            max_session_timeout: Duration::from_secs(60),
            min_heartbeat_interval: Duration::from_secs(5),
            max_heartbeat_interval: Duration::from_secs(15),
        }
    }
}

impl ConsumerBounds {
    /// These bounds, widened to hold the coordinator's own values: a group may always be set
    /// to what the others run with.
    pub fn holding(self, own: ConsumerSettings) -> Self {
        ConsumerBounds {
            min_session_timeout: self.min_session_timeout.min(own.session_timeout),
            max_session_timeout: self.max_session_timeout.max(own.session_timeout),
            min_heartbeat_interval: self.min_heartbeat_interval.min(own.heartbeat_interval),
            max_heartbeat_interval: self.max_heartbeat_interval.max(own.heartbeat_interval),
        }
    }
}

/// Why a change of a group's configs was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupConfigError {
    /// INVALID_CONFIG (40): an unknown key, a value that is no number or out of bounds.
    #[error("{0}")]
    InvalidConfig(String),
    /// INVALID_REQUEST (42): no group named.
    #[error("{0}")]
    InvalidRequest(String),
    /// UNKNOWN_SERVER_ERROR (-1): the change could not be saved.
    #[error("the group's configs could not be saved: {0}")]
    Store(String),
}

/// The settings a group's members run with: its overrides over the coordinator's `own`.
pub fn effective(overrides: &Overrides, own: ConsumerSettings) -> ConsumerSettings {
    let ms = |key: &str| {
        overrides
            .get(key)
            .map(|&v| Duration::from_millis(v.max(1) as u64))
    };
    ConsumerSettings {
        session_timeout: ms(SESSION_TIMEOUT).unwrap_or(own.session_timeout),
        heartbeat_interval: ms(HEARTBEAT_INTERVAL).unwrap_or(own.heartbeat_interval),
    }
}

/// A group's overrides after `changes` (key, `Some(value)` to set, `None` to remove), applied
/// to `current`, or to none when `replace` (AlterConfigs sets the whole list). The result must
/// hold only known keys and values that are whole milliseconds of at least 1, and give
/// settings within `bounds` (already [`ConsumerBounds::holding`] `own`) with the session
/// timeout above the heartbeat interval.
pub fn apply(
    current: &Overrides,
    changes: &[(String, Option<String>)],
    replace: bool,
    own: ConsumerSettings,
    bounds: ConsumerBounds,
) -> Result<Overrides, GroupConfigError> {
    let mut next = if replace {
        Overrides::new()
    } else {
        current.clone()
    };
    for (key, value) in changes {
        let Some(known) = KEYS.iter().find(|k| **k == key.as_str()) else {
            // Removing what is not there changes nothing, as in Kafka.
            if value.is_none() {
                continue;
            }
            return Err(GroupConfigError::InvalidConfig(format!(
                "unknown group config {}: a group takes {}",
                crate::log_budget::client_text(key),
                KEYS.join(" and ")
            )));
        };
        match value {
            None => {
                next.remove(*known);
            }
            Some(text) => {
                let ms = text.trim().parse::<i32>().map_err(|_| {
                    GroupConfigError::InvalidConfig(format!(
                        "{known} must be a whole number of milliseconds, not {}",
                        crate::log_budget::client_text(text)
                    ))
                })?;
                if ms < 1 {
                    return Err(GroupConfigError::InvalidConfig(format!(
                        "{known} must be at least 1, not {ms}"
                    )));
                }
                next.insert(known.to_string(), ms);
            }
        }
    }
    let s = effective(&next, own);
    let ms = |d: Duration| d.as_millis();
    for bound in Bound::ALL {
        let v = bound.value(s);
        let (min, max) = bound.range(bounds);
        for (least, limit) in [(true, min), (false, max)] {
            if (least && v < limit) || (!least && v > limit) {
                return Err(GroupConfigError::InvalidConfig(format!(
                    "{} ({}) is {} {} ({}), the {} a group may set (groups.{} in the broker's \
                     config)",
                    bound.key(),
                    ms(v),
                    if least { "less than" } else { "more than" },
                    bound.kafka_name(least),
                    ms(limit),
                    if least { "least" } else { "most" },
                    bound.runnel_name(least),
                )));
            }
        }
    }
    if s.session_timeout <= s.heartbeat_interval {
        return Err(GroupConfigError::InvalidConfig(format!(
            "{SESSION_TIMEOUT} ({}) must be more than {HEARTBEAT_INTERVAL} ({})",
            ms(s.session_timeout),
            ms(s.heartbeat_interval)
        )));
    }
    Ok(next)
}

/// A group's saved overrides made to fit the coordinator's bounds of now, which may have
/// changed since they were set (a restart with another config; a leader's, copied by a
/// follower): each value out of its bounds is moved to the nearest one, and a heartbeat
/// interval not below the session timeout is dropped, as Kafka evaluates saved group configs.
/// Returns them with what was changed, to be logged.
pub fn evaluate(
    overrides: &Overrides,
    own: ConsumerSettings,
    bounds: ConsumerBounds,
) -> (Overrides, Vec<String>) {
    let mut out = overrides.clone();
    let mut said = Vec::new();
    for bound in Bound::ALL {
        let Some(&v) = overrides.get(bound.key()) else {
            continue;
        };
        let given = Duration::from_millis(v.max(1) as u64);
        let fitted = bound.clamp(given, bounds);
        if fitted != given {
            let ms = i32::try_from(fitted.as_millis()).unwrap_or(i32::MAX);
            said.push(format!("{} {v} -> {ms}", bound.key()));
            out.insert(bound.key().to_string(), ms);
        }
    }
    let s = effective(&out, own);
    if s.session_timeout <= s.heartbeat_interval {
        // The broker's own pair is valid (its config is checked), so dropping the override
        // that breaks it leaves a valid pair: the heartbeat's if the group sets one, else the
        // session timeout's.
        let dropped = if out.contains_key(HEARTBEAT_INTERVAL) {
            HEARTBEAT_INTERVAL
        } else {
            SESSION_TIMEOUT
        };
        out.remove(dropped);
        said.push(format!(
            "{dropped} dropped: the heartbeat interval must stay below the session timeout"
        ));
        let s = effective(&out, own);
        if s.session_timeout <= s.heartbeat_interval {
            out.remove(SESSION_TIMEOUT);
            out.remove(HEARTBEAT_INTERVAL);
            said.push("both dropped".to_string());
        }
    }
    (out, said)
}

/// The two keys, each with its bounds.
#[derive(Clone, Copy)]
enum Bound {
    Session,
    Heartbeat,
}

impl Bound {
    const ALL: [Bound; 2] = [Bound::Session, Bound::Heartbeat];

    fn key(self) -> &'static str {
        match self {
            Bound::Session => SESSION_TIMEOUT,
            Bound::Heartbeat => HEARTBEAT_INTERVAL,
        }
    }

    fn value(self, s: ConsumerSettings) -> Duration {
        match self {
            Bound::Session => s.session_timeout,
            Bound::Heartbeat => s.heartbeat_interval,
        }
    }

    /// The least and the most value allowed.
    fn range(self, b: ConsumerBounds) -> (Duration, Duration) {
        match self {
            Bound::Session => (b.min_session_timeout, b.max_session_timeout),
            Bound::Heartbeat => (b.min_heartbeat_interval, b.max_heartbeat_interval),
        }
    }

    /// `v` moved within the range.
    fn clamp(self, v: Duration, b: ConsumerBounds) -> Duration {
        let (min, max) = self.range(b);
        v.clamp(min, max)
    }

    fn kafka_name(self, least: bool) -> &'static str {
        match (self, least) {
            (Bound::Session, true) => "group.consumer.min.session.timeout.ms",
            (Bound::Session, false) => "group.consumer.max.session.timeout.ms",
            (Bound::Heartbeat, true) => "group.consumer.min.heartbeat.interval.ms",
            (Bound::Heartbeat, false) => "group.consumer.max.heartbeat.interval.ms",
        }
    }

    fn runnel_name(self, least: bool) -> &'static str {
        match (self, least) {
            (Bound::Session, true) => "consumer_min_session_timeout",
            (Bound::Session, false) => "consumer_max_session_timeout",
            (Bound::Heartbeat, true) => "consumer_min_heartbeat_interval",
            (Bound::Heartbeat, false) => "consumer_max_heartbeat_interval",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> ConsumerSettings {
        ConsumerSettings {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
        }
    }

    fn set(key: &str, value: &str) -> (String, Option<String>) {
        (key.to_string(), Some(value.to_string()))
    }

    fn refusal(r: Result<Overrides, GroupConfigError>) -> String {
        match r {
            Err(GroupConfigError::InvalidConfig(why)) => why,
            other => panic!("expected INVALID_CONFIG, got {other:?}"),
        }
    }

    #[test]
    fn values_within_the_bounds_are_set_and_removed() {
        let bounds = ConsumerBounds::default();
        let next = apply(
            &Overrides::new(),
            &[
                set(SESSION_TIMEOUT, "60000"),
                set(HEARTBEAT_INTERVAL, "15000"),
            ],
            false,
            own(),
            bounds,
        )
        .unwrap();
        assert_eq!(
            effective(&next, own()),
            ConsumerSettings {
                session_timeout: Duration::from_secs(60),
                heartbeat_interval: Duration::from_secs(15),
            }
        );
        let after = apply(
            &next,
            &[(HEARTBEAT_INTERVAL.to_string(), None)],
            false,
            own(),
            bounds,
        )
        .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(
            effective(&after, own()).heartbeat_interval,
            own().heartbeat_interval
        );
        // AlterConfigs: the list given is the whole list.
        let replaced = apply(
            &next,
            &[set(HEARTBEAT_INTERVAL, "6000")],
            true,
            own(),
            bounds,
        )
        .unwrap();
        assert_eq!(replaced.keys().collect::<Vec<_>>(), [HEARTBEAT_INTERVAL]);
    }

    #[test]
    fn bad_keys_values_and_bounds_are_refused_with_the_reason() {
        let bounds = ConsumerBounds::default();
        let none = Overrides::new();
        let why = refusal(apply(
            &none,
            &[set("session.timeout.ms", "1")],
            false,
            own(),
            bounds,
        ));
        assert!(
            why.contains("unknown group config session.timeout.ms"),
            "{why}"
        );
        let why = refusal(apply(
            &none,
            &[set(SESSION_TIMEOUT, "soon")],
            false,
            own(),
            bounds,
        ));
        assert!(
            why.contains("whole number of milliseconds, not soon"),
            "{why}"
        );
        let why = refusal(apply(
            &none,
            &[set(SESSION_TIMEOUT, "0")],
            false,
            own(),
            bounds,
        ));
        assert!(why.contains("at least 1"), "{why}");
        let why = refusal(apply(
            &none,
            &[set(SESSION_TIMEOUT, "30000")],
            false,
            own(),
            bounds,
        ));
        assert!(
            why.contains("(30000) is less than group.consumer.min.session.timeout.ms (45000)"),
            "{why}"
        );
        let why = refusal(apply(
            &none,
            &[set(HEARTBEAT_INTERVAL, "20000")],
            false,
            own(),
            bounds,
        ));
        assert!(
            why.contains("(20000) is more than group.consumer.max.heartbeat.interval.ms (15000)"),
            "{why}"
        );
        let narrow = ConsumerBounds {
            max_heartbeat_interval: Duration::from_secs(60),
            ..bounds
        };
        let why = refusal(apply(
            &none,
            &[set(HEARTBEAT_INTERVAL, "45000")],
            false,
            own(),
            narrow,
        ));
        assert!(
            why.contains("must be more than consumer.heartbeat.interval.ms"),
            "{why}"
        );
    }

    #[test]
    fn removing_what_is_not_set_or_not_known_changes_nothing() {
        let next = apply(
            &Overrides::new(),
            &[
                ("share.session.timeout.ms".to_string(), None),
                (SESSION_TIMEOUT.to_string(), None),
            ],
            false,
            own(),
            ConsumerBounds::default(),
        )
        .unwrap();
        assert!(next.is_empty());
    }

    #[test]
    fn saved_values_are_fitted_to_bounds_that_changed_since() {
        let bounds = ConsumerBounds {
            max_session_timeout: Duration::from_secs(50),
            ..ConsumerBounds::default()
        };
        let saved: Overrides = [(SESSION_TIMEOUT.to_string(), 60_000)].into();
        let (fitted, said) = evaluate(&saved, own(), bounds);
        assert_eq!(fitted[SESSION_TIMEOUT], 50_000);
        assert_eq!(said, ["consumer.session.timeout.ms 60000 -> 50000"]);
        // A heartbeat no longer below the session timeout (the broker's fell to 10 s) goes.
        let own = ConsumerSettings {
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
        };
        let saved: Overrides = [(HEARTBEAT_INTERVAL.to_string(), 15_000)].into();
        let (fitted, said) = evaluate(&saved, own, ConsumerBounds::default().holding(own));
        assert!(fitted.is_empty(), "{said:?}");
        assert_eq!(effective(&fitted, own), own);
        // What fits is kept as it is.
        let saved: Overrides = [(SESSION_TIMEOUT.to_string(), 50_000)].into();
        assert_eq!(evaluate(&saved, self::own(), bounds), (saved, Vec::new()));
    }

    #[test]
    fn the_coordinators_own_values_are_always_allowed() {
        let own = ConsumerSettings {
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(500),
        };
        let bounds = ConsumerBounds::default().holding(own);
        assert_eq!(bounds.min_session_timeout, Duration::from_secs(10));
        assert_eq!(bounds.min_heartbeat_interval, Duration::from_millis(500));
        assert_eq!(bounds.max_session_timeout, Duration::from_secs(60));
        let next = apply(
            &Overrides::new(),
            &[
                set(SESSION_TIMEOUT, "10000"),
                set(HEARTBEAT_INTERVAL, "500"),
            ],
            false,
            own,
            bounds,
        )
        .unwrap();
        assert_eq!(effective(&next, own), own);
        // Between the coordinator's value and Kafka's least: allowed too.
        assert!(apply(&next, &[set(SESSION_TIMEOUT, "20000")], false, own, bounds).is_ok());
    }
}
