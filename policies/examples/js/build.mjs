// Builds each policy here into a component against couchvault's WIT:
//   node build.mjs [OUT_DIR]   (default: .)  ->  gfs_retention_js.wasm, standard_protection_js.wasm
// A policy has no clock, network or stdio: those features are left out of the runtime.
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const wit = process.env.COUCHVAULT_WIT || resolve(here, "../../../wit");
const out = resolve(process.argv[2] || ".");
for (const [source, world, name] of [
  ["gfs-retention.js", "retention-policy", "gfs_retention_js.wasm"],
  ["standard-protection.js", "protection-policy", "standard_protection_js.wasm"],
]) {
  const started = Date.now();
  const { component } = await componentize({
    sourcePath: join(here, source),
    witPath: wit,
    worldName: world,
    disableFeatures: ["random", "stdio", "clocks", "http", "fetch-event"],
  });
  await writeFile(join(out, name), component);
  console.log(`${name}: ${component.length} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
