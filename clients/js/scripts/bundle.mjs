// Browser bundles (ES modules, minified) and the size check of the core:
//   dist/roomcast.min.js          the client with the JSON codec
//   dist/roomcast-msgpack.min.js  the MessagePack codec (with @msgpack/msgpack)
// The core must stay under LIMIT bytes minified + gzipped.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";

const LIMIT = 6 * 1024;
const common = { bundle: true, minify: true, format: "esm", target: "es2020", platform: "browser", logLevel: "warning" };
await build({ ...common, entryPoints: ["src/index.ts"], outfile: "dist/roomcast.min.js" });
await build({ ...common, entryPoints: ["src/msgpack.ts"], outfile: "dist/roomcast-msgpack.min.js" });

const row = (file) => {
  const bytes = readFileSync(file);
  return { file, minified: bytes.length, gzipped: gzipSync(bytes, { level: 9 }).length };
};
const core = row("dist/roomcast.min.js");
const codec = row("dist/roomcast-msgpack.min.js");
console.log(`${core.file}: ${core.minified} B minified, ${core.gzipped} B gzipped (limit ${LIMIT})`);
console.log(`${codec.file}: ${codec.minified} B minified, ${codec.gzipped} B gzipped (MessagePack codec, loaded only when used)`);
if (core.gzipped > LIMIT) {
  console.error(`the core bundle is ${core.gzipped} B gzipped, over the ${LIMIT} B limit`);
  process.exit(1);
}
