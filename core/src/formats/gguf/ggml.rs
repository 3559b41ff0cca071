//! ggml tensor types: every id a GGUF file may carry (so any file can be listed and its byte
//! sizes checked), and dequantisation to f32 for the few the runtime loads.
//!
//! Block layouts follow ggml's reference code (`ggml-common.h` `block_q4_0` / `block_q4_1` /
//! `block_q8_0`, `ggml-quants.c` `dequantize_row_*`); ids and sizes follow gguf-py's
//! `GGMLQuantizationType` and `GGML_QUANT_SIZES`. All multi-byte fields are little-endian.

use half::{bf16, f16};

/// A ggml tensor type. Ids 4, 5 and 31..=33, 36..=38 were removed from ggml and are unknown here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K,
    IQ2XXS, IQ2XS, IQ3XXS, IQ1S, IQ4NL, IQ3S, IQ2S, IQ4XS, I8, I16, I32, I64, F64, IQ1M, BF16,
    TQ1_0, TQ2_0, MXFP4,
}

const QK_K: u64 = 256;

/// (type, id, name, elements per block, bytes per block), as in gguf-py's `GGML_QUANT_SIZES`.
const TABLE: [(GgmlType, u32, &str, u64, u64); 32] = {
    use GgmlType::*;
    [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q4_0, 2, "Q4_0", 32, 2 + 16),
        (Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
        (Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
        (Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
        (Q8_0, 8, "Q8_0", 32, 2 + 32),
        (Q8_1, 9, "Q8_1", 32, 4 + 4 + 32),
        (Q2K, 10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
        (Q3K, 11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
        (Q4K, 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
        (Q5K, 13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
        (Q6K, 14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
        (Q8K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
        (IQ2XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
        (IQ2XS, 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
        (IQ3XXS, 18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
        (IQ1S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
        (IQ4NL, 20, "IQ4_NL", 32, 2 + 16),
        (IQ3S, 21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
        (IQ2S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
        (IQ4XS, 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
        (I8, 24, "I8", 1, 1),
        (I16, 25, "I16", 1, 2),
        (I32, 26, "I32", 1, 4),
        (I64, 27, "I64", 1, 8),
        (F64, 28, "F64", 1, 8),
        (IQ1M, 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
        (BF16, 30, "BF16", 1, 2),
        (TQ1_0, 34, "TQ1_0", QK_K, 2 + 4 * 13),
        (TQ2_0, 35, "TQ2_0", QK_K, 2 + 64),
        (MXFP4, 39, "MXFP4", 32, 1 + 16),
    ]
};

impl GgmlType {
    /// The type with this on-disk id, or `None` for ids ggml never had or has removed.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        // Every variant has exactly one row (checked by a unit test), so the fallback is unreachable.
        TABLE.iter().find(|e| e.0 == self).unwrap_or(&TABLE[0])
    }

    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// ggml's name for the type ("Q4_1", "Q4_K", ...), as in error messages and `gguf-dump`.
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block (1 for plain element types).
    pub fn block_len(self) -> u64 {
        self.entry().3
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.entry().4
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_loadable(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `block_q8_0`: f16 scale `d`, then 32 × i8 `q`; element j = q[j] · d.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// `block_q4_0`: f16 `d`, then 16 bytes. Low nibbles are elements 0..16, high nibbles 16..32;
/// element = (nibble − 8) · d.
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = half_at(block, 0);
    for (j, &b) in block[2..18].iter().enumerate() {
        out[j] = (i32::from(b & 0x0f) - 8) as f32 * d;
        out[j + 16] = (i32::from(b >> 4) - 8) as f32 * d;
    }
}

/// `block_q4_1`: f16 `d`, f16 `m`, then 16 bytes in the Q4_0 nibble order; element = nibble · d + m.
fn q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (half_at(block, 0), half_at(block, 2));
    for (j, &b) in block[4..20].iter().enumerate() {
        out[j] = f32::from(b & 0x0f) * d + m;
        out[j + 16] = f32::from(b >> 4) * d + m;
    }
}

fn f16_el(b: &[u8], out: &mut [f32]) {
    out[0] = half_at(b, 0);
}

fn bf16_el(b: &[u8], out: &mut [f32]) {
    out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
}

fn f32_el(b: &[u8], out: &mut [f32]) {
    out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

/// Dequantises `bytes` (whole blocks of type `t`) to f32, or `None` for a type that is not
/// [`GgmlType::is_loadable`] or a length that is not a whole number of blocks.
pub fn dequantize(t: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let f: fn(&[u8], &mut [f32]) = match t {
        GgmlType::F32 => f32_el,
        GgmlType::F16 => f16_el,
        GgmlType::BF16 => bf16_el,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        _ => return None,
    };
    let (bl, bb) = (t.block_len() as usize, t.block_bytes() as usize);
    if !bytes.len().is_multiple_of(bb) {
        return None;
    }
    let mut out = vec![0f32; bytes.len() / bb * bl];
    run_blocks(bytes, &mut out, bb, bl, f);
    Some(out)
}

/// Applies `f` to each (block, output chunk) pair; in parallel natively, since a 100M-parameter
/// model is ~100M element conversions at load.
fn run_blocks(bytes: &[u8], out: &mut [f32], bb: usize, bl: usize, f: fn(&[u8], &mut [f32])) {
    // Group blocks so each task does enough work to amortise scheduling.
    const BLOCKS_PER_TASK: usize = 4096;
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(bl * BLOCKS_PER_TASK).zip(bytes.par_chunks(bb * BLOCKS_PER_TASK)).for_each(|(o, b)| {
            o.chunks_mut(bl).zip(b.chunks_exact(bb)).for_each(|(o, b)| f(b, o));
        });
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = BLOCKS_PER_TASK;
        out.chunks_mut(bl).zip(bytes.chunks_exact(bb)).for_each(|(o, b)| f(b, o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn table_is_consistent() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(GgmlType::from_id(e.1), Some(e.0));
            assert_eq!(e.0.name(), e.2);
            assert!(TABLE[i + 1..].iter().all(|o| o.0 != e.0 && o.1 != e.1), "duplicate row {}", e.2);
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 40, 1000] {
            assert_eq!(GgmlType::from_id(removed), None);
        }
        assert_eq!((GgmlType::Q4K.block_len(), GgmlType::Q4K.block_bytes()), (256, 144));
        assert_eq!(GgmlType::Q6K.block_bytes(), 210);
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let got = dequantize(GgmlType::Q8_0, &b).unwrap();
        let want: Vec<f32> = (0..32).map(|j| (j - 16) as f32 * 0.5).collect();
        assert_eq!(got, want);
        // -128 and 127 are the extremes of an i8.
        b[2] = 0x80;
        b[33] = 0x7f;
        let got = dequantize(GgmlType::Q8_0, &b).unwrap();
        assert_eq!((got[0], got[31]), (-64.0, 63.5));
    }

    /// Nibble j (0..32) of a test block: element j's 4-bit code, chosen so no two halves agree.
    fn nib(j: usize) -> u8 {
        ((j * 7 + 3) % 16) as u8
    }

    fn packed() -> Vec<u8> {
        (0..16).map(|j| nib(j) | (nib(j + 16) << 4)).collect()
    }

    #[test]
    fn q4_0_block_low_nibbles_first() {
        let mut b = h(0.25).to_vec();
        b.extend(packed());
        let got = dequantize(GgmlType::Q4_0, &b).unwrap();
        let want: Vec<f32> = (0..32).map(|j| (i32::from(nib(j)) - 8) as f32 * 0.25).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn q4_1_block_two_blocks() {
        let mut b = Vec::new();
        for (d, m) in [(0.5f32, -1.0f32), (2.0, 3.0)] {
            b.extend(h(d));
            b.extend(h(m));
            b.extend(packed());
        }
        let got = dequantize(GgmlType::Q4_1, &b).unwrap();
        let mut want: Vec<f32> = (0..32).map(|j| f32::from(nib(j)) * 0.5 - 1.0).collect();
        want.extend((0..32).map(|j| f32::from(nib(j)) * 2.0 + 3.0));
        assert_eq!(got, want);
    }

    #[test]
    fn plain_types_and_refusals() {
        let v = [1.5f32, -2.25, 65504.0];
        let f32b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let f16b: Vec<u8> = v.iter().flat_map(|&x| h(x)).collect();
        let bf16b: Vec<u8> = [1.5f32, -2.25, 3.0].iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &f32b).unwrap(), v);
        assert_eq!(dequantize(GgmlType::F16, &f16b).unwrap(), v);
        assert_eq!(dequantize(GgmlType::BF16, &bf16b).unwrap(), [1.5, -2.25, 3.0]);
        assert_eq!(dequantize(GgmlType::Q4K, &[0; 144]), None);
        assert_eq!(dequantize(GgmlType::Q8_0, &[0; 33]), None);
    }

    #[test]
    fn many_blocks_match_one_by_one() {
        // More than one parallel task's worth of blocks, so chunk boundaries are exercised.
        let n = 4096 * 2 + 5;
        let b: Vec<u8> = (0..n * 20).map(|i| (i * 31 % 251) as u8 & if i % 20 == 1 || i % 20 == 3 { 0x3b } else { 0xff }).collect();
        let all = dequantize(GgmlType::Q4_1, &b).unwrap();
        for k in [0, 4095, 4096, n - 1] {
            let one = dequantize(GgmlType::Q4_1, &b[k * 20..(k + 1) * 20]).unwrap();
            assert_eq!(&all[k * 32..(k + 1) * 32], &one[..]);
        }
    }
}
