//! LoRA adapters against PEFT (fixtures by tests/fixtures/make_lora_goldens.py, peft 0.21.2):
//! unfused forward within 1e-5 of PEFT's, fused weights equal `merge_and_unload` within 1e-6,
//! unfuse restores the base bit for bit, several adapters with scales, a mixed batch equal to each
//! sequence alone with its adapter, and bad adapters rejected with the base left untouched. Every
//! check runs on the CPU and on the GPU.

use std::path::{Path, PathBuf};
use taskloom::formats::safetensors::SafeTensors;
use taskloom::lora::runtime::Mix;
use taskloom::lora::Adapter;
use taskloom::models::bert::{Bert, EncoderInput};
use taskloom::models::config::ModelConfig;
use taskloom::models::hf::{DirFiles, Files};
use taskloom::models::llama::Llama;
use taskloom::{Device, Error};
use taskloom_tests::{first_violation, fixture_json, gpu_or_skip};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

use taskloom_tests::{hf_config as config, json_floats as floats, json_ids as ids};

fn llama(dev: &Device, base: &str) -> Llama {
    let dir = root().join(base);
    let ModelConfig::Llama(cfg) = config(&dir) else { panic!("{base}: not a decoder") };
    Llama::load(dev, cfg, &DirFiles(dir).weights().unwrap()).unwrap()
}

fn bert(dev: &Device, base: &str) -> Bert {
    let dir = root().join(base);
    let ModelConfig::Bert(cfg) = config(&dir) else { panic!("{base}: not an encoder") };
    Bert::load(dev, cfg, &DirFiles(dir).weights().unwrap()).unwrap()
}

fn adapter(name: &str, rel: &str) -> Adapter {
    Adapter::load_dir(name, root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn logits(dev: &Device, m: &Llama, prompt: &[u32], mixes: Option<&[Mix]>) -> Vec<f32> {
    let rows: Vec<&[u32]> = vec![prompt];
    logits_rows(dev, m, &rows, mixes)
}

fn logits_rows(dev: &Device, m: &Llama, rows: &[&[u32]], mixes: Option<&[Mix]>) -> Vec<f32> {
    let mut cache = m.new_cache();
    let t = m.forward_mixed(dev, rows, &mut cache, true, mixes).unwrap();
    pollster::block_on(dev.download(&t)).unwrap().as_f32().unwrap().to_vec()
}

fn check(what: &str, dev: &Device, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what} on {}: length", dev.kind());
    if let Some((i, g, w)) = first_violation(got, want, tol, tol) {
        panic!("{what} on {}: element {i}: got {g}, want {w}", dev.kind());
    }
}

fn mix(pairs: &[(&str, f32)]) -> Mix {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

/// The weights of the named linears, read back from the model's device.
fn weights(dev: &Device, m: &mut Llama, names: &[String]) -> Vec<Vec<f32>> {
    names.iter().map(|n| pollster::block_on(m.linear_weight(dev, n.trim_end_matches(".weight"))).unwrap().unwrap()).collect()
}

fn decoder_cases(dev: &Device) {
    let want = fixture_json("lora/expected.json");
    for (key, case) in want["adapters"].as_object().unwrap() {
        if key.starts_with("bert") {
            continue;
        }
        let mut m = llama(dev, case["base"].as_str().unwrap());
        let prompt = ids(&case["ids"]);
        let base_logits = logits(dev, &m, &prompt, None);
        let names: Vec<String> = case["merged_weight_names"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
        let base_w = weights(dev, &mut m, &names);
        m.add_adapter(dev, adapter("x", case["adapter"].as_str().unwrap())).unwrap();
        // Registered but inactive: the base output, unchanged.
        check(&format!("{key} inactive"), dev, &logits(dev, &m, &prompt, None), &base_logits, 0.0);
        m.set_adapters(mix(&[("x", 1.0)])).unwrap();
        check(&format!("{key} unfused"), dev, &logits(dev, &m, &prompt, None), &floats(&case["logits"]), 1e-5);
        // Per request, with the default mix left empty.
        m.set_adapters(Vec::new()).unwrap();
        check(&format!("{key} per request"), dev, &logits(dev, &m, &prompt, Some(&[mix(&[("x", 1.0)])])), &floats(&case["logits"]), 1e-5);
        m.set_adapters(mix(&[("x", 1.0)])).unwrap();
        m.fuse(dev).unwrap();
        let merged = SafeTensors::open(root().join(case["merged_weights"].as_str().unwrap())).unwrap();
        for (n, got) in names.iter().zip(weights(dev, &mut m, &names)) {
            check(&format!("{key} fused {n}"), dev, &got, &merged.tensor(n).unwrap().to_f32_vec(), 1e-6);
        }
        check(&format!("{key} fused"), dev, &logits(dev, &m, &prompt, None), &floats(&case["merged_logits"]), 1e-5);
        // A fused model serving a base request runs the difference unfused.
        check(&format!("{key} fused, base request"), dev, &logits(dev, &m, &prompt, Some(&[Vec::new()])), &base_logits, 1e-5);
        m.unfuse().unwrap();
        for ((n, got), want) in names.iter().zip(weights(dev, &mut m, &names)).zip(&base_w) {
            assert_eq!(&got, want, "{key} on {}: unfuse must restore {n} exactly", dev.kind());
        }
        m.remove_adapter(dev, "x").unwrap();
        check(&format!("{key} removed"), dev, &logits(dev, &m, &prompt, None), &base_logits, 0.0);
    }
}

fn multi_and_mixed(dev: &Device) {
    let want = fixture_json("lora/expected.json");
    let multi = &want["multi_adapter"];
    let mut m = llama(dev, multi["base"].as_str().unwrap());
    for (n, p) in multi["adapters"].as_object().unwrap() {
        m.add_adapter(dev, adapter(n, p.as_str().unwrap())).unwrap();
    }
    let mults: Mix = multi["multipliers"].as_object().unwrap().iter().map(|(n, w)| (n.clone(), w.as_f64().unwrap() as f32)).collect();
    m.set_adapters(mults.clone()).unwrap();
    let prompt = ids(&multi["ids"]);
    check("two adapters with scales", dev, &logits(dev, &m, &prompt, None), &floats(&multi["logits"]), 1e-5);
    // Fused, the same mix gives the same output.
    m.fuse(dev).unwrap();
    check("two adapters fused", dev, &logits(dev, &m, &prompt, None), &floats(&multi["logits"]), 1e-5);
    m.unfuse().unwrap();

    let mixed = &want["mixed_batch"];
    let mut m = llama(dev, mixed["base"].as_str().unwrap());
    for (n, p) in mixed["adapters"].as_object().unwrap() {
        m.add_adapter(dev, adapter(n, p.as_str().unwrap())).unwrap();
    }
    let rows: Vec<Vec<u32>> = mixed["ids"].as_array().unwrap().iter().map(ids).collect();
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    let mixes: Vec<Mix> = mixed["adapter_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| match n.as_str().unwrap() {
            "__base__" => Vec::new(),
            a => mix(&[(a, 1.0)]),
        })
        .collect();
    let got = logits_rows(dev, &m, &refs, Some(&mixes));
    check("mixed batch vs PEFT", dev, &got, &floats(&mixed["logits"]), 1e-5);
    // Each row alone with its adapter gives the batch's row.
    let per = got.len() / rows.len();
    for (r, row) in rows.iter().enumerate() {
        let alone = logits(dev, &m, row, Some(&mixes[r..r + 1]));
        check(&format!("mixed batch row {r} vs alone"), dev, &got[r * per..(r + 1) * per], &alone, 1e-5);
    }
    // Fusing one adapter does not change what any row of a mixed batch gets.
    m.set_adapters(mix(&[("b", 1.0)])).unwrap();
    m.fuse(dev).unwrap();
    check("mixed batch with b fused", dev, &logits_rows(dev, &m, &refs, Some(&mixes)), &floats(&mixed["logits"]), 1e-5);
}

fn classifier(dev: &Device) {
    let want = fixture_json("lora/expected.json");
    let case = &want["adapters"]["bert-cls/a"];
    let mut m = bert(dev, case["base"].as_str().unwrap());
    let prompt = ids(&case["ids"]);
    let mask = ids(&case["attention_mask"]);
    let n = prompt.len();
    let input = EncoderInput { ids: prompt, type_ids: vec![0; n], mask, batch: 1, tokens: n };
    let run = |m: &Bert, mixes: Option<&[Mix]>| pollster::block_on(m.classify(dev, &input, mixes)).unwrap().as_f32().unwrap().to_vec();
    check("bert-cls base", dev, &run(&m, None), &floats(&case["base_logits"]), 1e-5);
    m.add_adapter(dev, adapter("a", case["adapter"].as_str().unwrap())).unwrap();
    m.set_adapters(mix(&[("a", 1.0)])).unwrap();
    check("bert-cls with adapter and its saved classifier", dev, &run(&m, None), &floats(&case["logits"]), 1e-5);
    m.fuse(dev).unwrap();
    check("bert-cls fused", dev, &run(&m, None), &floats(&case["merged_logits"]), 1e-5);
    m.unfuse().unwrap();
    check("bert-cls base request", dev, &run(&m, Some(&[Vec::new()])), &floats(&case["base_logits"]), 1e-5);
    // Task branches in one batch (MTLoRA-style): each row picks its adapters, and with them the
    // classifier its adapter saved (row 0: adapter a and its head; row 1: the base and its head).
    let two = EncoderInput {
        ids: [input.ids.clone(), input.ids.clone()].concat(),
        type_ids: vec![0; 2 * n],
        mask: [input.mask.clone(), input.mask.clone()].concat(),
        batch: 2,
        tokens: n,
    };
    m.set_adapters(Vec::new()).unwrap();
    let both = pollster::block_on(m.classify(dev, &two, Some(&[mix(&[("a", 1.0)]), Vec::new()]))).unwrap();
    let both = both.as_f32().unwrap();
    check("bert-cls mixed batch, row with a", dev, &both[..3], &floats(&case["logits"]), 1e-5);
    check("bert-cls mixed batch, base row", dev, &both[3..], &floats(&case["base_logits"]), 1e-5);
}

fn bad_adapters(dev: &Device) {
    let mut m = llama(dev, "tests/fixtures/tiny/llama");
    let prompt = [1u32, 5, 17, 3];
    let before = logits(dev, &m, &prompt, None);
    for (dir, wants) in [
        ("shape-mismatch", "do not fit the base weight"),
        ("missing-target", "qkv_proj"),
        ("partly-missing-target", "qkv_proj"),
        ("rank-zero", "r must be at least 1"),
        ("unknown-key", "taskloom_unknown_option"),
        ("nan-weight", "v_proj.lora_B.weight"),
        ("inf-weight", "v_proj.lora_A.weight"),
    ] {
        let err = Adapter::load_dir(dir, root().join("tests/fixtures/lora/bad").join(dir)).and_then(|a| m.add_adapter(dev, a));
        match err {
            Err(e @ Error::Adapter { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(dir) && msg.contains(wants), "{dir}: message '{msg}' should name the adapter and '{wants}'");
                assert_eq!(e.code(), "BAD_INPUT");
            }
            other => panic!("{dir}: expected an adapter error, got {other:?}"),
        }
        assert!(m.lora.is_empty(), "{dir}: a rejected adapter must not stay registered");
    }
    check("base untouched after bad adapters", dev, &logits(dev, &m, &prompt, None), &before, 0.0);
    assert!(matches!(m.set_adapters(mix(&[("nope", 1.0)])), Err(Error::Adapter { .. })));
    m.add_adapter(dev, adapter("d", "tests/fixtures/lora/llama/d")).unwrap();
    assert!(matches!(m.add_adapter(dev, adapter("d", "tests/fixtures/lora/llama/d")), Err(Error::Adapter { .. })), "duplicate name");
}

#[test]
fn cpu_peft_parity() {
    let dev = Device::cpu();
    decoder_cases(&dev);
    multi_and_mixed(&dev);
    classifier(&dev);
    bad_adapters(&dev);
}

#[test]
fn gpu_peft_parity() {
    let Some(dev) = gpu_or_skip("gpu_peft_parity") else { return };
    decoder_cases(&dev);
    multi_and_mixed(&dev);
    classifier(&dev);
    bad_adapters(&dev);
}
