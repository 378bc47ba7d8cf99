"""Benchmark cases of whole training steps: the example networks (cnn_gpu.networks) trained by the step fit runs
(Sequential.make_train_step), eagerly and replayed from a CUDA graph, against a PyTorch eager step of a twin
network holding the same weights."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import numpy

from cnn_gpu import networks
from cnn_gpu.backend import asarray, to_numpy
from cnn_gpu.bench.cases.base import (ADAM_BETA_2, KERAS_ADAM_EPSILON, Bound, Case, _cudnn_heuristics, _float64_copy,
                                      _ref_name, torch_adam_epsilon)
from cnn_gpu.bench.cases.kernels import conv_flops


def _train_step_cases(quick):
    for net, N in (((MNIST, 32),) if quick else ((MNIST, 128), (NET_100X100, 128))):
        yield Case("train_step", "fwd+bwd+adam", f"{net.label} N{N}", _train_step(net, N),
                   3 * net.forward_flops(N), tol=1e-4, rotate=False, check_sets=net.check_sets)
    if not quick:
        for net, N in ((MNIST, 128), (NET_100X100, 128)):
            yield Case("train_step", "fit step, CUDA graph", f"{net.label} N{N}", _graphed_fit_step(net, N),
                       3 * net.forward_flops(N), tol=1e-4, rotate=False)


@dataclass(frozen=True)
class BenchNetwork:
    """An example network as our model (built by cnn_gpu.networks) and as its PyTorch twin, with its loss."""

    label: str
    build: Callable[..., object]      # seed -> an uncompiled cnn_gpu Sequential
    loss: str                         # its Keras loss (fused with the last activation: the step takes logits)
    input_shape: tuple                # (C, H, W)
    classes: int                      # 1: sigmoid + binary cross-entropy; else softmax + cross-entropy
    twin: Callable[[object], object]  # torch -> torch.nn.Sequential producing logits
    forward_flops_per_image: float
    # input sets its training step's check takes, each side judged by its worst: 3 for the 100×100 network, whose
    # FP32 steps land 2e-5 to 3e-3 from float64 depending on the inputs, on both sides (benchmarks/NOTES.md)
    check_sets: int = 1

    def forward_flops(self, N):
        return N * self.forward_flops_per_image

    def model(self, cuda_graph: bool, metrics: list):
        """Our model compiled as the benchmark trains it: Adam with Keras's defaults but beta_2 and epsilon the
        twin's (ADAM_BETA_2, KERAS_ADAM_EPSILON)."""
        from cnn_gpu.optimizers import Adam

        model = self.build(seed=0)
        model.compile(optimizer=Adam(learning_rate=1e-3, beta_2=ADAM_BETA_2, epsilon=KERAS_ADAM_EPSILON),
                      loss=self.loss, metrics=metrics, cuda_graph=cuda_graph)
        return model


def _mnist_twin(T):
    nn = T.nn
    return nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 64),
                         nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))


def _twin_100x100(T):
    nn = T.nn
    modules, channels = [], 1
    for filters in (512, 256, 128):
        # Keras BatchNormalization(momentum=0.99, epsilon=1e-3) is torch's momentum 0.01, eps 1e-3
        modules += [nn.Conv2d(channels, filters, 3), nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01), nn.ReLU(),
                    nn.MaxPool2d(3), nn.Dropout(0.1)]
        channels = filters
    return nn.Sequential(*modules, nn.Flatten(), nn.Linear(512, 1))


MNIST = BenchNetwork(
    "MNIST network 28²×1", networks.mnist_cnn, "sparse_categorical_crossentropy", (1, 28, 28), 10, _mnist_twin,
    conv_flops(1, 1, 32, 5, 5, 24, 24) + conv_flops(1, 32, 64, 5, 5, 8, 8) + 2.0 * (1024 * 128 + 128 * 64 + 64 * 10))
NET_100X100 = BenchNetwork(
    "100×100 network", networks.cnn_100x100, "binary_crossentropy", (1, 100, 100), 1, _twin_100x100,
    conv_flops(1, 1, 512, 3, 3, 98, 98) + conv_flops(1, 512, 256, 3, 3, 30, 30)
    + conv_flops(1, 256, 128, 3, 3, 8, 8) + 2.0 * 512, check_sets=3)

TRAIN_STEP_CHECK = "loss + first and last kernels' gradients of step 1 (before the update), dropout off"


def _step_labels(side, net: BenchNetwork, N):
    """Random targets for a step of net: (N, 1) floats in {0, 1} for a binary net, else N class indices."""
    if net.classes == 1:
        return (side.uniform(N, 1) > 0.5).astype(numpy.float32)
    return side.labels(N, net.classes)


def _train_step(net: BenchNetwork, N):
    """The eager training step Sequential.fit runs (make_train_step): forward (training mode), the loss fused with
    its gradient, backward, Adam on every parameter.

    Check: the first step with dropout off on both sides (their masks differ): the loss and the
    gradients of the first and last kernels, taken before the Adam update (after it, m / sqrt(v) is
    ±1 wherever a gradient is tiny, and rounding noise would decide the sign). Truth: the PyTorch
    twin in float64 from the same weights, forward and backward only. Timed: steps with dropout on,
    Adam included, the weights moving as in training.
    """
    def prepare(side):
        from cnn_gpu.layers import Dropout

        model = net.model(cuda_graph=False, metrics=[])
        x = side.normal(N, *net.input_shape)  # the layers' NCHW layout, as the step takes it
        labels = _step_labels(side, net, N)
        targets = asarray(model.prepare_targets(to_numpy(labels)))
        step = model.make_train_step(N)
        layers = model.layers
        first, last = layers[0], layers[-1]

        def ours():
            loss = step(x, targets)
            return loss, first.grads["kernel"], last.grads["kernel"]

        bound = Bound(ours, inputs=(x, labels), bytes=0.0)
        twin_dropouts = []
        T = side.torch
        if T is not None:
            reference, twin, gradients_in_float64 = _torch_step(side, net, layers, x, labels)
            name = _ref_name(side, "cuDNN", "torch eager step")
            bound.refs[name] = reference
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


def _graphed_fit_step(net: BenchNetwork, N):
    """The step Sequential.fit runs with compile(cuda_graph=True): captured on its second call, replayed
    from then on (the timing's warm-up covers both). Its correctness is not checked here: it is
    tests/test_graph_capture.py's job (graph fit == eager fit, bit for bit); the eager step above is
    the one checked against the float64 truth. Reference: the same PyTorch eager step as above."""
    def prepare(side):
        model = net.model(cuda_graph=True, metrics=["accuracy"])
        x = side.normal(N, *net.input_shape)  # the layers' NCHW layout, as the step takes it
        labels = _step_labels(side, net, N)
        targets = asarray(model.prepare_targets(to_numpy(labels)))
        step = model.make_train_step(N)
        bound = Bound(lambda: step(x, targets), inputs=(x, labels), bytes=0.0, refs_match=False)
        if side.torch is not None:
            reference, _, _ = _torch_step(side, net, model.layers, x, labels)
            bound.refs[_ref_name(side, "cuDNN", "torch eager step")] = reference
        return bound
    return prepare


def _torch_step(side, net: "BenchNetwork", layers, x, labels):
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
