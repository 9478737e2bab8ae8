import pytest


@pytest.fixture(params=["fused", "reference"])
def impl(request):
    """Both implementations of BatchChannelNorm2d are held to the float64 reference."""
    return request.param
