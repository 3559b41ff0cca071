//! Llama-family decoder (Llama, Mistral, Qwen2, SmolLM, Mixtral, DeepSeek-V3): RMSNorm → GQA
//! self-attention with RoPE (or DeepSeek's Multi-head Latent Attention, [`mla`]) and a KV cache →
//! RMSNorm → SiLU-gated MLP or sparse MoE, residuals around both; tied or separate `lm_head`.
//!
//! Shapes: T new tokens, S cached + new tokens, C hidden, Hq/Hkv heads, D head dim (Dk for keys,
//! Dv for values: they differ under MLA), F MLP, V vocab.

mod mla;

use super::config::LlamaConfig;
use super::moe::SparseMoe;
use super::{load, Linear, Norm, Weights};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::Op;
use crate::lora::runtime::{LoraHost, LoraSet, Mix, RowSel};
use crate::tensor::{Tensor, TensorData};

struct Layer {
    ln1: Norm, // [C] RMSNorm
    attn: Attn,
    ln2: Norm, // [C]
    mlp: Mlp,
}

#[allow(clippy::large_enum_variant)] // one per layer, never moved after load
enum Attn {
    /// Grouped-query attention.
    Gqa {
        q: Linear, // [Hq*D, C]
        k: Linear, // [Hkv*D, C]
        v: Linear, // [Hkv*D, C]
        o: Linear, // [C, Hq*D]
        /// Qwen3: per-head RMSNorm of q and k ([D] each).
        qk_norm: Option<(Norm, Norm)>,
    },
    /// DeepSeek's Multi-head Latent Attention.
    Mla(mla::Mla),
}

impl Attn {
    fn o(&self) -> &Linear {
        match self {
            Attn::Gqa { o, .. } => o,
            Attn::Mla(m) => &m.o,
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per layer, never moved after load
enum Mlp {
    Dense {
        gate: Linear, // [F, C]
        up: Linear,   // [F, C]
        down: Linear, // [C, F]
    },
    Sparse(SparseMoe),
}

impl Mlp {
    fn forward(&self, dev: &Device, h: &Tensor, sel: Option<&RowSel>) -> Result<Tensor> {
        match self {
            Mlp::Dense { gate, up, down } => {
                let g = dev.exec1(&Op::Silu, &[&gate.forward(dev, h, sel)?])?;
                let m = dev.exec1(&Op::Mul, &[&g, &up.forward(dev, h, sel)?])?;
                down.forward(dev, &m, sel)
            }
            Mlp::Sparse(moe) => moe.forward(dev, h),
        }
    }
}

pub struct Llama {
    pub cfg: LlamaConfig,
    embed: Tensor,   // [V, C]
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Tensor, // [V, C] (the embedding when tied)
    /// Registered LoRA adapters (see [`crate::lora::runtime`]).
    pub lora: LoraSet,
}

/// Keys and values of every layer so far: `[B, Hkv, S, Dk]` and `[B, Hkv, S, Dv]` (MLA: the
/// expanded per-head keys and values, not the latent).
/// For a batch, rows are left-padded to a common length: `mask [B, S]` marks real tokens and
/// `next_pos[b]` is row b's next position (its count of real tokens so far).
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Slots per row so far (S).
    pub len: usize,
    mask: Vec<u32>,
    next_pos: Vec<u32>,
}

fn rms(dev: &Device, w: &dyn Weights, name: &str, c: usize, eps: f32) -> Result<Norm> {
    Ok(Norm { gamma: load(dev, w, name, &[c])?, beta: None, eps })
}

impl Llama {
    pub fn load(dev: &Device, cfg: LlamaConfig, w: &dyn Weights) -> Result<Llama> {
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (hq, hkv, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let bias = cfg.attention_bias.unwrap_or(false);
        let eps = cfg.rms_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn = match cfg.mla() {
                Some(spec) => Attn::Mla(mla::Mla::load(dev, w, &p, c, hq, spec, cfg.theta(), bias)?),
                None => Attn::Gqa {
                    q: Linear::load(dev, w, &format!("{p}.self_attn.q_proj"), c, hq * d, bias)?,
                    k: Linear::load(dev, w, &format!("{p}.self_attn.k_proj"), c, hkv * d, bias)?,
                    v: Linear::load(dev, w, &format!("{p}.self_attn.v_proj"), c, hkv * d, bias)?,
                    o: Linear::load(dev, w, &format!("{p}.self_attn.o_proj"), hq * d, c, false)?,
                    qk_norm: if cfg.qk_norm {
                        Some((rms(dev, w, &format!("{p}.self_attn.q_norm.weight"), d, eps)?, rms(dev, w, &format!("{p}.self_attn.k_norm.weight"), d, eps)?))
                    } else {
                        None
                    },
                },
            };
            layers.push(Layer {
                ln1: rms(dev, w, &format!("{p}.input_layernorm.weight"), c, eps)?,
                attn,
                ln2: rms(dev, w, &format!("{p}.post_attention_layernorm.weight"), c, eps)?,
                mlp: match cfg.moe(i) {
                    Some(spec) => Mlp::Sparse(SparseMoe::load(dev, w, &p, c, spec)?),
                    None => Mlp::Dense {
                        gate: Linear::load(dev, w, &format!("{p}.mlp.gate_proj"), c, f, false)?,
                        up: Linear::load(dev, w, &format!("{p}.mlp.up_proj"), c, f, false)?,
                        down: Linear::load(dev, w, &format!("{p}.mlp.down_proj"), f, c, false)?,
                    },
                },
            });
        }
        let embed = load(dev, w, "model.embed_tokens.weight", &[v, c])?;
        // Tied when the config says so or when the file simply has no lm_head.
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head.weight") {
            embed.clone()
        } else {
            load(dev, w, "lm_head.weight", &[v, c])?
        };
        let norm = rms(dev, w, "model.norm.weight", c, eps)?;
        Ok(Llama { cfg, embed, layers, norm, lm_head, lora: LoraSet::default() })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: (0..self.layers.len()).map(|_| None).collect(), len: 0, mask: Vec::new(), next_pos: Vec::new() }
    }

    /// One sequence: [`Llama::forward_batch`] with a single row.
    pub fn forward(&self, dev: &Device, ids: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        self.forward_batch(dev, &[ids], cache, all_logits)
    }

    /// Runs B rows of new tokens after what `cache` holds (the same B on every call). Rows are
    /// left-padded to the longest (T); padding is masked out of attention and each row's positions
    /// start at its own first real token. Returns logits `[B*T, V]` for every slot when
    /// `all_logits`, else `[B, V]` for each row's last token. Stays on the device.
    pub fn forward_batch(&self, dev: &Device, rows: &[&[u32]], cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        self.forward_mixed(dev, rows, cache, all_logits, None)
    }

    /// [`Llama::forward_batch`] with an adapter mix per row (`None`: the active mix for every row).
    pub fn forward_mixed(&self, dev: &Device, rows: &[&[u32]], cache: &mut KvCache, all_logits: bool, mixes: Option<&[Mix]>) -> Result<Tensor> {
        let b = rows.len();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let (hq, hkv, d) = (self.cfg.num_attention_heads, self.cfg.kv_heads(), self.cfg.head_dim());
        if t == 0 || rows.iter().any(|r| r.is_empty()) {
            return Err(Error::InvalidParam { op: "llama", reason: "every row needs at least one token".into() });
        }
        if cache.len > 0 && cache.next_pos.len() != b {
            return Err(Error::InvalidParam { op: "llama", reason: format!("the cache holds {} rows, got {b}", cache.next_pos.len()) });
        }
        if let Some(&bad) = rows.iter().flat_map(|r| r.iter()).find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidParam { op: "llama", reason: format!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab_size) });
        }
        cache.next_pos.resize(b, 0);
        let (mut ids, mut pos, mut new_mask) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for (r, row) in rows.iter().enumerate() {
            let pad = t - row.len();
            for s in 0..t {
                let real = s >= pad;
                ids.push(if real { row[s - pad] } else { 0 });
                pos.push(if real { cache.next_pos[r] + (s - pad) as u32 } else { 0 });
                new_mask.push(real as u32);
            }
            cache.next_pos[r] += row.len() as u32;
        }
        // mask [B, S + T]: each row's old slots, then its new ones.
        let s_old = cache.len;
        let mut mask = Vec::with_capacity(b * (s_old + t));
        for r in 0..b {
            mask.extend_from_slice(&cache.mask[r * s_old..(r + 1) * s_old]);
            mask.extend_from_slice(&new_mask[r * t..(r + 1) * t]);
        }
        cache.mask = mask;
        let ids_t = dev.upload(&TensorData::u32(&[b * t], ids)?)?;
        let pos = dev.upload(&TensorData::u32(&[b, t], pos)?)?;
        let mask_t = dev.upload(&TensorData::u32(&[b, s_old + t], cache.mask.clone())?)?;
        let rope = Op::Rope { theta: self.cfg.theta() };
        let to_heads = Op::Permute { perm: [0, 2, 1, 3] };
        let gqa = Op::Attention { causal: true, scale: 1.0 / (d as f32).sqrt() };
        // MLA broadcasts its shared RoPE key to the heads with one gather per layer; the ids are shared.
        let bcast = if self.cfg.mla().is_some() { Some(mla::Mla::broadcast_ids(dev, b, hq, t)?) } else { None };

        let sel = self.lora.row_sel(dev, mixes, b, t)?;
        let sel = sel.as_ref();
        let mut x = dev.exec1(&Op::Embedding, &[&self.embed, &ids_t])?; // [B*T, C]
        for (l, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = l.ln1.forward(dev, &x)?;
            let (q, k, v, attn, dv) = match &l.attn {
                Attn::Gqa { q, k, v, qk_norm, .. } => {
                    let heads = |y: Tensor, n: usize| dev.exec1(&to_heads, &[&y.reshape(&[b, t, n, d])?]);
                    let (mut q, mut k) = (q.forward(dev, &h, sel)?, k.forward(dev, &h, sel)?);
                    if let Some((qn, kn)) = qk_norm {
                        // RMSNorm over each head's D values: rows of [B*T*H, D].
                        q = qn.forward(dev, &q.reshape(&[b * t * hq, d])?)?;
                        k = kn.forward(dev, &k.reshape(&[b * t * hkv, d])?)?;
                    }
                    let q = dev.exec1(&rope, &[&heads(q, hq)?, &pos])?;
                    let k = dev.exec1(&rope, &[&heads(k, hkv)?, &pos])?;
                    (q, k, heads(v.forward(dev, &h, sel)?, hkv)?, gqa, d)
                }
                Attn::Mla(m) => {
                    let bcast = bcast.as_ref().expect("uploaded for MLA models");
                    let (q, k, v) = m.qkv(dev, &h, b, t, &pos, bcast, sel)?;
                    (q, k, v, Op::Attention { causal: true, scale: m.scale() }, m.value_dim())
                }
            };
            let (k, v) = match slot.take() {
                None => (k, v),
                Some((ck, cv)) => {
                    (dev.exec1(&Op::Concat { axis: 2 }, &[&ck, &k])?, dev.exec1(&Op::Concat { axis: 2 }, &[&cv, &v])?)
                }
            };
            let a = dev.exec1(&attn, &[&q, &k, &v, &mask_t])?; // [B, Hq, T, Dv]
            *slot = Some((k, v));
            let a = dev.exec1(&to_heads, &[&a])?.reshape(&[b * t, hq * dv])?;
            x = dev.exec1(&Op::Add, &[&x, &l.attn.o().forward(dev, &a, sel)?])?;
            let h = l.ln2.forward(dev, &x)?;
            x = dev.exec1(&Op::Add, &[&x, &l.mlp.forward(dev, &h, sel)?])?;
        }
        cache.len += t;
        let x = if all_logits || t == 1 {
            x
        } else {
            // Each row's last slot, gathered with the embedding op (x is an f32 [B*T, C] table).
            let last = dev.upload(&TensorData::u32(&[b], (0..b).map(|r| (r * t + t - 1) as u32).collect())?)?;
            dev.exec1(&Op::Embedding, &[&x, &last])?
        };
        let x = self.norm.forward(dev, &x)?;
        dev.exec1(&Op::Matmul { trans_b: true }, &[&x, &self.lm_head])
    }
}

impl Llama {
    /// Registers a PEFT adapter (the base weights are not reloaded).
    pub fn add_adapter(&mut self, dev: &Device, adapter: crate::lora::Adapter) -> Result<()> {
        crate::lora::runtime::add(self, dev, adapter)
    }

    pub fn remove_adapter(&mut self, dev: &Device, name: &str) -> Result<()> {
        crate::lora::runtime::remove(self, dev, name)
    }

    /// The mix used when a request names none.
    pub fn set_adapters(&mut self, mix: Mix) -> Result<()> {
        crate::lora::runtime::set_active(self, mix)
    }

    /// Bakes the active mix into the weights.
    pub fn fuse(&mut self, dev: &Device) -> Result<()> {
        crate::lora::runtime::fuse(self, dev)
    }

    /// Restores the original weights exactly.
    pub fn unfuse(&mut self) -> Result<()> {
        crate::lora::runtime::unfuse(self)
    }

    /// Every tensor fusing changed, by checkpoint name.
    pub async fn fused_tensors(&mut self, dev: &Device) -> Result<Vec<(String, TensorData)>> {
        crate::lora::runtime::fused_weights(self, dev).await
    }

    /// The current weight of the linear `module` (fused adapters included), on the host; `None`
    /// when the model has no such linear.
    pub async fn linear_weight(&mut self, dev: &Device, module: &str) -> Result<Option<Vec<f32>>> {
        let w = self.lora_parts().1.into_iter().find(|l| l.name == module).map(|l| l.w.clone());
        match w {
            Some(w) => Ok(Some(dev.download(&w).await?.to_f32_vec())),
            None => Ok(None),
        }
    }
}

impl LoraHost for Llama {
    fn lora_parts(&mut self) -> (&mut LoraSet, Vec<&mut super::Linear>) {
        let mut v = Vec::new();
        for l in &mut self.layers {
            match &mut l.attn {
                Attn::Gqa { q, k, v: vp, o, .. } => v.extend([q, k, vp, o]),
                Attn::Mla(m) => v.extend(m.linears()),
            }
            if let Mlp::Dense { gate, up, down } = &mut l.mlp {
                v.extend([gate, up, down]);
            }
        }
        (&mut self.lora, v)
    }
}
