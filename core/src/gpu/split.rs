//! Weights above the binding limit, stored as blocks along their first dimension.
//!
//! [`GpuBackend::upload_weight`] splits a tensor larger than one binding may hold into blocks of
//! whole rows (a matrix `[rows, cols]`) or whole experts (an expert stack `[E, N, Cin]`), as even
//! as possible and each within the limit. The ops that take a split tensor run once per block:
//! - `Matmul { trans_b: true }` with it as the weight: each block writes its own column range of
//!   the output; a bias is read at that offset, or split like the weight ([`GpuBackend::upload_like`]).
//! - `Embedding` with it as the table: the first block writes zeros for ids outside its rows, the
//!   later ones only their own rows.
//! - `ExpertMatmul` / `GroupedMatmul` with it as the expert stack: each block computes the picks
//!   routed to its experts (the kernels take the block's first expert and count); ExpertMatmul's
//!   first block writes zeros for every other pick, GroupedMatmul's also takes the invalid bucket
//!   (ids >= E), so every output row is written exactly as the unsplit dispatch writes it.
//!
//! Any other use is [`Error::BufferTooLarge`] naming the tensor. [`GpuBackend::map_blocks`] runs
//! ops on each block and gathers the results into a tensor split the same way: fusing a LoRA delta
//! into a split weight (`lora/runtime.rs`) adds each block's rows of `B·A` to that block.
//!
//! An expert stack is split only between experts: one expert above the limit is an error (a real
//! one, e.g. Mixtral's `[14336, 4096]` in f16, is 117 MB, under WebGPU's 128 MiB default).

use super::{buffer, padded, GpuBackend, GpuBuffer, Mem};
use crate::device::Backend;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::shape::Shape;
use crate::tensor::{Storage, Tensor, TensorData};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A tensor stored as blocks of its first dimension ("rows": matrix rows, or experts), each in its
/// own buffer.
#[derive(Debug)]
pub(crate) struct Split {
    /// The tensor's name (what errors report).
    pub name: String,
    /// Elements per row: the product of every dimension after the first (1 for a vector).
    pub row: usize,
    pub blocks: Vec<Block>,
    /// Bytes of the whole tensor.
    pub bytes: u64,
}

#[derive(Debug)]
pub(crate) struct Block {
    pub buf: wgpu::Buffer,
    /// Index of its first row.
    pub first: usize,
    pub rows: usize,
}

/// The blocks of a split tensor; `None` for a whole one (or a CPU tensor).
pub(crate) fn split_of(t: &Tensor) -> Option<&Split> {
    match &t.storage {
        Storage::Gpu(GpuBuffer { mem: Mem::Split(s) }) => Some(s),
        _ => None,
    }
}

/// `t`'s buffers as (buffer, first row, rows): one entry covering every row unless it is split.
pub(crate) fn blocks(t: &Tensor) -> Result<Vec<(&wgpu::Buffer, usize, usize)>> {
    match split_of(t) {
        Some(s) => Ok(s.blocks.iter().map(|b| (&b.buf, b.first, b.rows)).collect()),
        None => Ok(vec![(buffer(t)?, 0, t.dims().first().copied().unwrap_or(1))]),
    }
}

/// `rows` rows in as few blocks of at most `per_block` as possible, their sizes differing by at
/// most one row: (first row, rows) each.
fn even_ranges(rows: usize, per_block: usize) -> Vec<(usize, usize)> {
    let n = rows.div_ceil(per_block.max(1)).max(1);
    let (q, extra) = (rows / n, rows % n);
    let mut first = 0;
    (0..n)
        .map(|i| {
            let len = q + (i < extra) as usize;
            first += len;
            (first - len, len)
        })
        .collect()
}

impl GpuBackend {
    /// Uploads the weight `name`; above the binding limit a matrix or an expert stack is split into
    /// blocks that each fit (see the module docs). [`Error::BufferTooLarge`] naming it when it has
    /// another rank, or when one row (one expert) alone is too big.
    pub fn upload_weight(&self, data: &TensorData, name: &str) -> Result<Tensor> {
        let bytes = data.data().as_bytes();
        let limit = self.inner.max_binding;
        if padded(bytes.len() as u64) <= limit {
            return self.upload(data);
        }
        let rank = data.dims().len();
        if rank != 2 && rank != 3 {
            // Only the ops that read a matrix or an expert stack take a split tensor.
            let what = format!("'{name}' ({:?}; only 2-D weights are split to fit)", data.dims());
            return Err(Error::BufferTooLarge { what, bytes: bytes.len() as u64, limit });
        }
        let rows = data.dims()[0];
        let row_bytes = (bytes.len() / rows.max(1)) as u64;
        let per_block = limit.checked_div(row_bytes).unwrap_or(0) as usize;
        if per_block == 0 {
            let what = if rank == 2 {
                format!("'{name}' (one row of {row_bytes} bytes; a tensor is split only between rows)")
            } else {
                format!("'{name}' (one expert, {:?}, of {row_bytes} bytes; an expert stack is split only between experts)", &data.dims()[1..])
            };
            return Err(Error::BufferTooLarge { what, bytes: bytes.len() as u64, limit });
        }
        self.upload_rows(data, name, &even_ranges(rows, per_block))
    }

    /// Uploads `data` as the row blocks `ranges` (first row, rows).
    fn upload_rows(&self, data: &TensorData, name: &str, ranges: &[(usize, usize)]) -> Result<Tensor> {
        let bytes = data.data().as_bytes();
        let rows = data.dims().first().copied().unwrap_or(1);
        let row_bytes = bytes.len() / rows.max(1);
        let mut blocks = Vec::with_capacity(ranges.len());
        for &(first, n) in ranges {
            let part = &bytes[first * row_bytes..(first + n) * row_bytes];
            self.check_size(name, padded(part.len() as u64))?;
            blocks.push(Block { buf: self.upload_bytes(part), first, rows: n });
        }
        self.inner.split_tensors.fetch_add(1, Ordering::Relaxed);
        self.inner.split_blocks.fetch_add(blocks.len() as u64, Ordering::Relaxed);
        let row = data.dims().iter().skip(1).product();
        let split = Split { name: name.to_string(), row, blocks, bytes: bytes.len() as u64 };
        Ok(Tensor { shape: *data.shape(), dtype: data.dtype(), storage: Storage::Gpu(GpuBuffer { mem: Mem::Split(Arc::new(split)) }) })
    }

    /// Uploads `data` (e.g. a bias) split into the same row blocks as `like` when `like` is split
    /// and has as many rows; otherwise as [`GpuBackend::upload_weight`].
    pub fn upload_like(&self, data: &TensorData, name: &str, like: &Tensor) -> Result<Tensor> {
        match split_of(like) {
            Some(s) if data.dims().first() == like.dims().first() => {
                let ranges: Vec<(usize, usize)> = s.blocks.iter().map(|b| (b.first, b.rows)).collect();
                self.upload_rows(data, name, &ranges)
            }
            _ => self.upload_weight(data, name),
        }
    }

    /// `f(block, first row)` on each block of `t` (on `t` itself, first row 0, when it is whole),
    /// each result the block's shape, gathered into a tensor split like `t` (same name and
    /// blocks). For element-wise updates of a split weight, such as fusing a LoRA delta.
    pub(crate) fn map_blocks(&self, t: &Tensor, f: &mut dyn FnMut(&Tensor, usize) -> Result<Tensor>) -> Result<Tensor> {
        let Some(s) = split_of(t) else { return f(t, 0) };
        let mut blocks = Vec::with_capacity(s.blocks.len());
        let mut dtype = t.dtype;
        for b in &s.blocks {
            let mut dims = t.dims().to_vec();
            dims[0] = b.rows;
            let view = Tensor { shape: Shape::new(&dims)?, dtype: t.dtype, storage: Storage::Gpu(GpuBuffer::one(b.buf.clone())) };
            let out = f(&view, b.first)?;
            if out.dims() != view.dims() || (!blocks.is_empty() && out.dtype != dtype) {
                return Err(Error::ShapeMismatch {
                    op: "map_blocks",
                    expected: format!("{:?} {:?} (block of '{}')", view.dims(), dtype, s.name),
                    got: format!("{:?} {:?}", out.dims(), out.dtype),
                });
            }
            dtype = out.dtype;
            blocks.push(Block { buf: buffer(&out)?.clone(), first: b.first, rows: b.rows });
        }
        let bytes = t.shape.numel() as u64 * dtype.size_in_bytes() as u64;
        let split = Split { name: s.name.clone(), row: s.row, blocks, bytes };
        Ok(Tensor { shape: t.shape, dtype, storage: Storage::Gpu(GpuBuffer { mem: Mem::Split(Arc::new(split)) }) })
    }

}

impl Split {
    /// The error for this tensor given to `use_`, which cannot take a split tensor; `limit` is the
    /// binding limit it was split for.
    pub(crate) fn refused(&self, use_: &str, limit: u64) -> Error {
        Error::BufferTooLarge {
            what: format!("'{}' (split into {} row blocks to fit one binding; {use_} cannot take a split tensor)", self.name, self.blocks.len()),
            bytes: self.bytes,
            limit,
        }
    }
}

/// Checks that every split input of `op` is one the encoder runs per block (module docs), and that
/// it has not been reshaped away from its blocks' rows; every other input is one whole buffer.
pub(super) fn check_inputs(g: &GpuBackend, op: &Op, inputs: &[&Tensor]) -> Result<()> {
    for (i, t) in inputs.iter().enumerate() {
        let Some(s) = split_of(t) else {
            buffer(t)?;
            continue;
        };
        let rank = t.shape.rank();
        let ok = match op {
            // A split bias is checked against the weight's blocks by the encoder.
            Op::Matmul { trans_b: true } => (i == 1 && rank == 2) || (i == 2 && split_of(inputs[1]).is_some()),
            Op::Embedding => i == 0,
            Op::ExpertMatmul | Op::GroupedMatmul => i == 1 && rank == 3,
            _ => false,
        };
        let rows_kept = rank == 0 || t.dims()[1..].iter().product::<usize>() == s.row;
        if !ok || !rows_kept {
            return Err(s.refused(&format!("{} (input {i})", op.name()), g.inner.max_binding));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::even_ranges;

    #[test]
    fn ranges_are_few_and_even() {
        assert_eq!(even_ranges(10, 4), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(even_ranges(8, 4), vec![(0, 4), (4, 4)]);
        assert_eq!(even_ranges(3, 100), vec![(0, 3)]);
        assert_eq!(even_ranges(7, 1), (0..7).map(|i| (i, 1)).collect::<Vec<_>>());
        for (rows, per) in [(17, 5), (255, 16), (64, 63)] {
            let r = even_ranges(rows, per);
            assert_eq!(r.len(), rows.div_ceil(per), "{rows}/{per}: as few blocks as fit");
            assert!(r.iter().all(|&(_, n)| n <= per && n + 1 >= rows / r.len()), "{rows}/{per}: {r:?}");
            assert!(r.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0) && r.last().map(|l| l.0 + l.1) == Some(rows), "{r:?} covers the rows");
        }
    }
}
