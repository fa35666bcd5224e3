//! Durations as written in the config, schedules and requests: `0`, `90s`, `30m`, `24h`,
//! `7d`, `2w`, and combinations such as `1d12h` (humantime's syntax). Parsed once, when
//! read; held as [`Span`] and used as a `std::time::Duration` from then on.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error)]
#[error("'{text}' is not a duration like 90s, 30m, 24h or 7d")]
pub struct DurationError {
    pub text: String,
}

/// A duration that reads and writes as text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Duration);

impl Span {
    pub const ZERO: Span = Span(Duration::ZERO);

    pub fn secs(n: u64) -> Span {
        Span(Duration::from_secs(n))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

/// Parses a duration (see the module).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    // Whole seconds only: sub-second spans mean nothing to a backup schedule.
    match humantime::parse_duration(t) {
        Ok(d) if !t.is_empty() && d.subsec_nanos() == 0 => Ok(d),
        _ => Err(DurationError {
            text: text.to_string(),
        }),
    }
}

impl FromStr for Span {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Span, DurationError> {
        parse(s).map(Span)
    }
}

/// Compact and parseable again: `0`, `90s` as `1m30s`, `36h` as `1d12h`.
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut left = self.0.as_secs();
        if left == 0 {
            return f.write_str("0");
        }
        for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if left >= secs {
                write!(f, "{}{unit}", left / secs)?;
                left %= secs;
            }
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Span {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("a duration: 0, 90s, 30m, 24h, 7d, 2w or 1d12h"))
            .examples(["24h"])
            .into()
    }
}

impl utoipa::ToSchema for Span {}

impl From<Span> for Duration {
    fn from(s: Span) -> Duration {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("90s").unwrap().as_secs(), 90);
        assert_eq!(parse("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse("7d").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(parse("1d12h").unwrap().as_secs(), 36 * 3600);
        assert_eq!(parse("2w").unwrap().as_secs(), 14 * 86_400);
        for bad in ["", "x", "5", "1y2", "-1s", "10ms"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Span::secs(36 * 3600).to_string(), "1d12h");
        assert_eq!(Span::secs(90).to_string(), "1m30s");
        assert_eq!(Span::ZERO.to_string(), "0");
        assert_eq!("1d12h".parse::<Span>().unwrap(), Span::secs(36 * 3600));
    }
}
