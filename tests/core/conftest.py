import pytest


@pytest.fixture(params=["cpu", "triton", "reference"])
def impl(request):
    """Every implementation of BatchChannelNorm2d is held to the float64 reference: the C++ CPU
    kernels, the Triton kernels (on CPU tensors: TRITON_INTERPRET=1, tests/conftest.py) and the
    reference composition."""
    return request.param
