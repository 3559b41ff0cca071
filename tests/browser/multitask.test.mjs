// Multi-task models (taskloom.json) through the packed npm package in headless Chromium, on WebGPU
// and on the wasm CPU path, against PyTorch (tests/fixtures/multitask/*/expected.json): the trained
// digits model's predictions on held-out inputs, a building block with routing statistics, a
// one-task load with fewer resident bytes and the same outputs, an unknown task → BAD_INPUT.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { here, openFixturePage, repo } from "./harness.mjs";

let session, page, logs;
// The trained models' expected.json writes a regression task's label margin as a bare `Infinity`
// (not JSON); read as null (unused here).
const fixture = (f) => JSON.parse(readFileSync(join(repo, `tests/fixtures/multitask/${f}/expected.json`), "utf8").replaceAll(":Infinity", ":null"));

before(async () => {
  session = await openFixturePage("multitask.html");
  ({ page, logs } = session);
});

after(async () => {
  await session?.close();
});

function close(got, want, tol, what) {
  assert.equal(got.length, want.length, `${what}: length`);
  want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= tol + tol * Math.abs(w), `${what}: element ${i}: got ${got[i]}, want ${w}`));
}

/** One input's `{ task: output }` against row `i` of expected.json's outputs. */
function check(out, exp, i, tol, what) {
  for (const [task, want] of Object.entries(exp.outputs)) {
    if (!(task in out)) continue;
    const got = out[task];
    if (want.values) {
      close(got.values, want.values[i], tol, `${what} ${task} values`);
    } else if (Array.isArray(got)) {
      got.forEach((p, j) => {
        close(p.values, want.logits[i][j], tol, `${what} ${task} token ${j}`);
        assert.equal(p.index, want.labels[i][j], `${what} ${task} token ${j} label`);
      });
    } else {
      close(got.values, want.logits[i], tol, `${what} ${task} logits`);
      assert.equal(got.index, want.labels[i], `${what} ${task} label`);
      assert.equal(got.label, want.label_names[i], `${what} ${task} label name`);
      close([got.score], [want.scores[i]], tol, `${what} ${task} score`);
    }
  }
}

const cases = [
  // The trained model: the first 60 held-out inputs, one request each (the whole set runs natively).
  { folder: "digits", count: 60 },
  // Every input of two blocks: MoE routing (statistics summed over the requests), MMoE with
  // regression and token-level heads.
  { folder: "blocks/vit-moe", count: 4 },
  { folder: "blocks/vit-mmoe", count: 4 },
  // Input-routed task deltas (factored, router on the device) and MTLoRA branches on an hf trunk.
  { folder: "blocks/vit-deltas", count: 6 },
  { folder: "blocks/bert-lora", count: 5 },
];

for (const device of ["webgpu", "cpu"]) {
  for (const { folder, count } of cases) {
    test(`browser: multi-task ${folder} on ${device} matches PyTorch`, { timeout: 240_000 }, async (t) => {
      if (!existsSync(join(repo, `tests/fixtures/multitask/${folder}/expected.json`))) {
        t.skip(`tests/fixtures/multitask/${folder} is not there yet`);
        return;
      }
      const exp = fixture(folder);
      const tol = exp.tolerance ?? 1e-5;
      const r = await page.evaluate((a) => window.taskloomMultitask(...a), [device, folder, count]);
      const ctx = `\n${JSON.stringify(r.error ?? {})}\n${logs.join("\n")}`;
      assert.equal(r.error, undefined, `failed${ctx}`);
      assert.equal(r.device, device);
      assert.equal(r.kind, "multitask");
      assert.deepEqual([...r.tasks].sort(), [...exp.tasks].sort());
      assert.equal(r.outputs.length, Math.min(count, exp.inputs.length));
      r.outputs.forEach((o, i) => check(o, exp, i, tol, `${folder} input ${i}`));
      check(r.one, exp, 0, tol, `${folder} one-task load`);
      assert.ok(r.oneResident < r.resident, `one task: ${r.oneResident} resident bytes, all: ${r.resident}`);
      assert.equal(r.oneAll, r.resident);
      assert.equal(r.bad?.code, "BAD_INPUT", `unknown task: ${JSON.stringify(r.bad)}`);
      assert.match(r.bad.message, /no-such-task/);
      if (exp.routing && count >= exp.inputs.length) assert.deepEqual(r.routing, exp.routing, "routing statistics");
    });
  }
}
