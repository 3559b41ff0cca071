//! BERT-family encoder (`BertModel`, e.g. all-MiniLM-L6-v2): embeddings (word + position +
//! token type) → LayerNorm → N × [self-attention → add & LayerNorm → GELU FFN → add & LayerNorm].
//!
//! Shapes: B batch, T tokens, C hidden, H heads, D = C / H, F intermediate.

use super::config::BertConfig;
use super::{load, Linear, Norm, Weights};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::{GeluKind, Op};
use crate::lora::runtime::{self, LoraHost, LoraSet, Mix};
use crate::lora::Adapter;
use crate::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;

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
    /// `BertForSequenceClassification`: pooler (dense + tanh on the first token) and classifier.
    pub head: Option<ClassifierHead>,
    /// Registered LoRA adapters (see [`crate::lora::runtime`]).
    pub lora: LoraSet,
}

/// The sequence-classification head, and the classifiers adapters carry in `modules_to_save`.
pub struct ClassifierHead {
    pooler: Linear,     // [C, C]
    classifier: Linear, // [L, C]
    /// Label names by class index (`id2label`, or "LABEL_i").
    pub labels: Vec<String>,
    /// Per adapter: its own classifier (`classifier.weight [L, C]`, `classifier.bias [L]`).
    saved: BTreeMap<String, Linear>,
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

impl EncoderInput {
    /// The batch `n` times over (the same sequences again, e.g. one copy per adapter stream).
    pub fn repeat(&self, n: usize) -> EncoderInput {
        EncoderInput { ids: self.ids.repeat(n), type_ids: self.type_ids.repeat(n), mask: self.mask.repeat(n), batch: self.batch * n, tokens: self.tokens }
    }
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
            head: load_head(dev, &cfg, w, p)?,
            layers,
            gelu,
            cfg,
            lora: LoraSet::default(),
        })
    }

    /// `last_hidden_state [B, T, C]`, left on the device.
    pub fn forward(&self, dev: &Device, input: &EncoderInput) -> Result<Tensor> {
        self.forward_mixed(dev, input, None)
    }

    /// [`Bert::forward`] with an adapter mix per sequence (`None`: the active mix for every row).
    pub fn forward_mixed(&self, dev: &Device, input: &EncoderInput, mixes: Option<&[Mix]>) -> Result<Tensor> {
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

        let sel = self.lora.row_sel(dev, mixes, b, t)?;
        let sel = sel.as_ref();
        let x = dev.exec1(&Op::Embedding, &[&self.word, &ids])?;
        let x = dev.exec1(&Op::Add, &[&x, &dev.exec1(&Op::Embedding, &[&self.position, &pos])?])?;
        let x = dev.exec1(&Op::Add, &[&x, &dev.exec1(&Op::Embedding, &[&self.token_type, &types])?])?;
        let mut x = self.ln.forward(dev, &x)?; // [B*T, C]

        let heads = |y: Tensor| -> Result<Tensor> { dev.exec1(&Op::Permute { perm: [0, 2, 1, 3] }, &[&y.reshape(&[b, t, h, d])?]) };
        let attn = Op::Attention { causal: false, scale: 1.0 / (d as f32).sqrt() };
        for l in &self.layers {
            let q = heads(l.q.forward(dev, &x, sel)?)?;
            let k = heads(l.k.forward(dev, &x, sel)?)?;
            let v = heads(l.v.forward(dev, &x, sel)?)?;
            let a = dev.exec1(&attn, &[&q, &k, &v, &mask])?; // [B, H, T, D]
            let a = dev.exec1(&Op::Permute { perm: [0, 2, 1, 3] }, &[&a])?.reshape(&[b * t, c])?;
            let a = l.o.forward(dev, &a, sel)?;
            x = l.ln1.forward(dev, &dev.exec1(&Op::Add, &[&a, &x])?)?;
            let f = dev.exec1(&Op::Gelu(self.gelu), &[&l.up.forward(dev, &x, sel)?])?;
            let f = l.down.forward(dev, &f, sel)?;
            x = l.ln2.forward(dev, &dev.exec1(&Op::Add, &[&f, &x])?)?;
        }
        x.reshape(&[b, t, c])
    }
}

fn load_head(dev: &Device, cfg: &BertConfig, w: &dyn Weights, p: &str) -> Result<Option<ClassifierHead>> {
    let is_cls = cfg.architectures.iter().any(|a| a.ends_with("ForSequenceClassification"));
    if !is_cls || !w.contains("classifier.weight") {
        return Ok(None);
    }
    let c = cfg.hidden_size;
    let l = w.tensor("classifier.weight")?.dims().first().copied().unwrap_or(0);
    let labels = (0..l).map(|i| cfg.id2label.get(&i.to_string()).cloned().unwrap_or_else(|| format!("LABEL_{i}"))).collect();
    Ok(Some(ClassifierHead {
        pooler: Linear::load(dev, w, &format!("{p}pooler.dense"), c, c, true)?,
        classifier: Linear::load(dev, w, "classifier", c, l, true)?,
        labels,
        saved: BTreeMap::new(),
    }))
}

impl Bert {
    /// Class logits `[B, L]` of a sequence classifier, on the host. Each sequence's classifier is
    /// the one saved by the last adapter of its mix that carries one (PEFT `modules_to_save`),
    /// else the base model's.
    pub async fn classify(&self, dev: &Device, input: &EncoderInput, mixes: Option<&[Mix]>) -> Result<TensorData> {
        let head = self.head.as_ref().ok_or_else(|| Error::InvalidParam { op: "classify", reason: "this model has no classification head".into() })?;
        let (b, t, c) = (input.batch, input.tokens, self.cfg.hidden_size);
        let h = self.forward_mixed(dev, input, mixes)?.reshape(&[b * t, c])?;
        let first = dev.upload(&TensorData::u32(&[b], (0..b).map(|r| (r * t) as u32).collect())?)?;
        let cls = dev.exec1(&Op::Embedding, &[&h, &first])?; // [B, C]
        let sel = self.lora.row_sel(dev, mixes, b, 1)?;
        let pooled = head.pooler.forward(dev, &cls, sel.as_ref())?;
        // tanh(x) = 2·sigmoid(2x) − 1
        let s = dev.exec1(&Op::Sigmoid, &[&dev.exec1(&Op::Scale { alpha: 2.0 }, &[&pooled])?])?;
        let minus_one = dev.upload(&TensorData::f32(&[c], vec![-1.0; c])?)?;
        let pooled = dev.exec1(&Op::Add, &[&dev.exec1(&Op::Scale { alpha: 2.0 }, &[&s])?, &minus_one])?;
        // Which classifier each row uses.
        let active = self.lora.active().clone();
        let row_head: Vec<Option<&Linear>> = (0..b)
            .map(|r| {
                let mix = mixes.map_or(&active, |m| &m[r]);
                mix.iter().rev().filter(|(_, w)| *w != 0.0).find_map(|(n, _)| head.saved.get(n))
            })
            .collect();
        let nl = head.labels.len();
        let mut out = vec![0f32; b * nl];
        let mut done = vec![false; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let lin = row_head[r].unwrap_or(&head.classifier);
            let logits = dev.download(&lin.forward(dev, &pooled, sel.as_ref())?).await?;
            let logits = logits.as_f32()?;
            for q in r..b {
                if !done[q] && std::ptr::eq(row_head[q].unwrap_or(&head.classifier), lin) {
                    out[q * nl..][..nl].copy_from_slice(&logits[q * nl..][..nl]);
                    done[q] = true;
                }
            }
        }
        TensorData::f32(&[b, nl], out)
    }

    /// Registers adapters that save no modules, with one upload of the stacked factors.
    pub fn add_adapters(&mut self, dev: &Device, adapters: Vec<Adapter>) -> Result<()> {
        if let Some(a) = adapters.iter().find(|a| !a.saved.is_empty()) {
            return Err(crate::error::Error::Adapter { adapter: a.name.clone(), reason: "saves modules (modules_to_save); register it with add_adapter".into() });
        }
        runtime::add_all(self, dev, adapters)
    }

    /// Registers an adapter (and the classifier it saves, if any).
    pub fn add_adapter(&mut self, dev: &Device, adapter: Adapter) -> Result<()> {
        let name = adapter.name.clone();
        let saved = adapter.saved.clone();
        runtime::add(self, dev, adapter)?;
        if let (Some(head), Some(wt)) = (self.head.as_mut(), saved.get("classifier.weight")) {
            let b = saved.get("classifier.bias").map(|b| dev.upload(b)).transpose()?;
            let (out, inp) = (head.classifier.out, head.classifier.inp);
            head.saved.insert(
                name,
                Linear { name: "classifier".into(), w: dev.upload(wt)?, base: None, b, inp, out, lora: None },
            );
        }
        Ok(())
    }

    pub fn remove_adapter(&mut self, dev: &Device, name: &str) -> Result<()> {
        runtime::remove(self, dev, name)?;
        if let Some(h) = self.head.as_mut() {
            h.saved.remove(name);
        }
        Ok(())
    }

    /// The mix used when a request names none.
    pub fn set_adapters(&mut self, mix: Mix) -> Result<()> {
        runtime::set_active(self, mix)
    }

    /// Bakes the active mix into the weights.
    pub fn fuse(&mut self, dev: &Device) -> Result<()> {
        runtime::fuse(self, dev)
    }

    /// Restores the original weights exactly.
    pub fn unfuse(&mut self) -> Result<()> {
        runtime::unfuse(self)
    }

    /// Every tensor fusing changed, by checkpoint name: fused linears, and the classifier saved by
    /// the last adapter of the fused mix that carries one.
    pub async fn fused_tensors(&mut self, dev: &Device) -> Result<Vec<(String, TensorData)>> {
        let mut out = runtime::fused_weights(self, dev).await?;
        let fused = self.lora.fused().clone();
        if let Some(h) = &self.head {
            if let Some(lin) = fused.iter().rev().filter(|(_, w)| *w != 0.0).find_map(|(n, _)| h.saved.get(n)) {
                out.push(("classifier.weight".into(), dev.download(&lin.w).await?));
                if let Some(b) = &lin.b {
                    out.push(("classifier.bias".into(), dev.download(b).await?));
                }
            }
        }
        Ok(out)
    }
}

impl LoraHost for Bert {
    fn lora_parts(&mut self) -> (&mut LoraSet, Vec<&mut Linear>) {
        let mut v = Vec::new();
        for l in &mut self.layers {
            v.extend([&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.up, &mut l.down]);
        }
        if let Some(h) = &mut self.head {
            v.extend([&mut h.pooler, &mut h.classifier]);
        }
        (&mut self.lora, v)
    }
    fn check_saved(&self, adapter: &Adapter) -> Result<()> {
        let err = |reason: String| Err(Error::Adapter { adapter: adapter.name.clone(), reason });
        for (k, t) in &adapter.saved {
            let Some(h) = &self.head else {
                return err(format!("modules_to_save tensor '{k}' needs a classification head, and this model has none"));
            };
            let want: Vec<usize> = match k.as_str() {
                "classifier.weight" => vec![h.classifier.out, h.classifier.inp],
                "classifier.bias" => vec![h.classifier.out],
                _ => return err(format!("modules_to_save tensor '{k}' has no counterpart in this model (only the classifier is supported)")),
            };
            if t.dims() != want.as_slice() {
                return err(format!("modules_to_save tensor '{k}' has shape {:?}, the model's is {want:?}", t.dims()));
            }
        }
        Ok(())
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
