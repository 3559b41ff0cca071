// Row-wise reductions over the last dimension: one workgroup per row, WG threads striding over
// the row, tree reduction in workgroup memory. Row = wg.x + wg.y * num_workgroups.x.
//   softmax:    out = exp(x - max) / sum(exp(x - max))
//   layer_norm: out = (x - mean) / sqrt(var + eps) * gamma + beta
//   rms_norm:   out = x / sqrt(mean(x^2) + eps) * gamma

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [rows, cols]
@group(0) @binding(2) var<storage, read> gamma: array<f32>;     // [cols] (dummy for softmax)
@group(0) @binding(3) var<storage, read> beta: array<f32>;      // [cols] (dummy unless layer_norm)
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [rows, cols]

override WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }   // uniform per workgroup, so barriers stay uniform
    let base = row * p.cols;
    var m = -3.402823466e38;
    for (var c = lid; c < p.cols; c += WG) { m = max(m, x[base + c]); }
    m = reduce_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += exp(x[base + c] - m); }
    s = reduce_sum(lid, s);
    for (var c = lid; c < p.cols; c += WG) { out[base + c] = exp(x[base + c] - m) / s; }
}

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) { s += x[base + c]; }
    let mean = reduce_sum(lid, s) / n;
    var v = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let d = x[base + c] - mean; v += d * d; }
    let inv = inverseSqrt(reduce_sum(lid, v) / n + p.eps);
    for (var c = lid; c < p.cols; c += WG) { out[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c]; }
}

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var v = 0.0;
    for (var c = lid; c < p.cols; c += WG) { let d = x[base + c]; v += d * d; }
    let inv = inverseSqrt(reduce_sum(lid, v) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) { out[base + c] = x[base + c] * inv * gamma[c]; }
}
