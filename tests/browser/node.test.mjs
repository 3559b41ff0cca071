// The packed npm package imported in Node (no browser): CPU fallback, error codes, native agreement.

import assert from "node:assert/strict";
import { before, test } from "node:test";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { CASES, firstMismatch, runCases } from "./cases.js";
import { nativeReference, packedPackage } from "./harness.mjs";

let tl; // the package's exports
let native; // [{ dims, data }] per case

before(async () => {
  tl = await import(pathToFileURL(join(packedPackage(), "index.js")).href);
  native = CASES.map(nativeReference);
});

test("node: device auto falls back to the CPU and matches native", async () => {
  const rt = await tl.Runtime.create({ device: "auto" });
  assert.equal(rt.device, "cpu");
  assert.equal(rt.info().kind, "cpu");
  const got = await runCases(rt);
  CASES.forEach((c, i) => {
    assert.deepEqual(got[i].dims, native[i].dims, `dims of ${JSON.stringify(c)}`);
    assert.equal(firstMismatch(got[i].data, native[i].data), null, `values of ${JSON.stringify(c)}`);
  });
  rt.dispose();
});

test("node: device webgpu rejects with DEVICE (no navigator.gpu)", async () => {
  await assert.rejects(tl.Runtime.create({ device: "webgpu" }), (e) => {
    assert.ok(e instanceof tl.TaskloomError, `not a TaskloomError: ${e}`);
    assert.ok(e instanceof Error);
    assert.equal(e.code, "DEVICE");
    return true;
  });
});

test("node: bad input is BAD_INPUT, never a crash", async () => {
  const rt = await tl.Runtime.create({ device: "cpu" });
  const code = (f) => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof tl.TaskloomError, `not a TaskloomError: ${e?.stack ?? e}`);
      return e.code;
    }
    return "no error";
  };
  // dims that do not match the data length
  assert.equal(code(() => rt.upload(new Float32Array(5), [2, 3])), "BAD_INPUT");
  assert.equal(code(() => rt.upload(new Float32Array(6), [2, -3])), "BAD_INPUT");
  assert.equal(code(() => rt.upload(new Float32Array(6), "2x3")), "BAD_INPUT");
  assert.equal(code(() => rt.upload("abc", [3])), "BAD_INPUT");
  const a = rt.upload(new Float32Array(6), [2, 3]);
  assert.equal(code(() => rt.matmul(a, a)), "BAD_INPUT"); // inner dims 3 vs 2
  assert.equal(code(() => rt.matmul(a, {})), "BAD_INPUT");
  assert.equal(code(() => rt.matmul(a, a, { transB: "yes" })), "BAD_INPUT");
  assert.deepEqual(rt.matmul(a, a, { transB: true }).dims, [2, 2]);
  await assert.rejects(tl.Runtime.create({ device: "tpu" }), { code: "BAD_INPUT" });
  a.dispose();
  await assert.rejects(a.read(), { code: "BAD_INPUT" });
  const other = await tl.Runtime.create({ device: "cpu" });
  const b = other.upload([1, 2], [1, 2]);
  assert.equal(code(() => rt.matmul(b, b, { transB: true })), "BAD_INPUT"); // another runtime's tensor
  rt.dispose();
  assert.equal(code(() => rt.device), "BAD_INPUT");
});
