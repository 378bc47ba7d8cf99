"""The NumPy path's numba loops (cnn_gpu.ops.parallel): the im2col and col2im loops against NumPy's strided views and
tap-by-tap adds (the same bits), on random geometries with strides, dilations and pads; the max-pool loop against
naive window loops (NaN, -inf, signed zeros, float64, a channels_last layout); the thread count they run with (one,
or parallel_work's n, the caller's numba count left as it was); the same bits whatever that count."""
import numba
import numpy
import pytest

from cnn_gpu.ops.conv import _geometry, _im2col, _numpy_col2im, _numpy_conv2d_backward
from cnn_gpu.ops.parallel import parallel_work
from cnn_gpu.ops.pool import _numpy_max_pool2d, pool_geometry
from checks import threads_of_a_loop
from test_pool import naive_max_pool


def random_geometry(rng):
    while True:
        N, C = (int(v) for v in rng.integers(1, 4, 2))
        H, W = (int(v) for v in rng.integers(1, 12, 2))
        R, S = (int(v) for v in rng.integers(1, 4, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        padding = tuple(int(v) for v in rng.integers(0, 3, 2))
        x = numpy.zeros((N, C, H, W))
        try:
            return _geometry(x, numpy.zeros((2, C, R, S)), stride, padding, dilation)
        except ValueError:  # a dilated window larger than the padded input
            continue


def strided_windows(x, g):
    """(N, C, OH, OW, R, S): the windows as NumPy's strided views give them."""
    padded = numpy.pad(x, ((0, 0), (0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right)))
    view = numpy.lib.stride_tricks.sliding_window_view(padded, g.window_extent, axis=(2, 3))
    view = view[..., :: g.dilation_h, :: g.dilation_w]
    return view[:, :, : (g.OH - 1) * g.stride_h + 1 : g.stride_h, : (g.OW - 1) * g.stride_w + 1 : g.stride_w]


def tap_by_tap_col2im(dcols, g):
    """dx from dcols (C, R, S, N, OH, OW), one strided add per tap in (r, s) order on the padded input."""
    dx = numpy.zeros((g.C, g.N) + g.padded_hw, dtype=dcols.dtype)
    for r in range(g.R):
        for s in range(g.S):
            r0, s0 = r * g.dilation_h, s * g.dilation_w
            dx[:, :, r0 : r0 + (g.OH - 1) * g.stride_h + 1 : g.stride_h,
               s0 : s0 + (g.OW - 1) * g.stride_w + 1 : g.stride_w] += dcols[:, r, s]
    return dx[:, :, g.pad_top : g.pad_top + g.H, g.pad_left : g.pad_left + g.W].transpose(1, 0, 2, 3)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_im2col_and_col2im_loops_match_numpy_views_bit_for_bit(rng, dtype):
    for _ in range(150):
        g = random_geometry(rng)
        x = rng.standard_normal((g.N, g.C, g.H, g.W)).astype(dtype)
        windows = strided_windows(x, g)
        assert numpy.array_equal(_im2col(x, g, channel_major=False), windows.transpose(0, 1, 4, 5, 2, 3)), g
        assert numpy.array_equal(_im2col(x, g, channel_major=True), windows.transpose(1, 4, 5, 0, 2, 3)), g
        dcols = rng.standard_normal((g.C, g.R, g.S, g.N, g.OH, g.OW)).astype(dtype)
        dx = _numpy_col2im(dcols, g, dtype)
        assert dx.dtype == dtype and dx.flags.c_contiguous
        assert numpy.array_equal(dx, tap_by_tap_col2im(dcols, g)), g


def test_loops_run_on_one_thread_unless_told_and_leave_numbas_count():
    before = numba.get_num_threads()
    assert threads_of_a_loop() == {1}
    with parallel_work(numba.config.NUMBA_NUM_THREADS + 5):
        assert threads_of_a_loop() == {numba.config.NUMBA_NUM_THREADS}
        with parallel_work(1):
            assert threads_of_a_loop() == {1}
    assert threads_of_a_loop() == {1}
    assert numba.get_num_threads() == before


def test_conv_backward_bits_do_not_depend_on_the_loop_threads(rng):
    x = rng.standard_normal((6, 3, 13, 11)).astype(numpy.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(numpy.float32)
    g = _geometry(x, w, (1, 2), 1, 1)
    dy = rng.standard_normal((6, 4, g.OH, g.OW)).astype(numpy.float32)
    one = _numpy_conv2d_backward(dy, x, w, g, True, True)
    with parallel_work(numba.config.NUMBA_NUM_THREADS):
        many = _numpy_conv2d_backward(dy, x, w, g, True, True)
    for a, b in zip(one, many):
        assert numpy.array_equal(a, b)


def awkward_values(rng, shape, dtype, kind):
    x = rng.standard_normal(shape).astype(dtype)
    if kind == 1:
        x[rng.random(shape) < 0.3] = numpy.nan
    elif kind == 2:
        x[rng.random(shape) < 0.5] = -numpy.inf
    elif kind == 3:  # ties, and zeros of both signs
        x = numpy.round(x).astype(dtype)
        x[(x == 0) & (rng.random(shape) < 0.5)] = -0.0
    return x


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_max_pool_loop_matches_naive_windows(rng, dtype):
    for trial in range(120):
        N, C = (int(v) for v in rng.integers(1, 3, 2))
        H, W = (int(v) for v in rng.integers(2, 9, 2))
        R, S = (int(v) for v in rng.integers(1, 4, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        padding = (int(rng.integers(0, R // 2 + 1)), int(rng.integers(0, S // 2 + 1)))
        if R > H or S > W:
            continue
        x = awkward_values(rng, (N, H, W, C), dtype, trial % 4).transpose(0, 3, 1, 2)  # channels_last
        if trial % 2:
            x = numpy.ascontiguousarray(x)
        g = pool_geometry(x.shape, (R, S), stride, padding)
        y, indices = _numpy_max_pool2d(x, g)
        ref_y, ref_indices = naive_max_pool(x, (R, S), stride, padding)
        assert y.dtype == dtype and numpy.array_equal(indices, ref_indices), (g, trial)
        assert numpy.array_equal(y, ref_y.astype(dtype), equal_nan=True), (g, trial)
        assert numpy.array_equal(numpy.signbit(y), numpy.signbit(ref_y)), (g, trial)  # the first zero wins


def test_max_pool_bits_do_not_depend_on_the_loop_threads(rng):
    x = awkward_values(rng, (5, 7, 12, 13), numpy.float32, 3)
    g = pool_geometry(x.shape, 3, 2, 1, ceil_mode=True)
    one = _numpy_max_pool2d(x, g)
    with parallel_work(numba.config.NUMBA_NUM_THREADS):
        many = _numpy_max_pool2d(x, g)
    assert numpy.array_equal(one[0].view(numpy.int32), many[0].view(numpy.int32))
    assert numpy.array_equal(one[1], many[1])
