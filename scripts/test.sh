#!/usr/bin/env bash
# Sets up .venv (idempotent) and runs the whole test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The suite writes up to ~4 GB under the temp dir while it runs; say so before torch.save fails.
free_kb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((5 * 1024 * 1024)) ]; then
    echo "test.sh: warning: only $((free_kb / 1024)) MiB free in ${TMPDIR:-/tmp}; the suite needs ~4 GB there (set TMPDIR to a roomier disk)" >&2
fi
# One thread per process: the suite runs multi-process tests on two cores.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest "$@"
# The whole run (no pytest arguments): also the oldest supported torch / triton, and the GPU
# check's rehearsal from an offline kit, in .venv-min.
if [ $# -eq 0 ]; then
    bash scripts/test_min_versions.sh
fi
