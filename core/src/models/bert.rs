//! BERT-family encoder (`BertModel`, e.g. all-MiniLM-L6-v2): embeddings (word + position +
//! token type) → LayerNorm → N × [self-attention → add & LayerNorm → GELU FFN → add & LayerNorm].
//!
//! Shapes: B batch, T tokens, C hidden, H heads, D = C / H, F intermediate.

use super::config::BertConfig;
use super::{load, Linear, Norm, Weights};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::{GeluKind, Op};
use crate::tensor::{Tensor, TensorData};

struct Layer {
    q: Linear,   // [C, C]
    k: Linear,   // [C, C]
    v: Linear,   // [C, C]
    o: Linear,   // [C, C]
    ln1: Norm,   // after attention
    up: Linear,  // [F, C]
    down: Linear, // [C, F]
    ln2: Norm,   // after the FFN
}

pub struct Bert {
    pub cfg: BertConfig,
    word: Tensor,     // [V, C]
    position: Tensor, // [P, C]
    token_type: Tensor, // [2, C]
    ln: Norm,
    layers: Vec<Layer>,
    gelu: GeluKind,
}

/// One tokenized batch: `ids`, `type_ids` and `mask` are `[B, T]`, rows padded to a common T.
#[derive(Clone, Debug)]
pub struct EncoderInput {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub mask: Vec<u32>,
    pub batch: usize,
    pub tokens: usize,
}

fn norm(dev: &Device, w: &dyn Weights, prefix: &str, c: usize, eps: f32) -> Result<Norm> {
    Ok(Norm {
        gamma: load(dev, w, &format!("{prefix}.weight"), &[c])?,
        beta: Some(load(dev, w, &format!("{prefix}.bias"), &[c])?),
        eps,
    })
}

impl Bert {
    /// Loads the weights; names may carry a `bert.` prefix (as in `BertForSequenceClassification`).
    pub fn load(dev: &Device, cfg: BertConfig, w: &dyn Weights) -> Result<Bert> {
        let p = if w.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let gelu = match cfg.hidden_act.as_str() {
            "gelu" | "gelu_python" => GeluKind::Erf,
            "gelu_new" | "gelu_pytorch_tanh" => GeluKind::Tanh,
            other => return Err(Error::InvalidParam { op: "config", reason: format!("hidden_act '{other}' is not supported") }),
        };
        let e = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("{p}encoder.layer.{i}");
            layers.push(Layer {
                q: Linear::load(dev, w, &format!("{l}.attention.self.query"), c, c, true)?,
                k: Linear::load(dev, w, &format!("{l}.attention.self.key"), c, c, true)?,
                v: Linear::load(dev, w, &format!("{l}.attention.self.value"), c, c, true)?,
                o: Linear::load(dev, w, &format!("{l}.attention.output.dense"), c, c, true)?,
                ln1: norm(dev, w, &format!("{l}.attention.output.LayerNorm"), c, e)?,
                up: Linear::load(dev, w, &format!("{l}.intermediate.dense"), c, f, true)?,
                down: Linear::load(dev, w, &format!("{l}.output.dense"), f, c, true)?,
                ln2: norm(dev, w, &format!("{l}.output.LayerNorm"), c, e)?,
            });
        }
        Ok(Bert {
            word: load(dev, w, &format!("{p}embeddings.word_embeddings.weight"), &[cfg.vocab_size, c])?,
            position: load(dev, w, &format!("{p}embeddings.position_embeddings.weight"), &[cfg.max_position_embeddings, c])?,
            token_type: load(dev, w, &format!("{p}embeddings.token_type_embeddings.weight"), &[cfg.type_vocab_size, c])?,
            ln: norm(dev, w, &format!("{p}embeddings.LayerNorm"), c, e)?,
            layers,
            gelu,
            cfg,
        })
    }

    /// `last_hidden_state [B, T, C]`, left on the device.
    pub fn forward(&self, dev: &Device, input: &EncoderInput) -> Result<Tensor> {
        let (b, t) = (input.batch, input.tokens);
        let (c, h) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let d = c / h;
        if t > self.cfg.max_position_embeddings {
            return Err(Error::InvalidParam {
                op: "bert",
                reason: format!("{t} tokens exceed max_position_embeddings {}", self.cfg.max_position_embeddings),
            });
        }
        for (name, v) in [("ids", &input.ids), ("type_ids", &input.type_ids), ("mask", &input.mask)] {
            if v.len() != b * t {
                return Err(Error::DataLength { shape: vec![b, t], expected: b * t, got: v.len() });
            }
            let _ = name;
        }
        if let Some(&bad) = input.ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidParam { op: "bert", reason: format!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab_size) });
        }
        let ids = dev.upload(&TensorData::u32(&[b * t], input.ids.clone())?)?;
        let types = dev.upload(&TensorData::u32(&[b * t], input.type_ids.clone())?)?;
        let pos = dev.upload(&TensorData::u32(&[b * t], (0..b * t).map(|i| (i % t) as u32).collect())?)?;
        let mask = dev.upload(&TensorData::u32(&[b, t], input.mask.clone())?)?;

        let x = dev.exec1(&Op::Embedding, &[&self.word, &ids])?;
        let x = dev.exec1(&Op::Add, &[&x, &dev.exec1(&Op::Embedding, &[&self.position, &pos])?])?;
        let x = dev.exec1(&Op::Add, &[&x, &dev.exec1(&Op::Embedding, &[&self.token_type, &types])?])?;
        let mut x = self.ln.forward(dev, &x)?; // [B*T, C]

        let heads = |y: Tensor| -> Result<Tensor> { dev.exec1(&Op::Permute { perm: [0, 2, 1, 3] }, &[&y.reshape(&[b, t, h, d])?]) };
        let attn = Op::Attention { causal: false, scale: 1.0 / (d as f32).sqrt() };
        for l in &self.layers {
            let q = heads(l.q.forward(dev, &x)?)?;
            let k = heads(l.k.forward(dev, &x)?)?;
            let v = heads(l.v.forward(dev, &x)?)?;
            let a = dev.exec1(&attn, &[&q, &k, &v, &mask])?; // [B, H, T, D]
            let a = dev.exec1(&Op::Permute { perm: [0, 2, 1, 3] }, &[&a])?.reshape(&[b * t, c])?;
            let a = l.o.forward(dev, &a)?;
            x = l.ln1.forward(dev, &dev.exec1(&Op::Add, &[&a, &x])?)?;
            let f = dev.exec1(&Op::Gelu(self.gelu), &[&l.up.forward(dev, &x)?])?;
            let f = l.down.forward(dev, &f)?;
            x = l.ln2.forward(dev, &dev.exec1(&Op::Add, &[&f, &x])?)?;
        }
        x.reshape(&[b, t, c])
    }
}

/// Sentence-transformers pooling of `hidden [B, T, C]` under `mask [B, T]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// Pools each sequence to `[C]`; `normalize` divides by the L2 norm (sentence-transformers' Normalize).
pub fn pool(hidden: &TensorData, mask: &[u32], mode: Pooling, normalize: bool) -> Result<Vec<Vec<f32>>> {
    let d = hidden.dims();
    let (b, t, c) = (d[0], d[1], d[2]);
    let x = hidden.as_f32()?;
    let mut out = Vec::with_capacity(b);
    for bi in 0..b {
        let mut v = vec![0f64; c];
        match mode {
            Pooling::Cls => v.iter_mut().zip(&x[bi * t * c..][..c]).for_each(|(o, &e)| *o = e as f64),
            Pooling::Mean => {
                let mut n = 0.0;
                for ti in 0..t {
                    if mask[bi * t + ti] != 0 {
                        n += 1.0;
                        v.iter_mut().zip(&x[(bi * t + ti) * c..][..c]).for_each(|(o, &e)| *o += e as f64);
                    }
                }
                // sentence-transformers clamps the token count at 1e-9.
                v.iter_mut().for_each(|o| *o /= f64::max(n, 1e-9));
            }
        }
        if normalize {
            // torch.nn.functional.normalize: x / max(||x||, 1e-12)
            let nrm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            v.iter_mut().for_each(|o| *o /= nrm);
        }
        out.push(v.into_iter().map(|a| a as f32).collect());
    }
    Ok(out)
}
