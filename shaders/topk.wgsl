// Top-k per row, descending, ties broken by the lower index. One invocation per row; pass t picks
// the best element strictly after the previous pick in (value desc, index asc) order, so no
// scratch memory is needed. O(k * N) per row: meant for routing (k small), not for sorting.

struct Params {
    rows: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;              // [rows, N]
@group(0) @binding(2) var<storage, read_write> values: array<f32>;   // [rows, K]
@group(0) @binding(3) var<storage, read_write> indices: array<u32>;  // [rows, K]

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn topk(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.rows) { return; }
    let base = row * p.n;
    var prev_v = 0.0;
    var prev_i = 0u;
    for (var t = 0u; t < p.k; t++) {
        var best_v = 0.0;
        var best_i = 0xffffffffu;
        for (var j = 0u; j < p.n; j++) {
            let v = x[base + j];
            // Eligible: after the previous pick in (value desc, index asc) order.
            let after = t == 0u || v < prev_v || (v == prev_v && j > prev_i);
            // Better: larger value, or the first (lowest index) of equal values.
            if (after && (best_i == 0xffffffffu || v > best_v)) {
                best_v = v;
                best_i = j;
            }
        }
        values[row * p.k + t] = best_v;
        indices[row * p.k + t] = best_i;
        prev_v = best_v;
        prev_i = best_i;
    }
}
