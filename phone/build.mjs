// Build the phone page into a static folder: node build.mjs [--public DIR] [--out DIR]
//
// --public: what python -m helpers.phone_export wrote (bundle.json, models/, guard.*.bin);
// --out: the folder to serve (default dist/). Bundles src/main.js (LiteRT.js and its
// @litertjs/wasm-utils import included) with esbuild, copies the static files and the
// LiteRT.js wasm builds, and writes the service worker with its cache version and list.

import {build} from "esbuild";
import {createHash} from "node:crypto";
import {cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync} from "node:fs";
import {dirname, join, relative, resolve} from "node:path";
import {fileURLToPath} from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const options = {public: join(here, "public"), out: join(here, "dist")};
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, "");
  if (!(key in options) || process.argv[i + 1] === undefined) {
    console.error(`usage: node build.mjs [--public DIR] [--out DIR] (got ${process.argv[i]})`);
    process.exit(2);
  }
  options[key] = resolve(process.argv[i + 1]);
}
const bundlePath = join(options.public, "bundle.json");
if (!existsSync(bundlePath)) {
  console.error(`No ${bundlePath}: export the models first (python -m helpers.phone_export).`);
  process.exit(1);
}
const bundle = JSON.parse(readFileSync(bundlePath, "utf8"));
// The wasm builds LiteRT.js chooses from without threads or JSPI (relaxed SIMD, or the compatible one).
const WASM_BUILDS = ["litert_wasm_internal", "litert_wasm_compat_internal"];

rmSync(options.out, {recursive: true, force: true});
mkdirSync(join(options.out, "wasm"), {recursive: true});
cpSync(join(here, "static"), options.out, {recursive: true});
cpSync(options.public, options.out, {recursive: true});
const wasmSource = join(here, "node_modules", "@litertjs", "core", "wasm");
for (const name of WASM_BUILDS) {
  for (const suffix of [".js", ".wasm"]) cpSync(join(wasmSource, name + suffix), join(options.out, "wasm", name + suffix));
}
await build({entryPoints: [join(here, "src", "main.js")], bundle: true, format: "esm", target: "es2022",
  minify: true, sourcemap: false, outfile: join(options.out, "app.js"), logLevel: "warning"});

const precache = ["./", "index.html", "app.js", "style.css", "manifest.webmanifest", "icon.svg", "bundle.json",
  bundle.variants[bundle.default_variant].file, ...(bundle.guard ? [bundle.guard.file] : [])];
const digest = createHash("sha256");
for (const file of precache.filter(name => name !== "./")) digest.update(readFileSync(join(options.out, file)));
const version = `${bundle.version}-${digest.digest("hex").slice(0, 8)}`;
await build({entryPoints: [join(here, "src", "sw.js")], bundle: true, format: "iife", target: "es2022", minify: true,
  outfile: join(options.out, "sw.js"), logLevel: "warning",
  define: {__CACHE_VERSION__: JSON.stringify(version), __PRECACHE__: JSON.stringify(precache)}});

function sizeOf(folder) {
  return readdirSync(folder).reduce((total, name) => {
    const path = join(folder, name);
    return total + (statSync(path).isDirectory() ? sizeOf(path) : statSync(path).size);
  }, 0);
}
console.log(`Built ${relative(process.cwd(), options.out) || "."} (cache ${version}, ${(sizeOf(options.out) / 2 ** 20).toFixed(1)} MiB on disk).`);
