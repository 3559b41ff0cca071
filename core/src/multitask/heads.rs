//! Task heads (linear layers with an activation between them) and the multi-gate mixture (MMoE):
//! experts shared by every task, one softmax gate per task over them.
//!
//! Shapes: B rows, C feature dim, E MMoE experts, F expert hidden width, O expert output width.

use super::spec::{Act, MmoeSpec};
use super::vit::{act, linear};
use super::Loader;
use crate::device::Device;
use crate::error::Result;
use crate::models::Linear;
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

pub(crate) struct Head {
    layers: Vec<Linear>,
    act: Act,
}

impl Head {
    /// `shapes[i] = [out, in]` of layer i, as checked against the files.
    pub fn load(l: &Loader, task: &str, shapes: &[[usize; 2]], act: Act) -> Result<Head> {
        Head::load_prefixed(l, &format!("heads.{task}"), shapes, act)
    }

    /// Layers `{prefix}.{i}`.
    pub fn load_prefixed(l: &Loader, prefix: &str, shapes: &[[usize; 2]], act: Act) -> Result<Head> {
        let layers = shapes.iter().enumerate().map(|(i, [o, n])| linear(l, &format!("{prefix}.{i}"), *n, *o)).collect::<Result<_>>()?;
        Ok(Head { layers, act })
    }

    /// `x [.., in]` → `[.., out]`.
    pub fn forward(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                x = act(dev, self.act, &x)?;
            }
            x = l.forward(dev, &x, None)?;
        }
        Ok(x)
    }
}

pub(crate) struct Mmoe {
    w1: Tensor, // [E, F, C]
    b1: Tensor, // [E, F]
    w2: Tensor, // [E, O, F]
    b2: Tensor, // [E, O]
    gates: BTreeMap<String, Linear>, // [E, C] + [E]
    spec: MmoeSpec,
}

impl Mmoe {
    pub fn load(l: &Loader, spec: &MmoeSpec, c: usize, tasks: &[String]) -> Result<Mmoe> {
        let (e, f, o) = (spec.experts, spec.hidden, spec.out);
        let stack = |part: &str, dims: &[usize]| -> Result<Tensor> {
            let mut v = Vec::with_capacity(dims.iter().product());
            for i in 0..e {
                v.extend(l.data(&format!("mmoe.experts.{i}.{part}"))?.to_f32_vec());
            }
            let d = TensorData::f32(dims, v)?;
            // [E, N, C] weight stacks may be split between experts to fit a binding; biases are whole.
            if dims.len() == 3 {
                l.upload_experts(&d, &format!("mmoe.experts.*.{part}"))
            } else {
                l.upload(&d)
            }
        };
        let gates = tasks.iter().map(|t| Ok((t.clone(), linear(l, &format!("mmoe.gate.{t}"), c, e)?))).collect::<Result<_>>()?;
        Ok(Mmoe {
            w1: stack("0.weight", &[e, f, c])?,
            b1: stack("0.bias", &[e, f])?,
            w2: stack("1.weight", &[e, o, f])?,
            b2: stack("1.bias", &[e, o])?,
            gates,
            spec: spec.clone(),
        })
    }

    /// Every expert on `f [B, C]` → `[B, E, O]`: `ExpertMatmul` with each row picking all experts.
    pub fn experts(&self, dev: &Device, f: &Tensor) -> Result<Tensor> {
        let (b, e) = (f.dims()[0], self.spec.experts);
        let idx = dev.upload(&TensorData::u32(&[b, e], (0..b * e).map(|i| (i % e) as u32).collect())?)?;
        let h = dev.exec1(&Op::ExpertMatmul, &[f, &self.w1, &idx])?; // [B, E, F]
        let h = act(dev, self.spec.act, &dev.exec1(&Op::Add, &[&h, &self.b1])?)?;
        let y = dev.exec1(&Op::ExpertMatmul, &[&h, &self.w2, &idx])?; // [B, E, O]
        dev.exec1(&Op::Add, &[&y, &self.b2])
    }

    /// `task`'s mixture `Σ_e softmax(gate·f)_e · experts[:, e]` → `[B, O]`.
    pub fn mix(&self, dev: &Device, task: &str, f: &Tensor, experts: &Tensor) -> Result<Tensor> {
        let (b, e) = (f.dims()[0], self.spec.experts);
        let g = dev.exec1(&Op::Softmax, &[&self.gates[task].forward(dev, f, None)?])?; // [B, E]
        let y = dev.exec1(&Op::Matmul { trans_b: false }, &[&g.reshape(&[b, 1, e])?, experts])?; // [B, 1, O]
        y.reshape(&[b, self.spec.out])
    }
}
