// Rotary position embedding, HF rotate-half convention, on x [rows = .. * T, D]:
//   angle = positions[row % T] * theta^(-2i/D) for i < D/2 (positions [T]), or with per-batch
//   positions [B, T]: positions[(row / rows_per_batch) * T + row % T]
//   out[i]       = x[i] * cos - x[i + D/2] * sin
//   out[i + D/2] = x[i + D/2] * cos + x[i] * sin
// One invocation per (row, i) pair; pair = gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    pairs: u32,   // rows * D/2
    t: u32,       // T
    d: u32,       // D (even)
    theta: f32,
    rows_per_batch: u32,  // rows of x per batch entry when positions are [B, T]; 0 when [T]
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [.., T, D]
@group(0) @binding(2) var<storage, read> positions: array<u32>; // [T] or [B, T]
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [.., T, D]

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = gid.x + gid.y * nwg.x * WG;
    if (q >= p.pairs) { return; }
    let half = p.d / 2u;
    let row = q / half;
    let i = q % half;
    var pi = row % p.t;
    if (p.rows_per_batch != 0u) {
        pi = (row / p.rows_per_batch) * p.t + row % p.t;
    }
    let pos = f32(positions[pi]);
    // As transformers computes it: inv_freq in f32, then pos * inv_freq.
    let inv_freq = 1.0 / pow(p.theta, f32(2u * i) / f32(p.d));
    // Reduce to [-pi, pi] first: GPU sin/cos are only accurate there (Vulkan/WebGPU allow 2^-11
    // absolute error inside, nothing is promised outside).
    let raw = pos * inv_freq;
    let ang = raw - 6.283185307179586 * round(raw / 6.283185307179586);
    let c = cos(ang);
    let s = sin(ang);
    let base = row * p.d;
    let a = x[base + i];
    let b = x[base + i + half];
    out[base + i] = a * c - b * s;
    out[base + i + half] = b * c + a * s;
}
