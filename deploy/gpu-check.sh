#!/usr/bin/env bash
# The GPU measurements of issue 10 in one run: the golden DDIM loop on the GPU in f32/f16/bf16,
# then `floor33 bench --json` for VC2 (f16 with a 50-step generation, bf16, f32, jobs/hour at
# batch 1 and 4) and VC1-1024 (f16). Writes everything to gpu-check-<time>/ and prints a table.
#
# In a checkout built with `FLOOR33_FEATURES=cuda bash deploy/setup.sh`:
#   bash deploy/gpu-check.sh
# With binaries cross-built on a machine without a GPU (no build on the GPU host): on the build
# machine `../shared/tools/gpu/build-cuda.sh --bin floor33 --test golden` packs them into .gpu/;
# copy the checkout with its .gpu/ to the GPU host and run the same command there: the packed
# binaries are used when .gpu/on-device.sh exists (FLOOR33_BIN / FLOOR33_GOLDEN_HALF override).
# QUICK=1 skips the 50-step generation, the f32/bf16 benches and the batch throughput (about
# 1 minute of GPU time); the full run takes about 5 minutes at today's speed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=gpu-check-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
# The golden test asserts issue 10's targets (f16 1e-2, bf16 3e-2) here, not the CPU bounds.
export FLOOR33_GOLDEN_DIR=$PWD/tests/fixtures/golden FLOOR33_TEST_DEVICE=${FLOOR33_TEST_DEVICE:-cuda} FLOOR33_HALF_TARGETS=1
# The environment setup.sh built with (the CUDA wheels' paths), when it saved one.
# shellcheck disable=SC1091
[ -f "${CARGO_TARGET_DIR:-target}/floor33-cuda.env" ] && . "${CARGO_TARGET_DIR:-target}/floor33-cuda.env"
if [ -f .gpu/on-device.sh ]; then
  # Cross-built: on-device.sh unpacks the binary and points it at this host's CUDA libraries.
  BIN=${FLOOR33_BIN:-bash .gpu/on-device.sh floor33}
  GOLDEN=${FLOOR33_GOLDEN_HALF:-bash .gpu/on-device.sh golden half::}
else
  BIN=${FLOOR33_BIN:-cargo run -q --release --locked --features cuda --}
  GOLDEN=${FLOOR33_GOLDEN_HALF:-cargo test -q --release --locked --features cuda --test golden -- half::}
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; git rev-parse HEAD; } \
  | tee "$out/host.txt"

echo "== golden loop on the GPU (f32 1e-3, f16 1e-2, bf16 3e-2 on the video)"
# One test at a time so that each prints its own error line.
$GOLDEN --nocapture --test-threads 1 2>&1 | tee "$out/golden_half.log"

bench() { # name, then bench arguments
  local name=$1; shift
  echo "== bench $name"
  $BIN bench --device cuda --json --unet-runs 3 "$@" > "$out/bench_$name.json" 2> "$out/bench_$name.err" ||
    { echo "bench $name failed:"; tail -5 "$out/bench_$name.err"; }
}
if [ "${QUICK:-0}" = 1 ]; then
  bench vc2_f16 --variant vc2 --dtype f16 --steps 0
else
  bench vc2_f16 --variant vc2 --dtype f16 --steps 50
  bench vc2_bf16 --variant vc2 --dtype bf16 --steps 0
  bench vc2_f32 --variant vc2 --dtype f32 --steps 0
  # Queue depth 1 vs 4: four 10-step jobs one by one, then as one sampler batch.
  bench vc2_batch4 --variant vc2 --dtype f16 --steps 10 --batch 4 --unet-runs 1
fi
bench t2v1024_f16 --variant t2v-1024 --dtype f16 --steps 0

python3 - "$out" <<'PY'
import glob, json, os, sys
gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"
def load(path):
    # on-device.sh prints its nvidia-smi peak after the JSON object: read the object only.
    return json.JSONDecoder().raw_decode(open(path).read().lstrip())[0]
print(f"{'run':<14}{'text s':>8}{'unet s':>8}{'vae s':>8}{'gen s':>8}{'unet GiB':>10}{'peak GiB':>10}{'device GiB':>11}")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*.json"))):
    try:
        r = load(path)
    except ValueError:
        continue
    st = {s["name"]: s for s in r["stages"]}
    g = r.get("generation") or {}
    mems = [s["memory"] for s in r["stages"]] + ([g["memory"]] if g else [])
    peak = max((m["gpu_tensors_peak"] or 0) for m in mems)
    used = max((m["gpu_device_used"] or 0) for m in mems)
    name = os.path.basename(path)[6:-5]
    print(f"{name:<14}{st['text_encode']['median_s']:>8.3f}{st['unet_step']['median_s']:>8.3f}"
          f"{st['vae_decode']['median_s']:>8.2f}{g.get('total_s', float('nan')):>8.2f}"
          f"{gib(st['unet_step']['memory']['gpu_tensors_peak']):>10}{gib(peak):>10}{gib(used):>11}")
    t = r.get("throughput")
    if t:
        print(f"  {t['jobs']} jobs x {t['steps']} steps: {t['sequential_jobs_per_hour']:.0f} jobs/h one by one, "
              f"{t['batched_jobs_per_hour']:.0f} jobs/h as one batch "
              f"(batch peak {gib(t['batched_memory']['gpu_tensors_peak'])} GiB)")
PY
echo "logs and JSON in $out/"
