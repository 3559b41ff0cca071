#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (root, or with sudo):
#
#   bash scripts/demo.sh [--device auto|cpu|gpu]
#
# Installs what the native binary needs when it is missing (a C toolchain for linking, Rust via
# rustup, Mesa's lavapipe Vulkan driver so there is a GPU adapter even without a GPU), then builds
# and runs `taskloom demo`: prints the device it picked and checks a matmul on it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

source scripts/lib.sh

ensure_debs ca-certificates curl build-essential mesa-vulkan-drivers libvulkan1
ensure_rust
# Mesa complains on every adapter query without a valid XDG_RUNTIME_DIR.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d)
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi
echo "== cargo run --release -p taskloom-cli -- demo $*"
cargo run --release -p taskloom-cli -- demo "$@"
