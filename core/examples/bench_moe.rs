//! One MoE layer (issue 6), the taskloom side of `scripts/bench_moe.py`; `scripts/bench_moe.sh`
//! runs both back to back and prints ratios.
//!
//! ```text
//! cargo build --release -p taskloom --example bench_moe
//! bench_moe [--device cpu|gpu] [--runs N] [--tokens T] [--experts E] [--k K] [--c C] [--f F] [--sweep]
//! ```
//! Defaults: top-2 of 8 experts, 128 tokens, C = 512, F = 2048, random weights (f32). For each
//! expert MLP — ViT-style `fc2(gelu(fc1 x + b1)) + b2` and SwiGLU `down(silu(gate x) * up x)` — it
//! times, as the median of N runs after two warm-ups (each run waited for by downloading the output;
//! the variants take turns within each round, so machine noise hits them alike):
//! * `grouped`: router matmul → `MoeRoute` → `MoeBucket` → `GroupedMatmul` per projection → the
//!   weighted sum (what `RoutedMoe` and `SparseMoe` run);
//! * `perpick`: the same with a GEMV per pick (`ExpertMatmul`, biases gathered with `Embedding`):
//!   the path before bucketing;
//! * `dense`: a dense MLP of the same active FLOPs (hidden 2F = top-2 worth) with `Matmul`.
//!
//! and counts the ops (= GPU dispatches; on a GPU checked against the device's dispatch counter).
//! `--sweep` also times grouped vs per-pick for 1..=32 tokens, the data behind
//! `taskloom::models::moe::BUCKET_MIN_PICKS`. Lines are `bench=<name> key=value ...`.

use std::cell::Cell;
use std::time::Instant;
use taskloom::models::moe::ExpertRouting;
use taskloom::{Device, GeluKind, Op, Tensor, TensorData};

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// A device that counts the ops it runs (one op = one GPU dispatch for every op used here).
struct Counted<'a> {
    dev: &'a Device,
    ops: Cell<usize>,
}

impl Counted<'_> {
    fn exec(&self, op: &Op, ins: &[&Tensor]) -> R<Vec<Tensor>> {
        self.ops.set(self.ops.get() + 1);
        Ok(self.dev.exec(op, ins)?)
    }
    fn exec1(&self, op: &Op, ins: &[&Tensor]) -> R<Tensor> {
        Ok(self.exec(op, ins)?.remove(0))
    }
}

/// Uniform in [-scale, scale) from a fixed LCG: the same weights every run.
fn random(seed: &mut u64, dims: &[usize], scale: f32) -> TensorData {
    let n: usize = dims.iter().product();
    let v = (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    TensorData::f32(dims, v).expect("dims match")
}

#[derive(Clone, Copy, PartialEq)]
enum Mlp {
    Gelu,
    SwiGlu,
}

struct Layer {
    e: usize,
    k: usize,
    mlp: Mlp,
    router: Tensor,         // [E, C]
    w1: Tensor,             // [E, F, C]: fc1 (GELU) or gate (SwiGLU)
    b1: Option<Tensor>,     // [E, F] (GELU)
    up: Option<Tensor>,     // [E, F, C] (SwiGLU)
    w2: Tensor,             // [E, C, F]
    b2: Option<Tensor>,     // [E, C] (GELU)
    dense1: Tensor,         // [2F, C]: fc1 or gate of the dense MLP
    dense_b1: Option<Tensor>,
    dense_up: Option<Tensor>, // [2F, C]
    dense2: Tensor,         // [C, 2F]
    dense_b2: Option<Tensor>,
}

impl Layer {
    fn new(dev: &Device, mlp: Mlp, e: usize, k: usize, c: usize, f: usize) -> R<Layer> {
        let mut seed = 42u64;
        let (sc, sf) = (1.0 / (c as f32).sqrt(), 1.0 / (f as f32).sqrt());
        let mut up = |dims: &[usize], s: f32| dev.upload(&random(&mut seed, dims, s));
        let gelu = mlp == Mlp::Gelu;
        Ok(Layer {
            e,
            k,
            mlp,
            router: up(&[e, c], sc)?,
            w1: up(&[e, f, c], sc)?,
            b1: if gelu { Some(up(&[e, f], 0.1)?) } else { None },
            up: if gelu { None } else { Some(up(&[e, f, c], sc)?) },
            w2: up(&[e, c, f], sf)?,
            b2: if gelu { Some(up(&[e, c], 0.1)?) } else { None },
            dense1: up(&[2 * f, c], sc)?,
            dense_b1: if gelu { Some(up(&[2 * f], 0.1)?) } else { None },
            dense_up: if gelu { None } else { Some(up(&[2 * f, c], sc)?) },
            dense2: up(&[c, 2 * f], sf)?,
            dense_b2: if gelu { Some(up(&[c], 0.1)?) } else { None },
        })
    }

    /// `h [T, C]` through the MoE layer → `[T, C]`, experts bucketed or one GEMV per pick.
    fn moe(&self, d: &Counted, h: &Tensor, bucketed: bool) -> R<Tensor> {
        let (t, c) = (h.dims()[0], h.dims()[1]);
        let logits = d.exec1(&Op::Matmul { trans_b: true }, &[h, &self.router])?;
        let route = Op::MoeRoute { k: self.k, sigmoid: false, groups: 1, topk_group: 1, norm: true, scale: 1.0 };
        let mut picks = d.exec(&route, &[&logits])?;
        let (idx, w) = (picks.pop().unwrap(), picks.pop().unwrap());
        let r = ExpertRouting::with(d.dev, idx, self.e, bucketed)?;
        // ExpertRouting runs 1 op (bucketing) when bucketed; matmul 1 op, or 3 with a per-pick bias.
        d.ops.set(d.ops.get() + bucketed as usize);
        let mm = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| -> R<Tensor> {
            d.ops.set(d.ops.get() + if !bucketed && b.is_some() { 3 } else { 1 });
            Ok(r.matmul(d.dev, x, w, b)?)
        };
        let y = match self.mlp {
            Mlp::Gelu => {
                let a = mm(h, &self.w1, self.b1.as_ref())?;
                let a = d.exec1(&Op::Gelu(GeluKind::Erf), &[&a])?;
                mm(&a, &self.w2, self.b2.as_ref())?
            }
            Mlp::SwiGlu => {
                let g = mm(h, &self.w1, None)?;
                let u = mm(h, self.up.as_ref().unwrap(), None)?;
                let m = d.exec1(&Op::Mul, &[&d.exec1(&Op::Silu, &[&g])?, &u])?;
                mm(&m, &self.w2, None)?
            }
        };
        let out = d.exec1(&Op::Matmul { trans_b: false }, &[&w.reshape(&[t, 1, self.k])?, &y])?;
        Ok(out.reshape(&[t, c])?)
    }

    /// The dense MLP of hidden 2F (the active FLOPs of top-2).
    fn dense(&self, d: &Counted, h: &Tensor) -> R<Tensor> {
        let mm = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| match b {
            Some(b) => d.exec1(&Op::Matmul { trans_b: true }, &[x, w, b]),
            None => d.exec1(&Op::Matmul { trans_b: true }, &[x, w]),
        };
        match self.mlp {
            Mlp::Gelu => {
                let a = d.exec1(&Op::Gelu(GeluKind::Erf), &[&mm(h, &self.dense1, self.dense_b1.as_ref())?])?;
                mm(&a, &self.dense2, self.dense_b2.as_ref())
            }
            Mlp::SwiGlu => {
                let g = d.exec1(&Op::Silu, &[&mm(h, &self.dense1, None)?])?;
                let m = d.exec1(&Op::Mul, &[&g, &mm(h, self.dense_up.as_ref().unwrap(), None)?])?;
                mm(&m, &self.dense2, None)
            }
        }
    }
}

type Job<'a> = &'a dyn Fn(&Counted) -> R<Tensor>;

/// Median milliseconds of `runs` runs of each job (after 2 warm-up rounds), each run waited for by
/// a download, and the ops one run records. The jobs take turns within every round, so the noise of
/// a shared machine falls on all of them alike.
fn time(dev: &Device, runs: usize, jobs: &[Job]) -> R<Vec<(f64, usize)>> {
    let mut ms = vec![Vec::new(); jobs.len()];
    let mut ops = vec![0; jobs.len()];
    for i in 0..runs + 2 {
        for (j, f) in jobs.iter().enumerate() {
            let d = Counted { dev, ops: Cell::new(0) };
            let before = gpu_dispatches(dev);
            let t0 = Instant::now();
            let y = f(&d)?;
            let after = gpu_dispatches(dev);
            pollster::block_on(dev.download(&y))?;
            if i >= 2 {
                ms[j].push(t0.elapsed().as_secs_f64() * 1e3);
            }
            if let (Some(a), Some(b)) = (before, after) {
                if (b - a) as usize != d.ops.get() {
                    return Err(format!("counted {} ops but the GPU recorded {} dispatches", d.ops.get(), b - a).into());
                }
            }
            ops[j] = d.ops.get();
        }
    }
    Ok(ms.into_iter().map(median).zip(ops).collect())
}

fn gpu_dispatches(dev: &Device) -> Option<u64> {
    match dev {
        Device::Gpu(g) => Some(g.dispatch_count()),
        _ => None,
    }
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let num = |k: &str, d: usize| -> R<usize> { Ok(flag(k).map_or(Ok(d), |s| s.parse())?) };
    let (runs, tokens, e, k, c, f) = (num("--runs", 9)?, num("--tokens", 128)?, num("--experts", 8)?, num("--k", 2)?, num("--c", 512)?, num("--f", 2048)?);
    let dev = match flag("--device").as_deref() {
        Some("gpu") => pollster::block_on(Device::gpu())?,
        _ => Device::cpu(),
    };
    let kind = dev.kind();
    let mut seed = 7u64;
    for mlp in [Mlp::Gelu, Mlp::SwiGlu] {
        let name = if mlp == Mlp::Gelu { "gelu" } else { "swiglu" };
        let layer = Layer::new(&dev, mlp, e, k, c, f)?;
        let h = dev.upload(&random(&mut seed, &[tokens, c], 1.0))?;
        let t = time(&dev, runs, &[&|d| layer.moe(d, &h, true), &|d| layer.moe(d, &h, false), &|d| layer.dense(d, &h)])?;
        let [(grouped, dg), (perpick, dp), (dense, dd)] = [t[0], t[1], t[2]];
        println!(
            "bench=moe_layer device={kind} mlp={name} tokens={tokens} experts={e} k={k} c={c} f={f} runs={runs} \
             grouped_ms={grouped:.3} perpick_ms={perpick:.3} dense_ms={dense:.3} \
             dispatches_grouped={dg} dispatches_perpick={dp} dispatches_dense={dd}"
        );
        if args.iter().any(|a| a == "--sweep") && mlp == Mlp::Gelu {
            for t in [1usize, 2, 4, 8, 16, 32] {
                let h = dev.upload(&random(&mut seed, &[t, c], 1.0))?;
                let r = time(&dev, runs, &[&|d| layer.moe(d, &h, true), &|d| layer.moe(d, &h, false)])?;
                let (g, p) = (r[0].0, r[1].0);
                println!("bench=moe_sweep device={kind} mlp={name} tokens={t} picks={} grouped_ms={g:.3} perpick_ms={p:.3}", t * k);
            }
        }
    }
    Ok(())
}
