"""couchvault's default protection policy (policies/standard-protection) in Python:
encrypted with the tenant's active key, zstd level 3 (1 for very large sources), a tag
naming the policy, and on request a full backup every `full_every_days` with incrementals
or differentials in between.

Parameters (JSON; every key optional):
{"level": 3, "large_level": 1, "large_bytes": 107374182400, "key_id": null, "tags": {"k": "v"},
 "incremental": false, "differential": false, "full_every_days": 7, "fast": false}
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

DEFAULTS = {"level": 3, "large_level": 1, "large_bytes": 100 << 30, "key_id": None, "tags": {},
            "incremental": False, "differential": False, "full_every_days": 7, "fast": False}
SLACK_SECS = 3600


class WitWorld(wit_world.WitWorld):
    def protect(self, input: types.ProtectionInput) -> types.Protection:
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
        if p["incremental"] and p["differential"]:
            raise Err("bad parameters: incremental and differential exclude each other")
        level = p["large_level"] if input.source_size >= p["large_bytes"] else p["level"]
        # The chain is newest first and ends at its full.
        full = input.chain[-1] if input.chain else None
        due = full is None or full.kind != "full" or \
            input.now - full.created_at >= p["full_every_days"] * 86400 - SLACK_SECS
        if due or not (p["incremental"] or p["differential"]):
            kind = types.BackupKind.FULL
        elif p["incremental"]:
            kind = types.BackupKind.INCREMENTAL
        else:
            kind = types.BackupKind.DIFFERENTIAL
        tags = sorted(p["tags"].items()) + [("protection", "standard-protection")]
        return types.Protection(
            compression_level=level,
            encrypt=True,
            key_id=p["key_id"],
            tags=tags,
            kind=kind,
            prefix_check=types.PrefixCheck.FAST if p["fast"] else types.PrefixCheck.EXACT,
        )
