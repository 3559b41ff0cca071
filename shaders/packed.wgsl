// Prelude shared by the kernels that read packed weights (prepended by the runtime, see
// core/src/gpu/kernels.rs). f16 and bf16 values arrive two per u32 word, low half first, so
// kernels run without the shader-f16 feature; the decode is exact, subnormals included.

// One 16-bit half (in the low bits of `h`) as f32. `dtype`: 1 = f16, 2 = bf16.
fn decode_half(h: u32, dtype: u32) -> f32 {
    if (dtype == 2u) {
        return bitcast<f32>(h << 16u);
    }
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        let v = f32(m) * 5.9604645e-8; // m * 2^-24: zero or subnormal
        return select(v, -v, s != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(s | 0x7f800000u | (m << 13u)); // inf / NaN
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

// Element `e` of a packed array whose word at index `e >> 1` is `w`: dtype 0 = f32 bits.
fn decode_packed(w: u32, e: u32, dtype: u32) -> f32 {
    if (dtype == 0u) {
        return bitcast<f32>(w);
    }
    return decode_half(select(w & 0xffffu, w >> 16u, (e & 1u) == 1u), dtype);
}
