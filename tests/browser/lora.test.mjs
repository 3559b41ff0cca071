// LoRA adapters through the packed npm package in headless Chromium, on WebGPU and on the wasm CPU
// path, against PEFT (tests/fixtures/lora/expected.json): per-request adapters, a weighted mix,
// fused and unfused, a classifier with its saved head; a bad adapter rejects with BAD_INPUT and
// leaves the model as it was.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { openFixturePage, repo } from "./harness.mjs";

let session, page, logs;
const exp = JSON.parse(readFileSync(join(repo, "tests/fixtures/lora/expected.json"), "utf8"));
const tiny = JSON.parse(readFileSync(join(repo, "tests/fixtures/tiny/llama/expected.json"), "utf8"));

before(async () => {
  session = await openFixturePage("lora.html");
  ({ page, logs } = session);
});

after(async () => {
  await session?.close();
});

function close(got, want, tol, what) {
  assert.equal(got.length, want.length, `${what}: length`);
  want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= tol + tol * Math.abs(w), `${what}: element ${i}: got ${got[i]}, want ${w}`));
}

for (const device of ["webgpu", "cpu"]) {
  test(`browser: LoRA adapters on ${device} match PEFT`, { timeout: 180_000 }, async () => {
    const r = await page.evaluate((d) => window.taskloomLora(d), device);
    const ctx = `\n${JSON.stringify(r.error ?? {})}\n${logs.join("\n")}`;
    assert.equal(r.error, undefined, `failed${ctx}`);
    assert.equal(r.device, device);
    assert.deepEqual(r.adapters, ["a", "b", "c"]);
    close(r.a, exp.adapters["llama/a"].logits, 1e-5, "adapter a");
    close(r.c, exp.adapters["llama/c"].logits, 1e-5, "adapter c");
    close(r.multi, exp.multi_adapter.logits, 1e-5, "a·0.7 + b·0.3");
    close(r.multiFused, exp.multi_adapter.logits, 1e-5, "a·0.7 + b·0.3 fused");
    close(r.base, tiny.logits.flat(), 1e-4, "base after unfuse");
    close(r.baseWhileFused, r.base, 1e-5, "base request while fused");
    assert.equal(r.bad?.code, "BAD_INPUT", `bad adapter: ${JSON.stringify(r.bad)}`);
    assert.match(r.bad.message, /nan-weight|bad/);
    assert.deepEqual(r.afterBad, ["a", "b", "c"]);
    assert.deepEqual(r.afterRemove, ["a", "c"]);
    const cls = exp.adapters["bert-cls/a"];
    close(r.cls.a, cls.logits, 1e-5, "classifier with adapter a");
    close(r.cls.base, cls.base_logits, 1e-5, "classifier base");
    assert.deepEqual(r.cls.labels, ["negative", "neutral", "positive"]);
  });
}
