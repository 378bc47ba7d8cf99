"""conv2d's forward for few filters (kernels/conv2d_direct.cu's conv2d_fwd_few_filters, the FewFiltersForward variants,
unsplit and split over channels): which layers get it (only when unverified variants are asked for) and the tile each
gets (staging, weights and accumulators within the kernel's register budget, tiles covering the output), the kernel's
constants and parameters as cnn_gpu/ops/conv/direct.py launches them, every variant of the layers below through NVRTC
with no spill; on a GPU, forced through cnn_gpu.cuda.autotune.forced, the forward against NumPy in float64 on odd
shapes (every activation, with and without bias, split and not), bit for bit run to run, and backward-data of 1- and
3-channel layers as a forward conv (BackwardDataAsForward). The NumPy reference of those shapes
is itself checked against a plain float64 loop."""
import json
import math
import re

import numpy
import pytest

from cnn_gpu import functional as F
from cnn_gpu import to_numpy
from cnn_gpu.cuda.loader import KERNEL_DIR
from cnn_gpu.cuda import device, variants
from cnn_gpu.ops.conv import (DEFAULT_TILE, BackwardDataAsForward, FewFiltersForward, ImplicitGemmForward, as_forward_geometry,
                              conv_problem, direct)
from cnn_gpu.ops.geometry import window_geometry
from checks import compile_variant_without_spills, naive_conv2d, rel_error

ACTIVATIONS = [None, "relu", "leaky_relu", "sigmoid", "tanh"]


def few_filters_problem(x_shape, K, window, stride, padding):
    return conv_problem(window_geometry(x_shape, window, stride, padding), K)


def is_few_filters(variant):
    return isinstance(variant, FewFiltersForward)


# (x shape, K, window, stride, padding) run on the GPU: K 1, 2, 3, 8; C 1, 3, 17, 64; 1×1, 3×3, 5×5, 3×5 windows;
# strides 1 and 2; padding 0, 1, 2, 'same', 'full' (R − 1); H, W odd, from one pixel and images smaller than a tile
# (4-column strips and U-row bands cut short) to one 261 wide (3 tiles of 88 columns) and one 127 tall; N 1 and 3.
CUDA_CASES = [
    ((1, 1, 1, 1), 1, (1, 1), 1, 0),
    ((3, 3, 5, 7), 2, (3, 3), 1, 1),
    ((1, 17, 31, 33), 1, (3, 3), 1, "same"),
    ((3, 64, 17, 13), 3, (3, 5), 1, (1, 2)),
    ((1, 3, 9, 131), 8, (3, 3), 2, 1),
    ((3, 17, 7, 261), 1, (3, 5), 1, "same"),
    ((3, 1, 33, 31), 3, (3, 3), 2, "same"),
    ((1, 64, 65, 9), 8, (1, 1), 1, 0),
    ((3, 3, 127, 3), 2, (5, 5), 1, "same"),
    ((1, 64, 15, 15), 1, (5, 5), 1, 4),
]


def case_id(case):
    x_shape, K, window, stride, padding = case
    return f"x{'x'.join(map(str, x_shape))}-K{K}-w{window[0]}x{window[1]}-s{stride}-p{padding}".replace(" ", "")


def case_inputs(rng, case, bias=True):
    x_shape, K, window, _, _ = case
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((K, x_shape[1]) + window)
    return x, w, rng.standard_normal(K) if bias else None


@pytest.mark.parametrize("case", [c for c in CUDA_CASES if math.prod(c[0]) <= 4000], ids=case_id)
def test_numpy_reference_matches_the_definition(rng, case):
    _, K, window, stride, padding = case
    x, w, b = case_inputs(rng, case)
    g = window_geometry(x.shape, window, stride, padding)
    ref = naive_conv2d(x, w, b, (g.stride_h, g.stride_w), (g.pad_top, g.pad_bottom, g.pad_left, g.pad_right))
    assert rel_error(F.conv2d(x, w, b, stride, padding), ref) < 1e-12


# ---- which layers get the candidate, and their tiles --------------------------------------------------
@pytest.mark.parametrize("K, window, stride, offered", [
    (1, (3, 3), 1, True), (2, (5, 5), 1, True), (3, (3, 3), 2, True), (8, (3, 3), 1, True), (8, (1, 1), 1, True),
    (1, (7, 7), 1, True), (9, (3, 3), 1, False), (16, (1, 1), 1, False),
    (3, (5, 5), 1, False),    # 75 weights a channel: past the 72 a thread holds
    (1, (3, 11), 2, False)])  # a row of 3·2 + 11 = 17 values under a thread's 4 windows: past 16
def test_few_filters_is_a_candidate_for_few_filters_only(monkeypatch, K, window, stride, offered):
    monkeypatch.setattr(device, "sm_count", lambda: 132)  # the split variants are sized for the device
    monkeypatch.delenv(variants.UNVERIFIED_VARIABLE, raising=False)
    problem = few_filters_problem((2, 5, 33, 35), K, window, stride, 1)
    candidates = variants.applicable("conv2d_fwd", problem)
    assert candidates[0] == ImplicitGemmForward(DEFAULT_TILE)  # what CNN_GPU_AUTOTUNE=0 runs: never FewFiltersForward
    assert (FewFiltersForward() in candidates) == offered
    assert len({json.dumps(c.name) for c in candidates}) == len(candidates)  # the tuner's cache tells them apart
    # not yet run on a GPU: the autotuner offers it only when asked for
    assert not FewFiltersForward().verified and FewFiltersForward() not in variants.offered("conv2d_fwd", problem)
    monkeypatch.setenv(variants.UNVERIFIED_VARIABLE, "1")
    assert (FewFiltersForward() in variants.offered("conv2d_fwd", problem)) == offered


# (x shape, K, window, stride, padding, split offered): a grid of 1 block (1 image, 1 tile) against 64 channels, seed
# 001's backward-data at N 32 (32 blocks) and N 1024; 3 channels (fewer than two chunks of 4).
@pytest.mark.parametrize("x_shape, K, window, padding, split", [
    ((1, 64, 9, 9), 1, (3, 3), 1, True), ((32, 32, 24, 24), 1, (5, 5), 4, True),
    ((1024, 32, 24, 24), 1, (5, 5), 4, False), ((1, 3, 9, 9), 1, (3, 3), 1, False)])
def test_few_filters_splits_where_its_grid_leaves_sms_idle(monkeypatch, x_shape, K, window, padding, split):
    monkeypatch.setattr(device, "sm_count", lambda: 132)
    problem = few_filters_problem(x_shape, K, window, 1, padding)
    plans = [v for v in variants.applicable("conv2d_fwd", problem) if is_few_filters(v) and v.blocks_per_sm]
    assert bool(plans) == split
    for plan in plans:
        few = plan.kernel_plan(problem)
        chunk = int(few.args[-1])
        assert few.splits > 1 and few.grid[1] == few.splits
        assert (few.splits - 1) * chunk < x_shape[1] <= few.splits * chunk  # no empty split, no channel missed
        assert chunk >= direct._FEW_FILTERS_MIN_CHUNK
    assert len({p.kernel_plan(problem).splits for p in plans}) == len(plans)  # one per distinct split


def test_few_filters_tiles_of_the_example_first_layers_backward_data():
    """Backward-data as the forward of dy: the 100×100 network's conv1 (N 128, 512 → 1 filter, 98² → 100², pads 2): 25 × 5
    threads of 4 rows × 4 columns, tiles of 20 × 100 (5 an image, no padded output), 18 loads a thread and channel;
    the MNIST network's conv1 (N 1024, 32 → 1, 24² → 28², pads 4): 7 × 7 threads, one 28 × 28 tile an image, 2 warps."""
    net100 = as_forward_geometry(window_geometry((128, 1, 100, 100), (3, 3), 1, 0), 512)
    tile = FewFiltersForward().tile(conv_problem(net100, 1))
    assert tile == (25, 5, 4) and tile.threads == 128 and tile.loads(net100) == 18
    plan = FewFiltersForward().kernel_plan(conv_problem(net100, 1))
    assert plan.grid == (128 * 5, 1) and plan.block == (128,)
    assert dict(plan.defines) == {"FEWK_K": 1, "FEWK_R": 3, "FEWK_S": 3, "FEWK_SH": 1, "FEWK_SW": 1, "FEWK_BX": 25,
                                  "FEWK_BY": 5, "FEWK_U": 4}
    mnist = as_forward_geometry(window_geometry((1024, 1, 28, 28), (5, 5), 1, 0), 32)
    tile = FewFiltersForward().tile(conv_problem(mnist, 1))
    assert tile == (7, 7, 4) and tile.threads == 64
    assert FewFiltersForward().kernel_plan(conv_problem(mnist, 1)).grid == (1024, 1)


# Odd and extreme layers: one pixel; one-column and one-row outputs; wide and tall images; every K; strides 1-3 (3 on
# rows only: at 3 × 3 a thread's 4 outputs would stage 36 x values); the largest windows offered.
@pytest.mark.parametrize("x_shape, K, window, stride, padding", [
    ((1, 1, 1, 1), 1, (1, 1), 1, 0), ((2, 3, 1, 1000), 1, (1, 3), 1, (0, 1)), ((2, 3, 1000, 1), 2, (3, 1), 1, (1, 0)),
    ((1, 2, 7, 4097), 3, (3, 3), 1, 1), ((1, 2, 513, 17), 4, (3, 3), 2, 1), ((1, 2, 64, 64), 5, (3, 3), (3, 1), 1),
    ((1, 2, 33, 33), 8, (3, 3), (1, 2), "same"), ((1, 2, 30, 30), 1, (7, 7), 1, 3), ((1, 2, 30, 30), 2, (5, 5), 2, 2),
    ((1, 2, 30, 30), 6, (3, 3), 1, 0), ((1, 2, 100, 100), 7, (1, 1), 2, 0), ((1, 2, 9, 130), 1, (3, 9), 1, 0)])
def test_few_filters_tiles_cover_the_output_within_the_kernel_budget(x_shape, K, window, stride, padding):
    g = window_geometry(x_shape, window, stride, padding)
    tile = FewFiltersForward().tile(conv_problem(g, K))
    assert tile is not None
    assert tile.threads <= direct._FEW_FILTERS_MAX_THREADS and tile.loads(g) <= direct._FEW_FILTERS_MAX_LOADS
    assert tile.u * direct._FEW_FILTERS_STRIP * K <= direct._FEW_FILTERS_MAX_ACCUMULATORS
    plan = FewFiltersForward().kernel_plan(conv_problem(g, K))
    tiles_w, tiles_h = int(plan.args[8]), int(plan.args[9])
    th, tw = tile.by * tile.u, tile.bx * direct._FEW_FILTERS_STRIP
    assert (tiles_h - 1) * th < g.OH <= tiles_h * th and (tiles_w - 1) * tw < g.OW <= tiles_w * tw  # none empty
    assert plan.grid == (g.N * tiles_h * tiles_w, 1) and plan.splits == 1 and int(plan.args[-1]) == g.C


def test_few_filters_plan_refuses_what_the_kernel_cannot_take():
    problem = few_filters_problem((1, 2, 9, 9), 9, (3, 3), 1, 1)
    with pytest.raises(ValueError, match="K = 9"):
        FewFiltersForward().kernel_plan(problem)


def test_few_filters_arguments_are_the_kernels_parameters_in_order():
    """The plan's scalars, then act and slope, are conv2d_fwd_few_filters's parameters after its 4 pointers."""
    source = (KERNEL_DIR / "conv2d_direct.cu").read_text()
    signature = re.search(r"conv2d_fwd_few_filters\(([^)]*)\)", source).group(1)
    names = [p.split()[-1] for p in signature.split(",")]
    assert names[:4] == ["x", "w", "b", "y"]
    assert names[4:] == ["N", "C", "H", "W", "OH", "OW", "pt", "pl", "tiles_w", "tiles_h", "chunk", "act", "slope"]
    g = window_geometry((3, 5, 17, 19), (3, 3), 1, (1, 2))
    plan = FewFiltersForward().kernel_plan(conv_problem(g, 2))
    tile = FewFiltersForward().tile(conv_problem(g, 2))
    assert [int(v) for v in plan.args] == [3, 5, 17, 19, g.OH, g.OW, 1, 2, math.ceil(g.OW / (4 * tile.bx)),
                                           math.ceil(g.OH / (tile.u * tile.by)), 5]
    assert all(v.dtype == numpy.int32 for v in plan.args)


# Compiled per layer: the 100×100 and the MNIST networks' backward-data, an RGB layer's (3 filters, U 2), 8 filters (U 1), 4 at
# stride 2, a 1×1 head, a 3×5 window over a wide image, 7×7, a one-column image.
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("x_shape, K, window, stride, padding", [
    ((128, 512, 98, 98), 1, (3, 3), 1, 2), ((1024, 32, 24, 24), 1, (5, 5), 1, 4), ((8, 64, 32, 32), 3, (3, 3), 1, 1),
    ((8, 64, 32, 32), 8, (3, 3), 1, 1), ((8, 64, 64, 64), 4, (3, 3), 2, 1), ((8, 64, 32, 32), 1, (1, 1), 1, 0),
    ((2, 17, 7, 261), 2, (3, 5), 1, "same"), ((2, 4, 30, 30), 1, (7, 7), 1, 3), ((3, 3, 127, 3), 2, (5, 5), 1, "same")],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_few_filters_variants_compile_without_spills(x_shape, K, window, stride, padding, arch):
    plan = FewFiltersForward().kernel_plan(few_filters_problem(x_shape, K, window, stride, padding))
    report = compile_variant_without_spills("conv2d_direct", arch, dict(plan.defines))
    assert "conv2d_fwd_few_filters" in report


# ---- the CUDA path, forced --------------------------------------------------------------------------
def pin_forward(force, variant, ran=None):
    """conv2d's forward runs `variant` (asserted offered; appended to `ran`), backward-data as a forward conv (a
    ValueError where it does not apply), everything else its default."""
    def forward(key, candidates):
        assert variant in candidates, (key, variant)
        if ran is not None:
            ran.append(variant)
        return variant

    force({"conv2d_fwd": forward, "conv2d_bwd_data": BackwardDataAsForward().name})


def few_filters_variants(problem):
    """FewFiltersForward and its channel splits, where they apply on this device."""
    return [v for v in variants.applicable("conv2d_fwd", problem) if is_few_filters(v)]


@pytest.mark.parametrize("case", CUDA_CASES, ids=case_id)
def test_few_filters_matches_numpy_float64(backend, xp, rng, force, case):
    if backend != "cuda":
        pytest.skip("FewFiltersForward is a CUDA-path variant")
    x_shape, K, window, stride, padding = case
    index = CUDA_CASES.index(case)
    activation, bias = ACTIVATIONS[index % len(ACTIVATIONS)], index % 3 != 2
    x, w, b = case_inputs(rng, case, bias)
    ref = F.conv2d(x, w, b, stride, padding, activation, 0.1)
    args = [xp.asarray(a.astype(numpy.float32)) if a is not None else None for a in (x, w, b)]
    found = few_filters_variants(few_filters_problem(x_shape, K, window, stride, padding))
    assert FewFiltersForward() in found, case
    for variant in found:
        pin_forward(force, variant)
        y = F.conv2d(*args, stride, padding, activation, 0.1)
        assert y.dtype == numpy.float32 and y.shape == ref.shape
        assert rel_error(y, ref) < 1e-5, variant


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_few_filters_epilogue_matches_numpy_float64(backend, xp, rng, force, activation, bias):
    """Every activation, with and without bias, unsplit (the kernel's epilogue) and split (the sum pass's); 64 channels
    of one 9×9 image: one block, split where the device has SMs to spare."""
    if backend != "cuda":
        pytest.skip("FewFiltersForward is a CUDA-path variant")
    case = ((1, 64, 9, 9), 3, (3, 3), 1, 1)
    x, w, b = case_inputs(rng, case, bias)
    ref = F.conv2d(x, w, b, 1, 1, activation, 0.2)
    found = few_filters_variants(few_filters_problem(*case))
    assert any(v.blocks_per_sm for v in found), found
    for variant in found:
        pin_forward(force, variant)
        y = F.conv2d(*(xp.asarray(a.astype(numpy.float32)) if a is not None else None for a in (x, w, b)), 1, 1,
                     activation, 0.2)
        assert rel_error(y, ref) < 1e-5, variant


def test_few_filters_float4_and_scalar_stores(backend, xp, rng, force):
    """OW = 16 takes float4 stores, OW = 15 the guarded scalar ones, each in an image two tiles tall; x 4 bytes past a
    16-byte boundary (its loads are scalar)."""
    if backend != "cuda":
        pytest.skip("FewFiltersForward is a CUDA-path variant")
    for width in (16, 15):
        x = rng.standard_normal(2 * 3 * 41 * width + 1).astype(numpy.float32)
        x_misaligned = xp.asarray(x)[1:].reshape(2, 3, 41, width)
        w = rng.standard_normal((2, 3, 3, 3)).astype(numpy.float32)
        ref = F.conv2d(x[1:].reshape(2, 3, 41, width).astype(numpy.float64), w.astype(numpy.float64), None, 1, 1)
        pin_forward(force, FewFiltersForward())
        assert rel_error(F.conv2d(x_misaligned, xp.asarray(w), None, 1, 1), ref) < 1e-5, width


def test_few_filters_is_bitwise_reproducible(backend, xp, rng, force):
    if backend != "cuda":
        pytest.skip("FewFiltersForward is a CUDA-path variant")
    case = ((2, 64, 33, 31), 1, (3, 3), 1, "same")
    x, w, b = (xp.asarray(a.astype(numpy.float32)) for a in case_inputs(rng, case))
    for variant in few_filters_variants(few_filters_problem(*case)):
        pin_forward(force, variant)
        first, second = (to_numpy(F.conv2d(x, w, b, 1, "same", "relu")) for _ in range(2))
        assert first.tobytes() == second.tobytes(), variant


# Backward-data of 1- and 3-channel layers (stride 1, pads narrower than the window): dx is the forward of dy with the
# filters flipped, 1 or 3 filters over the layer's K channels: the MNIST and the 100×100 networks' conv1 (smaller N and image),
# an RGB 3×3 layer with padding 1, an RGB 3×5 'same' layer.
BACKWARD_DATA_CASES = [
    ((3, 1, 28, 28), (32, 1, 5, 5), 0),
    ((2, 1, 33, 31), (64, 1, 3, 3), 0),
    ((2, 3, 17, 19), (16, 3, 3, 3), 1),
    ((1, 3, 9, 7), (5, 3, 3, 5), "same"),
]


@pytest.mark.parametrize("x_shape, w_shape, padding", BACKWARD_DATA_CASES)
def test_backward_data_of_first_layers_through_few_filters(backend, xp, rng, force, x_shape, w_shape, padding):
    if backend != "cuda":
        pytest.skip("BackwardDataAsForward and FewFiltersForward are CUDA-path variants")
    g = window_geometry(x_shape, w_shape[2:], 1, padding)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dy = rng.standard_normal((x_shape[0], w_shape[0], g.OH, g.OW))
    dx_ref, _, _ = F.conv2d_backward(dy, x, w, 1, padding, compute_dw=False)
    args = [xp.asarray(a.astype(numpy.float32)) for a in (dy, x, w)]
    found = few_filters_variants(conv_problem(as_forward_geometry(g, w_shape[0]), x_shape[1]))
    assert FewFiltersForward() in found
    for variant in found:
        ran = []
        pin_forward(force, variant, ran)
        dx, dw, _ = F.conv2d_backward(*args, 1, padding, compute_dw=False)
        assert ran == [variant] and dw is None and dx.shape == x_shape
        assert rel_error(dx, dx_ref) < 1e-5, variant
