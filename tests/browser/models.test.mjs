// Tiny transformers-made decoders (dense Llama, sparse Mixtral / Qwen2-MoE, DeepSeek-V3 MLA + MoE) loaded by URL through the packed
// npm package in headless Chromium, on WebGPU and on the wasm CPU path: logits within 1e-4 of
// transformers' (tests/fixtures/tiny/*/expected.json). WebGPU never skips silently.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { openFixturePage, repo } from "./harness.mjs";

let session, page, logs;

before(async () => {
  session = await openFixturePage("models.html");
  ({ page, logs } = session);
});

after(async () => {
  await session?.close();
});

for (const name of ["llama", "mixtral", "qwen2-moe", "deepseek-v3", "deepseek-v3-plain"]) {
  for (const device of ["webgpu", "cpu"]) {
    test(`browser: tiny ${name} on ${device} matches transformers`, { timeout: 120_000 }, async () => {
      const res = await page.evaluate(([n, d]) => window.taskloomLogits(n, d), [name, device]);
      const ctx = `\n${JSON.stringify(res.error ?? {})}\n${logs.join("\n")}`;
      assert.equal(res.error, undefined, `load/run failed${ctx}`);
      assert.equal(res.device, device, `ran on ${res.device}${ctx}`);
      assert.ok(res.files.includes("model.safetensors"), `progress events: ${res.files}`);
      const want = JSON.parse(readFileSync(join(repo, "tests/fixtures/tiny", name, "expected.json"), "utf8"));
      const flat = want.logits.flat();
      assert.deepEqual(res.dims, [want.logits.length, want.logits[0].length]);
      flat.forEach((w, i) => {
        const g = res.data[i];
        assert.ok(Math.abs(g - w) <= 1e-4 + 1e-4 * Math.abs(w), `logit ${i}: got ${g}, want ${w} on ${device}`);
      });
    });
  }
}

// Device limits: a forced small binding limit (maxBindingBytes) splits the tiny models' [64, 32]
// tables and MLP weights (8192 bytes) into row blocks on WebGPU; logits equal the CPU path's.
const CPU_LOGITS = new Map();
async function logits(name, device, limits) {
  const res = await page.evaluate(([n, d, l]) => window.taskloomLogits(n, d, l), [name, device, limits]);
  assert.equal(res.error, undefined, `${name} on ${device} ${JSON.stringify(limits)}: ${JSON.stringify(res.error ?? {})}\n${logs.join("\n")}`);
  assert.equal(res.device, device);
  return res;
}

for (const name of ["llama", "llama-untied"]) {
  test(`browser: tiny ${name} with weights split to a 3000-byte binding limit on webgpu equals the cpu path`, { timeout: 120_000 }, async () => {
    if (!CPU_LOGITS.has(name)) CPU_LOGITS.set(name, await logits(name, "cpu", {}));
    const cpu = CPU_LOGITS.get(name);
    const split = await logits(name, "webgpu", { maxBindingBytes: 3000 });
    assert.deepEqual(split.dims, cpu.dims);
    split.data.forEach((g, i) => {
      const w = cpu.data[i];
      assert.ok(Math.abs(g - w) <= 1e-4 + 1e-4 * Math.abs(w), `logit ${i}: split webgpu ${g}, cpu ${w}`);
    });
    // The CPU path never splits, so the option changes nothing there.
    const cpuLimited = await logits(name, "cpu", { maxBindingBytes: 3000 });
    assert.deepEqual(cpuLimited.data, cpu.data);
  });
}

test("browser: a binding limit below what can be split rejects the load with OUT_OF_MEMORY naming the tensor", { timeout: 60_000 }, async () => {
  // 64 bytes: below a [32] norm weight (vectors are not split) and one 128-byte table row.
  const res = await page.evaluate(() => window.taskloomLogits("llama", "webgpu", { maxBindingBytes: 64 }));
  assert.equal(res.error?.code, "OUT_OF_MEMORY", JSON.stringify(res));
  // Whichever tensor loads first names itself: a [32] norm (128 bytes, not split) or a matrix whose
  // 128-byte rows cannot be split below 64 bytes.
  assert.match(res.error.message, /'model\.[a-z_.0-9]+\.weight' \((\[\d+\]; only 2-D weights are split to fit|one row of 128 bytes; a tensor is split only between rows)\) needs \d+ bytes in one binding, above this adapter's limit of 64 bytes/);
  const bad = await page.evaluate(() => window.taskloomLogits("llama", "webgpu", { maxBindingBytes: 2.5 }));
  assert.equal(bad.error?.code, "BAD_INPUT", JSON.stringify(bad));
});

test("browser: Runtime.info() reports features and limits on webgpu and cpu", { timeout: 60_000 }, async () => {
  const MAX_SAFE = Number.MAX_SAFE_INTEGER;
  const gpu = await page.evaluate(() => window.taskloomInfo({ device: "webgpu" }));
  assert.equal(gpu.error, undefined, JSON.stringify(gpu.error));
  const g = gpu.info;
  assert.equal(g.kind, "gpu");
  assert.equal(g.backend, "webgpu");
  for (const f of ["shader_f16", "subgroups"]) assert.equal(typeof g[f], "boolean", `${f}: ${g[f]}`);
  // WebGPU's guaranteed minimums: 128 MiB per storage binding, 256 MiB per buffer.
  assert.ok(Number.isSafeInteger(g.max_storage_buffer_binding_size) && g.max_storage_buffer_binding_size >= 128 << 20, `binding ${g.max_storage_buffer_binding_size}`);
  assert.ok(Number.isSafeInteger(g.max_buffer_size) && g.max_buffer_size >= 256 << 20, `buffer ${g.max_buffer_size}`);
  assert.ok(g.max_storage_buffer_binding_size <= g.max_buffer_size);
  assert.ok(g.max_compute_invocations_per_workgroup >= 256 && g.max_compute_workgroup_storage_size >= 16384);
  // maxBindingBytes lowers the limit in force and never raises it.
  const low = await page.evaluate(() => window.taskloomInfo({ device: "webgpu", maxBindingBytes: 3000 }));
  assert.equal(low.info?.max_storage_buffer_binding_size, 3000, JSON.stringify(low));
  assert.equal(low.info.max_buffer_size, g.max_buffer_size);
  const high = await page.evaluate(() => window.taskloomInfo({ device: "webgpu", maxBindingBytes: 2 ** 50 }));
  assert.equal(high.info?.max_storage_buffer_binding_size, g.max_storage_buffer_binding_size, JSON.stringify(high));
  const cpu = await page.evaluate(() => window.taskloomInfo({ device: "cpu" }));
  assert.equal(cpu.info?.kind, "cpu", JSON.stringify(cpu));
  assert.equal(cpu.info.shader_f16, false);
  assert.equal(cpu.info.subgroups, false);
  assert.equal(cpu.info.max_storage_buffer_binding_size, MAX_SAFE);
  assert.equal(cpu.info.max_buffer_size, MAX_SAFE);
});
