"""Whether each family of kernels is ready, which implementation served each call, and the
warning a failure raises. A leaf: it imports nothing of bcn, and everything kernel-related
may import it.
"""
import collections
import contextlib
import warnings

import torch


class KernelUnavailableWarning(UserWarning):
    """BCN's kernels could not run (not built, failed their check or a launch): the layers run
    the reference path -- same results, slower."""


cpu_built = {}   # "cpu" -> whether the C++ kernels are built (filled on first use)
triton_ok = {}   # (device, dtype) -> whether Triton passed its first-use check and has not failed
_counters = []   # the Counters of the open served_implementations() contexts


@contextlib.contextmanager
def served_implementations():
    """Counts, per implementation, the BCN layer calls (eager) that it served while the
    context is open -- after any fallback, so "triton" means the Triton kernels ran:

        with bcn.kernels.served_implementations() as served:
            model(x)
        assert served["triton"] and not served["reference"]
    """
    served = collections.Counter()
    _counters.append(served)
    try:
        yield served
    finally:
        _counters.remove(served)


def record_served(impl: str) -> None:
    """Called with the implementation that ran a call (cheap when no context is open; nothing
    while dynamo traces a graph)."""
    if _counters and not torch.compiler.is_compiling():
        for served in _counters:
            served[impl] += 1


def outside_graph(probe, *args):
    """Run a probe (a build, a check) as it is; while dynamo records a graph, outside it -- a
    graph break, once: later calls find the result in the status dicts."""
    if torch.compiler.is_compiling():
        return torch.compiler.disable(probe)(*args)
    return probe(*args)


def triton_failed(device: torch.device, dtype: torch.dtype, where: str, problem: str) -> None:
    """Triton failed ``where`` (its first-use check, a launch) on (device, dtype): warn once;
    the reference path runs there from now on."""
    key = (str(device), dtype)
    if triton_ok.get(key, True):
        warnings.warn(
            f"BCN's Triton kernels failed {where} on {device} {dtype} ({problem}). BCN runs its "
            "reference path there from now on: same results, slower. Please report it on this "
            "project's issue tracker with the report `python tools/gpu_check.py` writes.",
            KernelUnavailableWarning, stacklevel=4)
    triton_ok[key] = False


def describe(error: Exception, limit: int = 300) -> str:
    """An exception in one line for a warning."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:limit] if text else ''}"
