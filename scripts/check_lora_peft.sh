#!/usr/bin/env bash
# Proves that what `taskloom lora` writes is what PEFT and transformers load (needs the reference
# venv, so it is not part of CI; run after ../shared/refstack/setup.sh .refstack):
#   1. `lora combine` for all 11 combination types on the tiny Llama's adapters d and e; PEFT loads
#      each written adapter folder (tests/fixtures/make_lora_goldens.py --check) and its logits must
#      equal taskloom's own run of the same folder (`run --adapter ... --dump`) within 1e-5;
#   2. `lora fuse` of llama/a and bert-cls/a; transformers loads each merged folder and its logits
#      must equal PEFT's merge_and_unload logits (tests/fixtures/lora/expected.json) within 1e-5.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${REFPY:-$PWD/.refstack/bin/python}
export HF_HUB_OFFLINE=1
cargo build -q -p taskloom-cli
T=target/debug/taskloom
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
base=tests/fixtures/tiny/llama
ids=1,5,17,3,42,8,63,22,9
for c in linear cat svd ties ties_svd dare_linear dare_ties dare_linear_svd dare_ties_svd magnitude_prune magnitude_prune_svd; do
  $T lora combine --model $base --adapter tests/fixtures/lora/llama/d=0.6 --adapter tests/fixtures/lora/llama/e=0.4 \
    --combination $c --density 0.5 --seed 7 -o "$work/$c" >/dev/null
  $T run --model $base --ids $ids --adapter "$work/$c" --max-tokens 0 --device cpu --dump "$work/$c.safetensors"
  "$PY" - "$work/$c.safetensors" "$work/$c.json" <<'PY'
import json, sys
from safetensors.numpy import load_file
l = load_file(sys.argv[1])["logits"]
json.dump({"ids": [1, 5, 17, 3, 42, 8, 63, 22, 9], "logits": l.flatten().tolist()}, open(sys.argv[2], "w"))
PY
  "$PY" tests/fixtures/make_lora_goldens.py --check "$work/$c" $base "$work/$c.json" 2>/dev/null | tail -1
done
$T lora fuse --model $base --adapter tests/fixtures/lora/llama/a -o "$work/fused-llama" --device cpu >/dev/null
$T lora fuse --model tests/fixtures/lora/bert-cls --adapter tests/fixtures/lora/bert-cls/a -o "$work/fused-bert" --device cpu >/dev/null
"$PY" - "$work" <<'PY' 2>/dev/null
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
w = sys.argv[1]
exp = json.load(open("tests/fixtures/lora/expected.json"))["adapters"]
bad = 0
for kind, cls, key in (("fused-llama", AutoModelForCausalLM, "llama/a"), ("fused-bert", AutoModelForSequenceClassification, "bert-cls/a")):
    m = cls.from_pretrained(f"{w}/{kind}").eval()
    c = exp[key]
    kw = {"attention_mask": torch.tensor([c["attention_mask"]])} if "attention_mask" in c else {}
    with torch.no_grad():
        l = m(torch.tensor([c["ids"]]), **kw).logits.flatten()
    d = (l - torch.tensor(c["merged_logits"])).abs().max().item()
    print(f"{kind}: transformers loads it; max |logits - PEFT merge_and_unload| = {d:.3e} -> {'OK' if d <= 1e-5 else 'MISMATCH'}")
    bad += d > 1e-5
sys.exit(bad)
PY
