// couchvault's default protection policy (policies/standard-protection) in JavaScript:
// encrypted with the tenant's active key, zstd level 3 (1 for very large sources), a tag
// naming the policy, and on request a full backup every `full_every_days` with
// incrementals or differentials in between.
//
// Parameters (JSON; every key optional):
// {"level": 3, "large_level": 1, "large_bytes": 107374182400, "key_id": null, "tags": {"k": "v"},
//  "incremental": false, "differential": false, "full_every_days": 7, "fast": false}

const DEFAULTS = { level: 3, large_level: 1, large_bytes: 100 * 2 ** 30, key_id: null, tags: {}, incremental: false, differential: false, full_every_days: 7, fast: false };
const SLACK_SECS = 3600n;

export function protect(input) {
  let given = {};
  if (input.params.trim() !== "") {
    try { given = JSON.parse(input.params); } catch (e) { throw `bad parameters: ${e.message}`; }
    const unknown = Object.keys(given).filter(k => !(k in DEFAULTS));
    if (unknown.length) throw `bad parameters: unknown field \`${unknown[0]}\``;
  }
  const p = { ...DEFAULTS, ...given };
  if (p.incremental && p.differential) throw "bad parameters: incremental and differential exclude each other";
  const level = input.sourceSize >= BigInt(p.large_bytes) ? p.large_level : p.level;
  // The chain is newest first and ends at its full.
  const full = input.chain.length ? input.chain[input.chain.length - 1] : null;
  const due = !(full && full.kind === "full") || input.now - full.createdAt >= BigInt(p.full_every_days) * 86400n - SLACK_SECS;
  const kind = due || (!p.incremental && !p.differential) ? "full" : p.incremental ? "incremental" : "differential";
  const tags = Object.entries(p.tags).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  tags.push(["protection", "standard-protection"]);
  return {
    compressionLevel: level,
    encrypt: true,
    keyId: p.key_id === null ? undefined : p.key_id,
    tags,
    kind,
    prefixCheck: p.fast ? "fast" : "exact",
  };
}
