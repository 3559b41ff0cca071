//! Multi-task models (`taskloom.json`) against the PyTorch reference of the format
//! (`tests/fixtures/make_multitask_models.py`): building blocks (task-routed MoE with softmax and
//! sigmoid scores, selection-only bias, routing ties, an empty expert; MMoE; regression and
//! token-level heads), on the CPU and the GPU; residency of task subsets; bad models and requests.

use serde_json::Value;
use std::path::PathBuf;
use taskloom::multitask::{Input, MultiTask, Output, Prediction, Run};
use taskloom::Device;
use taskloom_tests::{first_violation, gpu_or_skip};

/// `multitask/{rel}`'s expected.json. The trained models' files write `label_margin_min` of a
/// regression task as a bare `Infinity`, which is not JSON: read as null (no test uses it).
fn expected(rel: &str) -> Value {
    let p = folder(rel).join("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text.replace(":Infinity", ":null")).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn folder(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/multitask").join(rel)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

/// The fixture's inputs: images (pixel lists) or texts.
fn images(exp: &Value) -> Vec<Input> {
    exp["inputs"].as_array().expect("inputs").iter().map(|i| match i.as_str() {
        Some(t) => Input::Text(t.into()),
        None => Input::Image(floats(i)),
    }).collect()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    if let Some((i, g, w)) = first_violation(got, want, tol, tol) {
        panic!("{what}: element {i}: got {g}, want {w} (tolerance {tol})");
    }
}

fn preds(o: &Output) -> Vec<&Prediction> {
    match o {
        Output::Sequence(p) => vec![p],
        Output::Token(v) => v.iter().collect(),
    }
}

/// Every task's outputs of `run` against `exp["outputs"]` (classification: logits, label, label
/// name, score; regression: values; token-level: the same per patch token).
fn check_outputs(what: &str, run: &Run, exp: &Value, tasks: &[&str]) {
    let tol = exp["tolerance"].as_f64().unwrap_or(1e-5) as f32;
    for &task in tasks {
        let want = &exp["outputs"][task];
        for (i, out) in run.outputs.iter().enumerate() {
            let at = format!("{what}: task {task}, input {i}");
            let preds: Vec<&Prediction> = match &out[task] {
                Output::Sequence(p) => vec![p],
                Output::Token(v) => v.iter().collect(),
            };
            let token = matches!(&out[task], Output::Token(_));
            let pick = |key: &str, j: usize| -> Value {
                let v = &want[key][i];
                if token { v[j].clone() } else { v.clone() }
            };
            if token {
                assert_eq!(preds.len(), want["logits"][i].as_array().expect("tokens").len(), "{at}: token count");
            }
            for (j, p) in preds.iter().enumerate() {
                if want.get("values").is_some() {
                    close(&format!("{at}: values"), &p.values, &floats(&want["values"][i]), tol);
                    continue;
                }
                close(&format!("{at}, row {j}: logits"), &p.values, &floats(&pick("logits", j)), tol);
                assert_eq!(p.index, pick("labels", j).as_u64().map(|x| x as usize), "{at}, row {j}: label");
                assert_eq!(p.label.as_deref(), pick("label_names", j).as_str(), "{at}, row {j}: label name");
                close(&format!("{at}, row {j}: score"), &[p.score.expect("score")], &[pick("scores", j).as_f64().expect("score") as f32], tol);
            }
        }
    }
}

fn check_routing(what: &str, run: &Run, exp: &Value) {
    let Some(want) = exp["routing"].as_object() else { return };
    for (task, blocks) in want {
        for (block, counts) in blocks.as_object().expect("blocks") {
            let want: Vec<u64> = counts.as_array().expect("counts").iter().map(|c| c.as_u64().expect("count")).collect();
            let got = &run.routing[task][&block.parse::<usize>().expect("block")];
            assert_eq!(got, &want, "{what}: routing of task {task}, block {block}");
        }
    }
    // The empty experts the fixture lists got no token (so routing to them is not required to work).
    if let Some(empty) = exp["empty_experts"].as_object() {
        for (task, blocks) in empty {
            for (block, experts) in blocks.as_object().expect("blocks") {
                for e in experts.as_array().expect("experts") {
                    assert_eq!(run.routing[task][&block.parse::<usize>().expect("block")][e.as_u64().expect("e") as usize], 0, "{what}: {task} {block} expert {e}");
                }
            }
        }
    }
}

/// Runs the fixture in `multitask/{name}` (all inputs, all tasks, one batch) and its task subsets;
/// returns the all-tasks run and the expected values.
fn model_case(name: &str, dev: Device) -> (Run, Value) {
    let exp = expected(name);
    let dir = folder(name);
    let tasks: Vec<&str> = exp["tasks"].as_array().expect("tasks").iter().map(|t| t.as_str().expect("task")).collect();
    let what = format!("{name} on {}", dev.kind());
    let before = dev.uploaded_bytes();
    let model = MultiTask::load_dir(&dir, dev.clone(), None).expect("load");
    if let (Some(a), Some(b)) = (before, dev.uploaded_bytes()) {
        assert_eq!(b - a, model.resident_bytes(), "{what}: allocator statistics vs reported resident bytes");
    }
    assert_eq!(model.all_tasks_bytes(), model.resident_bytes(), "{what}");
    let inputs = images(&exp);
    let run = pollster::block_on(model.run(&inputs, Some(&tasks))).expect("run");
    check_outputs(&what, &run, &exp, &tasks);
    check_routing(&what, &run, &exp);
    check_router(&what, &run, &exp);

    // Task subsets: fewer device bytes (from the allocator), the same parts as the reference's
    // accounting (gates differ by design: re-indexed, with routing vectors), unchanged outputs.
    for r in exp["residency"].as_array().map_or(&[][..], |v| v.as_slice()) {
        let sub: Vec<&str> = r["tasks"].as_array().expect("tasks").iter().map(|t| t.as_str().expect("task")).collect();
        let before = dev.uploaded_bytes();
        let m = MultiTask::load_dir(&dir, dev.clone(), Some(&sub)).expect("subset load");
        let at = format!("{what}, subset {sub:?}");
        if let (Some(a), Some(b)) = (before, dev.uploaded_bytes()) {
            assert_eq!(b - a, m.resident_bytes(), "{at}: allocator statistics vs reported resident bytes");
        }
        assert!(m.resident_bytes() < model.resident_bytes(), "{at}: {} resident bytes, not fewer than all tasks' {}", m.resident_bytes(), model.resident_bytes());
        assert_eq!(m.all_tasks_bytes(), model.resident_bytes(), "{at}: all-tasks bytes");
        let (got, b) = (m.residency(), &r["breakdown"]);
        assert_eq!([got.trunk, got.experts, got.heads, got.mmoe], ["trunk", "experts", "heads", "mmoe"].map(|k| b[k].as_u64().expect("bytes")), "{at}: residency {got:?}");
        if let Some(a) = b["adapters"].as_u64() {
            assert_eq!(got.adapters, a, "{at}: adapter and delta bytes");
        }
        let sub_run = pollster::block_on(m.run(&inputs, None)).expect("subset run");
        // Same routes and labels; values equal up to summation order (a subset's gates are narrower
        // matrices, which the CPU GEMM may block differently): 1e-6, ten times under the goldens'.
        for (i, (a, b)) in sub_run.outputs.iter().zip(&run.outputs).enumerate() {
            for t in &sub {
                for (p, q) in preds(&a[*t]).iter().zip(preds(&b[*t])) {
                    assert_eq!((&p.label, p.index), (&q.label, q.index), "{at}: input {i}, task {t}: label");
                    close(&format!("{at}: input {i}, task {t}: subset vs all tasks"), &p.values, &q.values, 1e-6);
                }
            }
        }
        for t in &sub {
            assert_eq!(sub_run.routing[*t], run.routing[*t], "{at}: routing of {t}");
        }
        check_outputs(&at, &sub_run, &exp, &sub);
    }
    (run, exp)
}

/// The deltas' router weights per input (Twin-Merging / WEMoE) against the reference's.
fn check_router(what: &str, run: &Run, exp: &Value) {
    let Some(want) = exp["router"].as_array() else {
        assert!(run.deltas.is_empty(), "{what}: router weights from a model without deltas");
        return;
    };
    assert_eq!(run.deltas.len(), want.len(), "{what}: router rows");
    for (i, (g, w)) in run.deltas.iter().zip(want).enumerate() {
        close(&format!("{what}: router weights of input {i}"), g, &floats(w), 1e-5);
    }
}

fn block_case(name: &str, dev: Device) {
    model_case(&format!("blocks/{name}"), dev);
}

fn each_device(test: &str, f: impl Fn(Device)) {
    f(Device::cpu());
    if let Some(g) = gpu_or_skip(test) {
        f(g);
    }
}

#[test]
fn vit_moe_softmax_bias_tie_empty_expert() {
    each_device("vit_moe", |d| block_case("vit-moe", d));
}

#[test]
fn vit_moe_sigmoid_normalized() {
    each_device("vit_moe_sigmoid", |d| block_case("vit-moe-sigmoid", d));
}

#[test]
fn vit_mmoe_regression_token_level() {
    each_device("vit_mmoe", |d| block_case("vit-mmoe", d));
}

/// Input-routed task deltas on a ViT (Twin-Merging: router on the pooled feature of a shared
/// pass, softmax; ranks 2, 3, 1 zero-padded in one stack; a delta that skips a target; the fused
/// qkv's delta split across q, k, v), factored on the device, against the per-input merged forward.
#[test]
fn vit_input_routed_task_deltas() {
    each_device("vit_deltas", |d| block_case("vit-deltas", d));
}

/// MTLoRA-style branches on an hf trunk: a shared adapter for every task, task adapters for two of
/// three tasks (three trunk streams in one mixed batch), plus input-routed deltas with a raw
/// (WEMoE-style) router; against per-input merged weights (the LoRA part also checked against PEFT
/// by the fixture script). A task subset uploads fewer adapter bytes and gives the same outputs.
#[test]
fn bert_task_adapters_and_deltas() {
    each_device("bert_lora", |dev| {
        let (run, exp) = model_case("blocks/bert-lora", dev.clone());
        let what = format!("bert-lora on {}", dev.kind());
        let dir = folder("blocks/bert-lora");
        let full = MultiTask::load_dir(&dir, dev.clone(), None).expect("load");
        let before = dev.uploaded_bytes();
        let sub = MultiTask::load_dir(&dir, dev.clone(), Some(&["c"])).expect("subset load");
        if let (Some(a), Some(b)) = (before, dev.uploaded_bytes()) {
            assert_eq!(b - a, sub.resident_bytes(), "{what}: allocator statistics vs reported resident bytes");
        }
        assert!(sub.residency().adapters < full.residency().adapters, "{what}: {:?} vs {:?}", sub.residency(), full.residency());
        assert_eq!(sub.all_tasks_bytes(), full.resident_bytes(), "{what}: all-tasks bytes of a subset");
        let r = pollster::block_on(sub.run(&images(&exp), None)).expect("subset run");
        check_outputs(&format!("{what}, subset [c]"), &r, &exp, &["c"]);
        check_router(&format!("{what}, subset [c]"), &r, &exp);
        assert_eq!(run.deltas.len(), r.deltas.len());
        // A subset needs only its own adapters' weights (a browser downloads no others): the other
        // tasks' adapter_config.json suffice for the all-tasks figure.
        let mut mem = std::collections::BTreeMap::new();
        for f in ["taskloom.json", "model.safetensors", "lora/shared/adapter_config.json", "lora/shared/adapter_model.safetensors", "lora/a/adapter_config.json", "lora/a/adapter_model.safetensors", "lora/b/adapter_config.json"] {
            mem.insert(f.to_string(), std::fs::read(dir.join(f)).expect("read"));
        }
        let trunk = taskloom::models::hf::DirFiles(folder("../tiny/bert"));
        let m = MultiTask::load(&taskloom::models::hf::MemFiles(mem.clone()), Some(&trunk), dev.clone(), Some(&["a", "c"])).expect("subset without b's weights");
        assert_eq!(m.all_tasks_bytes(), full.resident_bytes(), "{what}: all-tasks bytes from adapter configs");
        let r = pollster::block_on(m.run(&images(&exp), None)).expect("run");
        check_outputs(&format!("{what}, subset [a, c] from memory"), &r, &exp, &["a", "c"]);
        // The same through range readers, as the wasm build hands JS buffers over (weights, the
        // trunk's and the adapters', read tensor by tensor): the same outputs.
        use taskloom::formats::RangeRead;
        use taskloom::models::hf::RangedFiles;
        let ranged = |m: std::collections::BTreeMap<String, Vec<u8>>| RangedFiles(m.into_iter().map(|(k, v)| (k, std::sync::Arc::new(v) as std::sync::Arc<dyn RangeRead>)).collect());
        let mut trunk_mem = std::collections::BTreeMap::new();
        let bert = folder("../tiny/bert");
        for e in std::fs::read_dir(&bert).expect("trunk folder").flatten().filter(|e| e.path().is_file()) {
            trunk_mem.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read"));
        }
        let m = MultiTask::load(&ranged(mem), Some(&ranged(trunk_mem)), dev.clone(), Some(&["a", "c"])).expect("subset from range readers");
        assert_eq!(m.all_tasks_bytes(), full.resident_bytes(), "{what}: all-tasks bytes from range readers");
        let r = pollster::block_on(m.run(&images(&exp), None)).expect("run");
        check_outputs(&format!("{what}, subset [a, c] from range readers"), &r, &exp, &["a", "c"]);
    });
}

/// The trained digits model: every held-out prediction equals PyTorch's (checked in `model_case`,
/// with the fixture's tolerance on the logits), and so the accuracies equal the script's.
#[test]
fn digits_heldout_predictions_and_accuracy() {
    each_device("digits", |dev| {
        let what = format!("digits on {}", dev.kind());
        let (run, exp) = model_case("digits", dev);
        let n = run.outputs.len();
        assert_eq!(n, exp["inputs"].as_array().expect("inputs").len());
        for task in ["digit", "parity", "greater_than_four"] {
            let want: Vec<u64> = exp["targets"][task].as_array().expect("targets").iter().map(|v| v.as_u64().expect("target")).collect();
            let right = run.outputs.iter().zip(&want).filter(|(o, &w)| preds(&o[task])[0].index == Some(w as usize)).count();
            // Compared as counts of correct predictions: the script's mean may differ from count/n in the last bit.
            let want_right = (exp["accuracy"][task].as_f64().expect("accuracy") * n as f64).round() as usize;
            assert_eq!(right, want_right, "{what}: {task}: {right}/{n} correct, the script's accuracy is {want_right}/{n}");
        }
        let targets = floats(&exp["targets"]["value"]);
        let values: Vec<f64> = run.outputs.iter().map(|o| preds(&o["value"])[0].values[0] as f64).collect();
        let err: Vec<f64> = values.iter().zip(&targets).map(|(v, t)| v - *t as f64).collect();
        let mae = err.iter().map(|e| e.abs()).sum::<f64>() / n as f64;
        let rmse = (err.iter().map(|e| e * e).sum::<f64>() / n as f64).sqrt();
        let rounded = values.iter().zip(&targets).filter(|(v, t)| v.round().clamp(0.0, 9.0) == **t as f64).count();
        let want = &exp["accuracy"]["value"];
        assert!((mae - want["mae"].as_f64().expect("mae")).abs() < 1e-4, "{what}: value MAE {mae} vs {}", want["mae"]);
        assert!((rmse - want["rmse"].as_f64().expect("rmse")).abs() < 1e-4, "{what}: value RMSE {rmse} vs {}", want["rmse"]);
        let want_rounded = (want["rounded_accuracy"].as_f64().expect("rounded") * n as f64).round() as usize;
        assert_eq!(rounded, want_rounded, "{what}: value rounded to a digit: {rounded}/{n} right, the script's {want_rounded}/{n}");
    });
}

/// The text model: MiniLM trunk + intent, sentiment and valence heads; one trunk pass for all.
#[test]
fn text_model_against_pytorch() {
    let Some(minilm) = taskloom_tests::model_or_skip("text_model", "minilm") else { return };
    let exp_path = folder("text/expected.json");
    if !exp_path.exists() {
        panic!("{} is missing", exp_path.display());
    }
    each_device("text_model", |dev| {
        let exp = expected("text");
        let files = taskloom::models::hf::DirFiles(folder("text"));
        let trunk = taskloom::models::hf::DirFiles(minilm.clone());
        let model = MultiTask::load(&files, Some(&trunk), dev.clone(), None).expect("load");
        let inputs: Vec<Input> = exp["inputs"].as_array().expect("inputs").iter().map(|t| Input::Text(t.as_str().expect("text").into())).collect();
        let tasks: Vec<&str> = exp["tasks"].as_array().expect("tasks").iter().map(|t| t.as_str().expect("task")).collect();
        let run = pollster::block_on(model.run(&inputs, Some(&tasks))).expect("run");
        check_outputs(&format!("text on {}", dev.kind()), &run, &exp, &tasks);
    });
}

fn bad(dir: &std::path::Path, json: &str, tasks: Option<&[&str]>) -> taskloom::Error {
    std::fs::create_dir_all(dir).expect("tmp dir");
    std::fs::write(dir.join("taskloom.json"), json).expect("write");
    let weights = folder("blocks/vit-moe/model.safetensors");
    std::fs::copy(weights, dir.join("model.safetensors")).expect("copy");
    match MultiTask::load_dir(dir, Device::cpu(), tasks) {
        Ok(_) => panic!("{json} loaded"),
        Err(e) => e,
    }
}

#[test]
fn bad_models_and_requests_are_typed_errors() {
    let good = std::fs::read_to_string(folder("blocks/vit-moe/taskloom.json")).expect("read");
    let dir = std::env::temp_dir().join(format!("taskloom-mt-bad-{}", std::process::id()));
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&good).expect("json");
        f(&mut v);
        v.to_string()
    };
    // An unknown key, named.
    let e = bad(&dir, &edit(&|v| v["trunk"]["colour"] = "red".into()), None);
    assert!(matches!(e, taskloom::Error::File { .. }) && e.to_string().contains("colour"), "{e}");
    // A tensor the description needs that the file lacks (a 5th head layer), named with the file.
    let e = bad(&dir, &edit(&|v| v["tasks"]["beta"]["head"]["layers"] = 2.into()), None);
    assert!(e.to_string().contains("heads.beta.1.weight") && e.to_string().contains("model.safetensors"), "{e}");
    // A shape mismatch: the description says mlp_dim 40, the tensors are 48 wide.
    let e = bad(&dir, &edit(&|v| v["trunk"]["mlp_dim"] = 40.into()), None);
    assert!(e.to_string().contains("trunk.blocks.0.mlp.fc1.weight") && e.to_string().contains("[48, 24]"), "{e}");
    // A gate wider than the expert list: the description says 5 experts, the gates have 6 rows.
    let e = bad(&dir, &edit(&|v| {
        v["moe"]["experts"] = 5.into();
        v["tasks"]["gamma"]["experts"] = serde_json::json!([0, 1, 3]);
    }), None);
    assert!(matches!(&e, taskloom::Error::Task { task, .. } if task == "alpha") && e.to_string().contains("wider than the 5 experts"), "{e}");
    // An expert index outside the list, and a task that allows fewer experts than top_k.
    let e = bad(&dir, &edit(&|v| v["tasks"]["beta"]["experts"] = serde_json::json!([1, 9])), None);
    assert!(matches!(&e, taskloom::Error::Task { task, .. } if task == "beta"), "{e}");
    let e = bad(&dir, &edit(&|v| v["tasks"]["beta"]["experts"] = serde_json::json!([1])), None);
    assert!(matches!(&e, taskloom::Error::Task { task, .. } if task == "beta") && e.to_string().contains("top_k"), "{e}");
    // An unknown task at load and at run time, and a task that was not loaded.
    let e = bad(&dir, &good, Some(&["delta"]));
    assert!(matches!(&e, taskloom::Error::Task { task, .. } if task == "delta") && e.code() == "BAD_INPUT", "{e}");
    let m = MultiTask::load_dir(&folder("blocks/vit-moe"), Device::cpu(), Some(&["beta"])).expect("load");
    let img = Input::Image(vec![1.0; 64]);
    let e = pollster::block_on(m.run(std::slice::from_ref(&img), Some(&["nope"]))).expect_err("unknown task");
    assert!(matches!(&e, taskloom::Error::Task { task, .. } if task == "nope"), "{e}");
    let e = pollster::block_on(m.run(std::slice::from_ref(&img), Some(&["alpha"]))).expect_err("not loaded");
    assert!(matches!(&e, taskloom::Error::Task { task, .. } if task == "alpha") && e.to_string().contains("not loaded"), "{e}");
    // Wrong input: too few pixels, text for an image model.
    let e = pollster::block_on(m.run(&[Input::Image(vec![1.0; 63])], None)).expect_err("short image");
    assert_eq!(e.code(), "BAD_INPUT", "{e}");
    let e = pollster::block_on(m.run(&[Input::Text("hi".into())], None)).expect_err("text");
    assert_eq!(e.code(), "BAD_INPUT", "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad deltas / adapter descriptions are typed errors naming what is wrong.
#[test]
fn bad_deltas_and_adapters_are_typed_errors() {
    let src = folder("blocks/vit-deltas");
    let good = std::fs::read_to_string(src.join("taskloom.json")).expect("read");
    let dir = std::env::temp_dir().join(format!("taskloom-mt-bad-deltas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).expect("copy");
    let load = |f: &dyn Fn(&mut Value)| -> taskloom::Error {
        let mut v: Value = serde_json::from_str(&good).expect("json");
        f(&mut v);
        std::fs::write(dir.join("taskloom.json"), v.to_string()).expect("write");
        match MultiTask::load_dir(&dir, Device::cpu(), None) {
            Ok(_) => panic!("{v} loaded"),
            Err(e) => e,
        }
    };
    let e = load(&|v| v["deltas"]["targets"][1] = "trunk.blocks.1.mlp.fc9".into());
    assert!(e.to_string().contains("trunk.blocks.1.mlp.fc9") && e.code() == "BAD_INPUT", "{e}");
    let e = load(&|v| v["deltas"]["names"][2] = "d".into());
    assert!(e.to_string().contains("deltas.d.") || e.to_string().contains("deltas.router"), "{e}");
    let e = load(&|v| v["deltas"]["router"]["layers"] = 3.into());
    assert!(e.to_string().contains("deltas.router.2.weight"), "{e}");
    let e = load(&|v| v["deltas"]["router"]["temperature"] = 2.into());
    assert!(e.to_string().contains("temperature"), "{e}");
    let e = load(&|v| v["tasks"]["x"]["adapter"] = "lora/x".into());
    assert!(matches!(&e, taskloom::Error::Task { task, .. } if task == "x") && e.to_string().contains("hf trunk"), "{e}");
    let e = load(&|v| v["shared_adapter"] = "lora/s".into());
    assert!(e.to_string().contains("shared_adapter"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    // An hf model whose task adapter folder is missing names the folder.
    let src = folder("blocks/bert-lora");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(src.join("taskloom.json")).expect("read")).expect("json");
    v["tasks"]["a"]["adapter"] = "lora/missing".into();
    v.as_object_mut().expect("object").remove("shared_adapter");
    v["tasks"]["b"].as_object_mut().expect("object").remove("adapter");
    v["trunk"]["path"] = folder("../tiny/bert").display().to_string().into();
    let dir = std::env::temp_dir().join(format!("taskloom-mt-bad-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).expect("copy");
    std::fs::write(dir.join("taskloom.json"), v.to_string()).expect("write");
    let e = MultiTask::load_dir(&dir, Device::cpu(), None).err().expect("missing adapter");
    assert!(e.to_string().contains("lora/missing") && e.code() == "BAD_INPUT", "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
