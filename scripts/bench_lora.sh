#!/usr/bin/env bash
# LoRA benchmarks against PEFT (shared/peers), peer and taskloom back to back in the same run:
#   fuse one r=16 adapter (q,k,v,o,gate,up,down) into SmolLM2-135M fp32: PEFT merge_and_unload vs
#     taskloom fuse (CPU, and the GPU with DEVICES="cpu gpu");
#   a batch of 8 sequences x 32 tokens with 8 different adapters vs one adapter: PEFT's mixed-batch
#     ratio vs ours;
#   time to first token after switching adapters, unfused vs fused (taskloom only).
# 2 threads everywhere (ANCHOR_THREADS, RAYON_NUM_THREADS). Figures are medians; read the ratios.
#
#   bash scripts/bench_lora.sh            # DEVICES="cpu" by default; RUNS=7
# One-time peer setup (GGUF -> fp32 HF folder, the 8 adapters) runs when its output is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export ANCHOR_THREADS=${ANCHOR_THREADS:-2}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$ANCHOR_THREADS}
export ANCHOR_WORK=${ANCHOR_WORK:-/tmp/anchors}
export REFPY=${REFPY:-$ROOT/.refstack/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PEERS=${PEERS:-$(cd "$ROOT/../shared/peers" && pwd)}
DEVICES=${DEVICES:-cpu}
RUNS=${RUNS:-7}
HF=${SMOLLM_HF:-$ANCHOR_WORK/smollm2-hf}
[ -f "$HF/config.json" ] || (cd "$PEERS" && "$REFPY" smollm2_convert.py)
[ -f "$ANCHOR_WORK/lora/a7/adapter_model.safetensors" ] || (cd "$PEERS" && "$REFPY" lora_make_adapters.py)
cargo build --release -q -p taskloom --example bench_lora
BIN=$(mktemp -p target)  # /tmp may be mounted noexec
cp target/release/examples/bench_lora "$BIN"
out=$(mktemp)
(cd "$PEERS" && "$REFPY" lora_merge_unload.py --runs "$RUNS" 2>/dev/null | grep '^anchor=') | tee -a "$out"
(cd "$PEERS" && "$REFPY" lora_mixed_batch.py --runs "$RUNS" 2>/dev/null | grep '^anchor=') | tee -a "$out"
for d in $DEVICES; do "$BIN" "$HF" "$ANCHOR_WORK/lora" --device "$d" --runs "$RUNS" | tee -a "$out"; done
rm -f "$BIN"
python3 - "$out" <<'PY'
import re, sys
rows = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in open(sys.argv[1])]
peft_merge = next(float(r["merge_ms"]) for r in rows if r.get("anchor") == "lora_merge_unload")
peft_mix = next(r for r in rows if r.get("anchor") == "lora_mixed_batch")
print(f"\nPEFT merge_and_unload {peft_merge:.1f} ms; PEFT mixed/one {float(peft_mix['ratio_mixed_over_one']):.3f}")
for r in rows:
    if r.get("bench") == "lora_fuse":
        print(f"taskloom fuse on {r['device']}: {float(r['fuse_ms']):.1f} ms = {float(r['fuse_ms']) / peft_merge:.3f}x PEFT (target <= 0.05x)")
    if r.get("bench") == "lora_mixed_batch":
        print(f"taskloom mixed/one on {r['device']}: {float(r['ratio_mixed_over_one']):.3f} (target <= 1.1; PEFT {float(peft_mix['ratio_mixed_over_one']):.3f}); "
              f"one adapter {float(r['one_adapter_ms']):.1f} ms vs PEFT {float(peft_mix['one_adapter_ms']):.1f} ms")
    if r.get("bench") == "lora_switch":
        print(f"taskloom switch on {r['device']}: first token {float(r['ttft_unfused_ms']):.1f} ms unfused, {float(r['ttft_fused_ms']):.1f} ms fused")
PY
rm -f "$out"
