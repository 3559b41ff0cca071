// Adapter and merge studio: a tiny Llama with five LoRA adapters. Sliders set a per-request mix;
// the base, the mix and (after "combine") the combined adapter run side by side on the same prompt.
import { Model } from "/pkg/index.js";
import { $, el, demo, header, wantedDevice, timed, statusLine, clearError, fmtMs } from "/common.js";

const BASE = "/fixtures/tiny/llama/";
const ADAPTERS = ["a", "b", "c", "d", "e"];
let model = null;
let loadMs = null;
const weights = Object.fromEntries(ADAPTERS.map((n) => [n, n === "a" ? 1 : 0]));
let combined = null; // { method, density, seed, adapters, ms, r }
let seq = 0;

function sliders() {
  const box = $("#sliders");
  for (const n of ADAPTERS) {
    const v = el("span", { class: "mono" }, weights[n].toFixed(2));
    const s = el("input", { type: "range", min: "-1", max: "2", step: "0.05", value: String(weights[n]), "data-adapter": n });
    s.addEventListener("input", () => {
      weights[n] = Number(s.value);
      v.textContent = weights[n].toFixed(2);
      refresh();
    });
    box.append(el("div", { class: "slider" }, el("span", {}, `adapter ${n}`), s, v));
  }
}

const mixOf = () => Object.fromEntries(Object.entries(weights).filter(([, w]) => w !== 0));
const softmax = (row) => {
  const m = Math.max(...row);
  const e = row.map((x) => Math.exp(x - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
};

/** One column: greedy continuation and the top-5 next tokens for `adapter` (a request mix). */
async function column(title, adapter, ids, maxTokens) {
  const t0 = performance.now();
  const { dims, data } = await model.logits(ids, { adapter });
  const v = dims[1];
  const lastRow = Array.from(data.subarray((dims[0] - 1) * v, dims[0] * v));
  const gen = [];
  for await (const t of model.generate(ids.map((i) => `t${i}`).join(" "), { maxTokens, adapter })) gen.push(t);
  const ms = performance.now() - t0;
  const p = softmax(lastRow);
  const top = p.map((x, i) => [i, x]).sort((a, b) => b[1] - a[1]).slice(0, 5);
  return { title, adapter, lastLogits: lastRow, ids: gen.map((t) => t.id), text: gen.map((t) => t.text).join(""), top, ms };
}

function renderColumn(c) {
  return el(
    "div",
    { class: "card out", "data-col": c.title },
    el("h2", {}, c.title),
    el("div", { class: "muted mono" }, JSON.stringify(c.adapter)),
    el("div", { class: "gen" }, c.ids.map((i) => `t${i}`).join(" ")),
    el("div", { class: "muted" }, "next token"),
    ...c.top.map(([i, p]) => el("div", { class: "tok" }, `t${i}`, el("div", { class: "bar", style: `width:${Math.round(p * 130)}px` }), p.toFixed(3))),
    el("div", { class: "status" }, `${fmtMs(c.ms)} on ${model.device}`),
  );
}

async function refresh() {
  if (!model) return;
  const my = ++seq;
  clearError();
  const ids = model.encode($("#prompt").value);
  const maxTokens = Math.max(1, Math.min(32, Number($("#maxTokens").value) || 8));
  const r = await timed("run", async () => {
    const cols = [await column("base", {}, ids, maxTokens), await column("mix", mixOf(), ids, maxTokens)];
    if (combined) cols.push(await column(`combined (${combined.method})`, "combined", ids, maxTokens));
    return cols;
  });
  if (!r || my !== seq) return;
  demo.prompt = ids;
  demo.maxTokens = maxTokens;
  demo.columns = r.value;
  demo.runMs = r.ms;
  $("#outs").replaceChildren(...r.value.map(renderColumn));
  statusLine({ device: model.device, load: loadMs && fmtMs(loadMs), "base + mix + combined": fmtMs(r.ms), "first result": demo.firstResultMs && `${fmtMs(demo.firstResultMs)} after page load` });
}

async function combine() {
  clearError();
  const adapters = mixOf();
  const method = $("#method").value;
  const density = Number($("#density").value);
  const seed = Number($("#seed").value) || 0;
  if (model.adapters.includes("combined")) model.removeAdapter("combined");
  combined = null;
  const r = await timed("combine", () => model.combineAdapters("combined", { adapters, combination: method, density, seed }));
  if (!r) {
    $("#combineStatus").textContent = "";
    await refresh();
    return;
  }
  combined = { method, density, seed, adapters, ms: r.value.ms, r: r.value.r, modules: r.value.modules };
  demo.combined = combined;
  $("#combineStatus").textContent = `${method}: rank ${r.value.r}, ${r.value.modules} modules, combined in ${fmtMs(r.value.ms)}`;
  await refresh();
}

$("#density").addEventListener("input", () => ($("#densityV").textContent = $("#density").value));
$("#combine").addEventListener("click", combine);
$("#prompt").addEventListener("input", refresh);
$("#maxTokens").addEventListener("change", refresh);
sliders();
header("Adapter and merge studio");
const r = await timed("load", async () => {
  const m = await Model.load(BASE, { device: wantedDevice() });
  for (const n of ADAPTERS) await m.addAdapter(n, `/fixtures/lora/llama/${n}/`);
  return m;
});
if (r) {
  model = r.value;
  loadMs = r.ms;
  demo.device = model.device;
  demo.loadMs = r.ms;
  demo.adapters = model.adapters;
  await refresh();
}
demo.ready = true;
