//! Human units in the config file: durations (`10s`, `5m`, `1h`, `500ms`, or plain seconds) and
//! sizes (`16KiB`, `1MiB`, or plain bytes). Both parse and print, so the effective configuration
//! printed by `config check` reads back unchanged.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serializer};

/// A duration as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

/// A byte size as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

/// Parses `500ms`, `10s`, `5m`, `1h`, `1d` (and combinations like `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration (use e.g. 500ms, 10s, 5m, 1h, 1d)"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (use ms, s, m, h or d)"
                ))
            }
        };
        rest = &rest[unit_len..];
        let millis = number
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("`{text}`: duration too large"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| format!("`{text}`: duration too large"))?;
    }
    Ok(total)
}

/// Prints a duration in the largest unit that represents it exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= size && millis % size == 0 {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// Parses `16KiB`, `1MiB`, `512`, `10MB` (decimal units are accepted too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(format!(
            "`{text}` is not a size (use e.g. 16KiB, 1MiB or a number of bytes)"
        ));
    }
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("`{text}`: number too large"))?;
    let factor: u64 = match text[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}`: size too large"))
}

pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 10s, 5m, 1h or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Self::Value, E> {
                Ok(ConfigDuration(Duration::from_secs(secs)))
            }
            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                u64::try_from(secs)
                    .map(|s| ConfigDuration(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ConfigSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 16KiB, 1MiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<Self::Value, E> {
                Ok(ConfigSize(bytes))
            }
            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<Self::Value, E> {
                u64::try_from(bytes)
                    .map(ConfigSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_size(text).map(ConfigSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// `#[serde(serialize_with)]` helper for durations in [`super::Settings`].
pub fn serialize_duration<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*duration))
}

/// `#[serde(serialize_with)]` helper for sizes in [`super::Settings`].
pub fn serialize_size<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_size(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("86400"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        for text in ["1d", "1h", "90s", "250ms", "5m"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn sizes_parse_and_print_back() {
        assert_eq!(parse_size("16KiB"), Ok(16384));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("12 bananas").is_err());
        assert_eq!(format_size(16384), "16KiB");
        assert_eq!(format_size(1000), "1000");
    }
}
