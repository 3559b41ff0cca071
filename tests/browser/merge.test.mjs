// `taskloom.merge` from the packed npm package in Node (wasm, CPU): the recipes of
// tests/fixtures/merge run on in-memory sources and equal mergekit's output (1e-6, as the native
// tests); DARE with our RNG equals the native CLI's merge with the same seed; `load: true` gives a
// Model; bad recipes, missing sources and an aborted merge reject with the right code.
// Streaming: URL sources are read by HTTP Range requests (and whole, once, with a warning, from a
// server that ignores Range), File and ArrayBuffer sources per tensor; on a 48 MiB sharded fixture
// the wasm heap grows by far less than the models' bytes; bad files name the file and tensor.

import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { before, test } from "node:test";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { here, openPage, openFixturePage, packedPackage, repo, serve, tempDir } from "./harness.mjs";

const fixtures = join(repo, "tests/fixtures/merge");
let tl;

before(async () => {
  tl = await import(pathToFileURL(join(packedPackage(), "index.js")).href);
});

/** `{ name: Float32Array }` of the safetensors bytes (F32 tensors only, as these recipes write). */
function tensors(bytes) {
  const u8 = new Uint8Array(bytes); // a copy: a Node Buffer's slice() is a view into a shared pool
  const n = Number(new DataView(u8.buffer, u8.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(u8.subarray(8, 8 + n)));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    assert.equal(t.dtype, "F32", `${name}: dtype`);
    const [a, b] = t.data_offsets;
    out[name] = new Float32Array(u8.slice(8 + n + a, 8 + n + b).buffer);
  }
  return out;
}

function folderFiles(dir) {
  const files = {};
  for (const f of readdirSync(dir)) files[f] = new Uint8Array(readFileSync(join(dir, f)));
  return files;
}

/** The recipe's text and its sources from the fixture folders (model references as keys). */
function recipe(name) {
  const text = readFileSync(join(fixtures, `${name}.yml`), "utf8");
  const refs = [...text.matchAll(/(?:model|base_model):\s*(\S+)/g)].map((m) => m[1]);
  const sources = {};
  for (const r of refs) sources[r] = folderFiles(join(fixtures, r));
  return { text, sources };
}

async function mergedTensors(res) {
  const all = {};
  for (const [name, blob] of Object.entries(res.files)) {
    if (name.endsWith(".safetensors") && name.startsWith("model")) Object.assign(all, tensors(new Uint8Array(await blob.arrayBuffer())));
  }
  return all;
}

function close(what, got, want, atol = 1e-6) {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= atol)) assert.fail(`${what}[${i}]: got ${got[i]}, want ${want[i]}`);
  }
}

for (const name of ["linear", "task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "slerp", "model_stock", "passthrough", "gradient_filter"]) {
  test(`node: merge ${name} equals mergekit`, async () => {
    const { text, sources } = recipe(name);
    const progress = [];
    const res = await tl.merge(text, sources, { device: "cpu", onProgress: (p) => progress.push(p) });
    assert.equal(res.summary.device, "cpu");
    assert.ok(res.summary.tensors > 0 && progress.length === res.summary.tensors, `progress ${progress.length} of ${res.summary.tensors}`);
    assert.ok(res.files["config.json"], "config.json copied");
    const got = await mergedTensors(res);
    const want = tensors(readFileSync(join(fixtures, `expected/${name}.safetensors`)));
    assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort());
    for (const t of Object.keys(want)) close(`${name}: ${t}`, got[t], want[t]);
  });
}

test("node: DARE-TIES with our RNG equals the native CLI's merge; load: true gives a Model", async (t) => {
  const cli = process.env.TASKLOOM_CLI ?? join(repo, "target/debug/taskloom");
  if (!existsSync(cli)) {
    if (process.env.CI === "true") assert.fail(`no CLI at ${cli}`);
    t.skip(`no CLI at ${cli} (cargo build -p taskloom-cli)`);
    return;
  }
  const out = join(tempDir("taskloom-merge-js-"), "out");
  execFileSync(cli, ["merge", join(fixtures, "dare_ties.yml"), "-o", out, "--random-seed", "5", "--device", "cpu"], { stdio: "pipe" });
  const { text, sources } = recipe("dare_ties");
  const res = await tl.merge(text, sources, { device: "cpu", randomSeed: 5 });
  const got = await mergedTensors(res);
  const native = {};
  for (const f of readdirSync(out).filter((f) => f.startsWith("model") && f.endsWith(".safetensors"))) Object.assign(native, tensors(readFileSync(join(out, f))));
  assert.deepEqual(Object.keys(got).sort(), Object.keys(native).sort());
  for (const k of Object.keys(native)) close(`dare_ties: ${k}`, got[k], native[k]);
  const other = await mergedTensors(await tl.merge(text, sources, { device: "cpu", randomSeed: 6 }));
  assert.ok(Object.keys(native).some((k) => other[k].some((x, i) => x !== got[k][i])), "another seed, another merge");
  const m = await tl.merge(text, sources, { device: "cpu", randomSeed: 5, load: true });
  assert.equal(m.kind, "decoder");
  const logits = await m.logits([1, 2, 3]);
  assert.equal(logits.dims[0], 3);
  assert.ok(logits.data.length > 0 && logits.data.every(Number.isFinite));
  m.dispose();
});

test("node: bad merges reject with a code", async () => {
  const { text, sources } = recipe("ties");
  await assert.rejects(tl.merge(text.replace("merge_method: ties", "merge_method: nonsense"), sources, { device: "cpu" }), { code: "BAD_INPUT" });
  await assert.rejects(tl.merge(text.replace("density: 0.5", "density: 1.5"), sources, { device: "cpu" }), { code: "BAD_INPUT" });
  const { ft2: _, ...missing } = sources;
  await assert.rejects(tl.merge(text, missing, { device: "cpu" }), (e) => e.code === "BAD_INPUT" && /ft2/.test(e.message));
  const broken = { ...sources, ft1: { ...sources.ft1, "model.safetensors": sources.ft1["model.safetensors"].slice(0, 100) } };
  await assert.rejects(tl.merge(text, broken, { device: "cpu" }), { code: "BAD_INPUT" });
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(tl.merge(text, sources, { device: "cpu", signal: ac.signal }), { code: "ABORTED" });
  // The package still works after the failures.
  assert.ok((await tl.merge(text, sources, { device: "cpu" })).summary.tensors > 0);
});

// The same engine in headless Chromium, on WebGPU (SwiftShader) and the wasm CPU path, models
// fetched by URL: TIES and breadcrumbs equal mergekit, DARE-TIES with a seed equals the Node run.
for (const device of ["webgpu", "cpu"]) {
  test(`browser: merge on ${device} equals mergekit and the Node run`, { timeout: 240_000 }, async () => {
    const session = await openFixturePage("merge.html");
    try {
      for (const name of ["ties", "breadcrumbs"]) {
        const r = await session.page.evaluate((a) => window.taskloomMerge(...a), [device, name, 0]);
        assert.equal(r.error, undefined, `${name}: ${JSON.stringify(r.error)}\n${session.logs.join("\n")}`);
        assert.equal(r.summary.device, device);
        const got = tensors(new Uint8Array(r.bytes));
        const want = tensors(readFileSync(join(fixtures, `expected/${name}.safetensors`)));
        for (const t of Object.keys(want)) close(`${device} ${name}: ${t}`, got[t], want[t]);
      }
      if (device === "webgpu") {
        // A lowered binding limit (as on a small GPU): the tensors whose task vectors no longer fit
        // one binding merge on the host, the rest on the GPU; the result is still mergekit's.
        const r = await session.page.evaluate((a) => window.taskloomMerge(...a), [device, "ties", 0, "url", { maxBindingBytes: 12000 }]);
        assert.equal(r.error, undefined, `ties, maxBindingBytes: ${JSON.stringify(r.error)}`);
        const got = tensors(new Uint8Array(r.bytes));
        const want = tensors(readFileSync(join(fixtures, "expected/ties.safetensors")));
        for (const t of Object.keys(want)) close(`${device} ties (maxBindingBytes 12000): ${t}`, got[t], want[t]);
      }
      const r = await session.page.evaluate((a) => window.taskloomMerge(...a), [device, "dare_ties", 5]);
      assert.equal(r.error, undefined, JSON.stringify(r.error));
      const { text, sources } = recipe("dare_ties");
      const node = await mergedTensors(await tl.merge(text, sources, { device: "cpu", randomSeed: 5 }));
      const got = tensors(new Uint8Array(r.bytes));
      for (const t of Object.keys(node)) close(`${device} dare_ties: ${t}`, got[t], node[t]);
    } finally {
      await session.close();
    }
  });
}

// ---- Streaming sources ----------------------------------------------------------------------

/** safetensors bytes of `[{ name, shape, data: Float32Array }]`, back to back in that order. */
function safetensorsBytes(list) {
  const header = { __metadata__: { format: "pt" } };
  let off = 0;
  for (const t of list) {
    header[t.name] = { dtype: "F32", shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const out = new Uint8Array(8 + json.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(new TextEncoder().encode(json), 8);
  let o = 8 + json.length;
  for (const t of list) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), o);
    o += t.data.byteLength;
  }
  return out;
}

// The large fixture: three models of 16 tensors of 512×512 f32 (1 MiB each, 16 MiB per model);
// model b is sharded in two files with model.safetensors.index.json. Values are multiples of 1/8
// and the weights powers of two, so the linear merge is exact in f32.
const BIG = { tensors: 16, n: 512, weights: { a: 0.5, b: 0.25, c: 0.25 } };
const BIG_RECIPE = `merge_method: linear
models:
${Object.entries(BIG.weights).map(([m, w]) => `  - model: ${m}\n    parameters: {weight: ${w}}`).join("\n")}
dtype: float32
`;
let bigDir = null;

function bigValue(m, t, i) {
  return (((i * 7919 + t * 104729 + m * 31337) % 1021) - 510) / 8;
}

function bigFixture() {
  if (bigDir) return bigDir;
  const dir = tempDir("taskloom-merge-big-");
  Object.keys(BIG.weights).forEach((m, mi) => {
    mkdirSync(join(dir, m));
    writeFileSync(join(dir, m, "config.json"), JSON.stringify({ architectures: ["LlamaForCausalLM"], num_hidden_layers: BIG.tensors }));
    const list = [];
    for (let t = 0; t < BIG.tensors; t++) {
      const data = new Float32Array(BIG.n * BIG.n);
      for (let i = 0; i < data.length; i++) data[i] = bigValue(mi, t, i);
      list.push({ name: `model.layers.${t}.mlp.weight`, shape: [BIG.n, BIG.n], data });
    }
    if (m === "b") {
      const half = BIG.tensors / 2;
      const shards = [list.slice(0, half), list.slice(half)];
      const weightMap = {};
      shards.forEach((sh, i) => {
        const f = `model-0000${i + 1}-of-00002.safetensors`;
        writeFileSync(join(dir, m, f), safetensorsBytes(sh));
        for (const t of sh) weightMap[t.name] = f;
      });
      writeFileSync(join(dir, m, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    } else {
      writeFileSync(join(dir, m, "model.safetensors"), safetensorsBytes(list));
    }
  });
  writeFileSync(join(dir, "big.yml"), BIG_RECIPE);
  bigDir = dir;
  return dir;
}

const BIG_BYTES = 3 * BIG.tensors * BIG.n * BIG.n * 4;

function checkBig(got) {
  const names = Object.keys(got);
  assert.equal(names.length, BIG.tensors);
  const ws = Object.values(BIG.weights);
  const d = Math.fround(ws.reduce((a, b) => Math.fround(a + b), 0));
  for (let t = 0; t < BIG.tensors; t++) {
    const g = got[`model.layers.${t}.mlp.weight`];
    for (let i = 0; i < g.length; i++) {
      let o = 0;
      ws.forEach((w, m) => (o = Math.fround(o + Math.fround(bigValue(m, t, i) * w))));
      const want = Math.fround(o / d);
      if (g[i] !== want) assert.fail(`big: tensor ${t}[${i}]: got ${g[i]}, want ${want}`);
    }
  }
}

async function digests(files) {
  const out = {};
  for (const [f, b] of Object.entries(files)) out[f] = createHash("sha256").update(new Uint8Array(await b.arrayBuffer())).digest("hex");
  return out;
}

/** Runs the big merge in a fresh Node process (a fresh wasm heap) from `kind` sources. */
async function bigInChild(kind, base) {
  const dir = bigFixture();
  const script = join(dir, "child.mjs");
  writeFileSync(
    script,
    `import * as tl from ${JSON.stringify(pathToFileURL(join(packedPackage(), "index.js")).href)};
import { readdirSync, readFileSync } from "node:fs";
import { createHash } from "node:crypto";
const [kind, dir, base] = process.argv.slice(2);
const text = readFileSync(dir + "/big.yml", "utf8");
const sources = {};
for (const m of ["a", "b", "c"]) {
  if (kind === "url") { sources[m] = base + "/big/" + m + "/"; continue; }
  const files = readdirSync(dir + "/" + m).map((f) => [f, readFileSync(dir + "/" + m + "/" + f)]);
  sources[m] = kind === "file" ? files.map(([f, b]) => new File([b], f)) : Object.fromEntries(files.map(([f, b]) => [f, b.buffer.slice(b.byteOffset, b.byteOffset + b.length)]));
}
await tl.init();
const before = tl.wasmMemoryBytes();
const res = await tl.merge(text, sources, { device: "cpu" });
const after = tl.wasmMemoryBytes();
const digests = {};
for (const [f, b] of Object.entries(res.files)) digests[f] = createHash("sha256").update(new Uint8Array(await b.arrayBuffer())).digest("hex");
console.log(JSON.stringify({ before, after, summary: res.summary, digests }));
`,
  );
  const { stdout } = await promisify(execFile)(process.execPath, [script, kind, dir, base ?? ""], { maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split("\n").pop());
}

const fixturesRoot = join(repo, "tests/fixtures");

test("node: URL sources are read by HTTP Range requests, per tensor, and equal mergekit", async () => {
  const server = await serve({ "/fixtures/": fixturesRoot });
  try {
    for (const name of ["ties", "linear", "passthrough"]) {
      server.requests.length = 0;
      const { text } = recipe(name);
      const refs = [...new Set([...text.matchAll(/(?:model|base_model):\s*(\S+)/g)].map((m) => m[1]))];
      const sources = Object.fromEntries(refs.map((r) => [r, `${server.url}/fixtures/merge/${r}/`]));
      const res = await tl.merge(text, sources, { device: "cpu" });
      const got = await mergedTensors(res);
      const want = tensors(readFileSync(join(fixtures, `expected/${name}.safetensors`)));
      assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort());
      for (const t of Object.keys(want)) close(`url ${name}: ${t}`, got[t], want[t]);
      assert.ok(res.files["config.json"], "config.json copied");
      const weights = server.requests.filter((r) => r.path.endsWith(".safetensors"));
      assert.ok(weights.every((r) => /^bytes=\d+-\d+$/.test(r.range ?? "")), `every weights request asks for a range: ${JSON.stringify(weights.filter((r) => !r.range))}`);
      for (const r of refs) {
        const n = weights.filter((q) => q.path.includes(`/${r.replace("../", "")}/`)).length;
        assert.ok(n > 1, `${name}: ${r}: ${n} range requests (a probe, then the tensors past it)`);
      }
    }
  } finally {
    await server.close();
  }
});

test("node: a server that ignores Range: each file read whole once, with a warning", async () => {
  const server = await serve({ "/norange/": { dir: fixturesRoot, range: false } });
  const warnings = [];
  const warn = console.warn;
  console.warn = (...a) => warnings.push(a.join(" "));
  try {
    const { text } = recipe("ties");
    const refs = [...new Set([...text.matchAll(/(?:model|base_model):\s*(\S+)/g)].map((m) => m[1]))];
    const res = await tl.merge(text, Object.fromEntries(refs.map((r) => [r, `${server.url}/norange/merge/${r}/`])), { device: "cpu" });
    const got = await mergedTensors(res);
    const want = tensors(readFileSync(join(fixtures, "expected/ties.safetensors")));
    for (const t of Object.keys(want)) close(`norange ties: ${t}`, got[t], want[t]);
    assert.equal(warnings.filter((w) => /ignored the Range request/.test(w)).length, refs.length, warnings.join("\n"));
    assert.equal(server.requests.filter((r) => r.path.endsWith(".safetensors")).length, refs.length, "one request per weights file");
  } finally {
    console.warn = warn;
    await server.close();
  }
});

test("node: File and ArrayBuffer sources equal mergekit", async () => {
  for (const name of ["ties", "model_stock"]) {
    const { text, sources } = recipe(name);
    const asFiles = Object.fromEntries(Object.entries(sources).map(([k, fs]) => [k, Object.entries(fs).map(([f, b]) => new File([b], f))]));
    const asBuffers = Object.fromEntries(Object.entries(sources).map(([k, fs]) => [k, Object.fromEntries(Object.entries(fs).map(([f, b]) => [f, b.slice().buffer]))]));
    const want = tensors(readFileSync(join(fixtures, `expected/${name}.safetensors`)));
    for (const [kind, src] of [["File", asFiles], ["ArrayBuffer", asBuffers]]) {
      const got = await mergedTensors(await tl.merge(text, src, { device: "cpu" }));
      assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort());
      for (const t of Object.keys(want)) close(`${kind} ${name}: ${t}`, got[t], want[t]);
    }
  }
});

test("node: a 48 MiB sharded merge holds about one tensor × models in the wasm heap (URL, File, ArrayBuffer)", { timeout: 240_000 }, async () => {
  const dir = bigFixture();
  // In this process: the result is exact.
  const buffers = {};
  for (const m of Object.keys(BIG.weights)) buffers[m] = folderFiles(join(dir, m));
  const res = await tl.merge(BIG_RECIPE, buffers, { device: "cpu" });
  checkBig(await mergedTensors(res));
  const want = await digests(res.files);
  const server = await serve({ "/big/": dir });
  try {
    for (const kind of ["url", "file", "buffer"]) {
      const r = await bigInChild(kind, server.url);
      assert.deepEqual(r.digests, want, `${kind}: same files as the in-process merge`);
      const growth = r.after - r.before;
      // One tensor (1 MiB) × 3 inputs + the output: 4 MiB; whole checkpoints would be 48 MiB.
      assert.ok(r.summary.peakBytes <= 4 * (1 << 20), `${kind}: peakBytes ${r.summary.peakBytes}`);
      assert.ok(growth < BIG_BYTES / 4, `${kind}: wasm heap grew by ${growth} bytes (${r.before} -> ${r.after}) for ${BIG_BYTES} bytes of models`);
      console.log(`# big merge from ${kind}: peakBytes ${r.summary.peakBytes}, wasm heap ${r.before} -> ${r.after} (+${growth}) for ${BIG_BYTES} model bytes`);
    }
  } finally {
    await server.close();
  }
});

/** A copy of ft1 with its model.safetensors changed by `edit`, in a temp folder. */
function brokenFt1(edit) {
  const dir = tempDir("taskloom-merge-bad-");
  for (const [f, b] of Object.entries(folderFiles(join(fixtures, "ft1")))) writeFileSync(join(dir, f), f === "model.safetensors" ? edit(b) : b);
  return dir;
}

/** `edit` for a header whose first tensor's end offset lies past the file. */
function lyingHeader(b) {
  const n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
  const h = new TextDecoder().decode(b.subarray(8, 8 + n)).replace('"data_offsets":[0,8192]', '"data_offsets":[0,9999999]');
  assert.equal(h.length, n + 3, "the edit applied");
  const out = new Uint8Array(b.length + 3);
  new DataView(out.buffer).setBigUint64(0, BigInt(n + 3), true);
  out.set(new TextEncoder().encode(h), 8);
  out.set(b.subarray(8 + n), 8 + n + 3);
  return out;
}

test("node: bad streamed sources reject with a code naming the file and tensor", async () => {
  const truncated = brokenFt1((b) => b.slice(0, b.length - 100));
  const lying = brokenFt1(lyingHeader);
  const server = await serve({ "/fixtures/": fixturesRoot, "/truncated/": truncated, "/lying/": lying });
  try {
    const { text, sources } = recipe("ties");
    const at = (ft1) => ({ ...Object.fromEntries(Object.keys(sources).map((r) => [r, `${server.url}/fixtures/merge/${r}/`])), ft1 });
    await assert.rejects(tl.merge(text, at(`${server.url}/fixtures/merge/nonexistent/`), { device: "cpu" }), (e) => {
      assert.equal(e.code, "IO", e.message);
      assert.match(e.message, /nonexistent\/model\.safetensors: HTTP 404/);
      return true;
    });
    await assert.rejects(tl.merge(text, at(`${server.url}/truncated/`), { device: "cpu" }), (e) => {
      assert.equal(e.code, "BAD_INPUT", e.message);
      assert.match(e.message, /truncated\/model\.safetensors/);
      assert.match(e.message, /model\.norm\.weight/);
      return true;
    });
    await assert.rejects(tl.merge(text, at(`${server.url}/lying/`), { device: "cpu" }), (e) => {
      assert.equal(e.code, "BAD_INPUT", e.message);
      assert.match(e.message, /lying\/model\.safetensors/);
      assert.match(e.message, /model\.embed_tokens\.weight/);
      return true;
    });
    // The same defects in File and buffer sources.
    for (const [dir, tensor] of [[truncated, /model\.norm\.weight/], [lying, /model\.embed_tokens\.weight/]]) {
      const files = Object.entries(folderFiles(dir)).map(([f, b]) => new File([b], f));
      await assert.rejects(tl.merge(text, { ...sources, ft1: files }, { device: "cpu" }), (e) => e.code === "BAD_INPUT" && /ft1\/model\.safetensors/.test(e.message) && tensor.test(e.message));
      await assert.rejects(tl.merge(text, { ...sources, ft1: folderFiles(dir) }, { device: "cpu" }), (e) => e.code === "BAD_INPUT" && tensor.test(e.message));
    }
    // A File whose bytes run short of what its header promises once read (a header for a longer file).
    await assert.rejects(tl.merge(text, { ...sources, ft1: { ...sources.ft1, "model.safetensors": 42 } }, { device: "cpu" }), { code: "BAD_INPUT" });
  } finally {
    await server.close();
  }
});

// In Chromium: File objects, directory handles (the origin private file system) and the no-Range
// fallback equal mergekit; the big sharded merge from
// URLs grows the page's wasm heap by far less than the models' bytes and gives the Node result;
// a 404 rejects with IO naming the URL.
test("browser: streamed sources (File, Range, no Range, big sharded) and bad URLs", { timeout: 300_000 }, async () => {
  const dir = bigFixture();
  const buffers = {};
  for (const m of Object.keys(BIG.weights)) buffers[m] = folderFiles(join(dir, m));
  const want = await digests((await tl.merge(BIG_RECIPE, buffers, { device: "cpu" })).files);
  const session = await openPage(
    { "/taskloom/": packedPackage(), "/fixtures/": fixturesRoot, "/norange/": { dir: fixturesRoot, range: false }, "/big/": dir, "/": here },
    "merge.html",
  );
  try {
    // First, while the page's wasm heap is fresh.
    const big = await session.page.evaluate((t) => window.taskloomMergeBig("cpu", t), BIG_RECIPE);
    assert.equal(big.error, undefined, `${JSON.stringify(big.error)}\n${session.logs.join("\n")}`);
    assert.deepEqual(big.digests, want, "the page's merge equals Node's");
    const growth = big.after - big.before;
    assert.ok(big.summary.peakBytes <= 4 * (1 << 20), `peakBytes ${big.summary.peakBytes}`);
    assert.ok(growth < BIG_BYTES / 4, `wasm heap grew by ${growth} bytes (${big.before} -> ${big.after}) for ${BIG_BYTES} bytes of models`);
    console.log(`# browser big merge: peakBytes ${big.summary.peakBytes}, wasm heap ${big.before} -> ${big.after} (+${growth}) for ${BIG_BYTES} model bytes`);
    const ranged = session.requests.filter((r) => r.path.startsWith("/big/") && r.path.endsWith(".safetensors"));
    assert.ok(ranged.length > 4 && ranged.every((r) => r.range), `big: ${ranged.length} weights requests, all ranged`);
    for (const [kind, name] of [["file", "ties"], ["norange", "ties"], ["file", "slerp"]]) {
      const r = await session.page.evaluate((a) => window.taskloomMerge(...a), ["cpu", name, 0, kind]);
      assert.equal(r.error, undefined, `${kind} ${name}: ${JSON.stringify(r.error)}\n${session.logs.join("\n")}`);
      const got = tensors(new Uint8Array(r.bytes));
      const exp = tensors(readFileSync(join(fixtures, `expected/${name}.safetensors`)));
      for (const t of Object.keys(exp)) close(`browser ${kind} ${name}: ${t}`, got[t], exp[t]);
    }
    const d = await session.page.evaluate(() => window.taskloomMergeDir("ties"));
    assert.equal(d.error, undefined, `directory handles: ${JSON.stringify(d.error)}\n${session.logs.join("\n")}`);
    const dirGot = tensors(new Uint8Array(d.bytes));
    const tiesWant = tensors(readFileSync(join(fixtures, "expected/ties.safetensors")));
    for (const t of Object.keys(tiesWant)) close(`browser directory handles ties: ${t}`, dirGot[t], tiesWant[t]);
    assert.ok(session.logs.some((l) => /console\.warning: .*ignored the Range request/.test(l)), `no-Range warning in the console:\n${session.logs.join("\n")}`);
    const text = readFileSync(join(fixtures, "ties.yml"), "utf8");
    const refs = Object.fromEntries(["../tiny/llama", "ft1", "ft2", "ft3"].map((r) => [r, `/fixtures/merge/${r}/`]));
    const e = await session.page.evaluate((a) => window.taskloomMergeError(...a), [text, { ...refs, ft2: "/fixtures/merge/missing/" }]);
    assert.equal(e.error?.code, "IO", JSON.stringify(e));
    assert.match(e.error.message, /missing\/model\.safetensors: HTTP 404/);
  } finally {
    await session.close();
  }
});
