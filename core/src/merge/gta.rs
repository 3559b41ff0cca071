//! The task-arithmetic family (task_arithmetic, ties, dare_*, breadcrumbs*, della*), run as ops of
//! the op table on the chosen device: deltas → sparsify mask → masked rescale → sign election and
//! disjoint merge. Plus TALL masks and Consensus merging on the merged task vector (host side).

use super::method::{Gta, Sparsify};
use super::recipe::Semantics;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::{Consensus, Op};
use crate::sparsify::tensor_key;
use crate::tensor::TensorData;

/// Per non-base input (row) parameters.
#[derive(Clone, Debug)]
pub struct Row {
    pub weight: f64,
    pub density: f64,
    pub gamma: f64,
    pub epsilon: f64,
    pub tall_lambda: f64,
    /// An imported keep mask (0/1 per element) replacing the drawn / selected one.
    pub mask: Option<Vec<u32>>,
}

pub struct Args<'a> {
    pub name: &'a str,
    pub dims: &'a [usize],
    pub gta: Gta,
    pub semantics: Semantics,
    pub seed: u64,
    pub normalize: bool,
    pub rescale: bool,
    /// `lambda` times the LiNeS factor.
    pub lambda: f64,
    pub rows: Vec<Row>,
    /// Compute TALL masks (for writing and / or Consensus).
    pub tall: bool,
    /// Consensus: keep elements where at least this many task masks agree (0 = off).
    pub consensus_k: usize,
}

pub struct Output {
    pub merged: Vec<f32>,
    /// TALL masks, one per row, 0/1 per element (when requested).
    pub tall_masks: Vec<Vec<bool>>,
}

/// `base [N]`, `thetas [R·N]` (the non-base inputs, row by row).
pub async fn run(dev: &Device, a: &Args<'_>, base: Vec<f32>, thetas: Vec<f32>) -> Result<Output> {
    let n = base.len();
    let r = a.rows.len();
    // A tensor whose largest device buffer (the [R, N] task vectors, or the magnitude-mask scratch
    // of R·520 words) would not fit one binding merges on the host: merges are never split.
    let largest = 4 * (r * n).max(r * 2 * 260) as u64;
    if matches!(dev, Device::Cpu(_)) || largest > dev.info().max_storage_buffer_binding_size {
        return run_host(a, base, thetas);
    }
    let merr = |reason: String| Error::Merge { tensor: a.name.to_string(), reason };
    let base_t = dev.upload(&TensorData::f32(&[n], base)?)?;
    let thetas_t = dev.upload(&TensorData::f32(&[r, n], thetas)?)?;
    let neg = dev.exec1(&Op::Scale { alpha: -1.0 }, &[&base_t])?;
    let raw = dev.exec1(&Op::Add, &[&thetas_t, &neg])?;
    drop((thetas_t, neg));
    let peft = a.semantics == Semantics::Peft;
    let f32s = |v: Vec<f32>, dims: &[usize]| -> Result<crate::Tensor> { dev.upload(&TensorData::f32(dims, v)?) };
    let deltas = match a.gta.sparsify {
        None => raw.clone(),
        Some(kind) => {
            let mask = if let Some(m) = imported_masks(a, n)? {
                dev.upload(&TensorData::u32(&[r, n], m)?)?
            } else {
                match kind {
                    Sparsify::Magnitude | Sparsify::Outliers => {
                        let mut ranks = Vec::with_capacity(2 * r);
                        for row in &a.rows {
                            let (lo, hi) = rank_band(kind, n, row.density, row.gamma);
                            ranks.extend([lo as u32, hi as u32]);
                        }
                        let ranks = dev.upload(&TensorData::u32(&[r, 2], ranks)?)?;
                        dev.exec1(&Op::MagnitudeMask, &[&raw, &ranks])?
                    }
                    Sparsify::Random => {
                        let p: Vec<f32> = a.rows.iter().map(|row| if row.density >= 1.0 { 1.0 } else { row.density as f32 }).collect();
                        let p = f32s(p, &[r])?;
                        dev.exec1(&Op::RandomMask { seed: a.seed, key: tensor_key(a.name) }, &[&raw, &p])?
                    }
                    Sparsify::Della => {
                        let (g, c) = della_groups(a.dims).ok_or_else(|| merr(format!("della ranks along dimension 1; tensors of rank {} are not supported", a.dims.len())))?;
                        let mut p = Vec::with_capacity(r * c);
                        for row in &a.rows {
                            p.extend(della_probs(row.density, row.epsilon, c));
                        }
                        let p = f32s(p, &[r, c])?;
                        let x3 = raw.reshape(&[r, g, c])?;
                        dev.exec1(&Op::DellaMask { seed: a.seed, key: tensor_key(a.name) }, &[&x3, &p])?.reshape(&[r, n])?
                    }
                }
            };
            // peft (and the DARE paper) rescale by 1/density; mergekit matches the L1 norm.
            let random = matches!(kind, Sparsify::Random | Sparsify::Della);
            let scale: Vec<f32> = a
                .rows
                .iter()
                .map(|row| if peft && random && a.rescale && row.density < 1.0 { (1.0 / row.density) as f32 } else { 1.0 })
                .collect();
            let scale = f32s(scale, &[r])?;
            dev.exec1(&Op::MaskedRescale { l1: a.rescale && !peft }, &[&raw, &mask, &scale])?
        }
    };
    // Only TALL reads the raw task vectors again: free them before the merge otherwise.
    let raw = if a.tall || a.consensus_k > 0 { Some(raw) } else { None };
    let consensus = if a.gta.consensus { Consensus::Sum } else { Consensus::None };
    let op = Op::TaskMerge {
        consensus,
        weighted_sign: !peft,
        count_divisor: peft && a.gta.consensus,
        normalize: if peft { a.gta.consensus } else { a.normalize },
        lambda: a.lambda as f32,
    };
    let w = f32s(a.rows.iter().map(|row| row.weight as f32).collect(), &[r])?;
    let out = dev.exec1(&op, &[&base_t, &deltas, &w])?;
    drop(deltas);
    let downloaded = dev.download(&out).await?;
    drop(out);
    let mut merged = match downloaded.into_data() {
        crate::tensor::HostData::F32(v) => v,
        other => return Err(merr(format!("TaskMerge returned {} data", other.dtype()))),
    };
    let tall_masks = match raw {
        Some(raw) => {
            let raw = dev.download(&raw).await?;
            let base = dev.download(&base_t).await?;
            tall(a, raw.as_f32()?, base.as_f32()?, &mut merged)
        }
        None => Vec::new(),
    };
    Ok(Output { merged, tall_masks })
}

/// The same pipeline on the host without the device round trips (no upload / download copies):
/// the very functions the CPU ops run, so results equal `Device::Cpu` exactly.
pub(crate) fn run_host(a: &Args<'_>, base: Vec<f32>, mut raw: Vec<f32>) -> Result<Output> {
    use crate::cpu::merge as k;
    let n = base.len();
    let r = a.rows.len();
    let merr = |reason: String| Error::Merge { tensor: a.name.to_string(), reason };
    // θ + (−b) is θ − b exactly, as the device path's Scale + Add computes it.
    raw.chunks_mut(n.max(1)).for_each(|row| row.iter_mut().zip(&base).for_each(|(t, b)| *t -= b));
    let peft = a.semantics == Semantics::Peft;
    let keep_raw = a.tall || a.consensus_k > 0;
    let deltas = match a.gta.sparsify {
        None => raw.clone(),
        Some(kind) => {
            let mask = if let Some(m) = imported_masks(a, n)? {
                m
            } else {
                match kind {
                    Sparsify::Magnitude | Sparsify::Outliers => {
                        let ranks: Vec<u32> = a.rows.iter().flat_map(|row| { let (lo, hi) = rank_band(kind, n, row.density, row.gamma); [lo as u32, hi as u32] }).collect();
                        k::magnitude_mask(&raw, n, &ranks)
                    }
                    Sparsify::Random => {
                        let p: Vec<f32> = a.rows.iter().map(|row| if row.density >= 1.0 { 1.0 } else { row.density as f32 }).collect();
                        k::random_mask(n, r, &p, a.seed, tensor_key(a.name))
                    }
                    Sparsify::Della => {
                        let (g, c) = della_groups(a.dims).ok_or_else(|| merr(format!("della ranks along dimension 1; tensors of rank {} are not supported", a.dims.len())))?;
                        let p: Vec<f32> = a.rows.iter().flat_map(|row| della_probs(row.density, row.epsilon, c)).collect();
                        k::della_mask(&raw, g, c, &p, a.seed, tensor_key(a.name))
                    }
                }
            };
            let random = matches!(kind, Sparsify::Random | Sparsify::Della);
            let scale: Vec<f32> = a.rows.iter().map(|row| if peft && random && a.rescale && row.density < 1.0 { (1.0 / row.density) as f32 } else { 1.0 }).collect();
            k::masked_rescale(&raw, &mask, n, &scale, a.rescale && !peft)
        }
    };
    let raw = if keep_raw { raw } else { drop(raw); Vec::new() };
    let w: Vec<f32> = a.rows.iter().map(|row| row.weight as f32).collect();
    let consensus = if a.gta.consensus { Consensus::Sum } else { Consensus::None };
    let normalize = if peft { a.gta.consensus } else { a.normalize };
    let mut merged = k::task_merge(&base, &deltas, &w, consensus, !peft, peft && a.gta.consensus, normalize, a.lambda as f32);
    drop(deltas);
    let tall_masks = if keep_raw { tall(a, &raw, &base, &mut merged) } else { Vec::new() };
    Ok(Output { merged, tall_masks })
}

/// TALL masks of every row, and Consensus applied to `merged` when asked.
/// The `[R, N]` keep mask from imported masks, when any row has one (rows that keep everything
/// may lack theirs); `None` without imported masks.
fn imported_masks(a: &Args<'_>, n: usize) -> Result<Option<Vec<u32>>> {
    if a.rows.iter().all(|row| row.mask.is_none()) {
        return Ok(None);
    }
    let mut m = Vec::with_capacity(a.rows.len() * n);
    for (i, row) in a.rows.iter().enumerate() {
        match &row.mask {
            Some(v) => m.extend_from_slice(v),
            None if row.density >= 1.0 => m.extend(std::iter::repeat_n(1u32, n)),
            None => {
                return Err(Error::Merge { tensor: a.name.to_string(), reason: format!("the imported masks have none for input row {i} (density {})", row.density) })
            }
        }
    }
    Ok(Some(m))
}

fn tall(a: &Args<'_>, raw: &[f32], base: &[f32], merged: &mut [f32]) -> Vec<Vec<bool>> {
    let n = base.len();
    let mut tall_masks = Vec::new();
    {
        for (i, row) in a.rows.iter().enumerate() {
            let lam = row.tall_lambda as f32;
            let tau = &raw[i * n..(i + 1) * n];
            // TALL: |τ_t| > λ_t·|τ_MTL − τ_t|, with τ_MTL the merged task vector.
            tall_masks.push((0..n).map(|j| tau[j].abs() > lam * ((merged[j] - base[j]) - tau[j]).abs()).collect::<Vec<bool>>());
        }
        if a.consensus_k > 0 {
            for (j, m) in merged.iter_mut().enumerate() {
                if tall_masks.iter().filter(|t: &&Vec<bool>| t[j]).count() < a.consensus_k {
                    *m = base[j];
                }
            }
        }
    }
    tall_masks
}

/// The band of descending-magnitude ranks kept: `[0, k)` for TIES (`k = max(1, ⌊ρn⌋)`), and for
/// Breadcrumbs the band below the `⌊γn⌋` largest that leaves `⌊ρn⌋` entries — at least one, so a
/// small tensor is never zeroed (mergekit keeps none when `ρn < 1`). Density ≥ 1 keeps everything.
pub fn rank_band(kind: Sparsify, n: usize, density: f64, gamma: f64) -> (usize, usize) {
    if density >= 1.0 {
        return (0, n);
    }
    let target = ((density * n as f64) as usize).max(1).min(n);
    match kind {
        Sparsify::Outliers => {
            let n_top = (gamma * n as f64) as usize;
            let n_bot = n.saturating_sub(target + n_top);
            (n - n_bot - target, n - n_bot)
        }
        _ => (0, target),
    }
}

/// DELLA's groups: `[G, C]` for a matrix (ranked along dim 1 within each row), `[1, n]` for a vector.
pub fn della_groups(dims: &[usize]) -> Option<(usize, usize)> {
    match dims {
        [n] => Some((1, *n)),
        [g, c] => Some((*g, *c)),
        _ => None,
    }
}

/// Keep probability by ascending rank q: `(ρ−ε) + q/(C−1)·2ε`, in f32 as mergekit computes it;
/// density ≥ 1 keeps everything. One column (C = 1) is rank 0.
pub fn della_probs(density: f64, epsilon: f64, c: usize) -> Vec<f32> {
    if density >= 1.0 {
        return vec![1.0; c];
    }
    let lo = (density - epsilon) as f32;
    let two_eps = 2.0 * epsilon as f32;
    (0..c)
        .map(|q| {
            let norm = if c > 1 { ((q as f32) / ((c - 1) as f32)).clamp(0.0, 1.0) } else { 0.0 };
            lo + norm * two_eps
        })
        .collect()
}
