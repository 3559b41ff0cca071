//! Shapes of rank 0..=4, row-major.

use crate::error::{Error, Result};
use std::fmt;

/// Largest element count one tensor may have (2^40, and never more than `usize` holds, as on
/// wasm32). Anything above it is a lying header or a bug; refusing it early keeps allocation sizes
/// and index maths in range.
pub const MAX_ELEMENTS: u64 = 1 << 40;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; 4],
    rank: u8,
}

impl Shape {
    /// Builds a shape, refusing rank > 4 and element counts that overflow or exceed [`MAX_ELEMENTS`].
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > 4 {
            return Err(Error::RankTooHigh { rank: dims.len() });
        }
        let mut n: u64 = 1;
        for &d in dims {
            n = n.checked_mul(d as u64).ok_or(Error::AbsurdShape {
                dims: dims.to_vec(),
                reason: "element count overflows",
            })?;
        }
        if n > MAX_ELEMENTS || usize::try_from(n).is_err() {
            return Err(Error::AbsurdShape { dims: dims.to_vec(), reason: "too many elements (limit 2^40 and the address space)" });
        }
        let mut s = Shape { dims: [0; 4], rank: dims.len() as u8 };
        s.dims[..dims.len()].copy_from_slice(dims);
        Ok(s)
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }

    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// Size of the last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.dims().last().copied().unwrap_or(1)
    }

    /// Number of rows when the last dimension is taken as the row length.
    pub fn rows(&self) -> usize {
        let l = self.last();
        self.numel().checked_div(l).unwrap_or(0)
    }

    /// Dimension `i` counted from the end (0 = last); 1 where the shape has fewer dimensions.
    pub fn from_end(&self, i: usize) -> usize {
        let r = self.rank();
        if i < r { self.dims[r - 1 - i] } else { 1 }
    }

    /// For `Op::Permute`: the output's dims and, per output axis, the input stride it walks, both
    /// padded to rank 4 (leading 1s; padded axes map to themselves). Output dim `i` is input dim
    /// `perm[i]` for `i < rank`.
    pub(crate) fn permuted_layout(&self, perm: &[usize; 4]) -> ([usize; 4], [usize; 4]) {
        let pad = 4 - self.rank();
        let mut in_dims = [1usize; 4];
        in_dims[pad..].copy_from_slice(self.dims());
        let mut in_strides = [0usize; 4];
        let mut acc = 1;
        for i in (0..4).rev() {
            in_strides[i] = acc;
            acc *= in_dims[i];
        }
        let (mut dims, mut strides) = ([1usize; 4], [0usize; 4]);
        for i in 0..4 {
            let a = if i < pad { i } else { pad + perm[i - pad] };
            dims[i] = in_dims[a];
            strides[i] = in_strides[a];
        }
        (dims, strides)
    }

    /// The same shape with the last dimension replaced.
    pub fn with_last(&self, n: usize) -> Result<Shape> {
        let mut d = self.dims().to_vec();
        match d.last_mut() {
            Some(l) => *l = n,
            None => d.push(n),
        }
        Shape::new(&d)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl TryFrom<&[usize]> for Shape {
    type Error = Error;
    fn try_from(d: &[usize]) -> Result<Shape> {
        Shape::new(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_rank_five_and_overflow() {
        assert!(matches!(Shape::new(&[1, 1, 1, 1, 1]), Err(Error::RankTooHigh { rank: 5 })));
        assert!(matches!(Shape::new(&[usize::MAX, 2]), Err(Error::AbsurdShape { .. })));
        assert!(matches!(Shape::new(&[1 << 21, 1 << 21]), Err(Error::AbsurdShape { .. })));
        let s = Shape::new(&[2, 3, 4]).unwrap();
        assert_eq!((s.numel(), s.rows(), s.last(), s.from_end(2), s.from_end(3)), (24, 6, 4, 2, 1));
    }
}
