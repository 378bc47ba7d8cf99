"""Winograd convolutions of 3×3 stride-1 layers (kernels/winograd.cu): F(2×2, 3×3) and F(4×4, 3×3), forward and
backward-filter (WinogradForward, WinogradBackwardFilter): transforms in winograd.cu, the products as one sliced
launch of kernels/gemm.cu."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy

from cnn_gpu.cuda import device
from cnn_gpu.cuda.grid import cdiv, require_int32_indexable
from cnn_gpu.cuda.loader import family_defines, load_kernel
from cnn_gpu.cuda.variants import Variant, fits, planned
from cnn_gpu.ops.arrays import nan_filled
from cnn_gpu.ops.conv.problem import ConvProblem, _output_shape
from cnn_gpu.ops.gemm import MAX_GRID_Y, cuda_gemm_k_slices, plan_gemm
from cnn_gpu.ops.geometry import WindowGeometry


# Winograd F(2×2, 3×3) (kernels/winograd.cu), of the forward and of backward-filter, a candidate beside the implicit
# GEMMs for 3×3, stride-1 layers only; never the default. The forward's buffers U, V, M hold 16·(C·K + C·T + K·T)
# floats (T: 2×2 output tiles), 1.4 GB on the 100×100 network's conv2, backward-filter's about 16·(K + C)·T; its
# rounding error is a few times the direct conv's (still within 1e-5).
# Winograd F(4×4, 3×3), beside F(2×2) for the same layers, never the default: 36 products per 4×4 outputs (2.25 an
# output against F(2×2)'s 4), the forward's buffers 36·(C·K + C·T + K·T) floats (T: 4×4 tiles), about 0.56× F(2×2)'s;
# its rounding error is 6-13× the direct conv's (≤ 4.2e-6 at 512 channels; backward-filter's ≤ 6.5e-6 at N 128, near
# the direct one's: winograd.cu's header).


def _winograd_applies(g: WindowGeometry) -> bool:
    """Winograd F(m×m, 3×3) computes this layer: a 3×3 window at stride 1 (any padding)."""
    return (g.R, g.S, g.stride_h, g.stride_w) == (3, 3, 1, 1)


_WINOGRAD_THREADS = family_defines("winograd")["WINOGRAD_THREADS"]


# A Winograd variant's buffers together take at most this many bytes. They are always several times x and y
# (F(2×2): 16 floats per 2×2 tile), so no ratio to those sizes can exclude a layer whose tensors alone are
# large: the 100×100 network's conv1 (C 1 → K 512 on 100², N 128) would need a 10 GB backward-filter DY and a 5.9 GB
# F(4×4) forward M; its conv2 at N 128 takes 1.4 GB (F(2×2) forward, backward-filter), at N 256 2.9 GB.
_WINOGRAD_MAX_BYTES = 4 << 30


def _require_winograd_buffers(shapes: dict, variant: str) -> None:
    """ValueError unless every buffer {name: shape} is 32-bit indexable and together they fit _WINOGRAD_MAX_BYTES."""
    for name, shape in shapes.items():
        require_int32_indexable(f"the Winograd buffer {name} of {variant}", shape)
    nbytes = 4 * sum(int(numpy.prod(shape)) for shape in shapes.values())
    if nbytes > _WINOGRAD_MAX_BYTES:
        raise ValueError(f"the Winograd buffers of {variant} {shapes} take {nbytes} bytes, more than "
                         f"_WINOGRAD_MAX_BYTES ({_WINOGRAD_MAX_BYTES})")


class _WinogradSize(NamedTuple):
    """A forward Winograd variant's F(m×m, 3×3): the output tile's side and its kernels' names in winograd.cu."""
    m: int
    kernel_prefix: str

    @property
    def points(self) -> int:
        """α² = (m + 2)²: the transformed tile's points, one product each."""
        return (self.m + 2) ** 2


_SIZES = {2: _WinogradSize(2, "winograd_"), 4: _WinogradSize(4, "winograd4x4_")}  # F(m×m, 3×3) by m


def _size_name(m: int) -> str:
    return f"Winograd F({m}x{m}, 3x3)"


class _WinogradPlan(NamedTuple):
    """A Winograd forward's kernels, buffer shapes and its transforms' grids and size arguments (numpy.int32s, in
    the kernels' order) for one ConvProblem, with the 32-bit checks on U, V and M passed."""
    kernels: tuple  # winograd.cu's filter, input and output transforms of this size
    u_shape: tuple  # (α², C, K)
    v_shape: tuple  # (α², C, T)
    m_shape: tuple  # (α², K, T)
    filter_launch: tuple  # (grid, size arguments)
    input_launch: tuple
    output_launch: tuple  # without act and slope


def _winograd_plan(problem: ConvProblem, m: int) -> _WinogradPlan:
    g, K = problem.g, problem.K
    size, variant = _SIZES[m], _size_name(m)
    TH, TW = cdiv(g.OH, size.m), cdiv(g.OW, size.m)  # m×m output tiles of an image
    T = g.N * TH * TW
    shapes = {"U": (size.points, g.C, K), "V": (size.points, g.C, T), "M": (size.points, K, T)}
    _require_winograd_buffers(shapes, variant)
    kernels = tuple(size.kernel_prefix + step + "_transform" for step in ("filter", "input", "output"))
    return _WinogradPlan(kernels, shapes["U"], shapes["V"], shapes["M"], _winograd_launch(g.C * K, g.C, K),
                         _winograd_launch(g.C * T, g.C, g.H, g.W, TH, TW, T, T, T, g.C * T, g.pad_top, g.pad_left),
                         _winograd_launch(K * T, K, g.OH, g.OW, TH, TW, T))


def _winograd_launch(items: int, *sizes) -> tuple:
    """(grid, size arguments as numpy.int32s) of a winograd.cu transform over `items` items."""
    return (cdiv(items, _WINOGRAD_THREADS),), tuple(numpy.int32(v) for v in sizes)


@dataclass(frozen=True)
class WinogradForward(Variant):
    """y by Winograd F(m×m, 3×3), m 2 or 4: filter and input transforms, the α² products M[ξ] = U[ξ]ᵀ·V[ξ] as one
    sliced GEMM (U read as the K × α²·C matrix Uᵀ, V as α²·C × T), the output transform with bias and activation.
    Offered for 3×3 stride-1 layers whose buffers fit (plan)."""
    m: int
    op = "conv2d_fwd"

    @property
    def algorithm(self) -> str:
        return _size_name(self.m)

    @property
    def name(self) -> str:
        return _size_name(self.m)

    def applies(self, problem: ConvProblem) -> bool:
        return _winograd_applies(problem.g) and fits(self, problem)

    def plan(self, problem: ConvProblem) -> _WinogradPlan:
        """ValueError where a buffer is past 32-bit indexing, or all of them past _WINOGRAD_MAX_BYTES."""
        return _winograd_plan(problem, self.m)

    def launch(self, problem: ConvProblem, x, w, b, act: int, slope: float):
        import cupy

        plan = planned(self, problem)  # the 32-bit checks, before any allocation
        K, T, points = problem.K, plan.v_shape[2], plan.v_shape[0]
        filter_kernel, input_kernel, output_kernel = (load_kernel("winograd", name) for name in plan.kernels)
        block = (_WINOGRAD_THREADS,)
        u = nan_filled(cupy, plan.u_shape)
        grid, sizes = plan.filter_launch
        filter_kernel(grid, block, (w, u) + sizes)
        v = nan_filled(cupy, plan.v_shape)
        grid, sizes = plan.input_launch
        input_kernel(grid, block, (x, v) + sizes)
        m = cuda_gemm_k_slices(u.reshape(-1, K).T, v.reshape(-1, T), points, nan_filled(cupy, plan.m_shape))
        y = nan_filled(cupy, _output_shape(problem.g, K))
        grid, sizes = plan.output_launch
        output_kernel(grid, block, (m, b, y) + sizes + (numpy.int32(act), numpy.float32(slope)))
        return y


_WINOGRAD_MIN_CHUNK = 64    # tiles: no chunk of the reduction is shorter (unless T is)
_WINOGRAD_CHUNK_ALIGN = 16  # chunks of whole 16-deep gemm slabs: float4-aligned, gemm.cu's interior path


def _winograd_chunks(T: int, wanted: int) -> tuple[int, int]:
    """(S, Tc): T tiles as S chunks of Tc, about `wanted` of them: Tc a multiple of _WINOGRAD_CHUNK_ALIGN, none
    under _WINOGRAD_MIN_CHUNK tiles (but the one chunk of a shorter T), none empty; the last padded to Tc."""
    chunks = max(1, min(wanted, T // _WINOGRAD_MIN_CHUNK))
    chunk = cdiv(cdiv(T, chunks), _WINOGRAD_CHUNK_ALIGN) * _WINOGRAD_CHUNK_ALIGN
    return cdiv(T, chunk), chunk


# The most tiles a chunk of F(4×4)'s backward-filter reduction holds. Its error grows with the chunk length: 1.7e-5
# for the 100×100 network's conv2 at N 128 in the one chunk of 8192 tiles its grid asks for; chunks of at most 1024
# keep every layer of winograd.cu's table at ≤ 6.5e-6 (the direct kernel's own reaches 6.2e-6 there).
F4X4_FILTER_MAX_CHUNK = 1024


class _WinogradFilterPlan(NamedTuple):
    """A Winograd backward-filter's kernels, buffer shapes and its transforms' grids and size arguments
    (numpy.int32s, in the kernels' order) for one ConvProblem and grid target, with the 32-bit and size checks passed."""
    kernels: tuple    # winograd.cu's dy, input and filter-gradient transforms of this size
    dy_shape: tuple   # (K, α², S·Tc)
    v_shape: tuple    # (C, α², S·Tc)
    p_shape: tuple    # (α²·S, K, C)
    dy_launch: tuple  # (grid, size arguments)
    input_launch: tuple
    filter_grad_launch: tuple


def _winograd_filter_plan(problem: ConvProblem, m: int, max_chunk: int, blocks_per_sm: int, sms: int) -> _WinogradFilterPlan:
    """Backward-filter by Winograd F(m×m, 3×3): the reduction over the T tiles in S chunks, enough
    that the sliced GEMM (α²·S slices of its default tile configuration's K × C tiles) gives each of sms SMs
    blocks_per_sm blocks, and none longer than max_chunk tiles (0: no bound); ValueError when a buffer is past 32-bit
    indexing, all of them past _WINOGRAD_MAX_BYTES, or the α²·S slices past the gemm grid's z extent (as y's)."""
    g, K = problem.g, problem.K
    size, variant = _SIZES[m], _size_name(m)
    TH, TW = cdiv(g.OH, size.m), cdiv(g.OW, size.m)  # m×m output tiles of an image
    T = g.N * TH * TW
    config = plan_gemm(K, g.C, size.points * T, sms).config
    gemm_tiles = cdiv(K, config.tile_m) * cdiv(g.C, config.tile_n)
    wanted = cdiv(blocks_per_sm * sms, size.points * gemm_tiles)
    S, chunk = _winograd_chunks(T, max(wanted, cdiv(T, max_chunk)) if max_chunk else wanted)
    T_padded = S * chunk
    if size.points * S > MAX_GRID_Y:
        raise ValueError(f"backward-filter {variant}'s {size.points}·{S} chunk products are more slices than one gemm "
                         f"launch holds ({MAX_GRID_Y})")
    shapes = {"DY": (K, size.points, T_padded), "V": (g.C, size.points, T_padded), "P": (size.points * S, K, g.C)}
    _require_winograd_buffers(shapes, f"backward-filter {variant}")
    kernels = tuple(size.kernel_prefix + step + "_transform" for step in ("dy", "input", "filter_grad"))
    return _WinogradFilterPlan(
        kernels, shapes["DY"], shapes["V"], shapes["P"],
        _winograd_launch(K * T_padded, K, g.OH, g.OW, TH, TW, T, T_padded),
        _winograd_launch(g.C * T_padded, g.C, g.H, g.W, TH, TW, T, T_padded, size.points * T_padded, T_padded,
                         g.pad_top, g.pad_left),
        _winograd_launch(K * g.C, K, g.C, S))


@dataclass(frozen=True)
class WinogradBackwardFilter(Variant):
    """dw by Winograd F(m×m, 3×3), m 2 or 4: dy and input transforms into (K | C, α², S·Tc), the α²·S chunk products
    P[ξ·S + s] = DY[:, ξ, chunk s] · V[:, ξ, chunk s]ᵀ as one sliced GEMM (DY read as the K × α²·S·Tc matrix A, V as
    the transposed B), the filter-gradient transform summing the chunks in order; the reduction split for
    blocks_per_sm blocks an SM in chunks of at most max_chunk tiles (0: no bound). Offered for 3×3 stride-1 layers
    whose buffers fit (plan)."""
    m: int
    blocks_per_sm: int
    max_chunk: int = 0
    op = "conv2d_bwd_filter"

    @property
    def algorithm(self) -> str:
        return _size_name(self.m)

    @property
    def name(self) -> str:
        return f"{_size_name(self.m)}, split to {self.blocks_per_sm} blocks an SM"

    def applies(self, problem: ConvProblem) -> bool:
        return _winograd_applies(problem.g) and fits(self, problem, device.sm_count())

    def plan(self, problem: ConvProblem, sms: int) -> _WinogradFilterPlan:
        """For a GPU of sms SMs; ValueError where a buffer is past 32-bit indexing, all of them past
        _WINOGRAD_MAX_BYTES, or the α²·S slices past the gemm grid's z extent."""
        return _winograd_filter_plan(problem, self.m, self.max_chunk, self.blocks_per_sm, sms)

    def launch(self, problem: ConvProblem, dy, x, w_shape):
        import cupy

        plan = planned(self, problem, device.sm_count())  # the checks, before any allocation
        K, C = problem.K, problem.g.C
        dy_kernel, input_kernel, filter_grad_kernel = (load_kernel("winograd", name) for name in plan.kernels)
        block = (_WINOGRAD_THREADS,)
        dy_points = nan_filled(cupy, plan.dy_shape)
        grid, sizes = plan.dy_launch
        dy_kernel(grid, block, (dy, dy_points) + sizes)
        v = nan_filled(cupy, plan.v_shape)
        grid, sizes = plan.input_launch
        input_kernel(grid, block, (x, v) + sizes)
        p = cuda_gemm_k_slices(dy_points.reshape(K, -1), v.reshape(C, -1).T, plan.p_shape[0],
                               nan_filled(cupy, plan.p_shape))
        dw = nan_filled(cupy, w_shape)
        grid, sizes = plan.filter_grad_launch
        filter_grad_kernel(grid, block, (p, dw) + sizes)
        return dw
