//! The packaged SmolLM2-135M-Instruct GGUF (Q4_1 layers, a Q8_0 embedding; the CPU runs them
//! quantised, `taskloom::quant`) against transformers (tests/fixtures/smollm2_expected.json from
//! make_model_goldens.py): tokenizer ids, the chat prompt, the prompt's top logits, and the greedy
//! continuation on the CPU.

use taskloom::models::causal::CausalLm;
use taskloom::models::generate::Sampling;
use taskloom::Device;
use taskloom_tests::{fixture_json, json_ids as ids, model_or_skip};

#[test]
fn smollm2_gguf_matches_transformers_on_cpu() {
    let Some(dir) = model_or_skip("smollm2", "smollm2") else { return };
    let want = fixture_json("smollm2_expected.json");
    let lm = CausalLm::load_gguf_path(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), Device::cpu()).unwrap();
    assert_eq!(lm.encode(want["plain_text"].as_str().unwrap()).unwrap(), ids(&want["plain_ids"]), "tokenizer ids");
    let prompt = lm.chat_prompt(want["user"].as_str().unwrap()).unwrap();
    assert_eq!(prompt, want["prompt"].as_str().unwrap(), "chat template");
    let prompt_ids = lm.encode(&prompt).unwrap();
    assert_eq!(prompt_ids, ids(&want["prompt_ids"]), "chat prompt ids");

    let logits = pollster::block_on(lm.prompt_logits(&prompt_ids)).unwrap();
    let v = logits.dims()[1];
    let last = &logits.as_f32().unwrap()[(prompt_ids.len() - 1) * v..];
    for (id, l) in ids(&want["last_top_ids"]).iter().zip(want["last_top_logits"].as_array().unwrap()) {
        let l = l.as_f64().unwrap() as f32;
        assert!((last[*id as usize] - l).abs() < 1e-3 * l.abs().max(1.0), "logit of {id}: got {}, want {l}", last[*id as usize]);
    }
    let greedy = ids(&want["greedy_ids"]);
    let s = Sampling { max_tokens: greedy.len(), ..Sampling::default() };
    let mut text = String::new();
    let got = pollster::block_on(lm.generate(&prompt_ids, &s, |_, piece| {
        text.push_str(piece);
        true
    }))
    .unwrap();
    assert_eq!(got, greedy, "greedy ids");
    assert_eq!(text, want["greedy_text"].as_str().unwrap());
}

#[test]
fn smollm2_batched_generation_equals_single() {
    let Some(dir) = model_or_skip("smollm2 batch", "smollm2") else { return };
    let want = fixture_json("smollm2_expected.json");
    let lm = CausalLm::load_gguf_path(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), Device::cpu()).unwrap();
    let chat = lm.encode(&lm.chat_prompt(want["user"].as_str().unwrap()).unwrap()).unwrap();
    let plain = lm.encode("The capital of Italy is").unwrap();
    let s = Sampling { max_tokens: 6, ..Sampling::default() };
    let batch = pollster::block_on(lm.generate_batch(&[chat.clone(), plain.clone()], &s)).unwrap();
    assert_eq!(batch[0], ids(&want["greedy_ids"])[..6].to_vec(), "row 0 (the chat prompt) equals transformers' greedy ids");
    let alone = pollster::block_on(lm.generate(&plain, &s, |_, _| true)).unwrap();
    assert_eq!(batch[1], alone, "row 1 equals its own single-row run");
}

#[test]
fn smollm2_quantised_weights_widen_to_the_dequantised_ones() {
    // The quantised tensors the CPU runs hold exactly the values the f32 path loads, q/k rows
    // unpermuted included, and really are quantised.
    use taskloom::formats::gguf::{Gguf, GgufWeights};
    use taskloom::models::Weights;
    let Some(dir) = model_or_skip("smollm2 quantised", "smollm2") else { return };
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let quant = GgufWeights::new(Gguf::open(&path).unwrap()).unwrap().keep_quantized(true);
    let wide = GgufWeights::new(Gguf::open(&path).unwrap()).unwrap();
    for (name, dtype) in [
        ("model.embed_tokens.weight", taskloom::DType::Q8_0),
        ("model.layers.0.self_attn.q_proj.weight", taskloom::DType::Q4_1),
        ("model.layers.3.self_attn.k_proj.weight", taskloom::DType::Q4_1),
        ("model.layers.29.mlp.down_proj.weight", taskloom::DType::Q4_1),
    ] {
        let (q, w) = (quant.tensor(name).unwrap(), wide.tensor(name).unwrap());
        assert_eq!(q.dtype(), dtype, "{name}");
        assert_eq!(q.dims(), w.dims(), "{name}");
        assert!(q.to_f32_vec() == w.as_f32().unwrap(), "{name}: widened values differ");
    }
    // Norms stay f32.
    assert_eq!(quant.tensor("model.norm.weight").unwrap().dtype(), taskloom::DType::F32);
}
