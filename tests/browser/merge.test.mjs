// `taskloom.merge` from the packed npm package in Node (wasm, CPU): the recipes of
// tests/fixtures/merge run on in-memory sources and equal mergekit's output (1e-6, as the native
// tests); DARE with our RNG equals the native CLI's merge with the same seed; `load: true` gives a
// Model; bad recipes, missing sources and an aborted merge reject with the right code.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { before, test } from "node:test";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { openFixturePage, packedPackage, repo, tempDir } from "./harness.mjs";

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
