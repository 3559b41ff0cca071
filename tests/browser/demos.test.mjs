// The three in-browser demos (web/demos/, served by scripts/serve-demos.mjs) driven in headless
// Chromium on WebGPU (SwiftShader) and on the wasm CPU path: draw / click / type like a person, then
// check every output the page shows against the native CLI (target/debug/taskloom, CPU) run on the
// same input. Saves a screenshot of each demo on each device under target/artifacts/.
//
// Env: TASKLOOM_CLI (default target/debug/taskloom, built with `cargo build -p taskloom-cli` when
// missing), TASKLOOM_MODELS (default target/models; the text demo needs minilm/ there and is skipped
// without it unless TASKLOOM_REQUIRE_MODELS=1).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { CHROMIUM_ARGS, repo, tempDir } from "./harness.mjs";
import { startDemoServer } from "../../scripts/serve-demos.mjs";

const artifacts = join(repo, "target/artifacts");
const models = process.env.TASKLOOM_MODELS ?? join(repo, "target/models");
const haveMiniLM = existsSync(join(models, "minilm/model.safetensors"));
// Native CPU vs wasm CPU / WebGPU: f32 in a different summation order; every value here is a
// logit, probability or embedding entry of order 1, where real kernel bugs show as >= 1e-2.
const TOL = 2e-4;

let server, context;

function cliPath() {
  const bin = process.env.TASKLOOM_CLI ?? join(repo, "target/debug/taskloom");
  if (!existsSync(bin)) execFileSync("cargo", ["build", "-q", "-p", "taskloom-cli"], { cwd: repo, stdio: "inherit" });
  return bin;
}

const cliCache = new Map();
/** Runs the native CLI on the CPU; parses --json output. Cached by arguments. */
function cli(args, { json = true, device = true } = {}) {
  const key = JSON.stringify(args);
  if (!cliCache.has(key)) {
    const out = execFileSync(cliPath(), [...args, ...(device ? ["--device", "cpu"] : []), ...(json ? ["--json"] : [])], {
      cwd: repo,
      encoding: "utf8",
      env: { ...process.env, TASKLOOM_MODELS: models },
      maxBuffer: 64 << 20,
      stdio: ["ignore", "pipe", "pipe"],
    });
    cliCache.set(key, json ? JSON.parse(out) : out);
  }
  return cliCache.get(key);
}

/** The F32 tensors of a safetensors file (the CLI's --dump). */
function readSafetensors(path) {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    assert.equal(t.dtype, "F32", `${path}: ${name} dtype`);
    const [s, e] = t.data_offsets;
    const bytes = buf.subarray(8 + n + s, 8 + n + e);
    out[name] = { shape: t.shape, data: Array.from(new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length))) };
  }
  return out;
}

function close(got, want, what, tol = TOL) {
  assert.equal(got.length, want.length, `${what}: length`);
  want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= tol * (1 + Math.abs(w)), `${what}: element ${i}: got ${got[i]}, want ${w}`));
}

/** A multi-task output ({ task: prediction }) from the page against the CLI's. */
function sameOutputs(got, want, what) {
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort(), `${what}: tasks`);
  for (const [task, w] of Object.entries(want)) {
    const g = got[task];
    close(g.values, w.values, `${what} ${task} values`);
    if (w.label !== undefined) {
      assert.equal(g.label, w.label, `${what} ${task} label`);
      assert.equal(g.index, w.index, `${what} ${task} index`);
      close([g.score], [w.score], `${what} ${task} score`);
      close(g.probs, w.probs, `${what} ${task} probs`);
    }
  }
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  server = await startDemoServer({ port: 0 });
  const { chromium } = await import("playwright-core");
  context = await chromium.launchPersistentContext(tempDir("taskloom-demos-"), {
    executablePath: process.env.TASKLOOM_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
  });
});

after(async () => {
  await context?.close();
  await server?.close();
});

/** Opens a demo on `device` and waits for its first result. */
async function open(path, device) {
  const page = await context.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(`${server.url}/${path}/?device=${device}`);
  try {
    await page.waitForFunction(() => window.demo?.ready === true && window.demo.busy === 0, null, { timeout: 180_000 });
  } catch (e) {
    throw new Error(`${path} on ${device} never became ready: ${e.message}\n${logs.join("\n")}`);
  }
  const ctx = () => `\n${logs.join("\n")}`;
  const state = () => page.evaluate(() => JSON.parse(JSON.stringify(window.demo)));
  const s = await state();
  assert.equal(s.error, null, `${path}: ${JSON.stringify(s.error)}${ctx()}`);
  assert.equal(s.device, device, "the device the page ran on");
  assert.ok(s.firstResultMs > 0, "time from page load to first result");
  /** Waits until the page finished more results than `n` and is idle. */
  const settle = async (n) => {
    await page.waitForFunction((k) => window.demo.results > k && window.demo.busy === 0, n, { timeout: 120_000 });
    await page.waitForTimeout(50);
    await page.waitForFunction(() => window.demo.busy === 0, null, { timeout: 120_000 });
    const st = await state();
    assert.equal(st.error, null, `${path}: ${JSON.stringify(st.error)}${ctx()}`);
    return st;
  };
  return { page, state, settle, logs, ctx };
}

const timings = [];
after(() => {
  if (timings.length) console.log(`demo timings (page load -> first result):\n${timings.join("\n")}`);
});

for (const device of ["webgpu", "cpu"]) {
  test(`demo digits on ${device}: samples, drawing and task toggles match the CLI`, { timeout: 300_000 }, async () => {
    const d = await open("digits", device);
    const digitsArgs = (pixels, tasks) => ["run", "--model", "tests/fixtures/multitask/digits", "--input", pixels.join(","), "--routing", ...(tasks ? ["--task", tasks.join(",")] : [])];
    const check = (s, what, tasks) => {
      assert.ok(s.input.some((v) => v > 0), `${what}: the input is not blank`);
      const want = cli(digitsArgs(s.input, tasks));
      sameOutputs(s.outputs, want.outputs, what);
      assert.deepEqual(s.routing, want.routing, `${what}: routing statistics`);
      assert.equal(s.resident, want.resident_bytes, `${what}: resident bytes`);
      assert.equal(s.allTasks, want.all_tasks_bytes, `${what}: all-tasks bytes`);
    };
    let s = await d.state();
    timings.push(`digits ${device}: first result ${s.firstResultMs.toFixed(0)} ms after page load (load ${s.loadMs.toFixed(0)} ms, run ${s.runMs.toFixed(1)} ms)`);
    assert.deepEqual(s.input, s.samples[0].pixels, "starts on sample 0");
    check(s, "sample 0");
    assert.equal(s.outputs.digit.label, s.samples[0].labels.digit, "sample 0 is classified right");

    // A bundled sample button.
    await d.page.click('#samples button[data-sample="3"]');
    s = await d.settle(s.results);
    assert.deepEqual(s.input, s.samples[3].pixels);
    check(s, "sample 3");

    // Draw a "7" with the mouse: top bar, then the diagonal.
    await d.page.click("#clear");
    s = await d.settle(s.results);
    const box = await d.page.locator("#pad").boundingBox();
    const at = (x, y) => [box.x + x, box.y + y];
    await d.page.mouse.move(...at(50, 40));
    await d.page.mouse.down();
    for (const [x, y] of [[120, 38], [190, 40], [170, 100], [140, 160], [115, 215]]) await d.page.mouse.move(...at(x, y), { steps: 4 });
    await d.page.mouse.up();
    s = await d.settle(s.results);
    check(s, "drawn 7");

    // Toggle two tasks off: the model reloads with the subset and holds fewer bytes.
    const allResident = s.resident;
    await d.page.uncheck('#toggles input[value="value"]');
    s = await d.settle(s.results);
    await d.page.uncheck('#toggles input[value="greater_than_four"]');
    s = await d.settle(s.results);
    assert.deepEqual([...s.tasks].sort(), ["digit", "parity"]);
    assert.ok(s.resident < allResident, `subset holds ${s.resident} bytes, all tasks ${allResident}`);
    check(s, "drawn 7, digit + parity", ["digit", "parity"]);
    await d.page.screenshot({ path: join(artifacts, `demo-digits-${device}.png`), fullPage: true });
    await d.page.close();
  });

  test(`demo studio on ${device}: adapter mixes and combinations match the CLI`, { timeout: 300_000 }, async () => {
    const d = await open("studio", device);
    const dir = tempDir("taskloom-studio-");
    const runArgs = (ids, adapters, maxTokens) => ["run", "--model", "tests/fixtures/tiny/llama", "--ids", ids.join(","), "--max-tokens", String(maxTokens), ...Object.entries(adapters).flatMap(([n, w]) => ["--adapter", `${n.includes("/") ? n : `tests/fixtures/lora/llama/${n}`}=${w}`])];
    const checkColumn = (s, col, adapters, what) => {
      const want = cli(runArgs(s.prompt, adapters, s.maxTokens));
      assert.deepEqual(col.ids, want.ids, `${what}: greedy continuation`);
      const dump = join(dir, `${cliCache.size}.safetensors`);
      cli([...runArgs(s.prompt, adapters, 0), "--dump", dump], { json: true });
      const logits = readSafetensors(dump).logits;
      const v = logits.shape[1];
      close(col.lastLogits, logits.data.slice(logits.data.length - v), `${what}: next-token logits`);
    };
    let s = await d.state();
    timings.push(`studio ${device}: first result ${s.firstResultMs.toFixed(0)} ms after page load (load ${s.loadMs.toFixed(0)} ms)`);
    assert.deepEqual(s.adapters, ["a", "b", "c", "d", "e"]);
    checkColumn(s, s.columns[0], {}, "base");
    checkColumn(s, s.columns[1], { a: 1 }, "mix a=1");

    // Move sliders: a 0, d 0.6, e 0.4 (one input event each, like dragging).
    const setSlider = async (n, v) => {
      const before = (await d.state()).results;
      await d.page.locator(`input[data-adapter="${n}"]`).evaluate((e, val) => {
        e.value = String(val);
        e.dispatchEvent(new Event("input", { bubbles: true }));
      }, v);
      return d.settle(before);
    };
    await setSlider("a", 0);
    await setSlider("d", 0.6);
    s = await setSlider("e", 0.4);
    checkColumn(s, s.columns[1], { d: 0.6, e: 0.4 }, "mix d=0.6 e=0.4");
    checkColumn(s, s.columns[0], {}, "base after the sliders");

    // Combine d and e with TIES (density 0.5), then with DARE (seed 3): the page's combined adapter
    // against `taskloom lora combine` with the same options.
    for (const [method, seed] of [["ties", 0], ["dare_linear", 3]]) {
      await d.page.selectOption("#method", method);
      await d.page.locator("#seed").fill(String(seed));
      const before = (await d.state()).results;
      await d.page.click("#combine");
      s = await d.settle(before);
      assert.equal(s.combined.method, method);
      assert.equal(s.columns.length, 3, "base, mix and combined side by side");
      const out = join(dir, `combined-${method}`);
      cli(["lora", "combine", "--model", "tests/fixtures/tiny/llama", "--adapter", "tests/fixtures/lora/llama/d=0.6", "--adapter", "tests/fixtures/lora/llama/e=0.4", "--combination", method, "--density", "0.5", "--seed", String(seed), "--out", out], { device: false });
      checkColumn(s, s.columns[2], { [out]: 1 }, `combined ${method}`);
      assert.ok(s.combined.ms >= 0 && s.combined.r > 0);
    }
    // Breadcrumbs needs the model-merging API: shown, labelled, disabled.
    assert.equal(await d.page.locator('#method option[value="breadcrumbs"]').isDisabled(), true);
    await d.page.screenshot({ path: join(artifacts, `demo-studio-${device}.png`), fullPage: true });
    // Cache API: the base and each adapter are separate entries; a reload downloads no weights.
    const cached = await d.page.evaluate(async () => (await (await caches.open("taskloom-weights-v1")).keys()).map((r) => new URL(r.url).pathname));
    for (const f of ["/fixtures/tiny/llama/model.safetensors", ...["a", "b", "c", "d", "e"].map((n) => `/fixtures/lora/llama/${n}/adapter_model.safetensors`)]) {
      assert.ok(cached.includes(f), `${f} cached separately: ${cached}`);
    }
    await d.page.close();
    const again = await context.newPage();
    const gets = [];
    again.on("request", (r) => r.method() === "GET" && r.url().endsWith(".safetensors") && gets.push(r.url()));
    await again.goto(`${server.url}/studio/?device=${device}`);
    await again.waitForFunction(() => window.demo?.ready === true && window.demo.busy === 0, null, { timeout: 180_000 });
    assert.equal(await again.evaluate(() => window.demo.error), null);
    assert.deepEqual(gets, [], "weights come from the cache on reload");
    await again.close();
  });

  test(`demo text on ${device}: task heads and semantic search match the CLI`, { timeout: 420_000 }, async (t) => {
    if (!haveMiniLM) {
      if (process.env.TASKLOOM_REQUIRE_MODELS === "1") assert.fail(`${models}/minilm is missing (scripts/fetch-models.sh)`);
      t.skip(`${models}/minilm is missing (scripts/fetch-models.sh)`);
      return;
    }
    const d = await open("text", device);
    const textArgs = (s) => ["run", "--model", "tests/fixtures/multitask/text", "--input", s];
    const embedding = (s) => cli(["run", "--model", join(models, "minilm"), "--text", s]).embedding;
    const cos = (a, b) => {
      let ab = 0, aa = 0, bb = 0;
      a.forEach((x, i) => ((ab += x * b[i]), (aa += x * x), (bb += b[i] * b[i])));
      return ab / Math.sqrt(aa * bb);
    };
    const texts = JSON.parse(readFileSync(join(repo, "web/demos/text/texts.json"), "utf8"));
    const checkSearch = (s) => {
      const q = embedding(s.query);
      const want = texts.map((text, i) => ({ i, score: cos(q, embedding(text)) })).sort((a, b) => b.score - a.score).slice(0, 5);
      assert.deepEqual(s.hits.map((h) => h.i), want.map((h) => h.i), `search "${s.query}": top 5`);
      close(s.hits.map((h) => h.score), want.map((h) => h.score), `search "${s.query}": cosine scores`);
    };
    let s = await d.state();
    timings.push(`text ${device}: first result ${s.firstResultMs.toFixed(0)} ms after page load (load ${s.loadMs.toFixed(0)} ms incl. 90 MB MiniLM)`);
    sameOutputs(s.outputs, cli(textArgs(s.sentence)).outputs, `"${s.sentence}"`);
    checkSearch(s);

    // Type a new sentence and a new query.
    const sentence = "The waiter was rude and the soup was cold, I want my money back.";
    await d.page.locator("#sentence").fill("");
    await d.page.locator("#sentence").pressSequentially(sentence, { delay: 5 });
    await d.page.waitForFunction((x) => window.demo.sentence === x && window.demo.busy === 0, sentence, { timeout: 120_000 });
    s = await d.state();
    sameOutputs(s.outputs, cli(textArgs(sentence)).outputs, `"${sentence}"`);
    const query = "wake me up early tomorrow";
    await d.page.locator("#query").fill(query);
    await d.page.waitForFunction((x) => window.demo.query === x && window.demo.busy === 0, query, { timeout: 120_000 });
    s = await d.state();
    checkSearch(s);
    assert.equal(texts[s.hits[0].i], "Set an alarm for 6:30 am.");
    await d.page.screenshot({ path: join(artifacts, `demo-text-${device}.png`), fullPage: true });
    await d.page.close();
  });
}

test("weights cache: a quota error falls back to memory with a warning, and loading still works", { timeout: 120_000 }, async () => {
  const page = await context.newPage();
  const warnings = [];
  page.on("console", (m) => m.type() === "warning" && warnings.push(m.text()));
  await page.goto(`${server.url}/index.html`);
  const r = await page.evaluate(async () => {
    const tl = await import("/pkg/index.js");
    await tl.clearCache();
    // Every put fails as when the origin's storage quota is used up.
    Cache.prototype.put = () => Promise.reject(new DOMException("quota exceeded (test)", "QuotaExceededError"));
    const gets = [];
    const origFetch = window.fetch;
    window.fetch = (u, o) => ((o?.method ?? "GET") === "GET" && String(u).endsWith(".safetensors") && gets.push(String(u)), origFetch(u, o));
    const out = {};
    const m = await tl.Model.load("/fixtures/multitask/digits/", { device: "cpu" });
    out.first = await m.run(new Array(64).fill(3));
    out.getsFirst = gets.length;
    m.dispose();
    const again = await tl.Model.load("/fixtures/multitask/digits/", { device: "cpu" });
    out.second = await again.run(new Array(64).fill(3));
    out.getsSecond = gets.length - out.getsFirst;
    again.dispose();
    out.cached = (await (await caches.open("taskloom-weights-v1")).keys()).length;
    return out;
  });
  assert.equal(r.getsFirst, 1, "the weights were downloaded once");
  assert.equal(r.getsSecond, 0, "the second load used the in-memory copy");
  assert.equal(r.cached, 0, "nothing reached the Cache API");
  assert.deepEqual(r.second, r.first);
  assert.ok(warnings.some((w) => /storage quota exceeded/.test(w) && /model\.safetensors/.test(w)), `a console warning: ${warnings}`);
  await page.close();
});
