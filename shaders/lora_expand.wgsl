// Multi-LoRA expand (Punica's BGMV "expand"):
//   out[m, o] = y[m, o] + sum_k w[m, k] * sum_r b[sel[m, k], o, r] * v[m, k, r],
// slots with sel[m, k] >= N (empty) skipped, their w and v unread. One workgroup per (block of WG
// outputs o, row m) = workgroup_id (x, y + z * num_workgroups.y); each thread owns one output and
// walks the row's K slots and R ranks. v[m, k, :] is the same for the whole workgroup, so its loads
// are broadcasts from cache: staging it in workgroup memory would only add barriers. The row's
// adapters are read where `sel` points: shared or different adapters cost the same.

struct Params {
    rows: u32,       // M
    k: u32,          // K slots per row
    rank: u32,       // R
    cout: u32,       // Out
    adapters: u32,   // N
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;          // [M, Out]
@group(0) @binding(2) var<storage, read> v: array<f32>;          // [M, K, R]
@group(0) @binding(3) var<storage, read> b: array<u32>;          // [N, Out, R] per W_DTYPE
@group(0) @binding(4) var<storage, read> sel: array<u32>;        // [M, K]
@group(0) @binding(5) var<storage, read> w: array<f32>;          // [M, K]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;  // [M, Out]

override W_DTYPE: u32 = 0u;   // 0 = f32 bits, 1 = f16 pairs, 2 = bf16 pairs (decode_packed: packed.wgsl)
override WG: u32 = 64u;
// No loop here needs chunking for lavapipe's ~65k-iteration cap: the runtime keeps K and R <= 16384.

fn load_b(e: u32) -> f32 {
    return decode_packed(b[select(e >> 1u, e, W_DTYPE == 0u)], e, W_DTYPE);
}

@compute @workgroup_size(WG)
fn lora_expand(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m = wg.y + wg.z * nwg.y;
    let o = wg.x * WG + lid;
    if (m >= p.rows || o >= p.cout) { return; }
    var acc = 0.0;
    for (var s = 0u; s < p.k; s++) {
        let pick = m * p.k + s;
        let ad = sel[pick];
        if (ad >= p.adapters) { continue; }   // empty slot: w and v unread
        let v_base = pick * p.rank;
        let b_base = (ad * p.cout + o) * p.rank;
        var dot = 0.0;
        for (var r = 0u; r < p.rank; r++) {
            dot += v[v_base + r] * load_b(b_base + r);
        }
        acc += w[pick] * dot;
    }
    out[m * p.cout + o] = y[m * p.cout + o] + acc;
}
