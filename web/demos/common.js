// Shared by the demos: the device selector (?device=webgpu|cpu|auto), timing, status lines, and the
// `window.demo` object the browser tests read (every figure a page shows is also there).
import { Runtime } from "/pkg/index.js";

export const $ = (sel, root = document) => root.querySelector(sel);
export const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) e.append(k instanceof Node ? k : String(k));
  return e;
};

/** What the tests read: device, timings, the last outputs; `busy` counts calls in flight. */
export const demo = (window.demo = { device: null, busy: 0, results: 0, firstResultMs: null, error: null });

/** The device the page was asked for: ?device=webgpu|cpu|auto (default auto). */
export function wantedDevice() {
  const d = new URLSearchParams(location.search).get("device") ?? "auto";
  return ["auto", "webgpu", "cpu"].includes(d) ? d : "auto";
}

/** Fills the header: title, links to the other demos, the device selector (reloads the page). */
export async function header(title) {
  const h = $("header");
  const sel = el("select", { id: "device", title: "where the model runs; the page reloads" }, ...["auto", "webgpu", "cpu"].map((d) => el("option", { value: d, selected: d === wantedDevice() }, d === "auto" ? "auto (WebGPU if available)" : d === "webgpu" ? "WebGPU" : "CPU (wasm)")));
  sel.addEventListener("change", () => {
    const u = new URL(location.href);
    u.searchParams.set("device", sel.value);
    location.href = u.href;
  });
  h.append(
    el("h1", {}, title),
    el("nav", {}, el("a", { href: "/digits/" }, "digits"), " · ", el("a", { href: "/text/" }, "text"), " · ", el("a", { href: "/studio/" }, "studio")),
    el("label", {}, "device ", sel),
    el("span", { id: "gpu", class: "status" }, ""),
  );
  // What WebGPU this browser offers (the model's own device is shown once it loads).
  try {
    const rt = await Runtime.create({ device: "auto" });
    const i = rt.info();
    $("#gpu").textContent = rt.device === "webgpu" ? `WebGPU adapter: ${i.name || i.device_type || "unnamed"} (max binding ${(i.max_storage_buffer_binding_size / 2 ** 20).toFixed(0)} MiB${i.shader_f16 ? ", f16" : ""})` : "no WebGPU adapter here: CPU only";
    rt.dispose();
  } catch (e) {
    $("#gpu").textContent = `device probe failed: ${e.code ?? ""} ${e.message}`;
  }
}

/** Milliseconds since navigation started. */
export const sinceLoad = () => performance.now();

/**
 * Runs `f` (async), timing it; for anything but "load", counts a result and records the first
 * one's time since page load; shows errors in `#error`. Returns { value, ms } (undefined on error).
 */
export async function timed(what, f) {
  demo.busy++;
  const t0 = performance.now();
  try {
    const r = await f();
    const ms = performance.now() - t0;
    // Loads are not results: "first result" is the first prediction the page shows.
    if (what !== "load") {
      demo.results++;
      if (demo.firstResultMs === null) demo.firstResultMs = sinceLoad();
    }
    return { value: r, ms };
  } catch (e) {
    demo.error = { what, code: e.code ?? null, message: String(e.message ?? e) };
    showError(`${what}: ${e.code ? e.code + ": " : ""}${e.message ?? e}`);
    console.error(e);
    return undefined;
  } finally {
    demo.busy--;
  }
}

export function showError(msg) {
  const box = $("#error");
  if (box) box.textContent = msg;
}

export function clearError() {
  const box = $("#error");
  if (box) box.textContent = "";
  demo.error = null;
}

/** "device webgpu · load 120 ms · run 3.1 ms · first result 900 ms after page load". */
export function statusLine(parts) {
  const s = $("#status");
  s.replaceChildren(
    ...Object.entries(parts)
      .filter(([, v]) => v !== undefined && v !== null)
      .flatMap(([k, v], i) => [i ? " · " : "", `${k} `, el("b", {}, v)]),
  );
}

export const fmtMs = (ms) => (ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)) + " ms";
export const fmtBytes = (b) => (b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(2)} MiB` : `${(b / 1024).toFixed(1)} KiB`);
