// Errors and call plumbing shared by every module of the facade: `TaskloomError` (and a subclass per
// code), the mapping of raw wasm failures (`Error("CODE: message")`, traps, heap exhaustion) to it,
// and the `signal` (AbortSignal) checks. Imports nothing, so any module can import it at init.

const CODES = new Set(["BAD_INPUT", "UNSUPPORTED", "DEVICE", "OUT_OF_MEMORY", "IO", "ABORTED"]);

/**
 * A failure with a stable `code`: BAD_INPUT, UNSUPPORTED, DEVICE, OUT_OF_MEMORY, IO, ABORTED or
 * INTERNAL. `new TaskloomError(code, message)` gives the subclass for `code` (`BadInputError`, ...),
 * so both `e.code === "BAD_INPUT"` and `e instanceof BadInputError` work.
 */
export class TaskloomError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "TaskloomError";
    this.code = code;
    const sub = new.target === TaskloomError ? SUBCLASS[code] : undefined;
    if (sub) Object.setPrototypeOf(this, sub.prototype);
  }
}
/** code BAD_INPUT: a wrong file, corrupt weights, an unknown task or adapter, a bad option. */
export class BadInputError extends TaskloomError {}
/** code UNSUPPORTED: the model or device cannot do this (e.g. `embed()` on a decoder). */
export class UnsupportedError extends TaskloomError {}
/** code DEVICE: no WebGPU adapter, a refused or lost device. */
export class DeviceError extends TaskloomError {}
/** code OUT_OF_MEMORY: a buffer above the device's limits, or an allocation that failed. */
export class OutOfMemoryError extends TaskloomError {}
/** code ABORTED: the call's `signal` was aborted. */
export class AbortedError extends TaskloomError {}
/** code IO: a download or file read failed. */
export class IoError extends TaskloomError {}
const SUBCLASS = { BAD_INPUT: BadInputError, UNSUPPORTED: UnsupportedError, DEVICE: DeviceError, OUT_OF_MEMORY: OutOfMemoryError, ABORTED: AbortedError, IO: IoError };

/** Throws ABORTED when `signal` is aborted. */
export function checkAbort(signal, what = "the call") {
  if (signal?.aborted) throw new TaskloomError("ABORTED", `${what} was aborted${signal.reason?.message ? `: ${signal.reason.message}` : ""}`);
}

/** The `signal` option, checked to be an AbortSignal-like object. */
export function signalOf(opts) {
  const s = opts?.signal;
  if (s === undefined || s === null) return undefined;
  if (typeof s !== "object" || typeof s.aborted !== "boolean") throw new TaskloomError("BAD_INPUT", `options.signal must be an AbortSignal, got ${describe(s)}`);
  return s;
}

/** Runs the async `f`, rejecting with ABORTED once `signal` aborts (before or after each step). */
export async function abortable(signal, what, f) {
  checkAbort(signal, what);
  const r = await f();
  checkAbort(signal, what);
  return r;
}

export function toTaskloomError(e) {
  if (e instanceof TaskloomError) return e;
  if (e?.name === "AbortError") return new TaskloomError("ABORTED", `aborted: ${e.message}`, { cause: e });
  if (e instanceof Error) {
    const m = /^([A-Z_]+): ([\s\S]*)$/.exec(e.message);
    if (m && CODES.has(m[1])) return new TaskloomError(m[1], m[2], { cause: e });
    // wasm allocation failure: the heap could not grow.
    if (e instanceof RangeError && /memory|allocation/i.test(e.message)) return new TaskloomError("OUT_OF_MEMORY", e.message, { cause: e });
    // A trap (a Rust panic) is a bug in taskloom, never the caller's fault.
    if (typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError) {
      return new TaskloomError("INTERNAL", `taskloom crashed: ${e.message}`, { cause: e });
    }
  }
  return e;
}

/** Runs `f`, mapping a thrown error or a rejection to a TaskloomError. */
export function call(f) {
  let r;
  try {
    r = f();
  } catch (e) {
    throw toTaskloomError(e);
  }
  if (r && typeof r.then === "function") {
    return r.then(undefined, (e) => {
      throw toTaskloomError(e);
    });
  }
  return r;
}

export function describe(v) {
  return v === null ? "null" : typeof v === "object" ? v.constructor?.name ?? "object" : typeof v;
}
