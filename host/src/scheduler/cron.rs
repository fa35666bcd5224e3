//! 5-field cron expressions evaluated in an IANA time zone.
//!
//! Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of
//! week (0-7 or sun-sat; 0 and 7 are Sunday). Each field takes `*`, numbers, ranges `a-b`,
//! lists `a,b` and steps `*/n`, `a-b/n`, `a/n`. `@hourly`, `@daily` (`@midnight`),
//! `@weekly`, `@monthly`, `@yearly` (`@annually`) are shorthands. As in Vixie cron, when
//! both day of month and day of week are restricted a day matching either one fires.
//!
//! Daylight saving time, the rule (documented in README.md):
//! - A local time that does not exist (spring forward, e.g. 02:30 in a gap from 02:00 to
//!   03:00) fires once, at the first minute after the gap (03:00 local). Several times in
//!   one gap collapse into that one run.
//! - A local time that occurs twice (fall back) fires once, at its first occurrence, unless
//!   the hour field is `*`: a schedule that runs every hour also runs in the repeated hour.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// How far ahead to look for the next run before calling an expression one that never fires
/// (e.g. `0 0 30 2 *`). 29 February on a given weekday recurs within 28 years.
const HORIZON_DAYS: i64 = 366 * 29;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron expression '{expr}': {problem}")]
pub struct CronError {
    pub expr: String,
    pub problem: Problem,
}

/// What is wrong with an expression, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("has {0} fields; expected 5: minute hour day-of-month month day-of-week")]
    FieldCount(usize),
    #[error("unknown shorthand; use @hourly, @daily, @weekly, @monthly or @yearly")]
    Shorthand,
    #[error("{field} field: '{text}' is not a number")]
    NotANumber { field: &'static str, text: String },
    #[error("{field} field: {value} is out of range {min}-{max}")]
    Range {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("{field} field: bad step '{text}'")]
    Step { field: &'static str, text: String },
    #[error("{field} field: range {range} runs backwards")]
    Backwards { field: &'static str, range: String },
    #[error("never fires (no such date)")]
    NeverFires,
    /// The fields, as explicit lists, refused by the cron crate (not expected).
    #[error("{0}")]
    Schedule(String),
}

/// An IANA zone name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone '{0}': use an IANA name such as UTC, Europe/Berlin or America/New_York")]
pub struct UnknownZone(pub String);

/// A parsed expression with its time zone. The fields are checked here (for errors that
/// name the field); the `cron` crate, given them as explicit lists, iterates the matching
/// local times, and [`Cron::instants`] maps each to UTC by the DST rule above.
#[derive(Clone)]
pub struct Cron {
    expr: String,
    tz: Tz,
    /// One schedule, or two when day of month and day of week are both restricted (either
    /// matches, as in Vixie cron; the crate would require both).
    schedules: Vec<::cron::Schedule>,
    every_hour: bool,
    fields: Fields,
}

/// The parsed fields as bit masks, for [`Cron::describe`].
#[derive(Clone)]
struct Fields {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Sunday is 0 (7 folded into it).
    weekdays: u64,
    dom_star: bool,
    dow_star: bool,
}

impl PartialEq for Cron {
    fn eq(&self, other: &Cron) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Eq for Cron {}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({} {})", self.expr, self.tz)
    }
}

/// Parses an IANA zone name, with a clear error.
pub fn parse_tz(name: &str) -> Result<Tz, UnknownZone> {
    name.parse::<Tz>()
        .map_err(|_| UnknownZone(name.to_string()))
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Field {
    fn value(&self, s: &str) -> Result<u32, Problem> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            // Month names start at 1 (the field's minimum), weekday names at 0.
            return Ok(i as u32 + self.min);
        }
        let v: u32 = s.parse().map_err(|_| Problem::NotANumber {
            field: self.name,
            text: s.to_string(),
        })?;
        if v < self.min || v > self.max {
            return Err(Problem::Range {
                field: self.name,
                value: v,
                min: self.min,
                max: self.max,
            });
        }
        Ok(v)
    }

    /// The set of values as a bit mask, and whether the field was `*`.
    fn parse(&self, text: &str) -> Result<(u64, bool), Problem> {
        let mut mask = 0u64;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 =
                        s.parse()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| Problem::Step {
                                field: self.name,
                                text: s.to_string(),
                            })?;
                    (r, step)
                }
                None => (part, 1),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(Problem::Backwards {
                        field: self.name,
                        range: range.to_string(),
                    });
                }
                (a, b)
            } else if part.contains('/') {
                (self.value(range)?, self.max)
            } else {
                let v = self.value(range)?;
                (v, v)
            };
            let mut v = lo;
            while v <= hi {
                mask |= 1 << v;
                v += step;
            }
        }
        Ok((mask, text == "*"))
    }
}

impl Cron {
    pub fn parse(expr: &str, tz: Tz) -> Result<Cron, CronError> {
        let err = |problem: Problem| CronError {
            expr: expr.to_string(),
            problem,
        };
        let text = expr.trim();
        let expanded = match text {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            t if t.starts_with('@') => return Err(err(Problem::Shorthand)),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(Problem::FieldCount(fields.len())));
        }
        let (minutes, _) = MINUTE.parse(fields[0]).map_err(err)?;
        let (hours, every_hour) = HOUR.parse(fields[1]).map_err(err)?;
        let (days, dom_star) = DOM.parse(fields[2]).map_err(err)?;
        let (months, _) = MONTH.parse(fields[3]).map_err(err)?;
        let (mut weekdays, dow_star) = DOW.parse(fields[4]).map_err(err)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        // The crate's day of week counts 1-7 from Sunday.
        let crate_weekdays = weekdays << 1;
        let schedule = |dom: Option<u64>, dow: Option<u64>| {
            let text = format!(
                "0 {} {} {} {} {}",
                list(minutes),
                list(hours),
                dom.map_or("*".into(), list),
                list(months),
                dow.map_or("*".into(), list),
            );
            ::cron::Schedule::from_str(&text)
                .map_err(|e| err(Problem::Schedule(format!("{e} (as '{text}')"))))
        };
        let schedules = match (dom_star, dow_star) {
            (false, false) => vec![
                schedule(Some(days), None)?,
                schedule(None, Some(crate_weekdays))?,
            ],
            (true, false) => vec![schedule(None, Some(crate_weekdays))?],
            (false, true) => vec![schedule(Some(days), None)?],
            (true, true) => vec![schedule(None, None)?],
        };
        let cron = Cron {
            expr: text.to_string(),
            tz,
            schedules,
            every_hour,
            fields: Fields {
                minutes,
                hours,
                days,
                months,
                weekdays,
                dom_star,
                dow_star,
            },
        };
        let epoch = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        if cron.next_after(epoch).is_none() {
            return Err(err(Problem::NeverFires));
        }
        Ok(cron)
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The instants a matching local time maps to, by the DST rule in the module docs.
    fn instants(&self, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) => {
                if self.every_hour {
                    vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
                } else {
                    vec![first.with_timezone(&Utc)]
                }
            }
            LocalResult::None => {
                // In a gap: the first minute that exists after it. Gaps are at most a few hours.
                let mut t = local;
                for _ in 0..(24 * 60) {
                    t += Duration::minutes(1);
                    if let Some(x) = self.tz.from_local_datetime(&t).earliest() {
                        return vec![x.with_timezone(&Utc)];
                    }
                }
                Vec::new()
            }
        }
    }

    /// The first run strictly after `after`, or None if there is none within the horizon.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Local times map to instants in order (a gap maps to its end, a repeated time to its
        // occurrences in order), so the first local time with an instant past `after` wins.
        // DST moves a local time by at most a few hours: earlier ones cannot qualify. The
        // crate iterates local (naive) times, written as UTC.
        let floor = after.with_timezone(&self.tz).naive_local() - Duration::hours(3);
        let horizon = floor + Duration::days(HORIZON_DAYS);
        let start = Utc.from_utc_datetime(&floor) - Duration::seconds(1);
        self.schedules
            .iter()
            .filter_map(|s| {
                s.after(&start)
                    .map(|local| local.naive_utc())
                    .take_while(|local| *local <= horizon)
                    .find_map(|local| self.instants(local).into_iter().find(|t| *t > after))
            })
            .min()
    }
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

impl Cron {
    /// The expression in words, e.g. "At 02:30 every day (Europe/Berlin)".
    pub fn describe(&self) -> String {
        let f = &self.fields;
        let days = match (f.dom_star, f.dow_star) {
            (true, true) => "every day".to_string(),
            (false, true) => days_of_month(f.days),
            (true, false) => weekdays(f.weekdays),
            // Either matches, as in Vixie cron.
            (false, false) => format!("{} or {}", days_of_month(f.days), weekdays(f.weekdays)),
        };
        let months = bits(f.months, 1, 12);
        let months = if months.len() == 12 {
            String::new()
        } else {
            format!(", in {}", words(&months, |m| MONTHS[m as usize - 1].into()))
        };
        let time = times(&bits(f.minutes, 0, 59), &bits(f.hours, 0, 23));
        let mut first = time.chars();
        let time = first
            .next()
            .map(|c| c.to_uppercase().chain(first).collect::<String>())
            .unwrap_or_default();
        format!("{time} {days}{months} ({})", self.tz)
    }
}

fn bits(mask: u64, lo: u32, hi: u32) -> Vec<u32> {
    (lo..=hi).filter(|v| mask & (1 << v) != 0).collect()
}

/// "a, b and c", runs of three or more as "x to y".
fn words(values: &[u32], name: impl Fn(u32) -> String) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{} to {}", name(values[i]), name(values[j])));
            i = j + 1;
        } else {
            parts.push(name(values[i]));
            i += 1;
        }
    }
    match parts.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// `k` when the values are exactly `lo`, `lo + k`, ... up to `hi` (a `*/k` field).
fn step_of(values: &[u32], lo: u32, hi: u32) -> Option<u32> {
    let k = values.get(1)?.checked_sub(*values.first()?)?;
    let every: Vec<u32> = (lo..=hi).step_by(k.max(1) as usize).collect();
    (values[0] == lo && every == values).then_some(k)
}

fn times(minutes: &[u32], hours: &[u32]) -> String {
    let during = if hours.len() == 24 {
        String::new()
    } else if let Some(k) = step_of(hours, 0, 23) {
        format!(" of every {k} hours")
    } else {
        let s = if hours.len() > 1 { "s" } else { "" };
        format!(" during hour{s} {}", words(hours, |h| format!("{h:02}")))
    };
    match minutes {
        [m] if hours.len() == 24 => format!("at minute {m} of every hour"),
        [m] if hours.len() <= 6 => {
            let at: Vec<u32> = hours.to_vec();
            let list = words(&at, |h| format!("{h:02}:{m:02}"));
            // A run of hours reads as a range of times: say each instead.
            if list.contains(" to ") {
                format!("at minute {m}{during}")
            } else {
                format!("at {list}")
            }
        }
        [m] => format!("at minute {m}{during}"),
        all if all.len() == 60 => format!("every minute{during}"),
        some => match step_of(some, 0, 59) {
            Some(k) => format!("every {k} minutes{during}"),
            None => format!(
                "at minutes {}{}",
                words(some, |m| m.to_string()),
                if during.is_empty() {
                    " of every hour".to_string()
                } else {
                    during
                }
            ),
        },
    }
}

fn days_of_month(mask: u64) -> String {
    let days = bits(mask, 1, 31);
    let s = if days.len() > 1 { "s" } else { "" };
    format!("on day{s} {} of the month", words(&days, |d| d.to_string()))
}

fn weekdays(mask: u64) -> String {
    format!(
        "on {}",
        words(&bits(mask, 0, 6), |w| WEEKDAYS[w as usize].into())
    )
}

/// A bit mask as the crate's explicit list: `0,15,30,45`.
fn list(mask: u64) -> String {
    (0..64)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn expressions_in_words() {
        let say = |e: &str, tz: &str| {
            super::Cron::parse(e, super::parse_tz(tz).unwrap())
                .unwrap()
                .describe()
        };
        assert_eq!(say("30 2 * * *", "UTC"), "At 02:30 every day (UTC)");
        assert_eq!(
            say("0 */6 * * *", "Europe/Berlin"),
            "At 00:00, 06:00, 12:00 and 18:00 every day (Europe/Berlin)"
        );
        assert_eq!(
            say("*/15 9-17 * * 1-5", "UTC"),
            "Every 15 minutes during hours 09 to 17 on Monday to Friday (UTC)"
        );
        assert_eq!(
            say("@hourly", "UTC"),
            "At minute 0 of every hour every day (UTC)"
        );
        assert_eq!(say("@weekly", "UTC"), "At 00:00 on Sunday (UTC)");
        assert_eq!(
            say("0 3 1,15 * 7", "UTC"),
            "At 03:00 on days 1 and 15 of the month or on Sunday (UTC)"
        );
        assert_eq!(
            say("5 4 * jan,jul *", "UTC"),
            "At 04:05 every day, in January and July (UTC)"
        );
        assert_eq!(
            say("0,20,45 * * * *", "UTC"),
            "At minutes 0, 20 and 45 of every hour every day (UTC)"
        );
        assert_eq!(say("* * * * *", "UTC"), "Every minute every day (UTC)");
        assert_eq!(
            say("0 */2 * * *", "UTC"),
            "At minute 0 of every 2 hours every day (UTC)"
        );
    }

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn cron(expr: &str, tz: &str) -> Cron {
        Cron::parse(expr, parse_tz(tz).expect("zone")).expect("expression")
    }

    /// The runs in (from, to], in UTC.
    fn runs(c: &Cron, from: &str, to: &str) -> Vec<String> {
        let (mut t, end) = (utc(from), utc(to));
        let mut out = Vec::new();
        while let Some(n) = c.next_after(t) {
            if n > end {
                break;
            }
            out.push(n.to_rfc3339());
            t = n;
        }
        out
    }

    #[test]
    fn parses_fields_and_shorthands() {
        let c = cron("*/15 9-17 * * mon-fri", "UTC");
        assert_eq!(
            c.next_after(utc("2026-11-27T17:50:00Z"))
                .map(|t| t.to_rfc3339()),
            Some("2026-11-30T09:00:00+00:00".into()),
            "Friday evening to Monday morning"
        );
        assert_eq!(
            cron("@daily", "UTC").next_after(utc("2026-11-26T10:00:00Z")),
            Some(utc("2026-11-27T00:00:00Z"))
        );
        assert_eq!(
            cron("0 0 * * 7", "UTC").next_after(utc("2026-11-26T10:00:00Z")),
            Some(utc("2026-11-29T00:00:00Z")),
            "7 is Sunday"
        );
        // Vixie: both day fields restricted → either matches.
        assert_eq!(
            cron("0 0 1 * mon", "UTC").next_after(utc("2026-11-26T10:00:00Z")),
            Some(utc("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            cron("0 12 29 2 *", "UTC").next_after(utc("2026-03-01T00:00:00Z")),
            Some(utc("2028-02-29T12:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let tz = parse_tz("UTC").expect("utc");
        for (expr, needle) in [
            ("* * * *", "has 4 fields"),
            ("61 * * * *", "minute field: 61 is out of range 0-59"),
            ("* 24 * * *", "hour field"),
            ("*/0 * * * *", "bad step"),
            ("5-1 * * * *", "runs backwards"),
            ("x * * * *", "'x' is not a number"),
            ("0 0 30 2 *", "never fires"),
            ("@fortnightly", "unknown shorthand"),
        ] {
            let e = Cron::parse(expr, tz).expect_err(expr).to_string();
            assert!(e.contains(needle), "{expr}: {e}");
        }
        assert!(parse_tz("Mars/Olympus")
            .unwrap_err()
            .to_string()
            .contains("unknown time zone"));
    }

    #[test]
    fn spring_forward_runs_once_at_the_end_of_the_gap() {
        // Europe/Berlin: 2026-03-29 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let c = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            runs(&c, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z"),
            vec![
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // 03:00 CEST: the gap's end, once
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
            ]
        );
        // Every 15 minutes: the four times in the gap collapse into one run at 03:00.
        let q = cron("*/15 * * * *", "Europe/Berlin");
        let r = runs(&q, "2026-03-29T00:40:00Z", "2026-03-29T01:20:00Z");
        assert_eq!(
            r,
            vec![
                "2026-03-29T00:45:00+00:00",
                "2026-03-29T01:00:00+00:00",
                "2026-03-29T01:15:00+00:00"
            ]
        );
        // America/New_York: 2026-03-08 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        let ny = cron("30 2 * * *", "America/New_York");
        assert_eq!(
            runs(&ny, "2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z"),
            vec!["2026-03-08T07:00:00+00:00", "2026-03-09T06:30:00+00:00"]
        );
    }

    #[test]
    fn fall_back_runs_once_unless_every_hour() {
        // Europe/Berlin: 2026-10-25 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let c = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            runs(&c, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            vec!["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
        );
        // Hourly: both 02:30s run (the repeated hour is a real hour).
        let h = cron("30 * * * *", "Europe/Berlin");
        assert_eq!(
            runs(&h, "2026-10-24T23:00:00Z", "2026-10-25T02:00:00Z"),
            vec![
                "2026-10-24T23:30:00+00:00", // 01:30 CEST
                "2026-10-25T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T01:30:00+00:00", // 02:30 CET
            ]
        );
        // America/New_York: 2026-11-01 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let ny = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            runs(&ny, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            vec!["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
        );
    }
}
