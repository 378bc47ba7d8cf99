"""RMSprop, AdamW (decoupled weight decay), SGD(nesterov=True) and learning-rate schedules: the update ops
against plain float64 loops of Keras's update equations, CUDA against NumPy, the Optimizer objects
against real Keras (torch backend) step by step where it is installed, and the schedules' formulas."""
import math

import numpy
import pytest

from checks import rel_error
from cnn_gpu import functional as F
from cnn_gpu import optimizers
from cnn_gpu.optimizers import schedules


# ---- float64 references of Keras's equations, one element at a time -----------------------------------
def ref_rmsprop(param, grads, lr, rho, momentum, epsilon, centered):
    p = [float(a) for a in param.reshape(-1)]
    n = len(p)
    v, a, b = [0.0] * n, [0.0] * n, [0.0] * n
    for grad in grads:
        for i, g in enumerate(grad.reshape(-1).astype(numpy.float64)):
            v[i] = rho * v[i] + (1 - rho) * g * g
            if centered:
                a[i] = rho * a[i] + (1 - rho) * g
                denominator = v[i] - a[i] ** 2 + epsilon
            else:
                denominator = v[i] + epsilon
            increment = lr * g / math.sqrt(denominator)
            if momentum > 0:
                b[i] = momentum * b[i] + increment
                p[i] -= b[i]
            else:
                p[i] -= increment
    return numpy.array(p).reshape(param.shape)


def ref_adamw(param, grads, lrs, weight_decay, beta_1, beta_2, epsilon):
    """lrs: the learning rate of each step (a schedule's values)."""
    p = [float(a) for a in param.reshape(-1)]
    m, v = [0.0] * len(p), [0.0] * len(p)
    for t, (grad, lr) in enumerate(zip(grads, lrs), start=1):
        for i, g in enumerate(grad.reshape(-1).astype(numpy.float64)):
            p[i] -= p[i] * weight_decay * lr  # decoupled: on the weights, before the Adam step
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            alpha = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
            p[i] -= alpha * m[i] / (math.sqrt(v[i]) + epsilon)
    return numpy.array(p).reshape(param.shape)


def ref_sgd(param, grads, lrs, momentum, nesterov):
    p, v = [float(a) for a in param.reshape(-1)], [0.0] * param.size
    for grad, lr in zip(grads, lrs):
        for i, g in enumerate(grad.reshape(-1).astype(numpy.float64)):
            v[i] = momentum * v[i] - lr * g
            p[i] += (momentum * v[i] - lr * g) if nesterov else v[i]
    return numpy.array(p).reshape(param.shape)


RMSPROP_CASES = [(0.0, False), (0.5, False), (0.0, True), (0.9, True)]  # (momentum, centered)


@pytest.mark.parametrize("momentum, centered", RMSPROP_CASES)
@pytest.mark.parametrize("dtype, tol", [(numpy.float64, 1e-12), (numpy.float32, 2e-6)])
def test_rmsprop_op_matches_reference(rng, momentum, centered, dtype, tol):
    param0 = rng.standard_normal((5, 7))
    grads = [rng.standard_normal(param0.shape) for _ in range(4)]
    param = param0.astype(dtype)
    velocity = numpy.zeros(param0.shape, dtype)
    average = numpy.zeros(param0.shape, dtype) if centered else None
    buffer = numpy.zeros(param0.shape, dtype) if momentum else None
    for g in grads:
        assert F.rmsprop_update(param, g.astype(dtype), velocity, average, buffer, 0.01, rho=0.8, momentum=momentum,
                                epsilon=1e-3) is None
    assert rel_error(param, ref_rmsprop(param0, grads, 0.01, 0.8, momentum, 1e-3, centered)) < tol


@pytest.mark.parametrize("dtype, tol", [(numpy.float64, 1e-12), (numpy.float32, 2e-6)])
def test_weight_decay_then_adam_is_adamw(rng, dtype, tol):
    param0 = rng.standard_normal((6, 5))
    grads = [rng.standard_normal(param0.shape) for _ in range(4)]
    param, m, v = param0.astype(dtype), numpy.zeros(param0.shape, dtype), numpy.zeros(param0.shape, dtype)
    for t, g in enumerate(grads, start=1):
        F.weight_decay_update(param, 0.01, 0.2)
        F.adam_update(param, g.astype(dtype), m, v, t, 0.01, 0.8, 0.95, 1e-3)
    assert rel_error(param, ref_adamw(param0, grads, [0.01] * 4, 0.2, 0.8, 0.95, 1e-3)) < tol


def _operand(xp, host, unaligned):
    if not unaligned:
        return xp.array(host)
    buffer = xp.empty(host.size + 1, dtype=host.dtype)
    buffer[1:] = xp.asarray(host)
    return buffer[1:]


@pytest.mark.parametrize("momentum, centered", RMSPROP_CASES)
@pytest.mark.parametrize("size", [1, 3, 17, 1023, 4097])
@pytest.mark.parametrize("unaligned", [False, True])
def test_rmsprop_and_weight_decay_backend_match_numpy(backend, xp, rng, momentum, centered, size, unaligned):
    host = {name: rng.standard_normal(size).astype(numpy.float32) for name in ("p", "g", "a", "b")}
    host["v"] = (rng.random(size) + 0.5).astype(numpy.float32)  # velocity > average² keeps the root real
    host["a"] *= 0.1
    dev = {name: _operand(xp, value, unaligned) for name, value in host.items()}
    pick = lambda arrays: (arrays["a"] if centered else None, arrays["b"] if momentum else None)  # noqa: E731
    F.rmsprop_update(dev["p"], dev["g"], dev["v"], *pick(dev), 0.01, momentum=momentum)
    F.rmsprop_update(host["p"], host["g"], host["v"], *pick(host), 0.01, momentum=momentum)
    F.weight_decay_update(dev["p"], 0.01, 0.3)
    F.weight_decay_update(host["p"], 0.01, 0.3)
    for name in ("p", "v", *("a" * centered), *("b" * bool(momentum))):
        assert rel_error(dev[name], host[name]) < 1e-6, name


@pytest.mark.parametrize("op", ["sgd", "rmsprop", "weight_decay"])
def test_learning_rate_read_from_an_array(backend, xp, rng, op):
    """learning_rate_from: the rate read from a one-element array as the update runs, equal to by value."""
    p, g = rng.standard_normal(37).astype(numpy.float32), rng.standard_normal(37).astype(numpy.float32)
    results = []
    for by_value in (True, False):
        param, grad, state = xp.array(p), xp.array(g), xp.ones(37, dtype=numpy.float32)
        lr = dict(learning_rate=0.03) if by_value else dict(learning_rate=None,
                                                             learning_rate_from=xp.asarray(numpy.float32([0.03])))
        if op == "sgd":
            F.sgd_update(param, grad, state, momentum=0.9, nesterov=True, **lr)
        elif op == "rmsprop":
            F.rmsprop_update(param, grad, state, None, None, **lr)
        else:
            F.weight_decay_update(param, weight_decay=0.1, **lr)
        results.append(param)
    assert rel_error(results[1], results[0]) == 0


def test_bad_op_arguments():
    ones = lambda *s: numpy.ones(s, numpy.float32)  # noqa: E731
    with pytest.raises(ValueError, match="momentum_buffer must be given exactly when momentum > 0"):
        F.rmsprop_update(ones(3), ones(3), ones(3), None, None, 0.1, momentum=0.5)
    with pytest.raises(ValueError, match=r"average_grad shape \(4,\) must equal param shape \(3,\)"):
        F.rmsprop_update(ones(3), ones(3), ones(3), ones(4), None, 0.1)
    with pytest.raises(ValueError, match="rho must be in"):
        F.rmsprop_update(ones(3), ones(3), ones(3), None, None, 0.1, rho=1.0)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        F.weight_decay_update(ones(3), 0.1, -1.0)
    with pytest.raises(TypeError, match="learning_rate_from must be a one-element float32 array"):
        F.sgd_update(ones(3), ones(3), None, None, learning_rate_from=numpy.ones(2, numpy.float32))
    with pytest.raises(ValueError, match="learning_rate must be None when learning_rate_from is given"):
        F.sgd_update(ones(3), ones(3), None, 0.1, learning_rate_from=ones(1))


# ---- the Optimizer objects: schedules, weight decay, against the references and real Keras -------------
def run_optimizer(optimizer, param0, grads):
    param = param0.copy()
    for g in grads:
        optimizer.apply({"w": param}, {"w": g.copy()})
    return param


def test_sgd_nesterov_with_exponential_decay_matches_reference(rng):
    param0, grads = rng.standard_normal(11), [rng.standard_normal(11) for _ in range(5)]
    schedule = schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    ours = run_optimizer(optimizers.SGD(schedule, momentum=0.9, nesterov=True), param0, grads)
    lrs = [0.1 * 0.5 ** (t / 2) for t in range(5)]  # step t uses the rate at the t steps before it
    assert rel_error(ours, ref_sgd(param0, grads, lrs, 0.9, True)) < 1e-13


def test_adamw_with_cosine_decay_matches_reference(rng):
    param0, grads = rng.standard_normal(9), [rng.standard_normal(9) for _ in range(6)]
    ours = run_optimizer(optimizers.AdamW(schedules.CosineDecay(0.01, decay_steps=4), weight_decay=0.05), param0, grads)
    lrs = [0.01 * 0.5 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(6)]
    assert rel_error(ours, ref_adamw(param0, grads, lrs, 0.05, 0.9, 0.999, 1e-7)) < 1e-13


@pytest.mark.parametrize("momentum, centered", RMSPROP_CASES)
def test_rmsprop_object_matches_reference(rng, momentum, centered):
    param0, grads = rng.standard_normal(8), [rng.standard_normal(8) for _ in range(4)]
    ours = run_optimizer(optimizers.RMSprop(0.01, momentum=momentum, centered=centered), param0, grads)
    assert rel_error(ours, ref_rmsprop(param0, grads, 0.01, 0.9, momentum, 1e-7, centered)) < 1e-13


def keras_or_skip():
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("the Keras reference runs on its torch backend")
    return keras


KERAS_CASES = {
    "rmsprop": (lambda k: k.optimizers.RMSprop(0.01, rho=0.8, momentum=0.5, centered=True),
                lambda: optimizers.RMSprop(0.01, rho=0.8, momentum=0.5, centered=True)),
    "adamw": (lambda k: k.optimizers.AdamW(k.optimizers.schedules.CosineDecay(0.01, 3), weight_decay=0.1),
              lambda: optimizers.AdamW(schedules.CosineDecay(0.01, 3), weight_decay=0.1)),
    "sgd_nesterov": (lambda k: k.optimizers.SGD(k.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5, staircase=True),
                                                momentum=0.9, nesterov=True),
                     lambda: optimizers.SGD(schedules.ExponentialDecay(0.1, 2, 0.5, staircase=True), momentum=0.9,
                                            nesterov=True)),
    "adam_weight_decay": (lambda k: k.optimizers.Adam(0.01, weight_decay=0.2), lambda: optimizers.Adam(0.01, weight_decay=0.2)),
}


@pytest.mark.parametrize("case", KERAS_CASES)
def test_optimizers_match_real_keras(rng, case):
    keras = keras_or_skip()
    param0 = rng.standard_normal((4, 3)).astype(numpy.float32)
    grads = [rng.standard_normal(param0.shape).astype(numpy.float32) for _ in range(5)]
    theirs_optimizer, ours_optimizer = KERAS_CASES[case][0](keras), KERAS_CASES[case][1]()
    variable = keras.Variable(param0)
    ours = param0.copy()
    for g in grads:
        theirs_optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
        ours_optimizer.apply({"w": ours}, {"w": g.copy()})
        assert rel_error(ours, keras.ops.convert_to_numpy(variable)) < 2e-6
    assert ours_optimizer.iterations == int(keras.ops.convert_to_numpy(theirs_optimizer.iterations))
    assert ours_optimizer.learning_rate == pytest.approx(float(keras.ops.convert_to_numpy(theirs_optimizer.learning_rate)),
                                                         rel=1e-6)


@pytest.mark.parametrize("make", [
    lambda s: s.ExponentialDecay(0.1, 3, 0.7), lambda s: s.ExponentialDecay(0.1, 3, 0.7, staircase=True),
    lambda s: s.CosineDecay(0.1, 5, alpha=0.1), lambda s: s.CosineDecay(0.0, 4, warmup_target=0.2, warmup_steps=3),
    lambda s: s.InverseTimeDecay(0.1, 2, 0.5), lambda s: s.PiecewiseConstantDecay([2, 5], [0.3, 0.2, 0.1]),
])
def test_schedules_match_real_keras(make):
    keras = keras_or_skip()
    ours, theirs = make(schedules), make(keras.optimizers.schedules)
    for step in range(12):
        assert ours(step) == pytest.approx(float(keras.ops.convert_to_numpy(theirs(step))), rel=1e-6, abs=1e-9), step


def test_schedule_formulas():
    exponential = schedules.ExponentialDecay(0.2, decay_steps=10, decay_rate=0.5)
    assert exponential(0) == 0.2 and exponential(10) == pytest.approx(0.1) and exponential(5) == pytest.approx(0.2 / 2 ** 0.5)
    cosine = schedules.CosineDecay(0.2, decay_steps=10, alpha=0.25)
    assert cosine(0) == pytest.approx(0.2) and cosine(10) == pytest.approx(0.05) and cosine(99) == pytest.approx(0.05)
    assert cosine(5) == pytest.approx(0.2 * (0.75 * 0.5 + 0.25))


def test_learning_rate_property_and_setter():
    optimizer = optimizers.RMSprop(0.01)
    optimizer.learning_rate = 0.5
    assert optimizer.learning_rate == 0.5
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        optimizer.learning_rate = float("nan")
    scheduled = optimizers.SGD(schedules.ExponentialDecay(1.0, 1, 0.5))
    scheduled.iterations = 2
    assert scheduled.learning_rate == 0.25
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        scheduled.learning_rate = 0.1


def test_optimizer_config_round_trips_with_a_schedule():
    optimizer = optimizers.AdamW(schedules.CosineDecay(0.01, 7, alpha=0.1), weight_decay=0.01, beta_1=0.8)
    again = optimizers.from_config("AdamW", optimizer.get_config())
    assert isinstance(again._schedule, schedules.CosineDecay) and again._schedule.get_config() == optimizer._schedule.get_config()
    assert again.weight_decay == 0.01 and again.beta_1 == 0.8


@pytest.mark.parametrize("name, cls", [("rmsprop", optimizers.RMSprop), ("AdamW", optimizers.AdamW),
                                       ("sgd", optimizers.SGD), ("Adam", optimizers.Adam)])
def test_optimizer_names(name, cls):
    assert type(optimizers.get(name)) is cls


@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.get("adagrad"), "optimizer must be one of 'sgd', 'adam', 'adamw', 'rmsprop'"),
    (lambda: optimizers.RMSprop(rho=1.5), "rho"),
    (lambda: optimizers.AdamW(weight_decay=None), "weight_decay"),
    (lambda: optimizers.SGD(momentum=-1), "momentum"),
    (lambda: schedules.ExponentialDecay(0.1, 0, 0.5), "decay_steps"),
    (lambda: schedules.PiecewiseConstantDecay([1], [0.1]), "one more entry"),
])
def test_bad_optimizer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
