"""bcn.utils.allocator: glibc's malloc told to keep freed memory, in a process of its own."""
import subprocess
import sys

import pytest

# Iterations that allocate, touch and free 64 MiB tensors, as training steps do; print the fewest
# page faults of the last four. (glibc's heap settles after a few iterations: posix_memalign'd
# blocks leave holes until neighbours coalesce; now and then an iteration still lands one block
# in a fresh part of the heap.)
CODE = """
import resource, sys, torch
import bcn.utils.allocator
kept = bcn.utils.allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 << 20)
counts = []
for _ in range(16):
    before = faults()
    y = x * 2
    z = y + 1
    del y, z
    counts.append(faults() - before)
print(kept, min(counts[-4:]))
"""


def run(mode):
    out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


def test_keep_freed_memory_reuses_a_large_block_without_page_faults():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    glibc = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.lower()
    if not ("glibc" in glibc or "gnu libc" in glibc):
        kept, _ = run("keep")
        assert not kept, "keep_freed_memory changes nothing where the C library is not glibc"
        return
    kept, faults_kept = run("keep")
    _, faults_default = run("default")
    assert kept
    # two 64 MiB outputs are 32768 pages of 4 KiB: mapped afresh by default, reused when kept
    assert faults_default > 16000, faults_default
    assert faults_kept < 1000, faults_kept
