"""max_pool2d, avg_pool2d, sum_pool2d: forward (values and indices) against plain float64 loops,
backward against finite differences, CUDA against NumPy, tie / NaN / padding rules, determinism,
bad inputs, and torch.nn.functional where torch is installed."""
import math

import numpy
import pytest

from cnn_gpu import functional as F
from cnn_gpu import to_numpy
from cnn_gpu.ops import pool as pool_ops
from checks import compile_variant_without_spills, naive_axis, numeric_grad, pair, rel_error

# (x shape, kernel_size, stride, padding): odd sizes, non-square windows, strides 1-3, gaps, 'same'.
CASES = [
    ((1, 1, 1, 1), 1, None, 0),
    ((1, 2, 7, 9), 2, None, 0),
    ((2, 3, 7, 9), 3, 1, 1),
    ((1, 2, 8, 5), (2, 3), (1, 2), (1, 1)),
    ((1, 3, 6, 4), (1, 3), (2, 1), (0, 1)),
    ((2, 1, 9, 7), (3, 2), 3, "same"),
    ((1, 2, 5, 6), 2, 1, "same"),
    ((2, 2, 11, 13), 2, 3, 1),
    ((1, 1, 17, 31), 3, 2, 1),
    ((1, 1, 33, 65), 2, 2, "valid"),
]
AVERAGING_KINDS = ["sum", "avg", "avg_in_bounds"]  # avg_in_bounds: count_include_pad=False


def case_id(case):
    shape, k, s, p = case
    return f"{'x'.join(map(str, shape))}-k{k}-s{s}-p{p}".replace(" ", "")


def naive_windows(x_shape, kernel, stride, padding):
    """Yield (n, c, oh, ow, [(h, w) in-bounds elements of the window, row-major]) and the output shape."""
    N, C, H, W = x_shape
    R, S = pair(kernel)
    sh, sw = pair(kernel if stride is None else stride)
    ph, pw = pair(padding) if not isinstance(padding, str) else (padding, padding)
    top, OH = naive_axis(H, R, sh, ph)
    left, OW = naive_axis(W, S, sw, pw)

    def windows():
        for n in range(N):
            for c in range(C):
                for oh in range(OH):
                    for ow in range(OW):
                        cells = [(oh * sh - top + r, ow * sw - left + s) for r in range(R) for s in range(S)]
                        yield n, c, oh, ow, [(h, w) for h, w in cells if 0 <= h < H and 0 <= w < W]

    return windows(), (N, C, OH, OW)


def naive_max_pool(x, kernel, stride, padding):
    windows, out_shape = naive_windows(x.shape, kernel, stride, padding)
    y = numpy.empty(out_shape)
    idx = numpy.empty(out_shape, dtype=numpy.int64)
    W = x.shape[3]
    for n, c, oh, ow, cells in windows:
        best, best_at = None, None
        for h, w in cells:
            v = float(x[n, c, h, w])
            if best is None or v > best or (math.isnan(v) and not math.isnan(best)):
                best, best_at = v, h * W + w
        y[n, c, oh, ow], idx[n, c, oh, ow] = best, best_at
    return y, idx


def naive_averaging_pool(kind, x, kernel, stride, padding):
    windows, out_shape = naive_windows(x.shape, kernel, stride, padding)
    R, S = pair(kernel)
    y = numpy.empty(out_shape)
    for n, c, oh, ow, cells in windows:
        total = sum(float(x[n, c, h, w]) for h, w in cells)
        divisor = {"sum": 1, "avg": R * S, "avg_in_bounds": len(cells)}[kind]
        y[n, c, oh, ow] = total / divisor
    return y


def pool(kind, x, kernel, stride, padding):
    if kind == "max":
        return F.max_pool2d(x, kernel, stride, padding)[0]
    if kind == "sum":
        return F.sum_pool2d(x, kernel, stride, padding)
    return F.avg_pool2d(x, kernel, stride, padding, count_include_pad=(kind == "avg"))


def pool_backward(kind, dy, x, kernel, stride, padding):
    """dx for the given kind; max takes its indices from a forward on x."""
    if kind == "max":
        indices = F.max_pool2d(x, kernel, stride, padding)[1]
        return F.max_pool2d_backward(dy, indices, x.shape, kernel, stride, padding)
    if kind == "sum":
        return F.sum_pool2d_backward(dy, x.shape, kernel, stride, padding)
    return F.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, count_include_pad=(kind == "avg"))


def first_in_bounds_indices(x_shape, kernel, stride, padding):
    windows, out_shape = naive_windows(x_shape, kernel, stride, padding)
    idx = numpy.empty(out_shape, dtype=numpy.int64)
    for n, c, oh, ow, cells in windows:
        idx[n, c, oh, ow] = cells[0][0] * x_shape[3] + cells[0][1]
    return idx


def tie_free(rng, shape):
    """Distinct values 0.1 apart (finite differences never swap a maximum), positive and negative."""
    size = math.prod(shape)
    return (rng.permutation(size).reshape(shape) - size / 2) * 0.1


# ---- forward against the naive loops -------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_max_forward_matches_naive(backend, xp, rng, case):
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape).astype(numpy.float32)
    y, indices = F.max_pool2d(xp.asarray(x), kernel, stride, padding)
    ref_y, ref_indices = naive_max_pool(x, kernel, stride, padding)
    assert y.dtype == numpy.float32 and indices.dtype == numpy.int64
    assert numpy.array_equal(to_numpy(y), ref_y)
    assert numpy.array_equal(to_numpy(indices), ref_indices)


@pytest.mark.parametrize("kind", AVERAGING_KINDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_averaging_forward_matches_naive(backend, xp, rng, kind, case):
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape).astype(numpy.float32)
    y = pool(kind, xp.asarray(x), kernel, stride, padding)
    assert y.dtype == numpy.float32
    assert rel_error(y, naive_averaging_pool(kind, x, kernel, stride, padding)) < 1e-6


def test_float64_stays_float64(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    y, _ = F.max_pool2d(x, 3, 2, 1)
    assert y.dtype == numpy.float64
    assert F.avg_pool2d(x, 3, 2, 1, count_include_pad=False).dtype == numpy.float64
    assert F.sum_pool2d_backward(numpy.ones((1, 2, 3, 3)), x.shape, 3, 2, 1).dtype == numpy.float64


# ---- max-pool rules: ties, NaN, padding ----------------------------------------------------------
@pytest.mark.parametrize("stride, padding", [(2, 1), (1, "same"), (3, 0)])
def test_max_ties_pick_first_in_bounds_element(backend, xp, stride, padding):
    shape = (1, 2, 5, 7)
    y, indices = F.max_pool2d(xp.full(shape, 1.5, dtype=numpy.float32), 3, stride, padding)
    assert numpy.all(to_numpy(y) == 1.5)
    assert numpy.array_equal(to_numpy(indices), first_in_bounds_indices(shape, 3, stride, padding))


def test_max_nan_wins_and_first_nan_is_kept(backend, xp, rng):
    x = rng.standard_normal((1, 1, 2, 6)).astype(numpy.float32)
    x[0, 0, :, 0:2] = 100.0
    x[0, 0, 1, 1] = numpy.nan  # window 0: NaN after larger numbers still wins
    x[0, 0, 0, 3] = x[0, 0, 1, 2] = numpy.nan  # window 1: the row-major first NaN is (1, 2)
    y, indices = F.max_pool2d(xp.asarray(x), 2)
    y, indices = to_numpy(y), to_numpy(indices)
    assert numpy.isnan(y[0, 0, 0, :2]).all() and not numpy.isnan(y[0, 0, 0, 2])
    assert indices[0, 0, 0, 0] == 1 * 6 + 1 and indices[0, 0, 0, 1] == 0 * 6 + 3


def test_max_padding_counts_as_minus_infinity(backend, xp, rng):
    x = -(numpy.abs(rng.standard_normal((2, 3, 7, 6))) + 1).astype(numpy.float32)
    y, indices = F.max_pool2d(xp.asarray(x), 3, 2, 1)
    ref_y, ref_indices = naive_max_pool(x, 3, 2, 1)
    assert (to_numpy(y) < 0).all()
    assert numpy.array_equal(to_numpy(y), ref_y) and numpy.array_equal(to_numpy(indices), ref_indices)


def test_max_all_minus_infinity_points_at_first_in_bounds_element(backend, xp):
    shape = (1, 1, 5, 5)
    y, indices = F.max_pool2d(xp.full(shape, -numpy.inf, dtype=numpy.float32), 3, 2, 1)
    assert numpy.all(to_numpy(y) == -numpy.inf)
    assert numpy.array_equal(to_numpy(indices), first_in_bounds_indices(shape, 3, 2, 1))


# ---- backward ------------------------------------------------------------------------------------
BACKWARD_CASES = [
    ((2, 2, 5, 6), 3, 1, 1),
    ((1, 2, 6, 5), (2, 3), (1, 2), (1, 1)),
    ((2, 1, 7, 5), (3, 2), 2, "same"),
    ((1, 2, 7, 8), 2, 3, 1),
    ((2, 2, 4, 6), 2, None, 0),
]


@pytest.mark.parametrize("kind", ["max"] + AVERAGING_KINDS)
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=case_id)
def test_backward_finite_differences(rng, kind, case):
    shape, kernel, stride, padding = case
    x = tie_free(rng, shape)
    dy = rng.standard_normal(pool(kind, x, kernel, stride, padding).shape)
    dx = pool_backward(kind, dy, x, kernel, stride, padding)
    assert dx.dtype == numpy.float64 and dx.shape == x.shape
    numeric = numeric_grad(lambda v: pool(kind, v, kernel, stride, padding), x, dy)
    assert rel_error(dx, numeric) < 1e-7


def overlapping(kernel, stride):
    return any(s < k for k, s in zip(pair(kernel), pair(kernel if stride is None else stride)))


ODD_CASES = [
    ((3, 5, 17, 31), 2, None, 0),
    ((2, 3, 33, 65), 3, 2, 1),
    ((1, 4, 31, 33), (3, 2), 1, "same"),
    ((2, 2, 65, 31), 2, 3, 1),
    ((1, 1, 127, 129), (1, 3), (2, 3), (0, 1)),
]


@pytest.mark.parametrize("case", ODD_CASES, ids=case_id)
def test_max_matches_numpy(backend, xp, rng, case):
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape).astype(numpy.float32)
    ref_y, ref_indices = F.max_pool2d(x, kernel, stride, padding)
    dy = rng.standard_normal(ref_y.shape).astype(numpy.float32)
    ref_dx = F.max_pool2d_backward(dy, ref_indices, shape, kernel, stride, padding)
    y, indices = F.max_pool2d(xp.asarray(x), kernel, stride, padding)
    dx = F.max_pool2d_backward(xp.asarray(dy), indices, shape, kernel, stride, padding)
    assert numpy.array_equal(to_numpy(y), ref_y) and numpy.array_equal(to_numpy(indices), ref_indices)
    if overlapping(kernel, stride):
        assert rel_error(dx, ref_dx) < 1e-6
    else:  # each input element takes at most one dy: pure routing
        assert numpy.array_equal(to_numpy(dx), ref_dx)


@pytest.mark.parametrize("variant", ["generic", "fixed"])
@pytest.mark.parametrize("case", CASES + ODD_CASES, ids=case_id)
def test_max_forward_variants_match_numpy(backend, xp, rng, force, case, variant):
    """Each CUDA forward variant (the generic kernel, the one compiled for the window size) gives the NumPy
    path's values and indices, ties, NaN and padding included."""
    shape, kernel, stride, padding = case
    if backend == "cuda":
        if variant not in pool_ops.max_forward_variants(pool_ops.pool_geometry(shape, kernel, stride, padding)):
            pytest.skip(f"the {variant} forward does not apply to this window")
        force({"maxpool2d_fwd": variant})
    x = numpy.round(rng.standard_normal(shape) * 2).astype(numpy.float32) / 2  # ties
    x.reshape(-1)[rng.integers(0, x.size, max(1, x.size // 9))] = numpy.nan
    ref_y, ref_indices = F.max_pool2d(x, kernel, stride, padding)
    y, indices = F.max_pool2d(xp.asarray(x), kernel, stride, padding)
    assert numpy.array_equal(to_numpy(y), ref_y, equal_nan=True)
    assert numpy.array_equal(to_numpy(indices), ref_indices)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("window", [(3, 3), (4, 4)])
def test_fixed_window_forward_compiles_without_spills(arch, window):
    """maxpool2d_fwd_argmax_fixed exists only with FIXED_WINDOW_R/S defined, so the family compile check
    misses it: the commonest window and the largest (FIXED_WINDOW_MAX elements), compiled as run time does."""
    report = compile_variant_without_spills("pool", arch, {"FIXED_WINDOW_R": window[0], "FIXED_WINDOW_S": window[1]})
    assert "maxpool2d_fwd_argmax_fixed" in report


# Disjoint windows (stride >= kernel_size): the CUDA backward has three variants, each window writing its
# cell of dx ("cells"), each dx element reading its windows ("gather"), or each warp staging a piece of
# dx in shared memory ("staged"), all tested here. Strides equal to and past the window, padding, sizes
# no stride divides (trailing rows / columns in the last cell), gaps between windows, a single window
# along an axis; for the staged variant, planes of many pieces, pieces within one row (W > 1024) and pieces
# across rows of 98 (the 100×100 network's pool1), rows narrower than a float4.
DISJOINT_CASES = [
    ((2, 3, 17, 19), 2, 2, 0),
    ((2, 3, 17, 20), 3, 3, 0),
    ((1, 2, 16, 17), 3, 3, 1),
    ((2, 2, 13, 11), 2, 3, 0),
    ((1, 2, 13, 11), 2, 3, 1),
    ((1, 1, 9, 10), (2, 3), (3, 4), (1, 1)),
    ((1, 2, 7, 7), 1, 3, 0),
    ((2, 1, 11, 9), 3, 3, "same"),
    ((1, 1, 5, 5), 2, 7, 0),
    ((3, 5, 33, 31), 3, (3, 5), 0),
    ((1, 3, 29, 98), 3, 3, 0),
    ((1, 1, 3, 2049), 2, 2, 0),
    ((3, 1, 31, 3), (3, 1), (3, 2), 0),
]


@pytest.mark.parametrize("variant", ["cells", "gather", "staged"])
@pytest.mark.parametrize("case", DISJOINT_CASES, ids=case_id)
def test_max_backward_disjoint_windows_matches_numpy_bits(backend, xp, rng, force, case, variant):
    force({"maxpool2d_bwd": variant})
    shape, kernel, stride, padding = case
    assert not overlapping(kernel, stride)
    x = rng.standard_normal(shape).astype(numpy.float32)
    ref_y, ref_indices = F.max_pool2d(x, kernel, stride, padding)
    dy = rng.standard_normal(ref_y.shape).astype(numpy.float32)
    dy.reshape(-1)[::7] = -0.0  # routed as +0 (0 + dy), as the NumPy path's scatter into zeros
    ref_dx = F.max_pool2d_backward(dy, ref_indices, shape, kernel, stride, padding)
    dx = F.max_pool2d_backward(xp.asarray(dy), xp.asarray(ref_indices), shape, kernel, stride, padding)
    assert numpy.array_equal(to_numpy(dx).view(numpy.uint32), ref_dx.view(numpy.uint32))


# Overlapping windows: the gather (the default) and the staged variant, whose adds go in another fixed order.
# Strides 1 and 2, padding, windows wider than tall, rows wider than a staged piece, 3x3/2 of 113 (the
# ResNet stem's geometry on an odd size).
OVERLAPPING_CASES = [
    ((2, 3, 7, 9), 3, 1, 1),
    ((1, 2, 8, 5), (2, 3), (1, 2), (1, 1)),
    ((1, 4, 31, 33), (3, 2), 1, "same"),
    ((1, 3, 33, 113), 3, 2, 1),
    ((1, 1, 4, 2500), 3, 2, 1),
    ((1, 2, 5, 300), (2, 5), (1, 3), (1, 2)),
]


@pytest.mark.parametrize("variant", ["gather", "staged"])
@pytest.mark.parametrize("case", OVERLAPPING_CASES, ids=case_id)
def test_max_backward_overlapping_windows_matches_numpy(backend, xp, rng, force, case, variant):
    force({"maxpool2d_bwd": variant})
    shape, kernel, stride, padding = case
    assert overlapping(kernel, stride)
    x = rng.standard_normal(shape).astype(numpy.float32)
    x = numpy.round(x * 2) / 2  # ties: windows that overlap share maxima, so some dx elements take several dy
    ref_y, ref_indices = F.max_pool2d(x, kernel, stride, padding)
    dy = rng.standard_normal(ref_y.shape).astype(numpy.float32)
    ref_dx = F.max_pool2d_backward(dy, ref_indices, shape, kernel, stride, padding)
    dx = F.max_pool2d_backward(xp.asarray(dy), xp.asarray(ref_indices), shape, kernel, stride, padding)
    assert rel_error(dx, ref_dx) < 1e-6


@pytest.mark.parametrize("variant", ["cells", "gather", "staged"])
def test_max_backward_variants_are_reproducible(backend, xp, rng, force, variant):
    """Each variant, run twice on the same inputs, gives the same bits (overlapping windows: sums in a fixed order)."""
    force({"maxpool2d_bwd": variant})
    cases = [DISJOINT_CASES[-3]] + ([OVERLAPPING_CASES[3]] if variant != "cells" else [])
    for shape, kernel, stride, padding in cases:
        x = numpy.round(rng.standard_normal(shape) * 2).astype(numpy.float32) / 2
        y, indices = F.max_pool2d(x, kernel, stride, padding)
        dy = xp.asarray(rng.standard_normal(y.shape).astype(numpy.float32))
        first, second = (to_numpy(F.max_pool2d_backward(dy, xp.asarray(indices), shape, kernel, stride, padding))
                         for _ in range(2))
        assert numpy.array_equal(first.view(numpy.uint32), second.view(numpy.uint32))


def test_pool_geometry_is_remembered_per_exact_arguments():
    """pool_geometry's cache: another shape or window gets its own geometry, the same as a fresh computation;
    an argument equal to a remembered one but of another type (bool, float, NumPy integer, list) is still
    checked as it would be uncached: refused, or (a NumPy integer, a list) accepted with the int's or pair's geometry."""
    fresh = pool_ops._pool_geometry
    for args in [((1, 2, 9, 9), 2, 2, 0), ((1, 2, 9, 7), 2, 2, 0), ((3, 2, 9, 9), 2, 2, 0), ((1, 2, 9, 9), 3, 2, 1),
                 ((1, 2, 9, 9), (2, 3), None, "same"), ((1, 2, 9, 9), (2, 3), (1, 2), (1, 1))]:
        assert pool_ops.pool_geometry(*args) == fresh(*args, "x")
        assert pool_ops.pool_geometry(*args) == fresh(*args, "x")  # remembered now
    for stride in (True, 2.0, numpy.bool_(True)):
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            pool_ops.pool_geometry((1, 2, 9, 9), 2, stride, 0)
    assert pool_ops.pool_geometry((1, 2, 9, 9), numpy.int64(2), numpy.int32(2), 0) == fresh((1, 2, 9, 9), 2, 2, 0, "x")
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair of ints"):
        pool_ops.pool_geometry((1, 2, 9, 9), (2, True), None, 0)
    assert pool_ops.pool_geometry((1, 2, 9, 9), [2, 3], None, "same") == fresh((1, 2, 9, 9), (2, 3), None, "same", "x")


def test_max_pool_variants_by_geometry():
    """The cells variant only where windows are disjoint, the fixed-window forward only up to FIXED_WINDOW_MAX
    elements; the default (first) variants stay those of before the tuned candidates."""
    def geometry(kernel, stride, padding):
        return pool_ops.pool_geometry((1, 1, 9, 9), kernel, stride, padding)

    assert pool_ops.max_backward_variants(geometry(3, 3, 0)) == ("cells", "gather", "staged")
    assert pool_ops.max_backward_variants(geometry(3, 2, 1)) == ("gather", "staged")
    assert pool_ops.max_forward_variants(geometry(4, 2, 0)) == ("generic", "fixed")
    assert pool_ops.max_forward_variants(geometry(5, 2, 0)) == ("generic",)


@pytest.mark.parametrize("case", [ODD_CASES[1], DISJOINT_CASES[-1]], ids=case_id)
def test_launches_split_by_planes_match_one_launch(backend, xp, rng, monkeypatch, case):
    """A tensor past 2**31 elements takes several plane-aligned launches: forced here with a small limit."""
    from cnn_gpu.ops import pool as pool_module

    shape, kernel, stride, padding = case
    g = pool_module.pool_geometry(shape, kernel, stride, padding)
    monkeypatch.setattr(pool_module, "INT32_MAX", 2 * max(g.H * g.W, g.OH * g.OW) + 1)  # 2 planes a launch
    pool_module._launches.cache_clear()
    try:
        assert len(pool_module._launches(g, g.OH * g.OW)) > 1
        x = rng.standard_normal(shape).astype(numpy.float32)
        ref_y, ref_indices = F.max_pool2d(x, kernel, stride, padding)
        y, indices = F.max_pool2d(xp.asarray(x), kernel, stride, padding)
        assert numpy.array_equal(to_numpy(y), ref_y) and numpy.array_equal(to_numpy(indices), ref_indices)
        dy = rng.standard_normal(ref_y.shape).astype(numpy.float32)
        for kind in ("max", "avg"):
            ref_dx = pool_backward(kind, dy, x, kernel, stride, padding)
            assert rel_error(pool_backward(kind, xp.asarray(dy), xp.asarray(x), kernel, stride, padding), ref_dx) < 1e-6
    finally:
        pool_module._launches.cache_clear()


@pytest.mark.parametrize("case", [DISJOINT_CASES[-3], OVERLAPPING_CASES[3]], ids=case_id)
def test_max_backward_variants_split_by_planes_match_numpy(backend, xp, rng, monkeypatch, force, case):
    """Every backward variant over plane-aligned launches (forced with a small limit; the staged variant's pieces
    then start at another alignment in each launch)."""
    from cnn_gpu.ops import pool as pool_module

    shape, kernel, stride, padding = case
    g = pool_module.pool_geometry(shape, kernel, stride, padding)
    monkeypatch.setattr(pool_module, "INT32_MAX", 2 * max(g.H * g.W, g.OH * g.OW) + 1)  # 2 planes a launch
    pool_module._launches.cache_clear()
    try:
        x = rng.standard_normal(shape).astype(numpy.float32)
        ref_y, ref_indices = F.max_pool2d(x, kernel, stride, padding)
        dy = rng.standard_normal(ref_y.shape).astype(numpy.float32)
        ref_dx = F.max_pool2d_backward(dy, ref_indices, shape, kernel, stride, padding)
        for variant in pool_module.max_backward_variants(g):
            force({"maxpool2d_bwd": variant})
            dx = F.max_pool2d_backward(xp.asarray(dy), xp.asarray(ref_indices), shape, kernel, stride, padding)
            assert rel_error(dx, ref_dx) < 1e-6, variant
    finally:
        pool_module._launches.cache_clear()


def test_launch_plan_covers_every_plane_in_int32_pieces():
    """Host side of the CUDA path: 1024 x 1024 planes of 98 x 98 (10**10 elements) in plane-aligned
    launches of fewer than 2**31 elements of each array, every plane once."""
    from cnn_gpu.ops import pool as pool_module

    g = pool_module.pool_geometry((1024, 1024, 98, 98), 3, 3, 0)
    for items_per_plane in (g.OH * g.OW, g.H * g.W):
        launches = pool_module._launches(g, items_per_plane)
        assert len(launches) > 1 and launches[0][0] == 0
        for (first, planes, grid, items), following in zip(launches, launches[1:] + ((g.N * g.C, 0, None, None),)):
            assert following[0] == first + planes
            assert planes * g.H * g.W < 2**31 and planes * g.OH * g.OW < 2**31
            assert items == planes * items_per_plane and grid == ((items + 255) // 256,)


@pytest.mark.parametrize("kind", AVERAGING_KINDS)
@pytest.mark.parametrize("case", ODD_CASES, ids=case_id)
def test_averaging_matches_numpy(backend, xp, rng, kind, case):
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape).astype(numpy.float32)
    ref_y = pool(kind, x, kernel, stride, padding)
    dy = rng.standard_normal(ref_y.shape).astype(numpy.float32)
    ref_dx = pool_backward(kind, dy, x, kernel, stride, padding)
    assert rel_error(pool(kind, xp.asarray(x), kernel, stride, padding), ref_y) < 1e-6
    assert rel_error(pool_backward(kind, xp.asarray(dy), xp.asarray(x), kernel, stride, padding), ref_dx) < 1e-6


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_overlapping_backward_is_deterministic(backend, xp, rng, kind):
    x = xp.asarray(rng.standard_normal((4, 8, 33, 31)).astype(numpy.float32))
    dy = xp.asarray(rng.standard_normal((4, 8, 33, 31)).astype(numpy.float32))
    first = to_numpy(pool_backward(kind, dy, x, 3, 1, 1))
    second = to_numpy(pool_backward(kind, dy, x, 3, 1, 1))
    assert numpy.array_equal(first.view(numpy.uint32), second.view(numpy.uint32))


def test_non_contiguous_input_accepted(backend, xp, rng):
    x = rng.standard_normal((2, 3, 9, 14)).astype(numpy.float32)
    view = xp.asarray(x)[:, :, :, ::2]
    y, indices = F.max_pool2d(view, 2, 1, 1)
    ref_y, ref_indices = naive_max_pool(x[:, :, :, ::2], 2, 1, 1)
    assert numpy.array_equal(to_numpy(y), ref_y) and numpy.array_equal(to_numpy(indices), ref_indices)
    dy = rng.standard_normal((2, 3, 10, 16)).astype(numpy.float32)
    dx = F.sum_pool2d_backward(xp.asarray(dy)[:, :, :, ::2], view.shape, 2, 1, 1)
    assert rel_error(dx, F.sum_pool2d_backward(dy[:, :, :, ::2].copy(), view.shape, 2, 1, 1)) == 0


# ---- against PyTorch -----------------------------------------------------------------------------
TORCH_CASES = [case for case in CASES + ODD_CASES if not isinstance(case[3], str)]


@pytest.mark.parametrize("kind", ["max"] + AVERAGING_KINDS)
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_matches_torch(backend, xp, rng, kind, case):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    shape, kernel, stride, padding = case
    x = rng.standard_normal(shape).astype(numpy.float32)
    tx = torch.tensor(x, requires_grad=True)
    torch_stride = kernel if stride is None else stride
    if kind == "max":
        ty, t_indices = tf.max_pool2d(tx, kernel, torch_stride, padding, return_indices=True)
    else:
        divisor = 1 if kind == "sum" else None
        ty = tf.avg_pool2d(tx, kernel, torch_stride, padding, count_include_pad=(kind == "avg"), divisor_override=divisor)
    dy = rng.standard_normal(tuple(ty.shape)).astype(numpy.float32)
    ty.backward(torch.tensor(dy))
    y = pool(kind, xp.asarray(x), kernel, stride, padding)
    dx = pool_backward(kind, xp.asarray(dy), xp.asarray(x), kernel, stride, padding)
    assert rel_error(y, ty.detach().numpy()) < 1e-6
    assert rel_error(dx, tx.grad.numpy()) < 1e-6
    if kind == "max":
        assert numpy.array_equal(to_numpy(F.max_pool2d(xp.asarray(x), kernel, stride, padding)[1]), t_indices.numpy())


# ---- bad inputs: one test per rule ---------------------------------------------------------------
X = numpy.ones((1, 2, 6, 6), numpy.float32)
DY = numpy.ones((1, 2, 3, 3), numpy.float32)
INDICES = numpy.zeros((1, 2, 3, 3), numpy.int64)


def test_rejects_x_not_4d():
    with pytest.raises(ValueError, match=r"x must be 4-D .* got shape \(2, 6, 6\)"):
        F.max_pool2d(X[0], 2)


@pytest.mark.parametrize("kernel", [0, (2, -1)])
def test_rejects_non_positive_kernel_size(kernel):
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        F.avg_pool2d(X, kernel)


def test_rejects_non_positive_stride():
    with pytest.raises(ValueError, match="stride must be >= 1"):
        F.sum_pool2d(X, 2, stride=0)


def test_rejects_negative_padding():
    with pytest.raises(ValueError, match="padding must be >= 0"):
        F.max_pool2d(X, 3, padding=-1)


def test_rejects_padding_over_half_the_window():
    with pytest.raises(ValueError, match=r"padding \(0, 2\) must be at most half of kernel_size \(3, 3\)"):
        F.max_pool2d(X, 3, padding=(0, 2))


def test_rejects_unknown_padding_mode():
    with pytest.raises(ValueError, match="padding must be an int, a pair, 'valid' or 'same'"):
        F.avg_pool2d(X, 2, padding="full")


def test_rejects_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"kernel_size \(8, 8\) is larger than the padded input \(6, 6\)"):
        F.max_pool2d(X, 8)


def test_rejects_integer_dtype():
    with pytest.raises(TypeError, match="x must be float"):
        F.max_pool2d(numpy.ones((1, 1, 4, 4), numpy.int32), 2)


def test_backward_rejects_integer_dy():
    with pytest.raises(TypeError, match="dy must be float"):
        F.avg_pool2d_backward(DY.astype(numpy.int64), X.shape, 2)


def test_backward_rejects_dy_shape():
    with pytest.raises(ValueError, match=r"dy shape \(1, 2, 2, 3\) must equal the pooling output shape \(1, 2, 3, 3\)"):
        F.sum_pool2d_backward(DY[:, :, :2], X.shape, 2)


def test_backward_rejects_indices_shape():
    with pytest.raises(ValueError, match=r"indices shape \(1, 2, 3, 2\) must equal dy shape \(1, 2, 3, 3\)"):
        F.max_pool2d_backward(DY, INDICES[..., :2], X.shape, 2)


def test_backward_rejects_indices_dtype():
    with pytest.raises(TypeError, match="indices must be int64"):
        F.max_pool2d_backward(DY, INDICES.astype(numpy.int32), X.shape, 2)


def naive_routing(dy, indices, x_shape, kernel, stride):
    """dx by a loop over the windows: each dy added at its index when the index names an element of its
    window (no padding here), dropped otherwise."""
    dx = numpy.zeros(x_shape)
    (R, S), (sh, sw) = pair(kernel), pair(stride)
    H, W = x_shape[2:]
    for n, c, oh, ow in numpy.ndindex(*dy.shape):
        at = int(indices[n, c, oh, ow])
        h, w = divmod(at, W)
        if 0 <= at < H * W and oh * sh <= h < oh * sh + R and ow * sw <= w < ow * sw + S:
            dx[n, c, h, w] += dy[n, c, oh, ow]
    return dx


# Windows 2x2 at stride 3 (each window's cell is 3x3, larger than the window) and 3x3 at stride 2 (overlapping).
@pytest.mark.parametrize("variant", ["cells", "gather", "staged"])
@pytest.mark.parametrize("kernel, stride", [(2, 3), (3, 2)])
def test_max_backward_indices_outside_their_window_route_nowhere(backend, xp, rng, force, kernel, stride, variant):
    if stride < kernel and variant == "cells":
        pytest.skip("the cells variant serves disjoint windows only")
    if backend == "numpy" and variant != "cells":
        pytest.skip("the NumPy path has one way")
    force({"maxpool2d_bwd": variant})
    shape = (2, 3, 9, 9)
    x = rng.standard_normal(shape).astype(numpy.float32)
    _, indices = F.max_pool2d(x, kernel, stride)
    dy = rng.standard_normal(indices.shape).astype(numpy.float32)
    indices[0, 0, 0, 0] = -1                 # before the plane
    indices[0, 0, 0, 1] = 81                 # past the plane
    indices[0, 1, 1, 1] = 0                  # in the plane, in another window's place
    indices[1, 2, 0, 0] = 2 * 9 + 2          # (2, 2): in the first window's cell, outside a 2x2 window
    indices[1, 2, 1, 1] = int(indices[1, 2, 1, 0])  # the neighbouring window's winner
    dx = F.max_pool2d_backward(xp.asarray(dy), xp.asarray(indices), shape, kernel, stride)
    assert rel_error(to_numpy(dx), naive_routing(dy, indices, shape, kernel, stride)) < 1e-6


@pytest.mark.parametrize("x_shape", [(2, 6, 6), (1, 0, 6, 6), (1, 2, 6.0, 6), None])
def test_backward_rejects_bad_x_shape(x_shape):
    with pytest.raises(ValueError, match="x_shape must be 4 positive ints"):
        F.max_pool2d_backward(DY, INDICES, x_shape, 2)


def test_rejects_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.max_pool2d_backward(xp.asarray(DY), INDICES, X.shape, 2)
