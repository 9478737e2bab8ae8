"""bcn.allocator: glibc's malloc told to keep freed memory, in a process of its own."""
import subprocess
import sys

import pytest


def test_keep_freed_memory_takes_effect_in_a_fresh_process():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    code = ("import bcn.allocator as a, torch; ok = a.keep_freed_memory(); "
            "[torch.empty(8 << 20).fill_(1) for _ in range(3)]; print(ok)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    glibc = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.lower()
    expected = "True" if ("glibc" in glibc or "gnu libc" in glibc) else "False"
    assert out.stdout.strip() == expected
