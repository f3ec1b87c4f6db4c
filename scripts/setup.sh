#!/usr/bin/env bash
# Sets torchlearn up on a fresh Debian 12 machine, then runs the bundled example.
#   bash scripts/setup.sh               # install, build, run the COVID-19 X-ray example
#   bash scripts/setup.sh --no-example  # install and build only (what CI does)
set -euo pipefail
cd "$(dirname "$0")/.."

run_example=1
[ "${1:-}" = "--no-example" ] && run_example=0

# System packages: LibTorch (CPU) to build against, a compiler and CMake; OpenBLAS, the BLAS a tuned LibTorch
# runs on (Debian selects it for LibTorch once installed), and the reference BLAS the tests also run on;
# Debian's PyTorch, torchvision, scikit-learn and protobuf, which the tests use as references. Installed only when
# missing, and only where we can.
need=()
for pkg in libtorch-dev libgloo-dev libopenblas0-pthread libblas3 python3-torch python3-torchvision python3-sklearn python3-protobuf cmake g++ make fonts-dejavu-core; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ -z "${LIBTORCH:-}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${need[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif [ -z "${LIBTORCH:-}" ]; then
    echo "setup: missing Debian packages: ${need[*]}" >&2
    echo "setup: run as root, or: sudo apt-get install ${need[*]}  (or set LIBTORCH to a LibTorch 2.x folder)" >&2
    exit 1
  fi
fi

# Chromium, for the serving page's test in a real browser (test/serving.test.ts); optional: without it that
# test says why it skipped.
if ! command -v chromium >/dev/null && [ -z "${LIBTORCH:-}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing chromium with apt-get (the serving page's browser test)"
  { [ "${#need[@]}" -gt 0 ] || apt-get update -qq; } &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
    echo "setup: chromium could not be installed; the browser test will say that it skipped"
fi

npm ci --no-audit --no-fund
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" npm run build

if [ "$run_example" = 1 ]; then
  npm run example
fi
