"""BCN's GPU kernels (Triton): training forward and backward, both modes, and eval.

The math is the CPU kernels' (bcn.kernels.cpu, docs/method.md): everything follows from the per-(sample,
channel) plane moments m[n,c], v[n,c] of x, so the layer is y = A[n,c] (x - m~[n,c]) + K[n,c]
and, in backward, dx = k_dy dy + k_x (x - m~) + k_0 with per-plane coefficients. Each
direction is two passes over the map -- GroupNorm's traffic -- around small kernels that
solve the coefficients in float64:

    forward   plane_moments (read x) [-> merge_plane_moments]  ->  channel_moments
              [-> all-gather]  ->  channel_stats  ->  group_coefficients
              [-> commit_running_state]  ->  apply (read x, write y)
    backward  plane_gradient_sums (read x, dy) [-> merge_plane_sums]  ->  group_gradients
              ->  channel_gradient_sums [-> all-gather]  ->  channel_gradients
              ->  apply (read x, dy, write dx)

The merges run where a pass is cut into chunks for parallel work (plane_launch,
channel_launch); the all-gathers where step 1's batch statistics are synchronized across
processes (as SyncBatchNorm does: one small collective per direction, no extra pass). Small
planes (ROI batches) keep the per-plane values in registers instead (group_block_launch), and
small 1x1 maps are one program each way (whole_layer_launch); both are further below.

Step 1's statistics come from the batch (STEP1 = BATCH, Eq. 16), from the estimates moved at
the learning rate (ESTIMATE, Algorithm 1) or from the running state as it is (FIXED: eval, or
a frozen batch part). The running state is updated by the kernels themselves: the new values
are committed only when every channel's are finite (else ``skipped_updates`` counts the
batch), decided on the device -- no host synchronization.

Precision: a plane's moments are taken per tile in float32 around the tile's mean and merged
in float64 (Chan et al.); sums of dy and dy (x - m~) the same way. The small per-plane,
per-channel and per-group algebra is float64. Outputs are written around the plane's float32
mean m~, so maps far from zero keep their precision. x, y, dy and dx are float32, float16 or
bfloat16 (statistics always float32 or wider); NCHW or channels_last.

Sizes are runtime arguments (``do_not_specialize``): detection changes H x W every image, and
only the tile widths (powers of two, from the plane length) select a compiled variant. Grid
axis 0 holds the tiles, with int64 offsets (CUDA's grid y/z stop at 65,535); axis 1 at most
PROGRAMS chunks.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .arguments import STEP1_CODES

BATCH, ESTIMATE, FIXED = (STEP1_CODES[kind] for kind in ("batch", "estimate", "fixed"))
_TILE = 2048  # elements per program per step of the passes over the map (plane_launch)
PROGRAMS = 264  # a pass's programs at least, where the map allows: two per SM of an H100


@triton.jit
def _finite(v):
    return (v - v) == 0  # NaN and +-inf give NaN


@triton.jit
def _plane_tile(P, C, L, CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's BLOCK_P planes p = n * C + c: (p, which are real, their first element, the
    step between a plane's consecutive positions). NCHW: consecutive planes, each contiguous.
    channels_last: BLOCK_P consecutive channels of one sample, so that the channel axis -- the
    contiguous one -- is what neighbouring threads read."""
    pid = tl.program_id(0)
    if CHANNELS_LAST:
        blocks = tl.cdiv(C, BLOCK_P)
        n = pid // blocks
        cs = (pid % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
        return n * C + cs, cs < C, n.to(tl.int64) * L * C + cs, C
    planes = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    return planes, planes < P, planes.to(tl.int64) * L, 1


@triton.jit
def _chunk(L, CHUNK_L):
    """This program's positions along the planes (program axis 1): first, stop, and where its
    row of per-plane partial results goes (plane p's rows are p * chunks + chunk)."""
    first = tl.program_id(1) * CHUNK_L
    return first, tl.minimum(first + CHUNK_L, L), tl.num_programs(1), tl.program_id(1)


@triton.jit
def _group_block(C, G, D, BLOCK_D: tl.constexpr):
    """This program's (sample, group): (its index n * G + g, g, its channels, which are real,
    their planes)."""
    pid = tl.program_id(0)
    g = pid % G
    cs = g * D + tl.arange(0, BLOCK_D)
    return pid, g, cs, tl.arange(0, BLOCK_D) < D, (pid // G).to(tl.int64) * C + cs


@triton.jit
def _sample_tile(n0, N, C, cs, cmask, BLOCK_N: tl.constexpr):
    """Samples n0 .. n0 + BLOCK_N of channels ``cs`` in an (N, C) per-plane array: (which are
    real, their indices)."""
    ns = n0 + tl.arange(0, BLOCK_N)
    return (ns < N)[:, None] & cmask[None, :], ns.to(tl.int64)[:, None] * C + cs[None, :]


@triton.jit
def _group_affine(w_ptr, cs, cmask, g, PER_CHANNEL: tl.constexpr):
    """Step 2's gamma or beta for a group's channels: one per channel, or the group's own."""
    # one [BLOCK_D] shape in both branches (Triton refuses branches of different types)
    index = cs if PER_CHANNEL else g + 0 * cs
    return tl.load(w_ptr + index, mask=cmask, other=0.0).to(tl.float64)


@triton.jit(do_not_specialize=["P"])
def _plane_moments(x_ptr, mean_ptr, var_ptr, P, C, L, CHUNK_L, CHANNELS_LAST: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr, COMPUTE: tl.constexpr):
    """m[p], v[p] (float64, biased) of BLOCK_P planes p = n * C + c, over this program's chunk
    of their positions (the whole plane when there is one chunk; else _merge_plane_moments
    merges the chunks' rows)."""
    planes, pmask, base, step = _plane_tile(P, C, L, CHANNELS_LAST, BLOCK_P)
    first, stop, chunks, chunk = _chunk(L, CHUNK_L)
    count = tl.zeros([BLOCK_P], dtype=tl.float64)
    mean = tl.zeros([BLOCK_P], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_P], dtype=tl.float64)
    for start in range(first, stop, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        mask = pmask[:, None] & (offs < stop)[None, :]
        x = tl.load(x_ptr + base[:, None] + offs.to(tl.int64)[None, :] * step, mask=mask,
                    other=0.0).to(COMPUTE)
        k = tl.minimum(stop - start, BLOCK_L)
        tile_mean = tl.sum(x, axis=1) / k
        d = tl.where(mask, x - tile_mean[:, None], 0.0)
        tile_m2 = tl.sum(d * d, axis=1).to(tl.float64)
        kf = k.to(tl.float64)
        delta = tile_mean.to(tl.float64) - mean
        total = count + kf
        mean += delta * (kf / total)
        m2 += tile_m2 + delta * delta * (count * kf / total)
        count = total
    rows = planes.to(tl.int64) * chunks + chunk
    tl.store(mean_ptr + rows, mean, mask=pmask)
    tl.store(var_ptr + rows, m2 / (stop - first), mask=pmask)


@triton.jit(do_not_specialize=["P", "L", "CHUNK_L", "CHUNKS"])
def _merge_plane_moments(part_mean_ptr, part_var_ptr, mean_ptr, var_ptr, P, L, CHUNK_L, CHUNKS,
                         BLOCK_P: tl.constexpr):
    """m[p], v[p] from the CHUNKS rows of each plane, merged in order (Chan et al.)."""
    planes = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = planes < P
    count = tl.zeros([BLOCK_P], dtype=tl.float64)
    mean = tl.zeros([BLOCK_P], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_P], dtype=tl.float64)
    for j in range(0, CHUNKS):
        rows = planes.to(tl.int64) * CHUNKS + j
        k = (tl.minimum(L - j * CHUNK_L, CHUNK_L)).to(tl.float64)
        delta = tl.load(part_mean_ptr + rows, mask=pmask, other=0.0) - mean
        total = count + k
        mean += delta * (k / total)
        m2 += k * tl.load(part_var_ptr + rows, mask=pmask, other=0.0) + delta * delta * (count * k / total)
        count = total
    tl.store(mean_ptr + planes, mean, mask=pmask)
    tl.store(var_ptr + planes, m2 / L, mask=pmask)


@triton.jit
def _store_row(part_ptr, C, cs, cmask, planes, first, second):
    """Row program_id(1) of a (rows, 3, C) float64 table of per-channel sums: (planes, first,
    second) for channels ``cs`` -- what _channel_stats and _sum_rows read."""
    row = part_ptr + tl.program_id(1).to(tl.int64) * 3 * C + cs
    tl.store(row, planes + tl.zeros_like(first), mask=cmask)
    tl.store(row + C, first, mask=cmask)
    tl.store(row + 2 * C, second, mask=cmask)


@triton.jit(do_not_specialize=["N", "C", "CHUNK"])
def _channel_moments(mean_ptr, var_ptr, part_ptr, N, C, CHUNK, BLOCK_N: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Step 1's batch statistics of the samples of one chunk (program axis 1), per channel:
    part[chunk] = (planes k, their mean of m, their mean of v + (m - that mean)^2), float64.
    The chunks' rows are merged in order by _channel_stats (and travel between processes when
    the statistics are synchronized)."""
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    first = tl.program_id(1) * CHUNK
    last = tl.minimum(first + CHUNK, N)
    total = tl.zeros([BLOCK_C], dtype=tl.float64)
    for n0 in range(first, last, BLOCK_N):
        mask, idx = _sample_tile(n0, last, C, cs, cmask, BLOCK_N)
        total += tl.sum(tl.load(mean_ptr + idx, mask=mask, other=0.0), axis=0)
    k = (last - first).to(tl.float64)
    chunk_mean = total / k
    spread = tl.zeros([BLOCK_C], dtype=tl.float64)
    for n0 in range(first, last, BLOCK_N):
        mask, idx = _sample_tile(n0, last, C, cs, cmask, BLOCK_N)
        m = tl.load(mean_ptr + idx, mask=mask, other=0.0)
        v = tl.load(var_ptr + idx, mask=mask, other=0.0)
        d = tl.where(mask, m - chunk_mean[None, :], 0.0)
        spread += tl.sum(v + d * d, axis=0)
    _store_row(part_ptr, C, cs, cmask, k, chunk_mean, spread / k)


@triton.jit
def _step1_statistics(batch_mean, batch_var, values, run_mean, run_var, scalars_ptr, rate_ptr,
                      STEP1: tl.constexpr):
    """Step 1 from the batch's moments over ``values`` values a channel (float64): (the mean
    and variance it normalizes with, the new running mean and variance). BATCH: the batch's,
    the running state moved at BatchNorm's momentum with the unbiased variance; ESTIMATE: the
    estimates moved at the rate (Algorithm 1), which it normalizes with."""
    if STEP1 == 0:
        momentum = tl.load(scalars_ptr + 1)
        new_mean = (1.0 - momentum) * run_mean + momentum * batch_mean
        new_var = (1.0 - momentum) * run_var + momentum * batch_var * (values / (values - 1.0))
        mu = batch_mean
        var = batch_var
    else:
        # Algorithm 1: the mean square around the OLD estimate
        around_old = batch_var + (batch_mean - run_mean) * (batch_mean - run_mean)
        rate = tl.load(rate_ptr).to(tl.float64)
        new_mean = run_mean + rate * (batch_mean - run_mean)
        new_var = run_var + rate * (around_old - run_var)
        mu = new_mean
        var = new_var
    return mu, var, new_mean, new_var


@triton.jit(do_not_specialize=["ROWS", "C", "L"])
def _channel_stats(part_ptr, ROWS, C, L, bn_w_ptr, bn_b_ptr, run_mean_ptr, run_var_ptr,
                   scalars_ptr, rate_ptr, a_ptr, b_ptr, mu_ptr, inv_ptr, new_mean_ptr,
                   new_var_ptr, flag_ptr, STEP1: tl.constexpr, UPDATE: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """Step 1 per channel: the statistics it normalizes with (mu, inv = 1/sqrt(var + eps)), its
    affine a = gamma_b * inv, b = beta_b - a * mu, and the new running state (not committed).
    Batch statistics merge _channel_moments' ROWS rows in order (Chan et al.)."""
    pid = tl.program_id(0)
    cs = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    eps = tl.load(scalars_ptr)
    run_mean = tl.load(run_mean_ptr + cs, mask=cmask, other=0.0).to(tl.float64)
    run_var = tl.load(run_var_ptr + cs, mask=cmask, other=1.0).to(tl.float64)
    if STEP1 == 2:
        mu = run_mean
        var = run_var
    else:
        count = tl.zeros([BLOCK_C], dtype=tl.float64)
        batch_mean = tl.zeros([BLOCK_C], dtype=tl.float64)
        m2 = tl.zeros([BLOCK_C], dtype=tl.float64)
        for r in range(0, ROWS):
            row = part_ptr + r * 3 * C + cs
            k = tl.load(row, mask=cmask, other=1.0)
            delta = tl.load(row + C, mask=cmask, other=0.0) - batch_mean
            merged = count + k
            batch_mean += delta * (k / merged)
            m2 += k * tl.load(row + 2 * C, mask=cmask, other=0.0) + delta * delta * (count * k / merged)
            count = merged
        mu, var, new_mean, new_var = _step1_statistics(batch_mean, m2 / count, count * L, run_mean,
                                                       run_var, scalars_ptr, rate_ptr, STEP1)
        if UPDATE:
            tl.store(new_mean_ptr + cs, new_mean, mask=cmask)
            tl.store(new_var_ptr + cs, new_var, mask=cmask)
            bad = cmask & ~(_finite(new_mean) & _finite(new_var))
            tl.store(flag_ptr + pid, tl.sum(bad.to(tl.int32), axis=0))
    inv = 1.0 / tl.sqrt(var + eps)
    a = tl.load(bn_w_ptr + cs, mask=cmask, other=1.0).to(tl.float64) * inv
    b = tl.load(bn_b_ptr + cs, mask=cmask, other=0.0).to(tl.float64) - a * mu
    tl.store(a_ptr + cs, a, mask=cmask)
    tl.store(b_ptr + cs, b, mask=cmask)
    tl.store(mu_ptr + cs, mu, mask=cmask)
    tl.store(inv_ptr + cs, inv, mask=cmask)


@triton.jit(do_not_specialize=["C"])
def _commit_running_state(new_mean_ptr, new_var_ptr, flag_ptr, num_flags, run_mean_ptr,
                          run_var_ptr, tracked_ptr, skipped_ptr, C,
                          BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: the new running state replaces the old only if all of it is finite."""
    fs = tl.arange(0, BLOCK_F)
    bad = tl.sum(tl.load(flag_ptr + fs, mask=fs < num_flags, other=0), axis=0)
    ok = bad == 0
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        old_mean = tl.load(run_mean_ptr + cs, mask=cmask)
        old_var = tl.load(run_var_ptr + cs, mask=cmask)
        new_mean = tl.load(new_mean_ptr + cs, mask=cmask).to(old_mean.dtype)
        new_var = tl.load(new_var_ptr + cs, mask=cmask).to(old_var.dtype)
        tl.store(run_mean_ptr + cs, tl.where(ok, new_mean, old_mean), mask=cmask)
        tl.store(run_var_ptr + cs, tl.where(ok, new_var, old_var), mask=cmask)
    tl.store(tracked_ptr, tl.load(tracked_ptr) + ok.to(tl.int64))
    tl.store(skipped_ptr, tl.load(skipped_ptr) + (1 - ok.to(tl.int64)))


@triton.jit(do_not_specialize=["C", "G", "D"])
def _group_coefficients(mean_ptr, var_ptr, a_ptr, b_ptr, gn_w_ptr, gn_b_ptr, scalars_ptr,
                        coef_a_ptr, coef_m_ptr, coef_k_ptr, mu_g_ptr, rstd_g_ptr, C, G, D,
                        PER_CHANNEL_AFFINE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Step 2 for one (sample, group): after step 1 a plane has mean m1 = a m + b and variance
    a^2 v; the group's mean mu and 1/std r follow, and y = A (x - m~) + K per plane."""
    pid, g, cs, cmask, planes = _group_block(C, G, D, BLOCK_D)
    m = tl.load(mean_ptr + planes, mask=cmask, other=0.0)
    v = tl.load(var_ptr + planes, mask=cmask, other=0.0)
    a = tl.load(a_ptr + cs, mask=cmask, other=0.0)
    b = tl.load(b_ptr + cs, mask=cmask, other=0.0)
    m1 = a * m + b
    mu = tl.sum(tl.where(cmask, m1, 0.0), axis=0) / D
    d = tl.where(cmask, m1 - mu, 0.0)
    s2 = tl.sum(tl.where(cmask, a * a * v, 0.0) + d * d, axis=0) / D
    rstd = 1.0 / tl.sqrt(s2 + tl.load(scalars_ptr + 2))
    gamma = _group_affine(gn_w_ptr, cs, cmask, g, PER_CHANNEL_AFFINE)
    beta = _group_affine(gn_b_ptr, cs, cmask, g, PER_CHANNEL_AFFINE)
    coef = gamma * a * rstd
    m_rounded = m.to(coef_m_ptr.dtype.element_ty)
    const = coef * m_rounded.to(tl.float64) + gamma * (b - mu) * rstd + beta
    tl.store(coef_a_ptr + planes, coef.to(coef_a_ptr.dtype.element_ty), mask=cmask)
    tl.store(coef_m_ptr + planes, m_rounded, mask=cmask)
    tl.store(coef_k_ptr + planes, const.to(coef_k_ptr.dtype.element_ty), mask=cmask)
    tl.store(mu_g_ptr + pid, mu)
    tl.store(rstd_g_ptr + pid, rstd)


@triton.jit(do_not_specialize=["P"])
def _apply(x_ptr, dy_ptr, out_ptr, c_x_ptr, c_m_ptr, c_0_ptr, c_dy_ptr, P, C, L, CHUNK_L,
           CHANNELS_LAST: tl.constexpr, HAS_DY: tl.constexpr, BLOCK_P: tl.constexpr,
           BLOCK_L: tl.constexpr, COMPUTE: tl.constexpr):
    """out = c_x (x - m~) + c_0 [+ c_dy dy], per plane; forward (y) and backward (dx)."""
    planes, pmask, base, step = _plane_tile(P, C, L, CHANNELS_LAST, BLOCK_P)
    c_x = tl.load(c_x_ptr + planes, mask=pmask, other=0.0)[:, None]
    c_m = tl.load(c_m_ptr + planes, mask=pmask, other=0.0)[:, None]
    c_0 = tl.load(c_0_ptr + planes, mask=pmask, other=0.0)[:, None]
    if HAS_DY:
        c_dy = tl.load(c_dy_ptr + planes, mask=pmask, other=0.0)[:, None]
    first, stop, _, _ = _chunk(L, CHUNK_L)
    for start in range(first, stop, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        mask = pmask[:, None] & (offs < stop)[None, :]
        ptrs = base[:, None] + offs.to(tl.int64)[None, :] * step
        x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(COMPUTE)
        out = c_x * (x - c_m) + c_0
        if HAS_DY:
            out += c_dy * tl.load(dy_ptr + ptrs, mask=mask, other=0.0).to(COMPUTE)
        tl.store(out_ptr + ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["P"])
def _plane_gradient_sums(x_ptr, dy_ptr, c_m_ptr, s_ptr, t_ptr, P, C, L, CHUNK_L,
                         CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_L: tl.constexpr, COMPUTE: tl.constexpr):
    """S = sum dy and T = sum dy (x - m~) over each plane (float64), over this program's chunk
    of the positions (several chunks: _merge_plane_sums adds their rows)."""
    planes, pmask, base, step = _plane_tile(P, C, L, CHANNELS_LAST, BLOCK_P)
    first, stop, chunks, chunk = _chunk(L, CHUNK_L)
    c_m = tl.load(c_m_ptr + planes, mask=pmask, other=0.0)[:, None]
    s = tl.zeros([BLOCK_P], dtype=tl.float64)
    t = tl.zeros([BLOCK_P], dtype=tl.float64)
    for start in range(first, stop, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        mask = pmask[:, None] & (offs < stop)[None, :]
        ptrs = base[:, None] + offs.to(tl.int64)[None, :] * step
        x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(COMPUTE)
        dy = tl.load(dy_ptr + ptrs, mask=mask, other=0.0).to(COMPUTE)
        s += tl.sum(dy, axis=1).to(tl.float64)
        t += tl.sum(dy * tl.where(mask, x - c_m, 0.0), axis=1).to(tl.float64)
    rows = planes.to(tl.int64) * chunks + chunk
    tl.store(s_ptr + rows, s, mask=pmask)
    tl.store(t_ptr + rows, t, mask=pmask)


@triton.jit(do_not_specialize=["P", "CHUNKS"])
def _merge_plane_sums(part_s_ptr, part_t_ptr, s_ptr, t_ptr, P, CHUNKS, BLOCK_P: tl.constexpr):
    """S[p], T[p]: the CHUNKS rows of each plane added in order."""
    planes = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = planes < P
    s = tl.zeros([BLOCK_P], dtype=tl.float64)
    t = tl.zeros([BLOCK_P], dtype=tl.float64)
    for j in range(0, CHUNKS):
        rows = planes.to(tl.int64) * CHUNKS + j
        s += tl.load(part_s_ptr + rows, mask=pmask, other=0.0)
        t += tl.load(part_t_ptr + rows, mask=pmask, other=0.0)
    tl.store(s_ptr + planes, s, mask=pmask)
    tl.store(t_ptr + planes, t, mask=pmask)


@triton.jit(do_not_specialize=["C", "G", "D", "L"])
def _group_gradients(s_ptr, t_ptr, mean_ptr, var_ptr, c_m_ptr, a_ptr, b_ptr, gn_w_ptr, mu_g_ptr,
                     rstd_g_ptr, c_dy_ptr, c_x_ptr, c_0_ptr, p_ptr, q_ptr, dgamma_ptr, dbeta_ptr,
                     C, G, D, L, PER_CHANNEL_AFFINE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Step 2's backward for one (sample, group), as per-plane coefficients of the gradient
    dx1 w.r.t. step 1's output: dx1 = c_dy dy + c_x (x - m) + c_0, with
    c_dy = r gamma, c_x = -r^2 E2 a, c_0 = -r E1 - r^2 E2 (m1 - mu), where E1 and E2 are the
    group means of gamma dy and gamma dy z. Also P = sum dx1, Q = sum dx1 (x - m) per plane for
    step 1's backward, and this (sample, group)'s share of the group affine's gradients."""
    pid, g, cs, cmask, planes = _group_block(C, G, D, BLOCK_D)
    s = tl.load(s_ptr + planes, mask=cmask, other=0.0)
    m = tl.load(mean_ptr + planes, mask=cmask, other=0.0)
    # T around the exact plane mean: sum dy (x - m) = sum dy (x - m~) + (m~ - m) S
    t = tl.load(t_ptr + planes, mask=cmask, other=0.0) + (
        tl.load(c_m_ptr + planes, mask=cmask, other=0.0).to(tl.float64) - m) * s
    v = tl.load(var_ptr + planes, mask=cmask, other=0.0)
    a = tl.load(a_ptr + cs, mask=cmask, other=0.0)
    b = tl.load(b_ptr + cs, mask=cmask, other=0.0)
    mu = tl.load(mu_g_ptr + pid)
    r = tl.load(rstd_g_ptr + pid)
    gamma = _group_affine(gn_w_ptr, cs, cmask, g, PER_CHANNEL_AFFINE)
    centered = a * m + b - mu                      # m1 - mu
    dz_z = r * (a * t + centered * s)              # sum over the plane of dy * z
    count = D.to(tl.float64) * L
    e1 = tl.sum(tl.where(cmask, gamma * s, 0.0), axis=0) / count
    e2 = tl.sum(tl.where(cmask, gamma * dz_z, 0.0), axis=0) / count
    c_dy = r * gamma + tl.zeros([BLOCK_D], dtype=tl.float64)
    c_x = -r * r * e2 * a
    c_0 = -r * e1 - r * r * e2 * centered
    tl.store(c_dy_ptr + planes, c_dy, mask=cmask)
    tl.store(c_x_ptr + planes, c_x, mask=cmask)
    tl.store(c_0_ptr + planes, c_0, mask=cmask)
    tl.store(p_ptr + planes, c_dy * s + c_0 * L, mask=cmask)
    tl.store(q_ptr + planes, c_dy * t + c_x * L * v, mask=cmask)
    if PER_CHANNEL_AFFINE:
        tl.store(dgamma_ptr + planes, dz_z, mask=cmask)
        tl.store(dbeta_ptr + planes, s, mask=cmask)
    else:
        tl.store(dgamma_ptr + pid, tl.sum(tl.where(cmask, dz_z, 0.0), axis=0))
        tl.store(dbeta_ptr + pid, tl.sum(s, axis=0))


@triton.jit(do_not_specialize=["N", "C", "CHUNK"])
def _channel_gradient_sums(p_ptr, q_ptr, mean_ptr, mu_ptr, part_ptr, N, C, CHUNK,
                           BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """The sums step 1's backward needs over the samples of one chunk (program axis 1), per
    channel: part[chunk] = (planes, sum dx1, sum dx1 (x - mu)), float64."""
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    mu = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
    first = tl.program_id(1) * CHUNK
    last = tl.minimum(first + CHUNK, N)
    sum_p = tl.zeros([BLOCK_C], dtype=tl.float64)
    sum_pq = tl.zeros([BLOCK_C], dtype=tl.float64)
    for n0 in range(first, last, BLOCK_N):
        mask, idx = _sample_tile(n0, last, C, cs, cmask, BLOCK_N)
        p = tl.load(p_ptr + idx, mask=mask, other=0.0)
        q = tl.load(q_ptr + idx, mask=mask, other=0.0)
        m = tl.load(mean_ptr + idx, mask=mask, other=0.0)
        sum_p += tl.sum(p, axis=0)
        sum_pq += tl.sum(q + (m - mu[None, :]) * p, axis=0)   # sum dx1 (x - mu)
    _store_row(part_ptr, C, cs, cmask, (last - first).to(tl.float64), sum_p, sum_pq)


@triton.jit
def _sum_rows(part_ptr, first, stop, C, cs, cmask, BLOCK_C: tl.constexpr):
    """(planes, sum dx1, sum dx1 (x - mu)) of rows first .. stop of _channel_gradient_sums'
    output, added in order."""
    count = tl.zeros([BLOCK_C], dtype=tl.float64)
    sum_p = tl.zeros([BLOCK_C], dtype=tl.float64)
    sum_pq = tl.zeros([BLOCK_C], dtype=tl.float64)
    for r in range(first, stop):
        row = part_ptr + r * 3 * C + cs
        count += tl.load(row, mask=cmask, other=0.0)
        sum_p += tl.load(row + C, mask=cmask, other=0.0)
        sum_pq += tl.load(row + 2 * C, mask=cmask, other=0.0)
    return count, sum_p, sum_pq


@triton.jit
def _parameter_gradients(part_ptr, LOCAL_FIRST, LOCAL_ROWS, inv, dgamma_part_ptr, dbeta_part_ptr,
                         SHARE_ROWS, dbn_w_ptr, dbn_b_ptr, dgamma_ptr, dbeta_ptr, C, D, cs, cmask,
                         PER_CHANNEL_AFFINE: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """The parameters' gradients for channels ``cs``, in the parameters' dtype: gamma_b's and
    beta_b's from this process's rows of sums (LOCAL_FIRST .. + LOCAL_ROWS); step 2's affine
    from the SHARE_ROWS rows of its shares (one per sample, or per chunk of samples) summed,
    for these channels (per-channel affine) or for the groups whose first channel is here."""
    _, local_p, local_pq = _sum_rows(part_ptr, LOCAL_FIRST, LOCAL_FIRST + LOCAL_ROWS, C, cs,
                                     cmask, BLOCK_C)
    tl.store(dbn_b_ptr + cs, local_p.to(dbn_b_ptr.dtype.element_ty), mask=cmask)
    tl.store(dbn_w_ptr + cs, (local_pq * inv).to(dbn_w_ptr.dtype.element_ty), mask=cmask)
    if PER_CHANNEL_AFFINE:
        shares, smask, width = cs, cmask, C
    else:
        shares, smask, width = cs // D, cmask & (cs % D == 0), C // D
    dgamma = tl.zeros([BLOCK_C], dtype=tl.float64)
    dbeta = tl.zeros([BLOCK_C], dtype=tl.float64)
    for n0 in range(0, SHARE_ROWS, BLOCK_N):
        mask, idx = _sample_tile(n0, SHARE_ROWS, width, shares, smask, BLOCK_N)
        dgamma += tl.sum(tl.load(dgamma_part_ptr + idx, mask=mask, other=0.0), axis=0)
        dbeta += tl.sum(tl.load(dbeta_part_ptr + idx, mask=mask, other=0.0), axis=0)
    tl.store(dgamma_ptr + shares, dgamma.to(dgamma_ptr.dtype.element_ty), mask=smask)
    tl.store(dbeta_ptr + shares, dbeta.to(dbeta_ptr.dtype.element_ty), mask=smask)


@triton.jit
def _batch_terms(part_ptr, ROWS, L, inv, C, cs, cmask, BLOCK_C: tl.constexpr):
    """BatchNorm's backward means over every sample step 1 took its statistics from (all ROWS
    rows): mean(dx1) and mean(dx1 x^)."""
    planes, sum_p, sum_pq = _sum_rows(part_ptr, 0, ROWS, C, cs, cmask, BLOCK_C)
    count = planes * L
    return sum_p / count, sum_pq * inv / count


@triton.jit(do_not_specialize=["N", "C", "L", "CHUNK", "ROWS", "LOCAL_FIRST", "LOCAL_ROWS"])
def _channel_gradients(part_ptr, ROWS, LOCAL_FIRST, LOCAL_ROWS, mean_ptr, c_m_ptr, c_dy_ptr,
                       c_x_ptr, c_0_ptr, a_ptr, mu_ptr, inv_ptr, k_dy_ptr, k_x_ptr, k_0_ptr,
                       dbn_w_ptr, dbn_b_ptr, dgamma_part_ptr, dbeta_part_ptr, dgamma_ptr,
                       dbeta_ptr, N, C, L, D, CHUNK, STEP1: tl.constexpr,
                       PER_CHANNEL_AFFINE: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """Step 1's backward per channel, for the samples of one chunk (program axis 1). Estimates
    and fixed statistics are constants: dx = a dx1. Batch statistics add BatchNorm's terms:
    dx = a (dx1 - mean(dx1) - x^ mean(dx1 x^)), the means over every sample whose statistics
    step 1 took (all ROWS rows: every process's when they are synchronized). Writes the final
    per-plane coefficients of dx (around m~, float32); chunk 0 writes gamma_b's and beta_b's
    gradients, from this process's rows (LOCAL_FIRST .. + LOCAL_ROWS), and step 2's affine
    gradients: _group_gradients' shares summed over the samples, for this block's channels
    (per-channel affine) or for the groups whose first channel is in this block."""
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    a = tl.load(a_ptr + cs, mask=cmask, other=0.0)
    mu = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
    inv = tl.load(inv_ptr + cs, mask=cmask, other=0.0)
    if tl.program_id(1) == 0:
        _parameter_gradients(part_ptr, LOCAL_FIRST, LOCAL_ROWS, inv, dgamma_part_ptr,
                             dbeta_part_ptr, N, dbn_w_ptr, dbn_b_ptr, dgamma_ptr, dbeta_ptr, C, D,
                             cs, cmask, PER_CHANNEL_AFFINE, BLOCK_N, BLOCK_C)
    if STEP1 == 0:
        k1, k2 = _batch_terms(part_ptr, ROWS, L, inv, C, cs, cmask, BLOCK_C)
    first = tl.program_id(1) * CHUNK
    last = tl.minimum(first + CHUNK, N)
    for n0 in range(first, last, BLOCK_N):
        mask, idx = _sample_tile(n0, last, C, cs, cmask, BLOCK_N)
        m = tl.load(mean_ptr + idx, mask=mask, other=0.0)
        c_dy = tl.load(c_dy_ptr + idx, mask=mask, other=0.0)
        c_x = tl.load(c_x_ptr + idx, mask=mask, other=0.0)
        c_0 = tl.load(c_0_ptr + idx, mask=mask, other=0.0)
        if STEP1 == 0:
            c_0 = c_0 - k1[None, :] - k2[None, :] * (m - mu[None, :]) * inv[None, :]
            c_x = c_x - (k2 * inv)[None, :]
        # around m~ instead of m: c_x (x - m) = c_x (x - m~) + c_x (m~ - m)
        c_0 = c_0 + c_x * (tl.load(c_m_ptr + idx, mask=mask, other=0.0).to(tl.float64) - m)
        tl.store(k_dy_ptr + idx, (a[None, :] * c_dy).to(k_dy_ptr.dtype.element_ty), mask=mask)
        tl.store(k_x_ptr + idx, (a[None, :] * c_x).to(k_x_ptr.dtype.element_ty), mask=mask)
        tl.store(k_0_ptr + idx, (a[None, :] * c_0).to(k_0_ptr.dtype.element_ty), mask=mask)


# --- Small planes (ROI batches, 1x1 maps): a program holds whole groups ----------------------
# Where one sample's group (D planes) fits a program, the per-plane values never leave it: the
# passes recompute each plane's moments from the map they read anyway, and only per-channel
# rows (one per chunk of samples) and per-(sample, group) statistics go through memory --
# GroupNorm's traffic where the planes are too short to carry per-plane bookkeeping.
#
#     forward   group_block_moments (read x)  [-> all-gather]  ->  channel_stats
#               ->  group_block_normalize (read x, write y)  [-> commit_running_state]
#     backward  group_block_gradient_sums (read x, dy)  [-> all-gather]
#               ->  channel_gradient_terms  ->  group_block_input_gradient (read x, dy, write dx)


@triton.jit
def _block_slots(G, D, EXACT_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's groups (program axis 0) as BLOCK_G * BLOCK_D slots, each group's channels
    side by side: (each slot's group, its channel, which slots are real)."""
    slots = tl.arange(0, BLOCK_G * BLOCK_D)
    gs = tl.program_id(0) * BLOCK_G + slots // BLOCK_D
    if EXACT_D:  # D == BLOCK_D: consecutive channels, which the compiler sees as contiguous
        cs = tl.program_id(0) * BLOCK_G * D + slots
        return gs, cs, cs < G * D
    return gs, gs * D + slots % BLOCK_D, (gs < G) & (slots % BLOCK_D < D)


@triton.jit
def _block_offsets(cs, cmask, C, L, CHANNELS_LAST: tl.constexpr, BLOCK_L: tl.constexpr,
                   VEC: tl.constexpr):
    """[slots, positions] offsets of these channels' planes within a sample (int32: a sample's
    values are fewer than 2^31), and which are real.
    channels_last: the slots (channels) are the contiguous axis. NCHW: VEC divides L (a plane
    is read VEC values at a time)."""
    ls = tl.arange(0, BLOCK_L)
    if CHANNELS_LAST:
        return ls[None, :] * C + cs[:, None], cmask[:, None] & (ls < L)[None, :]
    mask = cmask[:, None] & (ls // VEC < L // VEC)[None, :]
    return tl.multiple_of(cs * L, VEC)[:, None] + ls[None, :], mask


@triton.jit
def _sample_base(n, C, L, VEC: tl.constexpr):
    """Where sample n starts (VEC divides it: it divides L in NCHW)."""
    return tl.multiple_of(n * C * L, VEC)


@triton.jit
def _samples(N, CHUNK):
    """The samples of this program's chunk (program axis 1): first, stop, and first again as
    an int64 scalar (the loops carry it: a loop variable is no tensor in the interpreter)."""
    first = tl.program_id(1) * CHUNK
    return first, tl.minimum(first + CHUNK, N), first.to(tl.int64)


@triton.jit
def _whole_planes(x, mask, L):
    """Moments of a tile of whole planes: (m~ = the mean in the compute dtype, the plane mean m
    and biased variance v in float64, x - m~ (zero off the planes))."""
    centre = tl.sum(x, axis=1) / L
    d = tl.where(mask, x - centre[:, None], 0.0)
    shift = tl.sum(d, axis=1).to(tl.float64) / L
    return centre, centre.to(tl.float64) + shift, tl.sum(d * d, axis=1).to(tl.float64) / L - shift * shift, d


@triton.jit
def _to_slots(per_group, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_G] -> [slots]: each slot gets its group's value."""
    return tl.reshape(tl.broadcast_to(per_group[:, None], (BLOCK_G, BLOCK_D)), (BLOCK_G * BLOCK_D,))


@triton.jit
def _group_sum(v, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """[slots] -> [slots]: each slot gets the sum over its group's slots (v zero where unused)."""
    return _to_slots(tl.sum(tl.reshape(v, (BLOCK_G, BLOCK_D)), axis=1), BLOCK_G, BLOCK_D)


@triton.jit
def _group_leaders(cmask, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """The slots that write a per-group value: each real group's first."""
    return cmask & (tl.arange(0, BLOCK_G * BLOCK_D) % BLOCK_D == 0)


@triton.jit
def _block_affine(w_ptr, gs, cs, cmask, PER_CHANNEL: tl.constexpr):
    """Step 2's gamma or beta for each slot: its channel's, or its group's."""
    return tl.load(w_ptr + (cs if PER_CHANNEL else gs), mask=cmask, other=0.0).to(tl.float64)


@triton.jit
def _per_group(ptr, n, G, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sample n's (int64) (N, G) float64 values of this program's groups, one load per group, per slot."""
    gs = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    return _to_slots(tl.load(ptr + n * G + gs, mask=gs < G, other=0.0), BLOCK_G, BLOCK_D)


@triton.jit(do_not_specialize=["N", "C", "L", "G", "D", "CHUNK"])
def _group_block_moments(x_ptr, part_ptr, N, C, L, G, D, CHUNK, CHANNELS_LAST: tl.constexpr,
                         EXACT_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_L: tl.constexpr, VEC: tl.constexpr, COMPUTE: tl.constexpr):
    """Step 1's batch moments of this program's channels over the samples of one chunk, read
    from the map: part[chunk] = (planes, their mean of m, their mean of v + (m - that mean)^2),
    _channel_moments' rows (Welford over the planes, float64)."""
    gs, cs, cmask = _block_slots(G, D, EXACT_D, BLOCK_G, BLOCK_D)
    inner, mask = _block_offsets(cs, cmask, C, L, CHANNELS_LAST, BLOCK_L, VEC)
    first, stop, n = _samples(N, CHUNK)
    mean = tl.zeros([BLOCK_G * BLOCK_D], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_G * BLOCK_D], dtype=tl.float64)
    for _ in range(first, stop):
        x = tl.load(x_ptr + _sample_base(n, C, L, VEC) + inner, mask=mask, other=0.0).to(COMPUTE)
        _, m, v, _ = _whole_planes(x, mask, L)
        delta = m - mean
        n += 1
        mean += delta / (n - first).to(tl.float64)
        m2 += v + delta * (m - mean)
    k = (stop - first).to(tl.float64)
    _store_row(part_ptr, C, cs, cmask, k, mean, m2 / k)


@triton.jit
def _group_stats(m, v, a, b, cmask, D, eps, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """Step 2's group mean and 1/std per slot, from the planes' moments after step 1 (mean
    a m + b, variance a^2 v) -- _group_coefficients' algebra."""
    m1 = a * m + b
    mu = _group_sum(tl.where(cmask, m1, 0.0), BLOCK_G, BLOCK_D) / D
    dev = tl.where(cmask, m1 - mu, 0.0)
    s2 = _group_sum(tl.where(cmask, a * a * v, 0.0) + dev * dev, BLOCK_G, BLOCK_D) / D
    return mu, 1.0 / tl.sqrt(s2 + eps)


@triton.jit(do_not_specialize=["N", "C", "L", "G", "D", "CHUNK"])
def _group_block_normalize(x_ptr, y_ptr, a_ptr, b_ptr, gn_w_ptr, gn_b_ptr, scalars_ptr, mu_g_ptr,
                           rstd_g_ptr, N, C, L, G, D, CHUNK, CHANNELS_LAST: tl.constexpr,
                           PER_CHANNEL_AFFINE: tl.constexpr, EXACT_D: tl.constexpr,
                           BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                           VEC: tl.constexpr, COMPUTE: tl.constexpr):
    """y = A (x - m~) + K for the samples of one chunk, step 2's statistics taken in the
    program (and saved per (sample, group) for the backward)."""
    gs, cs, cmask = _block_slots(G, D, EXACT_D, BLOCK_G, BLOCK_D)
    inner, mask = _block_offsets(cs, cmask, C, L, CHANNELS_LAST, BLOCK_L, VEC)
    a = tl.load(a_ptr + cs, mask=cmask, other=0.0)
    b = tl.load(b_ptr + cs, mask=cmask, other=0.0)
    gamma = _block_affine(gn_w_ptr, gs, cs, cmask, PER_CHANNEL_AFFINE)
    beta = _block_affine(gn_b_ptr, gs, cs, cmask, PER_CHANNEL_AFFINE)
    eps = tl.load(scalars_ptr + 2)
    leaders = _group_leaders(cmask, BLOCK_G, BLOCK_D)
    first, stop, n = _samples(N, CHUNK)
    for _ in range(first, stop):
        base = _sample_base(n, C, L, VEC)
        x = tl.load(x_ptr + base + inner, mask=mask, other=0.0).to(COMPUTE)
        centre, m, v, d = _whole_planes(x, mask, L)
        mu, r = _group_stats(m, v, a, b, cmask, D, eps, BLOCK_G, BLOCK_D)
        coef = gamma * a * r
        const = coef * centre.to(tl.float64) + gamma * (b - mu) * r + beta
        y = coef.to(COMPUTE)[:, None] * d + const.to(COMPUTE)[:, None]
        tl.store(y_ptr + base + inner, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mu_g_ptr + n * G + gs, mu, mask=leaders)
        tl.store(rstd_g_ptr + n * G + gs, r, mask=leaders)
        n += 1


@triton.jit
def _block_gradient(x_ptr, dy_ptr, offs, mask, cmask, a, b, gamma, mu, r, L, D,
                    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr):
    """Step 2's backward for one sample's slots, _group_gradients' algebra: (dy, x - m~, m~, m,
    v, S = sum dy, T = sum dy (x - m), sum dy z, c_dy, c_x, c_0) with
    dx1 = c_dy dy + c_x (x - m) + c_0."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    centre, m, v, d = _whole_planes(x, mask, L)
    s = tl.sum(dy, axis=1).to(tl.float64)
    t = tl.sum(dy * d, axis=1).to(tl.float64) + (centre.to(tl.float64) - m) * s
    centered = a * m + b - mu
    dz_z = r * (a * t + centered * s)
    count = D.to(tl.float64) * L
    e1 = _group_sum(tl.where(cmask, gamma * s, 0.0), BLOCK_G, BLOCK_D) / count
    e2 = _group_sum(tl.where(cmask, gamma * dz_z, 0.0), BLOCK_G, BLOCK_D) / count
    return (dy, d, centre, m, v, s, t, dz_z, r * gamma, -r * r * e2 * a,
            -r * e1 - r * r * e2 * centered)


@triton.jit(do_not_specialize=["N", "C", "L", "G", "D", "CHUNK"])
def _group_block_gradient_sums(x_ptr, dy_ptr, a_ptr, b_ptr, gn_w_ptr, mu_ptr, mu_g_ptr,
                               rstd_g_ptr, part_ptr, dgamma_part_ptr, dbeta_part_ptr, N, C, L, G,
                               D, CHUNK, CHANNELS_LAST: tl.constexpr,
                               PER_CHANNEL_AFFINE: tl.constexpr, EXACT_D: tl.constexpr,
                               BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                               BLOCK_L: tl.constexpr, VEC: tl.constexpr, COMPUTE: tl.constexpr):
    """Over the samples of one chunk: the row part[chunk] = (planes, sum dx1, sum dx1 (x - mu))
    of _channel_gradient_sums, and the chunk's share of step 2's affine gradients (per channel,
    or per group)."""
    gs, cs, cmask = _block_slots(G, D, EXACT_D, BLOCK_G, BLOCK_D)
    inner, mask = _block_offsets(cs, cmask, C, L, CHANNELS_LAST, BLOCK_L, VEC)
    a = tl.load(a_ptr + cs, mask=cmask, other=0.0)
    b = tl.load(b_ptr + cs, mask=cmask, other=0.0)
    mu_c = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
    gamma = _block_affine(gn_w_ptr, gs, cs, cmask, PER_CHANNEL_AFFINE)
    sum_p = tl.zeros([BLOCK_G * BLOCK_D], dtype=tl.float64)
    sum_pq = tl.zeros([BLOCK_G * BLOCK_D], dtype=tl.float64)
    dgamma = tl.zeros([BLOCK_G * BLOCK_D], dtype=tl.float64)
    dbeta = tl.zeros([BLOCK_G * BLOCK_D], dtype=tl.float64)
    first, stop, n = _samples(N, CHUNK)
    for _ in range(first, stop):
        mu = _per_group(mu_g_ptr, n, G, BLOCK_G, BLOCK_D)
        r = _per_group(rstd_g_ptr, n, G, BLOCK_G, BLOCK_D)
        base = _sample_base(n, C, L, VEC)
        _, _, _, m, v, s, t, dz_z, c_dy, c_x, c_0 = _block_gradient(
            x_ptr + base, dy_ptr + base, inner, mask, cmask, a, b, gamma, mu, r, L, D, BLOCK_G,
            BLOCK_D, COMPUTE)
        p = c_dy * s + c_0 * L                     # sum dx1 over the plane
        sum_p += p
        sum_pq += c_dy * t + c_x * L * v + (m - mu_c) * p
        dgamma += dz_z
        dbeta += s
        n += 1
    _store_row(part_ptr, C, cs, cmask, (stop - first).to(tl.float64), sum_p, sum_pq)
    if PER_CHANNEL_AFFINE:
        shares = tl.program_id(1).to(tl.int64) * C + cs
        tl.store(dgamma_part_ptr + shares, dgamma, mask=cmask)
        tl.store(dbeta_part_ptr + shares, dbeta, mask=cmask)
    else:
        leaders = _group_leaders(cmask, BLOCK_G, BLOCK_D)
        shares = tl.program_id(1).to(tl.int64) * G + gs
        tl.store(dgamma_part_ptr + shares, _group_sum(tl.where(cmask, dgamma, 0.0), BLOCK_G, BLOCK_D), mask=leaders)
        tl.store(dbeta_part_ptr + shares, _group_sum(tl.where(cmask, dbeta, 0.0), BLOCK_G, BLOCK_D), mask=leaders)


@triton.jit(do_not_specialize=["ROWS", "LOCAL_FIRST", "LOCAL_ROWS", "C", "L", "D"])
def _channel_gradient_terms(part_ptr, ROWS, LOCAL_FIRST, LOCAL_ROWS, inv_ptr, dgamma_part_ptr,
                            dbeta_part_ptr, terms_ptr, dbn_w_ptr, dbn_b_ptr, dgamma_ptr,
                            dbeta_ptr, C, L, D, STEP1: tl.constexpr,
                            PER_CHANNEL_AFFINE: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    """Per channel, from the rows of _group_block_gradient_sums: the parameters' gradients and,
    for batch statistics, BatchNorm's terms of dx: terms = (mean(dx1), mean(dx1 x^) inv)."""
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    inv = tl.load(inv_ptr + cs, mask=cmask, other=0.0)
    _parameter_gradients(part_ptr, LOCAL_FIRST, LOCAL_ROWS, inv, dgamma_part_ptr, dbeta_part_ptr,
                         LOCAL_ROWS, dbn_w_ptr, dbn_b_ptr, dgamma_ptr, dbeta_ptr, C, D, cs, cmask,
                         PER_CHANNEL_AFFINE, BLOCK_N, BLOCK_C)
    if STEP1 == 0:
        k1, k2 = _batch_terms(part_ptr, ROWS, L, inv, C, cs, cmask, BLOCK_C)
        tl.store(terms_ptr + cs, k1, mask=cmask)
        tl.store(terms_ptr + C + cs, k2 * inv, mask=cmask)


@triton.jit(do_not_specialize=["N", "C", "L", "G", "D", "CHUNK"])
def _group_block_input_gradient(x_ptr, dy_ptr, dx_ptr, a_ptr, b_ptr, gn_w_ptr, mu_ptr, terms_ptr,
                                mu_g_ptr, rstd_g_ptr, N, C, L, G, D, CHUNK,
                                STEP1: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                                PER_CHANNEL_AFFINE: tl.constexpr, EXACT_D: tl.constexpr,
                                BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                                BLOCK_L: tl.constexpr, VEC: tl.constexpr, COMPUTE: tl.constexpr):
    """dx = a (c_dy dy + c_x (x - m) + c_0) for the samples of one chunk; batch statistics add
    BatchNorm's terms (_channel_gradients' algebra)."""
    gs, cs, cmask = _block_slots(G, D, EXACT_D, BLOCK_G, BLOCK_D)
    inner, mask = _block_offsets(cs, cmask, C, L, CHANNELS_LAST, BLOCK_L, VEC)
    a = tl.load(a_ptr + cs, mask=cmask, other=0.0)
    b = tl.load(b_ptr + cs, mask=cmask, other=0.0)
    gamma = _block_affine(gn_w_ptr, gs, cs, cmask, PER_CHANNEL_AFFINE)
    if STEP1 == 0:
        mu_c = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
        k1 = tl.load(terms_ptr + cs, mask=cmask, other=0.0)
        k2 = tl.load(terms_ptr + C + cs, mask=cmask, other=0.0)
    first, stop, n = _samples(N, CHUNK)
    for _ in range(first, stop):
        base = _sample_base(n, C, L, VEC)
        mu = _per_group(mu_g_ptr, n, G, BLOCK_G, BLOCK_D)
        r = _per_group(rstd_g_ptr, n, G, BLOCK_G, BLOCK_D)
        dy, d, centre, m, _, _, _, _, c_dy, c_x, c_0 = _block_gradient(
            x_ptr + base, dy_ptr + base, inner, mask, cmask, a, b, gamma, mu, r, L, D, BLOCK_G,
            BLOCK_D, COMPUTE)
        if STEP1 == 0:
            c_0 = c_0 - k1 - k2 * (m - mu_c)
            c_x = c_x - k2
        c_0 = c_0 + c_x * (centre.to(tl.float64) - m)   # around m~: x - m = (x - m~) + (m~ - m)
        dx = ((a * c_dy).to(COMPUTE)[:, None] * dy + (a * c_x).to(COMPUTE)[:, None] * d
              + (a * c_0).to(COMPUTE)[:, None])
        tl.store(dx_ptr + base + inner, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        n += 1


# --- Whole layers (1x1 maps: DeepLabV3's image-pooling branch): one program ------------------
# Where the whole map of a layer is a few thousand values, one program holds all of it: step 1's
# statistics, step 2's and the running state's update are taken in registers, the map is read
# once and written once, and nothing per channel goes through memory but the layer's own
# parameters, state and gradients. The backward takes batch statistics anew from x (the same
# code on the same values: the forward's numbers); estimates and fixed statistics are saved.
#
#     forward   whole_layer_forward (read x, write y, update the running state)
#     backward  whole_layer_backward (read x, dy, write dx and the parameters' gradients)


@triton.jit
def _reciprocal(v):
    """1 / v (float64, v > 0) without a division: float32's fast estimate, two Newton steps
    (2^-22 -> 2^-44 -> float64's rounding). float64 division and square root leave their slow
    paths to subroutine calls, and across a call ptxas keeps live values in a stack frame."""
    r = tl.math.fdiv(1.0, v.to(tl.float32), ieee_rounding=False).to(tl.float64)
    r = r * (2.0 - v * r)
    return r * (2.0 - v * r)


@triton.jit
def _rsqrt(v):
    """1 / sqrt(v) (float64, v > 0): the hardware estimate and two Newton steps, no division
    or square root (as _reciprocal)."""
    r = tl.math.rsqrt(v)
    r = r * (1.5 - 0.5 * v * r * r)
    return r * (1.5 - 0.5 * v * r * r)


@triton.jit
def _whole_map(ptr, N, C, cs, cmask, BLOCK_N: tl.constexpr):
    """The (N, C) map of a 1x1 layer as [BLOCK_N, slots] in float64: (values, their offsets,
    which are real)."""
    ns = tl.arange(0, BLOCK_N)
    offs = ns[:, None] * C + cs[None, :]
    mask = (ns < N)[:, None] & cmask[None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float64), offs, mask


@triton.jit
def _batch_moments(x, mask, N):
    """Step 1's batch statistics of a whole 1x1 map, per slot: (mean, biased variance) over the
    samples, Eq. 16."""
    share = _reciprocal(N.to(tl.float64))
    mean = tl.sum(x, axis=0) * share
    d = tl.where(mask, x - mean[None, :], 0.0)
    return mean, tl.sum(d * d, axis=0) * share


@triton.jit
def _rows_group_mean(v, mask, D, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """[BLOCK_N, slots] -> [BLOCK_N, BLOCK_G]: each sample's mean over each group's channels
    (1x1 maps: a group's D values)."""
    sums = tl.sum(tl.reshape(tl.where(mask, v, 0.0), (BLOCK_N, BLOCK_G, BLOCK_D)), axis=2)
    return sums * _reciprocal(D.to(tl.float64))


@triton.jit
def _rows_to_slots(per_group, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """[BLOCK_N, BLOCK_G] -> [BLOCK_N, slots]: each slot gets its group's value."""
    return tl.reshape(tl.broadcast_to(per_group[:, :, None], (BLOCK_N, BLOCK_G, BLOCK_D)),
                      (BLOCK_N, BLOCK_G * BLOCK_D))


@triton.jit
def _rows_group_average(v, mask, D, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    """[BLOCK_N, slots] -> the same shape: each value replaced by its group's mean."""
    return _rows_to_slots(_rows_group_mean(v, mask, D, BLOCK_N, BLOCK_G, BLOCK_D), BLOCK_N,
                          BLOCK_G, BLOCK_D)


@triton.jit
def _whole_step2(x, mask, a, b, D, eps, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """Step 2 on step 1's output x1 = a x + b: (z, its group's 1/std r), z = (x1 - mu) r; the
    statistics taken per (sample, group), then spread over the slots."""
    x1 = a[None, :] * x + b[None, :]
    dev = tl.where(mask, x1 - _rows_group_average(x1, mask, D, BLOCK_N, BLOCK_G, BLOCK_D), 0.0)
    r = _rsqrt(_rows_group_mean(dev * dev, mask, D, BLOCK_N, BLOCK_G, BLOCK_D) + eps)
    r = _rows_to_slots(r, BLOCK_N, BLOCK_G, BLOCK_D)
    return dev * r, r


@triton.jit(do_not_specialize=["N", "C", "G", "D"])
def _whole_layer_forward(x_ptr, y_ptr, bn_w_ptr, bn_b_ptr, gn_w_ptr, gn_b_ptr, run_mean_ptr,
                         run_var_ptr, tracked_ptr, skipped_ptr, scalars_ptr, rate_ptr, mu_ptr,
                         inv_ptr, N, C, G, D, STEP1: tl.constexpr, UPDATE: tl.constexpr,
                         SAVE: tl.constexpr, PER_CHANNEL_AFFINE: tl.constexpr,
                         EXACT_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    """A whole 1x1 layer: y, the running state moved and committed (only if every channel's new
    values are finite, as _commit_running_state), and step 1's statistics saved (``SAVE``:
    estimates and fixed statistics, which the backward cannot take anew from x)."""
    gs, cs, cmask = _block_slots(G, D, EXACT_D, BLOCK_G, BLOCK_D)
    x, offs, mask = _whole_map(x_ptr, N, C, cs, cmask, BLOCK_N)
    old_mean = tl.load(run_mean_ptr + cs, mask=cmask, other=0.0)
    old_var = tl.load(run_var_ptr + cs, mask=cmask, other=1.0)
    run_mean, run_var = old_mean.to(tl.float64), old_var.to(tl.float64)
    if STEP1 == 2:
        mu = run_mean
        var = run_var
    else:
        batch_mean, batch_var = _batch_moments(x, mask, N)
        mu, var, new_mean, new_var = _step1_statistics(batch_mean, batch_var, N.to(tl.float64),
                                                       run_mean, run_var, scalars_ptr, rate_ptr, STEP1)
        if UPDATE:
            ok = tl.sum((cmask & ~(_finite(new_mean) & _finite(new_var))).to(tl.int32), axis=0) == 0
            tl.store(run_mean_ptr + cs, tl.where(ok, new_mean.to(old_mean.dtype), old_mean), mask=cmask)
            tl.store(run_var_ptr + cs, tl.where(ok, new_var.to(old_var.dtype), old_var), mask=cmask)
            tl.store(tracked_ptr, tl.load(tracked_ptr) + ok.to(tl.int64))
            tl.store(skipped_ptr, tl.load(skipped_ptr) + (1 - ok.to(tl.int64)))
    inv = _rsqrt(var + tl.load(scalars_ptr))
    if SAVE:
        tl.store(mu_ptr + cs, mu, mask=cmask)
        tl.store(inv_ptr + cs, inv, mask=cmask)
    a = tl.load(bn_w_ptr + cs, mask=cmask, other=1.0).to(tl.float64) * inv
    b = tl.load(bn_b_ptr + cs, mask=cmask, other=0.0).to(tl.float64) - a * mu
    z, _ = _whole_step2(x, mask, a, b, D, tl.load(scalars_ptr + 2), BLOCK_N, BLOCK_G, BLOCK_D)
    gamma = _block_affine(gn_w_ptr, gs, cs, cmask, PER_CHANNEL_AFFINE)
    beta = _block_affine(gn_b_ptr, gs, cs, cmask, PER_CHANNEL_AFFINE)
    y = gamma[None, :] * z + beta[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N", "C", "G", "D"])
def _whole_layer_backward(x_ptr, dy_ptr, dx_ptr, bn_w_ptr, bn_b_ptr, gn_w_ptr, scalars_ptr,
                          mu_ptr, inv_ptr, dbn_w_ptr, dbn_b_ptr, dgamma_ptr, dbeta_ptr, N, C, G,
                          D, STEP1: tl.constexpr, PER_CHANNEL_AFFINE: tl.constexpr,
                          EXACT_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    """A whole 1x1 layer's backward. Step 2 (GroupNorm's): dx1 = r (g - <g> - z <g z>) with
    g = gamma dy and <.> the mean over a sample's group; step 1: dx = a dx1 for estimates and
    fixed statistics, dx = a (dx1 - mean(dx1) - x^ mean(dx1 x^)) for batch statistics (means
    over the samples). Gradients written in the parameters' dtype."""
    gs, cs, cmask = _block_slots(G, D, EXACT_D, BLOCK_G, BLOCK_D)
    x, offs, mask = _whole_map(x_ptr, N, C, cs, cmask, BLOCK_N)
    dy, _, _ = _whole_map(dy_ptr, N, C, cs, cmask, BLOCK_N)
    if STEP1 == 0:
        mu, var = _batch_moments(x, mask, N)
        inv = _rsqrt(var + tl.load(scalars_ptr))
    else:
        mu = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
        inv = tl.load(inv_ptr + cs, mask=cmask, other=0.0)
    a = tl.load(bn_w_ptr + cs, mask=cmask, other=1.0).to(tl.float64) * inv
    b = tl.load(bn_b_ptr + cs, mask=cmask, other=0.0).to(tl.float64) - a * mu
    z, r = _whole_step2(x, mask, a, b, D, tl.load(scalars_ptr + 2), BLOCK_N, BLOCK_G, BLOCK_D)
    gamma = _block_affine(gn_w_ptr, gs, cs, cmask, PER_CHANNEL_AFFINE)
    dz_z = tl.sum(dy * z, axis=0)  # z and dy are zero off the map
    dy_sum = tl.sum(dy, axis=0)
    if PER_CHANNEL_AFFINE:
        tl.store(dgamma_ptr + cs, dz_z.to(dgamma_ptr.dtype.element_ty), mask=cmask)
        tl.store(dbeta_ptr + cs, dy_sum.to(dbeta_ptr.dtype.element_ty), mask=cmask)
    else:
        leaders = _group_leaders(cmask, BLOCK_G, BLOCK_D)
        tl.store(dgamma_ptr + gs, _group_sum(dz_z, BLOCK_G, BLOCK_D).to(dgamma_ptr.dtype.element_ty),
                 mask=leaders)
        tl.store(dbeta_ptr + gs, _group_sum(dy_sum, BLOCK_G, BLOCK_D).to(dbeta_ptr.dtype.element_ty),
                 mask=leaders)
    g = gamma[None, :] * dy
    dx1 = r * (g - _rows_group_average(g, mask, D, BLOCK_N, BLOCK_G, BLOCK_D)
               - z * _rows_group_average(g * z, mask, D, BLOCK_N, BLOCK_G, BLOCK_D))
    dx1 = tl.where(mask, dx1, 0.0)
    x_hat = tl.where(mask, (x - mu[None, :]) * inv[None, :], 0.0)
    sum_p = tl.sum(dx1, axis=0)
    sum_pq = tl.sum(dx1 * x_hat, axis=0)
    tl.store(dbn_b_ptr + cs, sum_p.to(dbn_b_ptr.dtype.element_ty), mask=cmask)
    tl.store(dbn_w_ptr + cs, sum_pq.to(dbn_w_ptr.dtype.element_ty), mask=cmask)
    if STEP1 == 0:
        share = _reciprocal(N.to(tl.float64))
        dx1 = dx1 - (sum_p * share)[None, :] - x_hat * (sum_pq * share)[None, :]
    tl.store(dx_ptr + offs, (a[None, :] * dx1).to(dx_ptr.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor):
    """(x as the kernels read it, whether it is channels_last): channels_last stays
    channels_last, anything else becomes NCHW-contiguous."""
    if reads_channels_last(x):
        return x, True
    return x.contiguous(), False


def reads_channels_last(x: torch.Tensor) -> bool:
    """Whether the kernels read x as channels_last (else as NCHW-contiguous)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def plane_launch(n: int, c: int, length: int, channels_last: bool, compute_dtype: torch.dtype):
    """(tile sizes, positions per chunk (CHUNK_L) and warps, grid) of the passes over the map
    (moments, gradient sums, apply).

    The rule: a tile holds ``_TILE`` elements (half that when the arithmetic is float64) and
    gets one warp per 256 of them, at most 8: 8 values per thread, with the per-plane float64
    accumulators beside them, fit the registers without spilling on sm_80-sm_90. NCHW tiles
    take whole planes up to the tile (several planes of a small map, e.g. ROI batches) and
    step along longer ones; the fastest axis is the plane, contiguous in memory. channels_last
    tiles take up to 64 consecutive channels of one sample, so neighbouring threads read
    neighbouring channels -- the contiguous axis there -- and step along the plane.

    Where that gives fewer than PROGRAMS programs (one image: a 64-channel stem is 64 planes, or
    a single channels_last tile), the positions are cut into chunks of whole tile steps (grid
    axis 1) until there are PROGRAMS programs; the chunks' partial moments and sums are merged
    in a fixed order by a small kernel (deterministic, no atomics).
    """
    tile = _TILE // 2 if compute_dtype == torch.float64 else _TILE
    planes = n * c
    if channels_last:
        block_p = min(triton.next_power_of_2(c), 64)
        block_l = max(1, min(triton.next_power_of_2(length), tile // block_p))
        grid = (n * triton.cdiv(c, block_p),)
    else:
        block_l = min(triton.next_power_of_2(length), tile)
        block_p = max(1, min(triton.next_power_of_2(planes), tile // block_l))
        grid = (triton.cdiv(planes, block_p),)
    warps = max(1, min(8, block_p * block_l // 256))
    steps = triton.cdiv(length, block_l)
    chunks = max(1, min(steps, triton.cdiv(PROGRAMS, grid[0])))
    chunk_l = max(1, steps // chunks) * block_l  # rounded down: at least ``chunks`` chunks
    return (dict(CHUNK_L=chunk_l, BLOCK_P=block_p, BLOCK_L=block_l, CHANNELS_LAST=channels_last,
                 num_warps=warps), (grid[0], triton.cdiv(length, chunk_l)))


MERGE_BLOCK = 128  # planes per program of the merge kernels


def channel_launch(n: int, c: int, split: bool = True):
    """(tile sizes and warps, samples per chunk, grid) of the per-channel kernels, which read
    per-plane float64 values: 32 channels a program (coalesced 256-byte rows), up to 16 samples
    a step. The samples are cut into chunks (grid axis 1) until there are PROGRAMS programs or
    one step per program; the chunks' sums are merged in a fixed order (deterministic). Not
    ``split``: one chunk (one row of sums per process, when they are synchronized)."""
    block_c = min(triton.next_power_of_2(c), 32)
    block_n = max(1, min(triton.next_power_of_2(n), 16))
    channel_blocks = triton.cdiv(c, block_c)
    chunks = max(1, min(triton.cdiv(n, block_n), triton.cdiv(PROGRAMS, channel_blocks))) if split else 1
    chunk = max(1, triton.cdiv(n, block_n) // chunks) * block_n  # at least ``chunks`` chunks
    return (dict(BLOCK_N=block_n, BLOCK_C=block_c, num_warps=4), chunk,
            (channel_blocks, triton.cdiv(n, chunk)))


def group_block_launch(n: int, c: int, groups: int, length: int, channels_last: bool,
                       compute_dtype: torch.dtype, split: bool = True):
    """(tile sizes, layout and warps, samples per chunk, grid) of the small-plane kernels, or
    None where one sample's group (D planes) does not fit a program.

    A program takes BLOCK_G whole groups of one sample a step -- a tile of BLOCK_G * BLOCK_D
    planes -- and loops over the samples of one chunk. The rule keeps each thread's share of
    the per-plane float64 algebra to a plane or two, which is what fits the registers without
    spilling on sm_80-sm_90: channels_last (and 1x1 maps, the same memory) put neighbouring
    threads on neighbouring channels, the contiguous axis, so a tile takes enough groups for 32
    channels within ``2 * _TILE`` elements, 8 a thread (float64: ``_TILE / 2``, 4 a thread);
    a tile of fewer than 16 channels (less than a 32-byte sector of 16-bit values) where C has
    more means the planes are not small. NCHW puts the threads along the plane, so a tile takes 8 planes
    (D <= 8) over 8 warps, read VEC values at a time (VEC: 4, 2 or 1, what divides the plane
    length), at most 64 vectors a plane: two planes a thread.

    The samples are cut into chunks (grid axis 1) until there are PROGRAMS programs, each chunk
    about 512 values of a channel or more so that the per-channel rows stay small beside the map.
    Not ``split``: one chunk (one row per process, when step 1's statistics are synchronized).
    """
    # float64 holds half the values a thread (their algebra takes twice the registers)
    tile, per_warp = (_TILE // 2, 128) if compute_dtype == torch.float64 else (2 * _TILE, 256)
    d = c // groups
    block_d, block_l = triton.next_power_of_2(d), triton.next_power_of_2(length)
    channels_last = channels_last or length == 1
    if channels_last:
        if block_d * block_l > tile:
            return None
        block_g = max(1, min(triton.next_power_of_2(groups), triton.cdiv(32, block_d),
                             tile // (block_d * block_l)))
        if block_g * block_d < min(16, c):
            return None  # a position's channels would not fill a 32-byte sector
        warps = max(1, min(8, block_g * block_d * block_l // per_warp))
        vec = 1
    else:
        vec = 4 if length % 4 == 0 else (2 if length % 2 == 0 else 1)
        if block_d > 8 or block_l // vec > 64:
            return None
        block_g, warps = max(1, min(triton.next_power_of_2(groups), 8 // block_d)), 8
    blocks = triton.cdiv(groups, block_g)
    chunks = max(1, min(n, triton.cdiv(PROGRAMS, blocks), triton.cdiv(n * length, 512))) if split else 1
    chunk = n // chunks  # rounding down keeps at least `chunks` chunks
    return (dict(CHANNELS_LAST=channels_last, EXACT_D=block_d == d, BLOCK_G=block_g,
                 BLOCK_D=block_d, BLOCK_L=block_l, VEC=vec, num_warps=warps),
            chunk, (blocks, triton.cdiv(n, chunk)))


_WHOLE_LAYER = 2048  # values of a map that one program takes whole (whole_layer_launch)


def _power_of_2_at_least(v):
    """triton.next_power_of_2 by comparisons: on a traced (symbolic) size it guards a range,
    where next_power_of_2's bit operations would build an expression that takes minutes."""
    p = 1
    while p < v:
        p *= 2
    return p


def whole_layer_launch(n: int, c: int, groups: int, length: int, synchronized: bool = False):
    """Tile sizes and warps of the whole-layer kernels, or None where they do not serve.

    1x1 maps of up to ``_WHOLE_LAYER`` values (padded to powers of two: samples x groups x
    channels per group), not synchronized (a program cannot wait for other processes' sums).
    One warp per 128 values (at most 16 warps): 4 float64 values a thread. The kernels divide
    and take square roots through _reciprocal and _rsqrt, which make no subroutine calls, so
    nothing goes to a stack frame on sm_80-sm_90.
    """
    if length != 1 or synchronized:
        return None
    block_n, block_g, block_d = (_power_of_2_at_least(v) for v in (n, groups, c // groups))
    if block_n * block_g * block_d > _WHOLE_LAYER:
        return None
    return dict(EXACT_D=block_d == c // groups, BLOCK_N=block_n, BLOCK_G=block_g, BLOCK_D=block_d,
                num_warps=max(1, min(16, block_n * block_g * block_d // 128)))


def group_launch(groups_d: int):
    """Tile and warps of the per-(sample, group) kernels: a group's D channels, one warp for
    up to 64 of them."""
    block_d = triton.next_power_of_2(groups_d)
    return dict(BLOCK_D=block_d, num_warps=max(1, min(4, block_d // 64)))


def _compute_dtype(x: torch.Tensor):
    """float64 maps are computed in float64 (gradcheck); all others in float32."""
    return (tl.float64, torch.float64) if x.dtype == torch.float64 else (tl.float32, torch.float32)


def _geometry(x: torch.Tensor, groups: int, channels_last: bool):
    """(N, C, plane length, planes, channels per group, compute dtypes (Triton's, torch's),
    tiles and grid of the passes over the map)."""
    n, c, h, w = x.shape
    compute, coef_dtype = _compute_dtype(x)
    tiles, grid = plane_launch(n, c, h * w, channels_last, coef_dtype)
    return n, c, h * w, n * c, c // groups, compute, coef_dtype, tiles, grid


def _launcher(traceable: bool):
    """How a kernel is called: through torch.library.wrap_triton inside bcn's operators (so
    torch.compile and torch.export trace the launches into their graphs), directly in eager
    mode (no tracing machinery per launch)."""
    return torch.library.wrap_triton if traceable else (lambda kernel: kernel)


class Saved(NamedTuple):
    """What the forward keeps for the backward besides the parameters."""
    x: torch.Tensor          # the map as the kernels read it (NCHW-contiguous or channels_last)
    plane_mean: torch.Tensor  # (N*C,) float64: each plane's mean m
    plane_var: torch.Tensor   # (N*C,) float64: each plane's biased variance v
    centre: torch.Tensor      # (N*C,): the float32 plane mean m~ outputs are written around
    a: torch.Tensor           # (C,) float64: step 1 as a x + b
    b: torch.Tensor
    mean: torch.Tensor        # (C,) float64: step 1's statistics (the batch's, or the estimates)
    inv_std: torch.Tensor     # (C,) float64: 1 / sqrt(var + eps)
    group_mean: torch.Tensor  # (N*G,) float64: step 2's statistics
    group_rstd: torch.Tensor


def forward(x, groups, bn_weight, bn_bias, gn_weight, gn_bias, running_mean, running_var,
            num_batches_tracked, skipped_updates, step1, update, rate, scalars, traceable=False,
            gather=None):
    """(y, Saved). gn_weight / gn_bias: (1, G, 1) per group or (C,) per channel; step1: BATCH,
    ESTIMATE or FIXED; scalars: float64 (bn_eps, momentum, gn_eps) on x's device; rate: the
    estimate rate (a one-element tensor on x's device). ``update`` (BATCH, ESTIMATE): move the
    running state, committed last, after every other kernel has run. ``gather`` (BATCH
    synchronized across processes): rows -> every process's rows concatenated in rank order,
    one collective (the per-channel sums of step 1's statistics). Small planes (where
    group_block_launch fits a sample's group in a program) save no per-plane values."""
    run = _launcher(traceable)
    x, channels_last = _layout(x)
    n, c, length, planes, d, compute, coef_dtype, tiles, grid = _geometry(x, groups, channels_last)
    f64 = dict(dtype=torch.float64, device=x.device)
    per_channel = gn_weight.dim() == 1
    whole = whole_layer_launch(n, c, groups, length, synchronized=gather is not None)
    if whole is not None:
        y = torch.empty_like(x)
        kept = c if step1 != BATCH else 0  # batch statistics: the backward takes them anew
        mu, inv = torch.empty(kept, **f64), torch.empty(kept, **f64)
        run(_whole_layer_forward)[(1,)](x, y, bn_weight, bn_bias, gn_weight, gn_bias, running_mean,
                                        running_var, num_batches_tracked, skipped_updates, scalars,
                                        rate, mu, inv, n, c, groups, d, STEP1=step1, UPDATE=update,
                                        SAVE=kept > 0, PER_CHANNEL_AFFINE=per_channel, **whole)
        nothing = [torch.empty(0, **f64) for _ in range(6)]
        return y, Saved(x, nothing[0], nothing[1], torch.empty(0, dtype=coef_dtype, device=x.device),
                        nothing[2], nothing[3], mu, inv, nothing[4], nothing[5])
    blocks = group_block_launch(n, c, groups, length, channels_last, coef_dtype, split=gather is None)
    ctiles, chunk, cgrid = channel_launch(n, c, split=gather is None)
    if blocks is None:
        mean, var = torch.empty(planes, **f64), torch.empty(planes, **f64)
        if grid[1] == 1:
            run(_plane_moments)[grid](x, mean, var, planes, c, length, COMPUTE=compute, **tiles)
        else:
            part_mean, part_var = torch.empty(planes * grid[1], **f64), torch.empty(planes * grid[1], **f64)
            run(_plane_moments)[grid](x, part_mean, part_var, planes, c, length, COMPUTE=compute, **tiles)
            run(_merge_plane_moments)[(triton.cdiv(planes, MERGE_BLOCK),)](
                part_mean, part_var, mean, var, planes, length, tiles["CHUNK_L"], grid[1],
                BLOCK_P=MERGE_BLOCK, num_warps=4)
        rows = cgrid[1] if step1 != FIXED else 0
        part = torch.empty(rows, 3, c, **f64)
        if rows:
            run(_channel_moments)[cgrid](mean, var, part, n, c, chunk, **ctiles)
    else:
        btiles, bchunk, bgrid = blocks
        mean, var = torch.empty(0, **f64), torch.empty(0, **f64)
        rows = bgrid[1] if step1 != FIXED else 0
        part = torch.empty(rows, 3, c, **f64)
        if rows:
            run(_group_block_moments)[bgrid](x, part, n, c, length, groups, d, bchunk,
                                             COMPUTE=compute, **btiles)
    if gather is not None:
        part = gather(part)  # every process's rows, in rank order
    a, b, mu, inv, new_mean, new_var = (torch.empty(c, **f64) for _ in range(6))
    flags = torch.empty(cgrid[0], dtype=torch.int32, device=x.device)  # each program writes its own
    run(_channel_stats)[cgrid[:1]](part, part.shape[0], c, length, bn_weight, bn_bias, running_mean,
                                   running_var, scalars, rate, a, b, mu, inv, new_mean, new_var,
                                   flags, STEP1=step1, UPDATE=update, BLOCK_C=ctiles["BLOCK_C"],
                                   num_warps=ctiles["num_warps"])
    mu_g, rstd_g = torch.empty(n * groups, **f64), torch.empty(n * groups, **f64)
    y = torch.empty_like(x)
    if blocks is None:
        coef_a = torch.empty(planes, dtype=coef_dtype, device=x.device)
        coef_m, coef_k = torch.empty_like(coef_a), torch.empty_like(coef_a)
        run(_group_coefficients)[(n * groups,)](mean, var, a, b, gn_weight, gn_bias, scalars, coef_a,
                                                coef_m, coef_k, mu_g, rstd_g, c, groups, d,
                                                PER_CHANNEL_AFFINE=per_channel, **group_launch(d))
        run(_apply)[grid](x, x, y, coef_a, coef_m, coef_k, coef_a, planes, c, length, HAS_DY=False,
                          COMPUTE=compute, **tiles)
    else:
        coef_m = torch.empty(0, dtype=coef_dtype, device=x.device)
        run(_group_block_normalize)[bgrid](x, y, a, b, gn_weight, gn_bias, scalars, mu_g, rstd_g, n,
                                           c, length, groups, d, bchunk, PER_CHANNEL_AFFINE=per_channel,
                                           COMPUTE=compute, **btiles)
    if update:
        run(_commit_running_state)[(1,)](new_mean, new_var, flags, cgrid[0], running_mean, running_var,
                                         num_batches_tracked, skipped_updates, c,
                                         BLOCK_F=triton.next_power_of_2(cgrid[0]),
                                         BLOCK_C=min(triton.next_power_of_2(c), 1024), num_warps=4)
    return y, Saved(x, mean, var, coef_m, a, b, mu, inv, mu_g, rstd_g)


def backward(dy, groups, bn_weight, bn_bias, gn_weight, scalars, saved, step1, traceable=False,
             gather=None):
    """(dx, d bn_weight, d bn_bias, d gn_weight, d gn_bias); parameter gradients in the
    parameters' dtype (gn_weight's), gn's flat ((G,) or (C,)). The parameters and scalars are
    the forward's. ``gather``: as in forward, for the sums of BatchNorm's backward (the
    parameters' gradients stay this process's own)."""
    run = _launcher(traceable)
    x, mean, var, coef_m, a, b, mu, inv, mu_g, rstd_g = saved
    x, channels_last = _layout(x)
    dy = dy.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    n, c, length, planes, d, compute, coef_dtype, tiles, grid = _geometry(x, groups, channels_last)
    f64 = dict(dtype=torch.float64, device=x.device)
    per_channel = gn_weight.dim() == 1
    # the parameters' gradients written in their dtype by the kernels: no cast afterwards
    wide = dict(dtype=gn_weight.dtype, device=x.device)
    dbn_w, dbn_b = torch.empty(c, **wide), torch.empty(c, **wide)
    d_gn_w, d_gn_b = torch.empty(c if per_channel else groups, **wide), torch.empty(c if per_channel else groups, **wide)
    dx = torch.empty_like(x)
    whole = whole_layer_launch(n, c, groups, length, synchronized=gather is not None)
    if whole is not None:
        run(_whole_layer_backward)[(1,)](x, dy, dx, bn_weight, bn_bias, gn_weight, scalars, mu, inv,
                                         dbn_w, dbn_b, d_gn_w, d_gn_b, n, c, groups, d, STEP1=step1,
                                         PER_CHANNEL_AFFINE=per_channel, **whole)
        return dx, dbn_w, dbn_b, d_gn_w, d_gn_b
    blocks = group_block_launch(n, c, groups, length, channels_last, coef_dtype, split=gather is None)
    ctiles, chunk, cgrid = channel_launch(n, c, split=gather is None)
    if blocks is not None:
        btiles, bchunk, bgrid = blocks
        part = torch.empty(bgrid[1], 3, c, **f64)
        shares = bgrid[1] * d_gn_w.numel()
        dgamma, dbeta = torch.empty(shares, **f64), torch.empty(shares, **f64)
        run(_group_block_gradient_sums)[bgrid](x, dy, a, b, gn_weight, mu, mu_g, rstd_g, part, dgamma,
                                               dbeta, n, c, length, groups, d, bchunk,
                                               PER_CHANNEL_AFFINE=per_channel, COMPUTE=compute,
                                               **btiles)
        local_first, local_rows = 0, bgrid[1]
        if gather is not None:  # one row per process
            part, local_first = gather(part), gather.rank
        terms = torch.empty(2, c, **f64)
        # a few rows (one per chunk): 8 a step, which triton 3.6's ptxas also keeps spill-free
        run(_channel_gradient_terms)[cgrid[:1]](part, part.shape[0], local_first, local_rows, inv, dgamma,
                                                dbeta, terms, dbn_w, dbn_b, d_gn_w, d_gn_b, c, length,
                                                d, STEP1=step1, PER_CHANNEL_AFFINE=per_channel,
                                                **dict(ctiles, BLOCK_N=min(ctiles["BLOCK_N"], 8)))
        run(_group_block_input_gradient)[bgrid](x, dy, dx, a, b, gn_weight, mu, terms, mu_g, rstd_g,
                                                n, c, length, groups, d, bchunk, STEP1=step1,
                                                PER_CHANNEL_AFFINE=per_channel, COMPUTE=compute,
                                                **btiles)
        return dx, dbn_w, dbn_b, d_gn_w, d_gn_b
    s, t = torch.empty(planes, **f64), torch.empty(planes, **f64)
    if grid[1] == 1:
        run(_plane_gradient_sums)[grid](x, dy, coef_m, s, t, planes, c, length, COMPUTE=compute, **tiles)
    else:
        part_s, part_t = torch.empty(planes * grid[1], **f64), torch.empty(planes * grid[1], **f64)
        run(_plane_gradient_sums)[grid](x, dy, coef_m, part_s, part_t, planes, c, length,
                                        COMPUTE=compute, **tiles)
        run(_merge_plane_sums)[(triton.cdiv(planes, MERGE_BLOCK),)](
            part_s, part_t, s, t, planes, grid[1], BLOCK_P=MERGE_BLOCK, num_warps=4)
    c_dy, c_x, c_0, p, q = (torch.empty(planes, **f64) for _ in range(5))
    shares = planes if per_channel else n * groups
    dgamma, dbeta = torch.empty(shares, **f64), torch.empty(shares, **f64)
    run(_group_gradients)[(n * groups,)](s, t, mean, var, coef_m, a, b, gn_weight, mu_g, rstd_g, c_dy,
                                         c_x, c_0, p, q, dgamma, dbeta, c, groups, d, length,
                                         PER_CHANNEL_AFFINE=per_channel, **group_launch(d))
    k_dy = torch.empty(planes, dtype=coef_dtype, device=x.device)
    k_x, k_0 = torch.empty_like(k_dy), torch.empty_like(k_dy)
    part = torch.empty(cgrid[1], 3, c, **f64)
    run(_channel_gradient_sums)[cgrid](p, q, mean, mu, part, n, c, chunk, **ctiles)
    local_first, local_rows = 0, cgrid[1]
    if gather is not None:  # one row per process
        part, local_first = gather(part), gather.rank
    run(_channel_gradients)[cgrid](part, part.shape[0], local_first, local_rows, mean, coef_m, c_dy,
                                   c_x, c_0, a, mu, inv, k_dy, k_x, k_0, dbn_w, dbn_b, dgamma, dbeta,
                                   d_gn_w, d_gn_b, n, c, length, d, chunk, STEP1=step1,
                                   PER_CHANNEL_AFFINE=per_channel, **ctiles)
    run(_apply)[grid](x, dy, dx, k_x, coef_m, k_0, k_dy, planes, c, length, HAS_DY=True,
                      COMPUTE=compute, **tiles)
    return dx, dbn_w, dbn_b, d_gn_w, d_gn_b
