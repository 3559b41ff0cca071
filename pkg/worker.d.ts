// Types for `taskloom/worker`: the Model API run in a dedicated Web Worker.
import type { AdapterChoice, Classification, CombineOptions, DeviceInfo, GenerateOptions, LoadProgress, ModelLoadOptions, ModelSource, RequestOptions, TaskOutput } from "./index.js";

/** A Model living in the worker: the same methods, all returning Promises. */
export interface ModelProxy {
  readonly kind: "encoder" | "decoder" | "multitask";
  readonly device: "webgpu" | "cpu";
  readonly tasks: string[];
  readonly labels: string[];
  readonly adapters: string[];
  run(input: string | ArrayLike<number>, opts?: { tasks?: string[]; signal?: AbortSignal }): Promise<Record<string, TaskOutput | TaskOutput[]>>;
  routingStats(): Promise<Record<string, Record<string, number[]>>>;
  residentBytes(): Promise<number>;
  allTasksBytes(): Promise<number>;
  encode(text: string): Promise<number[]>;
  logits(ids: number[], opts?: RequestOptions): Promise<{ dims: [number, number]; data: Float32Array }>;
  embed(text: string, opts?: RequestOptions): Promise<Float32Array>;
  embed(texts: string[], opts?: RequestOptions): Promise<Float32Array[]>;
  classify(text: string, opts?: RequestOptions): Promise<Classification>;
  classify(texts: string[], opts?: RequestOptions): Promise<Classification[]>;
  addAdapter(name: string, source: ModelSource, opts?: { onProgress?: (p: LoadProgress) => void; signal?: AbortSignal }): Promise<void>;
  removeAdapter(name: string): Promise<void>;
  setAdapters(mix: AdapterChoice): Promise<void>;
  combineAdapters(name: string, opts: CombineOptions): Promise<{ r: number; modules: number; ms: number }>;
  fuse(): Promise<void>;
  unfuse(): Promise<void>;
  generate(prompt: string, opts?: GenerateOptions): AsyncIterableIterator<{ id: number; text: string }>;
  dispose(): void;
}

export interface TaskloomWorker {
  readonly worker: Worker;
  /** Model.load in the worker (URL sources resolve against the page's URL). */
  load(source: ModelSource, opts?: ModelLoadOptions): Promise<ModelProxy>;
  /** Device facts of a runtime in the worker. */
  info(opts?: { device?: "auto" | "webgpu" | "cpu" }): Promise<DeviceInfo>;
  /** Stops the worker; pending calls reject. */
  terminate(): void;
}

/** Starts a worker running taskloom (worker-entry.js next to worker.js, unless `url` or `worker` is given). */
export function createWorker(opts?: { url?: string | URL; worker?: Worker }): TaskloomWorker;
