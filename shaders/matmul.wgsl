// Matmul: out[z, m, n] = sum_k a[z, m, k] * b[z?, k, n] (+ bias[n]).
//
// A weight split into row blocks (too big for one binding) runs one dispatch per block: `b` is the
// block (N = its rows), its results go to columns [col_off, col_off + N) of an output row of
// `out_cols` columns, and the bias is read from `bias_off` on (col_off for a whole bias, 0 for a
// bias split like its weight).
//
// Tiled: a workgroup of WG_X x WG_Y threads computes a BM x BN tile of `out` (BM = WG_Y * TM,
// BN = WG_X * TN); each thread keeps a TM x TN block of accumulators in registers. The K loop
// stages BM x TK of `a` and TK x BN of `b` in workgroup memory.
//
// Weights `b` are read as u32 words and decoded per B_DTYPE, so f16/bf16 stay packed two per word
// and no shader-f16 feature is needed.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Elements between consecutive batches of `b`; 0 when one `b` is shared by every batch.
    b_batch_stride: u32,
    has_bias: u32,
    col_off: u32,   // first output column this dispatch writes (0 unless `b` is a row block)
    out_cols: u32,  // columns of an output row (N unless `b` is a row block)
    bias_off: u32,  // bias element of this dispatch's first column
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // [batch, M, K] f32
@group(0) @binding(2) var<storage, read> b: array<u32>;        // [K, N] or [N, K] (TRANS_B), per B_DTYPE
@group(0) @binding(3) var<storage, read> bias: array<f32>;     // [N] f32 (1 dummy element if none)
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [batch, M, out_cols] f32

override B_DTYPE: u32 = 0u;    // 0 = f32 bits, 1 = f16 pairs, 2 = bf16 pairs
override TRANS_B: bool = false;
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
override TM: u32 = 4u;         // rows per thread (TM * TN <= 16)
override TN: u32 = 4u;         // columns per thread
override TK: u32 = 16u;
override BM: u32 = WG_Y * TM;
override BN: u32 = WG_X * TN;
override A_TILE: u32 = BM * TK;
override B_TILE: u32 = TK * BN;

var<workgroup> a_tile: array<f32, A_TILE>;   // [BM, TK]
var<workgroup> b_tile: array<f32, B_TILE>;   // [TK, BN]

fn load_b(e: u32) -> f32 {
    return decode_packed(b[select(e >> 1u, e, B_DTYPE == 0u)], e, B_DTYPE);
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let z = wg.z;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let a_base = z * p.m * p.k;
    let b_base = z * p.b_batch_stride;
    let tid = lid.y * WG_X + lid.x;
    let threads = WG_X * WG_Y;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var e = tid; e < A_TILE; e += threads) {
            let r = e / TK;
            let c = e % TK;
            let gr = row0 + r;
            let gc = k0 + c;
            var v = 0.0;
            if (gr < p.m && gc < p.k) {
                v = a[a_base + gr * p.k + gc];
            }
            a_tile[e] = v;
        }
        for (var e = tid; e < B_TILE; e += threads) {
            let r = e / BN;      // k within the tile
            let c = e % BN;      // n within the tile
            let gk = k0 + r;
            let gn = col0 + c;
            var v = 0.0;
            if (gk < p.k && gn < p.n) {
                var idx = gk * p.n + gn;
                if (TRANS_B) {
                    idx = gn * p.k + gk;
                }
                v = load_b(b_base + idx);
            }
            b_tile[e] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            for (var i = 0u; i < TM; i++) {
                let av = a_tile[(lid.y * TM + i) * TK + kk];
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] += av * b_tile[kk * BN + lid.x * TN + j];
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let r = row0 + lid.y * TM + i;
        if (r >= p.m) {
            continue;
        }
        for (var j = 0u; j < TN; j++) {
            let c = col0 + lid.x * TN + j;
            if (c < p.n) {
                var v = acc[i * TN + j];
                if (p.has_bias != 0u) {
                    v += bias[p.bias_off + c];
                }
                out[(z * p.m + r) * p.out_cols + p.col_off + c] = v;
            }
        }
    }
}
