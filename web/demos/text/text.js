// Text tasks: MiniLM (the packaged all-MiniLM-L6-v2) with the text multi-task model's heads
// (tests/fixtures/multitask/text: intent, sentiment, valence), and semantic search over texts.json
// with the same trunk's pooled, normalized embeddings. MiniLM's files are fetched once and handed to
// both the multi-task model (as its trunk) and the encoder used for `embed`.
import { Model, fetchModelFiles } from "/pkg/index.js";
import { $, el, demo, header, wantedDevice, timed, statusLine, clearError, fmtMs, fmtBytes } from "/common.js";

let tasks = null; // the multi-task model
let encoder = null; // MiniLM alone, for embed()
let texts = [];
let textEmb = [];
let loadMs = null;

const debounce = (f, ms) => {
  let t = null;
  return (...a) => {
    clearTimeout(t);
    t = setTimeout(() => f(...a), ms);
  };
};

async function classify() {
  if (!tasks) return;
  clearError();
  const sentence = $("#sentence").value;
  const r = await timed("run", () => tasks.run(sentence));
  if (!r || $("#sentence").value !== sentence) return;
  demo.sentence = sentence;
  demo.outputs = r.value;
  demo.runMs = r.ms;
  const rows = [el("tr", {}, el("th", {}, "task"), el("th", {}, "prediction"), el("th", {}, "score"), el("th", {}, "runner-up"))];
  for (const [t, o] of Object.entries(r.value)) {
    const second = o.probs ? o.probs.map((p, i) => [i, p]).sort((a, b) => b[1] - a[1])[1] : null;
    const labels = tasks._labels?.[t];
    rows.push(
      el(
        "tr",
        { "data-task": t },
        el("td", {}, t),
        el("td", { class: "mono pred" }, o.label ?? o.values.map((v) => v.toFixed(3)).join(", ")),
        el("td", { class: "mono" }, o.score == null ? "" : o.score.toFixed(3)),
        el("td", { class: "mono muted" }, second && labels ? `${labels[second[0]]} (${second[1].toFixed(3)})` : ""),
      ),
    );
  }
  $("#preds").replaceChildren(...rows);
  $("#runStatus").textContent = `${Object.keys(r.value).length} tasks in one pass: ${fmtMs(r.ms)} on ${tasks.device}`;
  status();
}

const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);

async function search() {
  if (!encoder) return;
  clearError();
  const q = $("#query").value;
  const r = await timed("embed", () => encoder.embed(q));
  if (!r || $("#query").value !== q) return;
  const qe = r.value;
  const scored = texts.map((t, i) => ({ i, text: t, score: dot(qe, textEmb[i]) / Math.sqrt(dot(qe, qe) * dot(textEmb[i], textEmb[i])) })).sort((a, b) => b.score - a.score);
  demo.query = q;
  demo.hits = scored.slice(0, 5);
  demo.searchMs = r.ms;
  $("#hits").replaceChildren(...demo.hits.map((h) => el("li", { "data-index": h.i }, el("span", { class: "mono" }, h.score.toFixed(3)), "  ", h.text)));
  $("#searchStatus").textContent = `query embedded in ${fmtMs(r.ms)} on ${encoder.device}; cosine against ${texts.length} precomputed embeddings`;
  status();
}

function status() {
  statusLine({ device: tasks?.device, load: loadMs && fmtMs(loadMs), "first result": demo.firstResultMs && `${fmtMs(demo.firstResultMs)} after page load` });
}

$("#sentence").addEventListener("input", debounce(classify, 200));
$("#query").addEventListener("input", debounce(search, 200));
header("Text tasks (MiniLM + heads)");
texts = await (await fetch("./texts.json")).json();
$("#list").replaceChildren(...texts.map((t) => el("li", {}, t)));
const r = await timed("load", async () => {
  const device = wantedDevice();
  const files = await fetchModelFiles("/models/minilm/", { onProgress: (p) => ($("#progress").textContent = `${p.file}: ${fmtBytes(p.loaded)}${p.total ? " of " + fmtBytes(p.total) : ""}`) });
  const t = await Model.load("/fixtures/multitask/text/", { device, trunk: files });
  const e = await Model.load(files, { device });
  return [t, e];
});
if (r) {
  [tasks, encoder] = r.value;
  loadMs = r.ms;
  demo.device = tasks.device;
  demo.loadMs = r.ms;
  // Label names for the runner-up column.
  const spec = await (await fetch("/fixtures/multitask/text/taskloom.json")).json();
  tasks._labels = Object.fromEntries(Object.entries(spec.tasks).map(([k, v]) => [k, v.labels]));
  $("#progress").textContent = "";
  await classify();
  const e = await timed("embed list", () => encoder.embed(texts));
  if (e) {
    textEmb = e.value;
    demo.listEmbedMs = e.ms;
    await search();
  }
}
demo.ready = true;
