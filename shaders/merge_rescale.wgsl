// MaskedRescale: out = x * mask * scale[r] (* ||x_r||_1 / ||x_r * mask_r||_1 with L1, when both norms
// are >= 1e-7, as mergekit's rescaled_masked_tensor). The norms are reduced in a fixed order:
// rescale_partial sums chunks (workgroup (chunk, row), tree reduction), rescale_factor adds a
// row's chunk sums in order, rescale_apply scales every element.

struct Params {
    r: u32,
    n: u32,
    chunk: u32,    // elements per workgroup in rescale_partial
    chunks: u32,   // chunks per row
    l1: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [R, N]
@group(0) @binding(2) var<storage, read> mask: array<u32>;       // [R, N]
@group(0) @binding(3) var<storage, read> scale: array<f32>;      // [R]
@group(0) @binding(4) var<storage, read_write> part: array<f32>; // [R, chunks, 2] then factor [R]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [R, N]

override WG: u32 = 256u;
var<workgroup> sa: array<f32, WG>;
var<workgroup> sb: array<f32, WG>;

@compute @workgroup_size(WG)
fn rescale_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y;
    let start = wg.x * p.chunk;
    let end = min(start + p.chunk, p.n);
    var a = 0.0;
    var b = 0.0;
    for (var j = start + lid; j < end; j += WG) {
        let v = abs(x[row * p.n + j]);
        a += v;
        b += select(0.0, v, mask[row * p.n + j] != 0u);
    }
    sa[lid] = a;
    sb[lid] = b;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sa[lid] += sa[lid + s];
            sb[lid] += sb[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        part[(row * p.chunks + wg.x) * 2u] = sa[0];
        part[(row * p.chunks + wg.x) * 2u + 1u] = sb[0];
    }
}

// One thread per row.
@compute @workgroup_size(64)
fn rescale_factor(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= p.r) { return; }
    var f = scale[row];
    if (p.l1 != 0u) {
        var before = 0.0;
        var after = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            before += part[(row * p.chunks + c) * 2u];
            after += part[(row * p.chunks + c) * 2u + 1u];
        }
        if (before >= 1e-7 && after >= 1e-7) { f *= before / after; }
    }
    part[p.r * p.chunks * 2u + row] = f;
}

@compute @workgroup_size(WG)
fn rescale_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y;
    let start = wg.x * p.chunk;
    let end = min(start + p.chunk, p.n);
    let f = part[p.r * p.chunks * 2u + row];
    for (var j = start + lid; j < end; j += WG) {
        let i = row * p.n + j;
        out[i] = select(0.0, x[i] * f, mask[i] != 0u);
    }
}
