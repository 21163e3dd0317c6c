//! Durations written the way Kubernetes users write them (`15m`, `1h30m`, `90s`).

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Longest duration any stepup field accepts; keeps arithmetic on timestamps far from overflow.
pub const MAX_DURATION: time::Duration = time::Duration::from_secs(366 * 24 * 3600);

/// Pattern the CRD schema enforces, so a bad value is refused by `kubectl apply`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A non-negative duration in Go's `time.ParseDuration` syntax.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(time::Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseDurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected a number followed by a unit (h, m, s, ms, us, ns), e.g. 15m or 1h30m")]
    Syntax(String),
    #[error("duration {0:?} is longer than the maximum of 366 days")]
    TooLong(String),
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(time::Duration::from_secs(secs))
    }

    pub const fn as_std(self) -> time::Duration {
        self.0
    }

    /// The duration as a jiff span-free signed duration, for timestamp arithmetic.
    pub fn as_signed(self) -> jiff::SignedDuration {
        // MAX_DURATION bounds every parsed value, so this never saturates in practice.
        jiff::SignedDuration::try_from(self.0).unwrap_or(jiff::SignedDuration::MAX)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<time::Duration> for Duration {
    fn from(d: time::Duration) -> Self {
        Self(d.min(MAX_DURATION))
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParseDurationError::Empty);
        }
        if s == "0" {
            return Ok(Self::default());
        }
        let syntax = || ParseDurationError::Syntax(s.to_owned());
        let too_long = || ParseDurationError::TooLong(s.to_owned());
        let mut rest = s;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let digits_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(syntax)?;
            let (number, tail) = rest.split_at(digits_end);
            let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_end);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                _ => return Err(syntax()),
            };
            let (whole, fraction) = match number.split_once('.') {
                Some((w, f)) => (w, f),
                None => (number, ""),
            };
            if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
                return Err(syntax());
            }
            // Digits beyond 19 cannot fit a duration of at most a year; refuse instead of overflowing.
            if whole.len() > 19 || fraction.len() > 19 {
                return Err(too_long());
            }
            let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| syntax())? };
            let mut part = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
            if !fraction.is_empty() {
                let scale = 10u128.pow(fraction.len() as u32);
                let frac: u128 = fraction.parse().map_err(|_| syntax())?;
                part += frac * unit_nanos / scale;
            }
            total_nanos = total_nanos.checked_add(part).ok_or_else(too_long)?;
            if total_nanos > MAX_DURATION.as_nanos() {
                return Err(too_long());
            }
            rest = tail;
        }
        let secs = (total_nanos / 1_000_000_000) as u64;
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(time::Duration::new(secs, nanos)))
    }
}

impl fmt::Display for Duration {
    /// Compact Go-style rendering: `15m`, `1h30m`, `90ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0;
        if total.is_zero() {
            return f.write_str("0s");
        }
        if total.subsec_nanos() != 0 && total.as_secs() == 0 {
            let nanos = total.subsec_nanos();
            return match nanos {
                n if n % 1_000_000 == 0 => write!(f, "{}ms", n / 1_000_000),
                n if n % 1_000 == 0 => write!(f, "{}us", n / 1_000),
                n => write!(f, "{n}ns"),
            };
        }
        let secs = total.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        let millis = total.subsec_millis();
        if millis > 0 {
            write!(f, "{s}.{millis:03}s")?;
        } else if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // A CEL rule rather than `pattern`, so that a wrong value is refused with a sentence
        // instead of a regular expression.
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [duration_rule()],
        })
    }
}

/// The CEL rule (and message) every duration field carries.
pub fn duration_rule() -> serde_json::Value {
    serde_json::json!({
        "rule": format!("self.matches('{}')", DURATION_PATTERN.replace('\\', "\\\\")),
        "message": DURATION_MESSAGE,
    })
}

/// What a user reads when a duration field does not parse.
pub const DURATION_MESSAGE: &str =
    "must be a duration such as 15m, 90s or 1h30m (a number and a unit: h, m, s, ms, us, ns)";

#[cfg(test)]
mod schema_tests {
    #[test]
    fn the_rule_escapes_the_pattern_for_cel() {
        let rule = super::duration_rule();
        assert_eq!(rule["rule"], r"self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$')");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("90s", 90_000),
            ("1.5h", 5_400_000),
            ("250ms", 250),
            ("0", 0),
            ("0s", 0),
            ("2h0m0s", 7_200_000),
        ];
        for (input, millis) in cases {
            let d: Duration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(d.as_std().as_millis(), millis, "{input}");
        }
    }

    #[test]
    fn rejects_malformed_durations_without_panicking() {
        for input in ["", "15", "m", "15x", "-5m", "1..5h", ".h", "1e9s", "15 m", "99999999999999999999999h", "10000h"]
        {
            assert!(input.parse::<Duration>().is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn renders_compactly_and_round_trips() {
        for input in ["15m", "1h30m", "90ms", "45s", "24h", "1h0m5s"] {
            let d: Duration = input.parse().unwrap();
            let again: Duration = d.to_string().parse().unwrap();
            assert_eq!(d, again, "{input} -> {d}");
        }
        assert_eq!("1h30m".parse::<Duration>().unwrap().to_string(), "1h30m");
        assert_eq!("90s".parse::<Duration>().unwrap().to_string(), "1m30s");
    }
}
