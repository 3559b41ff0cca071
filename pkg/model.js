// `Model`: loading, adapters, inference, and reloading after a WebGPU device loss.

import { Model as RawModel } from "./dist/taskloom_web.js";
import { TaskloomError, abortable, call, checkAbort, describe, signalOf, toTaskloomError } from "./errors.js";
import { init } from "./wasm.js";
import { withDevices } from "./device-loss.js";
import { ADAPTER_FILES, gatherFiles, gatherModel, totalProgress } from "./load.js";

/**
 * A Hugging Face model (an encoder such as MiniLM, or a Llama-family decoder), a GGUF file, or a
 * multi-task folder (`taskloom.json`; `opts.tasks` loads only what those tasks need, `opts.trunk`
 * gives an hf trunk's folder).
 * `await Model.load(source, { device, onProgress })`; `source`: a URL (folder base or .gguf), a
 * FileList / File[] / directory handle, or `{ "config.json": ArrayBuffer, ... }`.
 */
export class Model {
  #raw;
  // Device loss: how to load the model again, the calls that changed it since (adapters, mixes,
  // fusing; replayed in order), the GPUDevice it runs on and, once that is lost, the loss info.
  #source = null;
  #opts = null;
  #replay = [];
  #gpu = null;
  #lost = null;
  #recovering = null;
  constructor(raw) {
    if (!(raw instanceof RawModel)) throw new TypeError("use `await Model.load(source, opts)`");
    this.#raw = raw;
  }

  /**
   * `opts`: device ("auto" | "webgpu" | "cpu"), maxBindingBytes (lowers the WebGPU binding limit;
   * weights above it are split into row blocks), tasks, trunk, onProgress, signal, onDeviceLost
   * (called with `{ reason, message }` when the WebGPU device is lost; the next call reloads the
   * model — see README.md, "Device loss").
   */
  static async load(source, opts = {}) {
    const signal = call(() => signalOf(opts));
    call(() => checkAbort(signal, "Model.load"));
    await init();
    const files = await call(() => gatherModel(source, opts));
    call(() => checkAbort(signal, "Model.load"));
    const [raw, devices] = await withDevices(() => call(() => RawModel.load(files, { device: opts?.device ?? "auto", tasks: opts?.tasks, maxBindingBytes: opts?.maxBindingBytes })));
    if (signal?.aborted) {
      raw.free();
      call(() => checkAbort(signal, "Model.load"));
    }
    const m = new Model(raw);
    const { signal: _s, onProgress: _p, ...keep } = opts ?? {};
    m.#source = source;
    m.#opts = keep;
    m.#watch(raw, devices);
    return m;
  }

  #watch(raw, devices) {
    this.#gpu = raw.device === "webgpu" ? (devices.at(-1) ?? null) : null;
    const gpu = this.#gpu;
    gpu?.lost?.then((info) => {
      if (this.#gpu !== gpu || !this.#raw) return; // replaced or disposed meanwhile
      this.#lost = { reason: info?.reason ?? "unknown", message: info?.message ?? "" };
      try {
        this.#opts?.onDeviceLost?.(this.#lost);
      } catch (e) {
        console.warn("taskloom: onDeviceLost threw", e);
      }
    });
  }

  /** Whether the model's WebGPU device was lost and the next call will reload it. */
  get deviceLost() {
    return this.#lost !== null;
  }

  /**
   * After a device loss: loads the model again from its source (device "auto" may now give the CPU;
   * "webgpu" must get a new device) and replays the adapter calls made since the load. A failure
   * is a DEVICE error; the model stays lost, so a later call tries again (or `Model.load` anew).
   */
  async #recover() {
    if (!this.#lost) return this.#self();
    this.#recovering ??= (async () => {
      const lost = this.#lost;
      const lostGpu = this.#gpu;
      try {
        const files = await gatherModel(this.#source, this.#opts);
        const [raw, devices] = await withDevices(() => call(() => RawModel.load(files, { device: this.#opts?.device ?? "auto", tasks: this.#opts?.tasks, maxBindingBytes: this.#opts?.maxBindingBytes })));
        for (const [op, ...args] of this.#replay) call(() => raw[op](...args));
        if (!this.#raw) {
          raw.free(); // disposed while reloading
          return;
        }
        const old = this.#raw;
        this.#raw = raw;
        this.#lost = null;
        this.#watch(raw, devices);
        try {
          old.free();
          lostGpu?.destroy();
        } catch {}
        console.warn(`taskloom: the WebGPU device was lost (${lost.reason}${lost.message ? `: ${lost.message}` : ""}); model reloaded on ${raw.device}`);
      } catch (e) {
        const t = toTaskloomError(e);
        throw new TaskloomError("DEVICE", `the WebGPU device was lost (${lost.reason}) and the model could not be reloaded: ${t?.message ?? t}; load it again with Model.load`, { cause: e });
      } finally {
        this.#recovering = null;
      }
    })();
    await this.#recovering;
    return this.#self();
  }

  /** Runs `f(raw)` on a live device: recovers first, and maps a failure during a loss to DEVICE. */
  async #onDevice(f) {
    const raw = await this.#recover();
    try {
      return await f(raw);
    } catch (e) {
      if (this.#lost && !(e instanceof TaskloomError && e.code === "ABORTED")) {
        throw new TaskloomError("DEVICE", `the WebGPU device was lost during the call (${this.#lost.reason}); the next call reloads the model`, { cause: e });
      }
      throw e;
    }
  }

  /** A call that changes the model's adapters or weights: applied now, replayed after a device loss. */
  #change(op, ...args) {
    const raw = this.#self();
    if (!this.#lost) call(() => raw[op](...args));
    // A copy: the caller may change its mix object afterwards.
    if (this.#gpu) this.#replay.push([op, ...args.map((a) => (op === "addAdapter" ? a : structuredClone(a)))]);
  }

  /**
   * Multi-task models: runs `opts.tasks` (default: every loaded task) on one input — text, or an
   * array of pixel values — and resolves to `{ [task]: output }`.
   */
  async run(input, opts = {}) {
    this.#self();
    if (typeof input !== "string" && !Array.isArray(input) && !ArrayBuffer.isView(input)) {
      throw new TaskloomError("BAD_INPUT", `input must be a string (text models) or an array of pixel values (image models), got ${describe(input)}`);
    }
    const x = typeof input === "string" ? input : Array.from(input);
    return await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "run()", () => raw.run(x, { tasks: opts?.tasks }))));
  }

  /** Multi-task models: tokens per expert of the last `run`: `{ task: { block: counts } }`. */
  routingStats() {
    return call(() => this.#self().routingStats());
  }

  /** Multi-task models: bytes on the device for the loaded tasks. */
  residentBytes() {
    return call(() => this.#self().residentBytes());
  }

  /** Multi-task models: bytes the same model loaded for every task would hold. */
  allTasksBytes() {
    return call(() => this.#self().allTasksBytes());
  }

  /** Multi-task models: the loaded tasks. */
  get tasks() {
    return Array.from(this.#self().tasks());
  }

  #self() {
    if (!this.#raw) throw new TaskloomError("BAD_INPUT", "model was disposed");
    return this.#raw;
  }

  /** "encoder" or "decoder". */
  get kind() {
    return this.#self().kind;
  }

  /** "webgpu" or "cpu". */
  get device() {
    return this.#self().device;
  }

  /** Token ids of `text`. */
  encode(text) {
    return Array.from(call(() => this.#self().encode(text)));
  }

  /**
   * Registers a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) under
   * `name`, from a URL base, files, a directory handle or an object of buffers. The base model is
   * not reloaded. `opts.onProgress` as for `Model.load`.
   */
  async addAdapter(name, source, opts = {}) {
    this.#self();
    const signal = call(() => signalOf(opts));
    const files = await call(() => gatherFiles(source, totalProgress(opts?.onProgress), ADAPTER_FILES, signal));
    call(() => checkAbort(signal, "addAdapter()"));
    await this.#recover();
    this.#change("addAdapter", String(name), files);
  }

  /**
   * Combines registered adapters into a new adapter `name` (PEFT `add_weighted_adapter`, like
   * `taskloom lora combine`): `opts.adapters` `{ a: 0.6, b: 0.4 }`, `opts.combination` (linear, cat,
   * svd, ties, dare_linear, dare_ties, magnitude_prune, or their `_svd` forms), `density`,
   * `svdRank`, `seed` (DARE), `majoritySign`. Resolves to `{ r, modules, ms }`.
   */
  async combineAdapters(name, opts = {}) {
    this.#self();
    const signal = call(() => signalOf(opts));
    call(() => checkAbort(signal, "combineAdapters()"));
    const { signal: _s, ...rest } = opts ?? {};
    await this.#recover();
    const t0 = performance.now();
    const info = call(() => this.#self().combineAdapters(String(name), rest));
    if (this.#gpu) this.#replay.push(["combineAdapters", String(name), structuredClone(rest)]);
    return { ...info, ms: performance.now() - t0 };
  }

  /** Unregisters an adapter (unfusing it first if it is fused). */
  removeAdapter(name) {
    this.#change("removeAdapter", String(name));
  }

  /** The default adapter mix for requests that name none: `{ a: 0.7, b: 0.3 }`, a name, or `{}`. */
  setAdapters(mix) {
    this.#change("setAdapters", mix ?? {});
  }

  /** Names of the registered adapters. */
  get adapters() {
    return Array.from(this.#self().adapters());
  }

  /** Bakes the default mix into the weights (W + s·B·A); requests for other mixes still work. */
  fuse() {
    this.#change("fuse");
  }

  /** Restores the original weights exactly. */
  unfuse() {
    this.#change("unfuse");
  }

  /** Class names of a sequence-classification model. */
  get labels() {
    return Array.from(this.#self().labels());
  }

  /**
   * Sequence classification: `{ label, score, logits }` per text (an array for an array).
   * `opts.adapter`: a name or `{ name: weight }` for this request (its saved classifier is used).
   */
  async classify(text, opts = {}) {
    this.#self();
    const many = Array.isArray(text);
    const out = await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "classify()", () => raw.classify(many ? text : [text], { adapter: opts?.adapter }))));
    const labels = this.labels;
    const res = out.map((logits) => {
      const m = Math.max(...logits);
      const e = Array.from(logits, (x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      let best = 0;
      for (let i = 1; i < e.length; i++) if (e[i] > e[best]) best = i;
      return { label: labels[best], score: e[best] / z, logits };
    });
    return many ? res : res[0];
  }

  /**
   * Logits for every position of `ids` (decoders): `{ dims: [T, V], data: Float32Array }`.
   * `opts.adapter`: a name or `{ name: weight }` for this request.
   */
  async logits(ids, opts = {}) {
    this.#self();
    const data = await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "logits()", () => raw.logits(Uint32Array.from(ids), { adapter: opts?.adapter }))));
    const t = ids.length;
    return { dims: [t, t ? data.length / t : 0], data };
  }

  /**
   * Pooled embedding(s): a Float32Array for a string, an array of them for an array of strings.
   * `opts.adapter`: a name or `{ name: weight }` for this request.
   */
  async embed(text, opts = {}) {
    const many = Array.isArray(text);
    this.#self();
    const out = await this.#onDevice((raw) => call(() => abortable(signalOf(opts), "embed()", () => raw.embed(many ? text : [text], { adapter: opts?.adapter }))));
    return many ? out : out[0];
  }

  /**
   * Streams generated tokens as `{ id, text }`. `opts`: maxTokens, temperature, topK, topP,
   * repetitionPenalty, seed, chat (wrap the prompt in the chat template), adapter (a name or
   * `{ name: weight }` for this request), signal (AbortSignal).
   */
  async *generate(prompt, opts = {}) {
    this.#self();
    const raw = await this.#recover();
    const queue = [];
    let wake = null;
    let done = false;
    let failure = null;
    let stopped = false;
    const signal = opts?.signal;
    const onToken = (id, text) => {
      queue.push({ id, text });
      wake?.();
      return !stopped && !signal?.aborted;
    };
    const { signal: _s, ...rawOpts } = opts ?? {};
    call(() => raw.generate(String(prompt), rawOpts, onToken)).then(
      () => {
        done = true;
        wake?.();
      },
      (e) => {
        failure = e;
        done = true;
        wake?.();
      },
    );
    try {
      for (;;) {
        if (queue.length) {
          yield queue.shift();
          continue;
        }
        if (done) break;
        await new Promise((r) => (wake = r));
        wake = null;
      }
      if (failure) throw failure;
      if (signal?.aborted) throw new TaskloomError("ABORTED", "generation was aborted");
    } finally {
      stopped = true;
    }
  }

  /**
   * Frees the model now. On WebGPU this also destroys the model's GPUDevice (each model has its
   * own): wgpu's WebGPU backend never destroys buffers itself, leaving GPU memory to the garbage
   * collector, so without this repeated load/dispose grows GPU memory.
   */
  dispose() {
    const gpu = this.#gpu;
    this.#gpu = null; // before destroy(): the `lost` handler ignores a device that is no longer ours
    this.#raw?.free();
    this.#raw = null;
    try {
      gpu?.destroy();
    } catch {}
    this.#lost = null;
    this.#replay = [];
    this.#source = null;
  }
}
