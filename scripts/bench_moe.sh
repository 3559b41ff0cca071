#!/usr/bin/env bash
# One MoE layer (issue 6): taskloom (core/examples/bench_moe.rs) and the PyTorch Mixtral-style block
# (scripts/bench_moe.py) back to back: top-2 of 8 experts, 128 tokens, C = 512, F = 2048, GELU and
# SwiGLU experts, 2 threads on both sides. Prints each side's medians and the ratios:
#   taskloom grouped / PyTorch MoE, taskloom grouped / taskloom dense (same active FLOPs),
#   per-pick (old ExpertMatmul path) / grouped, and the dispatches per MoE layer.
#
#   bash scripts/bench_moe.sh            # DEVICES="cpu" by default (DEVICES="cpu gpu" too); RUNS=9
#   SWEEP=1 bash scripts/bench_moe.sh    # also grouped vs per-pick for 1..32 tokens (BUCKET_MIN_PICKS)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$THREADS}
REFPY=${REFPY:-$ROOT/.refstack/bin/python}
[ -x "$REFPY" ] || REFPY=$ROOT/../main/.refstack/bin/python
DEVICES=${DEVICES:-cpu}
RUNS=${RUNS:-9}
cargo build --release -q -p taskloom --example bench_moe
BIN=$(mktemp -p target)  # /tmp may be mounted noexec
cp target/release/examples/bench_moe "$BIN" && chmod +x "$BIN"
out=$(mktemp)
OMP_NUM_THREADS=$THREADS "$REFPY" scripts/bench_moe.py --runs "$RUNS" | tee -a "$out"
for d in $DEVICES; do "$BIN" --device "$d" --runs "$RUNS" ${SWEEP:+--sweep} | tee -a "$out"; done
rm -f "$BIN"
python3 - "$out" <<'PY'
import re, sys
rows = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in open(sys.argv[1])]
torch_rows = {r["mlp"]: r for r in rows if r.get("anchor") == "moe_layer"}
print()
for r in rows:
    if r.get("bench") != "moe_layer":
        continue
    t = torch_rows.get(r["mlp"])
    g, p, d = float(r["grouped_ms"]), float(r["perpick_ms"]), float(r["dense_ms"])
    line = f"{r['device']} {r['mlp']}: grouped {g:.2f} ms, per-pick {p:.2f} ms ({p / g:.2f}x grouped), dense {d:.2f} ms (MoE/dense {g / d:.2f})"
    if t:
        line += f"; PyTorch MoE {float(t['moe_ms']):.2f} ms, dense {float(t['dense_ms']):.2f} ms -> taskloom/PyTorch MoE {g / float(t['moe_ms']):.2f}"
    print(line)
    print(f"  dispatches per MoE layer: grouped {r['dispatches_grouped']}, per-pick {r['dispatches_perpick']}, dense MLP {r['dispatches_dense']}")
PY
rm -f "$out"
