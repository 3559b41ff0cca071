//! Goldens: the CPU oracle (`taskloom::cpu::run`) against PyTorch.
//!
//! `tests/fixtures/ops_golden.safetensors` (made by `tests/fixtures/make_op_goldens.py`, see the README
//! there) holds, per case, inputs `<case>.in<i>`, expected outputs `<case>.out<i>` and a metadata entry
//! `{"op", "params", "tol"}`. Every case is run and every output compared: float outputs within the
//! case's `tol` (max abs error; the goldens are f64 maths rounded once to f32, so `tol` covers only our
//! side's error), anything else (indices, permuted/concatenated f16/bf16/u32) bit for bit. A second
//! test fails when an op of `OpKind::ALL` has no golden case.

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use taskloom::{DType, GeluKind, HostData, Op, OpKind, TensorData};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ops_golden.safetensors");
/// The merge ops' cases (mergekit / peft references), made by `tests/fixtures/make_merge_goldens.py`.
const MERGE_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/merge/ops_golden.safetensors");

struct Case {
    name: String,
    op: Op,
    tol: f64,
    inputs: Vec<TensorData>,
    outputs: Vec<TensorData>,
}

fn dtype(d: Dtype) -> Result<DType, String> {
    Ok(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::U32 => DType::U32,
        Dtype::I32 => DType::I32,
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

fn tensor(st: &SafeTensors, name: &str) -> Result<Option<TensorData>, String> {
    let view = match st.tensor(name) {
        Ok(v) => v,
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => return Ok(None),
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let t = TensorData::from_bytes(dtype(view.dtype())?, view.shape(), view.data()).map_err(|e| format!("{name}: {e}"))?;
    Ok(Some(t))
}

/// `<case>.<prefix>0`, `<case>.<prefix>1`, ... up to the first missing index.
fn numbered(st: &SafeTensors, case: &str, prefix: &str) -> Result<Vec<TensorData>, String> {
    let mut v = Vec::new();
    while let Some(t) = tensor(st, &format!("{case}.{prefix}{}", v.len()))? {
        v.push(t);
    }
    Ok(v)
}

fn op_from(kind: &str, p: &Value) -> Result<Op, String> {
    let f = |key: &str| p[key].as_f64().map(|v| v as f32).ok_or(format!("{kind}: missing number param {key}"));
    let u = |key: &str| p[key].as_u64().map(|v| v as usize).ok_or(format!("{kind}: missing integer param {key}"));
    let b = |key: &str| p[key].as_bool().ok_or(format!("{kind}: missing bool param {key}"));
    Ok(match kind {
        "Matmul" => Op::Matmul { trans_b: b("trans_b")? },
        "Add" => Op::Add,
        "Mul" => Op::Mul,
        "Scale" => Op::Scale { alpha: f("alpha")? },
        "Axpy" => Op::Axpy { alpha: f("alpha")? },
        "Softmax" => Op::Softmax,
        "LayerNorm" => Op::LayerNorm { eps: f("eps")? },
        "RmsNorm" => Op::RmsNorm { eps: f("eps")? },
        "Gelu" => match p["kind"].as_str() {
            Some("erf") => Op::Gelu(GeluKind::Erf),
            Some("tanh") => Op::Gelu(GeluKind::Tanh),
            other => return Err(format!("Gelu: kind {other:?}")),
        },
        "Silu" => Op::Silu,
        "Embedding" => Op::Embedding,
        "Rope" => Op::Rope { theta: f("theta")? },
        "Attention" => Op::Attention { causal: b("causal")?, scale: f("scale")? },
        "Permute" => {
            let given: Vec<usize> = p["perm"]
                .as_array()
                .ok_or("Permute: missing perm")?
                .iter()
                .map(|x| x.as_u64().map(|v| v as usize).ok_or("Permute: perm entries must be integers"))
                .collect::<Result<_, _>>()?;
            if given.len() > 4 {
                return Err(format!("Permute: perm {given:?} longer than 4"));
            }
            // Entries past the input's rank are ignored by the op; fill them with the identity.
            let mut perm = [0, 1, 2, 3];
            perm[..given.len()].copy_from_slice(&given);
            Op::Permute { perm }
        }
        "Concat" => Op::Concat { axis: u("axis")? },
        "ExpertMatmul" => Op::ExpertMatmul,
        "MoeBucket" => Op::MoeBucket { experts: u("experts")? },
        "GroupedMatmul" => Op::GroupedMatmul,
        "Sigmoid" => Op::Sigmoid,
        "Relu" => Op::Relu,
        "MoeRoute" => Op::MoeRoute {
            k: u("k")?,
            sigmoid: b("sigmoid")?,
            groups: u("groups")?,
            topk_group: u("topk_group")?,
            norm: b("norm")?,
            scale: f("scale")?,
        },
        "TopK" => Op::TopK { k: u("k")? },
        "LoraShrink" => Op::LoraShrink,
        "LoraExpand" => Op::LoraExpand,
        "MagnitudeMask" => Op::MagnitudeMask,
        "RandomMask" | "DellaMask" => {
            let seed = p["seed"].as_u64().ok_or(format!("{kind}: missing seed"))?;
            let key = u("key")? as u32;
            if kind == "RandomMask" { Op::RandomMask { seed, key } } else { Op::DellaMask { seed, key } }
        }
        "MaskedRescale" => Op::MaskedRescale { l1: b("l1")? },
        "TaskMerge" => Op::TaskMerge {
            consensus: match p["consensus"].as_str() {
                Some("None") => taskloom::Consensus::None,
                Some("Sum") => taskloom::Consensus::Sum,
                Some("Count") => taskloom::Consensus::Count,
                other => return Err(format!("TaskMerge: consensus {other:?}")),
            },
            weighted_sign: b("weighted_sign")?,
            count_divisor: b("count_divisor")?,
            normalize: b("normalize")?,
            lambda: f("lambda")?,
        },
        other => return Err(format!("unknown op {other:?}")),
    })
}

fn load() -> Vec<Case> {
    let mut cases = load_file(FIXTURE);
    cases.extend(load_file(MERGE_FIXTURE));
    cases
}

fn load_file(path: &str) -> Vec<Case> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (see tests/fixtures/README.md)"));
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("fixture header");
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let entries: BTreeMap<&String, &String> = meta.metadata().as_ref().expect("fixture has __metadata__").iter().collect();
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    let mut claimed = HashSet::new();
    for (name, json) in entries {
        let parsed = (|| -> Result<Case, String> {
            let m: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
            let kind = m["op"].as_str().ok_or("missing op")?;
            let op = op_from(kind, &m["params"])?;
            let tol = m["tol"].as_f64().filter(|t| t.is_finite() && *t >= 0.0).ok_or("missing or bad tol")?;
            let inputs = numbered(&st, name, "in")?;
            let outputs = numbered(&st, name, "out")?;
            if inputs.is_empty() || outputs.is_empty() {
                return Err(format!("{} inputs, {} outputs", inputs.len(), outputs.len()));
            }
            Ok(Case { name: name.clone(), op, tol, inputs, outputs })
        })();
        match parsed {
            Ok(c) => {
                claimed.extend((0..c.inputs.len()).map(|i| format!("{name}.in{i}")));
                claimed.extend((0..c.outputs.len()).map(|i| format!("{name}.out{i}")));
                cases.push(c);
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    for n in st.names() {
        if !claimed.contains(n.as_str()) {
            errors.push(format!("tensor {n} belongs to no case"));
        }
    }
    assert!(errors.is_empty(), "malformed fixture:\n{}", errors.join("\n"));
    cases
}

/// Compares one output; `Err` describes the worst element. `Ok` gives the largest abs error (floats).
fn compare(got: &TensorData, want: &TensorData, tol: f64) -> Result<f64, String> {
    if got.dims() != want.dims() || got.dtype() != want.dtype() {
        return Err(format!("got {:?} {}, want {:?} {}", got.dims(), got.dtype(), want.dims(), want.dtype()));
    }
    let (g, w) = match (got.data(), want.data()) {
        (HostData::F32(g), HostData::F32(w)) => (g, w),
        // Indices and data movement of stored dtypes: bit-exact.
        (g, w) => {
            return match g.as_bytes().iter().zip(w.as_bytes()).position(|(a, b)| a != b) {
                None => Ok(0.0),
                Some(byte) => {
                    let i = byte / got.dtype().size_in_bytes();
                    Err(format!("element {i}: got {} want {} (exact match required)", g.to_f32_vec()[i], w.to_f32_vec()[i]))
                }
            };
        }
    };
    let mut max_err = 0.0f64;
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
        let err = if b.is_infinite() || a.is_infinite() {
            if a == b { 0.0 } else { f64::INFINITY }
        } else if a.is_nan() || b.is_nan() {
            if a.is_nan() && b.is_nan() { 0.0 } else { f64::INFINITY }
        } else {
            (a as f64 - b as f64).abs()
        };
        max_err = max_err.max(err);
        if err > tol && worst.is_none_or(|(_, e)| err > e) {
            worst = Some((i, err));
        }
    }
    match worst {
        None => Ok(max_err),
        Some((i, err)) => {
            let bad = g.iter().zip(w).filter(|&(&a, &b)| !((a as f64 - b as f64).abs() <= tol || a == b)).count();
            Err(format!("{bad}/{} elements off; worst element {i}: got {} want {} (|err| {err:.3e} > tol {tol:.3e})", g.len(), g[i], w[i]))
        }
    }
}

#[test]
fn cpu_matches_pytorch_goldens() {
    let cases = load();
    let mut failures = Vec::new();
    // Per op: cases, worst err / tol over cases with tol > 0.
    let mut summary: BTreeMap<&'static str, (usize, f64)> = BTreeMap::new();
    for c in &cases {
        let refs: Vec<&TensorData> = c.inputs.iter().collect();
        let entry = summary.entry(c.op.name()).or_insert((0, 0.0));
        entry.0 += 1;
        let got = match taskloom::cpu::run(&c.op, &refs) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{} ({:?}): cpu::run failed: {e}", c.name, c.op));
                continue;
            }
        };
        if got.len() != c.outputs.len() {
            failures.push(format!("{}: {} outputs, golden has {}", c.name, got.len(), c.outputs.len()));
            continue;
        }
        for (i, (g, w)) in got.iter().zip(&c.outputs).enumerate() {
            match compare(g, w, c.tol) {
                Ok(err) if c.tol > 0.0 => entry.1 = entry.1.max(err / c.tol),
                Ok(_) => {}
                Err(e) => failures.push(format!("{} ({:?}) out{i}: {e}", c.name, c.op)),
            }
        }
    }
    for (op, (n, ratio)) in &summary {
        println!("{op:<10} {n:>3} cases, worst err/tol {ratio:.2e}");
    }
    assert!(failures.is_empty(), "{} of {} golden cases disagree:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn every_op_has_a_golden() {
    let covered: HashSet<OpKind> = load().iter().map(|c| c.op.kind()).collect();
    let missing: Vec<&str> = OpKind::ALL.iter().filter(|k| !covered.contains(k)).map(|k| k.name()).collect();
    assert!(missing.is_empty(), "ops with no golden case in {FIXTURE}: {missing:?} (add them to make_op_goldens.py)");
}
