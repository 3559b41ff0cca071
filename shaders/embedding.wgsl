// Embedding gather: out[r, c] = table[ids[r], c], widened to f32; ids >= vocab give 0.
// A table split into row blocks runs one dispatch per block: `table` holds rows [first,
// first + vocab); ids outside it write 0 when `zero_outside` (the first block) and are left alone
// otherwise, so the blocks in order fill every row.
// One invocation per output element; element = gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    n: u32,       // rows * cols output elements
    cols: u32,    // C
    vocab: u32,   // rows in `table` (V unless it is a row block)
    first: u32,   // id of its first row
    zero_outside: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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
    let id = ids[r] - p.first; // wraps past vocab for ids below the block
    if (id < p.vocab) {
        out[i] = load_table(id * p.cols + c);
    } else if (p.zero_outside != 0u) {
        out[i] = 0.0;
    }
}
