#!/usr/bin/env bash
# The whole GPU check, for the lent GPU machine (../shared/device/README.md): build against the
# machine's LibTorch (the one inside its PyTorch), run the test suite with CUDA, run the bench, print
# a table. Needs .device/node.xz (../shared/device/pack-node.sh) and .device/nm.tar.xz (node_modules).
#   run on the device with carry [".device"]:  bash scripts/gpu-check.sh
# A shorter diagnosis of the train step (build, then the bench's train rows with per-phase times and
# operator tables of both sides, compared; the tables and Chrome traces come back in trace.tar.xz):
#   SKIP_TESTS=1 SKIP_EXAMPLE=1 TRACE=1 BENCH_ARGS="--only train --bs 256 --precisions bf16 --iters 10 --profile" \
#   bash scripts/gpu-check.sh
# SKIP_TESTS, SKIP_EXAMPLE and SKIP_BENCH leave a part out; TESTS, TEST_TIMEOUT, BENCH_ARGS and BENCH_TIMEOUT
# trim the rest to the device time a session has.
# What comes back under $OUT is kept to the device tool's 8 files: build.log, tests.log, example.log,
# example.tar (pictures and metrics.json), bench.log, bench.json, trace.tar.xz.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PATH=/tmp:$PATH
[ -x /tmp/node ] || { xz -d < .device/node.xz > /tmp/node && chmod +x /tmp/node; }
[ -d node_modules ] || tar xJf .device/nm.tar.xz
# DEVICE=cpu PYTHON=/usr/bin/python3 runs the same steps on a machine without a GPU (a dry run of this script)
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

prefix=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
t0=$(date +%s)
cmake -S . -B /tmp/tlbuild -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=/tmp/tlbuild/Release -DTORCHLEARN_UNITY=OFF > "$OUT/build.log" 2>&1 &&
  cmake --build /tmp/tlbuild -j"$(nproc)" >> "$OUT/build.log" 2>&1
rc=$?
grep -E "torchlearn: |error" "$OUT/build.log" | head -20
echo "build: rc=$rc in $(( $(date +%s) - t0 )) s"
# CUDA branches only syntax-checked against LibTorch 1.13 before they meet this LibTorch: one that does not
# compile is built without (the CUDA graph: steps run without capture; cuDNN BatchNorm: ATen's kernels; the
# fused AdamW call: the _foreach kernels), so that the rest of the check runs
flags=
failed() { grep -qE "$1:[0-9]+:[0-9]+: (fatal )?error" "$OUT/build.log"; }  # the compiler's errors in that file
[ $rc != 0 ] && failed "step_graph\.cpp" && flags="$flags -DTL_NO_CUDA_GRAPH"
[ $rc != 0 ] && failed "batchnorm_cudnn\.cpp" && flags="$flags -DTL_NO_CUDNN_BN"
[ $rc != 0 ] && failed "optimizer\.cpp" && flags="$flags -DTL_NO_FUSED_ADAM"  # (the rest of that file built there before the fused AdamW call)
# data-parallel training (c10d), written against 1.13's headers: without it if 2.x's differ
cmakeopts=
[ $rc != 0 ] && failed "distributed\.cpp" && cmakeopts="-DTORCHLEARN_NO_DISTRIBUTED=ON" && flags="$flags "
if [ $rc != 0 ] && [ -n "$flags" ]; then
  echo "build: a CUDA branch (or c10d) does not compile here; building without it ($flags $cmakeopts)"
  cmake -S . -B /tmp/tlbuild -DCMAKE_CXX_FLAGS="$flags" $cmakeopts -DTORCHLEARN_UNITY=OFF >> "$OUT/build.log" 2>&1 &&
    cmake --build /tmp/tlbuild -j"$(nproc)" >> "$OUT/build.log" 2>&1
  rc=$?
  echo "build without it: rc=$rc"
fi
[ $rc = 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
export TORCHLEARN_ADDON=/tmp/tlbuild/Release/torchlearn.node
export TORCHLEARN_REF_PYTHON=$PYTHON
node --import tsx -e "import('./src/info.ts').then(m => console.log(JSON.stringify(m.torchInfo())))"

if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== tests (CUDA enabled)"
  timeout ${TEST_TIMEOUT:-300} node node_modules/vitest/vitest.mjs run ${TESTS:-} 2>&1 | tee "$OUT/tests.log" | grep -E "✓|×|↓|skipped|Tests|Test Files|CUDA|error|Error" | head -80
fi

# real X-ray files for the end-to-end epoch: the carried subset, repeated to make a few thousand files
if [ -d .device/xray ]; then
  rm -rf /tmp/xray; for c in covid_positive covid_negative; do mkdir -p /tmp/xray/$c; done
  for r in $(seq 1 ${XRAY_REPEAT:-16}); do for f in .device/xray/*/*; do c=$(basename "$(dirname "$f")"); ln -s "$PWD/$f" "/tmp/xray/$c/r$r-$(basename "$f")"; done; done
  images="--images /tmp/xray"
fi
if [ -d .device/covid ] && [ -z "${SKIP_EXAMPLE:-}" ]; then
  echo "== the example on the GPU (images downsized to 320 px to travel)"
  timeout 240 node --import tsx scripts/covid-xray.ts --data .device/covid --out /tmp/covid-xray --device "$DEVICE" 2>&1 | tee "$OUT/example.log" | tail -45
  (cd /tmp/covid-xray && tar cf "$OUT/example.tar" ./*.png ./*.json 2>/dev/null)
fi
[ -n "${SKIP_BENCH:-}" ] && exit 0
echo "== bench"
export UV_THREADPOOL_SIZE=16
trace=; [ -n "${TRACE:-}" ] && { rm -rf /tmp/trace; trace="--trace /tmp/trace"; }
timeout ${BENCH_TIMEOUT:-360} node --import tsx scripts/bench.ts --device "$DEVICE" --python "$PYTHON" ${images:-} ${BENCH_ARGS:-} $trace --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -v '^{' | tail -${BENCH_TAIL:-60}
[ -n "$trace" ] && [ -d /tmp/trace ] && XZ_OPT="-T0 -3" tar cJf "$OUT/trace.tar.xz" -C /tmp trace && ls -la "$OUT/trace.tar.xz"
exit 0
