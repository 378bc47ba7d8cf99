"""sgd_update, adam_update: a few steps against plain float64 loops of Keras's formulas, SGD against
torch.optim.SGD where the formulations coincide, CUDA against NumPy on odd and unaligned sizes, bad inputs."""
import math

import numpy
import pytest

from checks import rel_error
from cnn_gpu import functional as F


# ---- plain float64 references (Keras's SGD and Adam), one element at a time -------------------------
def ref_sgd(param, grads, velocity, lr, momentum, nesterov):
    p, v = [float(a) for a in param.reshape(-1)], [float(a) for a in velocity.reshape(-1)]
    for grad in grads:
        for i, g in enumerate(grad.reshape(-1).astype(numpy.float64)):
            v[i] = momentum * v[i] - lr * g
            p[i] += (momentum * v[i] - lr * g) if nesterov else v[i]
    return numpy.array(p).reshape(param.shape), numpy.array(v).reshape(param.shape)


def ref_adam(param, grads, lr, beta_1, beta_2, epsilon):
    n = param.size
    p, m, v = [float(a) for a in param.reshape(-1)], [0.0] * n, [0.0] * n
    for t, grad in enumerate(grads, start=1):
        alpha = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        for i, g in enumerate(grad.reshape(-1).astype(numpy.float64)):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            p[i] -= alpha * m[i] / (math.sqrt(v[i]) + epsilon)
    return [numpy.array(a).reshape(param.shape) for a in (p, m, v)]


SGD_CASES = [(0.0, False), (0.9, False), (0.9, True)]  # (momentum, nesterov)


@pytest.mark.parametrize("momentum, nesterov", SGD_CASES)
@pytest.mark.parametrize("dtype, tol", [(numpy.float64, 1e-12), (numpy.float32, 1e-6)])
def test_sgd_matches_reference(rng, momentum, nesterov, dtype, tol):
    param0 = rng.standard_normal((5, 7))
    grads = [rng.standard_normal(param0.shape) for _ in range(3)]
    velocity0 = rng.standard_normal(param0.shape) * 0.1 if momentum else numpy.zeros(param0.shape)
    param = param0.astype(dtype)
    velocity = velocity0.astype(dtype) if momentum else None
    for g in grads:
        assert F.sgd_update(param, g.astype(dtype), velocity, 0.05, momentum, nesterov) is None
    ref_p, ref_v = ref_sgd(param0, grads, velocity0, 0.05, momentum, nesterov)
    assert rel_error(param, ref_p) < tol
    if momentum:
        assert rel_error(velocity, ref_v) < tol


@pytest.mark.parametrize("dtype, tol", [(numpy.float64, 1e-12), (numpy.float32, 1e-6)])
def test_adam_matches_reference(rng, dtype, tol):
    param0 = rng.standard_normal((5, 7))
    grads = [rng.standard_normal(param0.shape) for _ in range(4)]
    param, m, v = param0.astype(dtype), numpy.zeros(param0.shape, dtype), numpy.zeros(param0.shape, dtype)
    for t, g in enumerate(grads, start=1):
        assert F.adam_update(param, g.astype(dtype), m, v, t, learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-3) is None
    ref_p, ref_m, ref_v = ref_adam(param0, grads, 0.01, 0.8, 0.95, 1e-3)
    for ours, ref in ((param, ref_p), (m, ref_m), (v, ref_v)):
        assert rel_error(ours, ref) < tol


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_torch(rng, nesterov):
    """Keras's velocity is -lr times torch's momentum buffer for a constant lr: the params agree."""
    torch = pytest.importorskip("torch")
    param0 = rng.standard_normal((4, 9))
    grads = [rng.standard_normal(param0.shape) for _ in range(4)]
    theirs = torch.tensor(param0, requires_grad=True)
    optimizer = torch.optim.SGD([theirs], lr=0.05, momentum=0.9, nesterov=nesterov)
    param, velocity = param0.copy(), numpy.zeros_like(param0)
    for g in grads:
        theirs.grad = torch.tensor(g)
        optimizer.step()
        F.sgd_update(param, g, velocity, 0.05, 0.9, nesterov)
    assert rel_error(param, theirs.detach().numpy()) < 1e-12


# ---- CUDA against NumPy: odd sizes, and arrays that start one element past an allocation ------------
SIZES = [1, 3, 17, 1023, 4097]


def _operand(xp, host, unaligned):
    """A copy of host on the backend; unaligned: a contiguous view starting 4 bytes into its allocation."""
    if not unaligned:
        return xp.array(host)
    buffer = xp.empty(host.size + 1, dtype=host.dtype)
    view = buffer[1:]
    view[...] = xp.asarray(host)
    return view


@pytest.mark.parametrize("momentum, nesterov", SGD_CASES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("unaligned", [False, True])
def test_sgd_backend_matches_numpy(backend, xp, rng, momentum, nesterov, size, unaligned):
    p, g, v = (rng.standard_normal(size).astype(numpy.float32) for _ in range(3))
    param, grad = _operand(xp, p, unaligned), _operand(xp, g, unaligned)
    velocity = _operand(xp, v, unaligned) if momentum else None
    F.sgd_update(param, grad, velocity, 0.1, momentum, nesterov)
    ref_v = v.copy() if momentum else None
    F.sgd_update(p, g, ref_v, 0.1, momentum, nesterov)
    assert rel_error(param, p) < 1e-6
    if momentum:
        assert rel_error(velocity, ref_v) < 1e-6


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("unaligned", [False, True])
def test_adam_backend_matches_numpy(backend, xp, rng, size, unaligned):
    p, g = rng.standard_normal(size).astype(numpy.float32), rng.standard_normal(size).astype(numpy.float32)
    m = (rng.standard_normal(size) * 0.1).astype(numpy.float32)
    v = (rng.random(size) * 0.1 + 0.01).astype(numpy.float32)
    param, grad, m_dev, v_dev = (_operand(xp, a, unaligned) for a in (p, g, m, v))
    F.adam_update(param, grad, m_dev, v_dev, 7)
    F.adam_update(p, g, m, v, 7)
    for ours, ref in ((param, p), (m_dev, m), (v_dev, v)):
        assert rel_error(ours, ref) < 1e-6


def test_non_contiguous_grad_accepted(backend, xp, rng):
    p, g = rng.standard_normal((6, 5)).astype(numpy.float32), rng.standard_normal((6, 10)).astype(numpy.float32)
    param = xp.array(p)
    F.sgd_update(param, xp.asarray(g)[:, ::2], None, 0.1)
    assert rel_error(param, p - numpy.float32(0.1) * g[:, ::2]) < 1e-7


# ---- bad inputs: one test per rule ----------------------------------------------------------------
def _f32(*shape):
    return numpy.ones(shape, numpy.float32)


def test_rejects_grad_shape_mismatch():
    with pytest.raises(ValueError, match=r"grad shape \(4,\) must equal param shape \(3,\)"):
        F.sgd_update(_f32(3), _f32(4), None, 0.1)


def test_rejects_state_shape_mismatch():
    with pytest.raises(ValueError, match=r"velocity shape \(4,\) must equal param shape"):
        F.sgd_update(_f32(3), _f32(3), _f32(4), 0.1, 0.9)
    with pytest.raises(ValueError, match=r"v shape \(2, 2\) must equal param shape"):
        F.adam_update(_f32(4), _f32(4), _f32(4), _f32(2, 2), 1)


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_rejects_negative_or_non_finite_learning_rate(lr):
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        F.sgd_update(_f32(3), _f32(3), None, lr)
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        F.adam_update(_f32(3), _f32(3), _f32(3), _f32(3), 1, learning_rate=lr)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_rejects_momentum_outside_unit_interval(value):
    with pytest.raises(ValueError, match="momentum must be in"):
        F.sgd_update(_f32(3), _f32(3), _f32(3), 0.1, value)


@pytest.mark.parametrize("name", ["beta_1", "beta_2"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_rejects_beta_outside_unit_interval(name, value):
    with pytest.raises(ValueError, match=f"{name} must be in"):
        F.adam_update(_f32(3), _f32(3), _f32(3), _f32(3), 1, **{name: value})


def test_rejects_negative_epsilon():
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        F.adam_update(_f32(3), _f32(3), _f32(3), _f32(3), 1, epsilon=-1e-7)


def test_rejects_step_below_one():
    with pytest.raises(ValueError, match="step must be >= 1"):
        F.adam_update(_f32(3), _f32(3), _f32(3), _f32(3), 0)


def test_rejects_non_integer_step():
    with pytest.raises(TypeError, match="step must be an int"):
        F.adam_update(_f32(3), _f32(3), _f32(3), _f32(3), 1.0)


def test_rejects_missing_velocity_with_momentum():
    with pytest.raises(ValueError, match="velocity is required"):
        F.sgd_update(_f32(3), _f32(3), None, 0.1, 0.9)


@pytest.mark.parametrize("name", ["param", "m", "v"])
def test_rejects_non_contiguous_param_or_state(name):
    arrays = {"param": _f32(3, 4), "grad": _f32(3, 4), "m": _f32(3, 4), "v": _f32(3, 4)}
    arrays[name] = numpy.ones((4, 3), numpy.float32).T  # Fortran order: not updatable in place as C
    with pytest.raises(ValueError, match=f"{name} must be C-contiguous"):
        F.adam_update(step=1, **arrays)


def test_rejects_non_contiguous_velocity():
    with pytest.raises(ValueError, match="velocity must be C-contiguous"):
        F.sgd_update(_f32(3), _f32(3), _f32(6)[::2], 0.1, 0.9)


def test_rejects_integer_dtype():
    with pytest.raises(TypeError, match="param must be float"):
        F.sgd_update(numpy.ones(3, numpy.int32), _f32(3), None, 0.1)


def test_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="operands must share one dtype"):
        F.adam_update(_f32(3), numpy.ones(3), _f32(3), _f32(3), 1)


def test_rejects_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.sgd_update(xp.ones(3, dtype=numpy.float32), numpy.ones(3, numpy.float32), None, 0.1)
