//! Input-routed task deltas (Twin-Merging, WEMoE) in factored form, and the LoRA stacks they share
//! with per-task adapter branches (MTLoRA).
//!
//! A model with `deltas` keeps the shared (merged) weights `W` and, per delta `t` and target
//! linear, low-rank factors `A_t [r, in]`, `B_t [out, r]`. A small router reads the pooled
//! feature of a first trunk pass without deltas and gives each input its weights
//! `r(input) = score(router(f))`. The second pass computes on every target
//! `y = W·x + Σ_t r_t·B_t·(A_t·x)` through the multi-LoRA kernels (`LoraShrink` + `LoraExpand`):
//! each token row has one slot per delta, its weight gathered from its input's router output on
//! the device (`Embedding` of the `[B, T]` router output by row → input), so no per-input weight
//! is ever materialised and nothing is read back.
//!
//! On an hf (BERT-family) trunk, deltas are registered as adapters `delta:{name}` (scale 1) beside
//! the per-task LoRA adapters and run through the model's mixed-batch adapter path.

use super::heads::Head;
use super::spec::{vit_target, DeltaSpec, RouterScore, Spec, VitSpec};
use super::vit::Vit;
use super::Loader;
use crate::device::Device;
use crate::error::Result;
use crate::lora::runtime::{LoraStack, RowSel};
use crate::lora::{Adapter, LoraConfig, LoraModule};
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

/// The router: linear layers (`act` between) on the pooled feature, then the score.
pub(crate) struct Router {
    head: Head,
    score: RouterScore,
}

impl Router {
    pub fn load(l: &Loader, spec: &DeltaSpec, c: usize) -> Result<Router> {
        let mut shapes = Vec::new();
        let mut inp = c;
        for i in 0..spec.router.layers {
            let out = if i + 1 == spec.router.layers { spec.names.len() } else { l.data(&format!("deltas.router.{i}.weight"))?.dims()[0] };
            shapes.push([out, inp]);
            inp = out;
        }
        Ok(Router { head: Head::load_prefixed(l, "deltas.router", &shapes, spec.router.act)?, score: spec.router.score })
    }

    /// `f [B, C]` → `r [B, T]`.
    pub fn weights(&self, dev: &Device, f: &Tensor) -> Result<Tensor> {
        let y = self.head.forward(dev, f)?;
        match self.score {
            RouterScore::Softmax => dev.exec1(&Op::Softmax, &[&y]),
            RouterScore::None => Ok(y),
        }
    }
}

/// The factors of delta `name` on `target`, if it has them: `(A [r, in], B [out, r], r)`.
fn factors(l: &Loader, name: &str, target: &str) -> Result<Option<(Vec<f32>, Vec<f32>, usize)>> {
    let a = format!("deltas.{name}.{target}.A");
    if !l.contains(&a) {
        return Ok(None);
    }
    let a = l.data(&a)?;
    let r = a.dims()[0];
    Ok(Some((a.to_f32_vec(), l.data(&format!("deltas.{name}.{target}.B"))?.to_f32_vec(), r)))
}

/// Stacks `[T, R, in]` / `[T, out, R]` (zero-padded to the largest rank) for one target, with B's
/// rows `rows` (the qkv target's B is split into three linears).
fn stack(l: &Loader, per: &[Option<(Vec<f32>, Vec<f32>, usize)>], inp: usize, rows: std::ops::Range<usize>) -> Result<Option<LoraStack>> {
    let r = per.iter().flatten().map(|f| f.2).max().unwrap_or(0);
    if r == 0 {
        return Ok(None);
    }
    let (n, out) = (per.len(), rows.len());
    let (mut a, mut b) = (vec![0f32; n * r * inp], vec![0f32; n * out * r]);
    for (s, f) in per.iter().enumerate() {
        let Some((fa, fb, fr)) = f else { continue };
        a[s * r * inp..][..fr * inp].copy_from_slice(fa);
        for (o, row) in rows.clone().enumerate() {
            b[(s * out + o) * r..][..*fr].copy_from_slice(&fb[row * fr..(row + 1) * fr]);
        }
    }
    Ok(Some(LoraStack { a: l.upload(&TensorData::f32(&[n, r, inp], a)?)?, b: l.upload(&TensorData::f32(&[n, out, r], b)?)? }))
}

/// Puts the deltas' stacks on the ViT's target linears (the fused qkv's B rows split across q, k, v).
pub(crate) fn attach_vit(l: &Loader, spec: &Spec, v: &VitSpec, vit: &mut Vit) -> Result<()> {
    let Some(d) = &spec.deltas else { return Ok(()) };
    let (c, h) = (v.dim, v.mlp_dim);
    for target in &d.targets {
        let per = d.names.iter().map(|n| factors(l, n, target)).collect::<Result<Vec<_>>>()?;
        let (i, lin) = vit_target(v, target).expect("checked in parse");
        let blk = &mut vit.blocks[i];
        match lin {
            "attn.qkv" => {
                for (j, q) in blk.qkv.iter_mut().enumerate() {
                    q.lora = stack(l, &per, c, j * c..(j + 1) * c)?;
                }
            }
            "attn.proj" => blk.proj.lora = stack(l, &per, c, 0..c)?,
            "mlp.fc1" => blk.mlp.as_mut().expect("dense block").0.lora = stack(l, &per, c, 0..h)?,
            _ => blk.mlp.as_mut().expect("dense block").1.lora = stack(l, &per, h, 0..c)?,
        }
    }
    Ok(())
}

/// Per-row slots `0..T` and weights `r[row / tokens]` for `rows = B·tokens` rows, on the device.
pub(crate) fn row_sel(dev: &Device, r: &Tensor, tokens: usize) -> Result<RowSel> {
    let (b, t) = (r.dims()[0], r.dims()[1]);
    let m = b * tokens;
    let idx = dev.upload(&TensorData::u32(&[m, t], (0..m * t).map(|i| (i % t) as u32).collect())?)?;
    let rows = dev.upload(&TensorData::u32(&[m], (0..m).map(|i| (i / tokens) as u32).collect())?)?;
    Ok(RowSel { idx, w: dev.exec1(&Op::Embedding, &[r, &rows])? })
}

/// The deltas as adapters `delta:{name}` for an hf trunk (scale 1, rank from the files).
pub(crate) fn hf_adapters(l: &Loader, spec: &Spec) -> Result<Vec<Adapter>> {
    let Some(d) = &spec.deltas else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for name in &d.names {
        let mut modules = BTreeMap::new();
        for target in &d.targets {
            if let Some((a, b, r)) = factors(l, name, target)? {
                let (inp, o) = (a.len() / r, b.len() / r);
                modules.insert(target.clone(), LoraModule { a, b, r, inp, out: o, scale: 1.0 });
            }
        }
        let config = LoraConfig::parse(name, r#"{"r": 1, "lora_alpha": 1, "target_modules": []}"#)?;
        out.push(Adapter { name: format!("delta:{name}"), config, modules, saved: BTreeMap::new() });
    }
    Ok(out)
}
