"""Workarounds for the MMSegmentation stack's quirks, each with its reason and versions.

Imported by bcn_seg before anything of mmseg. For mmengine 0.10.7, mmcv-lite 2.1.0,
mmsegmentation 1.2.2 and torch >= 2.6; delete each when upstream fixes it.
"""
import importlib.util
import sys
import types


def provide_mmcv_ops() -> None:
    """mmcv-lite ships mmcv/ops without its compiled ``_ext``, so ``import mmcv.ops`` fails,
    and mmseg 1.2.2 imports point_sample and sigmoid_focal_loss from it at module level (via
    mmseg.models). DeepLabV3 needs no compiled op: provide ``mmcv.ops`` with the pure-Python
    point_sample and a sigmoid_focal_loss that says what is missing when called."""
    if "mmcv.ops" in sys.modules:
        return
    try:
        import mmcv.ops  # noqa: F401  the full mmcv, with its compiled ops
        return
    except ImportError:
        sys.modules.pop("mmcv.ops", None)
    import mmcv

    ops = types.ModuleType("mmcv.ops")
    ops.__doc__ = "bcn_seg.compat: mmcv-lite stand-in (no compiled ops)"
    path = f"{mmcv.__path__[0]}/ops/point_sample.py"
    spec = importlib.util.spec_from_file_location("mmcv.ops.point_sample", path)
    point_sample_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(point_sample_module)
    ops.point_sample = point_sample_module.point_sample

    def sigmoid_focal_loss(*args, **kwargs):
        raise RuntimeError("sigmoid_focal_loss needs mmcv's compiled ops: install the full mmcv "
                           "(pip install mmcv==2.1.0, which compiles them) instead of mmcv-lite")

    ops.sigmoid_focal_loss = sigmoid_focal_loss

    def missing(name):
        # mmseg guards its optional ops with `except ModuleNotFoundError` (cc_head, psa_head,
        # point_head), so that is what an absent op raises; dunders stay plain AttributeErrors.
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled ops, which mmcv-lite "
                                  "lacks: install the full mmcv to use it", name=f"mmcv.ops.{name}")

    ops.__getattr__ = missing
    sys.modules["mmcv.ops"] = ops
    sys.modules["mmcv.ops.point_sample"] = point_sample_module
    mmcv.ops = ops


def provide_scipy_stand_in() -> None:
    """mmseg 1.2.2 imports four scipy functions at module level (via mmseg.models and
    mmseg.datasets): linear_sum_assignment (HungarianAssigner, MaskFormer-style heads),
    interpolate (BEiT's position embeddings), gaussian_filter (a random-blur transform) and
    distance_transform_edt (the Hausdorff loss); DeepLabV3 calls none of them. Where scipy is
    not installed (an offline GPU node's kit leaves its ~35 MB out), provide the modules those
    imports name, each function saying what is missing when called."""
    if importlib.util.find_spec("scipy") is not None:
        return

    def stand_in(name):
        module = types.ModuleType(name)
        module.__doc__ = "bcn_seg.compat: stand-in where scipy is not installed"

        def missing(attribute):
            if attribute.startswith("__"):
                raise AttributeError(attribute)

            def needs_scipy(*args, **kwargs):
                raise RuntimeError(f"{name}.{attribute} needs scipy, which is not installed: pip install scipy")
            return needs_scipy

        module.__getattr__ = missing
        sys.modules[name] = module
        return module

    scipy = stand_in("scipy")
    for sub in ("optimize", "ndimage", "interpolate"):
        setattr(scipy, sub, stand_in(f"scipy.{sub}"))


def allow_mmengine_checkpoints() -> None:
    """torch >= 2.6 loads with weights_only=True by default, and mmengine 0.10.7's checkpoints
    hold its HistoryBuffer (the message hub) and numpy arrays and scalars: resume and
    load_from fail. Allow-list exactly those classes; the safety itself stays on.

    ``getattr`` is among them because a HistoryBuffer pickles its statistics methods as
    getattr(HistoryBuffer, 'min'). That is safe to allow: torch's weights-only unpickler calls
    only allow-listed callables, so what getattr fetches can be stored but never called."""
    import numpy as np
    import torch
    from mmengine.logging import HistoryBuffer

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    torch.serialization.add_safe_globals(
        [HistoryBuffer, getattr, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes])


provide_mmcv_ops()
provide_scipy_stand_in()
allow_mmengine_checkpoints()
