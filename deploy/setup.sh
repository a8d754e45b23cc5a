#!/usr/bin/env bash
# One-time setup on Debian/Ubuntu: the system libraries floor33 links against, and a release
# build. Safe to run again. Needs root (or sudo) for apt-get, and a Rust toolchain (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    pkg-config gcc libc6-dev libclang-dev \
    libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
else
  echo "no apt-get: install pkg-config, libclang and the FFmpeg development libraries" \
       "(avcodec, avformat, avutil, swscale) with your package manager" >&2
fi
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs" >&2; exit 1; }
cargo build --release --locked ${FLOOR33_FEATURES:+--features "$FLOOR33_FEATURES"}
