#!/usr/bin/env python
"""Collect, where a package index is reachable, every wheel tools/gpu_check.py needs on an
offline GPU node beyond what such a node has (torch, torchvision, triton and their own
dependencies: numpy, Pillow, ...): the frameworks, their import-time dependencies, detectron2
built as a wheel without its C++ ops, and this project. Versions are pinned to
requirements/constraints.txt; a manifest (manifest.json) lists every file with its sha256.

    python tools/gpu_kit.py DIR [--python 3.12] [--platform manylinux_2_28_x86_64] [--max-mib 40]
    # on the node:  python tools/gpu_check.py --kit DIR

OpenCV (cv2, which mmcv imports) is ~40 MiB alone: it is left out unless --with-opencv (many
nodes have it; the report's environment section says whether cv2 imports). scipy is left out:
mmseg imports it only for an assigner DeepLabV3 never uses (bcn_seg.compat stands in for it).
"""
import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the frameworks import (found by importing the sections' modules and mapping sys.modules
# to distributions), less what a torch / torchvision / triton node has.
# Also TensorBoard (detectron2's and mmengine's writers) with what its SummaryWriter imports, and
# matplotlib with what its Agg canvas imports (mmengine's Visualizer makes a figure when built).
PACKAGES = ["absl-py", "addict", "antlr4-python3-runtime", "cloudpickle", "contourpy", "cycler",
            "fonttools", "ftfy", "fvcore", "iopath", "kiwisolver", "matplotlib", "mmcv-lite", "mmengine",
            "mmsegmentation", "omegaconf", "packaging", "platformdirs", "portalocker", "prettytable",
            "protobuf", "pycocotools", "pyparsing", "python-dateutil", "PyYAML", "regex", "rich",
            "tabulate", "tensorboard", "termcolor", "tqdm", "wcwidth", "yacs", "yapf"]
OPENCV = "opencv-python-headless"


def pinned(name: str) -> str:
    """name==version from requirements/constraints.txt."""
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        found = re.match(rf"^{re.escape(name)}==(\S+)", line.strip(), re.IGNORECASE)
        if found:
            return f"{name}=={found.group(1)}"
    raise SystemExit(f"gpu_kit: {name} has no pin in requirements/constraints.txt")


def pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def download(requirement: str, folder: Path, python: str, platform: str) -> None:
    """A binary wheel for the target interpreter and platform, else a pure-Python wheel built
    here from the sdist (valid anywhere: py3-none-any)."""
    tag = python.replace(".", "")
    try:
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python,
            "--implementation", "cp", "--abi", f"cp{tag}", "--platform", platform,
            "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "any", "-d", str(folder), requirement)
        return
    except subprocess.CalledProcessError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        pip("wheel", "--no-deps", "-w", tmp, requirement)
        for wheel in Path(tmp).glob("*.whl"):
            if not wheel.name.endswith("-py3-none-any.whl") and not wheel.name.endswith("-py2.py3-none-any.whl"):
                raise SystemExit(f"gpu_kit: {requirement} has no {platform} wheel for Python {python} and "
                                 f"builds only a platform wheel here ({wheel.name})")
            shutil.copy(wheel, folder)


def build_local_wheels(folder: Path) -> None:
    """detectron2 v0.6 without C++ ops (scripts/build_detectron2.py's patched sdist), and this
    project, as wheels."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "scripts/build_detectron2.py", tmp, "--wheel-only", str(folder)],
                       cwd=ROOT, check=True)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(folder), str(ROOT))


def write_manifest(folder: Path, python: str, platform: str) -> dict:
    wheels = []
    for wheel in sorted(folder.glob("*.whl")):
        data = wheel.read_bytes()
        wheels.append({"file": wheel.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    manifest = {"python": python, "platform": platform, "wheels": wheels,
                "total_mib": sum(w["bytes"] for w in wheels) / 2**20}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="where to collect the wheels (created)")
    parser.add_argument("--python", default="3.12", help="the node's Python (major.minor)")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64")
    parser.add_argument("--max-mib", type=float, default=40.0)
    parser.add_argument("--with-opencv", action="store_true", help=f"also {OPENCV} (~40 MiB)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES + ([OPENCV] if args.with_opencv else []):
        download(pinned(name), folder, args.python, args.platform)
    build_local_wheels(folder)
    manifest = write_manifest(folder, args.python, args.platform)
    print(f"gpu_kit: {len(manifest['wheels'])} wheels, {manifest['total_mib']:.1f} MiB in {folder} "
          f"(Python {args.python}, {args.platform})")
    if manifest["total_mib"] > args.max_mib:
        raise SystemExit(f"gpu_kit: {manifest['total_mib']:.1f} MiB is over --max-mib {args.max_mib:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
