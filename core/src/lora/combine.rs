//! Combining several LoRA adapters into one, with the semantics of PEFT 0.21's
//! `LoraModel.add_weighted_adapter` (`tuners/lora/model.py`, `utils/merge_utils.py`).
//!
//! ## What each type computes (per targeted module; `sᵢ` the module's scale, `wᵢ` the weight)
//! - `cat`: `A' = rows(wᵢ·sᵢ·Aᵢ)`, `B' = cols(Bᵢ)`, r' = Σ rᵢ. `B'A' = Σ wᵢsᵢBᵢAᵢ` exactly.
//! - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` (all adapters the same r): the
//!   operator runs on the A stack with weights `sign(wᵢsᵢ)·√|wᵢsᵢ|` and, separately, on the B stack
//!   with `√|wᵢsᵢ|`. `B'A'` therefore has cross terms `BᵢAⱼ`: it is **not** the sum of the deltas
//!   (use `cat` or `svd` for that).
//! - `svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`: the operator runs on
//!   the dense deltas `ΔWᵢ = sᵢ·Bᵢ·Aᵢ` with weights `wᵢ`, then a truncated SVD (f64, [`faer`]) to
//!   r' = `svd_rank` (default: the largest input r): `B' = U·diag(S)`, `A' = Vᵀ`; `svd_clamp` clips
//!   both to ± the given quantile of their entries. The plain `svd` never forms the dense sum (its
//!   rank is at most Σ rᵢ; see `svd.rs`).
//!
//! Operators (PEFT `merge_utils`): prune (magnitude: keep the `⌊density·n⌋` largest |x|, ties to the
//! lower index; DARE: keep each entry with probability `density`, divide the kept by `density`;
//! nothing is pruned at density 1), then `linear` = Σ wᵢxᵢ, or TIES = elect the sign per entry on the
//! **unweighted** pruned tensors (`total`: sign of Σxᵢ, `frequency`: sign of Σsign(xᵢ), 0 counts as
//! +), and average the weighted entries that agree (`Σ wᵢxᵢ·[agree] / max(1, #agree)`).
//!
//! The result has `lora_alpha = r'` (scale 1), the first adapter's config otherwise (as PEFT; so with
//! `use_rslora` in the first adapter its scale is `√r'`), `target_modules` = the union (or the
//! regexes joined as `(a)|(b)`), patterns cleared. A module only some adapters target is combined
//! from those that do; for `cat`, its factors are zero-padded to r'. With a single adapter, every
//! type is `linear` (PEFT does the same).
//!
//! `modules_to_save`: PEFT refuses when two adapters save the same module, and gives the new
//! adapter a fresh copy of the **base model's** module (the inputs' trained copies are not used).
//! The result lists the first adapter's `modules_to_save` and carries no tensors for them; a loader
//! (PEFT's, or ours) then takes the base weights, which is the same model.
//!
//! ## DARE randomness
//! Masks come from the counter-based RNG of [`crate::sparsify`], so the CPU, wasm and WGSL agree:
//! element `j` (flat, row-major) of a pruned tensor is kept when
//! `keep(seed, tensor_key(NAME), j, density as f32)`, with NAME
//! - `{module}.lora_A.{i}` and `{module}.lora_B.{i}` for `dare_linear` / `dare_ties` (the `[R, In]`
//!   and `[Out, R]` factors are pruned separately),
//! - `{module}.delta.{i}` for `dare_linear_svd` / `dare_ties_svd` (the dense `[Out, In]` delta),
//!
//! where `{module}` is the module path (`model.layers.0.self_attn.q_proj`) and `{i}` the adapter's
//! index in the input list. PEFT draws from torch's global generator instead, which no other
//! runtime can reproduce; [`CombineOptions::masks`] takes masks by the same names (0/1 f32 in the
//! pruned tensor's shape, e.g. a `masks.safetensors` exported from PEFT) for bit-exact parity.
//!
//! Arithmetic follows PEFT's f32 order (coefficients in f64 then rounded, as PyTorch does with
//! Python floats); the SVD is f64.

#[path = "svd.rs"]
mod svd;

use super::{Adapter, LoraConfig, LoraModule, Targets};
use crate::error::{Error, Result};
use crate::sparsify::{keep, sign, tensor_key, topk_abs_mask};
use crate::tensor::TensorData;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// The 11 `combination_type`s of PEFT's `add_weighted_adapter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Combination {
    Linear,
    Cat,
    Svd,
    Ties,
    TiesSvd,
    DareLinear,
    DareTies,
    DareLinearSvd,
    DareTiesSvd,
    MagnitudePrune,
    MagnitudePruneSvd,
}

/// The merge operator a combination applies (to factor stacks or to dense deltas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    Linear,
    Ties,
    DareLinear,
    DareTies,
    MagnitudePrune,
}

impl Combination {
    pub const ALL: [Combination; 11] = [
        Combination::Linear,
        Combination::Cat,
        Combination::Svd,
        Combination::Ties,
        Combination::TiesSvd,
        Combination::DareLinear,
        Combination::DareTies,
        Combination::DareLinearSvd,
        Combination::DareTiesSvd,
        Combination::MagnitudePrune,
        Combination::MagnitudePruneSvd,
    ];

    /// PEFT's name (`dare_ties_svd`).
    pub fn name(self) -> &'static str {
        match self {
            Combination::Linear => "linear",
            Combination::Cat => "cat",
            Combination::Svd => "svd",
            Combination::Ties => "ties",
            Combination::TiesSvd => "ties_svd",
            Combination::DareLinear => "dare_linear",
            Combination::DareTies => "dare_ties",
            Combination::DareLinearSvd => "dare_linear_svd",
            Combination::DareTiesSvd => "dare_ties_svd",
            Combination::MagnitudePrune => "magnitude_prune",
            Combination::MagnitudePruneSvd => "magnitude_prune_svd",
        }
    }

    /// Ends in an SVD of the combined dense delta.
    pub fn is_svd(self) -> bool {
        self.name().ends_with("svd")
    }

    /// Prunes, so `density` is required.
    pub fn uses_density(self) -> bool {
        !matches!(self, Combination::Linear | Combination::Cat | Combination::Svd)
    }

    /// `None` for `cat`.
    fn operator(self) -> Option<Operator> {
        use Combination as C;
        Some(match self {
            C::Cat => return None,
            C::Linear | C::Svd => Operator::Linear,
            C::Ties | C::TiesSvd => Operator::Ties,
            C::DareLinear | C::DareLinearSvd => Operator::DareLinear,
            C::DareTies | C::DareTiesSvd => Operator::DareTies,
            C::MagnitudePrune | C::MagnitudePruneSvd => Operator::MagnitudePrune,
        })
    }
}

impl std::fmt::Display for Combination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Combination {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Combination::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<_> = Combination::ALL.iter().map(|c| c.name()).collect();
            invalid(format!("unknown combination '{s}' (one of {})", names.join(", ")))
        })
    }
}

/// How TIES elects the sign of an entry (PEFT `majority_sign_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MajoritySign {
    /// The sign of the sum of the pruned values.
    #[default]
    Total,
    /// The sign of the sum of their signs.
    Frequency,
}

impl FromStr for MajoritySign {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "total" => Ok(MajoritySign::Total),
            "frequency" => Ok(MajoritySign::Frequency),
            _ => Err(invalid(format!("unknown majority_sign_method '{s}' (total or frequency)"))),
        }
    }
}

/// Imported DARE masks by tensor name (see the module doc), 0/1 in the pruned tensor's shape.
pub type Masks = BTreeMap<String, TensorData>;

/// Parameters of [`combine`] (PEFT's keyword arguments, plus the seed and imported masks).
#[derive(Clone, Debug)]
pub struct CombineOptions {
    /// The new adapter's name.
    pub name: String,
    pub combination: Combination,
    /// Fraction of entries kept, in (0, 1]; required by the pruning types, ignored by the others.
    pub density: Option<f64>,
    /// Rank of the `*svd` results (default: the largest input r; 0 means the default, as in PEFT).
    pub svd_rank: Option<usize>,
    /// Quantile in [0, 1] at which the SVD factors are clipped (PEFT `svd_clamp`).
    pub svd_clamp: Option<f64>,
    pub majority_sign: MajoritySign,
    /// DARE seed for the counter-based RNG.
    pub seed: u64,
    /// DARE masks to use instead of the RNG; every mask the combination needs must be present.
    pub masks: Option<Masks>,
}

impl CombineOptions {
    pub fn new(name: impl Into<String>, combination: Combination) -> CombineOptions {
        CombineOptions {
            name: name.into(),
            combination,
            density: None,
            svd_rank: None,
            svd_clamp: None,
            majority_sign: MajoritySign::Total,
            seed: 0,
            masks: None,
        }
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidParam { op: "lora combine", reason }
}

fn bad(adapter: &str, reason: String) -> Error {
    Error::Adapter { adapter: adapter.to_string(), reason }
}

/// Combines `inputs` (adapter, weight) into a new adapter, as PEFT's `add_weighted_adapter`
/// (module doc). Weights may be negative. Errors (never panics) on empty input, bad options,
/// different ranks where PEFT refuses them, mismatched module shapes, non-finite values.
pub fn combine(inputs: &[(&Adapter, f32)], opts: &CombineOptions) -> Result<Adapter> {
    let plan = Plan::new(inputs, opts)?;
    let names: BTreeSet<&String> = inputs.iter().flat_map(|(a, _)| a.modules.keys()).collect();
    let work: Vec<&String> = names.into_iter().collect();
    let combine_one = |m: &&String| -> Result<(String, LoraModule)> { Ok(((*m).clone(), plan.module(m)?)) };
    #[cfg(not(target_arch = "wasm32"))]
    let done: Vec<Result<(String, LoraModule)>> = {
        use rayon::prelude::*;
        work.par_iter().map(combine_one).collect()
    };
    #[cfg(target_arch = "wasm32")]
    let done: Vec<Result<(String, LoraModule)>> = work.iter().map(combine_one).collect();
    let modules = done.into_iter().collect::<Result<BTreeMap<_, _>>>()?;
    Ok(Adapter { name: opts.name.clone(), config: plan.config, modules, saved: BTreeMap::new() })
}

/// Everything decided once for all modules.
struct Plan<'a> {
    inputs: &'a [(&'a Adapter, f32)],
    opts: &'a CombineOptions,
    combination: Combination,
    /// f32 so the DARE rescale divides exactly as PyTorch does (`tensor / python_float`).
    density: f32,
    /// `int(density · n)` needs the f64 value.
    density64: f64,
    rank: usize,
    scale: f32,
    config: LoraConfig,
}

impl<'a> Plan<'a> {
    fn new(inputs: &'a [(&'a Adapter, f32)], opts: &'a CombineOptions) -> Result<Plan<'a>> {
        let Some((first, _)) = inputs.first() else {
            return Err(invalid("no adapters to combine".into()));
        };
        for (a, w) in inputs {
            if !w.is_finite() {
                return Err(bad(&a.name, format!("weight {w} is not finite")));
            }
        }
        // PEFT: "if there is only one adapter, we can only use linear merging".
        let combination = if inputs.len() == 1 { Combination::Linear } else { opts.combination };
        let density64 = match opts.density {
            Some(d) if !(d > 0.0 && d <= 1.0) => return Err(invalid(format!("density {d} is outside (0, 1]"))),
            Some(d) => d,
            None if combination.uses_density() => return Err(invalid(format!("'{combination}' needs a density"))),
            None => 1.0,
        };
        if let Some(q) = opts.svd_clamp {
            if !(0.0..=1.0).contains(&q) {
                return Err(invalid(format!("svd_clamp {q} is not a quantile in [0, 1]")));
            }
        }
        // PEFT sizes the new adapter from each config's largest rank (r or a rank_pattern value).
        let ranks: Vec<usize> = inputs.iter().map(|(a, _)| a.config.rank_pattern.values().copied().fold(a.config.r, usize::max)).collect();
        let rank = match combination {
            Combination::Cat => ranks.iter().sum(),
            c if c.is_svd() => opts.svd_rank.filter(|&k| k > 0).unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(0)),
            _ => {
                if let Some(i) = ranks.iter().position(|&r| r != ranks[0]) {
                    return Err(bad(
                        &inputs[i].0.name,
                        format!("has r = {}, '{}' has r = {}: '{combination}' needs one rank (use cat or svd)", ranks[i], first.name, ranks[0]),
                    ));
                }
                ranks[0]
            }
        };
        if rank == 0 {
            return Err(bad(&first.name, "r = 0".into()));
        }
        check_modules_to_save(inputs)?;
        let config = combined_config(inputs, rank)?;
        let scale = if config.use_rslora { rank as f32 / (rank as f32).sqrt() } else { 1.0 };
        Ok(Plan { inputs, opts, combination, density: density64 as f32, density64, rank, scale, config })
    }

    /// The combined factors of one module.
    fn module(&self, name: &str) -> Result<LoraModule> {
        let present: Vec<(usize, &Adapter, f32, &LoraModule)> =
            self.inputs.iter().enumerate().filter_map(|(i, (a, w))| a.modules.get(name).map(|m| (i, *a, *w, m))).collect();
        let (_, a0, _, m0) = present[0];
        let (inp, out) = (m0.inp, m0.out);
        for &(_, a, _, m) in &present {
            check_module(a, name, m)?;
            if (m.inp, m.out) != (inp, out) {
                return Err(bad(
                    &a.name,
                    format!("module '{name}' is {}→{} but {}→{} in '{}'", m.inp, m.out, inp, out, a0.name),
                ));
            }
        }
        let (a, b) = match self.combination.operator() {
            None => self.cat(name, &present, inp, out)?,
            Some(op) if self.combination.is_svd() => self.svd(op, name, &present, inp, out)?,
            Some(op) => self.factors(op, name, &present)?,
        };
        if let Some(i) = a.iter().chain(&b).position(|x| !x.is_finite()) {
            return Err(bad(&self.opts.name, format!("module '{name}': the combination overflowed (non-finite value at {i})")));
        }
        Ok(LoraModule { a, b, r: self.rank, inp, out, scale: self.scale })
    }

    /// `cat`: `A' = rows(wᵢsᵢAᵢ)`, `B' = cols(Bᵢ)`, zero-padded to r'.
    fn cat(&self, name: &str, present: &[(usize, &Adapter, f32, &LoraModule)], inp: usize, out: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let r = self.rank;
        if present.iter().map(|p| p.3.r).sum::<usize>() > r {
            return Err(invalid(format!("module '{name}': the inputs' ranks add up to more than their configs' r ({r})")));
        }
        let (mut a, mut b) = (vec![0.0f32; r * inp], vec![0.0f32; out * r]);
        let mut row = 0;
        for &(_, _, w, m) in present {
            for (dst, src) in a[row * inp..(row + m.r) * inp].iter_mut().zip(&m.a) {
                *dst = src * w * m.scale;
            }
            for o in 0..out {
                b[o * r + row..o * r + row + m.r].copy_from_slice(&m.b[o * m.r..(o + 1) * m.r]);
            }
            row += m.r;
        }
        Ok((a, b))
    }

    /// `linear` / `ties` / `dare_*` / `magnitude_prune`: the operator on the A and B stacks.
    fn factors(&self, op: Operator, name: &str, present: &[(usize, &Adapter, f32, &LoraModule)]) -> Result<(Vec<f32>, Vec<f32>)> {
        for &(_, a, _, m) in present {
            if m.r != self.rank {
                return Err(bad(&a.name, format!("module '{name}' has rank {} (rank_pattern) but the combined adapter has r = {}; PEFT would write factors it cannot load", m.r, self.rank)));
            }
        }
        let mut wa = Vec::new();
        let mut wb = Vec::new();
        for &(_, _, w, m) in present {
            let ws = w as f64 * m.scale as f64;
            let c = ws.abs().sqrt();
            wa.push((if ws >= 0.0 { c } else { -c }) as f32);
            wb.push(c as f32);
        }
        let sa = present.iter().map(|&(i, _, _, m)| Task { x: m.a.clone(), key: format!("{name}.lora_A.{i}") }).collect();
        let sb = present.iter().map(|&(i, _, _, m)| Task { x: m.b.clone(), key: format!("{name}.lora_B.{i}") }).collect();
        Ok((self.merge(op, sa, &wa)?, self.merge(op, sb, &wb)?))
    }

    /// `*svd`: the operator on the dense deltas `sᵢBᵢAᵢ`, then a truncated SVD.
    fn svd(&self, op: Operator, name: &str, present: &[(usize, &Adapter, f32, &LoraModule)], inp: usize, out: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let k = self.rank;
        if k > inp.min(out) {
            return Err(invalid(format!("svd_rank {k} is above the rank {}×{} module '{name}' can have", out, inp)));
        }
        let total: usize = present.iter().map(|p| p.3.r).sum();
        let (b, a) = if op == Operator::Linear && total < inp.min(out) {
            // Σ wᵢsᵢBᵢAᵢ = [w₁s₁B₁ | w₂s₂B₂ | …]·[A₁; A₂; …]: SVD through the small core.
            let mut p = vec![0.0f64; out * total];
            let mut q = Vec::with_capacity(total * inp);
            let mut col = 0;
            for &(_, _, w, m) in present {
                let c = m.scale as f64 * w as f64;
                for o in 0..out {
                    for j in 0..m.r {
                        p[o * total + col + j] = m.b[o * m.r + j] as f64 * c;
                    }
                }
                q.extend(m.a.iter().map(|&x| x as f64));
                col += m.r;
            }
            svd::truncated_product(out, total, inp, &p, &q, k)?
        } else {
            let tasks = present.iter().map(|&(i, _, _, m)| Task { x: delta(m), key: format!("{name}.delta.{i}") }).collect();
            let weights: Vec<f32> = present.iter().map(|p| p.2).collect();
            let dw = self.merge(op, tasks, &weights)?;
            let dw: Vec<f64> = dw.iter().map(|&x| x as f64).collect();
            svd::truncated_dense(out, inp, &dw, k)?
        };
        let (mut b, mut a): (Vec<f32>, Vec<f32>) = (b.iter().map(|&x| x as f32).collect(), a.iter().map(|&x| x as f32).collect());
        if let Some(q) = self.opts.svd_clamp {
            clamp_to_quantile(&mut b, &mut a, q);
        }
        Ok((a, b))
    }

    /// Prunes each task (per the operator), then merges with `weights`.
    fn merge(&self, op: Operator, mut tasks: Vec<Task>, weights: &[f32]) -> Result<Vec<f32>> {
        if self.density64 < 1.0 {
            for t in &mut tasks {
                match op {
                    Operator::Linear => {}
                    Operator::Ties | Operator::MagnitudePrune => {
                        let k = (self.density64 * t.x.len() as f64) as usize;
                        let kept = topk_abs_mask(&t.x, k);
                        t.x.iter_mut().zip(kept).filter(|(_, k)| !k).for_each(|(x, _)| *x = 0.0);
                    }
                    Operator::DareLinear | Operator::DareTies => self.dare(t)?,
                }
            }
        }
        let n = tasks[0].x.len();
        let mut outv = vec![0.0f32; n];
        match op {
            Operator::Linear | Operator::DareLinear | Operator::MagnitudePrune => {
                for (t, &w) in tasks.iter().zip(weights) {
                    outv.iter_mut().zip(&t.x).for_each(|(o, x)| *o += x * w);
                }
            }
            Operator::Ties | Operator::DareTies => {
                for (j, o) in outv.iter_mut().enumerate() {
                    let elect: f32 = match self.opts.majority_sign {
                        MajoritySign::Total => tasks.iter().map(|t| t.x[j]).sum(),
                        MajoritySign::Frequency => tasks.iter().map(|t| sign(t.x[j])).sum(),
                    };
                    let majority = if elect >= 0.0 { 1.0 } else { -1.0 };
                    let (mut sum, mut count) = (0.0f32, 0.0f32);
                    for (t, &w) in tasks.iter().zip(weights) {
                        if sign(t.x[j]) == majority {
                            sum += t.x[j] * w;
                            count += 1.0;
                        }
                    }
                    *o = sum / count.max(1.0);
                }
            }
        }
        Ok(outv)
    }

    /// DARE: keep with probability `density` (RNG or imported mask), divide the kept by it.
    fn dare(&self, t: &mut Task) -> Result<()> {
        let d = self.density;
        match self.opts.masks.as_ref() {
            None => {
                let key = tensor_key(&t.key);
                for (j, x) in t.x.iter_mut().enumerate() {
                    *x = if keep(self.opts.seed, key, j as u64, d) { *x / d } else { 0.0 };
                }
            }
            Some(masks) => {
                let m = masks.get(&t.key).ok_or_else(|| invalid(format!("imported masks have no '{}'", t.key)))?;
                let mv = m.to_f32_vec();
                if mv.len() != t.x.len() {
                    return Err(invalid(format!("mask '{}' has {} elements ({:?}), the tensor {}", t.key, mv.len(), m.dims(), t.x.len())));
                }
                for (x, &k) in t.x.iter_mut().zip(&mv) {
                    if k != 0.0 && k != 1.0 {
                        return Err(invalid(format!("mask '{}' holds {k} (masks are 0/1)", t.key)));
                    }
                    *x = *x * k / d;
                }
            }
        }
        Ok(())
    }
}

/// One tensor entering an operator, and its DARE mask name.
struct Task {
    x: Vec<f32>,
    key: String,
}

/// `sᵢ·Bᵢ·Aᵢ [Out, In]` as PEFT's `get_delta_weight` (f32 product, then the scale).
fn delta(m: &LoraModule) -> Vec<f32> {
    let mut d = vec![0.0f32; m.out * m.inp];
    for o in 0..m.out {
        let brow = &m.b[o * m.r..(o + 1) * m.r];
        for (i, v) in d[o * m.inp..(o + 1) * m.inp].iter_mut().enumerate() {
            let dot: f64 = brow.iter().enumerate().map(|(j, &b)| b as f64 * m.a[j * m.inp + i] as f64).sum();
            *v = dot as f32 * m.scale;
        }
    }
    d
}

/// PEFT `svd_clamp`: clip `B` and `A` to ±(the `q` quantile of all their entries, linear
/// interpolation as `torch.quantile`).
fn clamp_to_quantile(b: &mut [f32], a: &mut [f32], q: f64) {
    let mut all: Vec<f32> = b.iter().chain(a.iter()).copied().collect();
    if all.is_empty() {
        return;
    }
    all.sort_by(f32::total_cmp);
    let pos = q * (all.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    let hi_i = (lo + 1).min(all.len() - 1);
    let hi = (all[lo] as f64 + (all[hi_i] as f64 - all[lo] as f64) * frac) as f32;
    // torch.clamp(x, min, max) = min(max(x, min), max), also when min > max.
    b.iter_mut().chain(a.iter_mut()).for_each(|x| *x = x.max(-hi).min(hi));
}

fn check_module(a: &Adapter, name: &str, m: &LoraModule) -> Result<()> {
    if m.r == 0 || m.inp == 0 || m.out == 0 || m.a.len() != m.r * m.inp || m.b.len() != m.out * m.r {
        return Err(bad(&a.name, format!("module '{name}': factors of {} and {} values do not fit r = {}, {}→{}", m.a.len(), m.b.len(), m.r, m.inp, m.out)));
    }
    if !m.scale.is_finite() {
        return Err(bad(&a.name, format!("module '{name}': scale {} is not finite", m.scale)));
    }
    for (part, v) in [("lora_A", &m.a), ("lora_B", &m.b)] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(bad(&a.name, format!("tensor '{name}.{part}.weight' holds a non-finite value ({}) at index {i}", v[i])));
        }
    }
    Ok(())
}

/// PEFT refuses when more than one adapter saves the same module. A listed name counts when the
/// adapter carries tensors for it (PEFT only wraps modules that exist).
fn check_modules_to_save(inputs: &[(&Adapter, f32)]) -> Result<()> {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (a, _) in inputs {
        let listed: BTreeSet<&str> = a.config.modules_to_save.iter().map(String::as_str).collect();
        for m in listed {
            let carried = a.saved.keys().any(|k| k.starts_with(&format!("{m}.")) || k.contains(&format!(".{m}.")));
            if !carried {
                continue;
            }
            if let Some(prev) = owner.insert(m, &a.name) {
                return Err(bad(&a.name, format!("'{prev}' also saves module '{m}' (modules_to_save): PEFT cannot combine them")));
            }
        }
    }
    Ok(())
}

/// PEFT: `replace(config[adapters[0]], r=r', lora_alpha=r', target_modules=union, patterns={})`.
fn combined_config(inputs: &[(&Adapter, f32)], rank: usize) -> Result<LoraConfig> {
    let first = &inputs[0].0;
    let targets = match &first.config.target_modules {
        Targets::Names(_) => {
            let mut all = BTreeSet::new();
            for (a, _) in inputs {
                match &a.config.target_modules {
                    Targets::Names(n) => all.extend(n.iter().cloned()),
                    Targets::Regex(_) => return Err(mixed_targets(a)),
                }
            }
            Targets::Names(all.into_iter().collect())
        }
        Targets::Regex(_) => {
            let mut parts = Vec::new();
            for (a, _) in inputs {
                match &a.config.target_modules {
                    Targets::Regex(r) => parts.push(format!("({r})")),
                    Targets::Names(_) => return Err(mixed_targets(a)),
                }
            }
            Targets::Regex(parts.join("|"))
        }
    };
    let mut c = first.config.clone();
    c.r = rank;
    c.lora_alpha = rank as f32;
    c.rank_pattern.clear();
    c.alpha_pattern.clear();
    if let serde_json::Value::Object(o) = &mut c.raw {
        o.insert("r".into(), rank.into());
        o.insert("lora_alpha".into(), rank.into());
        o.insert("rank_pattern".into(), serde_json::json!({}));
        o.insert("alpha_pattern".into(), serde_json::json!({}));
        o.insert(
            "target_modules".into(),
            match &targets {
                Targets::Names(n) => serde_json::json!(n),
                Targets::Regex(r) => serde_json::json!(r),
            },
        );
    }
    c.target_modules = targets;
    Ok(c)
}

fn mixed_targets(a: &Adapter) -> Error {
    bad(&a.name, "target_modules is a list in one adapter and a regex in another: PEFT cannot combine them".into())
}

#[cfg(test)]
#[path = "combine_tests.rs"]
mod tests;
