// `npm pack` of pkg/ installed into a scratch Vite app (tests/browser/pkg-vite-app/), built with
// `vite build` (the root devDependency), served on 127.0.0.1 and opened in headless Chromium: the
// digits model on the main thread and in a Worker (taskloom/worker) must match PyTorch's outputs
// (tests/fixtures/multitask/digits/expected.json), and bad input (a wrong file, corrupt weights, an
// unknown task, aborted loads) must reject with the right `code` while the page stays usable.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { CHROMIUM_ARGS, here, repo, serve, tempDir } from "./harness.mjs";

let server, context, page, logs;
const exp = JSON.parse(readFileSync(join(repo, "tests/fixtures/multitask/digits/expected.json"), "utf8").replaceAll(":Infinity", ":null"));

before(async () => {
  // The tarball, exactly as `npm publish` would upload it.
  const packDir = tempDir("taskloom-vite-pack-");
  const name = execFileSync("npm", ["pack", "--silent", "--pack-destination", packDir], { cwd: join(repo, "pkg"), encoding: "utf8" }).trim().split("\n").pop();
  const tgz = join(packDir, name);
  // A scratch app: its own package.json, the tarball installed with npm (taskloom has no
  // dependencies, so nothing is fetched), built by the repo's vite.
  const app = tempDir("taskloom-vite-app-");
  cpSync(join(here, "pkg-vite-app"), app, { recursive: true });
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "taskloom-vite-scratch", private: true, type: "module" }, null, 2));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--offline", tgz], { cwd: app, stdio: ["ignore", "ignore", "inherit"] });
  assert.ok(existsSync(join(app, "node_modules/taskloom/dist/taskloom_web_bg.wasm")), "the installed package holds the wasm");
  execFileSync(process.execPath, [join(repo, "node_modules/vite/bin/vite.js"), "build"], { cwd: app, stdio: ["ignore", "inherit", "inherit"] });
  const assets = readdirSync(join(app, "dist/assets"));
  assert.ok(assets.some((f) => f.endsWith(".wasm")), `vite emitted the wasm: ${assets}`);
  server = await serve({ "/fixtures/": join(repo, "tests/fixtures"), "/": join(app, "dist") });
  const { chromium } = await import("playwright-core");
  context = await chromium.launchPersistentContext(tempDir("taskloom-chromium-"), {
    executablePath: process.env.TASKLOOM_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  page = await context.newPage();
  logs = [];
  page.on("console", (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(`${server.url}/index.html`);
  await page.waitForFunction(() => window.appReady === true, null, { timeout: 30_000 });
});

after(async () => {
  await context?.close();
  await server?.close();
});

function close(got, want, tol, what) {
  assert.equal(got.length, want.length, `${what}: length`);
  want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= tol + tol * Math.abs(w), `${what}: element ${i}: got ${got[i]}, want ${w}`));
}

/** The digits outputs for held-out sample 0 against PyTorch (expected.json). */
function checkDigits(out, what) {
  const i = exp.samples[0].heldout_index;
  const tol = exp.tolerance ?? 1e-5;
  for (const [task, want] of Object.entries(exp.outputs)) {
    const got = out[task];
    assert.ok(got, `${what}: task ${task}`);
    if (want.values) close(got.values, want.values[i], tol, `${what} ${task}`);
    else {
      close(got.values, want.logits[i], tol, `${what} ${task}`);
      assert.equal(got.label, want.label_names[i], `${what} ${task} label`);
    }
  }
}

for (const device of ["webgpu", "cpu"]) {
  test(`vite app (packed tarball) on ${device}: main thread, Worker, bad input`, { timeout: 240_000 }, async () => {
    const r = await page.evaluate((d) => window.runApp(d).catch((e) => ({ error: { code: e.code, message: e.message } })), device);
    const ctx = `\n${JSON.stringify(r.error ?? {})}\n${logs.join("\n")}`;
    assert.equal(r.error, undefined, `failed${ctx}`);
    assert.deepEqual(r.input, exp.inputs[exp.samples[0].heldout_index], "sample 0 is held-out input heldout_index");
    assert.equal(r.mainDevice, device);
    assert.equal(r.workerDevice, device);
    checkDigits(r.main, "main thread");
    checkDigits(r.worker, "worker");
    assert.deepEqual(r.worker, r.main, "the worker gives the main thread's outputs");
    assert.deepEqual([...r.workerTasks].sort(), [...exp.tasks].sort());
    assert.ok(r.workerResident > 0);
    assert.deepEqual(r.workerAdapters, ["a"]);
    assert.equal(r.workerGen.length, 6);
    assert.deepEqual(r.workerGen, r.mainGen, "worker generate() streams the main thread's tokens");
    assert.deepEqual(r.workerLogits, r.mainLogits, "worker logits() with an adapter mix");
    assert.ok(r.progressLast.allLoaded >= r.progressLast.loaded && r.progressLast.allLoaded === r.progressLast.allTotal, `total progress: ${JSON.stringify(r.progressLast)}`);
    // Errors: the right code and subclass, a message naming the problem.
    const want = {
      workerAborted: ["ABORTED", /abort/i],
      workerUnknownTask: ["BAD_INPUT", /no-such-task/],
    };
    for (const [k, [code, re]] of Object.entries(want)) {
      assert.equal(r[k].code, code, `${k}: ${JSON.stringify(r[k])}`);
      assert.equal(r[k].isTaskloom, true, `${k} is a TaskloomError`);
      assert.match(r[k].message, re, k);
    }
    const bad = {
      wrongFile: ["BAD_INPUT", /taskloom\.json/],
      truncated: ["BAD_INPUT", /model\.safetensors/],
      badHeader: ["BAD_INPUT", /model\.safetensors/],
      unknownTaskLoad: ["BAD_INPUT", /no-such-task/],
      unknownTaskRun: ["BAD_INPUT", /no-such-task/],
      notPixels: ["BAD_INPUT", /input/],
      abortedBefore: ["ABORTED", /abort/i],
      abortedDuring: ["ABORTED", /abort/i],
      abortedRun: ["ABORTED", /abort/i],
      missing: ["IO", /404/],
    };
    for (const [k, [code, re]] of Object.entries(bad)) {
      const e = r.bad[k];
      assert.equal(e.code, code, `${k}: ${JSON.stringify(e)}${ctx}`);
      assert.equal(e.name, "TaskloomError", k);
      assert.equal(e.isTaskloom, true, `${k} is a TaskloomError`);
      assert.match(e.message, re, `${k}: ${e.message}`);
    }
    assert.equal(r.bad.wrongFile.isBadInput, true, "BAD_INPUT errors are BadInputError");
    assert.equal(r.bad.abortedDuring.isAborted, true, "ABORTED errors are AbortedError");
    // Still usable after every failure.
    assert.deepEqual(r.after, r.main, "the loaded model still runs");
    assert.deepEqual(r.afterReload, r.main, "a fresh load still works");
    assert.ok(!logs.some((l) => l.startsWith("pageerror")), `no uncaught page errors${ctx}`);
  });
}
