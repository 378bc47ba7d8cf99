"""Dense, Flatten, Dropout, and the InputLayer (keras.Input) a Sequential model may start with.

Flatten flattens the layers' NCHW layout, i.e. in (C, H, W) order, as a view: no copy, and the
order Keras itself uses for channels-first data. Keras on channels-last data flattens (H, W, C), so a
Dense kernel after Flatten holds its rows in another order than Keras's: a model tells such a Dense the
image's shape (``flattened_image``), and its get_weights / set_weights reorder the rows to Keras's.
"""
from __future__ import annotations

import numpy

from cnn_gpu import functional as F
from cnn_gpu.layers.activation import NamedActivation, check_activation
from cnn_gpu import initializers
from cnn_gpu.initializers import initializer_config
from cnn_gpu.layers.base import Layer


class Dense(Layer):
    """Dense(units, activation=None, use_bias=True): y = activation(x · kernelᵀ + bias) on (N, features).

    kernel is (units, features), the layout linear takes (Keras stores its transpose, which get_weights /
    set_weights exchange); kernel_initializer (Glorot-uniform) and bias_initializer (zeros) as Keras.
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        self.units = units
        self.activation = check_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._function = NamedActivation(self.activation)
        self._x = self._y = self._z = self._applied = None

    def output_shape_for(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.describe()} needs (N, features) input; got per-sample shape "
                             f"{tuple(input_shape)}: add a Flatten layer before it")
        return (self.units,)

    def build_params(self, input_shape, rng):
        features = input_shape[0]
        kernel = self.kernel_initializer((self.units, features), fan_in=features, fan_out=self.units, rng=rng)
        self.params = {"kernel": self.new_param(kernel)}
        if self.use_bias:
            self.params["bias"] = self.new_param(self.bias_initializer((self.units,), rng=rng))

    def forward(self, x, training=False, logits=False):
        self.ensure_built(x)
        self._applied = NamedActivation(None) if logits else self._function
        z = F.linear(x, self.params["kernel"], self.params.get("bias"), activation=self._applied.epilogue,
                     negative_slope=self._applied.negative_slope)
        self._x, self._y = x, self._applied.after_fused_op(z)
        self._z = z if self._applied.grad_needs_input else None
        return self._y

    def backward(self, dy):
        y = self.saved(self._y)
        dz = self._applied.grad(dy, y, self._z)
        dx, dw, db = F.linear_backward(dz, self._x, self.params["kernel"])
        self.grads = {"kernel": dw}
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation, "use_bias": self.use_bias,
                **initializer_config(self)}

    flattened_image = None  # (C, H, W) when the input is that image flattened from channels-last data (above)

    def keras_layout(self, key, value):
        """(units, features) -> Keras's (features, units), rows in (H, W, C) order after a flattened image."""
        if key != "kernel":
            return value
        if self.flattened_image is None:
            return value.T
        C, H, W = self.flattened_image
        return value.T.reshape(C, H, W, -1).transpose(1, 2, 0, 3).reshape(C * H * W, -1)

    def from_keras_layout(self, key, value):
        if key != "kernel":
            return value
        if self.flattened_image is None:
            return value.T
        C, H, W = self.flattened_image
        return value.reshape(H, W, C, -1).transpose(2, 0, 1, 3).reshape(C * H * W, -1).T


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
        if not (isinstance(rate, (int, float)) and 0 <= rate < 1):
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
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


class InputLayer(Layer):
    """Keras's InputLayer: the per-sample shape a Sequential model takes, nothing computed.

    InputLayer(shape=None, batch_size=None, dtype=None, batch_shape=None, name=None) (Keras 2's input_shape
    is accepted too). A dimension given as None leaves the model to be built from its first data.
    A Sequential does not keep it among model.layers, as Keras does not.
    """

    def __init__(self, shape=None, batch_size=None, dtype=None, batch_shape=None, name=None, input_shape=None,
                 sparse=None, **kwargs):
        if sparse:
            raise ValueError("sparse inputs are not supported")
        given = [v for v in (shape, batch_shape, input_shape) if v is not None]
        if len(given) != 1:
            raise ValueError("InputLayer / Input needs exactly one of shape=, batch_shape= (or input_shape=)")
        sample_shape = tuple(given[0] if shape is not None or input_shape is not None else given[0][1:])
        if not sample_shape or not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
                                       for v in sample_shape):
            raise ValueError(f"shape must be a non-empty tuple of positive ints (or None), got {given[0]!r}")
        fixed = None if None in sample_shape else sample_shape
        super().__init__(input_shape=fixed, name=name, dtype=dtype or "float32", **kwargs)
        self.shape = sample_shape
        self.batch_size = batch_size

    def output_shape_for(self, input_shape):
        return input_shape

    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        config = super().get_config()
        config.pop("input_shape", None)  # shape says it (with its None dimensions)
        return {**config, "shape": list(self.shape), "batch_size": self.batch_size}


def Input(shape=None, batch_size=None, dtype=None, sparse=None, batch_shape=None, name=None, tensor=None,
          optional=False):
    """keras.Input: here the InputLayer itself, which Sequential([keras.Input(shape=...), ...]) takes first."""
    if tensor is not None or optional:
        raise ValueError("Input(tensor=..., optional=True) is not supported: cnn_gpu builds Sequential models only")
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, sparse=sparse, batch_shape=batch_shape, name=name)
