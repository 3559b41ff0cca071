//! Unit tests of `combine.rs` (kept apart so that file stays readable): the algebraic identities
//! each type promises, hand-checked TIES / magnitude cases, DARE statistics and determinism, errors.

use super::*;
use crate::sparsify::{bernoulli_mask, uniform};

fn rand(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64).map(|i| uniform(seed, 0xABCD, i) * 2.0 - 1.0).collect()
}

fn config(r: usize, alpha: f32, targets: &[&str]) -> LoraConfig {
    let names: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    LoraConfig {
        r,
        lora_alpha: alpha,
        use_rslora: false,
        fan_in_fan_out: false,
        target_modules: Targets::Names(names.clone()),
        rank_pattern: BTreeMap::new(),
        alpha_pattern: BTreeMap::new(),
        modules_to_save: Vec::new(),
        raw: serde_json::json!({"r": r, "lora_alpha": alpha, "target_modules": names, "peft_type": "LORA"}),
    }
}

fn module(r: usize, inp: usize, out: usize, scale: f32, seed: u64) -> LoraModule {
    LoraModule { a: rand(r * inp, seed), b: rand(out * r, seed + 1000), r, inp, out, scale }
}

/// An adapter of rank `r` on `q` (8→6) and `v` (8→4), scale alpha/r.
fn adapter(name: &str, r: usize, alpha: f32, seed: u64) -> Adapter {
    let s = alpha / r as f32;
    let modules = [("l.q", module(r, 8, 6, s, seed)), ("l.v", module(r, 8, 4, s, seed + 1))];
    Adapter {
        name: name.into(),
        config: config(r, alpha, &["q", "v"]),
        modules: modules.into_iter().map(|(k, m)| (k.to_string(), m)).collect(),
        saved: BTreeMap::new(),
    }
}

/// `scale · B · A` as `[Out, In]` in f64.
fn product(m: &LoraModule) -> Vec<f64> {
    let mut d = vec![0.0; m.out * m.inp];
    for o in 0..m.out {
        for i in 0..m.inp {
            d[o * m.inp + i] = (0..m.r).map(|j| m.b[o * m.r + j] as f64 * m.a[j * m.inp + i] as f64).sum::<f64>() * m.scale as f64;
        }
    }
    d
}

fn weighted_sum(inputs: &[(&Adapter, f32)], name: &str) -> Vec<f64> {
    let mut acc: Vec<f64> = Vec::new();
    for (a, w) in inputs {
        let p = product(&a.modules[name]);
        acc.resize(p.len(), 0.0);
        acc.iter_mut().zip(p).for_each(|(x, y)| *x += *w as f64 * y);
    }
    acc
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn opts(c: Combination) -> CombineOptions {
    CombineOptions::new("mix", c)
}

#[test]
fn cat_is_the_exact_weighted_sum() {
    let (a, b, c) = (adapter("a", 2, 4.0, 1), adapter("b", 3, 8.0, 2), adapter("c", 4, 2.0, 3));
    let inputs = [(&a, 0.6), (&b, -0.3), (&c, 1.2)];
    let out = combine(&inputs, &opts(Combination::Cat)).unwrap();
    assert_eq!((out.config.r, out.config.lora_alpha), (9, 9.0));
    for name in ["l.q", "l.v"] {
        let m = &out.modules[name];
        assert_eq!((m.r, m.scale), (9, 1.0));
        assert!(max_diff(&product(m), &weighted_sum(&inputs, name)) < 1e-6);
    }
}

#[test]
fn full_rank_svd_is_the_exact_weighted_sum() {
    let (a, b) = (adapter("a", 2, 4.0, 4), adapter("b", 3, 6.0, 5));
    let inputs = [(&a, 0.7), (&b, -0.4)];
    // svd_rank 4: `l.v` (8→4) is then full rank (dense path, Σ r = 5 ≥ 4); `l.q` (8→6) is not.
    let mut o = opts(Combination::Svd);
    o.svd_rank = Some(4);
    let out = combine(&inputs, &o).unwrap();
    for name in ["l.q", "l.v"] {
        let want = weighted_sum(&inputs, name);
        let got = product(&out.modules[name]);
        if name == "l.v" {
            assert!(max_diff(&got, &want) < 1e-5, "{name}");
        } else {
            // Rank 4 of a rank-5 matrix: the error is the 5th singular value, not zero.
            assert!(max_diff(&got, &want) > 1e-4);
        }
    }
    o.svd_rank = Some(5);
    // 5 is above what the 8→4 module `l.v` can hold.
    let out = combine(&inputs, &o);
    assert!(matches!(out, Err(Error::InvalidParam { .. })), "{out:?}");
    let q_only = |x: &Adapter| Adapter { modules: x.modules.iter().filter(|(k, _)| *k == "l.q").map(|(k, v)| (k.clone(), v.clone())).collect(), ..x.clone() };
    let (aq, bq) = (q_only(&a), q_only(&b));
    let inputs = [(&aq, 0.7), (&bq, -0.4)];
    let out = combine(&inputs, &o).unwrap();
    let m = &out.modules["l.q"];
    assert_eq!((m.r, m.inp, m.out), (5, 8, 6));
    assert!(max_diff(&product(m), &weighted_sum(&inputs, "l.q")) < 1e-5);
}

#[test]
fn pruned_svd_at_density_one_is_the_exact_sum() {
    // ties_svd / magnitude_prune_svd at density 1 prune nothing; at full rank they return the
    // operator's dense result, which for magnitude_prune is the weighted sum (dense SVD path).
    let (a, b) = (adapter("a", 3, 3.0, 7), adapter("b", 3, 6.0, 8));
    let inputs = [(&a, 0.5), (&b, 0.25)];
    let mut o = opts(Combination::MagnitudePruneSvd);
    o.density = Some(1.0);
    o.svd_rank = Some(4);
    let out = combine(&inputs, &o).unwrap();
    assert!(max_diff(&product(&out.modules["l.v"]), &weighted_sum(&inputs, "l.v")) < 1e-5);
}

#[test]
fn linear_combines_the_factor_stacks_with_cross_terms() {
    let (a, b) = (adapter("a", 3, 6.0, 10), adapter("b", 3, 1.5, 11));
    for w in [[0.6f32, 0.4], [0.7, -0.3]] {
        let inputs = [(&a, w[0]), (&b, w[1])];
        let out = combine(&inputs, &opts(Combination::Linear)).unwrap();
        for name in ["l.q", "l.v"] {
            let (ma, mb) = (&a.modules[name], &b.modules[name]);
            let cs: Vec<f64> = [(w[0], ma.scale), (w[1], mb.scale)].iter().map(|&(w, s)| w as f64 * s as f64).collect();
            let want_a: Vec<f64> = (0..ma.a.len())
                .map(|i| cs[0].signum() * cs[0].abs().sqrt() * ma.a[i] as f64 + cs[1].signum() * cs[1].abs().sqrt() * mb.a[i] as f64)
                .collect();
            let want_b: Vec<f64> = (0..ma.b.len()).map(|i| cs[0].abs().sqrt() * ma.b[i] as f64 + cs[1].abs().sqrt() * mb.b[i] as f64).collect();
            let m = &out.modules[name];
            let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            assert!(max_diff(&f64s(&m.a), &want_a) < 1e-6);
            assert!(max_diff(&f64s(&m.b), &want_b) < 1e-6);
            // Not the sum of the deltas (cross terms BᵢAⱼ).
            assert!(max_diff(&product(m), &weighted_sum(&inputs, name)) > 1e-3);
        }
    }
}

/// Two rank-1 adapters on one 4→2 module, scale 1, for hand-checked operators.
fn pair(a0: [f32; 4], a1: [f32; 4]) -> (Adapter, Adapter) {
    let mk = |name: &str, a: [f32; 4]| Adapter {
        name: name.into(),
        config: config(1, 1.0, &["m"]),
        modules: [("m".to_string(), LoraModule { a: a.to_vec(), b: vec![1.0, -2.0], r: 1, inp: 4, out: 2, scale: 1.0 })].into(),
        saved: BTreeMap::new(),
    };
    (mk("x", a0), mk("y", a1))
}

#[test]
fn ties_by_hand() {
    let (x, y) = pair([3.0, -1.0, 2.0, 0.5], [-4.0, 2.0, 1.0, 0.25]);
    // Weights 4 and 1 → coefficients √4 = 2 and 1 on both stacks.
    let mut o = opts(Combination::Ties);
    o.density = Some(0.5);
    let out = combine(&[(&x, 4.0), (&y, 1.0)], &o).unwrap();
    // Top-2 |x|: x → [3, 0, 2, 0], y → [-4, 2, 0, 0]. Total signs: [-, +, +, +].
    // Agreeing, weighted, over the count: [-4·1, 2·1, 2·2, 0].
    assert_eq!(out.modules["m"].a, vec![-4.0, 2.0, 4.0, 0.0]);
    // B (2 entries, keep 1): x → [0, -2], y → [0, -2]; both agree: (-2·2 + -2·1) / 2.
    assert_eq!(out.modules["m"].b, vec![0.0, -3.0]);
    // Frequency: entry 0 has signs +1 and -1 → sum 0 → + → x's 3·2 wins.
    o.majority_sign = MajoritySign::Frequency;
    let out = combine(&[(&x, 4.0), (&y, 1.0)], &o).unwrap();
    assert_eq!(out.modules["m"].a, vec![6.0, 2.0, 4.0, 0.0]);
    // A negative weight flips A's coefficient after the election (PEFT elects on unweighted tensors).
    o.majority_sign = MajoritySign::Total;
    let out = combine(&[(&x, 4.0), (&y, -1.0)], &o).unwrap();
    assert_eq!(out.modules["m"].a, vec![4.0, -2.0, 4.0, 0.0]);
}

#[test]
fn magnitude_prune_by_hand() {
    let (x, y) = pair([3.0, -1.0, 2.0, 0.5], [-4.0, 2.0, 1.0, 0.25]);
    let mut o = opts(Combination::MagnitudePrune);
    o.density = Some(0.75); // keep int(0.75·4) = 3
    let out = combine(&[(&x, 4.0), (&y, 1.0)], &o).unwrap();
    // x → [3, -1, 2, 0]·2, y → [-4, 2, 1, 0]·1.
    assert_eq!(out.modules["m"].a, vec![2.0, 0.0, 5.0, 0.0]);
    // B: keep int(0.75·2) = 1 → [0, -2] each: -2·2 + -2·1.
    assert_eq!(out.modules["m"].b, vec![0.0, -6.0]);
}

#[test]
fn dare_keep_rate_rescale_and_determinism() {
    let mk = |name: &str, seed| Adapter {
        name: name.into(),
        config: config(8, 8.0, &["m"]),
        modules: [("m".to_string(), module(8, 256, 128, 1.0, seed))].into(),
        saved: BTreeMap::new(),
    };
    let (x, y) = (mk("x", 20), mk("y", 21));
    let (p, seed) = (0.3f32, 77u64);
    let mut o = opts(Combination::DareLinear);
    o.density = Some(p as f64);
    o.seed = seed;
    // y's weight 0: the result is x's pruned factors times √1.
    let out = combine(&[(&x, 1.0), (&y, 0.0)], &o).unwrap();
    let m = &out.modules["m"];
    let want = bernoulli_mask(seed, tensor_key("m.lora_A.0"), m.a.len(), p);
    for (j, (&got, &keep)) in m.a.iter().zip(&want).enumerate() {
        assert_eq!(got, if keep { x.modules["m"].a[j] / p } else { 0.0 });
    }
    let n = m.b.len() as f64;
    let kept = m.b.iter().filter(|v| **v != 0.0).count() as f64;
    let sd = (n * p as f64 * (1.0 - p as f64)).sqrt();
    assert!((kept - n * p as f64).abs() < 4.0 * sd, "kept {kept} of {n}");
    // Same seed → bitwise equal; another seed → different.
    let again = combine(&[(&x, 1.0), (&y, 0.0)], &o).unwrap();
    assert_eq!(again.modules["m"].a, m.a);
    o.seed = seed + 1;
    assert_ne!(combine(&[(&x, 1.0), (&y, 0.0)], &o).unwrap().modules["m"].a, m.a);
    // The svd variants draw one mask per dense delta: `{module}.delta.{i}`.
    o.combination = Combination::DareLinearSvd;
    o.seed = seed;
    let a1 = combine(&[(&x, 1.0), (&y, 0.5)], &o).unwrap();
    let a2 = combine(&[(&x, 1.0), (&y, 0.5)], &o).unwrap();
    assert_eq!(a1.modules["m"].a, a2.modules["m"].a);
}

#[test]
fn imported_masks_replace_the_rng() {
    let (a, b) = (adapter("a", 2, 4.0, 30), adapter("b", 2, 2.0, 31));
    for c in [Combination::DareTies, Combination::DareTiesSvd] {
        let mut o = opts(c);
        o.density = Some(0.5);
        o.seed = 5;
        let from_rng = combine(&[(&a, 0.6), (&b, 0.4)], &o).unwrap();
        // The same masks, exported under the documented names.
        let mut masks = Masks::new();
        for (i, ad) in [&a, &b].into_iter().enumerate() {
            for (name, m) in &ad.modules {
                let parts: Vec<(String, Vec<usize>)> = if c.is_svd() {
                    vec![(format!("{name}.delta.{i}"), vec![m.out, m.inp])]
                } else {
                    vec![(format!("{name}.lora_A.{i}"), vec![m.r, m.inp]), (format!("{name}.lora_B.{i}"), vec![m.out, m.r])]
                };
                for (key, dims) in parts {
                    let n = dims.iter().product();
                    let v = bernoulli_mask(5, tensor_key(&key), n, 0.5).iter().map(|&k| k as u8 as f32).collect();
                    masks.insert(key, TensorData::f32(&dims, v).unwrap());
                }
            }
        }
        o.seed = 999; // ignored with imported masks
        o.masks = Some(masks.clone());
        let imported = combine(&[(&a, 0.6), (&b, 0.4)], &o).unwrap();
        for name in ["l.q", "l.v"] {
            assert_eq!(imported.modules[name].b, from_rng.modules[name].b, "{c}");
        }
        let first = masks.keys().next().unwrap().clone();
        masks.remove(&first);
        o.masks = Some(masks);
        assert!(matches!(combine(&[(&a, 0.6), (&b, 0.4)], &o), Err(Error::InvalidParam { .. })));
    }
}

#[test]
fn modules_present_in_some_adapters_only() {
    let (a, mut b) = (adapter("a", 2, 4.0, 40), adapter("b", 3, 3.0, 41));
    b.modules.remove("l.v");
    b.modules.insert("l.k".into(), module(3, 8, 4, 1.0, 42));
    let out = combine(&[(&a, 0.5), (&b, 2.0)], &opts(Combination::Cat)).unwrap();
    assert_eq!(out.modules.keys().collect::<Vec<_>>(), ["l.k", "l.q", "l.v"]);
    // `l.v` only in a: its 2 rows first, then zero padding to r' = 5.
    let v = &out.modules["l.v"];
    assert_eq!(v.r, 5);
    assert!(v.a[2 * 8..].iter().all(|x| *x == 0.0));
    assert!(max_diff(&product(v), &product(&a.modules["l.v"]).iter().map(|x| x * 0.5).collect::<Vec<_>>()) < 1e-6);
}

#[test]
fn config_is_what_peft_writes() {
    let (mut a, mut b) = (adapter("a", 4, 8.0, 50), adapter("b", 4, 4.0, 51));
    b.config.target_modules = Targets::Names(vec!["v".into(), "k".into()]);
    a.config.use_rslora = true;
    let mut o = opts(Combination::Svd);
    o.svd_rank = Some(3);
    let out = combine(&[(&a, 1.0), (&b, 1.0)], &o).unwrap();
    assert_eq!(out.name, "mix");
    assert_eq!(out.config.target_modules, Targets::Names(vec!["k".into(), "q".into(), "v".into()]));
    assert_eq!((out.config.r, out.config.lora_alpha), (3, 3.0));
    assert_eq!(out.config.raw["lora_alpha"], serde_json::json!(3));
    // The first adapter's rsLoRA flag is copied: scale r'/√r'.
    assert!(out.config.use_rslora && (out.modules["l.q"].scale - 3f32.sqrt()).abs() < 1e-6);
    a.config.target_modules = Targets::Regex(".*q".into());
    b.config.target_modules = Targets::Regex(".*v".into());
    let out = combine(&[(&a, 1.0), (&b, 1.0)], &o).unwrap();
    assert_eq!(out.config.target_modules, Targets::Regex("(.*q)|(.*v)".into()));
    b.config.target_modules = Targets::Names(vec!["v".into()]);
    assert!(matches!(combine(&[(&a, 1.0), (&b, 1.0)], &o), Err(Error::Adapter { .. })));
}

#[test]
fn one_adapter_is_always_linear() {
    let a = adapter("a", 2, 4.0, 60);
    let mut o = opts(Combination::Cat);
    o.density = Some(0.5);
    let out = combine(&[(&a, -0.5)], &o).unwrap();
    let m = &out.modules["l.q"];
    assert_eq!(m.r, 2);
    let want: Vec<f64> = product(&a.modules["l.q"]).iter().map(|x| -0.5 * x).collect();
    assert!(max_diff(&product(m), &want) < 1e-6);
}

#[test]
fn svd_clamp_bounds_the_factors() {
    let (a, b) = (adapter("a", 2, 4.0, 70), adapter("b", 2, 4.0, 71));
    let mut o = opts(Combination::Svd);
    o.svd_clamp = Some(0.9);
    let out = combine(&[(&a, 1.0), (&b, 1.0)], &o).unwrap();
    let m = &out.modules["l.q"];
    let mut all: Vec<f32> = m.b.iter().chain(&m.a).copied().collect();
    all.sort_by(f32::total_cmp);
    let hi = all.iter().fold(0.0f32, |x, y| x.max(*y));
    assert!(all.iter().all(|x| x.abs() <= hi));
    assert!(all.iter().filter(|x| **x == hi).count() >= 2, "values above the quantile are clipped to it");
}

#[test]
fn bad_input_is_a_typed_error() {
    let (a, b) = (adapter("a", 2, 4.0, 80), adapter("b", 3, 4.0, 81));
    let is_param = |r: Result<Adapter>| matches!(r, Err(Error::InvalidParam { .. }));
    let is_adapter = |r: Result<Adapter>, who: &str| matches!(r, Err(Error::Adapter { ref adapter, .. }) if adapter == who);
    assert!(is_param(combine(&[], &opts(Combination::Cat))));
    for d in [0.0, -0.1, 1.5, f64::NAN] {
        let mut o = opts(Combination::Ties);
        o.density = Some(d);
        assert!(is_param(combine(&[(&a, 1.0), (&a, 1.0)], &o)), "density {d}");
    }
    assert!(is_param(combine(&[(&a, 1.0), (&a, 1.0)], &opts(Combination::DareLinear))), "density required");
    // Different r: refused by the factor-stack types, fine for cat and svd.
    for c in [Combination::Linear, Combination::Ties, Combination::DareTies, Combination::MagnitudePrune] {
        let mut o = opts(c);
        o.density = Some(0.5);
        assert!(is_adapter(combine(&[(&a, 1.0), (&b, 1.0)], &o), "b"), "{c}");
    }
    assert!(combine(&[(&a, 1.0), (&b, 1.0)], &opts(Combination::Cat)).is_ok());
    assert!(combine(&[(&a, 1.0), (&b, 1.0)], &opts(Combination::Svd)).is_ok());
    assert!(is_adapter(combine(&[(&a, f32::NAN), (&b, 1.0)], &opts(Combination::Cat)), "a"));
    let mut nan = b.clone();
    nan.modules.get_mut("l.q").unwrap().b[3] = f32::INFINITY;
    assert!(is_adapter(combine(&[(&a, 1.0), (&nan, 1.0)], &opts(Combination::Cat)), "b"));
    let mut wrong = b.clone();
    wrong.modules.insert("l.q".into(), module(3, 8, 5, 1.0, 82));
    assert!(is_adapter(combine(&[(&a, 1.0), (&wrong, 1.0)], &opts(Combination::Cat)), "b"));
    let mut short = b.clone();
    short.modules.get_mut("l.q").unwrap().a.pop();
    assert!(is_adapter(combine(&[(&a, 1.0), (&short, 1.0)], &opts(Combination::Svd)), "b"));
    assert!(is_param("nope".parse::<Combination>().map(|_| a.clone())));
    for c in Combination::ALL {
        assert_eq!(c.name().parse::<Combination>().unwrap(), c);
    }
}
