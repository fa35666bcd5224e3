"""@NAME@: a couchvault policy, world `@WORLD@` of wit/policy.wit.

Parameters (JSON, every key optional):
@@retain
  retention: {"keep_last": 7, "hold_tag": "legal-hold"}
@@end
@@protect
  protection: {"level": 3, "tags": {"team": "billing"}}
@@end

WIT in Python: records are classes with snake_case fields (created_at), option<T> is the
value or None, tuples are tuples, `result<T, string>` is a return or `raise Err("...")`:
say what is wrong and how to fix it.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

DEFAULTS = {
@@retain
    "keep_last": 7, "hold_tag": "legal-hold",
@@end
@@protect
    "level": 3, "tags": {},
@@end
}


def params(text):
    if not text.strip():
        return dict(DEFAULTS)
    try:
        given = json.loads(text)
    except ValueError as e:
        raise Err(f"bad parameters: {e}")
    unknown = [k for k in given if k not in DEFAULTS]
    if unknown:
        raise Err(f"bad parameters: unknown field `{unknown[0]}`")
    return {**DEFAULTS, **given}


class WitWorld(wit_world.WitWorld):
@@retain
    def retain(self, input: types.RetentionInput) -> list[types.Keep]:
        """Keeps the newest `keep_last` backups and every backup tagged `hold_tag`; the host
        deletes the others (never one that a kept backup depends on)."""
        p = params(input.params)
        keeps = []
        # Backups come newest first.
        for nr, b in enumerate(input.backups):
            held = next((v for k, v in b.tags if k == p["hold_tag"]), None)
            if held is not None:
                keeps.append(types.Keep(b.id, f"{p['hold_tag']}: {held}"))
            elif nr < p["keep_last"]:
                keeps.append(types.Keep(b.id, f"one of the newest {p['keep_last']}"))
        return keeps
@@end
@@protect

    def protect(self, input: types.ProtectionInput) -> types.Protection:
        """Every backup full, encrypted with the tenant's active key, at zstd `level`, with
        `tags`. The host's floors still apply (encryption stays on, levels are clamped)."""
        p = params(input.params)
        if not isinstance(p["level"], int) or not 1 <= p["level"] <= 19:
            raise Err(f"bad parameters: level {p['level']} is not 1-19")
        return types.Protection(
            compression_level=p["level"], encrypt=True, key_id=None,
            tags=[(k, str(v)) for k, v in p["tags"].items()],
            kind=types.BackupKind.FULL, prefix_check=types.PrefixCheck.EXACT)
@@end
