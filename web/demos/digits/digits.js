// Multi-task digits: a task-routed MoE ViT (tests/fixtures/multitask/digits, trained on
// scikit-learn's 8x8 digits; pixel values 0..16). Drawing -> 8x8 input -> every task's prediction,
// the gate's expert choices per task, and the resident memory of the loaded task subset.
import { Model } from "/pkg/index.js";
import { $, el, demo, header, wantedDevice, timed, statusLine, clearError, fmtMs, fmtBytes } from "/common.js";

const MODEL = "/fixtures/multitask/digits/";
const ALL_TASKS = ["digit", "parity", "greater_than_four", "value"];
const N = 8; // input side
const pad = $("#pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const small = $("#small").getContext("2d");

let model = null;
let loadMs = null;
let pixels = new Array(N * N).fill(0);
let running = false;
let again = false;

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
}

/** The drawing averaged over 8x8 blocks, as the digits data set's 0..16 integer counts. */
function downsample() {
  const { data } = ctx.getImageData(0, 0, pad.width, pad.height);
  const cell = pad.width / N;
  const out = [];
  for (let y = 0; y < N; y++) {
    for (let x = 0; x < N; x++) {
      let sum = 0;
      for (let j = 0; j < cell; j++) for (let i = 0; i < cell; i++) sum += data[((y * cell + j) * pad.width + x * cell + i) * 4] / 255;
      out.push(Math.round((16 * sum) / (cell * cell)));
    }
  }
  return out;
}

/** Paints 8x8 values (0..16) onto the pad as blocks (for the bundled samples). */
function paintPixels(p) {
  const cell = pad.width / N;
  for (let i = 0; i < N * N; i++) {
    const v = Math.round((p[i] / 16) * 255);
    ctx.fillStyle = `rgb(${v},${v},${v})`;
    ctx.fillRect((i % N) * cell, Math.floor(i / N) * cell, cell, cell);
  }
}

function showSmall(p) {
  const img = small.createImageData(N, N);
  p.forEach((v, i) => {
    const g = Math.round((v / 16) * 255);
    img.data.set([g, g, g, 255], i * 4);
  });
  small.putImageData(img, 0, 0);
}

function renderPredictions(out) {
  const rows = [el("tr", {}, el("th", {}, "task"), el("th", {}, "prediction"), el("th", {}, "score"), el("th", {}, ""))];
  for (const t of ALL_TASKS) {
    const o = out?.[t];
    if (!o) {
      rows.push(el("tr", { class: "muted" }, el("td", {}, t), el("td", {}, "not loaded"), el("td"), el("td")));
      continue;
    }
    const pred = o.label ?? o.values.map((v) => v.toFixed(3)).join(", ");
    const score = o.score === undefined || o.score === null ? "" : o.score.toFixed(3);
    const bar = o.score === undefined || o.score === null ? "" : el("div", { class: "bar", style: `width:${Math.round(o.score * 120)}px` });
    rows.push(el("tr", { "data-task": t }, el("td", {}, t), el("td", { class: "mono pred" }, pred), el("td", { class: "mono" }, score), el("td", {}, bar)));
  }
  $("#preds").replaceChildren(...rows);
}

function renderHeatmap(routing) {
  const experts = 8;
  let max = 1;
  for (const blocks of Object.values(routing)) for (const c of Object.values(blocks)) max = Math.max(max, ...c);
  const head = el("tr", {}, el("th", {}, "task"), el("th", {}, "block"), ...Array.from({ length: experts }, (_, e) => el("th", {}, `e${e}`)));
  const rows = [head];
  for (const [task, blocks] of Object.entries(routing)) {
    for (const [block, counts] of Object.entries(blocks)) {
      rows.push(
        el(
          "tr",
          {},
          el("td", {}, task),
          el("td", {}, block),
          ...counts.map((c) => {
            const a = c / max;
            return el("td", { class: "cell", title: `${c} tokens`, style: `background: rgba(59,91,219,${a.toFixed(3)}); color: ${a > 0.55 ? "#fff" : "#333"}` }, c || "");
          }),
        ),
      );
    }
  }
  $("#heat").replaceChildren(...rows);
}

function showMemory() {
  const r = model.residentBytes();
  const all = model.allTasksBytes();
  const before = demo.resident;
  demo.resident = r;
  demo.allTasks = all;
  const change = before === undefined || before === r ? "" : ` · ${r < before ? "−" : "+"}${fmtBytes(Math.abs(r - before))} vs the previous load (${fmtBytes(before)})`;
  $("#memory").textContent = `resident on ${model.device}: ${fmtBytes(r)} of ${fmtBytes(all)} for all tasks (${((100 * r) / all).toFixed(1)}%)${change}`;
}

/** Runs every loaded task on the current pixels; coalesces inputs that arrive while it runs. */
async function predict() {
  if (!model) return;
  if (running) {
    again = true;
    return;
  }
  running = true;
  const input = pixels.slice();
  const r = await timed("run", () => model.run(input));
  running = false;
  if (r) {
    demo.input = input;
    demo.outputs = r.value;
    demo.routing = model.routingStats();
    demo.runMs = r.ms;
    renderPredictions(r.value);
    renderHeatmap(demo.routing);
    statusLine({ device: model.device, load: loadMs && fmtMs(loadMs), run: fmtMs(r.ms), "first result": demo.firstResultMs && `${fmtMs(demo.firstResultMs)} after page load` });
  }
  if (again) {
    again = false;
    predict();
  }
}

function setPixels(p) {
  pixels = p;
  showSmall(p);
  predict();
}

async function load(tasks) {
  clearError();
  const old = model;
  model = null;
  old?.dispose();
  const r = await timed("load", () => Model.load(MODEL, { device: wantedDevice(), tasks }));
  if (!r) return;
  model = r.value;
  loadMs = r.ms;
  demo.device = model.device;
  demo.tasks = model.tasks;
  demo.loadMs = r.ms;
  showMemory();
  await predict();
}

// Drawing with the pointer: a round white brush on black, re-run on every stroke segment.
let last = null;
pad.addEventListener("pointerdown", (e) => {
  pad.setPointerCapture(e.pointerId);
  last = [e.offsetX, e.offsetY];
  stroke(e);
});
pad.addEventListener("pointermove", (e) => last && stroke(e));
const end = () => (last = null);
pad.addEventListener("pointerup", end);
pad.addEventListener("pointercancel", end);
function stroke(e) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 22;
  ctx.lineCap = "round";
  ctx.beginPath();
  ctx.moveTo(...last);
  ctx.lineTo(e.offsetX, e.offsetY);
  ctx.stroke();
  last = [e.offsetX, e.offsetY];
  setPixels(downsample());
}
$("#clear").addEventListener("click", () => {
  clearPad();
  setPixels(downsample());
});

// Task toggles: reload with the checked subset (only what those tasks need is uploaded).
const toggles = $("#toggles");
for (const t of ALL_TASKS) {
  toggles.append(el("label", {}, el("input", { type: "checkbox", value: t, checked: true, onchange: onToggle }), " ", t));
}
async function onToggle() {
  const tasks = [...toggles.querySelectorAll("input:checked")].map((i) => i.value);
  if (!tasks.length) {
    this.checked = true;
    return;
  }
  await load(tasks);
}

clearPad();
header("Multi-task digits");
const samples = JSON.parse((await (await fetch(`${MODEL}expected.json`)).text()).replaceAll(":Infinity", ":null")).samples;
demo.samples = samples;
samples.forEach((s, i) =>
  $("#samples").append(
    el("button", { "data-sample": i, title: `held-out sample ${s.heldout_index} (true digit ${s.labels.digit})`, onclick: () => (paintPixels(s.pixels), setPixels(s.pixels.slice())) }, s.labels.digit),
    " ",
  ),
);
// Start with the first sample so there is a result without drawing.
paintPixels(samples[0].pixels);
pixels = samples[0].pixels.slice();
showSmall(pixels);
await load(ALL_TASKS);
demo.ready = true;
