//! The small ViT trunk of `taskloom.json`, from the op table: patches are cut on the host (the
//! input is host data anyway), everything after runs on the device. Pre-norm blocks:
//! `x = x + proj(attn(ln1(x)))`, `x = x + mlp(ln2(x))`, non-causal attention with scale 1/sqrt(D).
//!
//! Shapes: B images, N patches, T = N + 1 tokens (row 0 = cls), C dim, H heads, D = C / H.

use super::spec::{Act, Pool, VitSpec};
use super::Loader;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::lora::runtime::RowSel;
use crate::models::{Linear, Norm};
use crate::op::{GeluKind, Op};
use crate::tensor::{Tensor, TensorData};

pub(crate) fn act(dev: &Device, a: Act, x: &Tensor) -> Result<Tensor> {
    let op = match a {
        Act::Gelu => Op::Gelu(GeluKind::Erf),
        Act::GeluTanh => Op::Gelu(GeluKind::Tanh),
        Act::Relu => Op::Relu,
    };
    dev.exec1(&op, &[x])
}

pub(crate) fn linear(l: &Loader, prefix: &str, inp: usize, out: usize) -> Result<Linear> {
    Ok(Linear {
        name: prefix.into(),
        w: l.load(&format!("{prefix}.weight"))?,
        base: None,
        b: Some(l.load(&format!("{prefix}.bias"))?),
        inp,
        out,
        lora: None,
    })
}

fn norm(l: &Loader, prefix: &str, eps: f32) -> Result<Norm> {
    Ok(Norm { gamma: l.load(&format!("{prefix}.weight"))?, beta: Some(l.load(&format!("{prefix}.bias"))?), eps })
}

pub(crate) struct Block {
    ln1: Norm,
    /// q, k, v: the rows of the fused `attn.qkv` `[3C, C]`, split at load.
    pub qkv: [Linear; 3],
    pub proj: Linear,
    pub ln2: Norm,
    /// `fc1 [mlp_dim, C]`, `fc2 [C, mlp_dim]`; `None` for a task-routed MoE block.
    pub mlp: Option<(Linear, Linear)>,
}

pub(crate) struct Vit {
    pub spec: VitSpec,
    /// `[C, P*P*channels]`.
    patch: Linear,
    /// `[1, C]`: a one-row table, gathered once per image.
    cls: Tensor,
    /// `[N+1, C]`.
    pos: Tensor,
    pub blocks: Vec<Block>,
    norm: Norm,
    /// Image height, width, channels and pixel scale.
    pub hwc: (usize, usize, usize),
    pub scale: f32,
}

impl Vit {
    pub fn load(l: &Loader, spec: &VitSpec, hwc: (usize, usize, usize), scale: f32) -> Result<Vit> {
        let (p, c) = (&spec.prefix, spec.dim);
        let pp = spec.patch * spec.patch * hwc.2;
        let mut blocks = Vec::with_capacity(spec.depth);
        for i in 0..spec.depth {
            let b = format!("{p}.blocks.{i}");
            let w = l.data(&format!("{b}.attn.qkv.weight"))?.to_f32_vec(); // [3C, C]
            let bias = l.data(&format!("{b}.attn.qkv.bias"))?.to_f32_vec(); // [3C]
            let part = |j: usize| -> Result<Linear> {
                Ok(Linear {
                    name: format!("{b}.attn.qkv[{j}]"),
                    w: l.upload(&TensorData::f32(&[c, c], w[j * c * c..(j + 1) * c * c].to_vec())?)?,
                    base: None,
                    b: Some(l.upload(&TensorData::f32(&[c], bias[j * c..(j + 1) * c].to_vec())?)?),
                    inp: c,
                    out: c,
                    lora: None,
                })
            };
            let mlp = if spec.moe_blocks.contains(&i) {
                None
            } else {
                Some((linear(l, &format!("{b}.mlp.fc1"), c, spec.mlp_dim)?, linear(l, &format!("{b}.mlp.fc2"), spec.mlp_dim, c)?))
            };
            blocks.push(Block {
                ln1: norm(l, &format!("{b}.ln1"), spec.eps)?,
                qkv: [part(0)?, part(1)?, part(2)?],
                proj: linear(l, &format!("{b}.attn.proj"), c, c)?,
                ln2: norm(l, &format!("{b}.ln2"), spec.eps)?,
                mlp,
            });
        }
        let cls = l.data(&format!("{p}.cls"))?;
        Ok(Vit {
            spec: spec.clone(),
            patch: linear(l, &format!("{p}.patch"), pp, c)?,
            cls: l.upload(&TensorData::f32(&[1, c], cls.to_f32_vec())?)?,
            pos: l.load(&format!("{p}.pos"))?,
            blocks,
            norm: norm(l, &format!("{p}.norm"), spec.eps)?,
            hwc,
            scale,
        })
    }

    /// Patch rows `[B, N, P*P*channels]` (pixels flattened as (py, px, c)), scaled, on the host.
    fn patchify(&self, images: &[&[f32]]) -> Result<TensorData> {
        let ((h, w, ch), p) = (self.hwc, self.spec.patch);
        let (gh, gw) = (h / p, w / p);
        let mut v = Vec::with_capacity(images.len() * h * w * ch);
        for img in images {
            if img.len() != h * w * ch {
                return Err(Error::DataLength { shape: vec![h, w, ch], expected: h * w * ch, got: img.len() });
            }
            if let Some(bad) = img.iter().find(|x| !x.is_finite()) {
                return Err(Error::InvalidParam { op: "multitask", reason: format!("pixel value {bad} is not finite") });
            }
            for gy in 0..gh {
                for gx in 0..gw {
                    for py in 0..p {
                        let row = (gy * p + py) * w + gx * p;
                        v.extend(img[row * ch..(row + p) * ch].iter().map(|&x| x * self.scale));
                    }
                }
            }
        }
        TensorData::f32(&[images.len(), gh * gw, p * p * ch], v)
    }

    pub fn tokens(&self) -> usize {
        let ((h, w, _), p) = (self.hwc, self.spec.patch);
        (h / p) * (w / p) + 1
    }

    /// Token features `[B, T, C]` before the first block: cls, patches, plus positions.
    pub fn embed(&self, dev: &Device, images: &[&[f32]]) -> Result<Tensor> {
        let b = images.len();
        let x = dev.upload(&self.patchify(images)?)?;
        let x = self.patch.forward(dev, &x, None)?; // [B, N, C]
        let ids = dev.upload(&TensorData::u32(&[b, 1], vec![0; b])?)?;
        let cls = dev.exec1(&Op::Embedding, &[&self.cls, &ids])?; // [B, 1, C]
        let x = dev.exec1(&Op::Concat { axis: 1 }, &[&cls, &x])?;
        dev.exec1(&Op::Add, &[&x, &self.pos])
    }

    /// `x + proj(attn(ln1(x)))` for block `i`.
    /// With `sel`, linears holding delta stacks add their rows' deltas (see [`super::deltas`]).
    pub fn attention(&self, dev: &Device, i: usize, x: &Tensor, sel: Option<&RowSel>) -> Result<Tensor> {
        let (b, t, c) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let (h, blk) = (self.spec.heads, &self.blocks[i]);
        let d = c / h;
        let n = blk.ln1.forward(dev, x)?;
        let heads = |l: &Linear| -> Result<Tensor> { dev.exec1(&Op::Permute { perm: [0, 2, 1, 3] }, &[&l.forward(dev, &n, sel)?.reshape(&[b, t, h, d])?]) };
        let (q, k, v) = (heads(&blk.qkv[0])?, heads(&blk.qkv[1])?, heads(&blk.qkv[2])?);
        let a = dev.exec1(&Op::Attention { causal: false, scale: 1.0 / (d as f32).sqrt() }, &[&q, &k, &v])?; // [B, H, T, D]
        let a = dev.exec1(&Op::Permute { perm: [0, 2, 1, 3] }, &[&a])?.reshape(&[b, t, c])?;
        dev.exec1(&Op::Add, &[x, &blk.proj.forward(dev, &a, sel)?])
    }

    /// `x + fc2(act(fc1(ln2(x))))` for a dense block `i`.
    pub fn mlp(&self, dev: &Device, i: usize, x: &Tensor, sel: Option<&RowSel>) -> Result<Tensor> {
        let blk = &self.blocks[i];
        let (fc1, fc2) = blk.mlp.as_ref().expect("mlp() is called for dense blocks only");
        let h = act(dev, self.spec.act, &fc1.forward(dev, &blk.ln2.forward(dev, x)?, sel)?)?;
        dev.exec1(&Op::Add, &[x, &fc2.forward(dev, &h, sel)?])
    }

    /// The final norm, then `(tokens [B, T, C], pooled [B, C])`.
    pub fn finish(&self, dev: &Device, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, c) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let x = self.norm.forward(dev, x)?;
        let pooled = match self.spec.pool {
            // Row 0 of each image, gathered from the flattened tokens.
            Pool::Cls => {
                let ids = dev.upload(&TensorData::u32(&[b], (0..b).map(|i| (i * t) as u32).collect())?)?;
                dev.exec1(&Op::Embedding, &[&x.reshape(&[b * t, c])?, &ids])?
            }
            // Mean over the patch tokens: a [1, T] averaging row (0 for cls) times each image's tokens.
            Pool::Mean => {
                let mut w = vec![1.0 / (t - 1) as f32; b * t];
                (0..b).for_each(|i| w[i * t] = 0.0);
                let w = dev.upload(&TensorData::f32(&[b, 1, t], w)?)?;
                dev.exec1(&Op::Matmul { trans_b: false }, &[&w, &x])?.reshape(&[b, c])?
            }
        };
        Ok((x, pooled))
    }
}
