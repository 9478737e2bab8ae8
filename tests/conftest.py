import os

# Triton runs its kernels on CPU tensors in its interpreter (read when a kernel is defined, so
# before bcn.kernels.triton_kernels is imported): how the suite tests BCN's GPU kernels without a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

# torch.compile's on-disk caches are keyed on the graphs, not on bcn's operators' fake
# implementations: a cache filled before an operator changed would replay stale output shapes
# or dtypes. One cache folder per version of the operators' code.
import hashlib  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

_OPERATORS = ("ops.py", "triton_kernels.py", "triton_autograd.py", "cpu.py", "csrc/cpu_kernels.cpp")
_DIGEST = hashlib.sha256(b"".join((Path(__file__).parent.parent / "bcn" / "kernels" / name).read_bytes()
                                  for name in _OPERATORS)).hexdigest()[:12]
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_bcn_{_DIGEST}"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def fresh_seed():
    """A new random seed each run (fresh inputs every time), printed so a failure can be replayed
    with BCN_TEST_SEED=<seed>."""
    seed = int(os.environ.get("BCN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"seed={seed}")
    return seed


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """The toy COCO set, generated once per session and registered in detectron2."""
    from bcn_det.toy import ensure_toy_coco, register_toy_coco

    root = ensure_toy_coco(tmp_path_factory.mktemp("data") / "bcn_toy_coco")
    register_toy_coco(root)
    return root


@pytest.fixture(scope="session")
def toy_voc(tmp_path_factory):
    """The toy VOC set, generated once per session."""
    import bcn_seg

    root = bcn_seg.ensure_toy_voc(tmp_path_factory.mktemp("data") / "bcn_toy_voc")
    # where the toy config reads it ('{{$BCN_TOY_VOC:...}}'), here and in the tools the tests run
    os.environ["BCN_TOY_VOC"] = str(root)
    return root
