#!/usr/bin/env bash
# The CUDA path end to end on a machine with one GPU; writes results/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh                      # all stages, at most 9 minutes (--budget-s 540)
#   bash benchmarks/gpu_check.sh --budget-s 300       # a shorter session: later stages are skipped
#   bash benchmarks/gpu_check.sh --device cpu         # the same stages, small, on the CPU (CI)
#
# Needs python with torch (a CUDA build on the GPU machine), numpy, scipy, h5py and pyyaml; the
# package need not be installed (the repository goes on PYTHONPATH). Uses ./.venv when there is
# one, else the python on PATH ($PYTHON overrides). Arguments go to benchmarks/gpu_check.py
# (--help lists them). Exit status 0 when every stage that ran passed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3 || command -v python)"; fi
fi
if ! "$PYTHON" -c "import torch, numpy, scipy, h5py, yaml" 2>/dev/null; then
    echo "gpu_check: $PYTHON lacks torch, numpy, scipy, h5py or pyyaml (set PYTHON to one that has them)" >&2
    exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Compile caches of the stages are fresh temporary directories (cold compile times); nothing else
# is written outside the repository's results/.
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"
