//! Tiny random Hugging Face models (tests/fixtures/tiny, made by make_tiny_models.py with
//! transformers): our forward passes equal transformers' within 1e-4 on the CPU and the GPU, and
//! KV-cached greedy decoding gives transformers' greedy tokens. DeepSeek-V3 (MLA attention,
//! group-limited sigmoid routing with a selection bias, shared experts) is one of them.

use taskloom::models::bert::{Bert, EncoderInput};
use taskloom::models::config::ModelConfig;
use taskloom::models::generate::argmax;
use taskloom::models::hf::{DirFiles, Files};
use taskloom::models::llama::Llama;
use taskloom::models::Weights;
use taskloom::{Device, TensorData};
use taskloom_tests::{first_violation, fixture_json, gpu_or_skip};

fn dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny").join(name)
}

use taskloom_tests::{json_floats as floats, json_ids as ids};

fn config(name: &str) -> ModelConfig {
    ModelConfig::parse("config.json", &std::fs::read_to_string(dir(name).join("config.json")).unwrap()).unwrap()
}

fn check_decoder(dev: &Device, name: &str) {
    let want = fixture_json(&format!("tiny/{name}/expected.json"));
    let ModelConfig::Llama(cfg) = config(name) else { panic!("{name}: not a decoder") };
    let files = DirFiles(dir(name));
    let model = Llama::load(dev, cfg, &files.weights().unwrap()).unwrap();
    let prompt = ids(&want["ids"]);
    let mut cache = model.new_cache();
    let logits = pollster::block_on(dev.download(&model.forward(dev, &prompt, &mut cache, true).unwrap())).unwrap();
    let expected = floats(&want["logits"]);
    if let Some((i, g, w)) = first_violation(logits.as_f32().unwrap(), &expected, 1e-4, 1e-4) {
        panic!("{name} on {}: logit {i}: got {g}, want {w}", dev.kind());
    }
    // Greedy decoding through the KV cache, one token at a time.
    let mut next = argmax(&expected[expected.len() - 64..]);
    let mut got = vec![next];
    for _ in 1..ids(&want["greedy_ids"]).len() {
        let l = pollster::block_on(dev.download(&model.forward(dev, &[next], &mut cache, false).unwrap())).unwrap();
        next = argmax(l.as_f32().unwrap());
        got.push(next);
    }
    assert_eq!(got, ids(&want["greedy_ids"]), "{name} on {}: greedy ids", dev.kind());
}

fn check_bert(dev: &Device) {
    let want = fixture_json("tiny/bert/expected.json");
    let ModelConfig::Bert(cfg) = config("bert") else { panic!("bert: not an encoder") };
    let model = Bert::load(dev, cfg, &DirFiles(dir("bert")).weights().unwrap()).unwrap();
    let prompt = ids(&want["ids"]);
    let n = prompt.len();
    let input = EncoderInput { ids: prompt, type_ids: vec![0; n], mask: vec![1; n], batch: 1, tokens: n };
    let h = pollster::block_on(dev.download(&model.forward(dev, &input).unwrap())).unwrap();
    if let Some((i, g, w)) = first_violation(h.as_f32().unwrap(), &floats(&want["last_hidden_state"]), 1e-4, 1e-4) {
        panic!("bert on {}: element {i}: got {g}, want {w}", dev.kind());
    }
}

fn all(dev: &Device) {
    for name in ["llama", "llama-untied", "qwen2", "mixtral", "mixtral-fused", "qwen2-moe", "qwen3-moe", "deepseek-v3", "deepseek-v3-plain"] {
        check_decoder(dev, name);
    }
    check_bert(dev);
}

#[test]
fn tiny_models_match_transformers_on_cpu() {
    all(&Device::cpu());
}

#[test]
fn tiny_models_match_transformers_on_gpu() {
    if let Some(dev) = gpu_or_skip("tiny models") {
        all(&dev);
    }
}

#[test]
fn unknown_architecture_and_missing_tensor_are_typed_errors() {
    let err = ModelConfig::parse("config.json", r#"{"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}"#).unwrap_err();
    assert!(err.to_string().contains("GPTNeoXForCausalLM"), "{err}");
    let ModelConfig::Llama(mut cfg) = config("llama") else { unreachable!() };
    cfg.num_hidden_layers = 3; // the file has 2
    let e = Llama::load(&Device::cpu(), cfg, &DirFiles(dir("llama")).weights().unwrap()).err().expect("missing layer 2");
    assert!(e.to_string().contains("model.layers.2"), "{e}");
    let ModelConfig::Llama(mut cfg) = config("llama") else { unreachable!() };
    cfg.hidden_size = 48; // disagrees with the weights
    let e = Llama::load(&Device::cpu(), cfg, &DirFiles(dir("llama")).weights().unwrap()).err().expect("shape disagreement");
    assert!(e.to_string().contains("shape"), "{e}");
    // Scaled RoPE (Llama 3's, linear) would run with plain frequencies: refused instead.
    let json = std::fs::read_to_string(dir("llama").join("config.json")).unwrap();
    for (key, val) in [
        ("rope_scaling", serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
        ("rope_parameters", serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v[key] = val;
        let e = ModelConfig::parse("config.json", &v.to_string()).err().unwrap_or_else(|| panic!("{key}: accepted"));
        assert!(e.to_string().contains("scaled RoPE") && e.to_string().contains("config.json"), "{key}: {e}");
    }
}

#[test]
fn moe_layer_dispatches_with_routing_and_bucketing_on_the_device() {
    // Prefill (4 tokens x top-2 = 8 picks of 4 experts, 2 per expert: bucketed): router matmul,
    // routing, bucketing (MoeBucket), 3 grouped expert matmuls, SiLU, mul, weighted sum = 9
    // dispatches per MoE layer against 5 for the dense MLP (2 layers here). Decoding (1 token,
    // 2 picks: below BUCKET_MIN_PICKS_PER_EXPERT) runs 3 per-pick ExpertMatmuls instead, no
    // bucketing: 8. Nothing is read back: `forward` records work only, the ids and buckets never
    // leave the device.
    use taskloom::models::moe::BUCKET_MIN_PICKS_PER_EXPERT;
    assert_eq!(BUCKET_MIN_PICKS_PER_EXPERT, 2, "the counts below assume the measured threshold");
    let Some(dev) = gpu_or_skip("moe dispatches") else { return };
    let Device::Gpu(g) = &dev else { unreachable!() };
    let count = |name: &str| {
        let ModelConfig::Llama(cfg) = config(name) else { unreachable!() };
        let model = Llama::load(&dev, cfg, &DirFiles(dir(name)).weights().unwrap()).unwrap();
        let mut cache = model.new_cache();
        let before = g.dispatch_count();
        let logits = model.forward(&dev, &[1, 2, 3, 4], &mut cache, true).unwrap();
        let prefill = g.dispatch_count() - before;
        pollster::block_on(dev.download(&logits)).unwrap();
        let before = g.dispatch_count();
        let logits = model.forward(&dev, &[5], &mut cache, false).unwrap();
        let decode = g.dispatch_count() - before;
        pollster::block_on(dev.download(&logits)).unwrap();
        (prefill, decode)
    };
    let ((mp, md), (lp, ld)) = (count("mixtral"), count("llama"));
    assert_eq!(mp - lp, 2 * (9 - 5), "prefill");
    assert_eq!(md - ld, 2 * (8 - 5), "decode");
}

#[test]
fn batched_prompts_with_padding_equal_single_runs() {
    // Two prompts of different lengths in one left-padded batch, then three decode steps: every
    // real token's logits equal the same row run alone (whose logits equal transformers').
    let mut devices = vec![Device::cpu()];
    devices.extend(gpu_or_skip("batched prompts"));
    for dev in &devices {
        for name in ["llama", "mixtral", "deepseek-v3"] {
            let ModelConfig::Llama(cfg) = config(name) else { unreachable!() };
            let v = cfg.vocab_size;
            let model = Llama::load(dev, cfg, &DirFiles(dir(name)).weights().unwrap()).unwrap();
            let rows: [&[u32]; 2] = [&[1, 5, 17, 3, 42, 8], &[7, 9, 2]];
            let read = |t: taskloom::Tensor| pollster::block_on(dev.download(&t)).unwrap().as_f32().unwrap().to_vec();
            let mut cache = model.new_cache();
            let batch = read(model.forward_batch(dev, &rows, &mut cache, true).unwrap()); // [2*6, V]
            let mut singles = Vec::new();
            for (r, row) in rows.iter().enumerate() {
                let mut c = model.new_cache();
                let alone = read(model.forward(dev, row, &mut c, true).unwrap());
                let pad = 6 - row.len();
                let got = &batch[(r * 6 + pad) * v..(r + 1) * 6 * v];
                if let Some((i, g, w)) = first_violation(got, &alone, 1e-4, 1e-4) {
                    panic!("{name} on {}: row {r} logit {i}: batched {g}, alone {w}", dev.kind());
                }
                singles.push((c, argmax(&alone[alone.len() - v..])));
            }
            let mut next: Vec<u32> = (0..2).map(|r| argmax(&batch[((r + 1) * 6 - 1) * v..(r + 1) * 6 * v])).collect();
            for step in 0..3 {
                let step_rows: Vec<&[u32]> = next.iter().map(std::slice::from_ref).collect();
                let l = read(model.forward_batch(dev, &step_rows, &mut cache, false).unwrap()); // [2, V]
                for r in 0..2 {
                    let (c, tok) = &mut singles[r];
                    assert_eq!(*tok, next[r], "{name} step {step} row {r}: batched and single greedy picks differ");
                    let alone = read(model.forward(dev, &[*tok], c, false).unwrap());
                    if let Some((i, g, w)) = first_violation(&l[r * v..(r + 1) * v], &alone, 1e-4, 1e-4) {
                        panic!("{name} on {} step {step} row {r} logit {i}: batched {g}, alone {w}", dev.kind());
                    }
                    *tok = argmax(&alone);
                }
                next = (0..2).map(|r| argmax(&l[r * v..(r + 1) * v])).collect();
            }
        }
    }
}

/// A weights source that hides some tensors and serves zero tensors of given shapes under other
/// names (a model variant without new fixture files).
struct Edited<'a> {
    inner: &'a dyn Weights,
    hide: Vec<String>,
    zeros: Vec<(String, Vec<usize>)>,
}

impl Weights for Edited<'_> {
    fn tensor(&self, name: &str) -> taskloom::Result<TensorData> {
        if let Some((_, dims)) = self.zeros.iter().find(|(n, _)| n == name) {
            return TensorData::f32(dims, vec![0.0; dims.iter().product()]);
        }
        if self.hide.iter().any(|h| h == name) {
            return Err(taskloom::Error::File { file: self.origin(), kind: taskloom::FileError::MissingTensor(name.to_string()) });
        }
        self.inner.tensor(name)
    }
    fn contains(&self, name: &str) -> bool {
        self.zeros.iter().any(|(n, _)| n == name) || (!self.hide.iter().any(|h| h == name) && self.inner.contains(name))
    }
    fn origin(&self) -> String {
        self.inner.origin()
    }
}

#[test]
fn deepseek_moe_layer_dispatches() {
    // The DeepSeek fixture against itself with its two MoE layers made dense (zero dense MLP
    // weights, first_k_dense_replace = 3): the difference is 2 x (MoE layer - dense MLP).
    // MoE layer, prefill of 8 tokens (top-2 of 8 experts = 2 picks per expert: bucketed): router
    // matmul, routing (sigmoid, bias, groups, scale: one MoeRoute), bucketing, 3 grouped expert
    // matmuls, SiLU, mul, weighted sum = 9, plus the ungated shared experts: gate, SiLU, up, mul,
    // down, add = 6; 15 in all. Decoding one token (2 picks: per-pick ExpertMatmuls, no
    // bucketing): 14. The dense MLP is 5. Nothing is read back during `forward`.
    let Some(dev) = gpu_or_skip("deepseek dispatches") else { return };
    let Device::Gpu(g) = &dev else { unreachable!() };
    let shards = DirFiles(dir("deepseek-v3")).weights().unwrap();
    let count = |dense: bool| {
        let ModelConfig::Llama(mut cfg) = config("deepseek-v3") else { unreachable!() };
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let mut zeros = Vec::new();
        if dense {
            cfg.first_k_dense_replace = Some(cfg.num_hidden_layers);
            for l in 1..cfg.num_hidden_layers {
                for (n, dims) in [("gate_proj", [f, c]), ("up_proj", [f, c]), ("down_proj", [c, f])] {
                    zeros.push((format!("model.layers.{l}.mlp.{n}.weight"), dims.to_vec()));
                }
            }
        }
        let w = Edited { inner: &shards, hide: Vec::new(), zeros };
        let model = Llama::load(&dev, cfg, &w).unwrap();
        let mut cache = model.new_cache();
        let before = g.dispatch_count();
        let logits = model.forward(&dev, &[1, 2, 3, 4, 5, 6, 7, 8], &mut cache, true).unwrap();
        let prefill = g.dispatch_count() - before;
        pollster::block_on(dev.download(&logits)).unwrap();
        let before = g.dispatch_count();
        let logits = model.forward(&dev, &[9], &mut cache, false).unwrap();
        let decode = g.dispatch_count() - before;
        pollster::block_on(dev.download(&logits)).unwrap();
        (prefill, decode)
    };
    let ((mp, md), (dp, dd)) = (count(false), count(true));
    assert_eq!(mp - dp, 2 * (15 - 5), "prefill");
    assert_eq!(md - dd, 2 * (14 - 5), "decode");
}

#[test]
fn deepseek_missing_or_bad_config_is_a_typed_error() {
    let shards = DirFiles(dir("deepseek-v3")).weights().unwrap();
    for name in [
        "model.layers.1.self_attn.kv_b_proj.weight",
        "model.layers.0.self_attn.q_a_layernorm.weight",
        "model.layers.2.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.2.mlp.gate.weight",
        "model.layers.1.mlp.shared_experts.down_proj.weight",
    ] {
        let ModelConfig::Llama(cfg) = config("deepseek-v3") else { unreachable!() };
        let w = Edited { inner: &shards, hide: vec![name.to_string()], zeros: Vec::new() };
        let e = Llama::load(&Device::cpu(), cfg, &w).err().unwrap_or_else(|| panic!("{name} missing: loaded anyway"));
        assert!(matches!(e, taskloom::Error::File { .. }) && e.to_string().contains(name), "{name}: {e}");
    }
    // A config without the bottleneck wants q_proj, and says so.
    let json = std::fs::read_to_string(dir("deepseek-v3").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["q_lora_rank"] = serde_json::Value::Null;
    let ModelConfig::Llama(cfg) = ModelConfig::parse("config.json", &v.to_string()).unwrap() else { unreachable!() };
    let e = Llama::load(&Device::cpu(), cfg, &shards).err().expect("no q_proj in the file");
    assert!(e.to_string().contains("model.layers.0.self_attn.q_proj.weight"), "{e}");
    // Config problems: scaled RoPE (yarn), an unsupported MoE layer frequency, MLA with kv heads
    // != heads, an impossible group split.
    let edits: [(&str, serde_json::Value, &str); 5] = [
        ("rope_parameters", serde_json::json!({"rope_type": "yarn", "factor": 40.0, "rope_theta": 10000.0}), "yarn"),
        ("rope_scaling", serde_json::json!({"type": "yarn", "factor": 40.0}), "yarn"),
        ("moe_layer_freq", serde_json::json!(2), "moe_layer_freq"),
        ("num_key_value_heads", serde_json::json!(2), "num_key_value_heads"),
        ("n_group", serde_json::json!(3), "groups"),
    ];
    for (key, val, says) in edits {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v[key] = val;
        let e = ModelConfig::parse("config.json", &v.to_string()).err().unwrap_or_else(|| panic!("{key}: accepted"));
        assert!(e.to_string().contains(says) && e.to_string().contains("config.json"), "{key}: {e}");
    }
}

#[test]
fn deepseek_load_reads_every_tensor_once() {
    // MLA splits fused projections by rows at load; each checkpoint tensor is still read once, so
    // load progress ends at exactly the file's tensor bytes (never past 100%).
    use taskloom::models::{Progress, Tracked};
    for name in ["deepseek-v3", "deepseek-v3-plain"] {
        let ModelConfig::Llama(cfg) = config(name) else { unreachable!() };
        let shards = DirFiles(dir(name)).weights().unwrap();
        let last = std::cell::Cell::new(Progress { loaded: 0, total: 0 });
        let on_progress = |p: Progress| last.set(p);
        Llama::load(&Device::cpu(), cfg, &Tracked::new(&shards, &on_progress)).unwrap();
        let p = last.get();
        assert!(p.total > 0 && p.loaded == p.total, "{name}: progress {p:?}");
    }
}
