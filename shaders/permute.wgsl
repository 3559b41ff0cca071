// Permute: out[o0, o1, o2, o3] = x[sum_i o_i * src_stride[i]], shapes padded to rank 4.
// The host folds the permutation into `src_stride` (input stride of the axis each output axis reads),
// so the kernel is a plain gather. Elements are 32-bit words (f32, u32, i32); 16-bit dtypes are
// permuted on the host side until a kernel needs them on the device.
// One invocation per output element; element = gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    out_dims: vec4<u32>,
    src_stride: vec4<u32>,
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;         // input, any 32-bit dtype
@group(0) @binding(2) var<storage, read_write> out: array<u32>; // [out_dims]

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn permute(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    var rem = i;
    let o3 = rem % p.out_dims.w; rem /= p.out_dims.w;
    let o2 = rem % p.out_dims.z; rem /= p.out_dims.z;
    let o1 = rem % p.out_dims.y; rem /= p.out_dims.y;
    let o0 = rem;
    out[i] = x[o0 * p.src_stride.x + o1 * p.src_stride.y + o2 * p.src_stride.z + o3 * p.src_stride.w];
}

