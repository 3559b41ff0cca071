//! Weights above the GPU's binding limit are split into row blocks at load
//! (`DeviceOptions::max_binding_bytes` forces a small limit here): the tiny Llama (tied and untied
//! LM head), the tiny BERT, the packaged MiniLM and a LoRA adapter give the same outputs as the
//! unsplit GPU run and as transformers / sentence-transformers / PEFT; the number of split weights
//! is what the checkpoint's sizes imply; fusing into a split weight, an expert stack or a row too
//! big to split are typed errors naming the tensor. The CPU never splits.

use std::path::{Path, PathBuf};
use taskloom::formats::safetensors::SafeTensors;
use taskloom::lora::Adapter;
use taskloom::models::bert::{Bert, EncoderInput};
use taskloom::models::config::ModelConfig;
use taskloom::models::hf::{DirFiles, Encoder, Files};
use taskloom::models::llama::Llama;
use taskloom::models::generate::argmax;
use taskloom::{Device, DeviceOptions, Error};
use taskloom_tests::{cosine, first_violation, fixture_json, gpu_or_skip, model_or_skip};

/// The binding limit for the tiny fixtures (hidden 32, MLP 64, vocab 64, f32): the [64, 32]
/// tables and MLP weights (8192 bytes) become 3 blocks, [32, 32] attention weights 2, while every
/// activation of a 9-token prompt ([9, 64] f32 = 2304 bytes) still fits.
const TINY_LIMIT: u64 = 3000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn tiny(name: &str) -> PathBuf {
    root().join("tests/fixtures/tiny").join(name)
}

/// The GPU with its binding limit lowered to `bytes`, or `None` (skipped) without an adapter.
fn limited(test: &str, bytes: u64) -> Option<Device> {
    gpu_or_skip(test)?;
    let dev = pollster::block_on(Device::gpu_with(&DeviceOptions { max_binding_bytes: Some(bytes) })).unwrap();
    assert_eq!(dev.info().max_storage_buffer_binding_size, bytes, "the forced limit is what info() reports");
    Some(dev)
}

use taskloom_tests::{hf_config as config, json_floats as floats, json_ids as ids};

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some((i, g, w)) = first_violation(got, want, tol, tol) {
        panic!("{what}: element {i}: got {g}, want {w}");
    }
}

/// What loading the checkpoint must split at `limit`: every tensor above it that `used` keeps, and
/// the bias beside each such weight (biases follow their weight's blocks).
fn expected_splits(dir: &Path, limit: u64, used: impl Fn(&str) -> bool) -> u64 {
    let st = SafeTensors::open(dir.join("model.safetensors")).unwrap();
    let names = st.names();
    let big: Vec<&str> = names.iter().copied().filter(|n| used(n) && st.tensor(n).unwrap().data().as_bytes().len() as u64 > limit).collect();
    let biases = big.iter().filter(|n| n.strip_suffix(".weight").is_some_and(|p| names.contains(&format!("{p}.bias").as_str()))).count();
    (big.len() + biases) as u64
}

/// Whether `TASKLOOM_MAX_BINDING_BYTES` lowers every device's limit in this run.
fn env_limit() -> bool {
    std::env::var("TASKLOOM_MAX_BINDING_BYTES").is_ok_and(|v| !v.trim().is_empty())
}

/// Prompt logits, then greedy tokens through the KV cache.
fn run_llama(dev: &Device, m: &Llama, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<u32>) {
    let mut cache = m.new_cache();
    let logits = pollster::block_on(dev.download(&m.forward(dev, prompt, &mut cache, true).unwrap())).unwrap().to_f32_vec();
    let v = m.cfg.vocab_size;
    let mut next = argmax(&logits[logits.len() - v..]);
    let mut got = vec![next];
    for _ in 1..steps {
        let l = pollster::block_on(dev.download(&m.forward(dev, &[next], &mut cache, false).unwrap())).unwrap();
        next = argmax(l.as_f32().unwrap());
        got.push(next);
    }
    (logits, got)
}

fn load_llama(dev: &Device, dir: &Path) -> Llama {
    let ModelConfig::Llama(cfg) = config(dir) else { panic!("{}: not a decoder", dir.display()) };
    Llama::load(dev, cfg, &DirFiles(dir.to_path_buf()).weights().unwrap()).unwrap()
}

#[test]
fn tiny_llama_tied_and_untied_split_equals_unsplit_and_transformers() {
    let Some(whole) = gpu_or_skip("split llama") else { return };
    for name in ["llama", "llama-untied"] {
        let Some(dev) = limited("split llama", TINY_LIMIT) else { return };
        let dir = tiny(name);
        let want = fixture_json(&format!("tiny/{name}/expected.json"));
        let prompt = ids(&want["ids"]);
        let greedy = ids(&want["greedy_ids"]);
        let m = load_llama(&dev, &dir);
        // Every weight above the limit was split (a tied checkpoint has no lm_head to load).
        let splits = expected_splits(&dir, TINY_LIMIT, |_| true);
        assert!(splits >= 11, "{name}: the fixture should have weights above {TINY_LIMIT} bytes");
        let (tensors, blocks) = dev.split_stats();
        assert_eq!(tensors, splits, "{name}: split weights");
        assert!(blocks >= 2 * tensors, "{name}: {blocks} blocks for {tensors} tensors");
        let (logits, tokens) = run_llama(&dev, &m, &prompt, greedy.len());
        close(&format!("{name} split vs transformers"), &logits, &floats(&want["logits"]), 1e-4);
        assert_eq!(tokens, greedy, "{name} split: greedy ids");
        let (ref_logits, _) = run_llama(&whole, &load_llama(&whole, &dir), &prompt, 1);
        close(&format!("{name} split vs unsplit GPU"), &logits, &ref_logits, 1e-5);
        if !env_limit() {
            assert_eq!(whole.split_stats(), (0, 0), "the adapter's own limit splits none of the tiny weights");
        }
    }
}

#[test]
fn tiny_bert_split_equals_unsplit_and_transformers() {
    let Some(whole) = gpu_or_skip("split bert") else { return };
    let Some(dev) = limited("split bert", TINY_LIMIT) else { return };
    let dir = tiny("bert");
    let want = fixture_json("tiny/bert/expected.json");
    let prompt = ids(&want["ids"]);
    let n = prompt.len();
    let input = EncoderInput { ids: prompt, type_ids: vec![0; n], mask: vec![1; n], batch: 1, tokens: n };
    let run = |dev: &Device| {
        let ModelConfig::Bert(cfg) = config(&dir) else { panic!("bert: not an encoder") };
        let m = Bert::load(dev, cfg, &DirFiles(dir.clone()).weights().unwrap()).unwrap();
        pollster::block_on(dev.download(&m.forward(dev, &input).unwrap())).unwrap().to_f32_vec()
    };
    let got = run(&dev);
    // Word and position tables, every linear weight, and their biases (split like their weights).
    let (tensors, _) = dev.split_stats();
    let splits = expected_splits(&dir, TINY_LIMIT, |n| !n.starts_with("pooler."));
    assert!(splits >= 26, "the fixture should have weights above {TINY_LIMIT} bytes");
    assert_eq!(tensors, splits, "split tensors");
    close("bert split vs transformers", &got, &floats(&want["last_hidden_state"]), 1e-4);
    close("bert split vs unsplit GPU", &got, &run(&whole), 1e-5);
}

#[test]
fn minilm_split_matches_sentence_transformers() {
    let Some(dir) = model_or_skip("split minilm", "minilm") else { return };
    // 1 MiB: the word table (30522 x 384 f32, 46.9 MB) becomes 45 blocks, each FFN weight
    // (1536 x 384) 3; activations of the three short texts stay far below it.
    let Some(dev) = limited("split minilm", 1 << 20) else { return };
    let want = fixture_json("minilm_expected.json");
    let enc = Encoder::load(&DirFiles(dir), dev.clone()).expect("load MiniLM");
    let (tensors, blocks) = dev.split_stats();
    assert!(tensors >= 13 && blocks >= 45 + 12 * 3, "split {tensors} tensors into {blocks} blocks");
    let texts: Vec<&str> = want["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let got = pollster::block_on(enc.embed(&texts)).unwrap();
    for ((t, g), w) in texts.iter().zip(&got).zip(want["embeddings"].as_array().unwrap()) {
        let w = floats(w);
        let c = cosine(g, &w);
        assert!(c >= 0.9999, "split minilm: cosine {c} for {t:?}");
        let max_diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max_diff < 1e-4, "split minilm: max |diff| {max_diff} for {t:?}");
    }
}

/// Logits of one forward over `rows` (one sequence each), each with its mix (None: the active one).
fn llama_logits(dev: &Device, m: &Llama, rows: &[&[u32]], mixes: Option<&[Vec<(String, f32)>]>) -> Vec<f32> {
    let mut cache = m.new_cache();
    pollster::block_on(dev.download(&m.forward_mixed(dev, rows, &mut cache, true, mixes).unwrap())).unwrap().to_f32_vec()
}

/// The current weights of the named linears (`<module>.weight`), read back from `dev`.
fn linear_weights(dev: &Device, m: &mut Llama, names: &[String]) -> Vec<Vec<f32>> {
    names.iter().map(|n| pollster::block_on(m.linear_weight(dev, n.trim_end_matches(".weight"))).unwrap().unwrap()).collect()
}

fn mix(pairs: &[(&str, f32)]) -> Vec<(String, f32)> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

#[test]
fn lora_fuses_into_split_linears_block_by_block() {
    let Some(whole) = gpu_or_skip("split lora") else { return };
    let Some(dev) = limited("split lora", TINY_LIMIT) else { return };
    let cpu = Device::cpu();
    let want = fixture_json("lora/expected.json");
    let (ca, cb) = (&want["adapters"]["llama/a"], &want["adapters"]["llama/b"]);
    assert_eq!(ca["base"], cb["base"]);
    let base = root().join(ca["base"].as_str().unwrap());
    let adapter = |name: &str, case: &serde_json::Value| Adapter::load_dir(name, root().join(case["adapter"].as_str().unwrap())).unwrap();
    let names = |case: &serde_json::Value| -> Vec<String> { case["merged_weight_names"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect() };
    // At 3000 bytes q_proj and o_proj [32, 32] (4096 bytes) are 2 blocks of 16 rows, gate_proj and
    // up_proj [64, 32] 22 + 21 + 21 rows, down_proj [32, 64] 11 + 11 + 10: block boundaries fall
    // inside every adapted matrix, at rows that are no multiple of the rank or of each other.
    let mut m = load_llama(&dev, &base);
    let (tensors, blocks) = dev.split_stats();
    assert!(tensors >= 11 && blocks >= 2 * tensors, "split {tensors} tensors into {blocks} blocks");
    let mut u = load_llama(&whole, &base);
    let mut c = load_llama(&cpu, &base);
    let base_w = linear_weights(&dev, &mut m, &names(ca));
    for (d, model) in [(&dev, &mut m), (&whole, &mut u), (&cpu, &mut c)] {
        model.add_adapter(d, adapter("a", ca)).unwrap();
        model.add_adapter(d, adapter("b", cb)).unwrap();
        model.set_adapters(mix(&[("a", 1.0)])).unwrap();
    }
    let prompt = ids(&ca["ids"]);
    let one: Vec<&[u32]> = vec![&prompt];
    let (peft_a, peft_a_fused, peft_base) = (floats(&ca["logits"]), floats(&ca["merged_logits"]), floats(&ca["base_logits"]));
    close("a unfused on split linears vs PEFT", &llama_logits(&dev, &m, &one, None), &peft_a, 1e-5);

    // Fused: every adapted weight equals PEFT's merge_and_unload, the CPU's fuse and the unsplit
    // GPU's; the logits PEFT's merged model's.
    for (d, model) in [(&dev, &mut m), (&whole, &mut u), (&cpu, &mut c)] {
        model.fuse(d).unwrap();
    }
    let merged = SafeTensors::open(root().join(ca["merged_weights"].as_str().unwrap())).unwrap();
    let (got, on_cpu, unsplit) = (linear_weights(&dev, &mut m, &names(ca)), linear_weights(&cpu, &mut c, &names(ca)), linear_weights(&whole, &mut u, &names(ca)));
    for (i, n) in names(ca).iter().enumerate() {
        close(&format!("fused {n} vs PEFT"), &got[i], &merged.tensor(n).unwrap().to_f32_vec(), 1e-6);
        close(&format!("fused {n} vs CPU"), &got[i], &on_cpu[i], 1e-6);
        close(&format!("fused {n} vs unsplit GPU"), &got[i], &unsplit[i], 1e-6);
        assert_ne!(got[i], base_w[i], "{n}: fusing changed the weight");
    }
    let fused_logits = llama_logits(&dev, &m, &one, None);
    close("a fused into split linears vs PEFT", &fused_logits, &peft_a_fused, 1e-5);
    close("a fused, split vs unsplit GPU", &fused_logits, &llama_logits(&whole, &u, &one, None), 1e-5);
    // While a is fused, a base request runs the difference unfused.
    close("a fused, base request", &llama_logits(&dev, &m, &one, Some(&[Vec::new()])), &peft_base, 1e-5);

    // Hot swap: fusing b re-fuses from the kept original (a's linears back to the base, b's fused).
    for (d, model) in [(&dev, &mut m), (&whole, &mut u), (&cpu, &mut c)] {
        model.set_adapters(mix(&[("b", 1.0)])).unwrap();
        model.fuse(d).unwrap();
    }
    close("swapped to b, fused, vs PEFT", &llama_logits(&dev, &m, &one, None), &floats(&cb["merged_logits"]), 1e-5);
    let merged_b = SafeTensors::open(root().join(cb["merged_weights"].as_str().unwrap())).unwrap();
    for (n, got) in names(cb).iter().zip(linear_weights(&dev, &mut m, &names(cb))) {
        close(&format!("b fused {n} vs PEFT"), &got, &merged_b.tensor(n).unwrap().to_f32_vec(), 1e-6);
    }
    let only_a: Vec<String> = names(ca).into_iter().filter(|n| !names(cb).contains(n)).collect();
    assert!(!only_a.is_empty());
    let idx: Vec<usize> = only_a.iter().map(|n| names(ca).iter().position(|x| x == n).unwrap()).collect();
    for (k, got) in idx.iter().zip(linear_weights(&dev, &mut m, &only_a)) {
        assert_eq!(got, base_w[*k], "{}: a's delta is gone after the swap, bit for bit", names(ca)[*k]);
    }

    // A mixed batch while b is fused: a, b and the base in one forward (3 tokens a row, so that
    // the batch's [9, 64] logits fit the limit), equal to the CPU's and the unsplit GPU's, and each
    // row to that row alone.
    let short = &prompt[..3];
    let rows: Vec<&[u32]> = vec![short, short, short];
    let mixes = [mix(&[("a", 1.0)]), mix(&[("b", 1.0)]), Vec::new()];
    let got = llama_logits(&dev, &m, &rows, Some(&mixes));
    close("mixed batch vs CPU", &got, &llama_logits(&cpu, &c, &rows, Some(&mixes)), 1e-5);
    close("mixed batch vs unsplit GPU", &got, &llama_logits(&whole, &u, &rows, Some(&mixes)), 1e-5);
    let per = got.len() / 3;
    for (r, mx) in mixes.iter().enumerate() {
        let alone = llama_logits(&dev, &m, &[short], Some(std::slice::from_ref(mx)));
        close(&format!("mixed batch row {r} vs alone"), &got[r * per..(r + 1) * per], &alone, 1e-5);
    }
    assert!(first_violation(&got[..per], &got[per..2 * per], 1e-3, 0.0).is_some(), "rows a and b differ");

    // Removing the fused adapter re-fuses without it; unfusing restores every weight bit for bit.
    m.remove_adapter(&dev, "b").unwrap();
    close("b removed while fused", &llama_logits(&dev, &m, &one, Some(&[Vec::new()])), &peft_base, 1e-5);
    m.set_adapters(mix(&[("a", 1.0)])).unwrap();
    m.fuse(&dev).unwrap();
    close("a fused again", &llama_logits(&dev, &m, &one, None), &peft_a_fused, 1e-5);
    m.unfuse().unwrap();
    assert_eq!(linear_weights(&dev, &mut m, &names(ca)), base_w, "unfuse restores the split weights exactly");
    close("unfused again", &llama_logits(&dev, &m, &one, None), &peft_a, 1e-5);
}

#[test]
fn lora_and_expert_stacks_split_together_on_mixtral() {
    // The tiny Mixtral at 16384 bytes: only its expert stacks [4, 64, 32] split (2 experts per
    // block); its attention linears carry the adapter, fused and unfused.
    let Some(whole) = gpu_or_skip("split lora moe") else { return };
    let Some(dev) = limited("split lora moe", 16384) else { return };
    let want = fixture_json("lora/expected.json");
    let case = &want["adapters"]["mixtral/a"];
    let base = root().join(case["base"].as_str().unwrap());
    let prompt = ids(&case["ids"]);
    let one: Vec<&[u32]> = vec![&prompt];
    let mut m = load_llama(&dev, &base);
    assert_eq!(dev.split_stats(), (6, 12), "gate, up and down of 2 layers, 2 blocks each");
    let mut u = load_llama(&whole, &base);
    for (d, model) in [(&dev, &mut m), (&whole, &mut u)] {
        model.add_adapter(d, Adapter::load_dir("a", root().join(case["adapter"].as_str().unwrap())).unwrap()).unwrap();
        model.set_adapters(mix(&[("a", 1.0)])).unwrap();
    }
    close("mixtral/a unfused, split stacks, vs PEFT", &llama_logits(&dev, &m, &one, None), &floats(&case["logits"]), 1e-5);
    m.fuse(&dev).unwrap();
    u.fuse(&whole).unwrap();
    let got = llama_logits(&dev, &m, &one, None);
    close("mixtral/a fused, split stacks, vs PEFT", &got, &floats(&case["merged_logits"]), 1e-5);
    close("mixtral/a fused, split vs unsplit", &got, &llama_logits(&whole, &u, &one, None), 1e-5);
}

/// Prompt logits, every decode step's logits, and the greedy tokens.
fn run_steps(dev: &Device, m: &Llama, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let mut cache = m.new_cache();
    let logits = pollster::block_on(dev.download(&m.forward(dev, prompt, &mut cache, true).unwrap())).unwrap().to_f32_vec();
    let v = m.cfg.vocab_size;
    let mut next = argmax(&logits[logits.len() - v..]);
    let (mut tokens, mut decoded) = (vec![next], Vec::new());
    for _ in 1..steps {
        let l = pollster::block_on(dev.download(&m.forward(dev, &[next], &mut cache, false).unwrap())).unwrap().to_f32_vec();
        next = argmax(&l);
        decoded.extend(l);
        tokens.push(next);
    }
    (logits, decoded, tokens)
}

#[test]
fn moe_decoders_with_split_expert_stacks_equal_unsplit_and_transformers() {
    // Per fixture: a limit under its expert stacks and above every activation of the 9-token
    // prompt ([9, K, F] f32 at most 4608 bytes), and the stacks' blocks it implies: E experts of
    // `expert` bytes each, floor(limit / expert) per block, as even as possible.
    let Some(whole) = gpu_or_skip("split moe") else { return };
    for (name, limit, stacks, per_stack) in [
        ("mixtral", 16384, 6, 2),         // [4, 64, 32]: 8192 bytes an expert, 2 blocks of 2
        ("mixtral-fused", 12000, 6, 4),   // gate and up halves of gate_up_proj, down: 1 expert a block
        ("qwen2-moe", 8192, 6, 2),        // [4, 24, 32]: 3072 bytes an expert, 2 + 2 (2 MoE layers)
        ("qwen3-moe", 7000, 6, 2),        // [4, 24, 32]: 2 + 2
        ("deepseek-v3", 7000, 6, 3),      // [8, 16, 32]: 2048 bytes an expert, 3 + 3 + 2 (2 MoE layers)
    ] {
        let Some(dev) = limited("split moe", limit) else { return };
        let dir = tiny(name);
        let want = fixture_json(&format!("tiny/{name}/expected.json"));
        let prompt = ids(&want["ids"]);
        let greedy = ids(&want["greedy_ids"]);
        let m = load_llama(&dev, &dir);
        // Expert stacks are uploaded from the per-expert tensors (or the halves of gate_up_proj),
        // so count them apart from the 2-D weights the checkpoint itself holds above the limit.
        let matrices = expected_splits(&dir, limit, |n| !n.contains(".experts."));
        let (tensors, blocks) = dev.split_stats();
        assert_eq!(tensors - matrices, stacks, "{name}: split expert stacks ({tensors} split tensors, {matrices} of them matrices)");
        assert!(blocks >= stacks * per_stack + 2 * matrices, "{name}: {blocks} blocks");
        let (logits, decoded, tokens) = run_steps(&dev, &m, &prompt, greedy.len());
        // The prompt takes the bucketed expert path, each decode step the per-pick one.
        close(&format!("{name} split vs transformers"), &logits, &floats(&want["logits"]), 1e-4);
        assert_eq!(tokens, greedy, "{name} split: greedy ids");
        let (ref_logits, ref_decoded, _) = run_steps(&whole, &load_llama(&whole, &dir), &prompt, greedy.len());
        close(&format!("{name} split vs unsplit GPU, prompt"), &logits, &ref_logits, 1e-5);
        close(&format!("{name} split vs unsplit GPU, decode steps"), &decoded, &ref_decoded, 1e-5);
    }
}

#[test]
fn expert_matmuls_on_a_split_stack_equal_the_cpu() {
    use taskloom::models::moe::ExpertRouting;
    use taskloom::TensorData;
    // E = 5 experts of [24, 40] f32 (3840 bytes) at 8000 bytes: blocks of 2 + 2 + 1 experts.
    let Some(dev) = limited("split expert matmul", 8000) else { return };
    let cpu = Device::cpu();
    let (e, n, cin, r, k) = (5, 24, 40, 7, 2);
    let mut rng = taskloom_tests::Rng::new(7);
    let w = TensorData::f32(&[e, n, cin], rng.vec(e * n * cin, -1.0, 1.0)).unwrap();
    let bias = TensorData::f32(&[e, n], rng.vec(e * n, -1.0, 1.0)).unwrap();
    let x = TensorData::f32(&[r, cin], rng.vec(r * cin, -1.0, 1.0)).unwrap();
    let xk = TensorData::f32(&[r, k, cin], rng.vec(r * k * cin, -1.0, 1.0)).unwrap();
    // Every expert picked, one id past the last (an empty pick: 0), uneven buckets.
    let ids: Vec<u32> = vec![0, 4, 1, 1, 2, 3, 4, 4, 0, 5, 3, 2, 1, 0];
    let idx = TensorData::u32(&[r, k], ids).unwrap();
    let before = dev.split_stats();
    let ws = dev.upload_weight(&w, "stack.weight").unwrap();
    assert_eq!(dev.blocks(&ws), 3);
    assert_eq!(dev.split_stats(), (before.0 + 1, before.1 + 3));
    assert_eq!(pollster::block_on(dev.download(&ws)).unwrap().to_f32_vec(), w.to_f32_vec(), "a split stack reads back whole");
    let wc = cpu.upload(&w).unwrap();
    for bucketed in [false, true] {
        for (input, with_bias) in [(&x, false), (&xk, false), (&x, true), (&xk, true)] {
            let run = |d: &Device, w: &taskloom::Tensor| {
                let routing = ExpertRouting::with(d, d.upload(&idx).unwrap(), e, bucketed).unwrap();
                let b = d.upload(&bias).unwrap();
                let y = routing.matmul(d, &d.upload(input).unwrap(), w, with_bias.then_some(&b)).unwrap();
                pollster::block_on(d.download(&y)).unwrap().to_f32_vec()
            };
            let (got, want) = (run(&dev, &ws), run(&cpu, &wc));
            let what = format!("bucketed {bucketed}, x {:?}, bias {with_bias}", input.dims());
            close(&what, &got, &want, 1e-5);
            // The pick routed to id 5 (>= E) is 0 (plus no bias).
            assert!(got[9 * n..10 * n].iter().all(|v| *v == 0.0), "{what}: the invalid pick");
        }
    }
}

#[test]
fn multitask_vit_moe_with_split_expert_stacks_equals_unsplit() {
    use taskloom::multitask::{Input, MultiTask, Output};
    let Some(whole) = gpu_or_skip("split multitask") else { return };
    // vit-moe: fc1 [6, 32, 24] and fc2 [6, 24, 32] (18432 bytes, 3072 an expert) in each of its MoE
    // blocks; at 12000 bytes (above every other tensor, and every activation of two images) 2
    // blocks of 3 experts each.
    let Some(dev) = limited("split multitask", 12000) else { return };
    let dir = root().join("tests/fixtures/multitask/blocks/vit-moe");
    let exp = fixture_json("multitask/blocks/vit-moe/expected.json");
    let tasks: Vec<&str> = exp["tasks"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let inputs: Vec<Input> = exp["inputs"].as_array().unwrap().iter().take(2).map(|i| Input::Image(floats(i))).collect();
    let run = |d: &Device| {
        let m = MultiTask::load_dir(&dir, d.clone(), None).expect("load");
        pollster::block_on(m.run(&inputs, Some(&tasks))).expect("run")
    };
    let got = run(&dev);
    let (tensors, blocks) = dev.split_stats();
    assert!(tensors >= 4 && blocks == 2 * tensors, "split {tensors} stacks into {blocks} blocks");
    let want = run(&whole);
    let tol = exp["tolerance"].as_f64().unwrap_or(1e-5) as f32;
    let values = |o: &Output| -> Vec<f32> {
        match o {
            Output::Sequence(p) => p.values.clone(),
            Output::Token(v) => v.iter().flat_map(|p| p.values.clone()).collect(),
        }
    };
    for (i, (g, w)) in got.outputs.iter().zip(&want.outputs).enumerate() {
        for t in &tasks {
            close(&format!("vit-moe input {i}, task {t}: split vs unsplit"), &values(&g[*t]), &values(&w[*t]), 1e-5);
            let o = &exp["outputs"][*t];
            let key = if o.get("values").is_some() { "values" } else { "logits" };
            let want: Vec<f32> = match &o[key][i] {
                serde_json::Value::Array(v) if v.first().is_some_and(|x| x.is_array()) => v.iter().flat_map(floats).collect(),
                v => floats(v),
            };
            close(&format!("vit-moe input {i}, task {t}: split vs PyTorch"), &values(&g[*t]), &want, tol);
        }
    }
    assert_eq!(got.routing, want.routing, "the same experts picked");
}

#[test]
fn what_cannot_be_split_is_a_typed_error_naming_the_tensor() {
    // The tiny Mixtral's expert stacks [4, 64, 32] are split only between experts: a limit below
    // one expert (8192 bytes) fails the load.
    let Some(dev) = limited("split moe", 4096) else { return };
    let dir = tiny("mixtral");
    let ModelConfig::Llama(cfg) = config(&dir) else { panic!() };
    match Llama::load(&dev, cfg, &DirFiles(dir).weights().unwrap()) {
        Err(Error::BufferTooLarge { what, .. }) => assert!(what.contains("experts.*") && what.contains("one expert, [64, 32], of 8192 bytes"), "{what}"),
        Err(e) => panic!("expected BufferTooLarge, got {e}"),
        Ok(_) => panic!("expected BufferTooLarge, the load succeeded"),
    }
    // One row above the limit: nothing to split between.
    let Some(dev) = limited("split row", 64) else { return };
    for dims in [&[32][..], &[2, 2, 2, 4]] {
        let t = taskloom::TensorData::f32(dims, vec![0.5; 32]).unwrap();
        match dev.upload_weight(&t, "odd.weight") {
            Err(Error::BufferTooLarge { what, .. }) => assert!(what.contains("odd.weight") && what.contains("only 2-D"), "{what}"),
            other => panic!("{dims:?}: expected BufferTooLarge, got {other:?}"),
        }
    }
    let t = taskloom::TensorData::f32(&[4, 32], vec![0.5; 128]).unwrap();
    match dev.upload_weight(&t, "wide.weight") {
        Err(Error::BufferTooLarge { what, bytes, limit }) => {
            assert!(what.contains("wide.weight") && what.contains("one row"), "{what}");
            assert_eq!((bytes, limit), (512, 64));
        }
        other => panic!("expected BufferTooLarge, got {other:?}"),
    }
    // A split weight given to an op that cannot take one names it.
    let w = dev.upload_weight(&taskloom::TensorData::f32(&[8, 4], vec![1.0; 32]).unwrap(), "m.weight").unwrap();
    assert_eq!(dev.blocks(&w), 2);
    let row = dev.upload(&taskloom::TensorData::f32(&[4], vec![1.0; 4]).unwrap()).unwrap();
    let x = dev.upload(&taskloom::TensorData::f32(&[2, 8], vec![1.0; 16]).unwrap()).unwrap();
    for (op, inputs) in [(taskloom::Op::Add, vec![&w, &row]), (taskloom::Op::Matmul { trans_b: false }, vec![&x, &w])] {
        match dev.exec(&op, &inputs) {
            Err(Error::BufferTooLarge { what, .. }) => assert!(what.contains("m.weight") && what.contains(op.name()), "{what}"),
            other => panic!("{}: expected BufferTooLarge, got {:?}", op.name(), other.map(|_| ())),
        }
    }
    // Downloading a split weight joins its blocks.
    assert_eq!(pollster::block_on(dev.download(&w)).unwrap().to_f32_vec(), vec![1.0; 32]);
}

#[test]
fn the_cpu_never_splits_and_bad_limits_are_rejected() {
    let cpu = Device::cpu();
    let t = taskloom::TensorData::f32(&[1024, 1024], vec![0.0; 1 << 20]).unwrap();
    let w = cpu.upload_weight(&t, "big.weight").unwrap();
    assert_eq!((cpu.blocks(&w), cpu.split_stats()), (1, (0, 0)));
    match pollster::block_on(Device::gpu_with(&DeviceOptions { max_binding_bytes: Some(2) })) {
        Err(Error::InvalidParam { op, reason }) => assert!(op == "max_binding_bytes" && reason.contains("at least 4"), "{reason}"),
        Err(Error::NoAdapter(_)) => {}
        other => panic!("a 2-byte limit: expected InvalidParam, got {:?}", other.map(|d| d.info())),
    }
    // A limit above the adapter's is not raised.
    if let Some(g) = gpu_or_skip("split limits") {
        let adapter = g.info().max_storage_buffer_binding_size;
        let d = pollster::block_on(Device::gpu_with(&DeviceOptions { max_binding_bytes: Some(u64::MAX) })).unwrap();
        assert_eq!(d.info().max_storage_buffer_binding_size, adapter);
    }
}

#[test]
fn merges_on_a_limited_gpu_equal_the_unlimited_one() {
    use taskloom::merge::{self, MemSink, Options};
    // TIES over three fine-tunes at 8000 bytes: the [64, 32] tensors' task vectors ([3, 2048] f32,
    // 24 KiB) do not fit one binding, so those tensors merge on the host; the norms' ([3, 32], and
    // the 6240-byte magnitude-mask scratch) on the GPU. Both give the unlimited GPU's result.
    const LIMIT: u64 = 8000;
    let Some(whole) = gpu_or_skip("split merge") else { return };
    let Some(dev) = limited("split merge", LIMIT) else { return };
    let r = merge::read_recipe(&root().join("tests/fixtures/merge/ties.yml")).unwrap();
    let run = |d: &Device| {
        let files = merge::model_dirs(&r).unwrap();
        let mut sink = MemSink::default();
        pollster::block_on(merge::merge(&r, &files, d, &Options::default(), &mut sink, &mut |_| {})).expect("merge");
        let (name, bytes) = sink.files.into_iter().find(|(n, _)| n.ends_with(".safetensors")).expect("a safetensors output");
        let st = SafeTensors::from_bytes(name, bytes).unwrap();
        st.names().iter().map(|n| (n.to_string(), st.tensor(n).unwrap().to_f32_vec())).collect::<Vec<_>>()
    };
    let (got, want) = (run(&dev), run(&whole));
    assert_eq!(got.len(), want.len());
    assert!(got.iter().any(|(_, v)| v.len() * 4 * 3 > LIMIT as usize), "some tensor's task vectors exceed the limit");
    assert!(got.iter().any(|(_, v)| v.len() * 4 * 3 <= 6240), "some tensor merges on the GPU");
    for ((n, g), (m, w)) in got.iter().zip(&want) {
        assert_eq!(n, m);
        close(&format!("merged {n}: limited vs unlimited GPU"), g, w, 1e-6);
    }
}
