// couchvault's default retention policy (policies/gfs-retention, restic's `forget`) in
// JavaScript: the same parameters, the same verdicts and reasons.
//
// Parameters (JSON; every key optional; -1 means unlimited):
// {"keep_last": 3, "keep_hourly": 0, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12,
//  "keep_yearly": 3, "keep_within": "2y5m7d3h"}

const DEFAULTS = { keep_last: 3, keep_hourly: 0, keep_daily: 7, keep_weekly: 4, keep_monthly: 12, keep_yearly: 3, keep_within: null };

const divFloor = (a, b) => Math.floor(a / b);
const mod = (a, b) => ((a % b) + b) % b;

// Days since 1970-01-01 to [year, month, day] (Howard Hinnant's civil_from_days).
function civil(days) {
  const z = days + 719468;
  const era = divFloor(z, 146097);
  const doe = z - era * 146097;
  const yoe = Math.trunc((doe - Math.trunc(doe / 1460) + Math.trunc(doe / 36524) - Math.trunc(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.trunc(yoe / 4) - Math.trunc(yoe / 100));
  const mp = Math.trunc((5 * doy + 2) / 153);
  const d = doy - Math.trunc((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

function daysFromCivil(y, m, d) {
  y = m <= 2 ? y - 1 : y;
  const era = divFloor(y, 400);
  const yoe = y - era * 400;
  const mp = (m + 9) % 12;
  const doy = Math.trunc((153 * mp + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.trunc(yoe / 4) - Math.trunc(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

const PERIODS = [
  ["keep_hourly", "hourly snapshot", t => divFloor(t, 3600)],
  ["keep_daily", "daily snapshot", t => divFloor(t, 86400)],
  // ISO weeks start on Monday; 1970-01-01 was a Thursday.
  ["keep_weekly", "weekly snapshot", t => { const d = divFloor(t, 86400); return d - mod(d + 3, 7); }],
  ["keep_monthly", "monthly snapshot", t => { const [y, m] = civil(divFloor(t, 86400)); return y * 12 + m; }],
  ["keep_yearly", "yearly snapshot", t => civil(divFloor(t, 86400))[0]],
];

// `t` minus a restic duration such as 2y5m7d3h (calendar years and months).
function minusDuration(t, spec) {
  const bad = `keep_within '${spec}' is not a duration like 2y5m7d3h`;
  const parts = { y: 0, m: 0, d: 0, h: 0 };
  const text = spec.trim();
  if (!/^(\d+[ymdh])+$/.test(text)) throw bad;
  for (const [, n, unit] of text.matchAll(/(\d+)([ymdh])/g)) parts[unit] += Number(n);
  const day = divFloor(t, 86400);
  const secs = mod(t, 86400);
  const [y, m, d] = civil(day);
  const months = (y - parts.y) * 12 + (m - 1) - parts.m;
  const shifted = daysFromCivil(divFloor(months, 12), mod(months, 12) + 1, d) - parts.d;
  return shifted * 86400 + secs - parts.h * 3600;
}

export function retain(input) {
  let given = {};
  if (input.params.trim() !== "") {
    try { given = JSON.parse(input.params); } catch (e) { throw `bad parameters: ${e.message}`; }
    const unknown = Object.keys(given).filter(k => !(k in DEFAULTS));
    if (unknown.length) throw `bad parameters: unknown field \`${unknown[0]}\``;
  }
  const p = { ...DEFAULTS, ...given };
  const list = input.backups.map(b => ({ id: b.id, at: Number(b.createdAt) }));
  list.sort((a, b) => b.at - a.at || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  if (!list.length) return [];
  const within = p.keep_within === null ? null : minusDuration(list[0].at, p.keep_within);
  const rules = PERIODS.filter(([key]) => p[key] !== 0).map(([key, reason, bucket]) => ({ count: p[key], reason, bucket, last: null }));
  const kept = [];
  list.forEach((b, nr) => {
    const reasons = [];
    if (p.keep_last === -1 || nr < p.keep_last) reasons.push("last snapshot");
    for (const r of rules) {
      if (r.count === 0) continue;
      const val = r.bucket(b.at);
      // restic also keeps the oldest backup while a rule has periods to spare.
      if (val !== r.last || nr === list.length - 1) {
        reasons.push(r.reason);
        r.last = val;
        if (r.count > 0) r.count -= 1;
      }
    }
    if (within !== null && b.at > within) reasons.push(`within ${p.keep_within}`);
    if (reasons.length) kept.push({ id: b.id, reason: reasons.join(", ") });
  });
  return kept;
}
