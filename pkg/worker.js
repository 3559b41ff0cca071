// `taskloom/worker`: the same Model API, run in a dedicated Web Worker so loading and inference stay
// off the main thread.
//
//   import { createWorker } from "taskloom/worker";
//   const tl = createWorker();                       // starts the worker (worker-entry.js)
//   const m = await tl.load("/models/digits/", { device: "auto", onProgress });
//   console.log(await m.run(pixels), m.device);      // every Model method, as a Promise
//   m.dispose(); tl.terminate();
//
// Calls are messages `{ id, op, ... }`; results, progress events and generated tokens come back by
// id. Errors arrive as `{ code, message }` and are re-thrown as the matching TaskloomError subclass.
// `signal` options work: aborting posts an "abort" for that call id, the worker aborts its own
// AbortController, and the call rejects with code ABORTED. URL sources are resolved against the
// page's URL before they are sent (a worker resolves relative URLs against its script).

import { TaskloomError } from "./index.js";

// Model methods that the proxy forwards (all resolve to plain data), and the properties it mirrors.
const METHODS = [
  "run", "embed", "classify", "logits", "encode", "routingStats", "residentBytes", "allTasksBytes",
  "addAdapter", "removeAdapter", "setAdapters", "combineAdapters", "fuse", "unfuse",
];
const PROPS = ["kind", "device", "tasks", "labels", "adapters"];

function resolveSource(src) {
  if (typeof src === "string" || src instanceof URL) return new URL(String(src), globalThis.location?.href).href;
  return src;
}

/**
 * Starts a Worker running taskloom. `opts.url` overrides the worker script's URL (default:
 * worker-entry.js next to this file); `opts.worker` hands over an existing Worker instead.
 * Returns `{ load(source, opts) -> Promise<ModelProxy>, terminate(), worker }`.
 */
export function createWorker(opts = {}) {
  // The literal `new Worker(new URL("./…", import.meta.url), …)` form lets bundlers (Vite, webpack)
  // see the worker entry and bundle it with its imports.
  const worker =
    opts.worker ??
    (opts.url ? new Worker(opts.url, { type: "module", name: "taskloom" }) : new Worker(new URL("./worker-entry.js", import.meta.url), { type: "module", name: "taskloom" }));
  let nextId = 1;
  const pending = new Map(); // id -> { ok, fail, onProgress, onToken }
  let dead = null;

  worker.addEventListener("message", (ev) => {
    const msg = ev.data;
    const p = pending.get(msg?.id);
    if (!p) return;
    if (msg.type === "progress") return p.onProgress?.(msg.progress);
    if (msg.type === "token") return p.onToken?.(msg.token);
    pending.delete(msg.id);
    if (msg.type === "error") p.fail(new TaskloomError(msg.error.code ?? "INTERNAL", msg.error.message));
    else p.ok(msg.result);
  });
  const failAll = (message) => {
    dead = new TaskloomError("INTERNAL", message);
    for (const p of pending.values()) p.fail(dead);
    pending.clear();
  };
  worker.addEventListener("error", (e) => failAll(`taskloom worker failed: ${e.message ?? e}`));
  worker.addEventListener("messageerror", () => failAll("taskloom worker: a message could not be read"));

  /** Posts one request; `callOpts` may hold signal / onProgress / onToken (kept on this side). */
  function request(msg, callOpts = {}) {
    if (dead) return Promise.reject(dead);
    const id = nextId++;
    const { signal, onProgress, onToken } = callOpts;
    return new Promise((ok, fail) => {
      if (signal?.aborted) return fail(new TaskloomError("ABORTED", `${msg.op} was aborted`));
      const onAbort = () => worker.postMessage({ id, op: "abort" });
      signal?.addEventListener?.("abort", onAbort, { once: true });
      const done = (f) => (v) => {
        signal?.removeEventListener?.("abort", onAbort);
        f(v);
      };
      pending.set(id, { ok: done(ok), fail: done(fail), onProgress, onToken });
      try {
        worker.postMessage({ id, ...msg, hasSignal: Boolean(signal), hasProgress: Boolean(onProgress) });
      } catch (e) {
        pending.delete(id);
        fail(new TaskloomError("BAD_INPUT", `cannot send this to the worker: ${e.message}`));
      }
    });
  }

  /** Splits a call's options into what can be posted and what stays here. */
  function split(o) {
    if (!o || typeof o !== "object") return [o, {}];
    const { signal, onProgress, ...rest } = o;
    return [rest, { signal, onProgress }];
  }

  function proxy(handle, props) {
    const state = { ...props };
    const m = {
      dispose() {
        if (state.disposed) return;
        state.disposed = true;
        request({ op: "dispose", handle }).catch(() => {});
      },
      /** Streams `{ id, text }` like Model.generate. */
      async *generate(prompt, o = {}) {
        const [rest, local] = split(o);
        const queue = [];
        let wake = null;
        const p = request({ op: "generate", handle, args: [prompt, rest] }, { ...local, onToken: (t) => (queue.push(t), wake?.()) });
        let finished = false;
        let failure = null;
        p.then(() => (finished = true), (e) => ((failure = e), (finished = true))).finally(() => wake?.());
        for (;;) {
          if (queue.length) {
            yield queue.shift();
            continue;
          }
          if (finished) break;
          await new Promise((r) => (wake = r));
          wake = null;
        }
        if (failure) throw failure;
      },
    };
    for (const name of METHODS) {
      m[name] = async (...args) => {
        if (state.disposed) throw new TaskloomError("BAD_INPUT", "model was disposed");
        const last = args.length - 1;
        let local = {};
        if (last >= 0 && args[last] && typeof args[last] === "object" && !Array.isArray(args[last]) && !ArrayBuffer.isView(args[last])) {
          [args[last], local] = split(args[last]);
        }
        if (name === "addAdapter") args[1] = resolveSource(args[1]);
        const { result, props: p } = await request({ op: "call", handle, method: name, args }, local);
        Object.assign(state, p);
        return result;
      };
    }
    for (const k of PROPS) Object.defineProperty(m, k, { get: () => state[k], enumerable: true });
    return m;
  }

  return {
    worker,
    /** Model.load in the worker; resolves to a proxy with the Model methods (all async). */
    async load(source, o = {}) {
      const [rest, local] = split(o);
      if (rest.trunk) rest.trunk = resolveSource(rest.trunk);
      const { handle, props } = await request({ op: "load", source: resolveSource(source), opts: rest }, local);
      return proxy(handle, props);
    },
    /** Device facts of a fresh runtime in the worker (`Runtime.info()`). */
    info(o = {}) {
      return request({ op: "info", opts: o });
    },
    terminate() {
      failAll("taskloom worker was terminated");
      worker.terminate();
    },
  };
}
