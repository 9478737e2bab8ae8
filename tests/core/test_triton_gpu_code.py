"""What a GPU would get from BCN's Triton kernels, checked without one: every variant the
launchers pick compiles for sm_80 and sm_90 with Triton's compiler and ptxas, without spills,
with vector accesses to the map (tools/check_triton_compile.py); the map's bytes and 32-byte
sectors per kernel, counted in Triton's interpreter, show coalesced access in both layouts;
the first-use check works under no_grad / inference_mode."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bcn
from bcn.kernels import status

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_every_quick_variant_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"),
               TRITON_ALWAYS_COMPILE="1")
    result = subprocess.run([sys.executable, "tools/check_triton_compile.py", "--quick",
                             "--targets", "80,90"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "0 failed, 0 spilled" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| sm_")]
    kernels = {row[1] for row in rows}
    assert {"_plane_moments", "_apply", "_plane_gradient_sums", "_channel_moments", "_channel_stats",
            "_group_coefficients", "_group_gradients", "_channel_gradient_sums", "_channel_gradients",
            "_commit_running_state", "_merge_plane_moments", "_merge_plane_sums"} <= kernels
    assert any("PER_CHANNEL_AFFINE=True" in row[2] for row in rows)   # per-channel affine compiles
    # the map is read and written 128 bits at a time on a detection map, in both layouts
    for row in rows:
        if row[1] in ("_plane_moments", "_apply", "_plane_gradient_sums") and "(2, 256, 100, 168)" in row[10]:
            width = 2 if "float64" in row[10] else 4
            assert row[8] == f"v{width}", row


# the shapes users train on (issue 26): detection maps, one-image stems, res5, ROI batches,
# DeepLabV3's maps and its image-pooling branch
SHAPES = [(2, 256, 200, 336), (2, 256, 100, 168), (1, 64, 400, 672), (1, 2048, 25, 42),
          (512, 256, 7, 7), (128, 256, 14, 14), (4, 512, 65, 65), (4, 2048, 33, 33), (4, 256, 1, 1)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_pass_has_enough_parallel_work(shape, channels_last):
    """Each pass over the map, and each per-channel pass, launches at least PROGRAMS programs
    (two per H100 SM) unless every program already does a single step (or, for whole groups a
    program, a sample or a few hundred values of a channel)."""
    from bcn.kernels import triton_kernels as tk

    n, c, h, w = shape
    tiles, grid = tk.plane_launch(n, c, h * w, channels_last, torch.float32)
    steps_per_program = tiles["CHUNK_L"] // tiles["BLOCK_L"]
    assert grid[0] * grid[1] >= tk.PROGRAMS or steps_per_program == 1, (tiles, grid)
    assert grid[1] == 1 or tiles["CHUNK_L"] % tiles["BLOCK_L"] == 0
    ctiles, chunk, cgrid = tk.channel_launch(n, c)
    assert cgrid[0] * cgrid[1] >= tk.PROGRAMS or chunk <= ctiles["BLOCK_N"], (ctiles, chunk, cgrid)
    # small planes: whole groups a program, looping over a chunk of samples
    blocks = tk.group_block_launch(n, c, 32, h * w, channels_last, torch.float32)
    if blocks is not None:
        btiles, chunk, bgrid = blocks
        assert bgrid[0] * bgrid[1] >= tk.PROGRAMS or chunk == 1 or chunk * h * w <= 1024, blocks


def traffic_tool():
    spec = importlib.util.spec_from_file_location("count_triton_traffic", ROOT / "tools" / "count_triton_traffic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 64, 24, 40), (16, 64, 7, 7), (4, 256, 14, 14)],
                         ids=["map", "rois", "masks"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_map_accesses_fetch_the_sectors_they_use(triton_family, dtype, shape, channels_last):
    """Every kernel's reads and writes of x, y, dy and dx touch at most 10% more 32-byte
    sectors than their bytes fill, and the passes move the map as GroupNorm does: forward
    reads x twice and writes y, backward reads x and dy twice and writes dx."""
    from bcn.kernels import triton_kernels as tk

    n, c, h, w = shape
    if triton_family == "group_blocks" and \
            tk.group_block_launch(n, c, 32, h * w, channels_last, torch.float32) is None:
        pytest.skip("planes too large for whole groups: the plane passes serve this shape")
    tool = traffic_tool()
    forward_traffic, backward_traffic, tensors = tool.layer_traffic(shape, dtype, channels_last)
    forward = forward_traffic.by_tensor({name: tensors[name] for name in ("x", "y")})
    backward = backward_traffic.by_tensor({name: tensors[name] for name in ("x", "dy", "dx")})
    for (kernel, name), (used, sectors) in list(forward.items()) + list(backward.items()):
        assert sectors * 32 <= 1.1 * used, (kernel, name, used, sectors)
    moved = lambda counts, name: sum(b for (k, n), (b, s) in counts.items() if n == name)  # noqa: E731
    map_bytes = tensors["x"].numel() * tensors["x"].element_size()
    assert (moved(forward, "x"), moved(forward, "y")) == (2 * map_bytes, map_bytes)
    assert (moved(backward, "x"), moved(backward, "dy"), moved(backward, "dx")) == \
        (2 * map_bytes, 2 * map_bytes, map_bytes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,channels_last", [((64, 256, 7, 7), True), ((16, 256, 14, 14), False),
                                                 ((16, 256, 14, 14), True), ((4, 256, 1, 1), False)],
                         ids=["rois-channels_last", "masks-nchw", "masks-channels_last", "pooled"])
def test_small_planes_move_what_groupnorm_moves(dtype, shape, channels_last):
    """ROI batches and DeepLabV3's pooled 1x1 maps: every byte the kernels load and store,
    per-plane and per-channel values included, within 5% of GroupNorm's ideal (its passes over
    the map, plus the layer's parameters, running state and parameter gradients once).
    bfloat16 moves float16's bytes; NCHW 7 x 7 ROIs no more than channels_last (fewer chunks),
    in 3x the interpreter's time. The per-channel rows are a fixed cost, so full-size batches
    (512 ROIs) come out lower. A whole 1x1 layer in one program reads its map once each way."""
    tool = traffic_tool()
    forward, backward, tensors = tool.layer_traffic(shape, dtype, channels_last)
    ideal = tool.groupnorm_ideal(tensors)
    assert forward.total() <= 1.05 * ideal[0] and backward.total() <= 1.05 * ideal[1], \
        (forward.total() / ideal[0], backward.total() / ideal[1])


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_first_use_check_passes_under_no_grad_and_inference_mode(monkeypatch, context):
    monkeypatch.setattr(status, "triton_ok", {})
    layer = bcn.BatchChannelNorm2d(64, 32, impl="triton").eval()
    x = torch.randn(2, 64, 5, 7)
    with context():
        y = layer(x)
        assert status.triton_ok[("cpu", torch.float32)] is True
    with torch.no_grad():
        want = bcn.BatchChannelNorm2d(64, 32, impl="reference").eval()(x)
    assert torch.allclose(y, want, atol=1e-5)


def test_kernels_launch_under_a_guard_for_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: the forward, the backward and the first-use
    check make the tensors' device current first (a model on cuda:1 while cuda:0 is current)."""
    from bcn.kernels import triton_autograd

    guard = triton_autograd.on_device(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1   # entered only on a GPU
    seen = []
    real = triton_autograd.on_device
    monkeypatch.setattr(triton_autograd, "on_device", lambda device: seen.append(device) or real(device))
    layer = bcn.BatchChannelNorm2d(64, 32, impl="triton")
    x = torch.randn(2, 64, 5, 7, requires_grad=True)
    layer(x).sum().backward()
    assert seen.count(torch.device("cpu")) >= 2          # forward and backward
