//! LoRA combinations against PEFT 0.21.2's `add_weighted_adapter` (fixtures by
//! tests/fixtures/make_lora_goldens.py: `lora/combos/`, adapters `llama/d` and `llama/e`).
//!
//! Every combination type: the factors within 1e-6 of PEFT's for the factor-stack types and `cat`;
//! `B'A'` (the singular vectors' signs are arbitrary) within 1e-5 of the largest entry for the
//! `*svd` types; DARE types through PEFT's exported masks. The config is what PEFT wrote, and the
//! adapter survives a write/read round trip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use taskloom::formats::safetensors::SafeTensors;
use taskloom::lora::combine::{combine, Combination, CombineOptions, Masks};
use taskloom::lora::{Adapter, LoraModule, Targets};
use taskloom_tests::{first_violation, fixture_json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn load(name: &str, rel: &str) -> Adapter {
    Adapter::load_dir(name, root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn masks(rel: &str) -> Masks {
    let st = SafeTensors::open(root().join(rel)).unwrap();
    st.names().into_iter().map(|n| (n.to_string(), st.tensor(n).unwrap())).collect()
}

/// `scale·B·A` `[Out, In]` in f64.
fn delta(m: &LoraModule) -> Vec<f64> {
    let mut d = vec![0.0; m.out * m.inp];
    for o in 0..m.out {
        for i in 0..m.inp {
            let dot: f64 = (0..m.r).map(|j| m.b[o * m.r + j] as f64 * m.a[j * m.inp + i] as f64).sum();
            d[o * m.inp + i] = dot * m.scale as f64;
        }
    }
    d
}

fn names(t: &Targets) -> BTreeSet<String> {
    match t {
        Targets::Names(n) => n.iter().cloned().collect(),
        Targets::Regex(r) => [r.clone()].into(),
    }
}

/// Our combination of the case's adapters with its parameters.
fn ours(case: &serde_json::Value, adapters: &serde_json::Value) -> Adapter {
    let inputs: Vec<Adapter> = case["adapters"].as_array().unwrap().iter().map(|n| load(n.as_str().unwrap(), adapters[n.as_str().unwrap()].as_str().unwrap())).collect();
    let weights: Vec<f32> = case["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap() as f32).collect();
    let pairs: Vec<(&Adapter, f32)> = inputs.iter().zip(weights).collect();
    let mut o = CombineOptions::new("combined", case["combination_type"].as_str().unwrap().parse().unwrap());
    o.density = case["density"].as_f64();
    o.svd_rank = case["svd_rank"].as_u64().map(|k| k as usize);
    o.majority_sign = case["majority_sign_method"].as_str().unwrap().parse().unwrap();
    o.masks = case["masks"].as_str().map(masks);
    combine(&pairs, &o).unwrap()
}

#[test]
fn every_combination_type_equals_peft() {
    let index = fixture_json("lora/combos/index.json");
    let mut seen = BTreeSet::new();
    for (key, case) in index["combinations"].as_object().unwrap() {
        let c: Combination = case["combination_type"].as_str().unwrap().parse().unwrap();
        seen.insert(c);
        let got = ours(case, &index["adapters"]);
        let want = load(key, case["dir"].as_str().unwrap());
        let mut worst = 0.0f64;
        assert_eq!(got.config.r, case["r"].as_u64().unwrap() as usize, "{key}: r");
        assert_eq!(got.config.lora_alpha, case["lora_alpha"].as_f64().unwrap() as f32, "{key}: lora_alpha");
        assert_eq!((got.config.r, got.config.lora_alpha, got.config.use_rslora), (want.config.r, want.config.lora_alpha, want.config.use_rslora), "{key}");
        assert_eq!(names(&got.config.target_modules), names(&want.config.target_modules), "{key}: target_modules");
        assert_eq!(got.modules.keys().collect::<Vec<_>>(), want.modules.keys().collect::<Vec<_>>(), "{key}: modules");
        for (name, g) in &got.modules {
            let w = &want.modules[name];
            assert_eq!((g.r, g.inp, g.out, g.scale), (w.r, w.inp, w.out, w.scale), "{key} {name}: shape/scale");
            if c.is_svd() {
                let (dg, dw) = (delta(g), delta(w));
                let top = dw.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                let err = dg.iter().zip(&dw).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(err <= 1e-5 * top, "{key} {name}: B'A' differs from PEFT's by {err:e} (largest entry {top:e})");
                worst = worst.max(err / top);
            } else {
                for (part, gv, wv) in [("lora_A", &g.a, &w.a), ("lora_B", &g.b, &w.b)] {
                    if let Some((i, x, y)) = first_violation(gv, wv, 1e-6, 1e-6) {
                        panic!("{key} {name}.{part}: element {i} is {x}, PEFT has {y}");
                    }
                    worst = gv.iter().zip(wv.iter()).map(|(x, y)| (x - y).abs() as f64).fold(worst, f64::max);
                }
            }
        }
        let what = if c.is_svd() { "max |B'A' - PEFT's| / max |PEFT's|" } else { "max |factor - PEFT's|" };
        eprintln!("{key:>20}: {what} = {worst:.1e}");
    }
    let missing: Vec<_> = Combination::ALL.iter().filter(|c| !seen.contains(c)).collect();
    assert!(missing.is_empty(), "no fixture for {missing:?}");
}

#[test]
fn combined_adapter_round_trips_through_a_peft_folder() {
    let index = fixture_json("lora/combos/index.json");
    let dir = std::env::temp_dir().join(format!("taskloom-combine-{}", std::process::id()));
    for key in ["cat", "dare_ties_svd"] {
        let got = ours(&index["combinations"][key], &index["adapters"]);
        got.save_dir(&dir).unwrap();
        let back = Adapter::load_dir("back", &dir).unwrap();
        assert_eq!((back.config.r, back.config.lora_alpha), (got.config.r, got.config.lora_alpha), "{key}");
        assert_eq!(back.config.target_modules, got.config.target_modules, "{key}");
        for (name, m) in &got.modules {
            let b = &back.modules[name];
            assert_eq!((&b.a, &b.b, b.scale), (&m.a, &m.b, m.scale), "{key} {name}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dare_on_our_rng_is_seeded_and_close_in_expectation() {
    // Without PEFT's masks, the counter-based RNG: same seed → same adapter; another seed →
    // another; the density-1 limit is linear.
    let index = fixture_json("lora/combos/index.json");
    let case = &index["combinations"]["dare_linear"];
    let (d, e) = (load("d", index["adapters"]["d"].as_str().unwrap()), load("e", index["adapters"]["e"].as_str().unwrap()));
    let pairs = [(&d, 0.6f32), (&e, 0.4f32)];
    let mut o = CombineOptions::new("x", Combination::DareLinear);
    o.density = case["density"].as_f64();
    o.seed = 11;
    let (a1, a2) = (combine(&pairs, &o).unwrap(), combine(&pairs, &o).unwrap());
    o.seed = 12;
    let a3 = combine(&pairs, &o).unwrap();
    for (n, m) in &a1.modules {
        assert_eq!(m.a, a2.modules[n].a);
        assert_ne!(m.a, a3.modules[n].a);
    }
    o.density = Some(1.0);
    let full = combine(&pairs, &o).unwrap();
    let linear = load("linear", index["combinations"]["linear"]["dir"].as_str().unwrap());
    for (n, m) in &full.modules {
        assert!(first_violation(&m.a, &linear.modules[n].a, 1e-6, 1e-6).is_none(), "{n}");
    }
}
