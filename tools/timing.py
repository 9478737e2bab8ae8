"""The interleaved timing loop of the benchmark tools: candidates run in a shuffled order within
each repeat, so machine noise hits them alike; tools report medians of per-repeat ratios."""
import random
import time

import torch


def synchronize():
    """Wait for the GPU's queued work (a timing ends when the work does, not its launch)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn):
    """A callable that runs ``fn`` and returns the seconds it took, GPU work included."""
    def run():
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        return time.perf_counter() - start
    return run


def interleaved(candidates, repeats, warm_up=True):
    """{name: [seconds, one per repeat]}. candidates: {name: callable returning its seconds};
    each is called once untimed first (a first call is cold) unless warm_up is False."""
    if warm_up:
        for run in candidates.values():
            run()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        order = list(candidates)
        random.shuffle(order)
        for name in order:
            times[name].append(candidates[name]())
    return times
