#!/usr/bin/env bash
# The project's GPU benchmarks, for when a machine with a GPU is at hand: `mlsys bench llm` and `mlsys bench train`
# with `--device cuda`, each under a time limit (about 6 minutes in all on one GPU; 8 at most).
# Usage: scripts/gpu_check.sh [WORKSPACE]    results: WORKSPACE/bench/{llm,train}.json (default: a new temporary folder)
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3); it needs mlsys and a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WS=${1:-$(mktemp -d)}
"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available(): sys.exit(f'no CUDA device visible to torch {torch.__version__}: nothing to check')
print(f'torch {torch.__version__} on {torch.cuda.get_device_name(0)}')
PY
export MLSYS_HOME="$WS" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
bench() {   # bench SECONDS NAME [ARGS...]
  timeout "$1" "$PYTHON" -c 'import sys; from mlsys.cli import main; sys.exit(main(sys.argv[1:]))' \
    bench "${@:2}" --device cuda --threads "$OMP_NUM_THREADS"
}
status=0
bench 270 llm || status=$?
bench 200 train --quick || status=$?
echo "benchmark records in $WS/bench"
exit $status
