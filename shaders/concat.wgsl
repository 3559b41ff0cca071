// Concat: out = [a | b] along one axis, seen as `outer` blocks of ra words of `a` then rb of `b`.
// Elements are 32-bit words (f32, u32, i32). One invocation per output word;
// element = gid.x + gid.y * num_workgroups.x * WG.

struct Params {
    n: u32,     // outer * (ra + rb)
    ra: u32,    // words of `a` per outer block
    rb: u32,    // words of `b` per outer block
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn concat(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let row = p.ra + p.rb;
    let o = i / row;
    let j = i % row;
    if (j < p.ra) {
        out[i] = a[o * p.ra + j];
    } else {
        out[i] = b[o * p.rb + j - p.ra];
    }
}
