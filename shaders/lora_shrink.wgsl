// Multi-LoRA shrink (Punica's BGMV "shrink"): v[m, k, r] = sum_i a[sel[m, k], r, i] * x[m, i], and
// zeros where sel[m, k] >= N (an empty slot). One workgroup per (block of WG / LANES ranks, pick
// (m, k)) = workgroup_id (x, y + z * num_workgroups.y). LANES threads share one rank r: each walks In
// with stride LANES (neighbouring lanes read neighbouring weights), then the rank's first lane adds
// the LANES partial sums from workgroup memory: one barrier, not a log2(LANES)-step tree (each
// barrier is a coroutine switch per SIMD slice on lavapipe, and the serial sum is only LANES adds). Each pick reads its own adapter where `sel` points, so a batch costs the
// same whether its rows share one adapter or use different ones: no sort, no bucketing, no readback.

struct Params {
    picks: u32,      // M * K
    k: u32,          // K slots per row
    rank: u32,       // R
    cin: u32,        // In
    adapters: u32,   // N
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [M, In]
@group(0) @binding(2) var<storage, read> a: array<u32>;          // [N, R, In] per W_DTYPE
@group(0) @binding(3) var<storage, read> sel: array<u32>;        // [M, K]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // [M, K, R]

override W_DTYPE: u32 = 0u;   // 0 = f32 bits, 1 = f16 pairs, 2 = bf16 pairs (decode_packed: packed.wgsl)
override WG: u32 = 256u;
override LANES: u32 = 32u;    // threads per rank: a power of two dividing WG
// Elements one lane visits per inner loop: lavapipe stops a loop after ~65k iterations.
const CHUNK: u32 = 16384u;
var<workgroup> part: array<f32, WG>;

fn load_a(e: u32) -> f32 {
    return decode_packed(a[select(e >> 1u, e, W_DTYPE == 0u)], e, W_DTYPE);
}

@compute @workgroup_size(WG)
fn lora_shrink(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pick = wg.y + wg.z * nwg.y;
    if (pick >= p.picks) { return; }   // uniform per workgroup
    let lane = lid % LANES;
    let r = wg.x * (WG / LANES) + lid / LANES;
    let ad = sel[pick];
    var acc = 0.0;
    if (ad < p.adapters && r < p.rank) {
        let x_base = (pick / p.k) * p.cin;
        let a_base = (ad * p.rank + r) * p.cin;
        for (var c0 = 0u; c0 < p.cin; c0 += CHUNK * LANES) {
            let end = min(p.cin, c0 + CHUNK * LANES);
            for (var i = c0 + lane; i < end; i += LANES) {
                acc += load_a(a_base + i) * x[x_base + i];
            }
        }
    }
    part[lid] = acc;
    workgroupBarrier();
    if (lane == 0u && r < p.rank) {
        var sum = 0.0;
        for (var j = 0u; j < LANES; j++) {
            sum += part[lid + j];
        }
        out[pick * p.rank + r] = sum;
    }
}
