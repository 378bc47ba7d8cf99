"""batch_norm and batch_norm_backward: forward (training and inference, running-stat update, 2-D and
4-D) against plain float64 loops, backward against finite differences, CUDA on odd shapes, split
reductions (uneven chunks, C = 1, HW = 1), the variance of large-offset data, reproducible bits, bad
inputs, and PyTorch where it is installed."""
import math

import numpy
import pytest

import cnn_gpu
from cnn_gpu import functional as F
from cnn_gpu.ops import batchnorm
from checks import error_relative_to, numeric_grad, rel_error

# (N, C) and (N, C, H, W) with channels 1, 3, 17 and H, W in 1..31; every one has N*H*W >= 3.
SHAPES = [(3, 1), (17, 3), (129, 17), (3, 1, 31, 1), (1, 3, 17, 31), (3, 17, 5, 7), (3, 3, 1, 1)]
EPS = 1e-5


def naive_channel_stats(x):
    """Per channel: (mean, biased variance, unbiased variance) by plain float64 loops."""
    rows = x.astype(numpy.float64).reshape(x.shape[0], x.shape[1], -1)
    stats = []
    for c in range(x.shape[1]):
        values = [float(v) for v in rows[:, c, :].reshape(-1)]
        m = len(values)
        mean = sum(values) / m
        squares = sum((v - mean) ** 2 for v in values)
        stats.append((mean, squares / m, squares / (m - 1) if m > 1 else math.nan))
    return stats


def naive_normalise(x, mean, var, gamma, beta, eps=EPS):
    rows = x.astype(numpy.float64).reshape(x.shape[0], x.shape[1], -1)
    y = numpy.empty(rows.shape)
    for n in range(rows.shape[0]):
        for c in range(rows.shape[1]):
            for s in range(rows.shape[2]):
                y[n, c, s] = (rows[n, c, s] - mean[c]) / math.sqrt(var[c] + eps) * gamma[c] + beta[c]
    return y.reshape(x.shape)


def make_inputs(rng, shape):
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(numpy.float32)  # mean away from 0: centring matters
    gamma = rng.uniform(0.5, 2, c).astype(numpy.float32)
    beta = rng.standard_normal(c).astype(numpy.float32)
    running_mean = rng.standard_normal(c).astype(numpy.float32)
    running_var = rng.uniform(0.5, 2, c).astype(numpy.float32)
    return x, gamma, beta, running_mean, running_var


def bits(a):
    return cnn_gpu.to_numpy(a).tobytes()


# ---- forward ---------------------------------------------------------------------------------------
def check_training_forward(xp, rng, shape):
    x, gamma, beta, running_mean, running_var = make_inputs(rng, shape)
    rm, rv = xp.asarray(running_mean.copy()), xp.asarray(running_var.copy())
    y, saved_mean, saved_invstd = F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv,
                                               training=True, momentum=0.3, eps=EPS)
    mean, var, unbiased = (numpy.array(column) for column in zip(*naive_channel_stats(x)))
    assert y.shape == x.shape and y.dtype == numpy.float32
    assert rel_error(y, naive_normalise(x, mean, var, gamma, beta)) < 1e-5
    assert rel_error(saved_mean, mean) < 1e-5
    assert rel_error(saved_invstd, 1 / numpy.sqrt(var + EPS)) < 1e-5
    # updated in place; 0.7·r + 0.3·m can cancel (r and m of either sign), so measured against its terms' size
    assert error_relative_to(rm, 0.7 * running_mean + 0.3 * mean, 0.7 * abs(running_mean) + 0.3 * abs(mean)) < 1e-5
    assert rel_error(rv, 0.7 * running_var + 0.3 * unbiased) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_matches_naive(backend, xp, rng, shape):
    check_training_forward(xp, rng, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_inference_forward_matches_naive(backend, xp, rng, shape):
    x, gamma, beta, running_mean, running_var = make_inputs(rng, shape)
    rm, rv = xp.asarray(running_mean.copy()), xp.asarray(running_var.copy())
    y, saved_mean, saved_invstd = F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv,
                                               training=False, eps=EPS)
    assert rel_error(y, naive_normalise(x, running_mean, running_var, gamma, beta)) < 1e-5
    assert rel_error(saved_mean, running_mean) == 0
    assert rel_error(saved_invstd, 1 / numpy.sqrt(running_var.astype(numpy.float64) + EPS)) < 1e-6
    assert bits(rm) == running_mean.tobytes() and bits(rv) == running_var.tobytes()  # untouched


@pytest.mark.parametrize("shape", [(17, 3), (3, 3, 5, 7)])
def test_forward_without_affine_or_running_stats(backend, xp, rng, shape):
    x = make_inputs(rng, shape)[0]
    y, _, _ = F.batch_norm(xp.asarray(x))
    mean, var, _ = (numpy.array(column) for column in zip(*naive_channel_stats(x)))
    ones, zeros = numpy.ones(shape[1]), numpy.zeros(shape[1])
    assert rel_error(y, naive_normalise(x, mean, var, ones, zeros)) < 1e-5


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_bounds(backend, xp, rng, momentum):
    x, gamma, beta, running_mean, running_var = make_inputs(rng, (17, 3))
    rm, rv = xp.asarray(running_mean.copy()), xp.asarray(running_var.copy())
    F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv, momentum=momentum)
    mean, _, unbiased = (numpy.array(column) for column in zip(*naive_channel_stats(x)))
    assert rel_error(rm, mean if momentum else running_mean) < 1e-5
    assert rel_error(rv, unbiased if momentum else running_var) < 1e-5


def test_strided_running_stats_are_updated_in_place(backend, xp, rng):
    x, gamma, beta, _, _ = make_inputs(rng, (17, 3))
    storage = xp.asarray(rng.uniform(0.5, 2, (2, 6)).astype(numpy.float32))
    before = cnn_gpu.to_numpy(storage).copy()
    F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), storage[0, ::2], storage[1, ::2], momentum=1.0)
    mean, _, unbiased = (numpy.array(column) for column in zip(*naive_channel_stats(x)))
    after = cnn_gpu.to_numpy(storage)
    assert rel_error(after[0, ::2], mean) < 1e-5 and rel_error(after[1, ::2], unbiased) < 1e-5
    assert (after[:, 1::2] == before[:, 1::2]).all()


# ---- backward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 5)])
def test_backward_finite_differences(rng, shape):
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    dy = rng.standard_normal(shape)
    _, saved_mean, saved_invstd = F.batch_norm(x, gamma, beta)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd)
    # central differences at h = 1e-6 in float64 are good to ~1e-9; 1e-5 leaves room for an unlucky
    # draw (a nearly-zero dgamma entry) and still catches any wrong term, which is off by O(1)
    assert rel_error(dx, numeric_grad(lambda v: F.batch_norm(v, gamma, beta)[0], x, dy)) < 1e-5
    assert rel_error(dgamma, numeric_grad(lambda g: F.batch_norm(x, g, beta)[0], gamma, dy)) < 1e-5
    assert rel_error(dbeta, numeric_grad(lambda b: F.batch_norm(x, gamma, b)[0], beta, dy)) < 1e-5


def check_backward(xp, rng, shape):
    x, gamma, beta, _, _ = make_inputs(rng, shape)
    dy = rng.standard_normal(shape).astype(numpy.float32)
    _, saved_mean, saved_invstd = F.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta))
    ours = F.batch_norm_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(gamma), saved_mean, saved_invstd)
    x64, gamma64, dy64 = x.astype(numpy.float64), gamma.astype(numpy.float64), dy.astype(numpy.float64)
    _, mean64, invstd64 = F.batch_norm(x64, gamma64, beta.astype(numpy.float64))
    ref = F.batch_norm_backward(dy64, x64, gamma64, mean64, invstd64)
    assert all(a.dtype == numpy.float32 for a in ours)
    # dx = γ·invstd·(dy − mean(dy) − x̂·mean(dy·x̂)) cancels where the three terms nearly agree (few values a
    # channel): measured against their size, as a float32 evaluation's rounding scales with it.
    # dgamma = Σ dy·x̂ and dbeta = Σ dy per channel are sums of random-signed terms that can cancel to
    # nearly zero, so their error is measured against the size of the terms, Σ|dy·x̂| and Σ|dy|,
    # which is what a float32 reduction's rounding scales with.
    axes = (0,) + tuple(range(2, len(shape)))
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    xhat = (x64 - mean64.reshape(per_channel)) * invstd64.reshape(per_channel)
    dx_terms = (numpy.abs(gamma64) * invstd64).reshape(per_channel) * (
        numpy.abs(dy64) + numpy.abs(dy64.mean(axis=axes, keepdims=True))
        + numpy.abs(xhat * (dy64 * xhat).mean(axis=axes, keepdims=True)))
    assert error_relative_to(ours[0], ref[0], dx_terms) < 1e-5, "dx"
    for name, a, b, terms in (("dgamma", ours[1], ref[1], numpy.abs(dy64 * xhat)), ("dbeta", ours[2], ref[2], numpy.abs(dy64))):
        scale = numpy.linalg.norm(terms.sum(axis=axes))
        assert numpy.linalg.norm(cnn_gpu.to_numpy(a).astype(numpy.float64) - b) / scale < 1e-5, name


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_float64(backend, xp, rng, shape):
    check_backward(xp, rng, shape)


def test_backward_without_gamma(backend, xp, rng):
    x, _, _, _, _ = make_inputs(rng, (17, 3))
    dy = rng.standard_normal(x.shape).astype(numpy.float32)
    _, saved_mean, saved_invstd = F.batch_norm(xp.asarray(x))
    ours = F.batch_norm_backward(xp.asarray(dy), xp.asarray(x), None, saved_mean, saved_invstd)
    ref = F.batch_norm_backward(dy, x, numpy.ones(3, numpy.float32), *F.batch_norm(x)[1:])
    for a, b in zip(ours, ref):
        assert rel_error(a, b) < 1e-5


# ---- split reductions (CUDA: statistics and parameter gradients over grid (C, splits)) -------------
# Lowering MIN_CHUNK splits small channels into several chunks on the GPU, the last one shorter
# (M = N*H*W is no multiple of the chunk); on NumPy it changes nothing.
SPLIT_CASES = [((5, 1, 17, 31), 1000),  # C = 1, M = 2635: 2 chunks of 1318 and 1317
               ((1001, 3), 256),        # 2-D (HW = 1), M = 1001: 3 chunks, 334 / 334 / 333
               ((7, 5, 9, 11), 100),    # M = 693: 6 chunks of 116, the last 113
               ((3, 2, 1, 1), 1)]       # M = 3: one value a chunk


@pytest.mark.parametrize("shape, min_chunk", SPLIT_CASES)
def test_split_reductions_match_references(backend, xp, rng, monkeypatch, shape, min_chunk):
    monkeypatch.setattr(batchnorm, "MIN_CHUNK", min_chunk)
    check_training_forward(xp, rng, shape)
    check_backward(xp, rng, shape)


def test_split_plan_covers_every_value_once():
    """Chunks fill [0, M) with no empty split, shrink the last one, respect min_chunk, and aim at
    BLOCKS_PER_SM blocks an SM; M below two chunks stays in one split."""
    for channels, m, sms, min_chunk in [(64, 401408, 132, 16384), (1, 2635, 132, 1000), (3, 1001, 132, 256),
                                        (512, 1229312, 132, 16384), (128, 2048, 132, 16384), (2, 3, 108, 1)]:
        splits, chunk = batchnorm._split_plan(channels, m, sms, min_chunk)
        assert (splits - 1) * chunk < m <= splits * chunk
        assert splits == 1 or chunk >= min_chunk
        assert splits <= max(1, -(-batchnorm.BLOCKS_PER_SM * sms // channels))
    assert batchnorm._split_plan(128, 2048, 132, 16384) == (1, 2048)
    assert batchnorm._split_plan(64, 401408, 132, 16384) == (9, 44601)  # 4 * 132 blocks / 64 channels


def test_launch_arguments_are_remembered_per_shape_and_split_floor():
    """The CUDA path's per-shape launch arguments: each shape its own sizes, a too-big x refused on every
    call (a failed check is not remembered), and the split floor part of the reductions' key (the tests
    above lower MIN_CHUNK to force splits on shapes already seen with the default)."""
    assert batchnorm._kernel_sizes((2, 3, 4, 5)) == (2, 3, 20)
    assert batchnorm._kernel_sizes((2, 3)) == (2, 3, 1)
    for _ in range(2):
        with pytest.raises(ValueError, match=r"x of shape \(65536, 65536, 1, 1\) .* 32-bit indexing"):
            batchnorm._kernel_sizes((65536, 65536, 1, 1))
    assert batchnorm._reduction_launch(5, 1, 527, 132, 16384)[0] == 1
    assert batchnorm._reduction_launch(5, 1, 527, 132, 1000)[0] == 2


def test_variance_of_large_offset_data(backend, xp, rng):
    """x = 1000 + unit noise over M = 66495 values a channel (4 uneven chunks on the GPU): the
    variance needs centring (a float32 sum of squares would cancel ~1e6 against ~1e6). saved_mean
    and saved_invstd are held to float32 accuracy; y only to 5e-4, because a float32 mean of 66495
    values near 1000 is off by an ulp or two of 1000 (6e-5 each), a shift of that size in unit-variance x̂."""
    shape = (65, 2, 33, 31)
    x = (1000 + rng.standard_normal(shape)).astype(numpy.float32)
    rm, rv = xp.zeros(2, numpy.float32), xp.ones(2, numpy.float32)
    y, saved_mean, saved_invstd = F.batch_norm(xp.asarray(x), None, None, rm, rv, momentum=1.0, eps=EPS)
    mean, var, unbiased = (numpy.array(column) for column in zip(*naive_channel_stats(x)))
    assert rel_error(saved_mean, mean) < 1e-6
    assert rel_error(saved_invstd, 1 / numpy.sqrt(var + EPS)) < 1e-5
    assert rel_error(rm, mean) < 1e-6 and rel_error(rv, unbiased) < 1e-5
    assert rel_error(y, naive_normalise(x, mean, var, numpy.ones(2), numpy.zeros(2))) < 5e-4


@pytest.mark.parametrize("min_chunk", [batchnorm.MIN_CHUNK, 500])  # one split; 4 uneven ones on the GPU
def test_forward_and_backward_are_bitwise_reproducible(backend, xp, rng, monkeypatch, min_chunk):
    monkeypatch.setattr(batchnorm, "MIN_CHUNK", min_chunk)
    x, gamma, beta, running_mean, running_var = (xp.asarray(a) for a in make_inputs(rng, (33, 17, 7, 9)))
    dy = xp.asarray(rng.standard_normal(x.shape).astype(numpy.float32))
    runs = []
    for _ in range(2):
        rm, rv = running_mean.copy(), running_var.copy()
        y, saved_mean, saved_invstd = F.batch_norm(x, gamma, beta, rm, rv)
        grads = F.batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd)
        runs.append([bits(a) for a in (y, saved_mean, saved_invstd, rm, rv, *grads)])
    assert runs[0] == runs[1]


# ---- bad inputs ------------------------------------------------------------------------------------
def ones(*shape):
    return numpy.ones(shape, numpy.float32)


def x_and_vectors():
    return numpy.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(numpy.float32), ones(3)


def test_rejects_3d_x():
    with pytest.raises(ValueError, match=r"x must be 2-D \(N, C\) or 4-D \(N, C, H, W\), got shape \(4, 3, 2\)"):
        F.batch_norm(ones(4, 3, 2))


def test_rejects_zero_channels():
    with pytest.raises(ValueError, match="x must have at least one channel"):
        F.batch_norm(ones(4, 0))


@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_rejects_per_channel_shape(name):
    x, v = x_and_vectors()
    args = {"gamma": v, "beta": v, "running_mean": v.copy(), "running_var": v.copy(), name: ones(4)}
    with pytest.raises(ValueError, match=rf"{name} shape \(4,\) must be \(C,\) = \(3,\)"):
        F.batch_norm(x, **args)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, math.nan])
def test_rejects_momentum_outside_unit_interval(momentum):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        F.batch_norm(x_and_vectors()[0], momentum=momentum)


@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_rejects_non_positive_eps(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        F.batch_norm(x_and_vectors()[0], eps=eps)


def test_inference_requires_running_stats():
    with pytest.raises(ValueError, match="running_mean and running_var are required when training=False"):
        F.batch_norm(x_and_vectors()[0], training=False)


def test_running_stats_come_together():
    x, v = x_and_vectors()
    with pytest.raises(ValueError, match="running_mean and running_var must be given together"):
        F.batch_norm(x, running_mean=v)


def test_training_needs_two_values_per_channel():
    with pytest.raises(ValueError, match="x must have more than one value per channel"):
        F.batch_norm(ones(1, 3, 1, 1))


def test_backward_needs_two_values_per_channel():
    v = ones(3)
    with pytest.raises(ValueError, match="x must have more than one value per channel"):
        F.batch_norm_backward(ones(1, 3), ones(1, 3), v, v, v)


def test_rejects_integer_x():
    with pytest.raises(TypeError, match="x must be float"):
        F.batch_norm(numpy.ones((4, 3), numpy.int64))


def test_rejects_dtype_mismatch():
    x, _ = x_and_vectors()
    with pytest.raises(TypeError, match="x is float32, gamma is float64"):
        F.batch_norm(x, numpy.ones(3))


def test_backward_rejects_dy_shape():
    x, v = x_and_vectors()
    with pytest.raises(ValueError, match=r"dy shape \(4, 3, 2, 1\) must equal x shape \(4, 3, 2, 2\)"):
        F.batch_norm_backward(ones(4, 3, 2, 1), x, v, v, v)


def test_backward_rejects_saved_stat_shape():
    x, v = x_and_vectors()
    with pytest.raises(ValueError, match=r"saved_invstd shape \(2,\) must be \(C,\) = \(3,\)"):
        F.batch_norm_backward(x, x, v, v, ones(2))


def test_backward_requires_saved_stats():
    x, v = x_and_vectors()
    with pytest.raises(ValueError, match="saved_mean and saved_invstd"):
        F.batch_norm_backward(x, x, v, None, v)


def test_rejects_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    x, v = x_and_vectors()
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.batch_norm(xp.asarray(x), v)
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.batch_norm_backward(xp.asarray(x), x, v, v, v)


# ---- PyTorch, where installed ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(17, 3), (3, 5, 4, 6)])
def test_matches_torch(rng, shape):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    running_mean, running_var = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    dy = rng.standard_normal(shape)

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    trm, trv = torch.tensor(running_mean), torch.tensor(running_var)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=0.2, eps=EPS)
    ty.backward(torch.tensor(dy))

    rm, rv = running_mean.copy(), running_var.copy()
    y, saved_mean, saved_invstd = F.batch_norm(x, gamma, beta, rm, rv, training=True, momentum=0.2, eps=EPS)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd)
    assert rel_error(y, ty.detach().numpy()) < 1e-12
    assert rel_error(rm, trm.numpy()) < 1e-12 and rel_error(rv, trv.numpy()) < 1e-12
    assert rel_error(dx, tx.grad.numpy()) < 1e-10
    assert rel_error(dgamma, tg.grad.numpy()) < 1e-10 and rel_error(dbeta, tb.grad.numpy()) < 1e-10

    y_eval, _, _ = F.batch_norm(x, gamma, beta, rm, rv, training=False, eps=EPS)
    ty_eval = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, torch.tensor(gamma), torch.tensor(beta),
                                             training=False, eps=EPS)
    assert rel_error(y_eval, ty_eval.numpy()) < 1e-12
