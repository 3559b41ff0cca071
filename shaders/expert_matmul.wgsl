// Expert matmul (MoE): out[r, j, n] = sum_c x[r(, j), c] * w[idx[r, j], n, c].
// One workgroup per (block of WG outputs n, pick (r, j)) = workgroup_id (x, y + z * num_workgroups.y);
// each thread owns one output n and walks Cin, with the input row staged in workgroup memory in
// chunks of WG. A GEMV per pick: no host readback of the routing, no bucketing pass.
// A stack split to fit one binding runs once per block of experts [first, first + experts): a pick
// routed elsewhere gets 0, written only when write_all (the first block), so each output is written
// by the block that owns its expert. Unsplit: first = 0, experts = E, write_all = 1.

struct Params {
    picks: u32,      // R * K
    k: u32,          // K
    n: u32,          // N outputs per expert
    cin: u32,        // Cin
    experts: u32,    // experts in this block of w
    per_pick: u32,   // 1: x is [R, K, Cin]; 0: x is [R, Cin]
    first: u32,      // the block's first expert
    write_all: u32,  // 1: also write 0 for picks routed outside the block (and ids >= E)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [R, Cin] or [R, K, Cin]
@group(0) @binding(2) var<storage, read> w: array<u32>;          // [experts, N, Cin] per W_DTYPE (the block)
@group(0) @binding(3) var<storage, read> idx: array<u32>;        // [R, K]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // [R, K, N]

override W_DTYPE: u32 = 0u;   // 0 = f32 bits, 1 = f16 pairs, 2 = bf16 pairs (decode_packed: packed.wgsl)
override WG: u32 = 64u;
var<workgroup> xs: array<f32, WG>;

fn load_w(e: u32) -> f32 {
    return decode_packed(w[select(e >> 1u, e, W_DTYPE == 0u)], e, W_DTYPE);
}

@compute @workgroup_size(WG)
fn expert_matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pick = wg.y + wg.z * nwg.y;
    if (pick >= p.picks) { return; }   // uniform per workgroup
    let n = wg.x * WG + lid;
    let ex = idx[pick] - p.first;   // wraps past `experts` for ids below the block
    let x_base = select((pick / p.k) * p.cin, pick * p.cin, p.per_pick != 0u);
    let w_base = ex * p.n * p.cin + n * p.cin;
    var acc = 0.0;
    for (var c0 = 0u; c0 < p.cin; c0 += WG) {
        let c = c0 + lid;
        xs[lid] = select(0.0, x[x_base + c], c < p.cin);
        workgroupBarrier();
        if (ex < p.experts && n < p.n) {
            let m = min(WG, p.cin - c0);
            for (var t = 0u; t < m; t++) {
                acc += xs[t] * load_w(w_base + c0 + t);
            }
        }
        workgroupBarrier();
    }
    if (n < p.n && (ex < p.experts || p.write_all != 0u)) {
        out[pick * p.n + n] = acc;
    }
}
