//! Runs the built `taskloom` binary: good and bad input, JSON outputs, the CPU self-check.
//! Lives in the CLI crate because only here does Cargo provide `CARGO_BIN_EXE_taskloom`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use taskloom::formats::safetensors;
use taskloom::TensorData;

fn taskloom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskloom")).args(args).output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh folder per test (tests run in parallel), removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

fn scratch(test: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("taskloom-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    Scratch(d)
}

/// A file with an F32 weight, an F16 one and an I64 `position_ids` (listed, not loadable).
fn good_file(dir: &Path, name: &str) -> PathBuf {
    let header = serde_json::json!({
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "h": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
        "position_ids": {"dtype": "I64", "shape": [1, 2], "data_offsets": [32, 48]},
    });
    let mut json = header.to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.resize(bytes.len() + 48, 0);
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write fixture");
    path
}

/// The failure contract: non-zero exit, exactly one stderr line `taskloom: ...`, no panic text.
fn assert_one_line_error(o: &Output, must_contain: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stdout: {}", stdout(o));
    assert_eq!(err.lines().count(), 1, "one stderr line, got: {err}");
    assert!(err.starts_with("taskloom: "), "{err}");
    assert!(err.contains(must_contain), "'{must_contain}' not in: {err}");
    assert!(!err.contains("panicked") && !err.to_lowercase().contains("backtrace"), "{err}");
}

#[test]
fn inspect_good_file_text_and_json() {
    let dir = scratch("good");
    let f = good_file(&dir, "m.safetensors");
    let f = f.to_str().expect("utf-8 temp path");
    let o = taskloom(&["inspect", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in ["w", "F32", "[2, 3]", "position_ids", "I64", "skipped on load", "format = pt", "total: 1 file(s), 3 tensors"] {
        assert!(text.contains(want), "'{want}' missing from:\n{text}");
    }

    let o = taskloom(&["inspect", f, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json is JSON");
    let tensors = v["files"][0]["tensors"].as_array().expect("tensors array");
    assert_eq!(tensors.len(), 3);
    let ids = tensors.iter().find(|t| t["name"] == "position_ids").expect("position_ids listed");
    assert_eq!((ids["dtype"].as_str(), ids["loadable"].as_bool(), ids["bytes"].as_u64()), (Some("I64"), Some(false), Some(16)));
    assert_eq!(v["total"]["params"].as_u64(), Some(6 + 4 + 2));
    assert_eq!(v["total"]["bytes"].as_u64(), Some(48));
}

#[test]
fn inspect_folder_of_shards() {
    let dir = scratch("folder");
    good_file(&dir, "model-00001-of-00002.safetensors");
    let t = TensorData::f32(&[3], vec![1.0, 2.0, 3.0]).expect("tensor");
    safetensors::write(dir.join("model-00002-of-00002.safetensors"), &[("bias", &t)], None).expect("write");
    std::fs::write(dir.join("config.json"), "{}").expect("write config");
    let o = taskloom(&["inspect", dir.to_str().expect("utf-8"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!((v["total"]["files"].as_u64(), v["total"]["tensors"].as_u64()), (Some(2), Some(4)));
}

#[test]
fn inspect_bad_files_fail_in_one_line() {
    let dir = scratch("bad");
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, [1u8, 2, 3]).expect("write");
    assert_one_line_error(&taskloom(&["inspect", truncated.to_str().expect("utf-8")]), "truncated.safetensors");

    // Two tensors claiming the same bytes: the message names the file and both tensors.
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.resize(bytes.len() + 12, 0);
    let overlap = dir.join("overlap.safetensors");
    std::fs::write(&overlap, bytes).expect("write");
    let o = taskloom(&["inspect", overlap.to_str().expect("utf-8")]);
    assert_one_line_error(&o, "overlap.safetensors");
    assert!(stderr(&o).contains("'a' and 'b' overlap"), "{}", stderr(&o));

    assert_one_line_error(&taskloom(&["inspect", dir.join("missing.safetensors").to_str().expect("utf-8")]), "missing.safetensors");
    let empty = scratch("empty");
    assert_one_line_error(&taskloom(&["inspect", empty.to_str().expect("utf-8")]), "no .safetensors files");
}

#[test]
fn usage_errors_are_one_line() {
    let o = taskloom(&["demo", "--device", "tpu"]);
    assert_one_line_error(&o, "tpu");
    assert_eq!(o.status.code(), Some(2));
    assert_one_line_error(&taskloom(&["frobnicate"]), "frobnicate");
}

#[test]
fn devices_json_parses() {
    let o = taskloom(&["devices", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("devices --json is JSON");
    assert!(v["adapters"].is_array());
    assert!(matches!(v["chosen"]["kind"].as_str(), Some("cpu" | "gpu")));
    assert_eq!(v["cpu"]["backend"], "cpu");
}

#[test]
fn demo_on_cpu_passes() {
    let o = taskloom(&["demo", "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("device: cpu") && out.contains("max |error|") && out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn bench_matmul_cpu_json() {
    let o = taskloom(&["bench", "matmul", "--device", "cpu", "--sizes", "16,32", "--runs", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let rows = v["results"].as_array().expect("results");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["gflops"].as_f64().is_some_and(|g| g > 0.0)));
}

/// wgpu reads WGPU_BACKEND; asking only for Metal on Linux leaves no adapter at all.
#[cfg(target_os = "linux")]
#[test]
fn gpu_without_adapter_is_one_line_exit_1() {
    let o = Command::new(env!("CARGO_BIN_EXE_taskloom"))
        .args(["demo", "--device", "gpu"])
        .env("WGPU_BACKEND", "metal")
        .output()
        .expect("runs");
    assert_one_line_error(&o, "no GPU adapter");
    assert_eq!(o.status.code(), Some(1));
}

fn merge_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/merge").join(name)
}

#[test]
fn merge_writes_a_model_folder_and_summary() {
    let dir = scratch("merge_ok");
    let out = dir.join("merged");
    let recipe = merge_fixture("dare_ties.yml");
    let o = taskloom(&["merge", recipe.to_str().unwrap(), "-o", out.to_str().unwrap(), "--device", "cpu", "--random-seed", "3", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["tensors"], 20);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0 && v["bytes_written"].as_u64().unwrap() > 80_000);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // The output folder exists now: a second merge into it fails in one line and leaves it alone.
    let o = taskloom(&["merge", recipe.to_str().unwrap(), "-o", out.to_str().unwrap(), "--device", "cpu"]);
    assert_one_line_error(&o, "not empty");
}

#[test]
fn merge_bad_recipe_fails_in_one_line_without_output() {
    let dir = scratch("merge_bad");
    let bad = dir.join("bad.yml");
    std::fs::write(&bad, "merge_method: ties\nbase_model: x\nmodels:\n  - model: y\n    parameters: {weight: 1, densty: 0.5}\n").unwrap();
    let out = dir.join("merged");
    let o = taskloom(&["merge", bad.to_str().unwrap(), "-o", out.to_str().unwrap(), "--device", "cpu"]);
    assert_one_line_error(&o, "densty");
    assert!(!out.exists());
    let o = taskloom(&["merge", dir.join("missing.yml").to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_one_line_error(&o, "missing.yml");
}
