// MagnitudeMask: per row of x [R, N], mask the elements whose rank by (|x| descending, index
// ascending) lies in [ranks[r, 0], ranks[r, 1]). For each bound k (two per row) a radix select finds
// the k-th element: four 8-bit passes over the order key of |x| (its float bits without the sign,
// which order like the value), top byte first, then four passes over the index of the tied
// elements (lowest first). Each pass = sel_hist (histogram of the candidates' next digit) +
// sel_pick (walk the 256 bins). sel_mask then compares every element with both thresholds.
// Same algorithm as sparsify::topk_threshold on the CPU, so the masks are identical.

struct Params {
    r: u32,
    n: u32,
    pass_: u32,   // 0..3: value bytes (shift 24, 16, 8, 0); 4..7: index bytes
    shift: u32,
    known: u32,   // bits of the key fixed by earlier passes
    chunk: u32,   // elements per workgroup in sel_hist / sel_mask
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [R, N]
@group(0) @binding(2) var<storage, read> ranks: array<u32>;        // [R, 2]
@group(0) @binding(3) var<storage, read_write> st: array<atomic<u32>>; // [R, 2, 260]: prefix, remaining, flag, tie prefix, hist[256]
@group(0) @binding(4) var<storage, read_write> mask: array<u32>;   // [R, N]

override WG: u32 = 256u;
const STRIDE: u32 = 260u;
const NONE: u32 = 0u;    // k = 0: nothing ranks above the bound
const ACTIVE: u32 = 1u;
const ALL: u32 = 2u;     // k >= N: everything does

var<workgroup> lh: array<atomic<u32>, 512>;

fn key(v: f32) -> u32 {
    return bitcast<u32>(v) & 0x7fffffffu;
}

// One thread per (row, bound).
@compute @workgroup_size(64)
fn sel_init(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    if (s >= p.r * 2u) { return; }
    let k = ranks[s];
    let o = s * STRIDE;
    atomicStore(&st[o], 0u);
    atomicStore(&st[o + 1u], k);
    atomicStore(&st[o + 2u], select(select(ACTIVE, ALL, k >= p.n), NONE, k == 0u));
    atomicStore(&st[o + 3u], 0u);
    for (var d = 0u; d < 256u; d++) { atomicStore(&st[o + 4u + d], 0u); }
}

// Workgroup (chunk, row): local histograms of both bounds, then added to the row's.
@compute @workgroup_size(WG)
fn sel_hist(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y;
    atomicStore(&lh[lid], 0u);
    atomicStore(&lh[lid + 256u], 0u);
    workgroupBarrier();
    let start = wg.x * p.chunk;
    let end = min(start + p.chunk, p.n);
    for (var b = 0u; b < 2u; b++) {
        let o = (row * 2u + b) * STRIDE;
        if (atomicLoad(&st[o + 2u]) != ACTIVE) { continue; }
        let prefix = atomicLoad(&st[o]);
        let tie = atomicLoad(&st[o + 3u]);
        for (var j = start + lid; j < end; j += WG) {
            let kv = key(x[row * p.n + j]);
            if (p.pass_ < 4u) {
                if ((kv & p.known) == prefix) { atomicAdd(&lh[b * 256u + ((kv >> p.shift) & 255u)], 1u); }
            } else if (kv == prefix && (j & p.known) == tie) {
                atomicAdd(&lh[b * 256u + ((j >> p.shift) & 255u)], 1u);
            }
        }
    }
    workgroupBarrier();
    for (var b = 0u; b < 2u; b++) {
        let c = atomicLoad(&lh[b * 256u + lid]);
        if (c != 0u) { atomicAdd(&st[(row * 2u + b) * STRIDE + 4u + lid], c); }
    }
}

// One thread per (row, bound): walk the bins (values: high digit first; indices: low first).
@compute @workgroup_size(64)
fn sel_pick(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    if (s >= p.r * 2u) { return; }
    let o = s * STRIDE;
    if (atomicLoad(&st[o + 2u]) != ACTIVE) { return; }
    var rem = atomicLoad(&st[o + 1u]);
    var digit = 0u;
    for (var i = 0u; i < 256u; i++) {
        let d = select(i, 255u - i, p.pass_ < 4u);
        let c = atomicLoad(&st[o + 4u + d]);
        digit = d;
        if (c >= rem) { break; }
        rem -= c;
    }
    atomicStore(&st[o + 1u], rem);
    if (p.pass_ < 4u) {
        atomicStore(&st[o], atomicLoad(&st[o]) | (digit << p.shift));
    } else {
        atomicStore(&st[o + 3u], atomicLoad(&st[o + 3u]) | (digit << p.shift));
    }
    for (var d = 0u; d < 256u; d++) { atomicStore(&st[o + 4u + d], 0u); }
}

fn above(o: u32, kv: u32, j: u32) -> bool {
    let flag = atomicLoad(&st[o + 2u]);
    if (flag != ACTIVE) { return flag == ALL; }
    let t = atomicLoad(&st[o]);
    return kv > t || (kv == t && j <= atomicLoad(&st[o + 3u]));
}

@compute @workgroup_size(WG)
fn sel_mask(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y;
    let start = wg.x * p.chunk;
    let end = min(start + p.chunk, p.n);
    for (var j = start + lid; j < end; j += WG) {
        let kv = key(x[row * p.n + j]);
        let inside = above((row * 2u + 1u) * STRIDE, kv, j) && !above(row * 2u * STRIDE, kv, j);
        mask[row * p.n + j] = select(0u, 1u, inside);
    }
}
