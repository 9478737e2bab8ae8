#!/usr/bin/env bash
# Creates .venv and installs the whole pinned stack plus this project (editable).
# Idempotent: a second run only checks what is there. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip's output without the local mirror's "Location ... is ignored" noise; pip's status kept.
pip() {
    .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
    return "${PIPESTATUS[0]}"
}
pip install -c requirements/constraints.txt torch torchvision
pip install -c requirements/constraints.txt -r requirements/stack.txt
if ! .venv/bin/python -c "import detectron2" 2>/dev/null; then
    .venv/bin/python scripts/build_detectron2.py .cache/detectron2
fi
pip install --no-deps --no-build-isolation -e .
.venv/bin/python -c "import torch, detectron2, mmseg, bcn, bcn_det, bcn_seg" \
    || { echo "setup.sh: the environment is incomplete (see the errors above)" >&2; exit 1; }
# BCN's CPU kernels: built now (~35 s, once) rather than inside the first training run.
.venv/bin/python -c "import bcn.kernels as k, sys; sys.exit(k.plane_ops() is None)" \
    || echo "setup.sh: BCN's CPU kernels did not build; BCN will run its slower reference path" >&2
echo "setup.sh: .venv ready (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
