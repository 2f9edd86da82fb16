//! Human units: byte sizes ("64MiB", "100MB", 4096) and durations ("10s", "7d", 250).
//!
//! Sizes are written as an integer followed by an optional unit, with or without a space between
//! them. Binary units are powers of 1024 (`KiB`, `MiB`, `GiB`, `TiB`); SI units are powers of 1000
//! (`KB`, `MB`, `GB`, `TB`); `B` or no unit means bytes. Units are matched without regard to case
//! and always mean bytes, never bits. A TOML integer is a number of bytes.
//!
//! Durations use humantime's grammar ("250ms", "10s", "5m", "2h 30m", "7d", "1.5s"); a TOML
//! integer, or a string of digits only, is a number of milliseconds.
//!
//! Sizes and durations are rendered back in the largest unit that divides them exactly, so a
//! default written out by [`crate::Config::default_toml`] reads the way a person would write it.
//! The `serde` helpers in this module are used through `#[serde(with = ...)]` by the schema.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// One kibibyte (1024 bytes).
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// One tebibyte.
pub const TIB: u64 = 1 << 40;

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kib", KIB),
    ("mib", MIB),
    ("gib", GIB),
    ("tib", TIB),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Parses a byte size such as `"64MiB"`, `"100MB"`, `"4 KiB"` or `"1048588"`.
///
/// Returns `None` for anything else, including fractions, negative numbers and overflow.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = text[..digits_end].parse().ok()?;
    let unit = text[digits_end..].trim_start().to_ascii_lowercase();
    let (_, scale) = SIZE_UNITS.iter().find(|(name, _)| *name == unit)?;
    number.checked_mul(*scale)
}

/// Renders a byte size in the largest binary unit that divides it exactly (`"100MiB"`), or as a
/// plain number of bytes when none does (`"1048588"`).
pub fn format_bytes(bytes: u64) -> String {
    match exact_binary_unit(bytes) {
        Some((n, unit)) => format!("{n}{unit}"),
        None => bytes.to_string(),
    }
}

fn exact_binary_unit(bytes: u64) -> Option<(u64, &'static str)> {
    if bytes == 0 {
        return None;
    }
    [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
        .into_iter()
        .find(|(scale, _)| bytes.is_multiple_of(*scale))
        .map(|(scale, unit)| (bytes / scale, unit))
}

/// Parses a duration such as `"10s"`, `"5m"`, `"7d"`, `"250ms"` or `"1h 30m"`; a string of
/// digits only is a number of milliseconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_millis);
    }
    humantime::parse_duration(text).ok()
}

/// Renders a duration in the largest unit that divides it exactly: `"7d"`, `"30m"`, `"250ms"`,
/// `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: &[(u128, &str)] = &[
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (scale, unit) = UNITS
        .iter()
        .find(|(scale, _)| nanos.is_multiple_of(*scale))
        .expect("every duration is a whole number of nanoseconds");
    format!("{}{unit}", nanos / scale)
}

/// Milliseconds in a duration, saturating at `i64::MAX` (Kafka's unit for time configs).
pub fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A size or duration that may also be "unlimited"/"forever" (or -1).
struct UnitVisitor<T> {
    expecting: &'static str,
    /// The word meaning `None`, when `None` is allowed.
    none_word: Option<&'static str>,
    parse: fn(&str) -> Option<T>,
    from_int: fn(u64) -> T,
    invalid: fn(String) -> String,
}

impl<'de, T> Visitor<'de> for UnitVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match u64::try_from(v) {
            Ok(v) => Ok(Some((self.from_int)(v))),
            Err(_) if v == -1 && self.none_word.is_some() => Ok(None),
            Err(_) => Err(E::custom((self.invalid)(v.to_string()))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some((self.from_int)(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if let Some(word) = self.none_word
            && (v.trim() == word || v.trim() == "-1")
        {
            return Ok(None);
        }
        (self.parse)(v)
            .map(Some)
            .ok_or_else(|| E::custom((self.invalid)(format!("{v:?}"))))
    }
}

fn size_visitor(none_word: Option<&'static str>) -> UnitVisitor<u64> {
    UnitVisitor {
        expecting: if none_word.is_some() {
            "a size such as \"64MiB\", an integer number of bytes, or \"unlimited\""
        } else {
            "a size such as \"64MiB\" or an integer number of bytes"
        },
        none_word,
        parse: parse_bytes,
        from_int: |n| n,
        invalid: |shown| {
            format!(
                "invalid size {shown}: a whole number with an optional unit (B, KiB, MiB, GiB, \
                 TiB, or KB, MB, GB, TB), e.g. \"1536KiB\" for 1.5 MiB"
            )
        },
    }
}

fn duration_visitor(none_word: Option<&'static str>) -> UnitVisitor<Duration> {
    UnitVisitor {
        expecting: if none_word.is_some() {
            "a duration such as \"7d\", an integer number of milliseconds, or \"forever\""
        } else {
            "a duration such as \"10s\" or an integer number of milliseconds"
        },
        none_word,
        parse: parse_duration,
        from_int: Duration::from_millis,
        invalid: |shown| format!("invalid duration {shown}"),
    }
}

/// `u64` byte sizes: serialized as `"64MiB"` when exact, else as an integer.
pub(crate) mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        match exact_binary_unit(*value) {
            Some(_) => s.serialize_str(&format_bytes(*value)),
            None => s.serialize_u64(*value),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(size_visitor(None))
            .map(|v| v.expect("no None without a none word"))
    }
}

/// `Option<u64>` byte sizes where `None` is written `"unlimited"` (or -1).
pub(crate) mod opt_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => bytes::serialize(v, s),
            None => s.serialize_str("unlimited"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(size_visitor(Some("unlimited")))
    }
}

/// `Duration`s: serialized as `"7d"`, `"250ms"`.
pub(crate) mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(duration_visitor(None))
            .map(|v| v.expect("no None without a none word"))
    }
}

/// `Option<Duration>` where `None` is written `"forever"` (or -1).
pub(crate) mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => duration::serialize(v, s),
            None => s.serialize_str("forever"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(duration_visitor(Some("forever")))
    }
}

/// `SocketAddr` with an error message that shows the value and an example.
pub(crate) mod socket_addr {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.trim().parse().map_err(|_| {
            de::Error::custom(format_args!(
                "invalid socket address {text:?}; expected an IP address and port such as \
                 127.0.0.1:9092 or [::1]:9092"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_form() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("512B"), Some(512));
        assert_eq!(parse_bytes("4KiB"), Some(4096));
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
        assert_eq!(parse_bytes("2TiB"), Some(2 << 40));
        assert_eq!(parse_bytes("1KB"), Some(1_000));
        assert_eq!(parse_bytes("100MB"), Some(100_000_000));
        assert_eq!(parse_bytes("3GB"), Some(3_000_000_000));
        assert_eq!(parse_bytes("1TB"), Some(1_000_000_000_000));
        assert_eq!(parse_bytes(" 64 mib "), Some(64 << 20));
        assert_eq!(parse_bytes("10kb"), Some(10_000));
    }

    #[test]
    fn sizes_rejected() {
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "-1",
            "12 bananas",
            "1 2MiB",
            "64Mi",
            "1M",
            "99999999999TiB",
        ] {
            assert_eq!(parse_bytes(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn sizes_render_in_largest_exact_unit() {
        assert_eq!(format_bytes(100 * MIB), "100MiB");
        assert_eq!(format_bytes(GIB), "1GiB");
        assert_eq!(format_bytes(4 * KIB), "4KiB");
        assert_eq!(format_bytes(1536 * KIB), "1536KiB");
        assert_eq!(format_bytes(1_048_588), "1048588");
        assert_eq!(format_bytes(0), "0");
    }

    #[test]
    fn durations_in_every_form() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Some(ms(250)));
        assert_eq!(parse_duration("10s"), Some(ms(10_000)));
        assert_eq!(parse_duration("5m"), Some(ms(300_000)));
        assert_eq!(parse_duration("2h"), Some(ms(7_200_000)));
        assert_eq!(parse_duration("7d"), Some(ms(604_800_000)));
        assert_eq!(parse_duration("1h 30m"), Some(ms(5_400_000)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1_500)));
        assert_eq!(parse_duration("1500"), Some(ms(1_500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "3 parsecs", "-5s", "s", "ms", "1.5", "-1"] {
            assert_eq!(parse_duration(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn durations_render_in_largest_exact_unit() {
        let ms = Duration::from_millis;
        assert_eq!(format_duration(ms(604_800_000)), "7d");
        assert_eq!(format_duration(ms(86_400_000)), "1d");
        assert_eq!(format_duration(ms(1_800_000)), "30m");
        assert_eq!(format_duration(ms(90_000)), "90s");
        assert_eq!(format_duration(ms(250)), "250ms");
        assert_eq!(format_duration(Duration::from_micros(3)), "3us");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for d in [
            ms(1),
            ms(1_234_567),
            Duration::from_nanos(17),
            ms(3_600_000),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
    }
}
