"""What `cnn-gpu bench` and benchmarks/test_bench_*.py measure: every benchmark case, in one place.

A Case names an op (what ``--ops`` selects), a variant and a shape, counts its useful FLOPs, and
prepares one set of random inputs on a Side (cnn_gpu.bench.Side: CuPy on the GPU or NumPy on the
CPU, PyTorch beside it when importable). ``prepare`` returns a Bound: closures over that set that
run ours and each reference on the very same arrays (PyTorch sees them through DLPack / from_numpy
views, no copies). The report checks and times Bounds; the pytest-benchmark tests time Bound.ours.

References (FP32; the report turns TF32 off): convolution through cuDNN (torch conv2d and aten's
convolution_backward, which is what autograd calls), GEMM through cuBLAS (cupy.matmul and
torch.matmul / linear), and PyTorch's own pooling, activation, loss, batch-norm, dropout and
optimizer kernels; the training step against a PyTorch eager step of the same network with the
same weights. A reference returns its results in ours' order; None marks an output it does not
compute (not compared).

The check's truth (Bound.truth) is the first PyTorch reference evaluated in float64 on the same
device and inputs (cuDNN / cuBLAS in float64 where the reference is theirs, cuDNN choosing by its
heuristics), once per case. An FP32 reference is no independent truth: its own error may be the
larger one (autotuned cuDNN may pick FFT or Winograd algorithms), so the report measures ours AND
each FP32 reference against the truth. The exceptions: dropout's forward (torch draws another mask;
our NumPy path draws the same one bit for bit), the optimizers (torch.optim's step repeated on
float64 copies) and the training step (its PyTorch twin in float64; see _train_step).

Shapes (full suite): the seed networks' layers (seed 001 at batch 32, 128 and 1024; seed 002 at 32
and 128: its first conv's output is 20 GB at batch 1024), the 3×3 layers of ResNet-50 / VGG-16 at
batch 32 and 128, a 1×1 256→64 at 56², square GEMMs 1024..8192 and the dense layers' skinny GEMMs.
The quick suite (CI, no GPU) takes small shapes of the same layers.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy

from cnn_gpu import functional as F
from cnn_gpu.backend import asarray, to_numpy


@dataclass
class Bound:
    """One input set and the calls over it."""

    ours: Callable[[], object]
    refs: dict = field(default_factory=dict)     # reference name -> call returning ours' outputs, in order
    inputs: tuple = ()                           # arrays ours reads (with its outputs: the minimum bytes)
    truth: tuple | None = None                   # (name, call): what ours and the references are checked against
    refs_match: bool = True                      # False: the references compute another function (another RNG)
    bytes: float | None = None                   # minimum bytes, when inputs + outputs do not count them (in place)
    check_context: Callable[[], object] | None = None  # a context manager the check runs in

    def check_target(self):
        """(name, call) that ours is checked against: the truth, else the first reference when it computes
        the same function (an FP32 check, e.g. without PyTorch on the GPU), else None (nothing to check)."""
        if self.truth is not None or not self.refs_match:
            return self.truth
        return next(iter(self.refs.items()), None)


@dataclass(frozen=True)
class Case:
    """One benchmark: an op, a variant and a shape, and how to prepare its inputs and calls."""

    op: str                                   # the name --ops selects
    variant: str                              # fwd, fwd+bias+relu, bwd, train, ...
    shape: str                                # what was measured, in words
    prepare: Callable[[object], Bound]        # Side -> Bound over one fresh random input set
    flops: float = 0.0                        # useful FLOPs of one call (0: a memory-bound op)
    tol: float = 1e-5                         # bound on ‖ours − target‖ / ‖target‖
    rotate: bool = True                       # False: stateful across calls, one input set only
    check_sets: int = 1                       # input sets checked (an ill-conditioned check: each side's worst)


OPS = ("conv2d", "matmul", "linear", "train_step", "maxpool", "avgpool", "sumpool", "relu", "leaky_relu",
       "sigmoid", "tanh", "softmax", "log_softmax", "softmax_xent", "sigmoid_bce", "batchnorm", "dropout",
       "sgd", "adam")


def op_names() -> tuple:
    """The op names that ``--ops`` accepts, in report order."""
    return OPS


def cases(quick: bool = False) -> list:
    """Every case of the full suite (GPU-sized) or of the quick one (CPU-sized), in report order."""
    families = (_conv_cases, _matmul_cases, _linear_cases, _train_step_cases, _pool_cases, _activation_cases,
                _softmax_cases, _batchnorm_cases, _dropout_cases, _optimizer_cases)
    found = [case for family in families for case in family(quick)]
    order = {op: i for i, op in enumerate(OPS)}
    return sorted(found, key=lambda case: order[case.op])  # stable: a family's own order is kept


def representative_cases(quick: bool = False) -> list:
    """The first case of each (op, variant): what benchmarks/test_bench_*.py time."""
    seen, chosen = set(), []
    for case in cases(quick):
        if (case.op, case.variant) not in seen:
            seen.add((case.op, case.variant))
            chosen.append(case)
    return chosen


def _ref_name(side, library: str, call: str) -> str:
    """'cuDNN (torch conv2d)' on the GPU, 'torch conv2d (CPU)' on the CPU."""
    return f"{library} ({call})" if side.device == "cuda" else f"{call} (CPU)"


def _torch_reference(bound: Bound, side, library: str, call: str, function, *operands):
    """Add the reference `function(*operands)` (FP32, what is timed), operands as torch tensors (arrays
    of the side are viewed through DLPack / from_numpy). The first reference added this way also
    gives the bound its truth: the same function on float64 copies of the operands, made when the
    check runs (once per case, never in a timed call)."""
    T = side.torch
    tensors = [o if o is None or isinstance(o, T.Tensor) else side.to_torch(o) for o in operands]
    name = _ref_name(side, library, call)
    bound.refs[name] = lambda: function(*tensors)
    if bound.truth is None:
        def in_float64():
            with _cudnn_heuristics(T):
                return function(*(_float64_copy(t) for t in tensors))
        bound.truth = (f"{name} in float64", in_float64)


def _float64_copy(tensor):
    """A float64 copy of a floating tensor (a leaf that requires grad where the original does); an
    integer or boolean tensor (labels, indices, masks) or None as it is."""
    if tensor is None or not tensor.is_floating_point():
        return tensor
    return tensor.detach().double().requires_grad_(tensor.requires_grad)


@contextlib.contextmanager
def _cudnn_heuristics(T):
    """cuDNN choosing by its heuristics, not by autotuning: for a float64 truth, which runs once per
    shape, autotuning would time every float64 algorithm first (seconds on the large layers)."""
    saved = T.backends.cudnn.benchmark
    T.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        T.backends.cudnn.benchmark = saved


# ---- convolution ---------------------------------------------------------------------------------
# (label, C, K, H=W, kernel, padding, full-suite batches); quick: (label, C, K, H, kernel, padding, batch)
CONV_LAYERS = (
    ("seed001 conv1", 1, 32, 28, 5, 0, (32, 128, 1024)),
    ("seed001 conv2", 32, 64, 12, 5, 0, (32, 128, 1024)),
    ("seed002 conv1", 1, 512, 100, 3, 0, (32, 128)),
    ("seed002 conv2", 512, 256, 32, 3, 0, (32, 128)),
    ("seed002 conv3", 256, 128, 10, 3, 0, (32, 128)),
    ("resnet 3x3", 64, 64, 56, 3, 1, (32, 128)),
    ("resnet 3x3", 128, 128, 28, 3, 1, (32, 128)),
    ("resnet 3x3", 256, 256, 14, 3, 1, (32, 128)),
    ("resnet 3x3", 512, 512, 7, 3, 1, (32, 128)),
    ("resnet 1x1", 256, 64, 56, 1, 0, (32, 128)),
)
QUICK_CONV_LAYERS = (
    ("seed001 conv1", 1, 32, 28, 5, 0, 8),
    ("seed001 conv2", 32, 64, 12, 5, 0, 8),
    ("seed002 conv3", 256, 128, 10, 3, 0, 2),
    ("resnet 3x3", 16, 16, 14, 3, 1, 4),
)


def conv_flops(N, C, K, R, S, OH, OW) -> float:
    return 2.0 * N * K * C * R * S * OH * OW


def _conv_cases(quick):
    layers = QUICK_CONV_LAYERS if quick else [(*layer[:6], N) for layer in CONV_LAYERS for N in layer[6]]
    for label, C, K, H, k, pad, N in layers:
        OH = H + 2 * pad - k + 1
        shape = f"{label} N{N} {C}→{K} {H}² k{k} p{pad}"
        flops = conv_flops(N, C, K, k, k, OH, OH)
        yield Case("conv2d", "fwd", shape, _conv_forward(N, C, K, H, k, pad, fused=False), flops, tol=1e-4)
        yield Case("conv2d", "fwd+bias+relu", shape, _conv_forward(N, C, K, H, k, pad, fused=True), flops, tol=1e-4)
        for part in ("data", "filter"):
            yield Case("conv2d", f"bwd {part}", shape, _conv_backward(N, C, K, H, k, pad, part), flops, tol=1e-4)


def _conv_forward(N, C, K, H, k, pad, fused):
    """Bare conv against cuDNN's bare conv; fused conv+bias+ReLU against conv-with-bias then ReLU."""
    def prepare(side):
        x = side.normal(N, C, H, H)
        w = side.normal(K, C, k, k, scale=(C * k * k) ** -0.5)
        b = side.normal(K) if fused else None
        activation = "relu" if fused else None
        bound = Bound(lambda: F.conv2d(x, w, b, stride=1, padding=pad, activation=activation), inputs=(x, w, b))
        T = side.torch
        if T is not None:
            conv = T.nn.functional.conv2d
            if fused:
                _torch_reference(bound, side, "cuDNN", "torch conv2d+bias, relu",
                                 lambda x, w, b: T.relu(conv(x, w, b, 1, pad)), x, w, b)
            else:
                _torch_reference(bound, side, "cuDNN", "torch conv2d", lambda x, w: conv(x, w, None, 1, pad), x, w)
        return bound
    return prepare


def _conv_backward(N, C, K, H, k, pad, part):
    """Backward-data (dx, db) or backward-filter (dw, db) against aten.convolution_backward with the same
    output mask (cuDNN backward-data or backward-filter, and its bias reduction). db is in both: ours
    computes it on every backward call, and PyTorch's autograd asks for it with either gradient (a
    network's first layer needs dw and db, every other layer all three)."""
    data = part == "data"

    def prepare(side):
        OH = H + 2 * pad - k + 1
        x = side.normal(N, C, H, H)
        w = side.normal(K, C, k, k, scale=(C * k * k) ** -0.5)
        dy = side.normal(N, K, OH, OH)
        # backward-data reads x's shape only, backward-filter w's shape only
        bound = Bound(lambda: F.conv2d_backward(dy, x, w, stride=1, padding=pad, compute_dx=data, compute_dw=not data),
                      inputs=(dy, w) if data else (dy, x))
        T = side.torch
        if T is not None:
            backward = T.ops.aten.convolution_backward
            _torch_reference(bound, side, "cuDNN", f"aten convolution_backward, {'dx' if data else 'dw'} + db",
                             lambda dy, x, w: backward(dy, x, w, [K], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                                                       [data, not data, True]), dy, x, w)
        return bound
    return prepare


# ---- GEMM ----------------------------------------------------------------------------------------
# (M, K, N): squares, then the dense layers' skinny products (batch × features × units).
GEMMS = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192),
         (128, 1024, 128), (1024, 1024, 128), (128, 128, 64), (128, 64, 10), (128, 512, 1))
QUICK_GEMMS = ((256, 256, 256), (32, 1024, 128))


def _matmul_cases(quick):
    for M, K, N in QUICK_GEMMS if quick else GEMMS:
        yield Case("matmul", "fwd", f"{M}×{K} @ {K}×{N}", _matmul(M, K, N), 2.0 * M * K * N, tol=1e-4)


def _matmul(M, K, N):
    def prepare(side):
        a, b = side.normal(M, K), side.normal(K, N)
        bound = Bound(lambda: F.matmul(a, b), inputs=(a, b))
        if side.device == "cuda":
            bound.refs["cuBLAS (cupy.matmul)"] = lambda: side.xp.matmul(a, b)
        T = side.torch
        if T is not None:
            _torch_reference(bound, side, "cuBLAS", "torch.matmul", T.matmul, a, b)
        return bound
    return prepare


# (label, in, out, activation, batches): the dense layers of the seed networks.
DENSE_LAYERS = (
    ("seed001 dense1", 1024, 128, "relu", (32, 128, 1024)),
    ("seed001 dense2", 128, 64, "relu", (32, 128, 1024)),
    ("seed001 dense3", 64, 10, None, (32, 128, 1024)),
    ("seed002 dense", 512, 1, None, (128,)),
)


def _linear_cases(quick):
    layers = [(*layer[:4], N) for layer in DENSE_LAYERS for N in ((32,) if quick else layer[4])]
    if quick:
        layers = layers[:2]
    for label, n_in, n_out, activation, N in layers:
        shape = f"{label} N{N} {n_in}→{n_out}"
        flops = 2.0 * N * n_in * n_out
        variant = f"fwd+bias+{activation}" if activation else "fwd+bias"
        yield Case("linear", variant, shape, _linear_forward(N, n_in, n_out, activation), flops, tol=1e-4)
        yield Case("linear", "bwd", shape, _linear_backward(N, n_in, n_out), 2 * flops, tol=1e-4)


def _linear_forward(N, n_in, n_out, activation):
    def prepare(side):
        x, w, b = side.normal(N, n_in), side.normal(n_out, n_in, scale=n_in ** -0.5), side.normal(n_out)
        bound = Bound(lambda: F.linear(x, w, b, activation=activation), inputs=(x, w, b))
        T = side.torch
        if T is not None:
            linear = T.nn.functional.linear
            if activation:
                act = getattr(T, activation)
                _torch_reference(bound, side, "cuBLAS", f"torch linear, {activation}",
                                 lambda x, w, b: act(linear(x, w, b)), x, w, b)
            else:
                _torch_reference(bound, side, "cuBLAS", "torch linear", linear, x, w, b)
        return bound
    return prepare


def _linear_backward(N, n_in, n_out):
    """(dx, dw, db) = (dy·W, dyᵀ·x, Σ dy): the three calls autograd makes for torch linear."""
    def prepare(side):
        x, w, dy = side.normal(N, n_in), side.normal(n_out, n_in, scale=n_in ** -0.5), side.normal(N, n_out)
        bound = Bound(lambda: F.linear_backward(dy, x, w), inputs=(dy, x, w))
        T = side.torch
        if T is not None:
            _torch_reference(bound, side, "cuBLAS", "torch mm ×2 + sum",
                             lambda dy, x, w: (T.mm(dy, w), T.mm(dy.t(), x), dy.sum(0)), dy, x, w)
        return bound
    return prepare


# ---- the training step ---------------------------------------------------------------------------
def _train_step_cases(quick):
    for net, N in (((SEED001, 32),) if quick else ((SEED001, 128), (SEED002, 128))):
        yield Case("train_step", "fwd+bwd+adam", f"{net.label} N{N}", _train_step(net, N),
                   3 * net.forward_flops(N), tol=1e-4, rotate=False, check_sets=net.check_sets)
    if not quick:
        for net, N in ((SEED001, 128), (SEED002, 128)):
            yield Case("train_step", "fit step, CUDA graph", f"{net.label} N{N}", _graphed_fit_step(net, N),
                       3 * net.forward_flops(N), tol=1e-4, rotate=False)


def _graphed_fit_step(net: "SeedNetwork", N):
    """The step Sequential.fit runs with compile(cuda_graph=True): captured on its second call, replayed
    from then on (the timing's warm-up covers both). Its correctness is not checked here: it is
    tests/test_graph_capture.py's job (graph fit == eager fit, bit for bit); the eager step above is
    the one checked against the float64 truth. Reference: the same PyTorch eager step as above."""
    def prepare(side):
        from cnn_gpu.losses import BinaryCrossentropy, SparseCategoricalCrossentropy
        from cnn_gpu.models import Sequential
        from cnn_gpu.optimizers import Adam

        C, H, W = net.input_shape
        model = Sequential(net.ours(), seed=0)
        model.build((H, W, C))  # the user's channels-last layout
        binary = net.classes == 1
        loss = BinaryCrossentropy(from_logits=True) if binary else SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=Adam(learning_rate=1e-3, beta_2=ADAM_BETA_2, epsilon=KERAS_ADAM_EPSILON),
                      loss=loss, metrics=["accuracy"], cuda_graph=True)
        x = side.normal(N, C, H, W)  # the layers' NCHW layout, as the runner takes it
        labels = _step_labels(side, net, N)
        targets = asarray(model._targets(to_numpy(labels), N))  # as fit hands them to its runner
        steps = model._training_steps(N)
        bound = Bound(lambda: steps.run(x, targets), inputs=(x, labels), bytes=0.0, refs_match=False)
        if side.torch is not None:
            layers = model.layers
            step, _, _ = _torch_step(side, net, layers, x, labels)
            bound.refs[_ref_name(side, "cuDNN", "torch eager step")] = step
        return bound
    return prepare


@dataclass(frozen=True)
class SeedNetwork:
    """A seed network as our layers and as its PyTorch twin, with its loss."""

    label: str
    input_shape: tuple          # (C, H, W)
    classes: int                # 1: sigmoid + binary cross-entropy; else softmax + cross-entropy
    ours: Callable[[], list]    # -> cnn_gpu layers; the last is the Dense whose logits the loss takes
    twin: Callable[[object], object]  # torch -> torch.nn.Sequential producing logits
    forward_flops_per_image: float
    # input sets its training step's check takes, each side judged by its worst: 3 for seed 002, whose FP32
    # steps land 2e-5 to 3e-3 from float64 depending on the inputs (both sides; benchmarks/NOTES.md, run 8)
    check_sets: int = 1

    def forward_flops(self, N):
        return N * self.forward_flops_per_image


def _seed001_layers():
    from cnn_gpu.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D

    return [Conv2D(32, 5, activation="relu"), MaxPooling2D(2), Conv2D(64, 5, activation="relu"), MaxPooling2D(2),
            Flatten(), Dense(128, activation="relu"), Dense(64, activation="relu"), Dropout(0.3), Dense(10)]


def _seed001_twin(T):
    nn = T.nn
    return nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 64),
                         nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))


def _seed002_layers():
    from cnn_gpu.layers import Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D

    layers = []
    for filters in (512, 256, 128):
        layers += [Conv2D(filters, 3), BatchNormalization(), Activation("relu"), MaxPooling2D(3), Dropout(0.1)]
    return layers + [Flatten(), Dense(1)]


def _seed002_twin(T):
    nn = T.nn
    modules, channels = [], 1
    for filters in (512, 256, 128):
        # Keras BatchNormalization(momentum=0.99, epsilon=1e-3) is torch's momentum 0.01, eps 1e-3
        modules += [nn.Conv2d(channels, filters, 3), nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01), nn.ReLU(),
                    nn.MaxPool2d(3), nn.Dropout(0.1)]
        channels = filters
    return nn.Sequential(*modules, nn.Flatten(), nn.Linear(512, 1))


SEED001 = SeedNetwork(
    "seed001 28²×1", (1, 28, 28), 10, _seed001_layers, _seed001_twin,
    conv_flops(1, 1, 32, 5, 5, 24, 24) + conv_flops(1, 32, 64, 5, 5, 8, 8) + 2.0 * (1024 * 128 + 128 * 64 + 64 * 10))
SEED002 = SeedNetwork(
    "seed002 100²×1", (1, 100, 100), 1, _seed002_layers, _seed002_twin,
    conv_flops(1, 1, 512, 3, 3, 98, 98) + conv_flops(1, 512, 256, 3, 3, 30, 30)
    + conv_flops(1, 256, 128, 3, 3, 8, 8) + 2.0 * 512, check_sets=3)

KERAS_ADAM_EPSILON, ADAM_BETA_2 = 1e-7, 0.999


def torch_adam_epsilon(keras_epsilon=KERAS_ADAM_EPSILON, beta_2=ADAM_BETA_2) -> float:
    """Keras's Adam adds epsilon after the bias correction sqrt(1 - beta_2^t), torch before it: this
    torch epsilon makes the two updates identical at step 1, the step every check compares."""
    return keras_epsilon / (1 - beta_2) ** 0.5


TRAIN_STEP_CHECK = "loss + first and last kernels' gradients of step 1 (before the update), dropout off"


def _step_labels(side, net: SeedNetwork, N):
    """Random targets for a step of net: (N, 1) floats in {0, 1} for a binary net, else N class indices."""
    if net.classes == 1:
        return (side.uniform(N, 1) > 0.5).astype(numpy.float32)
    return side.labels(N, net.classes)


def _train_step(net: SeedNetwork, N):
    """Forward (training mode), fused loss + gradient, backward, Adam on every parameter.

    Check: the first step with dropout off on both sides (their masks differ): the loss and the
    gradients of the first and last kernels, taken before the Adam update (after it, m / sqrt(v) is
    ±1 wherever a gradient is tiny, and rounding noise would decide the sign). Truth: the PyTorch
    twin in float64 from the same weights, forward and backward only. Timed: steps with dropout on,
    Adam included, the weights moving as in training.
    """
    def prepare(side):
        from cnn_gpu.layers import Dropout
        from cnn_gpu.optimizers import Adam

        layers = net.ours()
        layers[0].needs_input_gradient = False  # as Sequential does, and as torch does for an input without grad
        x = side.normal(N, *net.input_shape)
        labels = _step_labels(side, net, N)
        if net.classes == 1:
            loss_fn = F.sigmoid_binary_cross_entropy
        else:
            loss_fn = functools.partial(F.softmax_cross_entropy, check_labels=False)  # labels are ours, in range
        h = x
        for layer in layers:  # builds every layer for this input shape
            h = layer.forward(h, training=False)
        params = {f"{i}/{name}": p for i, layer in enumerate(layers) for name, p in layer.params.items()}
        optimizer = Adam(learning_rate=1e-3, beta_2=ADAM_BETA_2, epsilon=KERAS_ADAM_EPSILON)
        first, last = layers[0], layers[-1]

        def ours():
            h = x
            for layer in layers[:-1]:
                h = layer.forward(h, training=True)
            loss, d = loss_fn(last.forward(h, training=True, logits=True), labels)
            for layer in reversed(layers):
                d = layer.backward(d)
            optimizer.apply(params, {f"{i}/{n}": g for i, layer in enumerate(layers) for n, g in layer.grads.items()})
            return loss, first.grads["kernel"], last.grads["kernel"]

        bound = Bound(ours, inputs=(x, labels), bytes=0.0)
        twin_dropouts = []
        T = side.torch
        if T is not None:
            step, twin, gradients_in_float64 = _torch_step(side, net, layers, x, labels)
            name = _ref_name(side, "cuDNN", "torch eager step")
            bound.refs[name] = step
            bound.truth = (f"{name} in float64: {TRAIN_STEP_CHECK}", gradients_in_float64)
            twin_dropouts = [module for module in twin if isinstance(module, T.nn.Dropout)]

        @contextlib.contextmanager
        def dropout_off():
            """The two sides draw different dropout masks: the checked step runs without dropout."""
            ours_dropouts = [layer for layer in layers if isinstance(layer, Dropout)]
            rates, ps = [layer.rate for layer in ours_dropouts], [module.p for module in twin_dropouts]
            for layer in ours_dropouts:
                layer.rate = 0.0
            for module in twin_dropouts:
                module.p = 0.0
            try:
                yield
            finally:
                for layer, rate in zip(ours_dropouts, rates):
                    layer.rate = rate
                for module, p in zip(twin_dropouts, ps):
                    module.p = p
        bound.check_context = dropout_off
        return bound
    return prepare


def _torch_step(side, net: SeedNetwork, layers, x, labels):
    """(step, twin, gradients_in_float64): the PyTorch eager step of the same network, starting from
    our weights, and the check's truth: a float64 copy of the twin made now (before any step), without
    dropout, giving the loss and the first and last kernels' gradients of step 1."""
    T = side.torch
    twin = net.twin(T).to("cuda" if side.device == "cuda" else "cpu")
    weighted = [m for m in twin if hasattr(m, "weight")]
    ours_weighted = [layer for layer in layers if layer.params]
    with T.no_grad():
        for module, layer in zip(weighted, ours_weighted, strict=True):
            names = ("gamma", "beta") if "gamma" in layer.params else ("kernel", "bias")
            module.weight.copy_(side.to_torch(layer.params[names[0]]))
            module.bias.copy_(side.to_torch(layer.params[names[1]]))
            if "moving_mean" in layer.state:
                module.running_mean.copy_(side.to_torch(layer.state["moving_mean"]))
                module.running_var.copy_(side.to_torch(layer.state["moving_variance"]))
    twin.train()
    twin64 = copy.deepcopy(twin).double()
    for module in twin64:
        if isinstance(module, T.nn.Dropout):
            module.p = 0.0
    optimizer = T.optim.Adam(twin.parameters(), lr=1e-3, betas=(0.9, ADAM_BETA_2), eps=torch_adam_epsilon())
    tx, tlabels = side.to_torch(x), side.to_torch(labels)
    loss_fn = T.nn.BCEWithLogitsLoss() if net.classes == 1 else T.nn.CrossEntropyLoss()

    def gradients_of(model):
        """A call (x, labels) -> (loss, first kernel's gradient, last kernel's) of `model`: forward and
        backward from zeroed gradients."""
        kernels = [m.weight for m in model if hasattr(m, "weight")]

        def forward_backward(x, labels):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), labels)
            loss.backward()
            return loss.detach(), kernels[0].grad, kernels[-1].grad
        return forward_backward

    gradients, gradients64 = gradients_of(twin), gradients_of(twin64)

    def step():
        outputs = gradients(tx, tlabels)
        optimizer.step()
        return outputs

    def gradients_in_float64():
        with _cudnn_heuristics(T):
            return gradients64(_float64_copy(tx), _float64_copy(tlabels))
    return step, twin, gradients_in_float64


# ---- pooling -------------------------------------------------------------------------------------
# (label, C, H=W, kernel, stride, padding, batches)
POOLS = (
    ("seed001 pool1", 32, 24, 2, 2, 0, (32, 128, 1024)),
    ("seed001 pool2", 64, 8, 2, 2, 0, (32, 128, 1024)),
    ("seed002 pool1", 512, 98, 3, 3, 0, (32, 128)),
    ("seed002 pool2", 256, 30, 3, 3, 0, (32, 128)),
    ("seed002 pool3", 128, 8, 3, 3, 0, (32, 128)),
    ("resnet stem", 64, 112, 3, 2, 1, (32,)),
)
QUICK_POOLS = (("seed001 pool1", 32, 24, 2, 2, 0, (8,)), ("seed002 pool3", 128, 8, 3, 3, 0, (2,)))
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
# relu: the seed 001 conv1 output at its three batches, a ResNet and the seed 002 conv1 output;
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
    yield Case("sigmoid_bce", "loss+grad", "seed002 N128 ×1" if not quick else "N32 ×1",
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
# (label, N, C, H=W): the seed 002 network's BatchNormalization inputs, and a ResNet one.
BATCHNORMS = tuple((label, N, C, H) for label, C, H in (("seed002 bn1", 512, 98), ("seed002 bn2", 256, 30),
                                                         ("seed002 bn3", 128, 8)) for N in (32, 128)) + (
    ("resnet bn", 128, 64, 56),)
QUICK_BATCHNORMS = (("seed002 bn3", 2, 128, 8), ("small", 4, 16, 14))
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
DROPOUTS = (("seed001 dense2", (128, 64), 0.3), ("seed002 pool1", (128, 512, 32, 32), 0.1))
QUICK_DROPOUTS = (("seed001 dense2", (32, 64), 0.3), ("small", (4, 64, 12, 12), 0.1))


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
OPTIMIZER_SIZES = (("seed001 dense1 kernel", (128, 1024)), ("4M parameters", (1 << 22,)))
QUICK_OPTIMIZER_SIZES = (("seed001 dense1 kernel", (128, 1024)),)
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
