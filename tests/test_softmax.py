"""softmax, log_softmax and the fused losses (softmax cross-entropy, sigmoid binary cross-entropy, mean
squared error): forward against plain float64 loops, gradients against finite differences, CUDA on
odd shapes, ±1e4 logits, reproducible loss bits, bad inputs, and PyTorch where it is installed."""
import math

import numpy
import pytest

import cnn_gpu
from cnn_gpu import functional as F
from cnn_gpu.backend import is_cuda_array
from cnn_gpu.ops.softmax import mean_squared_error
from checks import error_relative_to, numeric_grad, rel_error


# ---- naive float64 references --------------------------------------------------------------------
def naive_softmax(x, log=False):
    rows = x.astype(numpy.float64).reshape(-1, x.shape[-1])
    out = numpy.empty_like(rows)
    for r, row in enumerate(rows):
        m = max(row)
        s = sum(math.exp(v - m) for v in row)
        for j, v in enumerate(row):
            out[r, j] = (v - m) - math.log(s) if log else math.exp(v - m) / s
    return out.reshape(x.shape)


def naive_cross_entropy(logits, labels):
    n, k = logits.shape
    loss, grad = 0.0, numpy.empty((n, k))
    for r in range(n):
        row = [float(v) for v in logits[r]]
        m = max(row)
        s = sum(math.exp(v - m) for v in row)
        loss += math.log(s) - (row[labels[r]] - m)
        for j in range(k):
            grad[r, j] = (math.exp(row[j] - m) / s - (1.0 if j == labels[r] else 0.0)) / n
    return loss / n, grad


def naive_sigmoid_bce(z, t):
    zs, ts = z.astype(numpy.float64).reshape(-1), t.astype(numpy.float64).reshape(-1)
    loss, grad = 0.0, numpy.empty(zs.size)
    for i, (v, target) in enumerate(zip(zs, ts)):
        loss += max(v, 0.0) - v * target + math.log1p(math.exp(-abs(v)))
        sig = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
        grad[i] = (sig - target) / zs.size
    return loss / zs.size, grad.reshape(z.shape)


def naive_mse(p, t):
    ps, ts = p.astype(numpy.float64).reshape(-1), t.astype(numpy.float64).reshape(-1)
    loss, grad = 0.0, numpy.empty(ps.size)
    for i, (a, b) in enumerate(zip(ps, ts)):
        loss += (a - b) ** 2
        grad[i] = 2 * (a - b) / ps.size
    return loss / ps.size, grad.reshape(p.shape)


def assert_loss_on_backend(loss, backend):
    assert loss.shape == () and loss.dtype == numpy.float32
    assert is_cuda_array(loss) == (backend == "cuda")  # no trip to the host


def bits(a):
    return cnn_gpu.to_numpy(a).tobytes()


# ---- softmax / log_softmax -----------------------------------------------------------------------
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(1,), (3, 1), (17, 10), (2, 3, 1000), (129, 3)])
def test_softmax_matches_naive(backend, xp, rng, shape, log):
    x = (rng.standard_normal(shape) * 3).astype(numpy.float32)
    y = (F.log_softmax if log else F.softmax)(xp.asarray(x))
    assert y.shape == x.shape and y.dtype == numpy.float32
    assert rel_error(y, naive_softmax(x, log)) < 1e-5


def test_softmax_non_contiguous_input(backend, xp, rng):
    x = rng.standard_normal((6, 10)).astype(numpy.float32)
    assert rel_error(F.softmax(xp.asarray(x)[:, ::2]), naive_softmax(x[:, ::2])) < 1e-5


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_large_logits_stay_finite(backend, xp, rng, log):
    x = (rng.choice([-1e4, 1e4], size=(17, 10)) + rng.standard_normal((17, 10))).astype(numpy.float32)
    y = (F.log_softmax if log else F.softmax)(xp.asarray(x))
    assert numpy.isfinite(cnn_gpu.to_numpy(y)).all()
    assert rel_error(y, naive_softmax(x, log)) < 1e-5


def test_softmax_nan_spoils_only_its_row(backend, xp, rng):
    x = rng.standard_normal((3, 40)).astype(numpy.float32)
    x[1, 33] = numpy.nan
    y = cnn_gpu.to_numpy(F.softmax(xp.asarray(x)))
    assert numpy.isnan(y[1]).all()
    assert rel_error(y[[0, 2]], naive_softmax(x[[0, 2]])) < 1e-5


# ---- softmax cross-entropy -----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 10, 1000])
@pytest.mark.parametrize("n", [1, 3, 17, 129])
def test_cross_entropy_matches_naive(backend, xp, rng, n, k):
    logits = (rng.standard_normal((n, k)) * 3).astype(numpy.float32)
    labels = rng.integers(0, k, size=n)
    loss, dlogits = F.softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels))
    ref_loss, ref_grad = naive_cross_entropy(logits, labels)
    assert_loss_on_backend(loss, backend)
    assert dlogits.shape == (n, k) and dlogits.dtype == numpy.float32
    # A confident row's loss log(s) − (z_t − m) and its gradient p_t − 1 are small differences of O(1)
    # terms (s = 1 + tiny sums exp(0) = 1): float32 keeps ~1e-7 of those terms, not of the result.
    terms = numpy.abs(logits.astype(numpy.float64)).max(axis=1) + 1
    assert error_relative_to(loss, numpy.float64(ref_loss), terms.mean()) < 1e-5
    onehot = numpy.eye(k)[labels]
    assert error_relative_to(dlogits, ref_grad, numpy.abs(ref_grad) + onehot / n) < 1e-5


def test_cross_entropy_gradient_finite_differences(rng):
    logits = rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, size=5)
    _, dlogits = F.softmax_cross_entropy(logits, labels)
    numeric = numeric_grad(lambda z: F.softmax_cross_entropy(z, labels)[0], logits, numpy.float64(1.0))
    assert rel_error(dlogits, numeric) < 1e-7


def test_cross_entropy_large_logits_stay_finite(backend, xp, rng):
    logits = (rng.choice([-1e4, 1e4], size=(17, 10)) + rng.standard_normal((17, 10))).astype(numpy.float32)
    labels = rng.integers(0, 10, size=17)
    loss, dlogits = F.softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels))
    assert numpy.isfinite(cnn_gpu.to_numpy(loss)) and numpy.isfinite(cnn_gpu.to_numpy(dlogits)).all()
    ref_loss, ref_grad = naive_cross_entropy(logits, labels)
    assert rel_error(loss, numpy.float64(ref_loss)) < 1e-5
    assert rel_error(dlogits, ref_grad) < 1e-5


def test_cross_entropy_accepts_int32_labels(backend, xp, rng):
    logits = rng.standard_normal((3, 4)).astype(numpy.float32)
    labels = numpy.array([3, 0, 2], dtype=numpy.int32)
    loss, _ = F.softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels))
    assert rel_error(loss, numpy.float64(naive_cross_entropy(logits, labels)[0])) < 1e-5


# ---- sigmoid binary cross-entropy and mean squared error -----------------------------------------
def make_targets(rng, shape, kind):
    if kind == "soft":
        return rng.uniform(0, 1, size=shape).astype(numpy.float32)
    hard = rng.integers(0, 2, size=shape)
    return hard.astype(numpy.float32) if kind == "float" else hard


@pytest.mark.parametrize("kind", ["float", "int", "soft"])
@pytest.mark.parametrize("shape", [(1,), (3, 1), (17, 31), (2, 3, 5, 7)])
def test_sigmoid_bce_matches_naive(backend, xp, rng, shape, kind):
    z = (rng.standard_normal(shape) * 4).astype(numpy.float32)
    t = make_targets(rng, shape, kind)
    loss, dz = F.sigmoid_binary_cross_entropy(xp.asarray(z), xp.asarray(t))
    ref_loss, ref_grad = naive_sigmoid_bce(z, t)
    assert_loss_on_backend(loss, backend)
    assert dz.shape == shape and dz.dtype == numpy.float32
    assert rel_error(loss, numpy.float64(ref_loss)) < 1e-5
    # dz = (sigmoid(z) − t) / n cancels where sigmoid(z) nears t: measured against its terms' size
    scale = (1 / (1 + numpy.exp(-z.astype(numpy.float64))) + numpy.abs(t)) / z.size
    assert error_relative_to(dz, ref_grad, scale) < 1e-5


def test_sigmoid_bce_gradient_finite_differences(rng):
    z = rng.standard_normal((3, 5)) * 3
    t = rng.uniform(0, 1, size=(3, 5))
    _, dz = F.sigmoid_binary_cross_entropy(z, t)
    numeric = numeric_grad(lambda v: F.sigmoid_binary_cross_entropy(v, t)[0], z, numpy.float64(1.0))
    assert rel_error(dz, numeric) < 1e-6  # central differences in float64; a wrong term is off by O(1)


def test_sigmoid_bce_large_logits_stay_finite(backend, xp, rng):
    z = (rng.choice([-1e4, 1e4], size=(17, 3)) + rng.standard_normal((17, 3))).astype(numpy.float32)
    t = rng.integers(0, 2, size=(17, 3)).astype(numpy.float32)
    loss, dz = F.sigmoid_binary_cross_entropy(xp.asarray(z), xp.asarray(t))
    assert numpy.isfinite(cnn_gpu.to_numpy(loss)) and numpy.isfinite(cnn_gpu.to_numpy(dz)).all()
    ref_loss, ref_grad = naive_sigmoid_bce(z, t)
    assert rel_error(loss, numpy.float64(ref_loss)) < 1e-5
    assert rel_error(dz, ref_grad) < 1e-5


@pytest.mark.parametrize("shape", [(1,), (3, 1), (17, 31), (2, 3, 5, 7)])
def test_mse_matches_naive(backend, xp, rng, shape):
    p = rng.standard_normal(shape).astype(numpy.float32)
    t = rng.standard_normal(shape).astype(numpy.float32)
    loss, dp = mean_squared_error(xp.asarray(p), xp.asarray(t))
    ref_loss, ref_grad = naive_mse(p, t)
    assert_loss_on_backend(loss, backend)
    assert rel_error(loss, numpy.float64(ref_loss)) < 1e-5
    assert rel_error(dp, ref_grad) < 1e-5


def test_mse_gradient_finite_differences(rng):
    p, t = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    _, dp = mean_squared_error(p, t)
    assert rel_error(dp, numeric_grad(lambda v: mean_squared_error(v, t)[0], p, numpy.float64(1.0))) < 1e-7


# ---- reproducible loss bits ----------------------------------------------------------------------
def test_losses_are_bitwise_reproducible(backend, xp, rng):
    logits = xp.asarray(rng.standard_normal((129, 1000)).astype(numpy.float32))
    labels = xp.asarray(rng.integers(0, 1000, size=129))
    z = xp.asarray(rng.standard_normal((65, 127)).astype(numpy.float32))
    t = xp.asarray(rng.integers(0, 2, size=(65, 127)).astype(numpy.float32))
    calls = [lambda: F.softmax_cross_entropy(logits, labels), lambda: F.sigmoid_binary_cross_entropy(z, t),
             lambda: mean_squared_error(z, t)]
    for call in calls:
        (loss_a, grad_a), (loss_b, grad_b) = call(), call()
        assert bits(loss_a) == bits(loss_b) and bits(grad_a) == bits(grad_b)


# ---- bad inputs ----------------------------------------------------------------------------------
def ones(*shape):
    return numpy.ones(shape, numpy.float32)


def test_softmax_rejects_0d():
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        F.softmax(numpy.array(1.0, numpy.float32))


def test_softmax_rejects_empty_last_axis():
    with pytest.raises(ValueError, match="x must have .* non-empty last axis"):
        F.log_softmax(ones(3, 0))


def test_softmax_rejects_integer_input():
    with pytest.raises(TypeError, match="x must be float"):
        F.softmax(numpy.arange(4))


def test_cross_entropy_rejects_non_2d_logits():
    with pytest.raises(ValueError, match=r"logits must be 2-D \(N, K\)"):
        F.softmax_cross_entropy(ones(2, 3, 4), numpy.zeros(2, numpy.int64))


def test_cross_entropy_rejects_empty_logits():
    with pytest.raises(ValueError, match="logits must have at least one row"):
        F.softmax_cross_entropy(ones(0, 3), numpy.zeros(0, numpy.int64))


def test_cross_entropy_rejects_integer_logits():
    with pytest.raises(TypeError, match="logits must be float"):
        F.softmax_cross_entropy(numpy.ones((2, 3), numpy.int64), numpy.zeros(2, numpy.int64))


def test_cross_entropy_rejects_label_shape():
    with pytest.raises(ValueError, match=r"labels shape \(2, 1\) must be \(N,\) = \(2,\)"):
        F.softmax_cross_entropy(ones(2, 3), numpy.zeros((2, 1), numpy.int64))


def test_cross_entropy_rejects_float_labels():
    with pytest.raises(TypeError, match="labels must be an integer array"):
        F.softmax_cross_entropy(ones(2, 3), numpy.zeros(2, numpy.float32))


def test_cross_entropy_rejects_list_labels():
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray"):
        F.softmax_cross_entropy(ones(2, 3), [0, 1])


@pytest.mark.parametrize("bad", [10, -1])
def test_cross_entropy_rejects_labels_out_of_range(backend, xp, bad):
    labels = xp.asarray(numpy.array([0, bad, 9], dtype=numpy.int64))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        F.softmax_cross_entropy(xp.asarray(ones(3, 10)), labels)


def test_bce_rejects_label_shape():
    with pytest.raises(ValueError, match=r"labels shape \(3,\) must equal logits shape \(3, 1\)"):
        F.sigmoid_binary_cross_entropy(ones(3, 1), numpy.ones(3, numpy.float32))


def test_bce_rejects_complex_labels():
    with pytest.raises(TypeError, match="labels must be a bool, integer or float array"):
        F.sigmoid_binary_cross_entropy(ones(3), numpy.ones(3, numpy.complex64))


def test_bce_rejects_empty_logits():
    with pytest.raises(ValueError, match="logits must not be empty"):
        F.sigmoid_binary_cross_entropy(ones(0), numpy.ones(0, numpy.float32))


def test_mse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"target shape \(4,\) must equal pred shape \(3,\)"):
        mean_squared_error(ones(3), ones(4))


def test_mse_rejects_dtype_mismatch():
    with pytest.raises(TypeError, match="pred is float32, target is float64"):
        mean_squared_error(ones(3), numpy.ones(3))


def test_losses_reject_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.softmax_cross_entropy(xp.asarray(ones(2, 3)), numpy.zeros(2, numpy.int64))
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.sigmoid_binary_cross_entropy(xp.asarray(ones(2, 3)), ones(2, 3))
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        mean_squared_error(ones(2, 3), xp.asarray(ones(2, 3)))


# ---- PyTorch, where installed --------------------------------------------------------------------
def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((17, 10))
    labels = rng.integers(0, 10, size=17)
    z = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(z, torch.tensor(labels))
    ref.backward()
    loss, dlogits = F.softmax_cross_entropy(logits, labels)
    assert rel_error(loss, ref.detach().numpy()) < 1e-12 and rel_error(dlogits, z.grad.numpy()) < 1e-12
    assert rel_error(F.log_softmax(logits), torch.log_softmax(torch.tensor(logits), -1).numpy()) < 1e-12

    t = rng.integers(0, 2, size=(17, 10)).astype(numpy.float64)
    z = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.tensor(t))
    ref.backward()
    loss, dz = F.sigmoid_binary_cross_entropy(logits, t)
    assert rel_error(loss, ref.detach().numpy()) < 1e-12 and rel_error(dz, z.grad.numpy()) < 1e-12

    z = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.mse_loss(z, torch.tensor(t))
    ref.backward()
    loss, dp = mean_squared_error(logits, t)
    assert rel_error(loss, ref.detach().numpy()) < 1e-12 and rel_error(dp, z.grad.numpy()) < 1e-12
