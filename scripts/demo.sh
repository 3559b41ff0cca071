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

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; exit 1
  fi
}

missing=()
for p in ca-certificates curl build-essential mesa-vulkan-drivers libvulkan1; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# Mesa complains on every adapter query without a valid XDG_RUNTIME_DIR.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  XDG_RUNTIME_DIR=$(mktemp -d)
  chmod 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi
echo "== cargo run --release -p taskloom-cli -- demo $*"
cargo run --release -p taskloom-cli -- demo "$@"
