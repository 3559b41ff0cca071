// WebGPU device loss: learning which GPUDevice a model got, so `Model` can watch its `lost` promise.
//
// wgpu asks for its GPUDevice through `GPUAdapter.prototype.requestDevice`. While a model is being
// created, the facade wraps that method (once, passing every call through unchanged) to learn which
// GPUDevice the model got, and watches its `lost` promise (a destroyed device, a driver reset, a
// tab in the background for too long). Devices created outside a `Model.load` are not touched.

const WRAPPED = Symbol.for("taskloom.requestDevice");
let deviceSinks = [];
/** GPUDevice -> the GPUAdapter it came from (its features and limits, for `Runtime.info()`). */
export const adapterOf = new WeakMap();

function watchRequestDevice() {
  const A = globalThis.GPUAdapter;
  if (!A?.prototype?.requestDevice || A.prototype.requestDevice[WRAPPED]) return;
  const orig = A.prototype.requestDevice;
  const wrapped = async function requestDevice(...args) {
    const d = await orig.apply(this, args);
    if (d && typeof d === "object") adapterOf.set(d, this);
    for (const sink of deviceSinks) sink(d);
    return d;
  };
  wrapped[WRAPPED] = true;
  A.prototype.requestDevice = wrapped;
}

/** Runs the async `f`; resolves to [its result, the GPUDevices requested while it ran]. */
export async function withDevices(f) {
  watchRequestDevice();
  const got = [];
  const sink = (d) => got.push(d);
  deviceSinks.push(sink);
  try {
    return [await f(), got];
  } finally {
    deviceSinks = deviceSinks.filter((x) => x !== sink);
  }
}
