// The scratch Vite app: imports the packed package by name, runs the digits multi-task model on the
// main thread and in a Worker (taskloom/worker), and feeds the JS API bad input: a wrong file,
// corrupt weights, an unknown task, an aborted load (before and during), a bad adapter. Results go
// to window.result for tests/browser/pkg-vite.test.mjs; the page must stay usable after each failure.
import { Model, TaskloomError, BadInputError, AbortedError, fetchModelFiles } from "taskloom";
import { createWorker } from "taskloom/worker";

const MODEL = "/fixtures/multitask/digits/";
const err = (e) => ({ name: e?.name, code: e?.code ?? null, message: String(e?.message ?? e), isTaskloom: e instanceof TaskloomError, isBadInput: e instanceof BadInputError, isAborted: e instanceof AbortedError });
async function rejects(f) {
  try {
    await f();
    return { resolved: true };
  } catch (e) {
    return err(e);
  }
}

window.runApp = async (device) => {
  const out = { device };
  const exp = JSON.parse((await (await fetch(`${MODEL}expected.json`)).text()).replaceAll(":Infinity", ":null"));
  const input = exp.samples[0].pixels;
  out.input = input;

  // Main thread.
  const progress = [];
  const m = await Model.load(MODEL, { device, onProgress: (p) => progress.push(p) });
  out.mainDevice = m.device;
  out.main = await m.run(input);
  out.progressLast = progress.at(-1);

  // A worker.
  const tl = createWorker();
  const wm = await tl.load(MODEL, { device });
  out.workerDevice = wm.device;
  out.workerTasks = wm.tasks;
  out.worker = await wm.run(input);
  out.workerResident = await wm.residentBytes();
  const ac = new AbortController();
  const pending = tl.load(MODEL, { device, signal: ac.signal });
  ac.abort();
  out.workerAborted = await rejects(() => pending);
  out.workerUnknownTask = await rejects(() => wm.run(input, { tasks: ["no-such-task"] }));
  out.workerAfter = await wm.run(input);
  wm.dispose();
  // A decoder with an adapter in the worker: streamed tokens and logits, as on the main thread.
  const ids = [1, 5, 17, 3];
  const lm = await tl.load("/fixtures/tiny/llama/", { device });
  await lm.addAdapter("a", "/fixtures/lora/llama/a/");
  out.workerAdapters = lm.adapters;
  out.workerGen = [];
  for await (const t of lm.generate("t1 t5 t17 t3", { maxTokens: 6, adapter: { a: 0.5 } })) out.workerGen.push(t.id);
  out.workerLogits = Array.from((await lm.logits(ids, { adapter: { a: 0.5 } })).data);
  lm.dispose();
  const mainLm = await Model.load("/fixtures/tiny/llama/", { device });
  await mainLm.addAdapter("a", "/fixtures/lora/llama/a/");
  out.mainGen = [];
  for await (const t of mainLm.generate("t1 t5 t17 t3", { maxTokens: 6, adapter: { a: 0.5 } })) out.mainGen.push(t.id);
  out.mainLogits = Array.from((await mainLm.logits(ids, { adapter: { a: 0.5 } })).data);
  mainLm.dispose();
  tl.terminate();

  // Bad input through the JS API.
  const files = await fetchModelFiles(MODEL);
  out.bad = {};
  // A wrong file: the digits expected.json handed over as the model's taskloom.json.
  out.bad.wrongFile = await rejects(async () => Model.load({ "taskloom.json": new TextEncoder().encode(JSON.stringify({ samples: [] })), "model.safetensors": files["model.safetensors"] }, { device }));
  // Corrupt weights: the safetensors file cut in half.
  const w = files["model.safetensors"];
  out.bad.truncated = await rejects(() => Model.load({ "taskloom.json": files["taskloom.json"], "model.safetensors": w.slice(0, w.length >> 1) }, { device }));
  // Corrupt weights: a header length pointing past the end.
  const bogus = w.slice();
  new DataView(bogus.buffer).setBigUint64(0, 1n << 40n, true);
  out.bad.badHeader = await rejects(() => Model.load({ "taskloom.json": files["taskloom.json"], "model.safetensors": bogus }, { device }));
  out.bad.unknownTaskLoad = await rejects(() => Model.load(MODEL, { device, tasks: ["no-such-task"] }));
  out.bad.unknownTaskRun = await rejects(() => m.run(input, { tasks: ["no-such-task"] }));
  out.bad.notPixels = await rejects(() => m.run({ nope: 1 }));
  // Aborted loads: before the call, and while the files download.
  out.bad.abortedBefore = await rejects(() => Model.load(MODEL, { device, signal: AbortSignal.abort() }));
  const ac2 = new AbortController();
  const during = Model.load(MODEL, { device, signal: ac2.signal, onProgress: () => ac2.abort() });
  out.bad.abortedDuring = await rejects(() => during);
  out.bad.abortedRun = await rejects(() => m.run(input, { signal: AbortSignal.abort() }));
  out.bad.missing = await rejects(() => Model.load("/fixtures/multitask/no-such-model/", { device }));
  // The page is still usable: the same model, and a fresh load, give the same result.
  out.after = await m.run(input);
  const again = await Model.load(MODEL, { device });
  out.afterReload = await again.run(input);
  again.dispose();
  m.dispose();
  return out;
};
document.getElementById("log").textContent = "ready";
window.appReady = true;
