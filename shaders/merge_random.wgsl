// RandomMask (DARE) and DellaMask (DELLA): keep masks from the counter-based RNG of
// core/src/sparsify (documented there): h = mix(mix(mix(mix(seed_lo ^ 0x9e3779b9) ^ seed_hi ^ key)
// ^ idx_lo) ^ idx_hi), uniform = (h >> 8) * 2^-24, keep = uniform < p. The draw depends only on
// (seed, tensor key, flat index), so any dispatch order gives the CPU's masks bit for bit.
// Grid: one invocation per element, element = gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    numel: u32,
    n: u32,        // random_mask: row length N; della_mask: group length C
    groups: u32,   // della_mask: groups per row G
    seed_lo: u32,
    seed_hi: u32,
    key: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [R, N] or [R, G, C]
@group(0) @binding(2) var<storage, read> prob: array<f32>;       // [R] or [R, C]
@group(0) @binding(3) var<storage, read_write> mask: array<u32>; // like x

override WG: u32 = 256u;

fn mix32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn uniform01(idx: u32) -> f32 {
    let h = mix32(mix32(mix32(mix32(p.seed_lo ^ 0x9e3779b9u) ^ p.seed_hi ^ p.key) ^ idx) ^ 0u);
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(WG)
fn random_mask(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= p.numel) { return; }
    mask[e] = select(0u, 1u, uniform01(e) < prob[e / p.n]);
}

// Rank of element e among the C of its group by (|x|, index) ascending: O(C) per element.
@compute @workgroup_size(WG)
fn della_mask(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= p.numel) { return; }
    let c = p.n;
    let start = (e / c) * c;
    let me = bitcast<u32>(x[e]) & 0x7fffffffu;
    var q = 0u;
    for (var j = start; j < start + c; j++) {
        let kj = bitcast<u32>(x[j]) & 0x7fffffffu;
        if (kj < me || (kj == me && j < e)) { q += 1u; }
    }
    let r = e / (c * p.groups);
    mask[e] = select(0u, 1u, uniform01(e) < prob[r * c + q]);
}
