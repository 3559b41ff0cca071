// Model lifecycle through the packed npm package in headless Chromium:
// - device loss: the page destroys the model's GPUDevice (test hook in lifecycle.html); the next call
//   reloads the model on a new device with its adapters and default mix, and returns the same logits;
//   when no device can be had any more the call rejects with DEVICE and Model.load on the CPU works.
// - dispose(): repeated load/dispose does not grow GPU memory (GPUBuffers alive, counted by the page's
//   hooks) nor the wasm heap (its high-water mark) on the CPU path.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openFixturePage } from "./harness.mjs";

let session, page, logs;
before(async () => {
  session = await openFixturePage("lifecycle.html");
  ({ page, logs } = session);
});
after(async () => {
  await session?.close();
});

const close = (got, want, what) => {
  assert.equal(got.length, want.length, what);
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) <= 1e-5 + 1e-5 * Math.abs(want[i]), `${what}[${i}]: ${g} vs ${want[i]}`));
};

test("browser: a lost WebGPU device is re-created and the model keeps its adapters and mix", { timeout: 120_000 }, async () => {
  const r = await page.evaluate(() => window.taskloomDeviceLost());
  const ctx = `\n${JSON.stringify(r.error ?? {})}\n${logs.join("\n")}`;
  assert.equal(r.error, undefined, `failed${ctx}`);
  assert.equal(r.device, "webgpu", ctx);
  assert.equal(r.lostInfo.reason, "destroyed");
  assert.equal(r.deviceLostFlag, true, "Model.deviceLost after the loss");
  assert.deepEqual(r.losses, ["destroyed"], "onDeviceLost called once");
  // the mix differs from the base, so equal logits after the loss mean the mix was kept
  assert.ok(r.mixBefore.some((v, i) => Math.abs(v - r.base[i]) > 1e-3), "mix vs base");
  close(r.mixAfter, r.mixBefore, "default mix after the loss");
  close(r.aAfter, r.aBefore, "adapter a after the loss");
  close(r.mixAfter2, r.mixBefore, "default mix after a second loss");
  assert.equal(r.deviceAfter, "webgpu", "re-created on WebGPU");
  assert.ok(r.devicesAfterRecover > r.devicesAfterLoad && r.newDeviceAlive, "a new GPUDevice");
  assert.deepEqual(r.adapters, ["a", "b"]);
  assert.equal(r.deviceLostFlagAfter, false);
  assert.equal(r.noGpu?.code, "DEVICE", `no WebGPU after the loss: ${JSON.stringify(r.noGpu)}`);
  assert.match(r.noGpu.message, /lost/);
  close(r.cpuAgain, r.base, "Model.load on the CPU after a DEVICE error");
});

test("browser: repeated load/dispose does not grow GPU memory", { timeout: 180_000 }, async () => {
  const r = await page.evaluate(() => window.taskloomCycles("/fixtures/tiny/llama/", "webgpu", 6));
  const ctx = `\n${JSON.stringify(r)}\n${logs.join("\n")}`;
  assert.equal(r.error, undefined, `failed${ctx}`);
  assert.equal(r.device, "webgpu", ctx);
  // the hooks see the weights while loaded (so a leak would show) ...
  assert.ok(Math.min(...r.gpuLoaded) > 50_000, `GPU bytes while loaded${ctx}`);
  // ... and nothing stays after dispose(), cycle after cycle
  const leak = Math.max(...r.gpuAfter.slice(1)) - r.gpuAfter[0];
  assert.ok(leak <= 0, `GPU bytes alive after each dispose: ${r.gpuAfter}${ctx}`);
  assert.ok(r.gpuAfter[0] < Math.min(...r.gpuLoaded) / 2, `dispose freed the weights: ${r.gpuAfter} vs ${r.gpuLoaded}`);
});

test("browser: repeated load/dispose does not grow the wasm heap (CPU path)", { timeout: 180_000 }, async () => {
  const r = await page.evaluate(() => window.taskloomCycles("/fixtures/tiny/llama/", "cpu", 8));
  const ctx = `\n${JSON.stringify(r)}\n${logs.join("\n")}`;
  assert.equal(r.error, undefined, `failed${ctx}`);
  assert.equal(r.device, "cpu", ctx);
  // The heap cannot shrink; after the first cycles' high-water mark it must stay flat (a leak of the
  // tiny model's 85 KB of weights per cycle would grow it by several 64 KiB pages within 8 cycles).
  const w = r.wasmAfter;
  assert.ok(w[0] > 0, ctx);
  assert.equal(w.at(-1), w[2], `wasm heap after each dispose: ${w}`);
});
