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

#[test]
fn lora_on_split_linears_runs_unfused_and_fusing_is_a_typed_error() {
    let Some(dev) = limited("split lora", TINY_LIMIT) else { return };
    let want = fixture_json("lora/expected.json");
    let case = &want["adapters"]["llama/a"];
    let mut m = load_llama(&dev, &root().join(case["base"].as_str().unwrap()));
    assert!(dev.split_stats().0 > 0);
    let prompt = ids(&case["ids"]);
    let logits = |m: &Llama, mix: Option<&[Vec<(String, f32)>]>| {
        let mut cache = m.new_cache();
        pollster::block_on(dev.download(&m.forward_mixed(&dev, &[&prompt], &mut cache, true, mix).unwrap())).unwrap().to_f32_vec()
    };
    let adapter = Adapter::load_dir("a", root().join(case["adapter"].as_str().unwrap())).unwrap();
    m.add_adapter(&dev, adapter).unwrap();
    m.set_adapters(vec![("a".into(), 1.0)]).unwrap();
    // q, k, v, o, gate, up, down all adapted; q, o and the MLP weights are split.
    close("llama/a unfused on split linears vs PEFT", &logits(&m, None), &floats(&case["logits"]), 1e-5);
    close("base request", &logits(&m, Some(&[Vec::new()])), &floats(&case["base_logits"]), 1e-5);
    match m.fuse(&dev) {
        Err(Error::BufferTooLarge { what, bytes, limit }) => {
            assert!(what.contains("model.layers.0.self_attn.q_proj.weight") && what.contains("fusing"), "{what}");
            assert!(bytes > limit && limit == TINY_LIMIT, "{bytes} > {limit}");
        }
        other => panic!("fusing into a split weight: expected BufferTooLarge, got {:?}", other.err()),
    }
    // The refusal changed nothing: the adapter still runs unfused.
    close("after the refused fuse", &logits(&m, None), &floats(&case["logits"]), 1e-5);
    m.remove_adapter(&dev, "a").unwrap();
    close("removed", &logits(&m, None), &floats(&case["base_logits"]), 1e-5);
}

#[test]
fn what_cannot_be_split_is_a_typed_error_naming_the_tensor() {
    // The tiny Mixtral's expert stacks [E, F, C] are not split: a limit below them fails the load.
    let Some(dev) = limited("split moe", 4096) else { return };
    let dir = tiny("mixtral");
    let ModelConfig::Llama(cfg) = config(&dir) else { panic!() };
    match Llama::load(&dev, cfg, &DirFiles(dir).weights().unwrap()) {
        Err(Error::BufferTooLarge { what, .. }) => assert!(what.contains("experts") && what.contains("only 2-D"), "{what}"),
        Err(e) => panic!("expected BufferTooLarge, got {e}"),
        Ok(_) => panic!("expected BufferTooLarge, the load succeeded"),
    }
    // One row above the limit: nothing to split between.
    let Some(dev) = limited("split row", 64) else { return };
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
