// Top-k per row, descending, ties broken by the lower index. One workgroup per row
// (row = wg.x + wg.y * num_workgroups.x). Pass t selects the best element strictly after the
// previous pick in (value desc, index asc) order: each thread scans a strided slice of the row,
// then the workgroup reduces the (value, index) candidates. No scratch beyond WG pairs, O(k * N / WG)
// steps per thread: meant for routing and sampling (k small), not for full sorts.

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
const NONE: u32 = 0xffffffffu;
var<workgroup> cand_v: array<f32, WG>;
var<workgroup> cand_i: array<u32, WG>;

// Whether candidate (v, i) ranks before (bv, bi): NONE ranks last, then value desc, index asc.
fn before(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != NONE && (bi == NONE || v > bv || (v == bv && i < bi));
}

@compute @workgroup_size(WG)
fn topk(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }   // uniform per workgroup
    let base = row * p.n;
    var prev_v = 0.0;
    var prev_i = NONE;
    for (var t = 0u; t < p.k; t++) {
        var best_v = 0.0;
        var best_i = NONE;
        for (var j = lid; j < p.n; j += WG) {
            let v = x[base + j];
            let after = prev_i == NONE || v < prev_v || (v == prev_v && j > prev_i);
            if (after && before(v, j, best_v, best_i)) {
                best_v = v;
                best_i = j;
            }
        }
        cand_v[lid] = best_v;
        cand_i[lid] = best_i;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s && before(cand_v[lid + s], cand_i[lid + s], cand_v[lid], cand_i[lid])) {
                cand_v[lid] = cand_v[lid + s];
                cand_i[lid] = cand_i[lid + s];
            }
            workgroupBarrier();
        }
        prev_v = cand_v[0];
        prev_i = cand_i[0];
        if (lid == 0u) {
            values[row * p.k + t] = prev_v;
            indices[row * p.k + t] = prev_i;
        }
        workgroupBarrier();
    }
}
