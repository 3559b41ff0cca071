#!/usr/bin/env bash
# Builds the npm package's WebAssembly into pkg/dist/ (git-ignored):
#   cargo (profile `wasm`: release, opt-level s, fat LTO) -> wasm-bindgen --target web -> wasm-opt -Oz.
# Prints the .wasm's size uncompressed and gzipped (-9). What makes it big: TASKLOOM_WASM_SIZES=1 prints
# code bytes per crate and the largest functions (scripts/wasm_sizes.py on cargo's output, which still
# has its name section).
# Needs: rustup target wasm32-unknown-unknown, wasm-bindgen-cli = the wasm-bindgen version in
# Cargo.lock, and `npm ci` at the repo root (wasm-opt comes from npm binaryen; Debian's binaryen 108
# silently breaks wasm-bindgen output, so it must never be picked up).
# Env: TASKLOOM_WASM_OPT=0 skips wasm-opt; TASKLOOM_WASM_SIMD=0 builds without SIMD128;
# TASKLOOM_WASM_SIZES=1 prints the size breakdown.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=pkg/dist
export PATH="$root/node_modules/.bin:$PATH"

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  echo "build-wasm: wasm-bindgen CLI is '${have:-missing}', Cargo.lock has $want;" \
       "run: cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi

# SIMD128 turns on gemm's wasm microkernels for the CPU path (every browser with WebGPU has SIMD128,
# and so does Node >= 16). Set for the wasm target only, so host build scripts are unaffected.
if [ "${TASKLOOM_WASM_SIMD:-1}" != 0 ]; then
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS:-} -C target-feature=+simd128"
fi

echo "build-wasm: cargo build (profile wasm)"
cargo build -p taskloom-web --lib --target wasm32-unknown-unknown --profile wasm
wasm=${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/wasm/taskloom_web.wasm
if [ "${TASKLOOM_WASM_SIZES:-0}" != 0 ]; then
  python3 scripts/wasm_sizes.py "$wasm" 30
fi

echo "build-wasm: wasm-bindgen --target web -> $out"
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" "$wasm"

bg="$out/taskloom_web_bg.wasm"
if [ "${TASKLOOM_WASM_OPT:-1}" != 0 ]; then
  opt="$root/node_modules/.bin/wasm-opt"
  if [ ! -x "$opt" ]; then
    echo "build-wasm: $opt missing (run npm ci at the repo root), or set TASKLOOM_WASM_OPT=0" >&2
    exit 1
  fi
  echo "build-wasm: $("$opt" --version) -Oz --converge"
  # -Oz --converge: 1% smaller than -Os uncompressed, the same gzipped, MiniLM embedding time within
  # noise (measured 2026-11-24: 3,654,843 vs 3,692,460 bytes; 1,357,284 vs 1,357,718 gzipped).
  # The features rustc's wasm32 target emits by default, plus SIMD.
  "$opt" -Oz --converge --enable-simd --enable-bulk-memory --enable-reference-types --enable-multivalue \
    --enable-mutable-globals --enable-nontrapping-float-to-int --enable-sign-ext \
    "$bg" -o "$bg.opt"
  mv "$bg.opt" "$bg"
fi
before=$(wc -c <"$wasm")
echo "build-wasm: $bg: $(wc -c <"$bg") bytes uncompressed, $(gzip -9c "$bg" | wc -c) bytes gzipped (-9)" \
     "(cargo output with names and bindgen sections: $before bytes)"
