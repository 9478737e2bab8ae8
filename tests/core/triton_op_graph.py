"""Run by test_compile.py in a process with compiled Triton (no TRITON_INTERPRET): prints, one
per line, the bcn operators registered as triton_ops, then the call targets of the forward
graph AOTAutograd makes when torch.compile (dynamic shapes) traces a training step through
bcn::triton_forward and bcn::triton_backward. Tracing runs no kernel, so no GPU is needed;
the graph is captured by a backend that stops there.

    python -m tests.core.triton_op_graph HEIGHT WIDTH   # the map's plane size
"""
import sys

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._library.triton import triton_ops_to_kernels

import bcn.kernels.ops  # noqa: F401 (registers the operators)

graphs = []


class Captured(Exception):
    pass


def capture(gm, example_inputs):
    graphs.append(gm)
    raise Captured()


def step(x, bn_weight, bn_bias, gn_weight, gn_bias, mean, var, tracked, skipped, rate, scalars):
    out = torch.ops.bcn.triton_forward(x, 8, bn_weight, bn_bias, gn_weight, gn_bias, mean, var,
                                       tracked, skipped, 1, True, rate, scalars)
    grads = torch.ops.bcn.triton_backward(out[0] * 2, 8, bn_weight, bn_bias, gn_weight, scalars,
                                           [x] + out[1:10], 1)
    return out[0], grads[0], out[10]


def main(height, width):
    n, c, g = 2, 16, 8
    args = (torch.randn(n, c, height, width), torch.ones(c), torch.zeros(c), torch.ones(1, g, 1),
            torch.zeros(1, g, 1), torch.zeros(c), torch.ones(c), torch.zeros((), dtype=torch.long),
            torch.zeros((), dtype=torch.long), torch.tensor([0.01]),
            torch.tensor([1e-5, 0.1, 1e-5], dtype=torch.float64))
    try:
        torch.compile(step, backend=aot_autograd(fw_compiler=capture), dynamic=True)(*args)
    except Exception:
        if not graphs:
            raise
    print("\n".join(name for name in triton_ops_to_kernels if name.startswith("bcn::")))
    print("\n".join(str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
