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
