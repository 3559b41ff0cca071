//! Unit tests on small GGUF files built here. Bad files are tested in `tests/tests/gguf.rs`.

use super::*;
use crate::models::Weights;
use half::f16;
use crate::formats::RangeRead;
use std::sync::Arc;

/// Writes a valid little-endian GGUF v3 file (alignment 32).
#[derive(Default)]
struct Builder {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl Builder {
    fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        put_str(&mut self.kv, key);
        self.kv.extend(ty.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }
    fn u32(self, key: &str, v: u32) -> Self {
        self.kv(key, 4, &v.to_le_bytes())
    }
    fn f32(self, key: &str, v: f32) -> Self {
        self.kv(key, 6, &v.to_le_bytes())
    }
    fn bool(self, key: &str, v: bool) -> Self {
        self.kv(key, 7, &[v as u8])
    }
    fn str(self, key: &str, v: &str) -> Self {
        let mut b = Vec::new();
        put_str(&mut b, v);
        self.kv(key, 8, &b)
    }
    fn strs(self, key: &str, v: &[&str]) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|s| put_str(&mut b, s));
        self.kv(key, 9, &b)
    }
    fn i32s(self, key: &str, v: &[i32]) -> Self {
        let mut b = 5u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| b.extend(x.to_le_bytes()));
        self.kv(key, 9, &b)
    }
    fn tensor(mut self, name: &str, ty: u32, ne: &[u64], bytes: &[u8]) -> Self {
        self.data.resize(self.data.len().div_ceil(32) * 32, 0);
        put_str(&mut self.infos, name);
        self.infos.extend((ne.len() as u32).to_le_bytes());
        ne.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(bytes);
        self.n_tensors += 1;
        self
    }
    fn f32_tensor(self, name: &str, ne: &[u64], v: &[f32]) -> Self {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, 0, ne, &b)
    }
    fn build(&self) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(self.n_tensors.to_le_bytes());
        f.extend(self.n_kv.to_le_bytes());
        f.extend(&self.kv);
        f.extend(&self.infos);
        f.resize(f.len().div_ceil(32) * 32, 0);
        f.extend(&self.data);
        f
    }
    fn open(&self) -> Gguf {
        Gguf::from_bytes("test.gguf", self.build()).unwrap()
    }
}

#[test]
fn metadata_getters_and_shapes() {
    let g = Builder::default()
        .str("general.architecture", "llama")
        .u32("llama.block_count", 2)
        .f32("llama.rope.freq_base", 1e5)
        .bool("tokenizer.ggml.add_bos_token", false)
        .strs("tokenizer.ggml.tokens", &["a", "b"])
        .i32s("tokenizer.ggml.token_type", &[1, -3])
        .f32_tensor("w", &[3, 2], &[0., 1., 2., 3., 4., 5.])
        .tensor("q", 12, &[256], &[0; 144])
        .open();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 1e5);
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap(), ["a", "b"]);
    assert_eq!(g.get_int_array("tokenizer.ggml.token_type").unwrap(), [1, -3]);
    assert_eq!(g.architecture().unwrap(), "llama");
    let e = g.get_u32("general.architecture").unwrap_err().to_string();
    assert!(e.contains("test.gguf") && e.contains("general.architecture") && e.contains("string"), "{e}");
    assert!(g.get_str("nope").unwrap_err().to_string().contains("'nope' is missing"));

    assert_eq!(g.names(), ["w", "q"]);
    assert_eq!(g.info("w").unwrap().shape(), [2, 3]);
    let w = g.tensor("w").unwrap();
    assert_eq!(w.dims(), [2, 3]);
    assert_eq!(w.as_f32().unwrap(), [0., 1., 2., 3., 4., 5.]);
    // Q4_K is listed with its size, and refused when loaded, naming tensor and type.
    assert_eq!(g.info("q").unwrap().ggml_type, GgmlType::Q4K);
    match g.tensor("q").unwrap_err() {
        Error::File { file, kind: FileError::UnsupportedDType { tensor, dtype } } => {
            assert_eq!((file.as_str(), tensor.as_str(), dtype.as_str()), ("test.gguf", "q", "Q4_K"))
        }
        e => panic!("{e}"),
    }
    assert!(matches!(g.tensor("x"), Err(Error::File { kind: FileError::MissingTensor(_), .. })));
}

#[test]
fn quantised_tensor_loads_row_major() {
    // Two rows of 32 Q8_0 values: ne = [32, 2] loads as [2, 32].
    let mut b = Vec::new();
    for row in 0..2i8 {
        b.extend(f16::from_f32(0.5).to_le_bytes());
        b.extend((0..32i8).map(|j| (j + row * 32 - 32) as u8));
    }
    let g = Builder::default().tensor("e", 8, &[32, 2], &b).open();
    let t = g.tensor("e").unwrap();
    assert_eq!(t.dims(), [2, 32]);
    let want: Vec<f32> = (0..64).map(|j| (j - 32) as f32 * 0.5).collect();
    assert_eq!(t.as_f32().unwrap(), &want[..]);
}

/// llama.cpp's `LlamaModel.permute`, written out index by index as numpy would do it.
fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = vec![0.0; w.len()];
    // reshape(n_head, 2, half, cols).swapaxes(1, 2): out[h, i, j, :] = w[h, j, i, :].
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let dst = ((h * half + i) * 2 + j) * cols;
                let src = ((h * 2 + j) * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_the_converter() {
    for (rows, cols, heads) in [(576, 3, 9), (192, 2, 3), (8, 1, 2), (4, 5, 1)] {
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        assert_eq!(unpermute_rows(&permute(&w, rows, cols, heads), rows, cols, heads).unwrap(), w);
    }
    // Head 0 of a 4-row, 1-head tensor: GGUF rows (0,1,2,3) hold HF rows (0,2,1,3).
    assert_eq!(unpermute_rows(&[0., 2., 1., 3.], 4, 1, 1).unwrap(), [0., 1., 2., 3.]);
    assert_eq!(unpermute_rows(&[0.; 6], 6, 1, 2), None);
    assert_eq!(unpermute_rows(&[0.; 4], 4, 2, 1), None);
}

#[test]
fn hf_names_map_to_gguf() {
    let m = |s: &str| hf_to_gguf_name(s);
    assert_eq!(m("model.embed_tokens.weight").as_deref(), Some("token_embd.weight"));
    assert_eq!(m("lm_head.weight").as_deref(), Some("output.weight"));
    assert_eq!(m("model.norm.weight").as_deref(), Some("output_norm.weight"));
    assert_eq!(m("model.layers.12.self_attn.o_proj.weight").as_deref(), Some("blk.12.attn_output.weight"));
    assert_eq!(m("model.layers.0.mlp.down_proj.weight").as_deref(), Some("blk.0.ffn_down.weight"));
    assert_eq!(m("model.layers.3.post_attention_layernorm.weight").as_deref(), Some("blk.3.ffn_norm.weight"));
    assert_eq!(m("model.layers.3.input_layernorm.weight").as_deref(), Some("blk.3.attn_norm.weight"));
    assert_eq!(m("model.layers.1.self_attn.q_proj.bias").as_deref(), Some("blk.1.attn_q.bias"));
    for bad in ["model.layers.01.mlp.up_proj.weight", "model.layers.x.mlp.up_proj.weight", "model.layers.1.mlp.up.weight", "token_embd.weight"] {
        assert_eq!(m(bad), None, "{bad}");
    }
}

fn tiny_llama() -> Builder {
    // 2 heads of dim 4, 1 KV head: q [8, 8], k [4, 8].
    let q: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let k: Vec<f32> = (0..32).map(|i| -(i as f32)).collect();
    Builder::default()
        .str("general.architecture", "llama")
        .u32("llama.embedding_length", 8)
        .u32("llama.feed_forward_length", 16)
        .u32("llama.block_count", 1)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .u32("llama.context_length", 64)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .u32("tokenizer.ggml.bos_token_id", 1)
        .f32_tensor("blk.0.attn_q.weight", &[8, 8], &permute(&q, 8, 8, 2))
        .f32_tensor("blk.0.attn_k.weight", &[8, 4], &permute(&k, 4, 8, 1))
        .f32_tensor("token_embd.weight", &[8, 5], &[0.5; 40])
}

#[test]
fn weights_serve_hf_names_in_hf_row_order() {
    let w = GgufWeights::new(tiny_llama().open()).unwrap();
    let q = w.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.dims(), [8, 8]);
    assert_eq!(q.as_f32().unwrap(), &(0..64).map(|i| i as f32).collect::<Vec<_>>()[..]);
    let k = w.tensor("model.layers.0.self_attn.k_proj.weight").unwrap();
    assert_eq!(k.as_f32().unwrap(), &(0..32).map(|i| -(i as f32)).collect::<Vec<_>>()[..]);
    assert_eq!(w.tensor("model.embed_tokens.weight").unwrap().dims(), [5, 8]);
    assert!(w.contains("model.embed_tokens.weight"));
    assert!(!w.contains("lm_head.weight"));
    let e = w.tensor("lm_head.weight").unwrap_err();
    assert!(matches!(&e, Error::File { kind: FileError::MissingTensor(n), .. } if n == "lm_head.weight"), "{e}");
}

#[test]
fn config_json_from_metadata() {
    let g = tiny_llama().open();
    let c: serde_json::Value = serde_json::from_str(&g.llama_config_json().unwrap()).unwrap();
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["num_key_value_heads"], 1);
    assert_eq!(c["head_dim"], 4);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["rope_theta"], 10000.0);
    assert_eq!(c["vocab_size"], 5);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert!(c.get("eos_token_id").is_none());
}

#[test]
fn tokenizer_from_metadata() {
    // Byte-level symbols: "Ġ" is the space byte.
    let tokens = ["<|s|>", "a", "b", "Ġ", "1", "2", "ab", "Ġab", "12"];
    let g = Builder::default()
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "smollm")
        .strs("tokenizer.ggml.tokens", &tokens)
        .i32s("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1, 1, 1, 1])
        .strs("tokenizer.ggml.merges", &["a b", "Ġ ab", "1 2"])
        .u32("tokenizer.ggml.bos_token_id", 0)
        .bool("tokenizer.ggml.add_bos_token", true)
        .open();
    let t = g.tokenizer().unwrap();
    // Digits are split one by one before BPE, so the "1 2" merge never applies.
    assert_eq!(t.encode("ab ab<|s|>12").unwrap().ids, [0, 6, 7, 0, 4, 5]);
    assert_eq!(t.decode(&[6, 7, 0, 4], true).unwrap(), "ab ab1");
    let g2 = Builder::default().str("tokenizer.ggml.model", "llama").open();
    assert!(g2.tokenizer().is_err());
}

/// A [`RangeRead`] over bytes, optionally claiming a larger size (zeros past the bytes), that
/// records the end of the furthest read.
struct Ranged {
    bytes: Vec<u8>,
    len: u64,
    furthest: std::sync::atomic::AtomicU64,
}

impl Ranged {
    fn new(bytes: Vec<u8>) -> Arc<Ranged> {
        let len = bytes.len() as u64;
        Arc::new(Ranged { bytes, len, furthest: Default::default() })
    }
    fn furthest(&self) -> u64 {
        self.furthest.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl RangeRead for Ranged {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, start: u64, out: &mut [u8]) -> std::io::Result<()> {
        let end = start + out.len() as u64;
        assert!(end <= self.len, "read past the end: {start}..{end} of {}", self.len);
        self.furthest.fetch_max(end, std::sync::atomic::Ordering::Relaxed);
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.bytes.get(start as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
}

/// `tiny_llama` with a vocabulary big enough that the header spans several MiB (prefix growth),
/// and a tensor of 16 MiB.
fn big_header_llama() -> Builder {
    let words: Vec<String> = (0..200_000).map(|i| format!("token-{i:08}")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let big: Vec<f32> = (0..4 << 20).map(|i| (i % 1000) as f32).collect();
    tiny_llama().strs("tokenizer.ggml.tokens", &refs).f32_tensor("big.weight", &[1024, 4096], &big)
}

#[test]
fn ranged_reader_reads_the_same_header_and_tensors() {
    for b in [tiny_llama(), big_header_llama()] {
        let bytes = b.build();
        let whole = Gguf::from_bytes("t.gguf", bytes.clone()).unwrap();
        let src = Ranged::new(bytes.clone());
        let g = Gguf::from_reader("t.gguf", src.clone()).unwrap();
        // Opening read the first prefix (1 MiB, or the whole of a smaller file) or, for a longer
        // header, under twice the header: not the tensor data.
        let bound = (bytes.len() as u64).min(1 << 20).max(2 * whole.data_start);
        assert!(src.furthest() <= bound, "read to {} of a header ending at {}", src.furthest(), whole.data_start);
        assert!(src.furthest() < bytes.len() as u64 || bytes.len() < 1 << 20);
        assert_eq!((g.version(), g.alignment(), g.data_start), (whole.version(), whole.alignment(), whole.data_start));
        assert_eq!(g.tensors(), whole.tensors());
        assert_eq!(g.metadata(), whole.metadata());
        for t in whole.tensors() {
            assert_eq!(g.tensor(&t.name).unwrap(), whole.tensor(&t.name).unwrap(), "{}", t.name);
            assert_eq!(g.bytes(&t.name).unwrap(), whole.bytes(&t.name).unwrap(), "{}", t.name);
        }
        let (a, b) = (GgufWeights::new(g).unwrap(), GgufWeights::new(whole).unwrap());
        let q = "model.layers.0.self_attn.q_proj.weight";
        assert_eq!(a.tensor(q).unwrap(), b.tensor(q).unwrap());
    }
}

#[test]
fn ranged_reader_gives_the_same_errors_for_cut_files() {
    let bytes = big_header_llama().build();
    let header_end = Gguf::from_bytes("t.gguf", bytes.clone()).unwrap().data_start as usize;
    assert!(header_end > 3 << 20, "the header must span several prefixes: {header_end}");
    for cut in [0, 3, 23, 100, 1 << 20, (1 << 20) + 7, 3 << 20, header_end - 1, header_end + 5, bytes.len() - 1] {
        let f = bytes[..cut].to_vec();
        let want = match Gguf::from_bytes("t.gguf", f.clone()) {
            Err(Error::File { file, kind }) => (file, kind),
            other => panic!("cut at {cut}: {other:?}"),
        };
        match Gguf::from_reader("t.gguf", Ranged::new(f)) {
            Err(Error::File { file, kind }) => assert_eq!((file, kind), want, "cut at {cut}"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn ranged_reader_refuses_a_header_above_its_cap_without_reading_it() {
    // One string value claiming 2 GiB, in a "file" of 3 GiB (zeros past the real bytes): a whole-file
    // parse would get to the tensor list; a ranged one must not read gigabytes to find out.
    let f = Builder::default().kv("s", 8, &(2u64 << 30).to_le_bytes()).build();
    let src = Arc::new(Ranged { len: 3 << 30, ..Arc::into_inner(Ranged::new(f)).unwrap() });
    match Gguf::from_reader("big.gguf", src.clone()) {
        Err(Error::File { file, kind: FileError::BadHeader(m) }) => {
            assert_eq!(file, "big.gguf");
            assert!(m.contains("cap"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(src.furthest() <= 1 << 20, "read {} bytes", src.furthest());
}
