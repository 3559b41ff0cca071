// The packed npm package in headless Chromium: the same matmuls on WebGPU (SwiftShader here, a real
// GPU elsewhere) and on the wasm CPU path, each checked against the native CPU result.
//
// The WebGPU half never skips: no adapter, or a runtime that silently fell back to the CPU, fails.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { CASES, firstMismatch } from "./cases.js";
import { here, nativeReference, openPage, packedPackage } from "./harness.mjs";

let session, page, native, logs; // logs: the page's console and errors, shown when a test fails

before(async () => {
  native = CASES.map(nativeReference);
  session = await openPage({ "/taskloom/": packedPackage(), "/": here }, "page.html");
  ({ page, logs } = session);
});

after(async () => {
  await session?.close();
});

async function runOn(device) {
  const res = await page.evaluate((d) => window.taskloomRun(d), device);
  const context = () => `\n${JSON.stringify(res.error ?? { device: res.device, info: res.info })}\n${logs.join("\n")}`;
  return { res, context };
}

function assertMatchesNative(t, res, context) {
  let worst = 0;
  CASES.forEach((c, i) => {
    res.results[i].data.forEach((x, j) => {
      const want = native[i].data[j];
      worst = Math.max(worst, Math.abs(x - want) / Math.max(Math.abs(want), 1));
    });
    assert.deepEqual(res.results[i].dims, native[i].dims, `dims of ${JSON.stringify(c)}${context()}`);
    const bad = firstMismatch(res.results[i].data, native[i].data);
    assert.equal(bad, null, `${res.device} vs native on ${JSON.stringify(c)}: ${JSON.stringify(bad)}${context()}`);
  });
  t.diagnostic(`${res.device} (${res.info.name}, ${res.info.backend}): worst error vs native ${worst.toExponential(2)}`);
}

test("browser: device webgpu runs on WebGPU and matches native", { timeout: 120_000 }, async (t) => {
  const { res, context } = await runOn("webgpu");
  assert.equal(res.error, undefined, `Runtime.create({ device: "webgpu" }) failed${context()}`);
  assert.equal(res.device, "webgpu", `did not run on WebGPU${context()}`);
  assert.equal(res.info.backend, "webgpu", `backend${context()}`);
  assertMatchesNative(t, res, context);
});

test("browser: device auto picks WebGPU when the browser has an adapter", { timeout: 120_000 }, async () => {
  const { res, context } = await runOn("auto");
  assert.equal(res.error, undefined, `Runtime.create({ device: "auto" }) failed${context()}`);
  assert.equal(res.device, "webgpu", `auto did not pick WebGPU${context()}`);
});

test("browser: device cpu (wasm) matches native", { timeout: 120_000 }, async (t) => {
  const { res, context } = await runOn("cpu");
  assert.equal(res.error, undefined, `Runtime.create({ device: "cpu" }) failed${context()}`);
  assert.equal(res.device, "cpu");
  assertMatchesNative(t, res, context);
});
