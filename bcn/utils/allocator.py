"""glibc malloc settings for training on CPU.

Why: PyTorch's CPU tensors come from malloc. glibc serves every block above a threshold (128 KiB,
rising to at most 32 MiB as blocks are freed) with a fresh mmap and unmaps it again on free, and
returns the top of its heap to the OS once 128 KiB or more is free there. A training iteration
frees all of its activations and gradients, so the next one maps them again and takes a page
fault, with the kernel zeroing the page, on every 4 KiB it touches: on large maps the page
faults can cost more than the normalization itself.

`keep_freed_memory` asks glibc to serve every block from its heap and keep freed memory for
reuse, from inside the process (MALLOC_MMAP_MAX_=0 / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_
in the environment do the same but must be set before Python starts). jemalloc or tcmalloc
through LD_PRELOAD do the same job. The cost: the process keeps its peak heap instead of
shrinking, and the heap settles a few iterations late (posix_memalign'd blocks leave holes
until neighbours coalesce). Where the heap cannot grow (address space), glibc still falls back
to mmap.
"""
import ctypes
import sys

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
# No mmap'd blocks (M_MMAP_THRESHOLD cannot exceed 32 MiB, below a detection map's size); the
# heap's top is returned to the OS only past 2 GiB free (mallopt takes a C int).
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 64 << 20))


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl's libc.so.6 would not)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Make glibc serve and keep every block in its heap for reuse. Returns False, changing nothing,
    where the C library is not glibc (macOS, Windows, musl) or glibc refuses a setting."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
