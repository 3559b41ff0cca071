#!/usr/bin/env bash
# Model-level CPU benchmarks against the shared/peers anchors, peer and taskloom back to back in the
# same run, printed as one table of figures and ratios:
#   MiniLM (all-MiniLM-L6-v2) embeddings, batch 1 and 32 at 128 tokens: PyTorch, onnxruntime, taskloom
#   SmolLM2-135M-Instruct (Q4_1 GGUF) greedy decode / prefill / pp256: PyTorch fp32, llama.cpp, taskloom
#   peak RSS of `taskloom run` on the GGUF (/usr/bin/time -v) against the weight bytes
# Every figure is a median of >= 5 timed runs after warm-up; 2 threads everywhere (ANCHOR_THREADS for
# the peers, RAYON_NUM_THREADS for ours). On a shared box the absolute times are noisy: read the
# ratios, and look at the load1 column (the 1-minute load average when the step started).
#
#   bash scripts/bench_models.sh                          # everything (builds first)
#   ONLY="minilm smollm" ROUNDS=2 bash scripts/bench_models.sh
#   SKIP_BUILD=1 OUT=/tmp/bench_models.txt bash scripts/bench_models.sh
#
# Variables: ONLY (subset of: minilm smollm rss llamacpp), ROUNDS (repeat every peer/ours pair; the
# table takes each side's best figure over rounds -- interference from a concurrent build only ever
# slows a side down, and PyTorch's spinning OpenMP threads can collapse 10x under it), RUNS_MINILM (10), RUNS_SMOLLM (5), OUT (table
# and raw lines, default /tmp/bench_models.txt), PEERS (../shared/peers), REFPY (.refstack/bin/python),
# LLAMAPY ($ANCHOR_WORK/llamacpp-venv/bin/python; the llama.cpp step is skipped when it is missing),
# ANCHOR_WORK (/tmp/anchors), MINILM_DIR, SMOLLM_GGUF (target/models/...), SKIP_BUILD=1.
# One-time peer setup (ONNX export, GGUF -> fp32 HF folder) runs here when its output is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export ANCHOR_THREADS=${ANCHOR_THREADS:-2}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$ANCHOR_THREADS}
export ANCHOR_WORK=${ANCHOR_WORK:-/tmp/anchors}
export MINILM_DIR=${MINILM_DIR:-$ROOT/target/models/minilm}
export SMOLLM_GGUF=${SMOLLM_GGUF:-$ROOT/target/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
export REFPY=${REFPY:-$ROOT/.refstack/bin/python}
export LLAMAPY=${LLAMAPY:-$ANCHOR_WORK/llamacpp-venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PEERS=${PEERS:-$(cd "$ROOT/../shared/peers" 2>/dev/null && pwd || echo /work/shared/peers)}
ONLY=${ONLY:-minilm smollm rss llamacpp}
ROUNDS=${ROUNDS:-1}
RUNS_MINILM=${RUNS_MINILM:-10}
RUNS_SMOLLM=${RUNS_SMOLLM:-5}
OUT=${OUT:-/tmp/bench_models.txt}
RAW=$(mktemp)
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- core cli || echo +dirty)  # what gets built
mkdir -p "$ANCHOR_WORK"
want() { [[ " $ONLY " == *" $1 "* ]]; }
log() { echo "$*" >&2; }

[ -f "$MINILM_DIR/model.safetensors" ] && [ -f "$SMOLLM_GGUF" ] || bash scripts/fetch-models.sh
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p taskloom --example bench_models || exit 1
  cargo build --release -q -p taskloom-cli || exit 1
fi
# Private copies: a concurrent `cargo build` must not swap the binaries between rounds.
BIN=$(mktemp -d)
cp "$ROOT/target/release/examples/bench_models" "$ROOT/target/release/taskloom" "$BIN/" || exit 1
BENCH=$BIN/bench_models
CLI=$BIN/taskloom
ONNX=$ANCHOR_WORK/minilm-onnx/all-MiniLM-L6-v2/onnx/model.onnx
if want minilm && [ ! -f "$ONNX" ]; then
  log "setup: minilm_export_onnx.py"; (cd "$PEERS" && "$REFPY" minilm_export_onnx.py) >"$ANCHOR_WORK/log-minilm_export.txt" 2>&1
fi
if want smollm && [ ! -f "$ANCHOR_WORK/smollm2-hf/model.safetensors" ]; then
  log "setup: smollm2_convert.py"; (cd "$PEERS" && "$REFPY" smollm2_convert.py) >"$ANCHOR_WORK/log-smollm2_convert.txt" 2>&1
fi

# step ROUND NAME CMD...: runs CMD under /usr/bin/time -v; keeps its `anchor=`/`bench=` lines with
# the round, the load average at the start and the peak RSS appended.
step() {
  local round=$1 name=$2; shift 2
  local load log=$ANCHOR_WORK/log-bench-$name.txt
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "[round $round] $name (load1=$load)"
  /usr/bin/time -v "$@" >"$log" 2>&1
  local rc=$? rss
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$log")
  if grep -qE '^(anchor|bench)=' "$log"; then
    grep -E '^(anchor|bench)=' "$log" | sed "s/\$/ step=$name round=$round load1=$load proc_peak_rss_mb=${rss:-?}/" | tee -a "$RAW" >&2
  else
    echo "bench=$name status=FAILED rc=$rc log=$log round=$round" | tee -a "$RAW" >&2
  fi
}

# `taskloom run` on the GGUF as a user runs it: JSON figures + peak RSS of the whole process.
cli_run() {
  local j
  j=$("$CLI" run --model "$SMOLLM_GGUF" --text "What is the capital of France? Answer in one sentence." \
      --chat --max-tokens 64 --json --device cpu) || return 1
  J="$j" python3 -c '
import json, os
j = json.loads(os.environ["J"])
pre = 1e3 * (j["prefill_s"] or 0)
print("bench=taskloom_cli_run prompt_tokens=%d generated=%d prefill_ms=%.1f decode_tok_s=%.1f"
      % (len(j["prompt_ids"]), len(j["ids"]), pre, j["decode_tokens_per_s"]))'
}
export -f cli_run; export CLI

for r in $(seq 1 "$ROUNDS"); do
  if want minilm; then
    step "$r" minilm_torch "$REFPY" "$PEERS/minilm_torch.py" --runs "$RUNS_MINILM"
    step "$r" minilm_ort "$REFPY" "$PEERS/minilm_ort.py" --runs "$RUNS_MINILM"
    step "$r" minilm_taskloom "$BENCH" minilm "$MINILM_DIR" "$PEERS/minilm_inputs.json" --runs "$RUNS_MINILM" \
      --ref "$ANCHOR_WORK/minilm-onnx/ref_text128.json" --ops
  fi
  if want smollm; then
    step "$r" smollm2_torch "$REFPY" "$PEERS/smollm2_torch_decode.py" --runs "$RUNS_SMOLLM"
    step "$r" smollm2_taskloom "$BENCH" smollm "$SMOLLM_GGUF" --runs "$RUNS_SMOLLM" --new 64 --ops
  fi
  if want rss; then
    for i in 1 2 3; do step "$r" taskloom_cli_run bash -c cli_run; done
  fi
  if want llamacpp; then
    if [ -x "$LLAMAPY" ] && "$LLAMAPY" -c 'import llama_cpp' 2>/dev/null; then
      step "$r" smollm2_llamacpp "$LLAMAPY" "$PEERS/smollm2_llamacpp.py" --runs "$RUNS_SMOLLM"
      want smollm || step "$r" smollm2_taskloom "$BENCH" smollm "$SMOLLM_GGUF" --runs "$RUNS_SMOLLM" --new 64
    else
      echo "bench=smollm2_llamacpp status=SKIPPED no llama_cpp in LLAMAPY=$LLAMAPY (see $PEERS/README.md)" | tee -a "$RAW" >&2
    fi
  fi
done

GGUF_MB=$(( $(stat -c %s "$SMOLLM_GGUF") / 1000000 ))
{
  echo "# bench_models $(date -u +%FT%TZ) host=$(hostname) cpus=$(nproc) threads=$ANCHOR_THREADS rounds=$ROUNDS commit=$COMMIT"
  GGUF_MB=$GGUF_MB python3 - "$RAW" <<'EOF'
import os, re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    name = kv.get("anchor") or kv.get("bench")
    rows.setdefault(name, []).append(kv)

RATE = ("tok_s", "seq_per_s")

def fig(name, key):
    """Best over rounds: the highest rate, the lowest time (medians of the CLI's 3 runs per round)."""
    vals = []
    for kv in rows.get(name, []):
        try:
            vals.append(float(kv[key]))
        except (KeyError, ValueError):
            pass
    if not vals:
        return None
    if name == "taskloom_cli_run" or not key.endswith(("_ms", "_s") + RATE):
        return statistics.median(vals)
    return max(vals) if key.endswith(RATE) else min(vals)

def loads(name):
    return ",".join(kv.get("load1", "?") for kv in rows.get(name, [])) or "-"

def f(x, unit=""):
    return "-" if x is None else (f"{x:.2f}{unit}" if abs(x) < 100 else f"{x:.1f}{unit}")

out = []
def row(what, ours, peer, peer_name, kind, ours_name, peer_step):
    # kind "time": ratio = ours/peer time (> 1: we are slower); "rate": ours/peer tok/s (> 1: faster)
    ratio = None if ours is None or peer is None or peer == 0 else ours / peer
    note = "ours/peer time, <1 = faster" if kind == "time" else "ours/peer rate, >1 = faster"
    out.append(f"| {what} | {f(ours)} | {peer_name} {f(peer)} | {f(ratio, 'x')} | {note} | {loads(ours_name)} / {loads(peer_step)} |")

out.append("Figures: best of rounds per side; load1 = 1-min load average when each round's step started.")
out.append("")
out.append("| measurement | taskloom | peer | ratio | meaning | load1 ours / peer |")
out.append("|---|---|---|---|---|---|")
T, O, M = "minilm_torch", "minilm_ort", "minilm_taskloom"
for b, key in (("1", "b1_ms"), ("32", "b32_ms")):
    for peer, pn in ((T, "torch"), (O, "ORT")):
        row(f"MiniLM batch {b} x 128 tok, ms (forward+pool)", fig(M, key), fig(peer, key), pn, "time", M, peer)
S, L, C = "smollm2_torch", "smollm2_llamacpp", "smollm2_taskloom"
for key, what, kind in (("decode_tok_s", "SmolLM2 decode tok/s (64 new)", "rate"),
                        ("prefill_ms", "SmolLM2 prefill ms (chat prompt)", "time"),
                        ("pp256_tok_s", "SmolLM2 pp256 tok/s", "rate")):
    for peer, pn in ((S, "torch fp32"), (L, "llama.cpp Q4_1")):
        if rows.get(peer) and peer in rows and fig(peer, key) is not None:
            row(what, fig(C, key), fig(peer, key), pn, kind, C, peer)
if fig(C, "generate_tok_s") is not None:
    row("SmolLM2 generate() tok/s incl. prefill", fig(C, "generate_tok_s"), fig(S, "generate_tok_s"), "torch fp32", "rate", C, S)
print("\n".join(out))
print()
rss = fig("taskloom_cli_run", "proc_peak_rss_mb")
gg = float(os.environ["GGUF_MB"])
if rss is not None:
    print(f"taskloom run (CLI, GGUF, cpu): peak RSS {rss:.0f} MB = {rss/538:.2f}x the f32 weights (538 MB; the CPU now keeps Q4_1/Q8_0 as they are), "
          f"{rss/gg:.1f}x the GGUF file ({gg:.0f} MB); CLI prefill_ms={f(fig('taskloom_cli_run', 'prefill_ms'))} "
          f"decode_tok_s={f(fig('taskloom_cli_run', 'decode_tok_s'))} over {f(fig('taskloom_cli_run', 'generated'))} tokens (stops at EOS)")
if fig(C, "peak_rss_mb") is not None:
    print(f"bench_models smollm (same load path): peak RSS {fig(C, 'peak_rss_mb'):.0f} MB, after load "
          f"{fig(C, 'rss_after_load_mb'):.0f} MB (anon {fig(C, 'rss_anon_mb'):.0f}, file {fig(C, 'rss_file_mb'):.0f}): "
          f"the peak is a load-time transient")
for name in (S, L, M, T, O):
    r = fig(name, "proc_peak_rss_mb")
    if r is not None:
        print(f"peak RSS of the {name} process: {r:.0f} MB")
print()
print("where our time goes (ops timed alone on the same shapes; last round):")
for name in ("minilm_taskloom_ops", "smollm2_taskloom_decode_ops"):
    for kv in rows.get(name, [])[-2:] if name == "minilm_taskloom_ops" else rows.get(name, [])[-1:]:
        keep = [k for k in kv if k not in ("bench", "step", "round", "load1", "proc_peak_rss_mb")]
        print("  " + name + " " + " ".join(f"{k}={kv[k]}" for k in keep))
EOF
  echo
  echo "# raw lines"
  cat "$RAW"
} | tee "$OUT"
rm -rf "$RAW" "$BIN"
