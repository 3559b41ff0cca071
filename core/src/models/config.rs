//! `config.json` as Hugging Face writes it: which architecture, and its hyper-parameters.

use crate::error::{Error, FileError, Result};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
    /// Class names of a sequence-classification head (`BertForSequenceClassification`).
    #[serde(default)]
    pub id2label: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f32 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

/// Llama-family decoders: Llama, Mistral, Qwen2 (q/k/v bias), SmolLM.
#[derive(Clone, Debug, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "llama_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    /// transformers 5 moves `rope_theta` into `rope_parameters`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Mixtral: experts per MoE layer (every layer's MLP is a sparse MoE block when set).
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    /// Mixtral / Qwen2-MoE: experts each token is routed to.
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    /// Qwen2-MoE: experts per MoE layer.
    #[serde(default)]
    pub num_experts: Option<usize>,
    /// Qwen2-MoE: width of each routed expert's MLP.
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    /// Qwen2-MoE: width of the always-on shared expert (0 or absent: none).
    #[serde(default)]
    pub shared_expert_intermediate_size: Option<usize>,
    /// Renormalise the k routing weights to sum to 1 (Mixtral always does).
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    /// Qwen2-MoE: every `decoder_sparse_step`-th layer is sparse...
    #[serde(default)]
    pub decoder_sparse_step: Option<usize>,
    /// ...except these, which keep a dense MLP.
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    /// DeepSeek-style routing: "sigmoid" scores (default "softmax").
    #[serde(default)]
    pub scoring_func: Option<String>,
    /// DeepSeek-style group-limited routing: expert groups, and how many groups stay eligible.
    #[serde(default)]
    pub n_group: Option<usize>,
    #[serde(default)]
    pub topk_group: Option<usize>,
    /// DeepSeek-style: routing weights are multiplied by this.
    #[serde(default)]
    pub routed_scaling_factor: Option<f32>,
    /// DeepSeek-style: the number of routed experts (another spelling of the expert count).
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    /// Qwen3: RMSNorm on each q and k head (`self_attn.q_norm` / `k_norm`, weight [D]). Set from the
    /// architecture, not read from the file.
    #[serde(skip)]
    pub qk_norm: bool,
    /// DeepSeek-V3 (`DeepseekV3ForCausalLM`): Multi-head Latent Attention, the first
    /// `first_k_dense_replace` layers dense and the rest DeepSeek MoE. Set from the architecture.
    #[serde(skip)]
    pub deepseek: bool,
    /// DeepSeek MLA: the query's low-rank bottleneck (`None`: a plain `q_proj`).
    #[serde(default)]
    pub q_lora_rank: Option<usize>,
    /// DeepSeek MLA: width of the compressed key/value latent.
    #[serde(default)]
    pub kv_lora_rank: Option<usize>,
    /// DeepSeek MLA: per-head query/key width without position (`nope`) and with RoPE (`rope`,
    /// one RoPE key shared by all heads), and the value width.
    #[serde(default)]
    pub qk_nope_head_dim: Option<usize>,
    #[serde(default)]
    pub qk_rope_head_dim: Option<usize>,
    #[serde(default)]
    pub v_head_dim: Option<usize>,
    /// DeepSeek: the RoPE dimensions come in interleaved pairs (x0, x1), (x2, x3), ... (default).
    #[serde(default)]
    pub rope_interleave: Option<bool>,
    /// DeepSeek: always-on experts, each `moe_intermediate_size` wide, summed with no gate.
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    /// DeepSeek: this many leading layers keep a dense MLP.
    #[serde(default)]
    pub first_k_dense_replace: Option<usize>,
    /// DeepSeek's own code: every `moe_layer_freq`-th layer is MoE (transformers ignores it; only 1
    /// is accepted).
    #[serde(default)]
    pub moe_layer_freq: Option<usize>,
    /// Older spelling of `rope_parameters` (scaled RoPE variants); only checked, see [`LlamaConfig::mla`].
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

/// The Multi-head Latent Attention shape of a DeepSeek layer (see [`super::llama`]'s `mla`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlaSpec {
    /// Query bottleneck rank (`None`: `q_proj` straight from the hidden state).
    pub q_rank: Option<usize>,
    /// Compressed key/value latent width.
    pub kv_rank: usize,
    /// Per-head query/key width without RoPE, with RoPE, and value width.
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    /// RoPE dimensions stored as interleaved pairs (undone at load: rows permuted to rotate-half).
    pub interleave: bool,
}

/// The sparse-MoE shape of one layer's MLP, when it has one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeSpec {
    pub experts: usize,
    pub k: usize,
    /// Width of each routed expert.
    pub width: usize,
    pub norm_topk: bool,
    /// Width of the shared expert (0: none).
    pub shared_width: usize,
    /// Sigmoid scores (DeepSeek) instead of softmax.
    pub sigmoid: bool,
    /// Expert groups (1: no group limit) and how many stay eligible per token.
    pub groups: usize,
    pub topk_group: usize,
    /// Routing weights are multiplied by this.
    pub scale: f32,
    /// The shared expert sits behind a sigmoid gate (`mlp.shared_expert` + `shared_expert_gate`,
    /// Qwen2-MoE) rather than being added as is (`mlp.shared_experts`, DeepSeek).
    pub shared_gate: bool,
}

fn llama_eps() -> f32 {
    1e-6
}
fn max_pos() -> usize {
    2048
}
fn silu() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Layer `i`'s MoE block, or `None` for a dense MLP.
    pub fn moe(&self, i: usize) -> Option<MoeSpec> {
        // Mixtral says num_local_experts (so does transformers 5 for Qwen3-MoE), Qwen2-MoE num_experts.
        let e = self.num_local_experts.or(self.num_experts).or(self.n_routed_experts).filter(|&e| e > 0)?;
        let step = self.decoder_sparse_step.unwrap_or(1).max(1);
        if self.mlp_only_layers.contains(&i) || !(i + 1).is_multiple_of(step) {
            return None;
        }
        if self.deepseek {
            // Filled in by `ModelConfig::parse` with transformers' defaults where the file is silent.
            if i < self.first_k_dense_replace.unwrap_or(0) {
                return None;
            }
            let width = self.moe_intermediate_size.unwrap_or(self.intermediate_size);
            return Some(MoeSpec {
                experts: e,
                k: self.num_experts_per_tok.unwrap_or(8),
                width,
                norm_topk: self.norm_topk_prob.unwrap_or(true),
                shared_width: width * self.n_shared_experts.unwrap_or(0),
                sigmoid: true,
                groups: self.n_group.unwrap_or(1).max(1),
                topk_group: self.topk_group.unwrap_or(1).max(1),
                scale: self.routed_scaling_factor.unwrap_or(1.0),
                shared_gate: false,
            });
        }
        Some(MoeSpec {
            experts: e,
            k: self.num_experts_per_tok.unwrap_or(2),
            width: self.moe_intermediate_size.unwrap_or(self.intermediate_size),
            // Mixtral always renormalises and has no flag; Qwen2-MoE defaults to not.
            norm_topk: self.norm_topk_prob.unwrap_or(self.num_local_experts.is_some()),
            shared_width: self.shared_expert_intermediate_size.unwrap_or(0),
            sigmoid: self.scoring_func.as_deref() == Some("sigmoid"),
            groups: self.n_group.unwrap_or(1).max(1),
            topk_group: self.topk_group.unwrap_or(1).max(1),
            scale: self.routed_scaling_factor.unwrap_or(1.0),
            shared_gate: true,
        })
    }

    /// DeepSeek's Multi-head Latent Attention dims, or `None` for grouped-query attention.
    pub fn mla(&self) -> Option<MlaSpec> {
        if !self.deepseek {
            return None;
        }
        Some(MlaSpec {
            q_rank: self.q_lora_rank,
            kv_rank: self.kv_lora_rank.unwrap_or(512),
            nope: self.qk_nope_head_dim.unwrap_or(128),
            rope: self.qk_rope_head_dim.unwrap_or(64),
            v: self.v_head_dim.unwrap_or(128),
            interleave: self.rope_interleave.unwrap_or(true),
        })
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    pub fn theta(&self) -> f32 {
        let from_params = self.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64());
        self.rope_theta.or(from_params.map(|v| v as f32)).unwrap_or(10000.0)
    }
    /// End-of-sequence ids (`eos_token_id` may be one id or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
            _ => Vec::new(),
        }
    }
}

/// The architectures taskloom runs, parsed from `config.json`.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per model load
#[non_exhaustive]
pub enum ModelConfig {
    Bert(BertConfig),
    Llama(LlamaConfig),
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

impl ModelConfig {
    /// Parses `config.json` text; `file` names it in errors.
    pub fn parse(file: &str, json: &str) -> Result<ModelConfig> {
        let bad = |e: serde_json::Error| Error::File { file: file.into(), kind: FileError::BadHeader(e.to_string()) };
        let head: Head = serde_json::from_str(json).map_err(bad)?;
        let arch = head.architectures.first().cloned().unwrap_or_default();
        let mt = head.model_type.unwrap_or_default();
        let cfg = match (arch.as_str(), mt.as_str()) {
            ("BertModel" | "BertForMaskedLM" | "BertForSequenceClassification", _) | ("", "bert") => {
                let c: BertConfig = serde_json::from_str(json).map_err(bad)?;
                if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
                    return Err(Error::File {
                        file: file.into(),
                        kind: FileError::BadHeader(format!(
                            "hidden_size {} is not a multiple of num_attention_heads {}",
                            c.hidden_size, c.num_attention_heads
                        )),
                    });
                }
                if c.position_embedding_type != "absolute" {
                    return Err(Error::InvalidParam {
                        op: "config",
                        reason: format!("{file}: position_embedding_type '{}' is not supported", c.position_embedding_type),
                    });
                }
                ModelConfig::Bert(c)
            }
            (
                "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" | "MixtralForCausalLM" | "Qwen2MoeForCausalLM"
                | "Qwen3ForCausalLM" | "Qwen3MoeForCausalLM",
                _,
            )
            | ("", "llama" | "mistral" | "qwen2" | "mixtral" | "qwen2_moe" | "qwen3" | "qwen3_moe") => {
                let mut c: LlamaConfig = serde_json::from_str(json).map_err(bad)?;
                // Qwen3 normalises q and k per head (RMSNorm over D) before RoPE.
                c.qk_norm = arch.starts_with("Qwen3") || mt.starts_with("qwen3");
                if c.attention_bias.is_none() {
                    // Qwen2 always has q/k/v biases; its config does not say so.
                    c.attention_bias = Some(matches!(arch.as_str(), "Qwen2ForCausalLM" | "Qwen2MoeForCausalLM") || mt.starts_with("qwen2"));
                }
                let (h, kv) = (c.num_attention_heads, c.kv_heads());
                if h == 0 || kv == 0 || !h.is_multiple_of(kv) || !c.head_dim().is_multiple_of(2) {
                    return Err(Error::File {
                        file: file.into(),
                        kind: FileError::BadHeader(format!("{h} heads, {kv} kv heads, head_dim {}: not a valid grouping", c.head_dim())),
                    });
                }
                if let (Some(e), k) = (c.num_local_experts.or(c.num_experts).or(c.n_routed_experts), c.num_experts_per_tok.unwrap_or(2)) {
                    if e == 0 || k == 0 || k > e {
                        return Err(Error::File {
                            file: file.into(),
                            kind: FileError::BadHeader(format!("num_experts_per_tok {k} must be in 1..={e} (num_local_experts)")),
                        });
                    }
                }
                if c.hidden_act != "silu" {
                    return Err(Error::InvalidParam { op: "config", reason: format!("{file}: hidden_act '{}' is not supported", c.hidden_act) });
                }
                plain_rope(file, &c)?;
                ModelConfig::Llama(c)
            }
            ("DeepseekV3ForCausalLM", _) | ("", "deepseek_v3") => ModelConfig::Llama(deepseek(file, json)?),
            _ => {
                return Err(Error::InvalidParam {
                    op: "config",
                    reason: format!("{file}: unknown architecture '{arch}' (model_type '{mt}')"),
                })
            }
        };
        Ok(cfg)
    }
}

/// Refuses scaled RoPE (`rope_type` / `type` other than "default" in `rope_scaling` or
/// transformers 5's `rope_parameters`: llama3, yarn, linear, dynamic, ...): the rotary op uses
/// plain `theta^(-2i/D)` frequencies, so running such a model would silently differ.
fn plain_rope(file: &str, c: &LlamaConfig) -> Result<()> {
    for p in [&c.rope_parameters, &c.rope_scaling].into_iter().flatten() {
        let kind = p.get("rope_type").or(p.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
        if kind != "default" {
            return Err(Error::InvalidParam { op: "config", reason: format!("{file}: rope_type '{kind}' (scaled RoPE) is not supported") });
        }
    }
    Ok(())
}

/// A `DeepseekV3ForCausalLM` config: transformers' defaults for the DeepSeek keys the file leaves
/// out, then the checks that keep MLA and the group-limited router well defined. Scaled RoPE
/// (`rope_type` other than "default", e.g. yarn with its attention `mscale`) is not implemented and
/// is refused rather than run differently.
fn deepseek(file: &str, json: &str) -> Result<LlamaConfig> {
    let bad_header = |m: String| Error::File { file: file.into(), kind: FileError::BadHeader(m) };
    let unsupported = |m: String| Error::InvalidParam { op: "config", reason: format!("{file}: {m}") };
    let mut c: LlamaConfig = serde_json::from_str(json).map_err(|e| bad_header(e.to_string()))?;
    let raw: serde_json::Value = serde_json::from_str(json).map_err(|e| bad_header(e.to_string()))?;
    let absent = |k: &str| raw.get(k).is_none();
    c.deepseek = true;
    // DeepseekV3Config's defaults (an explicit null q_lora_rank means "no bottleneck").
    if absent("q_lora_rank") {
        c.q_lora_rank = Some(1536);
    }
    c.n_routed_experts = c.n_routed_experts.or(Some(256));
    c.num_experts_per_tok = c.num_experts_per_tok.or(Some(8));
    c.moe_intermediate_size = c.moe_intermediate_size.or(Some(2048));
    c.n_shared_experts = c.n_shared_experts.or(Some(1));
    c.n_group = c.n_group.or(Some(8));
    c.topk_group = c.topk_group.or(Some(4));
    c.norm_topk_prob = c.norm_topk_prob.or(Some(true));
    c.routed_scaling_factor = c.routed_scaling_factor.or(Some(2.5));
    c.first_k_dense_replace = c.first_k_dense_replace.or(Some(3));
    c.attention_bias = c.attention_bias.or(Some(false));
    if c.hidden_act != "silu" {
        return Err(unsupported(format!("hidden_act '{}' is not supported", c.hidden_act)));
    }
    if let Some(f) = c.moe_layer_freq.filter(|&f| f != 1) {
        return Err(unsupported(format!("moe_layer_freq {f} is not supported (transformers ignores it; only 1 is)")));
    }
    plain_rope(file, &c)?;
    let m = c.mla().expect("deepseek is set");
    let h = c.num_attention_heads;
    if h == 0 || c.kv_heads() != h {
        return Err(bad_header(format!("MLA needs num_key_value_heads = num_attention_heads, got {} and {h}", c.kv_heads())));
    }
    if m.kv_rank == 0 || m.q_rank == Some(0) || m.v == 0 || m.nope + m.rope == 0 || !m.rope.is_multiple_of(2) {
        return Err(bad_header(format!("MLA dims {m:?}: ranks and widths must be positive and the RoPE width even")));
    }
    let (e, k) = (c.n_routed_experts.unwrap_or(0), c.num_experts_per_tok.unwrap_or(0));
    let (g, tg) = (c.n_group.unwrap_or(1), c.topk_group.unwrap_or(1));
    // Each group's score is the sum of its two best experts, and the k picks must fit in the
    // eligible groups.
    if e == 0 || g == 0 || !e.is_multiple_of(g) || e / g < 2 || tg == 0 || tg > g || k == 0 || k > tg * (e / g) {
        return Err(bad_header(format!(
            "routing: {e} experts in {g} groups of at least 2, {tg} groups eligible, {k} picks: not a valid DeepSeek router"
        )));
    }
    Ok(c)
}
