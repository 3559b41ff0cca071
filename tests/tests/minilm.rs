//! The packaged all-MiniLM-L6-v2 against sentence-transformers (expected vectors committed in
//! tests/fixtures/minilm_expected.json by tests/fixtures/make_model_goldens.py): tokenizer ids
//! equal, embeddings with cosine >= 0.9999 on the CPU and on the GPU.

use taskloom::models::hf::{DirFiles, Encoder};
use taskloom::Device;
use taskloom_tests::{cosine, fixture_json, gpu_or_skip, model_or_skip};

fn check(dev: Device, test: &str) {
    let Some(dir) = model_or_skip(test, "minilm") else { return };
    let want = fixture_json("minilm_expected.json");
    let enc = Encoder::load(&DirFiles(dir), dev).expect("load MiniLM");
    let texts: Vec<&str> = want["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for (t, ids) in texts.iter().zip(want["ids"].as_array().unwrap()) {
        let ids: Vec<u32> = ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(enc.tokenizer.encode(t).unwrap().ids, ids, "tokenizer ids for {t:?}");
    }
    let got = pollster::block_on(enc.embed(&texts)).unwrap();
    for ((t, g), w) in texts.iter().zip(&got).zip(want["embeddings"].as_array().unwrap()) {
        let w: Vec<f32> = w.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let c = cosine(g, &w);
        assert!(c >= 0.9999, "{test}: cosine {c} for {t:?}");
        let max_diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max_diff < 1e-4, "{test}: max |diff| {max_diff} for {t:?}");
    }
}

#[test]
fn minilm_cpu_matches_sentence_transformers() {
    check(Device::cpu(), "minilm cpu");
}

#[test]
fn minilm_gpu_matches_sentence_transformers() {
    if let Some(dev) = gpu_or_skip("minilm gpu") {
        check(dev, "minilm gpu");
    }
}
