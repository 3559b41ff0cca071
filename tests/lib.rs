//! Shared helpers for the integration tests: device acquisition that honours
//! `TASKLOOM_REQUIRE_GPU`, deterministic data, and tolerance checks.

use taskloom::{Device, TensorData};

/// The GPU device, or `None` with the reason printed. With `TASKLOOM_REQUIRE_GPU=1` (set in CI,
/// where Mesa lavapipe provides an adapter) a missing adapter fails the test instead.
pub fn gpu_or_skip(test: &str) -> Option<Device> {
    match pollster::block_on(Device::gpu()) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("TASKLOOM_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: TASKLOOM_REQUIRE_GPU=1 but {e}");
            }
            eprintln!("SKIP {test} on GPU: {e} (set TASKLOOM_REQUIRE_GPU=1 to make this a failure)");
            None
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), so every run and every device sees the same data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// Largest violation of `|got - want| <= atol + rtol * |want|`, as (index, got, want), if any.
pub fn first_violation(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Option<(usize, f32, f32)> {
    if got.len() != want.len() {
        return Some((usize::MAX, got.len() as f32, want.len() as f32));
    }
    let mut worst: Option<(usize, f32, f32, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        let bad = excess > 0.0 || g.is_nan() != w.is_nan();
        if bad && worst.is_none_or(|(_, _, _, e)| excess > e) {
            worst = Some((i, g, w, excess));
        }
    }
    worst.map(|(i, g, w, _)| (i, g, w))
}

/// Compares two outputs of one op: floats within tolerance, integers exactly.
pub fn compare(got: &TensorData, want: &TensorData, atol: f32, rtol: f32) -> Result<(), String> {
    if got.dims() != want.dims() || got.dtype() != want.dtype() {
        return Err(format!("got {:?} {}, want {:?} {}", got.dims(), got.dtype(), want.dims(), want.dtype()));
    }
    if !want.dtype().is_float() {
        return if got == want { Ok(()) } else { Err(format!("integer outputs differ: got {:?}, want {:?}", head(got), head(want))) };
    }
    match first_violation(&got.to_f32_vec(), &want.to_f32_vec(), atol, rtol) {
        None => Ok(()),
        Some((i, g, w)) => Err(format!("element {i}: got {g}, want {w} (atol {atol}, rtol {rtol})")),
    }
}

fn head(t: &TensorData) -> Vec<f32> {
    t.to_f32_vec().into_iter().take(16).collect()
}

/// A packaged real model under `target/models/` (see `scripts/fetch-models.sh`), or `None` with the
/// reason printed. With `TASKLOOM_REQUIRE_MODELS=1` (set in CI) a missing model fails the test.
pub fn model_or_skip(test: &str, rel: &str) -> Option<std::path::PathBuf> {
    let root = std::env::var("TASKLOOM_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models"));
    let p = root.join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("TASKLOOM_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("{test}: TASKLOOM_REQUIRE_MODELS=1 but {} is missing (run scripts/fetch-models.sh)", p.display());
    }
    eprintln!("SKIP {test}: {} is missing (run scripts/fetch-models.sh)", p.display());
    None
}

/// A committed fixture file, parsed as JSON.
pub fn fixture_json(name: &str) -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Every number of a JSON value (nested arrays flattened, row-major) as f32: expected outputs in
/// the fixtures' `expected.json` files.
pub fn json_floats(v: &serde_json::Value) -> Vec<f32> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().expect("a number") as f32),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// The `config.json` of a Hugging Face folder, parsed.
pub fn hf_config(dir: &std::path::Path) -> taskloom::models::config::ModelConfig {
    taskloom::models::config::ModelConfig::parse("config.json", &std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}
