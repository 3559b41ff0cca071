// The worker side of `taskloom/worker` (see worker.js): loads models with the package's own API and
// answers `{ id, op }` messages. Started by createWorker(); not meant to be imported.

import { Model, Runtime, TaskloomError } from "./index.js";

const models = new Map(); // handle -> Model
const controllers = new Map(); // call id -> AbortController
let nextHandle = 1;

const PROPS = ["kind", "device", "tasks", "labels", "adapters"];
function props(m) {
  const out = {};
  for (const k of PROPS) {
    try {
      out[k] = m[k];
    } catch {
      out[k] = undefined;
    }
  }
  return out;
}

function model(handle) {
  const m = models.get(handle);
  if (!m) throw new TaskloomError("BAD_INPUT", "model was disposed");
  return m;
}

async function handle(msg) {
  const ctl = msg.hasSignal ? new AbortController() : null;
  if (ctl) controllers.set(msg.id, ctl);
  const withCall = (o) => {
    const r = { ...(o ?? {}) };
    if (ctl) r.signal = ctl.signal;
    if (msg.hasProgress) r.onProgress = (progress) => self.postMessage({ id: msg.id, type: "progress", progress });
    return r;
  };
  try {
    switch (msg.op) {
      case "load": {
        const m = await Model.load(msg.source, withCall(msg.opts));
        const h = nextHandle++;
        models.set(h, m);
        return { handle: h, props: props(m) };
      }
      case "call": {
        const m = model(msg.handle);
        const args = [...(msg.args ?? [])];
        if (ctl || msg.hasProgress) {
          // The options object is the last argument of every long call.
          const at = { run: 1, embed: 1, classify: 1, logits: 1, addAdapter: 2, combineAdapters: 1 }[msg.method];
          if (at !== undefined) args[at] = withCall(args[at]);
        }
        if (typeof m[msg.method] !== "function") throw new TaskloomError("BAD_INPUT", `no method ${msg.method}`);
        const result = await m[msg.method](...args);
        return { result, props: props(m) };
      }
      case "generate": {
        const m = model(msg.handle);
        const [prompt, o] = msg.args;
        const ids = [];
        for await (const token of m.generate(prompt, withCall(o))) {
          ids.push(token.id);
          self.postMessage({ id: msg.id, type: "token", token });
        }
        return ids;
      }
      case "info": {
        const rt = await Runtime.create(msg.opts ?? {});
        const info = rt.info();
        rt.dispose();
        return info;
      }
      case "dispose": {
        models.get(msg.handle)?.dispose();
        models.delete(msg.handle);
        return null;
      }
      default:
        throw new TaskloomError("BAD_INPUT", `unknown worker request '${msg.op}'`);
    }
  } finally {
    controllers.delete(msg.id);
  }
}

self.addEventListener("message", async (ev) => {
  const msg = ev.data;
  if (msg?.op === "abort") {
    controllers.get(msg.id)?.abort(new Error("aborted by the caller"));
    return;
  }
  try {
    const result = await handle(msg);
    self.postMessage({ id: msg.id, type: "result", result });
  } catch (e) {
    self.postMessage({ id: msg.id, type: "error", error: { code: e?.code ?? "INTERNAL", message: String(e?.message ?? e) } });
  }
});
