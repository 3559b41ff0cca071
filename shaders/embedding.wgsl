// Embedding gather: out[r, c] = table[ids[r], c], widened to f32; ids >= vocab give 0.
// One invocation per output element; element = gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    n: u32,       // rows * cols output elements
    cols: u32,    // C
    vocab: u32,   // V
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;     // [V, C] per T_DTYPE
@group(0) @binding(2) var<storage, read> ids: array<u32>;       // [rows]
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [rows, C]

override T_DTYPE: u32 = 0u;   // 0 = f32 bits, 1 = f16 pairs, 2 = bf16 pairs
override WG: u32 = 256u;

fn load_table(e: u32) -> f32 {
    // decode_packed comes from the packed.wgsl prelude.
    return decode_packed(table[select(e >> 1u, e, T_DTYPE == 0u)], e, T_DTYPE);
}

@compute @workgroup_size(WG)
fn embedding(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    let id = ids[r];
    var v = 0.0;
    if (id < p.vocab) {
        v = load_table(id * p.cols + c);
    }
    out[i] = v;
}
