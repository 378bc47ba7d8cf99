"""Conv2D: Keras's 2-D convolution layer over conv2d, with the bias and activation fused in its epilogue.

Parameters: kernel (filters, C, R, S), the op's layout (Keras stores (R, S, C, filters); get_weights /
set_weights exchange Keras's), from kernel_initializer (Glorot-uniform by default) with fan_in = C·R·S
and fan_out = filters·R·S as Keras; bias (filters,), from bias_initializer (zeros).
"""
from __future__ import annotations


from cnn_gpu import functional as F
from cnn_gpu.layers.activation import NamedActivation, check_activation, check_softmax_input
from cnn_gpu import initializers
from cnn_gpu.initializers import initializer_config
from cnn_gpu.layers.base import Layer
from cnn_gpu.ops.geometry import as_pair, window_geometry

PADDINGS = ("valid", "same")


def check_padding(padding) -> str:
    """'valid' or 'same' (Keras's two paddings, any case), or a ValueError naming padding."""
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return padding.lower()


def spatial_input(layer, input_shape) -> tuple:
    """(C, H, W) of a layer that needs images, or a ValueError naming the layer and the shape."""
    if len(input_shape) != 3:
        raise ValueError(f"{layer.describe()} needs images, per-sample shape (C, H, W) in the layers' layout; "
                         f"got per-sample shape {tuple(input_shape)}")
    return tuple(input_shape)


class Conv2D(Layer):
    """Conv2D(filters, kernel_size, strides=1, padding='valid', activation=None, use_bias=True,
    kernel_initializer='glorot_uniform', bias_initializer='zeros')."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        self.filters = filters
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.strides = as_pair("strides", strides, 1)
        self.padding = check_padding(padding)
        self.activation = check_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._function = NamedActivation(self.activation)
        self._x = self._y = self._z = self._applied = None

    def output_shape_for(self, input_shape):
        C, H, W = spatial_input(self, input_shape)
        g = window_geometry((1, C, H, W), self.kernel_size, self.strides, self.padding, x_name="input")
        output_shape = (self.filters, g.OH, g.OW)
        check_softmax_input(self._function, output_shape, self)
        return output_shape

    def build_params(self, input_shape, rng):
        C = input_shape[0]
        R, S = self.kernel_size
        shape = (self.filters, C, R, S)
        kernel = self.kernel_initializer(shape, fan_in=C * R * S, fan_out=self.filters * R * S, rng=rng)
        self.params = {"kernel": self.new_param(kernel)}
        if self.use_bias:
            self.params["bias"] = self.new_param(self.bias_initializer((self.filters,), rng=rng))

    def accepts(self, sample_shape):
        # Any image size works with the same kernel; the channels must match.
        return len(sample_shape) == 3 and sample_shape[0] == self.built_shape[0]

    def forward(self, x, training=False, logits=False):
        self.ensure_built(x)
        self._applied = NamedActivation(None) if logits else self._function
        z = F.conv2d(x, self.params["kernel"], self.params.get("bias"), self.strides, self.padding,
                     activation=self._applied.epilogue, negative_slope=self._applied.negative_slope)
        self._x, self._y = x, self._applied.after_fused_op(z)
        self._z = z if self._applied.grad_needs_input else None
        return self._y

    def backward(self, dy):
        y = self.saved(self._y)
        dz = self._applied.grad(dy, y, self._z)
        dx, dw, db = F.conv2d_backward(dz, self._x, self.params["kernel"], self.strides, self.padding,
                                       compute_dx=self.needs_input_gradient)
        self.grads = {"kernel": dw}
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "activation": self.activation,
                "use_bias": self.use_bias, **initializer_config(self)}

    def keras_layout(self, key, value):
        return value.transpose(2, 3, 1, 0) if key == "kernel" else value  # (K, C, R, S) -> (R, S, C, K)

    def from_keras_layout(self, key, value):
        return value.transpose(3, 2, 0, 1) if key == "kernel" else value
