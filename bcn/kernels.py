"""BCN's CPU kernels (bcn/csrc/plane_ops.cpp): compiled on first use, cached, optional.

The training forward, training backward and inference kernels behind bcn.fused, written
once in C++ so that no per-shape compilation is ever needed (detection inputs change size
every image). The build is torch's
own JIT extension build (a C++ compiler and ninja; ~35 s once per machine and torch version,
cached under $TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions). Where it cannot be
built, ``plane_ops()`` warns once and returns None and BCN runs its reference path.
``BCN_KERNELS=0`` in the environment turns the kernels off.
"""
import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("csrc") / "plane_ops.cpp"
CFLAGS = ["-O3", "-fopenmp"]  # OpenMP: torch's own intra-op threads (same libgomp soname)
DTYPES = (torch.float32, torch.float64)


class KernelUnavailableWarning(UserWarning):
    pass


def serves(x: torch.Tensor) -> bool:
    """Whether the kernels run this tensor (otherwise: the reference path)."""
    return x.device.type == "cpu" and x.dtype in DTYPES and plane_ops() is not None


@functools.lru_cache(maxsize=None)
def plane_ops() -> Optional[object]:
    """The compiled module, or None (after one KernelUnavailableWarning) where it can't be."""
    if os.environ.get("BCN_KERNELS", "1") == "0":
        return None
    try:
        return _build()
    except Exception as error:  # no compiler, no ninja, a read-only cache...: run without
        warnings.warn(
            f"BCN's CPU kernels could not be built ({type(error).__name__}: {error}). BCN runs "
            "its reference path, with the same results but ~2.5x GroupNorm's time. A C++ "
            "compiler (g++) and ninja (pip install ninja) make the fast path available.",
            KernelUnavailableWarning, stacklevel=3)
        return None


def _build():
    # cpp_extension logs a CUDA_HOME warning at import on machines without CUDA; not ours.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    _put_pip_ninja_on_path()
    # The name pins source, flags and torch version: a cached build of another one is never loaded.
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS + [torch.__version__]).encode())
    return cpp_extension.load(name=f"bcn_plane_ops_{digest.hexdigest()[:12]}", sources=[str(SOURCE)],
                              extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)


def _put_pip_ninja_on_path() -> None:
    """torch finds ninja on PATH; a venv's pip-installed ninja is there only when activated."""
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
