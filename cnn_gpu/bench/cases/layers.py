"""Benchmark cases of the other layers' kernels: pooling, activations, softmax and the losses, batch-norm,
dropout and the optimizers' updates (against PyTorch's own CUDA kernels)."""
from __future__ import annotations

import numpy

from cnn_gpu import functional as F
from cnn_gpu.backend import to_numpy
from cnn_gpu.bench.cases.base import (ADAM_BETA_2, KERAS_ADAM_EPSILON, Bound, Case, _ref_name, _torch_reference,
                                      torch_adam_epsilon)


# ---- pooling -------------------------------------------------------------------------------------
# (label, C, H=W, kernel, stride, padding, batches)
POOLS = (
    ("MNIST pool1", 32, 24, 2, 2, 0, (32, 128, 1024)),
    ("MNIST pool2", 64, 8, 2, 2, 0, (32, 128, 1024)),
    ("100×100 pool1", 512, 98, 3, 3, 0, (32, 128)),
    ("100×100 pool2", 256, 30, 3, 3, 0, (32, 128)),
    ("100×100 pool3", 128, 8, 3, 3, 0, (32, 128)),
    ("resnet stem", 64, 112, 3, 2, 1, (32,)),
)
QUICK_POOLS = (("MNIST pool1", 32, 24, 2, 2, 0, (8,)), ("100×100 pool3", 128, 8, 3, 3, 0, (2,)))
AVG_SUM_POOL_SHAPES = 2  # average and sum pooling: the first shapes of each list only


def _pool_cases(quick):
    layers = [(*p[:6], N) for p in (QUICK_POOLS if quick else POOLS) for N in p[6]]
    for i, (label, C, H, k, s, p, N) in enumerate(layers):
        shape = f"{label} N{N} C{C} {H}² k{k} s{s} p{p}"
        yield Case("maxpool", "fwd", shape, _maxpool_forward(N, C, H, k, s, p))
        yield Case("maxpool", "bwd", shape, _maxpool_backward(N, C, H, k, s, p))
        if i < AVG_SUM_POOL_SHAPES:
            for op in ("avgpool", "sumpool"):
                yield Case(op, "fwd", shape, _sumpool_forward(op, N, C, H, k, s, p))
                yield Case(op, "bwd", shape, _sumpool_backward(op, N, C, H, k, s, p))


def _maxpool_forward(N, C, H, k, s, p):
    def prepare(side):
        x = side.normal(N, C, H, H)
        bound = Bound(lambda: F.max_pool2d(x, k, s, p), inputs=(x,))
        T = side.torch
        if T is not None:
            _torch_reference(bound, side, "PyTorch CUDA", "torch max_pool2d",
                             lambda x: T.nn.functional.max_pool2d(x, k, s, p, return_indices=True), x)
        return bound
    return prepare


def _maxpool_backward(N, C, H, k, s, p):
    def prepare(side):
        x = side.normal(N, C, H, H)
        _, indices = F.max_pool2d(x, k, s, p)
        dy = side.normal(*indices.shape)
        bound = Bound(lambda: F.max_pool2d_backward(dy, indices, x.shape, k, s, p), inputs=(dy, indices))
        T = side.torch
        if T is not None:
            _, t_indices = T.nn.functional.max_pool2d(side.to_torch(x), k, s, p, return_indices=True)
            backward = T.ops.aten.max_pool2d_with_indices_backward
            _torch_reference(bound, side, "PyTorch CUDA", "aten max_pool2d_with_indices_backward",
                             lambda dy, x, indices: backward(dy, x, [k, k], [s, s], [p, p], [1, 1], False, indices),
                             dy, x, t_indices)
        return bound
    return prepare


def _sumpool_forward(op, N, C, H, k, s, p):
    """Average pooling against torch avg_pool2d; sum pooling against it with divisor_override = 1."""
    ours = F.avg_pool2d if op == "avgpool" else F.sum_pool2d
    divisor = None if op == "avgpool" else 1

    def prepare(side):
        x = side.normal(N, C, H, H)
        bound = Bound(lambda: ours(x, k, s, p), inputs=(x,))
        T = side.torch
        if T is not None:
            name = "torch avg_pool2d" + ("" if divisor is None else ", divisor_override=1")
            _torch_reference(bound, side, "PyTorch CUDA", name,
                             lambda x: T.nn.functional.avg_pool2d(x, k, s, p, divisor_override=divisor), x)
        return bound
    return prepare


def _sumpool_backward(op, N, C, H, k, s, p):
    ours = F.avg_pool2d_backward if op == "avgpool" else F.sum_pool2d_backward
    divisor = None if op == "avgpool" else 1

    def prepare(side):
        OH = (H + 2 * p - k) // s + 1
        dy = side.normal(N, C, OH, OH)
        x_shape = (N, C, H, H)
        bound = Bound(lambda: ours(dy, x_shape, k, s, p), inputs=(dy,))
        T = side.torch
        if T is not None:
            tdy = side.to_torch(dy)
            tx = T.empty(x_shape, device=tdy.device)  # avg_pool2d_backward reads only its shape (and dtype)
            backward = T.ops.aten.avg_pool2d_backward
            name = "aten avg_pool2d_backward" + ("" if divisor is None else ", divisor_override=1")
            _torch_reference(bound, side, "PyTorch CUDA", name,
                             lambda dy, x: backward(dy, x, [k, k], [s, s], [p, p], False, True, divisor), tdy, tx)
        return bound
    return prepare


# ---- element-wise activations --------------------------------------------------------------------
# relu: the MNIST network's conv1 output at its three batches, a ResNet and the 100×100 network's conv1 output;
# the other activations share relu's kernel: one shape each.
RELU_SHAPES = ((32, 32, 24, 24), (128, 32, 24, 24), (1024, 32, 24, 24), (128, 64, 56, 56), (128, 512, 98, 98))
OTHER_ACTIVATION_SHAPES = ((128, 64, 56, 56),)
QUICK_ACTIVATION_SHAPES = ((8, 32, 24, 24),)
# torch's forward and its backward from the forward output (as ours: backward(dy, y))
TORCH_ACTIVATIONS = {
    "relu": ("relu", lambda T, dy, y: T.ops.aten.threshold_backward(dy, y, 0)),
    "leaky_relu": ("leaky_relu", lambda T, dy, y: T.ops.aten.leaky_relu_backward(dy, y, 0.01, True)),
    "sigmoid": ("sigmoid", lambda T, dy, y: T.ops.aten.sigmoid_backward(dy, y)),
    "tanh": ("tanh", lambda T, dy, y: T.ops.aten.tanh_backward(dy, y)),
}


def _activation_cases(quick):
    for name in TORCH_ACTIVATIONS:
        shapes = QUICK_ACTIVATION_SHAPES if quick else RELU_SHAPES if name == "relu" else OTHER_ACTIVATION_SHAPES
        for shape in shapes:
            label = "N{} C{} {}×{}".format(*shape)
            yield Case(name, "fwd", label, _activation_forward(name, shape))
            yield Case(name, "bwd", label, _activation_backward(name, shape))


def _activation_forward(name, shape):
    ours = getattr(F, name)

    def prepare(side):
        x = side.normal(*shape)
        bound = Bound(lambda: ours(x), inputs=(x,))
        T = side.torch
        if T is not None:
            torch_forward = getattr(T.nn.functional, TORCH_ACTIVATIONS[name][0])
            _torch_reference(bound, side, "PyTorch CUDA", f"torch {name}", torch_forward, x)
        return bound
    return prepare


def _activation_backward(name, shape):
    forward, backward = getattr(F, name), getattr(F, f"{name}_backward")

    def prepare(side):
        y, dy = forward(side.normal(*shape)), side.normal(*shape)
        bound = Bound(lambda: backward(dy, y), inputs=(dy, y))
        T = side.torch
        if T is not None:
            torch_backward = TORCH_ACTIVATIONS[name][1]
            _torch_reference(bound, side, "PyTorch CUDA", f"aten {name}_backward",
                             lambda dy, y: torch_backward(T, dy, y), dy, y)
        return bound
    return prepare


# ---- softmax and losses --------------------------------------------------------------------------
XENT_SHAPES = ((32, 10), (128, 10), (1024, 10), (128, 1000), (1024, 1000))
QUICK_XENT_SHAPES = ((32, 10), (32, 100))


def _softmax_cases(quick):
    shapes = QUICK_XENT_SHAPES if quick else XENT_SHAPES
    for N, K in shapes:
        yield Case("softmax_xent", "loss+grad", f"N{N} K{K}", _softmax_xent(N, K))
    for N, K in shapes[-1:]:
        for op in ("softmax", "log_softmax"):
            yield Case(op, "fwd", f"N{N} K{K}", _softmax_forward(op, N, K))
    yield Case("sigmoid_bce", "loss+grad", "100×100 N128 ×1" if not quick else "N32 ×1",
               _sigmoid_bce(32 if quick else 128))


def _softmax_forward(op, N, K):
    def prepare(side):
        x = side.normal(N, K)
        bound = Bound(lambda: getattr(F, op)(x), inputs=(x,))
        T = side.torch
        if T is not None:
            torch_op = getattr(T, op)
            _torch_reference(bound, side, "PyTorch CUDA", f"torch {op}", lambda x: torch_op(x, -1), x)
        return bound
    return prepare


def _softmax_xent(N, K):
    """Ours: loss and dlogits in one fused call; torch: cross_entropy forward + autograd backward."""
    def prepare(side):
        logits, labels = side.normal(N, K), side.labels(N, K)
        bound = Bound(lambda: F.softmax_cross_entropy(logits, labels), inputs=(logits, labels))
        T = side.torch
        if T is not None:
            tl = side.to_torch(logits).detach().requires_grad_()
            _torch_reference(bound, side, "PyTorch CUDA", "torch cross_entropy fwd+bwd",
                             lambda logits, labels: _loss_and_grad(T, T.nn.functional.cross_entropy, logits, labels),
                             tl, labels)
        return bound
    return prepare


def _sigmoid_bce(N):
    def prepare(side):
        logits, labels = side.normal(N, 1), (side.uniform(N, 1) > 0.5).astype(numpy.float32)
        bound = Bound(lambda: F.sigmoid_binary_cross_entropy(logits, labels), inputs=(logits, labels))
        T = side.torch
        if T is not None:
            tl = side.to_torch(logits).detach().requires_grad_()
            bce = T.nn.functional.binary_cross_entropy_with_logits
            _torch_reference(bound, side, "PyTorch CUDA", "torch bce_with_logits fwd+bwd",
                             lambda logits, labels: _loss_and_grad(T, bce, logits, labels), tl, labels)
        return bound
    return prepare


def _loss_and_grad(T, loss_fn, logits, labels):
    loss = loss_fn(logits, labels)
    (grad,) = T.autograd.grad(loss, logits)
    return loss.detach(), grad


# ---- batch normalisation -------------------------------------------------------------------------
# (label, N, C, H=W): the 100×100 network's BatchNormalization inputs, and a ResNet one.
BATCHNORMS = tuple((label, N, C, H) for label, C, H in (("100×100 bn1", 512, 98), ("100×100 bn2", 256, 30),
                                                         ("100×100 bn3", 128, 8)) for N in (32, 128)) + (
    ("resnet bn", 128, 64, 56),)
QUICK_BATCHNORMS = (("100×100 bn3", 2, 128, 8), ("small", 4, 16, 14))
BN_MOMENTUM, BN_EPS = 0.01, 1e-3  # torch's meaning of momentum (Keras's 0.99)


def _batchnorm_cases(quick):
    for label, N, C, H in QUICK_BATCHNORMS if quick else BATCHNORMS:
        shape = f"{label} N{N} C{C} {H}²"
        yield Case("batchnorm", "fwd train", shape, _batchnorm_forward(N, C, H, training=True), tol=1e-4)
        yield Case("batchnorm", "fwd infer", shape, _batchnorm_forward(N, C, H, training=False), tol=1e-5)
        yield Case("batchnorm", "bwd", shape, _batchnorm_backward(N, C, H), tol=1e-4)


def _bn_params(side, C):
    return side.normal(C), side.normal(C), side.normal(C), side.uniform(C, low=0.5, high=2.0)


def _batchnorm_forward(N, C, H, training):
    """Training: y with the batch's statistics (running ones updated); inference: y with the running ones."""
    def prepare(side):
        x = side.normal(N, C, H, H)
        gamma, beta, mean, var = _bn_params(side, C)
        bound = Bound(lambda: F.batch_norm(x, gamma, beta, mean, var, training=training, momentum=BN_MOMENTUM,
                                           eps=BN_EPS)[0], inputs=(x, gamma, beta, mean, var))
        T = side.torch
        if T is not None:
            # torch updates the running statistics it is given: copies of ours (the truth: float64 copies of those)
            _torch_reference(bound, side, "PyTorch CUDA", "torch batch_norm",
                             lambda x, mean, var, gamma, beta: T.nn.functional.batch_norm(
                                 x, mean, var, gamma, beta, training=training, momentum=BN_MOMENTUM, eps=BN_EPS),
                             x, mean.copy(), var.copy(), gamma, beta)
        return bound
    return prepare


def _batchnorm_backward(N, C, H):
    def prepare(side):
        x, dy = side.normal(N, C, H, H), side.normal(N, C, H, H)
        gamma, beta, mean, var = _bn_params(side, C)
        _, saved_mean, saved_invstd = F.batch_norm(x, gamma, beta, mean, var, training=True, momentum=BN_MOMENTUM, eps=BN_EPS)
        bound = Bound(lambda: F.batch_norm_backward(dy, x, gamma, saved_mean, saved_invstd),
                      inputs=(dy, x, gamma, saved_mean, saved_invstd))
        T = side.torch
        if T is not None:
            tx, tg = side.to_torch(x), side.to_torch(gamma)
            _, t_mean, t_invstd = T.ops.aten.native_batch_norm(tx, tg, side.to_torch(beta), None, None, True,
                                                                BN_MOMENTUM, BN_EPS)
            backward = T.ops.aten.native_batch_norm_backward
            _torch_reference(bound, side, "PyTorch CUDA", "aten native_batch_norm_backward",
                             lambda dy, x, gamma, mean, invstd: backward(
                                 dy, x, gamma, None, None, mean, invstd, True, BN_EPS, [True, True, True]),
                             dy, tx, tg, t_mean, t_invstd)
        return bound
    return prepare


# ---- dropout -------------------------------------------------------------------------------------
DROPOUTS = (("MNIST dense2", (128, 64), 0.3), ("100×100 pool1", (128, 512, 32, 32), 0.1))
QUICK_DROPOUTS = (("MNIST dense2", (32, 64), 0.3), ("small", (4, 64, 12, 12), 0.1))


def _dropout_cases(quick):
    for label, shape, rate in QUICK_DROPOUTS if quick else DROPOUTS:
        text = f"{label} {'×'.join(map(str, shape))} rate {rate}"
        yield Case("dropout", "fwd", text, _dropout_forward(shape, rate))
        yield Case("dropout", "bwd", text, _dropout_backward(shape, rate))


def _dropout_forward(shape, rate, seed=12345):
    """Timed beside torch dropout (its own RNG, so not comparable); checked against our NumPy path,
    which draws the same mask bit for bit (on the CPU ours IS that path: nothing to check against)."""
    def prepare(side):
        x = side.normal(*shape)
        bound = Bound(lambda: F.dropout(x, rate, seed), inputs=(x,), refs_match=False)
        if side.device == "cuda":
            bound.truth = ("NumPy path", lambda: F.dropout(to_numpy(x), rate, seed))
        T = side.torch
        if T is not None:  # timed only: not _torch_reference, whose float64 run would be a truth
            tx = side.to_torch(x)
            bound.refs[_ref_name(side, "PyTorch CUDA", "torch native_dropout")] = lambda: T.native_dropout(tx, rate, True)
        return bound
    return prepare


def _dropout_backward(shape, rate, seed=12345):
    def prepare(side):
        dy = side.normal(*shape)
        _, mask = F.dropout(side.normal(*shape), rate, seed)
        bound = Bound(lambda: F.dropout_backward(dy, mask, rate), inputs=(dy, mask))
        T = side.torch
        if T is not None:
            backward = T.ops.aten.native_dropout_backward
            _torch_reference(bound, side, "PyTorch CUDA", "aten native_dropout_backward",
                             lambda dy, mask: backward(dy, mask, 1.0 / (1.0 - rate)), dy, side.to_torch(mask).bool())
        return bound
    return prepare


# ---- optimizers ----------------------------------------------------------------------------------
OPTIMIZER_SIZES = (("MNIST dense1 kernel", (128, 1024)), ("4M parameters", (1 << 22,)))
QUICK_OPTIMIZER_SIZES = (("MNIST dense1 kernel", (128, 1024)),)
OPTIM_LR, OPTIM_MOMENTUM = 0.1, 0.9


def _optimizer_cases(quick):
    for label, shape in QUICK_OPTIMIZER_SIZES if quick else OPTIMIZER_SIZES:
        yield Case("sgd", "momentum 0.9", label, _optimizer_step("sgd", shape))
        yield Case("adam", "step 1", label, _optimizer_step("adam", shape))


def _optimizer_step(kind, shape):
    """One in-place update from zero state; compared on the updated parameter (torch.optim's default
    implementation on the other side; the truth: the same step on float64 copies of the starting
    parameter and the gradient). Bytes: param, state and grad read, param and state written."""
    def prepare(side):
        param, grad = side.normal(*shape), side.normal(*shape)
        state = [side.xp.zeros(shape, dtype=numpy.float32) for _ in range(1 if kind == "sgd" else 2)]
        ref_param, start = param.copy(), param.copy()  # ours steps param, torch ref_param; start stays

        def ours():
            if kind == "sgd":
                F.sgd_update(param, grad, state[0], OPTIM_LR, OPTIM_MOMENTUM)
            else:
                F.adam_update(param, grad, state[0], state[1], 1, OPTIM_LR, 0.9, ADAM_BETA_2, KERAS_ADAM_EPSILON)
            return param
        bound = Bound(ours, bytes=float(param.nbytes) * (3 + 2 * len(state)))
        T = side.torch
        if T is not None:
            def torch_optimizer(weight, weight_grad):
                weight = T.nn.Parameter(weight)
                weight.grad = weight_grad
                if kind == "sgd":
                    return weight, T.optim.SGD([weight], lr=OPTIM_LR, momentum=OPTIM_MOMENTUM)
                return weight, T.optim.Adam([weight], lr=OPTIM_LR, betas=(0.9, ADAM_BETA_2), eps=torch_adam_epsilon())

            weight, optimizer = torch_optimizer(side.to_torch(ref_param), side.to_torch(grad))

            def ref():
                optimizer.step()
                return weight.detach()

            def truth():
                weight64, optimizer64 = torch_optimizer(side.to_torch(start).double(), side.to_torch(grad).double())
                optimizer64.step()
                return weight64.detach()
            name = _ref_name(side, "PyTorch CUDA", f"torch.optim.{'SGD' if kind == 'sgd' else 'Adam'}.step")
            bound.refs[name] = ref
            bound.truth = (f"{name} in float64", truth)
        return bound
    return prepare
