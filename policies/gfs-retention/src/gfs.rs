//! The GFS retention algorithm, with restic's `forget` semantics.
//!
//! Parameters (JSON; every key optional; -1 means unlimited):
//! `{"keep_last": 3, "keep_hourly": 0, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12,
//!   "keep_yearly": 3, "keep_within": "2y5m7d3h"}`. With no parameters those defaults apply.
//!
//! Backups are taken newest first. `keep_last` keeps the newest N. Each calendar rule keeps the
//! newest backup of each period (hour, day, ISO week, month, year, in UTC) that has backups,
//! for the N newest such periods; like restic, a rule with periods to spare also keeps the
//! oldest backup. `keep_within` keeps everything newer than the newest backup minus the
//! duration (so future-dated backups are never removed by it).

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    keep_last: i64,
    keep_hourly: i64,
    keep_daily: i64,
    keep_weekly: i64,
    keep_monthly: i64,
    keep_yearly: i64,
    keep_within: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            keep_last: 3,
            keep_hourly: 0,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 12,
            keep_yearly: 3,
            keep_within: None,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's civil_from_days.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01; days past the month's end roll over.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// A number naming the calendar period `t` falls in.
    fn bucket(self, t: i64) -> i64 {
        let days = t.div_euclid(86_400);
        match self {
            Period::Hour => t.div_euclid(3600),
            Period::Day => days,
            // ISO weeks start on Monday; 1970-01-01 was a Thursday.
            Period::Week => days - (days + 3).rem_euclid(7),
            Period::Month => {
                let (y, m, _) = civil(days);
                y * 12 + m
            }
            Period::Year => civil(days).0,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Period::Hour => "hourly snapshot",
            Period::Day => "daily snapshot",
            Period::Week => "weekly snapshot",
            Period::Month => "monthly snapshot",
            Period::Year => "yearly snapshot",
        }
    }
}

/// `t` minus a restic duration such as `2y5m7d3h` (calendar years and months).
fn minus_duration(t: i64, spec: &str) -> Result<i64, String> {
    let bad = || format!("keep_within '{spec}' is not a duration like 2y5m7d3h");
    let (mut years, mut months, mut days, mut hours) = (0, 0, 0, 0);
    let mut num = String::new();
    for c in spec.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        match c {
            'y' => years += n,
            'm' => months += n,
            'd' => days += n,
            'h' => hours += n,
            _ => return Err(bad()),
        }
    }
    if !num.is_empty() || spec.trim().is_empty() {
        return Err(bad());
    }
    let day = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil(day);
    let total_months = (y - years) * 12 + (m - 1) - months;
    let shifted = days_from_civil(
        total_months.div_euclid(12),
        total_months.rem_euclid(12) + 1,
        d,
    ) - days;
    Ok(shifted * 86_400 + secs - hours * 3600)
}

/// One backup as the policy sees it.
pub struct Snapshot<'a> {
    pub id: &'a str,
    pub created_at: i64,
}

/// The backups to keep, with reasons; restic's `forget` algorithm.
pub fn retain(params: &str, backups: &[Snapshot<'_>]) -> Result<Vec<(String, String)>, String> {
    let p: Params = if params.trim().is_empty() {
        Params::default()
    } else {
        serde_json::from_str(params).map_err(|e| format!("bad parameters: {e}"))?
    };
    let mut list: Vec<&Snapshot<'_>> = backups.iter().collect();
    list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(a.id)));
    let Some(latest) = list.first().map(|b| b.created_at) else {
        return Ok(Vec::new());
    };
    let within = match &p.keep_within {
        Some(spec) => Some(minus_duration(latest, spec)?),
        None => None,
    };
    let mut rules: Vec<(Period, i64, Option<i64>)> = [
        (Period::Hour, p.keep_hourly),
        (Period::Day, p.keep_daily),
        (Period::Week, p.keep_weekly),
        (Period::Month, p.keep_monthly),
        (Period::Year, p.keep_yearly),
    ]
    .into_iter()
    .filter(|(_, n)| *n != 0)
    .map(|(period, n)| (period, n, None))
    .collect();

    let mut kept = Vec::new();
    for (nr, b) in list.iter().enumerate() {
        let mut reasons: Vec<String> = Vec::new();
        if p.keep_last == -1 || (nr as i64) < p.keep_last {
            reasons.push("last snapshot".into());
        }
        for (period, count, last) in rules.iter_mut() {
            if *count == 0 {
                continue;
            }
            let val = period.bucket(b.created_at);
            // restic also keeps the oldest backup while a rule has periods to spare.
            if Some(val) != *last || nr == list.len() - 1 {
                reasons.push(period.reason().into());
                *last = Some(val);
                if *count > 0 {
                    *count -= 1;
                }
            }
        }
        if let (Some(limit), Some(spec)) = (within, &p.keep_within) {
            if b.created_at > limit {
                reasons.push(format!("within {spec}"));
            }
        }
        if !reasons.is_empty() {
            kept.push((b.id.to_string(), reasons.join(", ")));
        }
    }
    Ok(kept)
}
