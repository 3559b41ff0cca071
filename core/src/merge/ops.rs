//! Input checks ([`crate::Op::infer`]) for the merging ops of the op table; kept here so the op
//! table file stays a list. The CPU versions are in `cpu/merge.rs`, the kernels in `shaders/merge_*.wgsl`.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::{Meta, Op};
use crate::shape::Shape;

pub(crate) fn infer(op: &Op, inputs: &[Meta]) -> Result<Vec<Meta>> {
    let name = op.name();
    let mismatch = |expected: String, got: &Shape| Error::ShapeMismatch { op: name, expected, got: got.to_string() };
    let typed = |i: usize, want: DType| -> Result<Shape> {
        let (s, d) = inputs[i];
        if d != want {
            return Err(Error::DTypeMismatch { op: name, expected: format!("{want} for input {i}"), got: d });
        }
        Ok(s)
    };
    let arity = |n: usize, what: &'static str| -> Result<()> {
        if inputs.len() != n {
            return Err(Error::Arity { op: name, expected: what, got: inputs.len() });
        }
        Ok(())
    };
    let rows_of = |x: &Shape, rank: usize, what: &str| -> Result<usize> {
        if x.rank() != rank {
            return Err(mismatch(format!("{what} of rank {rank}"), x));
        }
        Ok(x.dims()[0])
    };
    let mask = |s: Shape| Ok(vec![(s, DType::U32)]);
    match *op {
        Op::MagnitudeMask => {
            arity(2, "2 (x, ranks)")?;
            let x = typed(0, DType::F32)?;
            let r = rows_of(&x, 2, "x [R, N]")?;
            let ranks = typed(1, DType::U32)?;
            if ranks.dims() != [r, 2] {
                return Err(mismatch(format!("ranks [{r}, 2]"), &ranks));
            }
            mask(x)
        }
        Op::RandomMask { .. } => {
            arity(2, "2 (x, p)")?;
            let x = typed(0, DType::F32)?;
            let r = rows_of(&x, 2, "x [R, N]")?;
            let p = typed(1, DType::F32)?;
            if p.dims() != [r] {
                return Err(mismatch(format!("p [{r}]"), &p));
            }
            mask(x)
        }
        Op::DellaMask { .. } => {
            arity(2, "2 (x, p)")?;
            let x = typed(0, DType::F32)?;
            let r = rows_of(&x, 3, "x [R, G, C]")?;
            let p = typed(1, DType::F32)?;
            if p.dims() != [r, x.dims()[2]] {
                return Err(mismatch(format!("p [{r}, {}]", x.dims()[2]), &p));
            }
            mask(x)
        }
        Op::MaskedRescale { .. } => {
            arity(3, "3 (x, mask, scale)")?;
            let x = typed(0, DType::F32)?;
            let r = rows_of(&x, 2, "x [R, N]")?;
            let m = typed(1, DType::U32)?;
            if m != x {
                return Err(mismatch(x.to_string(), &m));
            }
            let s = typed(2, DType::F32)?;
            if s.dims() != [r] {
                return Err(mismatch(format!("scale [{r}]"), &s));
            }
            Ok(vec![(x, DType::F32)])
        }
        Op::TaskMerge { lambda, .. } => {
            arity(3, "3 (base, deltas, weights)")?;
            if !lambda.is_finite() {
                return Err(Error::InvalidParam { op: name, reason: format!("lambda must be finite, got {lambda}") });
            }
            let base = typed(0, DType::F32)?;
            let d = typed(1, DType::F32)?;
            let r = rows_of(&d, 2, "deltas [R, N]")?;
            if base.rank() != 1 || base.numel() != d.dims()[1] {
                return Err(mismatch(format!("base [{}]", d.dims()[1]), &base));
            }
            let w = typed(2, DType::F32)?;
            if w.dims() != [r] {
                return Err(mismatch(format!("weights [{r}]"), &w));
            }
            Ok(vec![(base, DType::F32)])
        }
        _ => unreachable!("only merge ops are routed here"),
    }
}
