// Matmul cases shared by the browser page and the Node tests. The inputs come from the same formula
// as web/examples/matmul_ref.rs (the native reference), so both sides start from identical f32 bits.

/** [M, K, N, transB]: a tiled case, an odd skinny case (K = 3, N = 255), and the same with bᵀ. */
export const CASES = [
  { m: 64, k: 48, n: 80, transB: false },
  { m: 17, k: 3, n: 255, transB: false },
  { m: 17, k: 3, n: 255, transB: true },
];

/** Element (i, j) of input `seed`, exactly as `fill` in matmul_ref.rs computes it. */
export function fill(seed, rows, cols) {
  const v = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) v[i * cols + j] = Math.fround(((i * 131 + j * 71 + seed * 37) % 257) / 257 - 0.5);
  }
  return v;
}

/** The two operands of a case with their dims. */
export function inputs({ m, k, n, transB }) {
  const bDims = transB ? [n, k] : [k, n];
  return { a: fill(1, m, k), aDims: [m, k], b: fill(2, bDims[0], bDims[1]), bDims };
}

/** Runs every case on `rt` (a taskloom Runtime); returns [{ dims, data: number[] }]. */
export async function runCases(rt) {
  const out = [];
  for (const c of CASES) {
    const { a, aDims, b, bDims } = inputs(c);
    const ta = rt.upload(a, aDims);
    const tb = rt.upload(b, bDims);
    const tc = rt.matmul(ta, tb, { transB: c.transB });
    out.push({ dims: tc.dims, data: Array.from(await tc.read()) });
    for (const t of [ta, tb, tc]) t.dispose();
  }
  return out;
}

/**
 * The first element where `got` and `want` differ by more than `tol` relative to max(|want|, 1)
 * (outputs here are O(1), so near-zero elements get an absolute bound), or null.
 */
export function firstMismatch(got, want, tol = 1e-4) {
  if (got.length !== want.length) return { index: -1, got: got.length, want: want.length, what: "length" };
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol * Math.max(Math.abs(want[i]), 1))) return { index: i, got: got[i], want: want[i] };
  }
  return null;
}
