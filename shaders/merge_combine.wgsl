// TaskMerge: sign election and disjoint merge of R task vectors, one invocation per element j
// (element = gid.x + gid.y * num_workgroups.x * WG). Sums run over r in order in f32, exactly as
// cpu/merge.rs does, so the elected sign is the same on both.
//   v_r = weighted_sign ? w_r * d_r : d_r;  s = sign by consensus (1 sum, 2 count; 0 none)
//   agree_r = consensus == 0 || sign(v_r) == s
//   m = sum agree_r * w_r * d_r;  div = sum agree_r * (count_divisor ? 1 : w_r)
//   out = base + lambda * (normalize ? m / div' : m), div' = 1 where div == 0 (or |div| < 1e-8 without consensus)

struct Params {
    n: u32,
    r: u32,
    consensus: u32,
    weighted_sign: u32,
    count_divisor: u32,
    normalize: u32,
    lambda: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> base: array<f32>;     // [N]
@group(0) @binding(2) var<storage, read> deltas: array<f32>;   // [R, N]
@group(0) @binding(3) var<storage, read> weights: array<f32>;  // [R]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [N]

override WG: u32 = 256u;

fn sgn(v: f32) -> f32 {
    return select(select(0.0, -1.0, v < 0.0), 1.0, v > 0.0);
}

@compute @workgroup_size(WG)
fn task_merge(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * WG;
    if (j >= p.n) { return; }
    var elected = 0.0;
    if (p.consensus != 0u) {
        var s = 0.0;
        for (var r = 0u; r < p.r; r++) {
            var v = deltas[r * p.n + j];
            if (p.weighted_sign != 0u) { v = v * weights[r]; }
            s += select(v, sgn(v), p.consensus == 2u);
        }
        elected = select(-1.0, 1.0, s >= 0.0);
    }
    var m = 0.0;
    var div = 0.0;
    for (var r = 0u; r < p.r; r++) {
        let d = deltas[r * p.n + j];
        var v = d;
        if (p.weighted_sign != 0u) { v = d * weights[r]; }
        if (p.consensus == 0u || sgn(v) == elected) {
            m += d * weights[r];
            div += select(weights[r], 1.0, p.count_divisor != 0u);
        }
    }
    if (p.consensus == 0u) {
        if (abs(div) < 1e-8) { div = 1.0; }
    } else if (div == 0.0) {
        div = 1.0;
    }
    if (p.normalize != 0u) { m = m / div; }
    out[j] = base[j] + p.lambda * m;
}
