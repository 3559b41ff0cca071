// The wasm heap during a model load (issue 7: weights reach the device without a second full copy
// in the wasm heap). Model.load reads weight files tensor by tensor from the buffers the JS side
// holds, so the heap grows by at most about one tensor's raw bytes beyond what the device keeps:
// - Node, CPU device (a fresh process per load, so the heap starts clean): the f32 weights live in
//   the heap once, so a load grows it by under 1.5x the weights file (the old whole-file copies
//   took it past 3x).
// - Chromium on WebGPU: the weights go to GPU buffers, so the heap grows by under the largest
//   tensor's bytes (MiniLM's word embeddings, 0.52x the file: a tensor is read whole before its
//   upload) plus 16 MiB (tokenizer, runtime); the old copies took the growth past 3x.
// Each load's outputs are checked too (MiniLM against sentence-transformers), so a load that skipped
// weights could not pass. The models come from scripts/fetch-models.sh; without them the tests
// skip, unless TASKLOOM_REQUIRE_MODELS=1 (CI), where a missing model fails.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { cosine, modelDir, openPage, packedPackage, repo } from "./harness.mjs";

const here = fileURLToPath(new URL(".", import.meta.url));
const fixture = (name) => JSON.parse(readFileSync(join(repo, "tests/fixtures", name), "utf8"));
const MiB = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;

function checkEmbeddings(got, want) {
  assert.equal(got.length, want.texts.length);
  got.forEach((e, i) => assert.ok(cosine(e, want.embeddings[i]) >= 0.9999, `cosine for ${want.texts[i]}`));
}

/** Bytes of the largest tensor of a safetensors file, from its header. */
function largestTensor(path) {
  const b = readFileSync(path);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString("utf8"));
  return Math.max(...Object.entries(header).filter(([k]) => k !== "__metadata__").map(([, t]) => t.data_offsets[1] - t.data_offsets[0]));
}

/** One load in a fresh Node process (heap-probe.mjs). */
function probe(dir) {
  const want = fixture("minilm_expected.json");
  const out = execFileSync(process.execPath, [join(here, "heap-probe.mjs"), packedPackage(), dir], {
    encoding: "utf8",
    env: { ...process.env, HEAP_TEXTS: JSON.stringify(want.texts) },
    maxBuffer: 64 << 20,
  });
  return JSON.parse(out);
}

test("heap: MiniLM on the Node CPU path grows the wasm heap by under 1.5x its weights file", { timeout: 300_000 }, async (t) => {
  const dir = modelDir("minilm", t);
  if (!dir) return;
  const r = probe(dir);
  const growth = r.after - r.before;
  t.diagnostic(`MiniLM cpu: heap ${MiB(r.before)} -> ${MiB(r.after)}, growth ${MiB(growth)} = ${(growth / r.weights).toFixed(2)}x the ${MiB(r.weights)} weights`);
  assert.equal(r.device, "cpu");
  checkEmbeddings(r.embeddings, fixture("minilm_expected.json"));
  assert.ok(growth < 1.5 * r.weights, `heap grew by ${MiB(growth)}, ${(growth / r.weights).toFixed(2)}x the weights file`);
});

test("heap: MiniLM on WebGPU in Chromium grows the wasm heap by under its largest tensor + 16 MiB", { timeout: 300_000 }, async (t) => {
  const dir = modelDir("minilm", t);
  if (!dir) return;
  const session = await openPage({ "/taskloom/": packedPackage(), "/minilm/": dir, "/": here }, "heap.html");
  try {
    const want = fixture("minilm_expected.json");
    const r = await session.page.evaluate(([texts]) => window.taskloomHeap("webgpu", texts), [want.texts]);
    const ctx = `\n${JSON.stringify(r.error ?? {})}\n${session.logs.join("\n")}`;
    assert.equal(r.error, undefined, `load failed${ctx}`);
    const growth = r.after - r.before;
    t.diagnostic(`MiniLM webgpu: heap ${MiB(r.before)} -> ${MiB(r.after)}, growth ${MiB(growth)} = ${(growth / r.weights).toFixed(2)}x the ${MiB(r.weights)} weights`);
    assert.equal(r.device, "webgpu", `ran on ${r.device}${ctx}`);
    checkEmbeddings(r.embeddings, want);
    const bound = largestTensor(join(dir, "model.safetensors")) + 16 * 2 ** 20;
    assert.ok(growth < bound, `heap grew by ${MiB(growth)}, ${(growth / r.weights).toFixed(2)}x the weights file; bound ${MiB(bound)}`);
  } finally {
    await session.close();
  }
});
