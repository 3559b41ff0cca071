// Grouped (bucketed) expert matmul: out[p, n] = sum_c x[row(p), c] * w[e, n, c] (+ bias[e, n]) for
// every pick p in expert e's bucket of moe_bucket's (offsets, order); the invalid bucket's picks get 0.
//
// The row-tile space is the per-bucket tiles: bucket b (experts, then the invalid bucket E) owns
// ceil(count_b / BM) consecutive tiles. Their total is at most ceil(R*K / BM) + E + 1, so the host
// dispatches that many (folded into y, z) without reading the counts back; a workgroup past the
// real total returns at once. Thread 0 finds the workgroup's bucket by walking offsets (E + 1 steps)
// and shares it through workgroupUniformLoad, so the barriers below stay in uniform control flow.
//
// Within a tile it is matmul.wgsl's register tiling: WG_X x WG_Y threads, each TM x TN outputs, K in
// TK steps; the BM gathered rows of x and a TK x BN tile of the expert's weights are staged in
// workgroup memory, so every weight element loaded serves BM rows (ExpertMatmul: one).
// Weights are read as u32 words and decoded per W_DTYPE (packed.wgsl), no shader-f16 needed.
//
// A stack split to fit one binding runs once per block of experts [first, first + count): the tile
// space is then the block's buckets only (plus the invalid bucket when `invalid`, the first block),
// so each pick is written once, by the block that owns its expert. Unsplit: first = 0, count = E,
// invalid = 1.

struct Params {
    picks: u32,     // R * K
    k: u32,         // K
    n: u32,         // N outputs per expert
    cin: u32,       // Cin
    experts: u32,   // E
    per_pick: u32,  // 1: x is [R, K, Cin]; 0: x is [R, Cin]
    has_bias: u32,
    first: u32,     // the block's first expert
    count: u32,     // experts in this block of w
    invalid: u32,   // 1: this dispatch also owns the invalid bucket E
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [R, Cin] or [R, K, Cin]
@group(0) @binding(2) var<storage, read> w: array<u32>;          // [count, N, Cin] per W_DTYPE (the block)
@group(0) @binding(3) var<storage, read> offsets: array<u32>;    // [E+2] from moe_bucket
@group(0) @binding(4) var<storage, read> order: array<u32>;      // [R*K] from moe_bucket
@group(0) @binding(5) var<storage, read> bias: array<f32>;       // [E, N] (1 dummy element if none)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;  // [R, K, N] indexed by pick

override W_DTYPE: u32 = 0u;    // 0 = f32 bits, 1 = f16 pairs, 2 = bf16 pairs
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
override TM: u32 = 4u;         // rows per thread (TM * TN <= 16)
override TN: u32 = 4u;         // columns per thread
override TK: u32 = 16u;
override BM: u32 = WG_Y * TM;
override BN: u32 = WG_X * TN;
override A_TILE: u32 = BM * TK;
override B_TILE: u32 = TK * BN;

var<workgroup> a_tile: array<f32, A_TILE>;   // [BM, TK] gathered rows of x
var<workgroup> b_tile: array<f32, B_TILE>;   // [TK, BN] of w[e] transposed
var<workgroup> tile_picks: array<u32, BM>;   // output row (pick id) of each tile row
var<workgroup> tile_rows: array<u32, BM>;    // row of x of each tile row
var<workgroup> job: vec4<u32>;               // (bucket, first slot in order, rows in this tile, -)

fn load_w(e: u32) -> f32 {
    return decode_packed(w[select(e >> 1u, e, W_DTYPE == 0u)], e, W_DTYPE);
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn grouped_matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.y * WG_X + lid.x;
    let threads = WG_X * WG_Y;
    let col0 = wg.x * BN;
    if (tid == 0u) {
        let tile = wg.y + wg.z * nwg.y;
        var found = vec4<u32>(p.experts + 1u, 0u, 0u, 0u);
        var acc = 0u;
        for (var i = 0u; i < p.count + p.invalid; i++) {
            let b = select(p.first + i, p.experts, i == p.count);
            // Clamped: offsets not from moe_bucket cannot send a read out of bounds.
            let s = min(offsets[b], p.picks);
            let e = clamp(offsets[b + 1u], s, p.picks);
            let t = (e - s + BM - 1u) / BM;
            if (tile < acc + t) {
                let first = s + (tile - acc) * BM;
                found = vec4<u32>(b, first, min(BM, e - first), 0u);
                break;
            }
            acc += t;
        }
        job = found;
    }
    let j = workgroupUniformLoad(&job);
    if (j.x > p.experts) {
        return;   // past the last bucket's tiles (uniform per workgroup)
    }
    for (var i = tid; i < BM; i += threads) {
        var pick = 0u;
        if (i < j.z) {
            pick = min(order[j.y + i], p.picks - 1u);
        }
        tile_picks[i] = pick;
        tile_rows[i] = select(pick / p.k, pick, p.per_pick != 0u);
    }
    workgroupBarrier();

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    let valid = j.x < p.experts;   // the invalid bucket keeps acc = 0
    let w_base = (j.x - p.first) * p.n * p.cin;   // only read when valid (then j.x is in the block)
    if (valid) {
        for (var k0 = 0u; k0 < p.cin; k0 += TK) {
            for (var e = tid; e < A_TILE; e += threads) {
                let r = e / TK;
                let gc = k0 + e % TK;
                var v = 0.0;
                if (r < j.z && gc < p.cin) {
                    v = x[tile_rows[r] * p.cin + gc];
                }
                a_tile[e] = v;
            }
            // Consecutive threads walk Cin (contiguous in w's [N, Cin] rows).
            for (var e = tid; e < B_TILE; e += threads) {
                let c = e / TK;
                let r = e % TK;
                let gk = k0 + r;
                let gn = col0 + c;
                var v = 0.0;
                if (gk < p.cin && gn < p.n) {
                    v = load_w(w_base + gn * p.cin + gk);
                }
                b_tile[r * BN + c] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < TK; kk++) {
                for (var i = 0u; i < TM; i++) {
                    let av = a_tile[(lid.y * TM + i) * TK + kk];
                    for (var jn = 0u; jn < TN; jn++) {
                        acc[i * TN + jn] += av * b_tile[kk * BN + lid.x * TN + jn];
                    }
                }
            }
            workgroupBarrier();
        }
    }

    for (var i = 0u; i < TM; i++) {
        let r = lid.y * TM + i;
        if (r >= j.z) {
            continue;
        }
        let pick = tile_picks[r];
        for (var jn = 0u; jn < TN; jn++) {
            let c = col0 + lid.x * TN + jn;
            if (c < p.n) {
                var v = acc[i * TN + jn];
                if (valid && p.has_bias != 0u) {
                    v += bias[j.x * p.n + c];
                }
                out[pick * p.n + c] = v;
            }
        }
    }
}
