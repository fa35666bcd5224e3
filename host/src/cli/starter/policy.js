// @NAME@: a couchvault policy, world `@WORLD@` of wit/policy.wit.
//
// Parameters (JSON, every key optional):
@@retain
//   retention: {"keep_last": 7, "hold_tag": "legal-hold"}
@@end
@@protect
//   protection: {"level": 3, "tags": {"team": "billing"}}
@@end
//
// WIT in JavaScript: records are objects with camelCase fields (createdAt), s64/u64 are
// BigInt, option<T> is the value or undefined, tuples are arrays, `result<T, string>` is a
// return or a throw: throw a string (or an Error) saying what is wrong and how to fix it.

const DEFAULTS = {
@@retain
  keep_last: 7, hold_tag: "legal-hold",
@@end
@@protect
  level: 3, tags: {},
@@end
};

function params(text) {
  if (text.trim() === "") return { ...DEFAULTS };
  let given;
  try { given = JSON.parse(text); } catch (e) { throw `bad parameters: ${e.message}`; }
  const unknown = Object.keys(given).filter(k => !(k in DEFAULTS));
  if (unknown.length) throw `bad parameters: unknown field \`${unknown[0]}\``;
  return { ...DEFAULTS, ...given };
}
@@retain

// Keeps the newest `keep_last` backups and every backup tagged `hold_tag`; the host deletes
// the others (never one that a kept backup depends on).
export function retain(input) {
  const p = params(input.params);
  const keeps = [];
  // Backups come newest first.
  input.backups.forEach((b, nr) => {
    const held = b.tags.find(([k]) => k === p.hold_tag);
    if (held) keeps.push({ id: b.id, reason: `${held[0]}: ${held[1]}` });
    else if (nr < p.keep_last) keeps.push({ id: b.id, reason: `one of the newest ${p.keep_last}` });
  });
  return keeps;
}
@@end
@@protect

// Every backup full, encrypted with the tenant's active key, at zstd `level`, with `tags`.
// The host's floors still apply (encryption stays on, levels are clamped).
export function protect(input) {
  const p = params(input.params);
  if (!Number.isInteger(p.level) || p.level < 1 || p.level > 19) throw `bad parameters: level ${p.level} is not 1-19`;
  return {
    compressionLevel: p.level,
    encrypt: true,
    keyId: undefined,
    tags: Object.entries(p.tags).map(([k, v]) => [k, String(v)]),
    kind: "full",
    prefixCheck: "exact",
  };
}
@@end
