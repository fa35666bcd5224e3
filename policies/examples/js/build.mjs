// Builds the policies listed in package.json ("couchvault": {"wit": ..., "policies": [...]})
// into WebAssembly components against couchvault's WIT:
//   node build.mjs [OUT_DIR]   (default: .)
// A policy has no clock, network or stdio: those features are left out of the runtime.
// (`couchvault policy new NAME --lang js` writes this same file into its starter.)
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// componentize-js hands whatever an export throws to the host as its error, which must be a
// string: a thrown Error (a TypeError from a bug, say) would abort the call with no message.
// Each exported `retain` / `protect` is wrapped so it throws "Name: message" instead.
const WRAP = `
const __policyError = e => e instanceof Error ? \`\${e.name}: \${e.message}\` : typeof e === "string" ? e : String(JSON.stringify(e) ?? e);
`;
async function wrapped(source, dir) {
  let text = await readFile(source, "utf8");
  let tail = WRAP;
  text = text.replace(/export\s+function\s+(retain|protect)\s*\(/g, (_, name) => {
    tail += `export function ${name}(input) { try { return __policy_${name}(input); } catch (e) { throw __policyError(e); } }\n`;
    return `function __policy_${name}(`;
  });
  const out = join(dir, "policy.js");
  await writeFile(out, text + tail);
  return out;
}

const here = dirname(fileURLToPath(import.meta.url));
const { couchvault: project } = JSON.parse(await readFile(join(here, "package.json"), "utf8"));
const wit = process.env.COUCHVAULT_WIT || resolve(here, project.wit);
const out = resolve(process.argv[2] || ".");
const work = await mkdtemp(join(tmpdir(), "couchvault-policy-"));
try {
  for (const { source, world, output } of project.policies) {
    const started = Date.now();
    const { component } = await componentize({
      sourcePath: await wrapped(join(here, source), work),
      witPath: wit,
      worldName: world,
      disableFeatures: ["random", "stdio", "clocks", "http", "fetch-event"],
    });
    await writeFile(join(out, output), component);
    console.log(`${output}: ${component.length} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
