//! Model merging against mergekit 0.1.5 (fixtures by tests/fixtures/make_merge_goldens.py): every
//! method's merged tensors equal mergekit's within 1e-6 on the CPU and the GPU (DARE / DELLA with
//! mergekit's own masks imported), plus our RNG's statistics, the output folder, and bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use taskloom::formats::safetensors::SafeTensors;
use taskloom::merge::{self, MemSink, Options, Recipe};
use taskloom::models::hf::{DirFiles, Files, MemFiles};
use taskloom::{Device, Error};
use taskloom_tests::{first_violation, gpu_or_skip};

const CASES: [&str; 15] = [
    "linear",
    "task_arithmetic",
    "ties",
    "ties_unnormalized",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "slerp",
    "model_stock",
    "model_stock_filter_wise",
    "passthrough",
    "gradient_filter",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/merge")
}

fn recipe(case: &str) -> Recipe {
    merge::read_recipe(&fixtures().join(format!("{case}.yml"))).unwrap()
}

fn tensors(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for (name, bytes) in files.iter().filter(|(n, _)| n.ends_with(".safetensors") && n.starts_with("model")) {
        let st = SafeTensors::from_bytes(name.clone(), bytes.clone()).unwrap();
        for t in st.names() {
            out.insert(t.to_string(), st.tensor(t).unwrap().to_f32_vec());
        }
    }
    out
}

fn run(r: &Recipe, dev: &Device, opts: &Options) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let files = merge::model_dirs(r)?;
    let mut sink = MemSink::default();
    pollster::block_on(merge::merge(r, &files, dev, opts, &mut sink, &mut |_| {}))?;
    Ok(sink.files)
}

fn with_masks(case: &str) -> Options {
    let p = fixtures().join(format!("expected/{case}.masks.safetensors"));
    Options { masks: p.exists().then(|| SafeTensors::open(&p).unwrap()), ..Options::default() }
}

fn check_against_mergekit(dev: &Device) {
    for case in CASES {
        let got = tensors(&run(&recipe(case), dev, &with_masks(case)).unwrap_or_else(|e| panic!("{case}: {e}")));
        let st = SafeTensors::open(fixtures().join(format!("expected/{case}.safetensors"))).unwrap();
        assert_eq!(got.len(), st.names().len(), "{case}: tensor count ({:?})", got.keys().collect::<Vec<_>>());
        for name in st.names() {
            let want = st.tensor(name).unwrap().to_f32_vec();
            let g = got.get(name).unwrap_or_else(|| panic!("{case}: no tensor {name}"));
            if let Some((i, gv, wv)) = first_violation(g, &want, 1e-6, 0.0) {
                panic!("{case} on {}: {name}[{i}]: got {gv}, mergekit {wv}", dev.kind());
            }
        }
    }
}

#[test]
fn every_method_equals_mergekit_on_cpu() {
    check_against_mergekit(&Device::cpu());
}

#[test]
fn every_method_equals_mergekit_on_gpu() {
    if let Some(dev) = gpu_or_skip("every_method_equals_mergekit_on_gpu") {
        check_against_mergekit(&dev);
    }
}

/// Our own RNG (no imported masks): the kept fraction is Binomial(n, ρ) within 4σ per tensor, the L1
/// rescale restores each task vector's L1 norm, and a seed fixes the result.
#[test]
fn dare_with_our_rng_keeps_density_and_l1() {
    let r = Recipe::parse(
        &fixtures().join("x.yml").display().to_string(),
        "merge_method: dare_linear\nbase_model: ../tiny/llama\nmodels:\n  - model: ft3\n    parameters: {weight: 1.0, density: 0.3}\n",
    )
    .unwrap();
    let opts = |seed| Options { random_seed: Some(seed), ..Options::default() };
    let a = tensors(&run(&r, &Device::cpu(), &opts(7)).unwrap());
    let b = tensors(&run(&r, &Device::cpu(), &opts(7)).unwrap());
    let c = tensors(&run(&r, &Device::cpu(), &opts(8)).unwrap());
    assert_eq!(a, b, "same seed, same merge");
    assert_ne!(a, c, "another seed, another mask");
    let base = SafeTensors::open(fixtures().join("../tiny/llama/model.safetensors")).unwrap();
    let ft = SafeTensors::open(fixtures().join("ft3/model.safetensors")).unwrap();
    let (mut kept, mut total) = (0usize, 0usize);
    for name in base.names() {
        let (b0, f) = (base.tensor(name).unwrap().to_f32_vec(), ft.tensor(name).unwrap().to_f32_vec());
        let delta: Vec<f32> = f.iter().zip(&b0).map(|(x, y)| x - y).collect();
        let merged: Vec<f32> = a[name].iter().zip(&b0).map(|(x, y)| x - y).collect();
        let k = merged.iter().filter(|v| **v != 0.0).count();
        let n = delta.len() as f64;
        assert!((k as f64 - 0.3 * n).abs() <= 4.0 * (n * 0.21).sqrt() + 1.0, "{name}: kept {k} of {n}");
        let (l1d, l1m) = (delta.iter().map(|v| v.abs() as f64).sum::<f64>(), merged.iter().map(|v| v.abs() as f64).sum::<f64>());
        assert!((l1d - l1m).abs() <= 1e-5 * l1d, "{name}: L1 {l1m} vs {l1d}");
        kept += k;
        total += delta.len();
    }
    let p = kept as f64 / total as f64;
    assert!((p - 0.3).abs() < 4.0 * (0.21 / total as f64).sqrt(), "overall keep rate {p}");
}

/// peft semantics: identical to mergekit's when every weight is 1 (research notes §8), different with
/// unequal weights (weighted vs unweighted sign election, weight sum vs count divisor).
#[test]
fn peft_semantics_switch() {
    let text = std::fs::read_to_string(fixtures().join("ties.yml")).unwrap();
    let file = fixtures().join("ties.yml").display().to_string();
    let ones = text.replace("weight: 0.3", "weight: 1.0").replace("weight: 0.7", "weight: 1.0");
    let peft = |t: &str| format!("{t}taskloom:\n  semantics: peft\n");
    let m = |t: &str| tensors(&run(&Recipe::parse(&file, t).unwrap(), &Device::cpu(), &Options::default()).unwrap());
    assert_eq!(m(&ones), m(&peft(&ones)));
    assert_ne!(m(&text), m(&peft(&text)));
}

/// LiNeS `α + β·t` equals mergekit's own `lambda` gradient `[α, α+β]` (same per-layer positions).
#[test]
fn lines_scaling_equals_a_lambda_gradient() {
    let file = fixtures().join("ties.yml").display().to_string();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines = text.replace("dtype: float32", "parameters:\n  lines_alpha: 0.4\n  lines_beta: 0.6\ndtype: float32");
    let grad = text.replace("dtype: float32", "parameters:\n  lambda: [0.4, 1.0]\ndtype: float32");
    let m = |t: &str| tensors(&run(&Recipe::parse(&file, t).unwrap(), &Device::cpu(), &Options::default()).unwrap());
    let (a, b, plain) = (m(&lines), m(&grad), m(&text));
    for (k, v) in &a {
        assert!(first_violation(v, &b[k], 1e-7, 0.0).is_none(), "{k}");
    }
    assert_ne!(a, plain);
}

/// TALL masks are written bit-packed (numpy packbits, MSB first) and equal the definition; Consensus
/// keeps the base where fewer than k masks agree.
#[test]
fn tall_masks_and_consensus() {
    let file = fixtures().join("task_arithmetic.yml").display().to_string();
    let text = std::fs::read_to_string(&file).unwrap().replace("  lambda: 0.8\n", "  lambda: 0.8\n  tall_masks: true\n  consensus_k: 2\n");
    let r = Recipe::parse(&file, &text).unwrap();
    let out = run(&r, &Device::cpu(), &Options::default()).unwrap();
    let plain = tensors(&run(&recipe("task_arithmetic"), &Device::cpu(), &Options::default()).unwrap());
    let merged = tensors(&out);
    let masks = SafeTensors::from_bytes("tall", out["tall_masks.safetensors"].clone()).unwrap();
    let base = SafeTensors::open(fixtures().join("../tiny/llama/model.safetensors")).unwrap();
    let fts: Vec<SafeTensors> = (1..=3).map(|i| SafeTensors::open(fixtures().join(format!("ft{i}/model.safetensors"))).unwrap()).collect();
    let name = "model.layers.1.mlp.down_proj.weight";
    let b0 = base.tensor(name).unwrap().to_f32_vec();
    let mtl: Vec<f32> = plain[name].iter().zip(&b0).map(|(x, y)| x - y).collect();
    let mut count = vec![0; b0.len()];
    for (k, ft) in fts.iter().enumerate() {
        let tau: Vec<f32> = ft.tensor(name).unwrap().to_f32_vec().iter().zip(&b0).map(|(x, y)| x - y).collect();
        let bits = masks.bytes(&format!("{name}:{k}")).unwrap();
        for j in 0..b0.len() {
            let want = tau[j].abs() > 0.6 * (mtl[j] - tau[j]).abs();
            let got = bits[j / 8] >> (7 - j % 8) & 1 == 1;
            assert_eq!(got, want, "task {k}, element {j}");
            count[j] += want as usize;
        }
    }
    for j in 0..b0.len() {
        let want = if count[j] >= 2 { plain[name][j] } else { b0[j] };
        assert_eq!(merged[name][j], want, "element {j}");
    }
    assert!(count.iter().any(|c| *c < 2) && count.iter().any(|c| *c >= 2), "consensus must both keep and drop");
}

/// The merged folder: config and tokenizer copied, shards + index when asked for small shards, and
/// it runs in our runtime with transformers' logits for mergekit's merge (expected/logits.json).
#[test]
fn merged_folder_is_a_loadable_model() {
    let dir = std::env::temp_dir().join(format!("taskloom-merge-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options { shard_bytes: 20_000, ..Options::default() };
    let s = pollster::block_on(merge::merge_to_dir(&recipe("ties"), &dir, &Device::cpu(), &opts, &mut |_| {})).unwrap();
    assert_eq!(s.tensors, 20);
    assert!(dir.join("model.safetensors.index.json").exists() && dir.join("tokenizer.json").exists() && dir.join("config.json").exists());
    let files = DirFiles(dir.clone());
    assert!(files.weights().unwrap().0.len() > 1, "expected several shards");
    let want = taskloom_tests::fixture_json("merge/expected/logits.json");
    let ids: Vec<u32> = want["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let expected: Vec<f32> = want["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect();
    let cfg = taskloom::models::config::ModelConfig::parse("config.json", &std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let taskloom::models::config::ModelConfig::Llama(cfg) = cfg else { panic!("not a decoder") };
    let dev = Device::cpu();
    let model = taskloom::models::llama::Llama::load(&dev, cfg, &files.weights().unwrap()).unwrap();
    let mut cache = model.new_cache();
    let logits = pollster::block_on(dev.download(&model.forward(&dev, &ids, &mut cache, true).unwrap())).unwrap();
    if let Some((i, g, w)) = first_violation(logits.as_f32().unwrap(), &expected, 1e-4, 1e-4) {
        panic!("logit {i}: got {g}, transformers on mergekit's merge {w}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn parse_err(yaml: &str) -> String {
    match Recipe::parse("bad.yml", yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => {
            assert!(matches!(e, Error::Recipe { .. }), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn bad_recipes_are_typed_errors() {
    let ok = "merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n    parameters: {weight: 1, density: 0.5}\n";
    assert!(Recipe::parse("ok.yml", ok).is_ok());
    assert!(parse_err("merge_method: [unclosed\n").contains("bad.yml"));
    assert!(parse_err(&ok.replace("ties", "frankenmerge")).contains("unknown method 'frankenmerge'"));
    assert!(parse_err(&format!("{ok}dtyp: float32\n")).contains("dtyp"));
    assert!(parse_err(&ok.replace("density", "densiti")).contains("unknown parameter 'densiti'"));
    assert!(parse_err(&ok.replace("base_model: b\n", "")).contains("needs a base_model"));
    assert!(parse_err(&format!("{ok}dtype: float8\n")).contains("float8"));
    assert!(parse_err(&format!("{ok}tokenizer_source: union\n")).contains("union"));
    assert!(parse_err("merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n  - model: c\nparameters: {t: 0.5}\n").contains("slerp"));
}

/// Bad models: density outside (0, 1], a missing tensor, a shape disagreement; each error names the
/// tensor and model, and a failed merge leaves no output folder.
#[test]
fn bad_models_are_typed_errors_and_leave_nothing() {
    let base = DirFiles(fixtures().join("../tiny/llama"));
    let read = |d: &DirFiles| -> BTreeMap<String, Vec<u8>> {
        ["config.json", "model.safetensors"].iter().map(|f| (f.to_string(), d.read(f).unwrap().unwrap())).collect()
    };
    let mut broken = read(&DirFiles(fixtures().join("ft1")));
    // Rewrite ft1 without one tensor and with another reshaped.
    let st = SafeTensors::from_bytes("ft1", broken["model.safetensors"].clone()).unwrap();
    let mut kept = Vec::new();
    for n in st.names() {
        if n == "model.layers.0.mlp.up_proj.weight" {
            continue;
        }
        let mut t = st.tensor(n).unwrap();
        if n == "model.norm.weight" {
            let v = t.to_f32_vec();
            t = taskloom::TensorData::f32(&[v.len() / 2, 2], v).unwrap();
        }
        kept.push((n.to_string(), t));
    }
    let refs: Vec<(&str, &taskloom::TensorData)> = kept.iter().map(|(n, t)| (n.as_str(), t)).collect();
    broken.insert("model.safetensors".into(), taskloom::formats::safetensors::serialize(&refs, None).unwrap());
    let r = Recipe::parse("r.yml", "merge_method: ties\nbase_model: base\nmodels:\n  - model: broken\n    parameters: {weight: 1, density: 0.5}\n").unwrap();
    let files: Vec<Box<dyn Files>> = vec![Box::new(MemFiles(read(&base))), Box::new(MemFiles(broken))];
    let mut sink = MemSink::default();
    let e = pollster::block_on(merge::merge(&r, &files, &Device::cpu(), &Options::default(), &mut sink, &mut |_| {})).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Merge { .. }), "{e:?}");
    assert!(msg.contains("model.layers.0.mlp.up_proj.weight") && msg.contains("broken"), "{msg}");

    let file = fixtures().join("ties.yml").display().to_string();
    let text = std::fs::read_to_string(&file).unwrap();
    for bad in ["density: 1.5", "density: 0", "density: -0.2"] {
        let r = Recipe::parse(&file, &text.replacen("density: 0.5", bad, 1)).unwrap();
        let dir = std::env::temp_dir().join(format!("taskloom-merge-bad-{}", std::process::id()));
        let e = pollster::block_on(merge::merge_to_dir(&r, &dir, &Device::cpu(), &Options::default(), &mut |_| {})).unwrap_err();
        assert!(e.to_string().contains("outside (0, 1]") && e.to_string().contains("ft1"), "{bad}: {e}");
        assert!(!dir.exists(), "a failed merge left {}", dir.display());
        let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!(".taskloom-merge-bad-{}", std::process::id())))
            .collect();
        assert!(leftovers.is_empty(), "partial folder left behind");
    }
    // Shape disagreement.
    let mut shaped = read(&DirFiles(fixtures().join("ft2")));
    let st = SafeTensors::from_bytes("ft2", shaped["model.safetensors"].clone()).unwrap();
    let kept: Vec<(String, taskloom::TensorData)> = st
        .names()
        .iter()
        .map(|n| {
            let t = st.tensor(n).unwrap();
            let t = if *n == "model.norm.weight" { taskloom::TensorData::f32(&[16, 2], t.to_f32_vec()).unwrap() } else { t };
            (n.to_string(), t)
        })
        .collect();
    let refs: Vec<(&str, &taskloom::TensorData)> = kept.iter().map(|(n, t)| (n.as_str(), t)).collect();
    shaped.insert("model.safetensors".into(), taskloom::formats::safetensors::serialize(&refs, None).unwrap());
    let files: Vec<Box<dyn Files>> = vec![Box::new(MemFiles(read(&base))), Box::new(MemFiles(shaped))];
    let e = pollster::block_on(merge::merge(&r_named("shaped"), &files, &Device::cpu(), &Options::default(), &mut MemSink::default(), &mut |_| {})).unwrap_err();
    assert!(e.to_string().contains("model.norm.weight") && e.to_string().contains("shape"), "{e}");
}

fn r_named(m: &str) -> Recipe {
    Recipe::parse("r.yml", &format!("merge_method: ties\nbase_model: base\nmodels:\n  - model: {m}\n    parameters: {{weight: 1, density: 0.5}}\n")).unwrap()
}

/// `--task-mask`: the merged model switched to one task equals a model built here from the
/// definition, θ_0 + m_t ⊙ τ_MTL with m_t = |τ_t| > λ·|τ_MTL − τ_t| (not read from the masks file);
/// a task is named by its model, folder name or index; an unknown one is a typed error.
#[test]
fn task_mask_switches_the_merged_model_to_one_task() {
    use taskloom::merge::task_mask::TaskWeights;
    use taskloom::models::hf::Shards;
    let file = fixtures().join("task_arithmetic.yml").display().to_string();
    let text = std::fs::read_to_string(&file).unwrap().replace("  lambda: 0.8\n", "  lambda: 0.8\n  tall_masks: true\n");
    let r = Recipe::parse(&file, &text).unwrap();
    let dir = std::env::temp_dir().join(format!("taskloom-merge-taskmask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    pollster::block_on(merge::merge_to_dir(&r, &dir, &Device::cpu(), &Options::default(), &mut |_| {})).unwrap();

    let base = SafeTensors::open(fixtures().join("../tiny/llama/model.safetensors")).unwrap();
    let merged = SafeTensors::open(dir.join("model.safetensors")).unwrap();
    let ft2 = SafeTensors::open(fixtures().join("ft2/model.safetensors")).unwrap();
    let mut want = Vec::new();
    let mut switched = 0;
    for name in merged.names() {
        let (b, m, t) = (base.tensor(name).unwrap(), merged.tensor(name).unwrap(), ft2.tensor(name).unwrap());
        let (b, m, t) = (b.to_f32_vec(), m.to_f32_vec(), t.to_f32_vec());
        let v: Vec<f32> = (0..b.len())
            .map(|j| {
                let (tau, mtl) = (t[j] - b[j], m[j] - b[j]);
                let keep = tau.abs() > 0.6 * (mtl - tau).abs();
                switched += (!keep && mtl != 0.0) as usize;
                if keep { b[j] + mtl } else { b[j] }
            })
            .collect();
        want.push((name.to_string(), taskloom::TensorData::f32(merged.info(name).unwrap().shape.as_slice(), v).unwrap()));
    }
    assert!(switched > 0, "the mask must drop something");
    let refs: Vec<(&str, &taskloom::TensorData)> = want.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let built = Shards(vec![SafeTensors::from_bytes("built", taskloom::formats::safetensors::serialize(&refs, None).unwrap()).unwrap()]);

    let cfg = taskloom::models::config::ModelConfig::parse("config.json", &std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let taskloom::models::config::ModelConfig::Llama(cfg) = cfg else { panic!("not a decoder") };
    let dev = Device::cpu();
    let ids = [1u32, 5, 9, 2, 7];
    let logits = |w: &dyn taskloom::models::Weights| -> Vec<f32> {
        let model = taskloom::models::llama::Llama::load(&dev, cfg.clone(), w).unwrap();
        let mut cache = model.new_cache();
        pollster::block_on(dev.download(&model.forward(&dev, &ids, &mut cache, true).unwrap())).unwrap().as_f32().unwrap().to_vec()
    };
    let expected = logits(&built);
    for name in ["ft2", "1"] {
        let tw = TaskWeights::open(&dir, name, None).unwrap();
        let got = logits(&tw);
        if let Some((i, g, w)) = first_violation(&got, &expected, 1e-6, 0.0) {
            panic!("task {name}: logit {i}: got {g}, built from the definition {w}");
        }
    }
    let plain = logits(&taskloom::models::hf::DirFiles(dir.clone()).weights().unwrap());
    assert!(first_violation(&plain, &expected, 1e-4, 0.0).is_some(), "the task model must differ from the merged one");
    match TaskWeights::open(&dir, "ft9", None) {
        Err(e @ Error::Task { .. }) => assert!(e.to_string().contains("ft9") && e.to_string().contains("ft2"), "{e}"),
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("an unknown task was accepted"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The summary's peak tensor memory stays near one tensor × inputs: at least the inputs of the
/// largest tensor, at most a small factor above (fused CPU path: inputs mapped + the output; the
/// op path of DELLA also holds its decoded inputs and [R, N] intermediates), and below the inputs'
/// whole checkpoints.
#[test]
fn peak_memory_stays_near_one_tensor_times_inputs() {
    for (case, factor) in [("ties", 1.5), ("dare_ties", 1.5), ("task_arithmetic", 1.5), ("della", 5.0), ("linear", 2.5)] {
        let r = recipe(case);
        let files = merge::model_dirs(&r).unwrap();
        let mut sink = MemSink::default();
        let s = pollster::block_on(merge::merge(&r, &files, &Device::cpu(), &Options::default(), &mut sink, &mut |_| {})).unwrap();
        let inputs = r.models.len() as f64;
        let base = SafeTensors::open(fixtures().join("../tiny/llama/model.safetensors")).unwrap();
        let largest = base.tensors().iter().map(|t| t.shape.iter().product::<usize>() * 4).max().unwrap() as f64;
        let whole = base.total_bytes() as f64 * inputs;
        let peak = s.peak_bytes as f64;
        assert!(peak >= largest * inputs, "{case}: peak {peak} below the largest tensor's inputs {}", largest * inputs);
        assert!(peak <= largest * inputs * factor, "{case}: peak {peak} above {factor} × largest tensor {largest} × {inputs} inputs");
        assert!(peak < whole, "{case}: peak {peak} not below the whole checkpoints {whole}");
    }
}

/// PCB (taskloom extension) equals the committed numpy reference (`pcb_merge` in
/// make_merge_goldens.py, written from seed-methods §1.6) within 1e-5; a ratio outside (0, 1] is a
/// typed error naming the tensor.
#[test]
fn pcb_equals_the_reference() {
    let got = tensors(&run(&recipe("pcb"), &Device::cpu(), &Options::default()).unwrap());
    let st = SafeTensors::open(fixtures().join("expected/pcb.safetensors")).unwrap();
    assert_eq!(got.len(), st.names().len());
    let base = SafeTensors::open(fixtures().join("../tiny/llama/model.safetensors")).unwrap();
    for name in st.names() {
        let want = st.tensor(name).unwrap().to_f32_vec();
        if let Some((i, g, w)) = first_violation(&got[name], &want, 1e-5, 1e-5) {
            panic!("pcb: {name}[{i}]: got {g}, reference {w}");
        }
        assert_ne!(want, base.tensor(name).unwrap().to_f32_vec(), "{name}: the merge must move the base");
    }
    let file = fixtures().join("pcb.yml").display().to_string();
    let text = std::fs::read_to_string(&file).unwrap().replace("pcb_ratio: 0.2", "pcb_ratio: 1.5");
    let e = run(&Recipe::parse(&file, &text).unwrap(), &Device::cpu(), &Options::default()).unwrap_err();
    assert!(matches!(e, Error::Merge { .. }) && e.to_string().contains("pcb_ratio"), "{e}");
}

/// Lazy sources (each tensor's byte range read on demand, as the browser reads `File`s and HTTP
/// `Range`s): every method's output is byte-identical to the memory-mapped path; the peak stays
/// below the inputs' whole size; a truncated file and a header that lies about offsets are typed
/// errors naming the file (and the tensor).
#[test]
fn lazy_sources_equal_the_mapped_path() {
    use std::rc::Rc;
    use taskloom::merge::source::MemBytes;
    use taskloom::merge::{ByteSource, LazySource, Source};
    use taskloom::FileError;
    fn lazy(dir: &Path, edit: &dyn Fn(Vec<u8>) -> Vec<u8>) -> LazySource<MemFiles> {
        let mut small = BTreeMap::new();
        let mut shards: Vec<Rc<dyn ByteSource>> = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let b = std::fs::read(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".safetensors") {
                shards.push(Rc::new(MemBytes { name: p.display().to_string(), bytes: edit(b) }));
            } else {
                small.insert(name, b);
            }
        }
        LazySource { name: dir.display().to_string(), files: MemFiles(small), shards }
    }
    let dirs = |r: &Recipe| -> Vec<PathBuf> { merge::model_dirs(r).unwrap().iter().map(|f| PathBuf::from(f.name())).collect() };
    let run_lazy = |r: &Recipe, opts: &Options, edit: &dyn Fn(Vec<u8>) -> Vec<u8>| {
        let srcs: Vec<LazySource<MemFiles>> = dirs(r).iter().map(|d| lazy(d, edit)).collect();
        let refs: Vec<&dyn Source> = srcs.iter().map(|s| s as &dyn Source).collect();
        let mut sink = MemSink::default();
        pollster::block_on(merge::merge_sources(r, &refs, &Device::cpu(), opts, &mut sink, &mut |_| {})).map(|s| (s, sink.files))
    };
    let same = |b: Vec<u8>| b;
    for case in CASES.iter().chain(&["pcb"]) {
        let r = recipe(case);
        let mut sink = MemSink::default();
        let files = merge::model_dirs(&r).unwrap();
        let mapped = pollster::block_on(merge::merge(&r, &files, &Device::cpu(), &with_masks(case), &mut sink, &mut |_| {})).unwrap();
        let want = sink.files;
        let (s, got) = run_lazy(&r, &with_masks(case), &same).unwrap_or_else(|e| panic!("{case}: {e}"));
        for (f, b) in &want {
            if f.ends_with(".safetensors") {
                assert!(got.get(f) == Some(b), "{case}: {f} differs from the mapped path's");
            }
        }
        let whole: u64 = dirs(&r).iter().map(|d| std::fs::metadata(d.join("model.safetensors")).unwrap().len()).sum();
        assert!(s.peak_bytes > 0 && s.peak_bytes <= mapped.peak_bytes && s.peak_bytes < whole, "{case}: peak {} (mapped: {}) of {whole} input bytes", s.peak_bytes, mapped.peak_bytes);
        assert_eq!(s.bytes_read, mapped.bytes_read, "{case}: bytes read");
    }
    let r = recipe("ties");
    // Cut in the data section: the header's offsets now point past the end.
    let e = run_lazy(&r, &Options::default(), &|b: Vec<u8>| b[..b.len() - 100].to_vec()).unwrap_err();
    assert!(matches!(&e, Error::File { kind: FileError::OffsetsOutOfRange { .. }, file } if file.ends_with("model.safetensors")), "{e}");
    // A header that lies: the first tensor's end offset moved past the file.
    let lie = |b: Vec<u8>| {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap().replacen("\"data_offsets\":[0,8192]", "\"data_offsets\":[0,9999999]", 1);
        assert_eq!(h.len(), n + 3, "the edit applied");
        let mut out = ((n + 3) as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&b[8 + n..]);
        out
    };
    let e = run_lazy(&r, &Options::default(), &lie).unwrap_err();
    assert!(matches!(&e, Error::File { kind: FileError::OffsetsOutOfRange { tensor, .. }, .. } if tensor == "model.embed_tokens.weight"), "{e}");
    // A source that claims more bytes than it gives (a connection cut mid-file): the header opens,
    // the tensor past the cut is a Truncated error naming it.
    struct Short(MemBytes, u64);
    impl ByteSource for Short {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn len(&self) -> u64 {
            self.1
        }
        fn read<'a>(&'a self, start: u64, out: &'a mut [u8]) -> taskloom::merge::source::LocalFuture<'a, taskloom::Result<()>> {
            self.0.read(start, out)
        }
    }
    let dir = fixtures().join("ft1");
    let full = std::fs::read(dir.join("model.safetensors")).unwrap();
    let cut = Short(MemBytes { name: "cut.safetensors".into(), bytes: full[..full.len() - 100].to_vec() }, full.len() as u64);
    let mut srcs: Vec<LazySource<MemFiles>> = dirs(&r).iter().map(|d| lazy(d, &same)).collect();
    let k = r.models.iter().position(|m| m == "ft1").unwrap();
    srcs[k].shards = vec![Rc::new(cut)];
    let refs: Vec<&dyn Source> = srcs.iter().map(|s| s as &dyn Source).collect();
    let e = pollster::block_on(merge::merge_sources(&r, &refs, &Device::cpu(), &Options::default(), &mut MemSink::default(), &mut |_| {})).unwrap_err();
    assert!(matches!(&e, Error::File { file, kind: FileError::Truncated(m) } if file == "cut.safetensors" && m.contains("model.norm.weight")), "{e}");
}
