#!/usr/bin/env bash
# Our f32 matmul (taskloom bench matmul, release build) against numpy's OpenBLAS on the same
# machine, same thread count, same method (median of timed runs of ~2 GFLOP after a warm-up).
# Prints both and our ratio to OpenBLAS at 1024 and 2048; the target is >= 0.8x.
#
#   scripts/bench_matmul.sh                   # CPU, 2 threads
#   DEVICE=all THREADS=4 RUNS=9 scripts/bench_matmul.sh
#
# Needs python3 with numpy and threadpoolctl (pip install numpy threadpoolctl). Run it on a quiet
# machine: a concurrent build shows up as noise of +-30%. The peer runs before and after ours and
# the better of its two figures is used, so interference can only make our ratio look worse.
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
RUNS=${RUNS:-7}
SIZES=${SIZES:-256,512,1024,2048}
PEER=${PEER:-/work/shared/peers/sgemm.py}
PY=${PYTHON:-python3}

cargo build --release -q -p taskloom-cli
peer_before=$("$PY" "$PEER" --threads "$THREADS" --runs "$RUNS" --sizes "$SIZES")
ours=$(RAYON_NUM_THREADS=$THREADS target/release/taskloom bench matmul --device "$DEVICE" \
    --sizes "$SIZES" --runs "$RUNS" --json)
peer_after=$("$PY" "$PEER" --threads "$THREADS" --runs "$RUNS" --sizes "$SIZES")

OURS="$ours" PEER_LINES="$peer_before
$peer_after" "$PY" - <<'EOF'
import json, os, re
ours = json.loads(os.environ["OURS"])["results"]
peer = {}
for line in os.environ["PEER_LINES"].splitlines():
    print(line)
    for n, g in re.findall(r"\bn(\d+)=([\d.]+)", line):
        peer[int(n)] = max(peer.get(int(n), 0.0), float(g))
print(f"{'device':<8} {'N':>6} {'taskloom':>10} {'OpenBLAS':>10} {'ratio':>7}   (GFLOP/s)")
for r in ours:
    n, g = r["n"], r["gflops"]
    p = peer.get(n)
    ratio = f"{g / p:7.2f}" if p else "      -"
    flag = "  <- below 0.8x" if p and r["device"] == "cpu" and n >= 1024 and g / p < 0.8 else ""
    print(f"{r['device']:<8} {n:>6} {g:>10.1f} {(p or float('nan')):>10.1f} {ratio}{flag}")
for n in (1024, 2048):
    cpu = [r["gflops"] for r in ours if r["device"] == "cpu" and r["n"] == n]
    if cpu and n in peer:
        print(f"ratio to OpenBLAS at {n}: {cpu[0] / peer[n]:.2f}x (target >= 0.8x)")
EOF
