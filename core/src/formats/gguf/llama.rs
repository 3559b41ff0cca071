//! Llama-family GGUF files seen as a Hugging Face checkpoint: tensor names, the q/k row order,
//! and `config.json`, so the Llama model code (which reads HF names and config) runs unchanged.

use super::Gguf;
use crate::error::{Error, FileError, Result};
use crate::models::Weights;
use crate::tensor::TensorData;
use serde_json::{json, Map, Value};

/// The GGUF name of a Hugging Face Llama tensor (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`), or `None` for names llama.cpp's converter does not produce.
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    // Only plain decimal layer numbers: "01" or "+1" would alias another layer's tensor.
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || (layer.len() > 1 && layer.starts_with('0')) {
        return None;
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Undoes llama.cpp's `LlamaModel.permute` on `[rows, cols]` row-major data (a bias is
/// `cols` = 1). The converter turns each head's rotary halves into interleaved pairs:
/// `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`, i.e. GGUF row
/// `h·d + 2i + j` holds HF row `h·d + j·d/2 + i` (d = rows / n_head). `None` when `rows` is not a
/// multiple of `2·n_head` or the data is not `rows × cols`.
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return None;
    }
    let src = unpermuted_sources(rows, n_head)?;
    let mut out = Vec::with_capacity(data.len());
    for s in src {
        out.extend_from_slice(&data[s * cols..(s + 1) * cols]);
    }
    Some(out)
}

/// For each Hugging Face row `r`, the GGUF row that holds it (see [`unpermute_rows`]); `None` when
/// `rows` is not a multiple of `2·n_head`.
pub(crate) fn unpermuted_sources(rows: usize, n_head: usize) -> Option<Vec<usize>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return None;
    }
    let (d, half) = (rows / n_head, rows / n_head / 2);
    Some((0..rows).map(|r| (r / d) * d + 2 * (r % d % half) + r % d / half).collect())
}

/// A Llama GGUF file served under Hugging Face tensor names, with q/k rows in HF order.
#[derive(Debug)]
pub struct GgufWeights {
    gguf: Gguf,
    n_head: usize,
    n_kv_head: usize,
    /// Serve Q8_0 / Q4_0 / Q4_1 matrices as they are (a `QuantMatrix`) instead of widened to f32.
    quantized: bool,
}

impl GgufWeights {
    /// Wraps a Llama-architecture file (`general.architecture` = "llama"; llama.cpp writes
    /// Mistral and SmolLM under that name too).
    pub fn new(gguf: Gguf) -> Result<GgufWeights> {
        let arch = gguf.architecture()?;
        if arch != "llama" {
            return Err(gguf.bad(format!("architecture '{arch}' is not supported for HF naming (only 'llama')")));
        }
        let n_head = gguf.get_u32("llama.attention.head_count")? as usize;
        let n_kv_head = match gguf.get("llama.attention.head_count_kv") {
            Some(_) => gguf.get_u32("llama.attention.head_count_kv")? as usize,
            None => n_head,
        };
        if n_head == 0 || n_kv_head == 0 {
            return Err(gguf.bad("attention head count is 0".into()));
        }
        Ok(GgufWeights { gguf, n_head, n_kv_head, quantized: false })
    }

    /// Serve block-quantised 2-D tensors as [`crate::quant::QuantMatrix`] data (for the CPU,
    /// which runs them as they are) rather than widened to f32.
    pub fn keep_quantized(mut self, yes: bool) -> GgufWeights {
        self.quantized = yes;
        self
    }

    /// The tensor as a `QuantMatrix`, when it is a 2-D Q8_0 / Q4_0 / Q4_1 tensor.
    fn quantized_tensor(&self, g: &str, heads: Option<usize>) -> Result<Option<TensorData>> {
        use crate::formats::gguf::GgmlType;
        let info = self.gguf.info(g)?;
        let dtype = match info.ggml_type {
            GgmlType::Q8_0 => crate::DType::Q8_0,
            GgmlType::Q4_0 => crate::DType::Q4_0,
            GgmlType::Q4_1 => crate::DType::Q4_1,
            _ => return Ok(None),
        };
        let dims = info.shape();
        let [rows, cols] = dims[..] else { return Ok(None) };
        let bad = |e: Error| self.gguf.bad(format!("tensor '{g}': {e}"));
        let mut q = crate::quant::QuantMatrix::from_ggml(dtype, rows, cols, &self.gguf.bytes(g)?).map_err(bad)?;
        if let Some(heads) = heads {
            let src = unpermuted_sources(rows, heads)
                .ok_or_else(|| self.gguf.bad(format!("tensor '{g}': {rows} rows do not split into {heads} heads of rotary pairs")))?;
            q = q.permute_rows(&src);
        }
        Ok(Some(TensorData::new(&dims, crate::tensor::HostData::Quant(std::sync::Arc::new(q)))?))
    }

    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    pub fn into_inner(self) -> Gguf {
        self.gguf
    }
}

impl Weights for GgufWeights {
    fn tensor(&self, name: &str) -> Result<TensorData> {
        let missing = || Error::file(self.gguf.file(), FileError::MissingTensor(name.to_owned()));
        let g = hf_to_gguf_name(name).ok_or_else(missing)?;
        if !self.gguf.contains(&g) {
            return Err(missing());
        }
        let heads = match g.rsplit('.').nth(1) {
            Some("attn_q") => Some(self.n_head),
            Some("attn_k") => Some(self.n_kv_head),
            _ => None,
        };
        if self.quantized {
            if let Some(t) = self.quantized_tensor(&g, heads)? {
                return Ok(t);
            }
        }
        let t = self.gguf.tensor(&g)?;
        let Some(heads) = heads else { return Ok(t) };
        let dims = t.dims().to_vec();
        let (rows, cols) = match dims[..] {
            [r] => (r, 1),
            [r, c] => (r, c),
            _ => return Err(self.gguf.bad(format!("tensor '{g}' has shape {dims:?}, expected 1 or 2 dimensions"))),
        };
        let data = unpermute_rows(t.as_f32()?, rows, cols, heads)
            .ok_or_else(|| self.gguf.bad(format!("tensor '{g}': {rows} rows do not split into {heads} heads of rotary pairs")))?;
        TensorData::f32(&dims, data)
    }

    fn contains(&self, name: &str) -> bool {
        hf_to_gguf_name(name).is_some_and(|g| self.gguf.contains(&g))
    }

    fn origin(&self) -> String {
        self.gguf.file().to_owned()
    }

    fn stored_bytes(&self, name: &str) -> u64 {
        hf_to_gguf_name(name).and_then(|g| self.gguf.info(&g).ok().map(|i| i.bytes)).unwrap_or(0)
    }

    fn total_bytes(&self) -> u64 {
        self.gguf.total_bytes()
    }
}

/// An f32 from the file as the decimal a person wrote (1e-5, not 9.999999747378752e-6).
fn f32_json(x: f32) -> Value {
    x.to_string().parse::<f64>().ok().and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)).unwrap_or(Value::Null)
}

impl Gguf {
    /// A Hugging Face `config.json` (as text) for a Llama file, built from the `llama.*` and
    /// `tokenizer.ggml.*` metadata. `tie_word_embeddings` is true when the file has no
    /// `output.weight` (llama.cpp then reuses `token_embd`).
    pub fn llama_config_json(&self) -> Result<String> {
        let arch = self.architecture()?;
        if arch != "llama" {
            return Err(self.bad(format!("architecture '{arch}' is not 'llama'")));
        }
        let k = |s: &str| format!("llama.{s}");
        let hidden = self.get_u32(&k("embedding_length"))?;
        let heads = self.get_u32(&k("attention.head_count"))?;
        let kv_heads = if self.get(&k("attention.head_count_kv")).is_some() { self.get_u32(&k("attention.head_count_kv"))? } else { heads };
        if heads == 0 || kv_heads == 0 || hidden % heads != 0 {
            return Err(self.bad(format!("embedding_length {hidden} does not split into {heads} heads")));
        }
        let head_dim = match self.get(&k("attention.key_length")) {
            Some(_) => self.get_u32(&k("attention.key_length"))?,
            None => hidden / heads,
        };
        // Older files lack llama.vocab_size; the token list (or the embedding) has the count.
        let vocab = if self.get(&k("vocab_size")).is_some() {
            self.get_u32(&k("vocab_size"))? as u64
        } else if let Some(a) = self.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            a.len() as u64
        } else {
            self.info("token_embd.weight")?.ne.get(1).copied().unwrap_or(0)
        };
        let mut c = Map::new();
        c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        c.insert("model_type".into(), json!("llama"));
        c.insert("hidden_act".into(), json!("silu"));
        c.insert("hidden_size".into(), json!(hidden));
        c.insert("intermediate_size".into(), json!(self.get_u32(&k("feed_forward_length"))?));
        c.insert("num_hidden_layers".into(), json!(self.get_u32(&k("block_count"))?));
        c.insert("num_attention_heads".into(), json!(heads));
        c.insert("num_key_value_heads".into(), json!(kv_heads));
        c.insert("head_dim".into(), json!(head_dim));
        c.insert("rms_norm_eps".into(), f32_json(self.get_f32(&k("attention.layer_norm_rms_epsilon"))?));
        // llama.cpp's default when the key is absent is Llama's 10000.
        let theta = if self.get(&k("rope.freq_base")).is_some() { self.get_f32(&k("rope.freq_base"))? } else { 10_000.0 };
        c.insert("rope_theta".into(), f32_json(theta));
        c.insert("vocab_size".into(), json!(vocab));
        c.insert("max_position_embeddings".into(), json!(self.get_u32(&k("context_length"))?));
        c.insert("tie_word_embeddings".into(), json!(!self.contains("output.weight")));
        c.insert("attention_bias".into(), json!(self.contains("blk.0.attn_q.bias")));
        c.insert("mlp_bias".into(), json!(false));
        for (key, field) in [("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")] {
            let gk = format!("tokenizer.ggml.{field}_token_id");
            if self.get(&gk).is_some() {
                c.insert(key.into(), json!(self.get_u32(&gk)?));
            }
        }
        if let Some(kind) = self.get(&k("rope.scaling.type")).and_then(|v| v.as_str()).filter(|s| *s != "none") {
            // Carried over for the model code to accept or refuse; not interpreted here.
            let factor = self.get_f32(&k("rope.scaling.factor"))?;
            c.insert("rope_scaling".into(), json!({ "rope_type": kind, "factor": f32_json(factor) }));
        }
        serde_json::to_string_pretty(&Value::Object(c)).map_err(|e| self.bad(format!("config.json: {e}")))
    }
}
