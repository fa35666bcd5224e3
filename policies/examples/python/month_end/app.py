"""A month-end policy of the kind finance tenants ask for (world `policy`: retention and
protection in one component).

Retention keeps
  - every backup tagged with one of `hold_tags` (a legal hold), whatever its age;
  - the newest backup of each of the `keep_daily` most recent days that have backups;
  - the month-end backups (tagged `month-end`) of the `keep_month_end` most recent months.
Protection takes a full backup, tagged `month-end=YYYY-MM`, on the last business day of the
month (Monday to Friday, not one of `holidays`), so month-end closing starts from a full
backup; other days an incremental one when `incremental` is on. Every backup gets `tags`.
Days are UTC.

Parameters (JSON; every key optional):
{"keep_daily": 7, "keep_month_end": 12, "hold_tags": ["legal-hold"], "tags": {"team": "finance"},
 "holidays": ["2026-12-31"], "incremental": true, "level": 3}
"""

import datetime
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

DEFAULTS = {"keep_daily": 7, "keep_month_end": 12, "hold_tags": ["legal-hold"], "tags": {},
            "holidays": [], "incremental": True, "level": 3}
MONTH_END = "month-end"


def params(text):
    given = {}
    if text.strip():
        try:
            given = json.loads(text)
        except ValueError as e:
            raise Err(f"bad parameters: {e}")
        if not isinstance(given, dict):
            raise Err("bad parameters: expected a JSON object")
        unknown = [k for k in given if k not in DEFAULTS]
        if unknown:
            raise Err(f"bad parameters: unknown field `{unknown[0]}`")
    p = {**DEFAULTS, **given}
    for key, low, high in (("keep_daily", 0, None), ("keep_month_end", 0, None), ("level", 1, 19)):
        value = p[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
            span = f"{low}-{high}" if high else f"at least {low}"
            raise Err(f"bad parameters: {key} must be a whole number {span}, not {value!r}")
    if not isinstance(p["hold_tags"], list) or not all(isinstance(t, str) for t in p["hold_tags"]):
        raise Err("bad parameters: hold_tags must be a list of tag names")
    if not isinstance(p["tags"], dict):
        raise Err("bad parameters: tags must be an object of names to values")
    holidays = set()
    for day in p["holidays"] if isinstance(p["holidays"], list) else [p["holidays"]]:
        try:
            holidays.add(datetime.date.fromisoformat(day))
        except (TypeError, ValueError):
            raise Err(f"bad parameters: holiday {day!r} is not a date like 2026-12-31")
    p["holidays"] = holidays
    return p


def day_of(seconds):
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).date()


def last_business_day(day, holidays):
    """The last day of `day`'s month that is Monday to Friday and not a holiday."""
    following = (day.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
    last = following - datetime.timedelta(days=1)
    while last.weekday() >= 5 or last in holidays:
        last -= datetime.timedelta(days=1)
    return last


class WitWorld(wit_world.WitWorld):
    def retain(self, input: types.RetentionInput) -> list[types.Keep]:
        p = params(input.params)
        reasons = {}
        days, months = set(), set()
        # Newest first, so the first backup seen of a day or month is its newest.
        for b in sorted(input.backups, key=lambda b: (b.created_at, b.id), reverse=True):
            why = []
            held = [f"{k}={v}" for k, v in b.tags if k in p["hold_tags"]]
            if held:
                why.append("legal hold " + ", ".join(held))
            day = day_of(b.created_at)
            if day not in days and len(days) < p["keep_daily"]:
                days.add(day)
                why.append(f"daily {day.isoformat()}")
            month = next((v for k, v in b.tags if k == MONTH_END), None)
            if month is not None and month not in months and len(months) < p["keep_month_end"]:
                months.add(month)
                why.append(f"month-end {month}")
            if why:
                reasons[b.id] = "; ".join(why)
        return [types.Keep(id, reason) for id, reason in reasons.items()]

    def protect(self, input: types.ProtectionInput) -> types.Protection:
        p = params(input.params)
        today = day_of(input.now)
        tags = [(str(k), str(v)) for k, v in sorted(p["tags"].items())]
        tags.append(("policy", "month-end"))
        if today == last_business_day(today, p["holidays"]):
            kind = types.BackupKind.FULL
            tags.append((MONTH_END, today.strftime("%Y-%m")))
        elif p["incremental"] and input.chain:
            kind = types.BackupKind.INCREMENTAL
        else:
            kind = types.BackupKind.FULL
        return types.Protection(
            compression_level=p["level"], encrypt=True, key_id=None, tags=tags,
            kind=kind, prefix_check=types.PrefixCheck.EXACT)
