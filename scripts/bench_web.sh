#!/usr/bin/env bash
# Browser benchmark, taskloom vs Transformers.js (issue 7), back to back in one run:
#   all-MiniLM-L6-v2 embedding of shared/peers/minilm_inputs.json `text128` (batch 1, 128 tokens) in
#   headless Chromium, wasm CPU path, median of RUNS timed calls after 3 warm-ups, both pages served
#   from 127.0.0.1 with COOP/COEP (crossOriginIsolated) and no-store.
#   - peer: shared/peers/tjs_embed.mjs (Transformers.js 4.x, ONNX Runtime Web's wasm backend, the ONNX
#     export of the same weights) at 1 thread and, when THREADS2=1 (default), 2 threads.
#   - taskloom: scripts/bench_web.mjs (pkg/ as built by scripts/build-wasm.sh; the packaged HF folder).
#     Our wasm is single-threaded (no wasm threads build), so its one figure is compared with both.
#   Then the .wasm sizes, and (DEMOS=1, needs TASKLOOM_CLI) the demos' page-load -> first-result times
#   from tests/browser/demos.test.mjs.
# Setup (once): ANCHOR_WORK=/tmp/anchors; the peer's ONNX export in $ANCHOR_WORK/minilm-onnx
# (shared/peers/minilm_export_onnx.py) and `bash shared/peers/tjs_setup.sh` (npm only, --ignore-scripts);
# `npm ci` here; `bash scripts/build-wasm.sh`.
# Env: RUNS (10), PEERS (../shared/peers), ANCHOR_WORK (/tmp/anchors), THREADS2 (1), DEMOS (0), RECORD (1).
set -euo pipefail
cd "$(dirname "$0")/.."
export ANCHOR_WORK=${ANCHOR_WORK:-/tmp/anchors}
PEERS=${PEERS:-$(cd .. && pwd)/shared/peers}
export PEERS
RUNS=${RUNS:-10}
[ -f pkg/dist/taskloom_web_bg.wasm ] || { echo "bench_web: pkg/dist missing: run bash scripts/build-wasm.sh" >&2; exit 1; }
[ -f "$PEERS/tjs_embed.mjs" ] || { echo "bench_web: $PEERS/tjs_embed.mjs missing (set PEERS)" >&2; exit 1; }

log=$(mktemp)
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
peer1=$(node "$PEERS/tjs_embed.mjs" --device wasm --threads 1 --runs "$RUNS" | tee -a "$log")
echo "$peer1"
ours=$(node scripts/bench_web.mjs --device cpu --runs "$RUNS" | tee -a "$log")
echo "$ours"
peer2=""
if [ "${THREADS2:-1}" = 1 ]; then
  peer2=$(node "$PEERS/tjs_embed.mjs" --device wasm --threads 2 --runs "$RUNS" | tee -a "$log")
  echo "$peer2"
fi
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
t=$(field "$ours" embed_ms)
p1=$(field "$peer1" pipe_ms)
echo "ratio taskloom/tjs (1 thread): $(awk -v a="$t" -v b="$p1" 'BEGIN { printf "%.2f", a / b }') ($t ms vs $p1 ms; target <= 1.0)"
if [ -n "$peer2" ]; then
  p2=$(field "$peer2" pipe_ms)
  echo "ratio taskloom(1 thread)/tjs(2 threads): $(awk -v a="$t" -v b="$p2" 'BEGIN { printf "%.2f", a / b }') ($t ms vs $p2 ms)"
fi
ours_wasm=$(wc -c <pkg/dist/taskloom_web_bg.wasm)
ort_wasm=$(field "$peer1" wasm | tr ',' '\n' | head -1 | cut -d: -f2)
echo "wasm size: taskloom $ours_wasm bytes ($(gzip -9c pkg/dist/taskloom_web_bg.wasm | wc -c) gzipped), ORT-web ${ort_wasm:-?} bytes (target <= 2000000)"

# For the record (issue 3): MiniLM on WebGPU (SwiftShader in headless Chromium), and the SmolLM2
# GGUF's greedy decode on the wasm CPU path and on WebGPU. RECORD=0 skips them.
if [ "${RECORD:-1}" = 1 ]; then
  node scripts/bench_web.mjs --device webgpu --runs "$RUNS" | tee -a "$log"
  node scripts/bench_web.mjs --model smollm2 --device cpu --runs 3 | tee -a "$log"
  node scripts/bench_web.mjs --model smollm2 --device webgpu --runs 1 | tee -a "$log" # SwiftShader: minutes per run
fi

if [ "${DEMOS:-0}" = 1 ]; then
  : "${TASKLOOM_CLI:?DEMOS=1 needs TASKLOOM_CLI (a built taskloom binary)}"
  export PATH=$PWD/node_modules/.bin:$PATH XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
  node --test --test-concurrency=1 tests/browser/demos.test.mjs 2>&1 | grep -E "^# (digits|studio|text) .*first result" | sed 's/^# /demo: /' | tee -a "$log"
fi
echo "log: $log"
