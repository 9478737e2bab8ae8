"""Stand-in for detectron2's compiled ``_C`` extension, installed only by
scripts/build_detectron2.py when detectron2 is built without its C++ sources (the PyPI
republish ``pb1-detectron2==0.6`` ships none).

detectron2 imports ``_C`` at import time (deform_conv, roi_align_rotated, rotated_boxes,
fast_eval_api) and asks it for compiler versions in collect_env. Everything else it would
provide (deformable conv, rotated boxes, the C++ COCOeval) is unavailable; asking for it
raises an error that says so instead of an obscure AttributeError.
"""

IS_CPU_STAND_IN = True


def get_compiler_version():
    return "none (detectron2 built without C++ ops)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    raise AttributeError(
        f"detectron2._C.{name} is unavailable: this detectron2 was built without its C++ "
        "ops (scripts/build_detectron2.py). Deformable conv, rotated boxes and the fast "
        "COCOeval need the official build from source: "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    )
