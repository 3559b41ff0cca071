//! The task-conditioned MoE block (M³ViT): one gate per task over shared experts, routed on the
//! device with no host readback: gate matmul → `MoeRoute` (softmax or sigmoid, selection-only bias,
//! top-k, renormalisation) → `MoeBucket` once → `GroupedMatmul` for fc1 and fc2 (each expert's
//! bias added in the same kernel) → the weighted sum as one batched `[1, K] x [K, C]` matmul per
//! token: 6 dispatches plus the activation's. Fewer than 2 picks per expert (a row or two) skip the
//! bucketing and run `ExpertMatmul` with the biases gathered per pick: 9 plus the activation's
//! (`ExpertRouting` and its measured threshold: models/moe.rs).
//!
//! Residency (Edge-MoE): only the experts in the union of the loaded tasks' lists are uploaded,
//! re-indexed in ascending order, so ties still go to the lower original index. A task's gate keeps
//! one row per resident expert; experts outside its list get a zero row, a logit offset of -1e30
//! (softmax: exp underflows to exactly 0, so the softmax is over the allowed experts only) and a
//! selection bias of -1e30 (never picked, since top_k <= the list's length).
//!
//! Shapes: R token rows, C dim, E resident experts, K top-k, F expert hidden width.

use super::spec::{Act, MoeSpec, Score};
use super::vit::act;
use super::{Loader, Part};
use crate::device::Device;
use crate::models::moe::ExpertRouting;
use crate::error::Result;
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

/// Excluded experts' logit offset and selection bias: far below any real score, still finite.
const OUT: f32 = -1e30;

struct Gate {
    w: Tensor,              // [E, C]
    offset: Option<Tensor>, // [E]: 0 or OUT (softmax only)
    select: Tensor,         // [E]: the task's selection bias, or OUT
}

pub(crate) struct RoutedMoe {
    fc1: Tensor, // [E, F, C]
    b1: Tensor,  // [E, F]
    fc2: Tensor, // [E, C, F]
    b2: Tensor,  // [E, C]
    gates: BTreeMap<String, Gate>,
    /// Resident index → original expert index.
    pub resident: Vec<usize>,
    route: Op,
    act: Act,
    k: usize,
}

/// Rows `keep` of a `[E, ..]` tensor, flattened.
fn rows(t: &TensorData, keep: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let v = t.to_f32_vec();
    let row = v.len() / t.dims()[0];
    let mut dims = t.dims().to_vec();
    dims[0] = keep.len();
    (dims, keep.iter().flat_map(|&e| v[e * row..(e + 1) * row].iter().copied()).collect())
}

impl RoutedMoe {
    /// Block `prefix` (`trunk.blocks.3`) for `tasks`, each with its allowed experts (ascending).
    pub fn load(l: &Loader, prefix: &str, m: &MoeSpec, tasks: &[(String, Vec<usize>)]) -> Result<RoutedMoe> {
        let mut resident: Vec<usize> = tasks.iter().flat_map(|(_, a)| a.iter().copied()).collect();
        resident.sort_unstable();
        resident.dedup();
        let up = |name: &str| -> Result<Tensor> {
            let name = format!("{prefix}.moe.{name}");
            let (dims, v) = rows(&l.data(&name)?, &resident);
            // The weight stacks may be split between experts to fit a binding; the biases (read
            // whole by GroupedMatmul) are small.
            if dims.len() == 3 {
                l.upload_experts(&TensorData::f32(&dims, v)?, &name)
            } else {
                l.upload(&TensorData::f32(&dims, v)?)
            }
        };
        let (fc1, b1, fc2, b2) = (up("fc1.weight")?, up("fc1.bias")?, up("fc2.weight")?, up("fc2.bias")?);
        l.part(Part::Gates);
        let mut gates = BTreeMap::new();
        for (task, allowed) in tasks {
            let w = l.data(&format!("{prefix}.moe.gate.{task}.weight"))?; // [E_all, C]
            let c = w.dims()[1];
            let (_, mut wv) = rows(&w, &resident);
            let bias_name = format!("{prefix}.moe.gate.{task}.bias");
            let bias = if l.contains(&bias_name) { l.data(&bias_name)?.to_f32_vec() } else { vec![0.0; m.experts] };
            let (mut offset, mut select) = (vec![0.0; resident.len()], vec![0.0; resident.len()]);
            for (r, &e) in resident.iter().enumerate() {
                if allowed.contains(&e) {
                    select[r] = bias[e];
                } else {
                    wv[r * c..(r + 1) * c].iter_mut().for_each(|x| *x = 0.0);
                    offset[r] = OUT;
                    select[r] = OUT;
                }
            }
            let n = resident.len();
            let offset = match m.score {
                Score::Softmax => Some(l.upload(&TensorData::f32(&[n], offset)?)?),
                // Sigmoid scores are per expert: an excluded logit changes no other score.
                Score::Sigmoid => None,
            };
            let gate = Gate { w: l.upload(&TensorData::f32(&[n, c], wv)?)?, offset, select: l.upload(&TensorData::f32(&[n], select)?)? };
            gates.insert(task.clone(), gate);
        }
        l.part(Part::Experts);
        let route = Op::MoeRoute { k: m.top_k, sigmoid: m.score == Score::Sigmoid, groups: 1, topk_group: 1, norm: m.normalize_top_k, scale: 1.0 };
        Ok(RoutedMoe { fc1, b1, fc2, b2, gates, resident, route, act: m.act, k: m.top_k })
    }

    /// `h [R, C]` (the block's ln2 output) routed by `task`'s gate → `(y [R, C], idx [R, K] u32)`,
    /// idx in resident numbering.
    pub fn forward(&self, dev: &Device, task: &str, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let (r, c) = (h.dims()[0], h.dims()[1]);
        let g = &self.gates[task];
        let mm = Op::Matmul { trans_b: true };
        let logits = match &g.offset {
            Some(o) => dev.exec1(&mm, &[h, &g.w, o])?,
            None => dev.exec1(&mm, &[h, &g.w])?,
        }; // [R, E]
        let mut picks = dev.exec(&self.route, &[&logits, &g.select])?;
        let idx = picks.pop().expect("routing has two outputs"); // [R, K] u32
        let w = picks.pop().expect("routing has two outputs"); // [R, K] f32
        let experts = self.resident.len();
        let routing = ExpertRouting::new(dev, idx, experts)?; // bucketed once, shared by fc1 and fc2
        let a = routing.matmul(dev, h, &self.fc1, Some(&self.b1))?; // [R, K, F]
        let a = act(dev, self.act, &a)?;
        let y = routing.matmul(dev, &a, &self.fc2, Some(&self.b2))?; // [R, K, C]
        let y = dev.exec1(&Op::Matmul { trans_b: false }, &[&w.reshape(&[r, 1, self.k])?, &y])?; // [R, 1, C]
        Ok((y.reshape(&[r, c])?, routing.idx().clone()))
    }
}
