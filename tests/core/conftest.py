import os

import pytest


# BCN_TEST_IMPLS=cpu,triton: only those (scripts/test_min_versions.sh: the reference path is
# plain torch, tested with the main stack)
@pytest.fixture(params=os.environ.get("BCN_TEST_IMPLS", "cpu,triton,reference").split(","))
def impl(request):
    """Every implementation of BatchChannelNorm2d is held to the float64 reference: the C++ CPU
    kernels, the Triton kernels (on CPU tensors: TRITON_INTERPRET=1, tests/conftest.py) and the
    reference composition."""
    return request.param


@pytest.fixture(autouse=True)
def asked_implementation_served(request):
    """Every test parametrized by ``impl`` fails unless that implementation served BCN calls in
    it (bcn.kernels.served_implementations): a silent fallback would test the reference
    path twice."""
    impl = request.getfixturevalue("impl") if "impl" in request.fixturenames else None
    if impl not in ("cpu", "triton") or request.node.get_closest_marker("reference_by_design"):
        yield
        return
    from bcn import kernels

    with kernels.served_implementations() as served:
        yield
    assert served[impl] > 0, f"impl={impl!r} never served a BCN call in this test (served: {dict(served)})"


@pytest.fixture(params=["group_blocks", "plane_passes"])
def triton_family(request, monkeypatch):
    """Both families of BCN's Triton kernels that serve every shape: whole groups in a program
    where one sample's group fits (small planes: ROI batches, 1x1 maps), passes over the
    planes elsewhere; "plane_passes" takes the passes on every shape. Whole 1x1 layers in one
    program are off here (test_triton's whole-layer tests hold them to the reference), so
    that 1x1 maps test the group blocks too."""
    force_family(monkeypatch.setattr, request.param)
    return request.param


def force_family(setattr_, family):
    """Dispatch every shape that ``family`` ("group_blocks", "plane_passes") can serve to it."""
    from bcn.kernels import triton_kernels

    setattr_(triton_kernels, "whole_layer_launch", lambda *args, **kwargs: None)
    if family == "plane_passes":
        setattr_(triton_kernels, "group_block_launch", lambda *args, **kwargs: None)
