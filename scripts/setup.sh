#!/usr/bin/env bash
# Creates .venv and installs the whole pinned stack plus this project (editable).
# Idempotent: a second run only checks what is there. Usage: bash scripts/setup.sh
# DETECTRON2_SOURCE=/path/to/detectron2 (a clone, e.g. of its main branch): build that one from
# source, with its C++ ops, instead of the pinned v0.6 republish (replacing it in .venv).
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
if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    source_dir=$(cd "$DETECTRON2_SOURCE" && pwd)
    installed=$(.venv/bin/python -c "import detectron2, os; print(os.path.dirname(os.path.dirname(os.path.realpath(detectron2.__file__))))" 2>/dev/null || true)
    if [ "$installed" != "$source_dir" ]; then
        # both names: the pinned build is the PyPI republish, whose package is pb1-detectron2
        .venv/bin/python -m pip uninstall -y -q detectron2 pb1-detectron2 2>/dev/null || true
        # no pyproject.toml: pip must build it where torch is importable (no isolation)
        pip install --no-deps --no-build-isolation --use-pep517 -e "$source_dir"
        installed=$(.venv/bin/python -c "import detectron2, os; print(os.path.dirname(os.path.dirname(os.path.realpath(detectron2.__file__))))")
        [ "$installed" = "$source_dir" ] || { echo "setup.sh: detectron2 still imports from $installed, not $source_dir" >&2; exit 1; }
    fi
elif ! .venv/bin/python -c "import detectron2" 2>/dev/null; then
    .venv/bin/python scripts/build_detectron2.py .cache/detectron2
fi
pip install --no-deps --no-build-isolation -e .
.venv/bin/python -c "import torch, detectron2, mmseg, bcn, bcn_det, bcn_seg" \
    || { echo "setup.sh: the environment is incomplete (see the errors above)" >&2; exit 1; }
# BCN's CPU kernels: built now (~35 s, once) rather than inside the first training run.
.venv/bin/python -c "import bcn.kernels.cpu as k, sys; sys.exit(k.extension() is None)" \
    || echo "setup.sh: BCN's CPU kernels did not build; BCN will run its slower reference path" >&2
echo "setup.sh: .venv ready (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
