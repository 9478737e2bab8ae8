#!/usr/bin/env bash
# The layer, its C++ and Triton kernels and the operators on the oldest supported stack (torch 2.11,
# triton 3.6: requirements/constraints-min.txt) in .venv-min, Triton in its interpreter as in the
# main suite. Idempotent; scripts/test.sh runs it after the main suite.
# Usage: bash scripts/test_min_versions.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-min/bin/python ] || "$PYTHON" -m venv .venv-min
pip() {
    .venv-min/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
    return "${PIPESTATUS[0]}"
}
pip install -r requirements/constraints-min.txt
# (no editable install: the tests import bcn from this checkout, and its C++ kernels build for
# this torch under their own name)
# The memory-traffic counts are left to the main suite: they follow from the launchers' tiles
# and the kernels' index arithmetic, the same on every Triton, and take minutes to interpret.
BCN_TEST_IMPLS=cpu,triton OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv-min/bin/python -m pytest -p no:cacheprovider \
    tests/core/test_norm.py tests/core/test_kernels.py tests/core/test_triton.py tests/core/test_compile.py \
    tests/core/test_triton_gpu_code.py tests/test_gpu_rehearsal.py \
    -k "not move_what_groupnorm_moves and not fetch_the_sectors_they_use" "$@"
