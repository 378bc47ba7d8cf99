"""Dense, Flatten and Dropout.

Flatten flattens the layers' NCHW layout, i.e. in (C, H, W) order, as a view: no copy, and the
order Keras itself uses for channels-first data. (Keras on channels-last data flattens (H, W, C), so
a Dense kernel after Flatten is not position-for-position Keras's; nothing here depends on it.)
"""
from __future__ import annotations

import numpy

from cnn_gpu import functional as F
from cnn_gpu.layers.activation import NamedActivation, check_activation
from cnn_gpu.layers.base import Layer, glorot_uniform
from cnn_gpu.ops.arrays import real_number


class Dense(Layer):
    """Dense(units, activation=None, use_bias=True): y = activation(x · kernelᵀ + bias) on (N, features).

    kernel is (units, features), the layout linear takes (Keras stores its transpose); Glorot-uniform.
    """

    def __init__(self, units, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        self.units = units
        self.activation = check_activation(activation)
        self.use_bias = bool(use_bias)
        self._function = NamedActivation(self.activation)
        self._x = self._y = self._applied = None

    def output_shape_for(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.describe()} needs (N, features) input; got per-sample shape "
                             f"{tuple(input_shape)}: add a Flatten layer before it")
        return (self.units,)

    def build_params(self, input_shape, rng):
        features = input_shape[0]
        self.params = {"kernel": self.new_param(glorot_uniform(rng, (self.units, features), features, self.units))}
        if self.use_bias:
            self.params["bias"] = self.new_param(numpy.zeros(self.units))

    def forward(self, x, training=False, logits=False):
        self.ensure_built(x)
        self._applied = NamedActivation(None) if logits else self._function
        y = F.linear(x, self.params["kernel"], self.params.get("bias"), activation=self._applied.epilogue,
                     negative_slope=self._applied.negative_slope)
        self._x, self._y = x, self._applied.after_fused_op(y)
        return self._y

    def backward(self, dy):
        y = self.saved(self._y)
        dz = self._applied.grad(dy, y)
        dx, dw, db = F.linear_backward(dz, self._x, self.params["kernel"])
        self.grads = {"kernel": dw}
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation, "use_bias": self.use_bias}


class Flatten(Layer):
    """(N, C, H, W) -> (N, C·H·W), in the layers' (C, H, W) order (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._x_shape = None

    def output_shape_for(self, input_shape):
        return (int(numpy.prod(input_shape)),)

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._x_shape = x.shape
        return F.flatten(x)

    def backward(self, dy):
        return F.flatten_backward(dy, self.saved(self._x_shape))


class Dropout(Layer):
    """Dropout(rate, seed=None): in training, zero each element with probability rate and scale the
    rest by 1 / (1 - rate); the identity in inference.

    Each training call draws a fresh mask seed from the layer's own generator, seeded by ``seed``
    (or, when None, from the rng the layer is built with: a model's seed makes it reproducible).
    That seed is the layer's step scalar (see cnn_gpu.layers.base): a captured CUDA-graph step reads
    it from a device array, written by the host from the same generator before each replay.
    """

    step_scalar_dtypes = (numpy.dtype(numpy.uint64),)

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = real_number("rate", rate, 0, 1, high_open=True)
        self.seed = seed
        self._mask_seeds = None
        self._seed_source = None  # a one-element device array the seed is read from, or None: draw it
        self._mask = None
        self._training = None  # the mode of the last forward

    def build_params(self, input_shape, rng):
        self._mask_seeds = numpy.random.default_rng(self.seed if self.seed is not None else rng.integers(2**63))

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._training = bool(training)
        if not training:
            self._mask = None
            return x
        seed = self._draw_seed() if self._seed_source is None else self._seed_source
        y, self._mask = F.dropout(x, self.rate, seed)
        return y

    def _draw_seed(self) -> int:
        return int(self._mask_seeds.integers(2**63))

    def next_step_scalars(self):
        return (self._draw_seed(),)

    def read_step_scalars_from(self, arrays):
        self._seed_source = None if arrays is None else arrays[0]

    def backward(self, dy):
        if not self.saved(self._training, "forward(x)"):
            return dy  # the identity's backward, after an inference forward
        return F.dropout_backward(dy, self._mask, self.rate)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
