"""couchvault's default retention policy (policies/gfs-retention, restic's `forget`) in
Python: the same parameters, the same verdicts and reasons.

Parameters (JSON; every key optional; -1 means unlimited):
{"keep_last": 3, "keep_hourly": 0, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12,
 "keep_yearly": 3, "keep_within": "2y5m7d3h"}
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

DEFAULTS = {"keep_last": 3, "keep_hourly": 0, "keep_daily": 7, "keep_weekly": 4,
            "keep_monthly": 12, "keep_yearly": 3, "keep_within": None}


def civil(days):
    """Days since 1970-01-01 to (year, month, day) (Howard Hinnant's civil_from_days)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


def days_from_civil(y, m, d):
    y = y - 1 if m <= 2 else y
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


PERIODS = [
    ("keep_hourly", "hourly snapshot", lambda t: t // 3600),
    ("keep_daily", "daily snapshot", lambda t: t // 86400),
    # ISO weeks start on Monday; 1970-01-01 was a Thursday.
    ("keep_weekly", "weekly snapshot", lambda t: t // 86400 - (t // 86400 + 3) % 7),
    ("keep_monthly", "monthly snapshot", lambda t: (lambda c: c[0] * 12 + c[1])(civil(t // 86400))),
    ("keep_yearly", "yearly snapshot", lambda t: civil(t // 86400)[0]),
]


def minus_duration(t, spec):
    """`t` minus a restic duration such as 2y5m7d3h (calendar years and months)."""
    text = spec.strip()
    if not re.fullmatch(r"(\d+[ymdh])+", text):
        raise Err(f"keep_within '{spec}' is not a duration like 2y5m7d3h")
    parts = {"y": 0, "m": 0, "d": 0, "h": 0}
    for n, unit in re.findall(r"(\d+)([ymdh])", text):
        parts[unit] += int(n)
    y, m, d = civil(t // 86400)
    months = (y - parts["y"]) * 12 + (m - 1) - parts["m"]
    shifted = days_from_civil(months // 12, months % 12 + 1, d) - parts["d"]
    return shifted * 86400 + t % 86400 - parts["h"] * 3600


class WitWorld(wit_world.WitWorld):
    def retain(self, input: types.RetentionInput) -> list[types.Keep]:
        given = {}
        if input.params.strip():
            try:
                given = json.loads(input.params)
            except ValueError as e:
                raise Err(f"bad parameters: {e}")
            unknown = [k for k in given if k not in DEFAULTS]
            if unknown:
                raise Err(f"bad parameters: unknown field `{unknown[0]}`")
        p = {**DEFAULTS, **given}
        backups = sorted(input.backups, key=lambda b: (b.created_at, b.id), reverse=True)
        if not backups:
            return []
        within = None if p["keep_within"] is None else minus_duration(backups[0].created_at, p["keep_within"])
        rules = [{"count": p[key], "reason": reason, "bucket": bucket, "last": None}
                 for key, reason, bucket in PERIODS if p[key] != 0]
        kept = []
        for nr, b in enumerate(backups):
            reasons = []
            if p["keep_last"] == -1 or nr < p["keep_last"]:
                reasons.append("last snapshot")
            for r in rules:
                if r["count"] == 0:
                    continue
                val = r["bucket"](b.created_at)
                # restic also keeps the oldest backup while a rule has periods to spare.
                if val != r["last"] or nr == len(backups) - 1:
                    reasons.append(r["reason"])
                    r["last"] = val
                    if r["count"] > 0:
                        r["count"] -= 1
            if within is not None and b.created_at > within:
                reasons.append(f"within {p['keep_within']}")
            if reasons:
                kept.append(types.Keep(b.id, ", ".join(reasons)))
        return kept
