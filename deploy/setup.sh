#!/usr/bin/env bash
# One-time setup on Debian/Ubuntu: the system libraries floor33 links against, and a release
# build. Safe to run again. Needs root (or sudo) for apt-get, and a Rust toolchain (rustup).
#
# FLOOR33_FEATURES=cuda (or cuda,cudnn) builds for NVIDIA GPUs. When no nvcc is on PATH (or
# FLOOR33_CUDA_FROM_PYPI=1), the CUDA 13.0 compiler and libraries are installed from NVIDIA's
# PyPI wheels into FLOOR33_CUDA_DIR (default ~/.cache/floor33/cuda13) — no root, no toolkit —
# and the binary is linked with a run path to them. CUDA 13.0 needs an NVIDIA driver >= 580.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES=${FLOOR33_FEATURES:-}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS="pkg-config gcc libc6-dev libclang-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev"
[[ "$FEATURES" == *cuda* ]] && PKGS="$PKGS g++ python3 python3-venv"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $PKGS
else
  echo "no apt-get: install pkg-config, libclang and the FFmpeg development libraries" \
       "(avcodec, avformat, avutil, swscale) with your package manager" >&2
fi
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs" >&2; exit 1; }

cuda_from_pypi() {
  local dir=${FLOOR33_CUDA_DIR:-$HOME/.cache/floor33/cuda13}
  local cu=$dir/nvidia/cu13 links=$dir/links
  if [ ! -x "$cu/bin/nvcc" ] || [ ! -e "$cu/lib/libcublas.so.13" ]; then
    [ -x "$dir/venv/bin/pip" ] || python3 -m venv "$dir/venv"
    # One pip call into one --target (a second --target install into it would replace it).
    # nvcc must match the driver's CUDA version (a newer nvcc emits PTX the driver rejects),
    # so everything is pinned to 13.0, nvvm included (unpinned it pulls a newer one).
    "$dir/venv/bin/pip" install -q --no-deps --target "$dir" \
      nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
      nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 \
      "nvidia-cublas==13.0.*" nvidia-curand==10.4.0.35
  fi
  # The linker wants unversioned names; the wheels ship only the versioned ones.
  mkdir -p "$links"
  for n in cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 \
           curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
    ln -sf "$cu/lib/${n#*:}" "$links/lib${n%%:*}.so"
  done
  # libcuda comes with the driver. Without one (a build machine) link against a stub made
  # from cudarc's list of driver functions; the real driver is used where the binary runs.
  local libcuda
  libcuda=$( (ldconfig -p 2>/dev/null || true) | awk '/libcuda\.so\.1 /{print $NF; exit}')
  if [ -n "$libcuda" ]; then
    ln -sf "$libcuda" "$links/libcuda.so"
  else
    echo "no NVIDIA driver found: linking against a stub libcuda (the binary needs a driver to run)" >&2
    cargo fetch --locked -q
    local sys
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs | tail -1)
    grep -ohE "^\s+fn cu[A-Za-z0-9_]+\(" "$sys" | sed 's/^\s*fn //; s/(//' | sort -u |
      awk '{print "int " $1 "(void){return 999;}"}' > "$links/cuda_stub.c"
    gcc -shared -fPIC -o "$links/libcuda.so.1" -Wl,-soname,libcuda.so.1 "$links/cuda_stub.c"
    ln -sf libcuda.so.1 "$links/libcuda.so"
  fi
  if [[ "$FEATURES" == *cudnn* ]]; then
    [ -e "$dir/cudnn/nvidia/cudnn/lib/libcudnn.so.9" ] ||
      "$dir/venv/bin/pip" install -q --no-deps --target "$dir/cudnn" nvidia-cudnn-cu13
    ln -sf libcudnn.so.9 "$dir/cudnn/nvidia/cudnn/lib/libcudnn.so"
    export CUDNN_LIB=$dir/cudnn/nvidia/cudnn
    FLOOR33_RPATH=$dir/cudnn/nvidia/cudnn/lib:${FLOOR33_RPATH:-}
    LIBRARY_PATH=$dir/cudnn/nvidia/cudnn/lib:${LIBRARY_PATH:-}
  fi
  export CUDA_HOME=$cu CUDA_PATH=$cu PATH=$cu/bin:$PATH CUDARC_CUDA_VERSION=13000
  export LIBRARY_PATH=$links:$cu/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
  # Run path of the binaries: the wheel libraries (the driver's libcuda is found as usual).
  export FLOOR33_RPATH=$cu/lib${FLOOR33_RPATH:+:$FLOOR33_RPATH}
  echo "CUDA 13.0 from PyPI wheels in $dir"
}

if [[ "$FEATURES" == *cuda* ]]; then
  if [ "${FLOOR33_CUDA_FROM_PYPI:-0}" = 1 ] || ! command -v nvcc >/dev/null; then
    cuda_from_pypi
  fi
  if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    # The GPU's compute capability (e.g. 9.0 -> 90); 90 (Hopper) when none can be queried.
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ' || true)
    export CUDA_COMPUTE_CAP=${cap:-90}
  fi
  if command -v nvidia-smi >/dev/null; then
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
    [ "${driver%%.*}" -ge 580 ] 2>/dev/null ||
      echo "warning: driver $driver is older than 580; CUDA 13.0 kernels may not load" >&2
  fi
  echo "building for compute capability $CUDA_COMPUTE_CAP (first cuda build: ~20 min on 2 cores)"
  # Later cargo commands (tests, deploy/gpu-check.sh) need the same environment.
  env_file=${CARGO_TARGET_DIR:-target}/floor33-cuda.env
  mkdir -p "$(dirname "$env_file")"
  for v in CUDA_HOME CUDA_PATH PATH CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP LIBRARY_PATH FLOOR33_RPATH CUDNN_LIB; do
    if [ -n "${!v:-}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
  done > "$env_file"
  echo "cuda build environment saved to $env_file (source it before other cargo commands)"
fi
cargo build --release --locked ${FEATURES:+--features "$FEATURES"}
