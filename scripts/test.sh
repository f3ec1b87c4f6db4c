#!/usr/bin/env bash
# The test suite (npm test): the types of the sources and tests, the API reference (typedoc), every test file with the BLAS that LibTorch
# is set up with, then the files that compare trajectories and references once more with Debian's reference
# BLAS, so that the suite holds with either library (OpenBLAS's kernels round differently from the
# reference's). Arguments go to vitest and skip the second pass: npm test -- test/model.test.ts
set -uo pipefail
cd "$(dirname "$0")/.."

counts=$(mktemp)
trap 'rm -f "$counts"' EXIT
export TORCHLEARN_TEST_COUNTS="$counts"

status=0
npx tsc -p tsconfig.test.json || status=1
# the API reference (docs/api): an undocumented export or a broken link fails the suite
if [ $# -eq 0 ]; then npx typedoc --logLevel Warn || { echo "npm run docs: the API reference has warnings (above)"; status=1; }; fi

npx vitest run "$@" || status=1

# The files whose tests pin a trajectory or compare numbers with PyTorch's. (Not the example's: it pins no
# number, only that the same seed repeats a run, which the reference BLAS, single-threaded, cannot break.)
sensitive=(test/learner.test.ts test/inference.test.ts test/checkpoints.test.ts)
reference=/usr/lib/x86_64-linux-gnu/blas
selected=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
if [ $# -eq 0 ] && [ -e "$reference/libblas.so.3" ] && [ "$selected" != "$(readlink -f "$reference/libblas.so.3")" ]; then
  echo
  echo "== again with the reference BLAS ($reference), the selected one being $selected"
  LD_LIBRARY_PATH="$reference${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" TORCHLEARN_BLAS_PASS=reference npx vitest run "${sensitive[@]}" || status=1
elif [ $# -eq 0 ]; then
  echo "== one BLAS installed ($selected): no second pass (install libopenblas0-pthread and libblas3 for both)"
fi

# one closing line for both passes
node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").filter(Boolean).map(JSON.parse);
  const t = lines.reduce((a, c) => ({ passed: a.passed + c.passed, failed: a.failed + c.failed, skipped: a.skipped + c.skipped }), { passed: 0, failed: 0, skipped: 0 });
  console.log(`\ntotal: ${t.passed} passed, ${t.failed} failed, ${t.skipped} skipped`);
' "$counts"
exit $status
