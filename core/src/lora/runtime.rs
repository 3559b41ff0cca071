//! Adapters on a loaded model: registration (no base reload), per-request mixes, mixed batches
//! through the shrink/expand kernels, and fusing into / unfusing from the base weights.
//!
//! ## How a forward uses adapters
//! Every registered adapter has a slot `n`. Each adapted linear keeps the slots' factors stacked:
//! `A [N, R, In]` and `B [N, Out, R]` (R the largest rank; smaller ranks and adapters that do not
//! target this linear are zero-padded), with the module's PEFT scale `s = alpha/r` (or `/√r`)
//! folded into `B`. A request gives each sequence a *mix*: adapter names with weights. The forward
//! turns mixes into per-row slots `sel [M, K]` and weights `w [M, K]`, and each linear computes
//! `y = x·Wᵀ + Σₖ w[m,k]·B[sel[m,k]]·(A[sel[m,k]]·x)` with one `LoraShrink` and one `LoraExpand`
//! dispatch, whatever the number of distinct adapters in the batch.
//!
//! ## Fusing
//! `fuse` bakes the active mix into the weights: `W' = W + Σ wᵢ·sᵢ·Bᵢ·Aᵢ`, computed on the device
//! (one matmul and one add per touched linear; per row block of a weight split to fit the GPU's
//! binding limit, each block taking its rows of `B`). The original `W` is kept, so `unfuse` restores it
//! bit for bit and a re-fuse after switching adapters recomputes only the linears either mix
//! touches. While a mix is fused, a request for another mix runs the *difference* unfused
//! (`w_request − w_fused` per adapter), so fused and unfused requests can share a batch.

use super::Adapter;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::models::Linear;
use crate::op::Op;
use crate::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Adapter names and weights for one sequence (`[("a", 0.7), ("b", 0.3)]`). Empty = the base.
pub type Mix = Vec<(String, f32)>;

/// Per-row adapter slots and weights for one forward, on the device.
pub struct RowSel {
    /// `[M, K] u32` slot per row and mix entry (`u32::MAX` = empty).
    pub idx: Tensor,
    /// `[M, K] f32` weight per entry.
    pub w: Tensor,
}

/// One linear's stacked factors.
pub struct LoraStack {
    /// `[N, R, In]`.
    pub a: Tensor,
    /// `[N, Out, R]`, scale folded in.
    pub b: Tensor,
}

impl LoraStack {
    /// `y + Σₖ w·B·(A·x)` for the rows of `x [M, In]`, `y [M, Out]`.
    pub fn apply(&self, dev: &Device, x: &Tensor, y: Tensor, sel: &RowSel) -> Result<Tensor> {
        let v = dev.exec1(&Op::LoraShrink, &[x, &self.a, &sel.idx])?;
        dev.exec1(&Op::LoraExpand, &[&y, &v, &self.b, &sel.idx, &sel.w])
    }
}

/// Adapters registered on one model, the default mix, and what is fused.
#[derive(Default)]
pub struct LoraSet {
    /// Slot order: the stacks' first dimension.
    adapters: Vec<Arc<Adapter>>,
    /// The mix used when a request names none.
    active: Mix,
    /// The mix baked into the weights.
    fused: Mix,
}

fn unknown(name: &str, set: &LoraSet) -> Error {
    Error::Adapter { adapter: name.into(), reason: format!("not loaded (loaded: {:?})", set.names()) }
}

/// Linear modules of a model that adapters may target, by module path.
pub(crate) trait LoraHost {
    fn lora_parts(&mut self) -> (&mut LoraSet, Vec<&mut Linear>);
    /// Checks `modules_to_save` tensors against the model's heads (default: the model has none).
    fn check_saved(&self, adapter: &Adapter) -> Result<()> {
        match adapter.saved.keys().next() {
            None => Ok(()),
            Some(k) => Err(Error::Adapter {
                adapter: adapter.name.clone(),
                reason: format!("modules_to_save tensor '{k}' has no counterpart in this model"),
            }),
        }
    }
}

impl LoraSet {
    pub fn names(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.name.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Adapter>> {
        self.adapters.iter().find(|a| a.name == name)
    }

    pub fn active(&self) -> &Mix {
        &self.active
    }

    pub fn fused(&self) -> &Mix {
        &self.fused
    }

    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    fn slot(&self, name: &str) -> Result<usize> {
        self.adapters.iter().position(|a| a.name == name).ok_or_else(|| unknown(name, self))
    }

    /// Checks a mix: known names, finite weights; repeated names add up.
    pub fn resolve(&self, mix: &Mix) -> Result<BTreeMap<usize, f32>> {
        let mut out = BTreeMap::new();
        for (n, w) in mix {
            if !w.is_finite() {
                return Err(Error::Adapter { adapter: n.clone(), reason: format!("weight {w} is not finite") });
            }
            *out.entry(self.slot(n)?).or_insert(0.0) += *w;
        }
        Ok(out)
    }

    /// Per-row selection for `rows` sequences of `t` rows each, from each sequence's mix (None =
    /// the active mix) minus the fused mix. `None` when no row needs an unfused adapter.
    pub fn row_sel(&self, dev: &Device, mixes: Option<&[Mix]>, rows: usize, t: usize) -> Result<Option<RowSel>> {
        if self.adapters.is_empty() {
            return Ok(None);
        }
        if let Some(m) = mixes {
            if m.len() != rows {
                return Err(Error::InvalidParam { op: "lora", reason: format!("{} adapter mixes for {rows} sequences", m.len()) });
            }
        }
        let fused = self.resolve(&self.fused)?;
        let mut per_seq: Vec<Vec<(u32, f32)>> = Vec::with_capacity(rows);
        for r in 0..rows {
            let want = self.resolve(mixes.map_or(&self.active, |m| &m[r]))?;
            let mut d: BTreeMap<usize, f32> = want;
            for (s, w) in &fused {
                *d.entry(*s).or_insert(0.0) -= *w;
            }
            per_seq.push(d.into_iter().filter(|(_, w)| *w != 0.0).map(|(s, w)| (s as u32, w)).collect());
        }
        let k = per_seq.iter().map(Vec::len).max().unwrap_or(0);
        if k == 0 {
            return Ok(None);
        }
        let m = rows * t;
        let (mut idx, mut w) = (vec![u32::MAX; m * k], vec![0f32; m * k]);
        for (r, seq) in per_seq.iter().enumerate() {
            for row in r * t..(r + 1) * t {
                for (j, (s, x)) in seq.iter().enumerate() {
                    idx[row * k + j] = *s;
                    w[row * k + j] = *x;
                }
            }
        }
        Ok(Some(RowSel { idx: dev.upload(&TensorData::u32(&[m, k], idx)?)?, w: dev.upload(&TensorData::f32(&[m, k], w)?)? }))
    }
}

/// Restacks every adapted linear's factors for the current slot list.
fn restack(dev: &Device, set: &LoraSet, linears: &mut [&mut Linear]) -> Result<()> {
    let n = set.adapters.len();
    for l in linears.iter_mut() {
        let mods: Vec<Option<&super::LoraModule>> = set.adapters.iter().map(|a| a.modules.get(&l.name)).collect();
        let r = mods.iter().flatten().map(|m| m.r).max().unwrap_or(0);
        if r == 0 {
            l.lora = None;
            continue;
        }
        let (inp, out) = (l.inp, l.out);
        let mut a = vec![0f32; n * r * inp];
        let mut b = vec![0f32; n * out * r];
        for (s, m) in mods.iter().enumerate() {
            let Some(m) = m else { continue };
            for j in 0..m.r {
                a[(s * r + j) * inp..][..inp].copy_from_slice(&m.a[j * inp..][..inp]);
            }
            for o in 0..out {
                for j in 0..m.r {
                    b[(s * out + o) * r + j] = m.b[o * m.r + j] * m.scale;
                }
            }
        }
        l.lora = Some(LoraStack { a: dev.upload(&TensorData::f32(&[n, r, inp], a)?)?, b: dev.upload(&TensorData::f32(&[n, out, r], b)?)? });
    }
    Ok(())
}

/// Sets each linear's weight to `base + Σ w·s·B·A` over `mix`, for the linears `touched` names.
fn refuse(dev: &Device, adapters: &[Arc<Adapter>], mix: &BTreeMap<usize, f32>, linears: &mut [&mut Linear], touched: &dyn Fn(&str) -> bool) -> Result<()> {
    // Every new weight is computed before any is replaced, so an error changes nothing.
    let mut new = Vec::new();
    for (i, l) in linears.iter().enumerate() {
        if !touched(&l.name) {
            continue;
        }
        let base = l.base.as_ref().unwrap_or(&l.w);
        let parts: Vec<(&super::LoraModule, f32)> =
            mix.iter().filter_map(|(s, w)| adapters[*s].modules.get(&l.name).map(|m| (m, *w))).filter(|(_, w)| *w != 0.0).collect();
        if parts.is_empty() {
            new.push((i, None));
            continue;
        }
        // ΔW = B_cat · A_cat with B_cat [Out, ΣR] (columns scaled by w·s) and A_cat [ΣR, In].
        let rt: usize = parts.iter().map(|(m, _)| m.r).sum();
        let (inp, out) = (l.inp, l.out);
        let mut bc = vec![0f32; out * rt];
        let mut ac = Vec::with_capacity(rt * inp);
        let mut off = 0;
        for (m, w) in &parts {
            ac.extend_from_slice(&m.a);
            for o in 0..out {
                for j in 0..m.r {
                    bc[o * rt + off + j] = m.b[o * m.r + j] * m.scale * w;
                }
            }
            off += m.r;
        }
        let at = dev.upload(&TensorData::f32(&[rt, inp], ac)?)?;
        // A quantised base (a GGUF on the CPU) is widened for the sum; `base` keeps the original.
        // A weight split into row blocks to fit the device takes its delta block by block: rows
        // [first, first + n) of ΔW are B_cat's rows [first, first + n) times A_cat, which fits one
        // binding whenever the block does (both are [n, In] f32).
        let fused = dev.map_row_blocks(&base.widened()?, &mut |w, first| {
            let n = w.dims()[0];
            let bt = dev.upload(&TensorData::f32(&[n, rt], bc[first * rt..(first + n) * rt].to_vec())?)?;
            let delta = dev.exec1(&Op::Matmul { trans_b: false }, &[&bt, &at])?;
            dev.exec1(&Op::Add, &[w, &delta])
        })?;
        new.push((i, Some(fused)));
    }
    for (i, fused) in new {
        let l = &mut linears[i];
        let base = l.base.take().unwrap_or_else(|| l.w.clone());
        match fused {
            Some(w) => {
                l.w = w;
                l.base = Some(base);
            }
            None => l.w = base,
        }
    }
    Ok(())
}

/// The adapter-management operations every adapter-capable model offers.
pub(crate) fn add<H: LoraHost + ?Sized>(host: &mut H, dev: &Device, adapter: Adapter) -> Result<()> {
    add_all(host, dev, vec![adapter])
}

/// Registers several adapters with one restack (so each linear's stacks are uploaded once); on an
/// error none is registered.
pub(crate) fn add_all<H: LoraHost + ?Sized>(host: &mut H, dev: &Device, adapters: Vec<Adapter>) -> Result<()> {
    for a in &adapters {
        host.check_saved(a)?;
    }
    let (set, mut linears) = host.lora_parts();
    let before = set.adapters.len();
    for adapter in adapters {
        if let Err(e) = check_fits(set, &linears, &adapter) {
            set.adapters.truncate(before);
            return Err(e);
        }
        set.adapters.push(Arc::new(adapter));
    }
    restack(dev, set, &mut linears)
}

fn check_fits(set: &LoraSet, linears: &[&mut Linear], adapter: &Adapter) -> Result<()> {
    let name = adapter.name.clone();
    if set.get(&name).is_some() {
        return Err(Error::Adapter { adapter: name, reason: "an adapter with this name is already loaded; remove it first".into() });
    }
    for (m, l) in &adapter.modules {
        let Some(lin) = linears.iter().find(|x| &x.name == m) else {
            return Err(Error::Adapter { adapter: name, reason: format!("target module '{m}' is not a linear layer of this model") });
        };
        if lin.inp != l.inp || lin.out != l.out {
            return Err(Error::Adapter {
                adapter: name,
                reason: format!(
                    "module '{m}': lora_A [{}, {}] / lora_B [{}, {}] do not fit the base weight [{}, {}] (an adapter for another base model?)",
                    l.r, l.inp, l.out, l.r, lin.out, lin.inp
                ),
            });
        }
    }
    Ok(())
}

pub(crate) fn remove<H: LoraHost + ?Sized>(host: &mut H, dev: &Device, name: &str) -> Result<()> {
    let (set, mut linears) = host.lora_parts();
    let slot = set.slot(name)?;
    if set.fused.iter().any(|(n, _)| n == name) {
        let old = set.resolve(&set.fused)?;
        let keep: Mix = set.fused.iter().filter(|(n, _)| n != name).cloned().collect();
        let new = set.resolve(&keep)?;
        let gone = set.adapters[slot].clone();
        refuse(dev, &set.adapters, &new, &mut linears, &|m| gone.modules.contains_key(m) && old.contains_key(&slot))?;
        set.fused = keep;
    }
    set.active.retain(|(n, _)| n != name);
    set.adapters.remove(slot);
    restack(dev, set, &mut linears)
}

pub(crate) fn set_active<H: LoraHost + ?Sized>(host: &mut H, mix: Mix) -> Result<()> {
    let (set, _) = host.lora_parts();
    set.resolve(&mix)?;
    set.active = mix;
    Ok(())
}

/// Bakes the active mix into the weights (re-fusing only linears the old or new mix touches).
pub(crate) fn fuse<H: LoraHost + ?Sized>(host: &mut H, dev: &Device) -> Result<()> {
    let (set, mut linears) = host.lora_parts();
    let old = set.resolve(&set.fused)?;
    let new = set.resolve(&set.active)?;
    let adapters = set.adapters.clone();
    let touches = |mix: &BTreeMap<usize, f32>, m: &str| mix.keys().any(|s| adapters[*s].modules.contains_key(m));
    refuse(dev, &adapters, &new, &mut linears, &|m| touches(&old, m) || touches(&new, m))?;
    set.fused = set.active.clone();
    Ok(())
}

/// Restores the original weights of every fused linear.
pub(crate) fn unfuse<H: LoraHost + ?Sized>(host: &mut H) -> Result<()> {
    let (set, linears) = host.lora_parts();
    for l in linears {
        if let Some(b) = l.base.take() {
            l.w = b;
        }
    }
    set.fused.clear();
    Ok(())
}

/// The current weights (`<module>.weight`) of every linear that has adapters fused into it.
pub(crate) async fn fused_weights<H: LoraHost + ?Sized>(host: &mut H, dev: &Device) -> Result<Vec<(String, TensorData)>> {
    let (_, linears) = host.lora_parts();
    let mut out = Vec::new();
    for l in linears {
        if l.base.is_some() {
            out.push((format!("{}.weight", l.name), dev.download(&l.w).await?));
        }
    }
    Ok(out)
}
