"""tools/gpu_check.py --rehearse --kit: every section's code on the CPU, in an environment like
an offline GPU node's -- the oldest supported torch / triton with torchvision and nothing of the
frameworks -- with the frameworks installed only from a tools/gpu_kit.py folder built here.
Run by scripts/test_min_versions.sh in .venv-min (skipped elsewhere)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("Environment", "Accuracy", "Layers", "torch.compile", "Models", "Toy main jobs")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None,
                                reason="needs an environment without the frameworks (.venv-min)")


def test_the_rehearsal_runs_every_section_from_a_kit(tmp_path):
    kit = tmp_path / "kit"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # (with OpenCV, which mmcv imports and this environment lacks: 58 MiB on its own)
    subprocess.run([sys.executable, "tools/gpu_kit.py", str(kit), "--python", version, "--with-opencv",
                    "--max-mib", "100"], cwd=ROOT, check=True, timeout=900)
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "tools/gpu_check.py", "--rehearse", "--kit", str(kit),
                             "--out", str(out), "--budget", "600"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    report = (out / "report.md").read_text()
    assert result.returncode == 0, result.stderr[-3000:]
    for title in SECTIONS:
        assert f"## {title}" in report, title
    assert "FAILED" not in report and "TIMED OUT" not in report and "Traceback" not in report, report[-4000:]
    assert "wheels" in report and "installed into" in report          # the kit was used
    assert "| mmseg | absent" not in report and "| detectron2 | absent" not in report
    assert report.count("| ok |") >= 3                                  # accuracy rows
