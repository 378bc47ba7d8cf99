"""Keras's 2-D convolution layers over conv2d, with the bias and activation fused in its epilogue:
Conv2D (dilation_rate, groups), DepthwiseConv2D (groups == C, depth_multiplier filters a channel) and
SeparableConv2D (a depthwise convolution, then a 1×1 convolution).

Parameters: kernel (filters, C // groups, R, S), the op's layout (Keras stores (R, S, C // groups, filters);
get_weights / set_weights exchange Keras's), from kernel_initializer (Glorot-uniform by default) with
fan_in = (C // groups)·R·S and fan_out = filters·R·S as Keras; bias (filters,), from bias_initializer (zeros).
DepthwiseConv2D's kernel is (C·M, 1, R, S) (Keras: (R, S, C, M); filter c·M + m is channel c's m-th, as in Keras
and PyTorch), from depthwise_initializer with Keras's fans C·R·S and M·R·S. Parameter counts are Keras's.
"""
from __future__ import annotations

from cnn_gpu import functional as F
from cnn_gpu import initializers
from cnn_gpu.initializers import initializer_config
from cnn_gpu.layers.activation import NamedActivation, check_activation, check_softmax_input
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


def positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_dilation(strides, dilation_rate) -> tuple:
    """dilation_rate as a pair; Keras refuses a stride and a dilation both above 1."""
    dilation = as_pair("dilation_rate", dilation_rate, 1)
    if max(strides) > 1 and max(dilation) > 1:
        raise ValueError(f"strides > 1 together with dilation_rate > 1 is not supported (as in Keras): strides "
                         f"{strides}, dilation_rate {dilation}")
    return dilation


class Conv2D(Layer):
    """Conv2D(filters, kernel_size, strides=1, padding='valid', dilation_rate=1, groups=1, activation=None,
    use_bias=True, kernel_initializer='glorot_uniform', bias_initializer='zeros')."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", *, dilation_rate=1, groups=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = positive_int("filters", filters)
        self.groups = positive_int("groups", groups)
        if filters % groups:
            raise ValueError(f"filters = {filters} must be a multiple of groups = {groups}")
        self._setup(kernel_size, strides, padding, dilation_rate, activation, use_bias, kernel_initializer,
                    bias_initializer)

    def _setup(self, kernel_size, strides, padding, dilation_rate, activation, use_bias, kernel_initializer,
               bias_initializer, initializer_argument="kernel_initializer"):
        self.kernel_size = as_pair("kernel_size", kernel_size, 1)
        self.strides = as_pair("strides", strides, 1)
        self.dilation_rate = check_dilation(self.strides, dilation_rate)
        self.padding = check_padding(padding)
        self.activation = check_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, initializer_argument)
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self._function = NamedActivation(self.activation)
        self._x = self._y = self._pre = self._applied = None  # _pre: the activation's input, where its gradient needs it

    def _filters_and_groups(self, C: int) -> tuple:
        """(filters, groups) on C input channels, checked."""
        if C % self.groups:
            raise ValueError(f"{self.describe()}: groups = {self.groups} must divide the input channels, got {C}")
        return self.filters, self.groups

    def output_shape_for(self, input_shape):
        C, H, W = spatial_input(self, input_shape)
        filters, _ = self._filters_and_groups(C)
        g = window_geometry((1, C, H, W), self.kernel_size, self.strides, self.padding, x_name="input",
                            dilation=self.dilation_rate)
        output_shape = (filters, g.OH, g.OW)
        check_softmax_input(self._function, output_shape, self)
        return output_shape

    def build_params(self, input_shape, rng):
        C = input_shape[0]
        filters, groups = self._filters_and_groups(C)
        R, S = self.kernel_size
        shape = (filters, C // groups, R, S)
        fan_in, fan_out = self._fans(C, R, S)
        self.params = {"kernel": self.new_param(self.kernel_initializer(shape, fan_in=fan_in, fan_out=fan_out, rng=rng))}
        if self.use_bias:
            self.params["bias"] = self.new_param(self.bias_initializer((filters,), rng=rng))

    def _fans(self, C: int, R: int, S: int) -> tuple:
        """Keras's Glorot fans of the kernel (R, S, C // groups, filters): each of the last two axes times R·S."""
        return C // self.groups * R * S, self.filters * R * S

    def _conv_arguments(self) -> dict:
        return {"dilation": self.dilation_rate, "groups": self._filters_and_groups(self.built_shape[0])[1]}

    def accepts(self, sample_shape):
        # Any image size works with the same kernel; the channels must match.
        return len(sample_shape) == 3 and sample_shape[0] == self.built_shape[0]

    def forward(self, x, training=False, logits=False):
        self.ensure_built(x)
        self._applied = NamedActivation(None) if logits else self._function
        z = F.conv2d(x, self.params["kernel"], self.params.get("bias"), self.strides, self.padding,
                     activation=self._applied.epilogue, negative_slope=self._applied.negative_slope,
                     **self._conv_arguments())
        self._x, self._y = x, self._applied.after_fused_op(z)
        self._pre = z if self._applied.grad_needs_input else None
        return self._y

    def backward(self, dy):
        y = self.saved(self._y)
        dz = self._applied.grad(dy, y, self._pre)
        dx, dw, db = F.conv2d_backward(dz, self._x, self.params["kernel"], self.strides, self.padding,
                                       compute_dx=self.needs_input_gradient, **self._conv_arguments())
        self.grads = {"kernel": dw}
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "dilation_rate": list(self.dilation_rate),
                "groups": self.groups, "activation": self.activation, "use_bias": self.use_bias, **initializer_config(self)}

    def keras_layout(self, key, value):
        return value.transpose(2, 3, 1, 0) if key == "kernel" else value  # (K, C/g, R, S) -> (R, S, C/g, K)

    def from_keras_layout(self, key, value):
        return value.transpose(3, 2, 0, 1) if key == "kernel" else value


def _depthwise_to_keras(value, multiplier):
    """(C·M, 1, R, S) -> Keras's (R, S, C, M)."""
    CM, _, R, S = value.shape
    return value.reshape(CM // multiplier, multiplier, R, S).transpose(2, 3, 0, 1)


def _depthwise_from_keras(value):
    """Keras's (R, S, C, M) -> (C·M, 1, R, S)."""
    R, S, C, M = value.shape
    return value.transpose(2, 3, 0, 1).reshape(C * M, 1, R, S)


class DepthwiseConv2D(Conv2D):
    """DepthwiseConv2D(kernel_size, strides=1, padding='valid', depth_multiplier=1, dilation_rate=1, activation=None,
    use_bias=True, depthwise_initializer='glorot_uniform', bias_initializer='zeros'): each input channel convolved
    with its own depth_multiplier filters (groups == C)."""

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1, dilation_rate=1, activation=None,
                 use_bias=True, depthwise_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        Layer.__init__(self, **kwargs)
        self.depth_multiplier = positive_int("depth_multiplier", depth_multiplier)
        self._setup(kernel_size, strides, padding, dilation_rate, activation, use_bias, depthwise_initializer,
                    bias_initializer, "depthwise_initializer")

    def _filters_and_groups(self, C: int) -> tuple:
        return C * self.depth_multiplier, C

    def _fans(self, C: int, R: int, S: int) -> tuple:
        return C * R * S, self.depth_multiplier * R * S  # Keras's kernel (R, S, C, depth_multiplier)

    def get_config(self):
        return {**Layer.get_config(self), "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, "depth_multiplier": self.depth_multiplier,
                "dilation_rate": list(self.dilation_rate), "activation": self.activation, "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}

    def keras_layout(self, key, value):
        return _depthwise_to_keras(value, self.depth_multiplier) if key == "kernel" else value

    def from_keras_layout(self, key, value):
        return _depthwise_from_keras(value) if key == "kernel" else value


class SeparableConv2D(Conv2D):
    """SeparableConv2D(filters, kernel_size, strides=1, padding='valid', dilation_rate=1, depth_multiplier=1,
    activation=None, use_bias=True, depthwise_initializer='glorot_uniform', pointwise_initializer='glorot_uniform',
    bias_initializer='zeros'): a depthwise convolution (depthwise_kernel (C·M, 1, R, S), no bias), then a 1×1
    convolution (pointwise_kernel (filters, C·M, 1, 1)) with the bias and the activation fused."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, depth_multiplier=1,
                 activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 pointwise_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        Layer.__init__(self, **kwargs)
        self.filters = positive_int("filters", filters)
        self.depth_multiplier = positive_int("depth_multiplier", depth_multiplier)
        self._setup(kernel_size, strides, padding, dilation_rate, activation, use_bias, depthwise_initializer,
                    bias_initializer, "depthwise_initializer")
        self.pointwise_initializer = initializers.get(pointwise_initializer, "pointwise_initializer")
        self._z = None

    def _filters_and_groups(self, C: int) -> tuple:
        return self.filters, 1

    def build_params(self, input_shape, rng):
        C, M = input_shape[0], self.depth_multiplier
        R, S = self.kernel_size
        self.params = {
            "depthwise_kernel": self.new_param(self.kernel_initializer((C * M, 1, R, S), fan_in=C * R * S,
                                                                       fan_out=M * R * S, rng=rng)),
            "pointwise_kernel": self.new_param(self.pointwise_initializer((self.filters, C * M, 1, 1), fan_in=C * M,
                                                                          fan_out=self.filters, rng=rng)),
        }
        if self.use_bias:
            self.params["bias"] = self.new_param(self.bias_initializer((self.filters,), rng=rng))

    def forward(self, x, training=False, logits=False):
        self.ensure_built(x)
        self._applied = NamedActivation(None) if logits else self._function
        z = F.conv2d(x, self.params["depthwise_kernel"], None, self.strides, self.padding,
                     dilation=self.dilation_rate, groups=x.shape[1])
        pre = F.conv2d(z, self.params["pointwise_kernel"], self.params.get("bias"),
                       activation=self._applied.epilogue, negative_slope=self._applied.negative_slope)
        self._x, self._z, self._y = x, z, self._applied.after_fused_op(pre)
        self._pre = pre if self._applied.grad_needs_input else None
        return self._y

    def backward(self, dy):
        y, z = self.saved(self._y), self.saved(self._z)
        dz, dpw, db = F.conv2d_backward(self._applied.grad(dy, y, self._pre), z, self.params["pointwise_kernel"])
        dx, ddw, _ = F.conv2d_backward(dz, self._x, self.params["depthwise_kernel"], self.strides, self.padding,
                                       dilation=self.dilation_rate, groups=self._x.shape[1],
                                       compute_dx=self.needs_input_gradient)
        self.grads = {"depthwise_kernel": ddw, "pointwise_kernel": dpw}
        if self.use_bias:
            self.grads["bias"] = db
        return dx

    def get_config(self):
        return {**Layer.get_config(self), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "dilation_rate": list(self.dilation_rate),
                "depth_multiplier": self.depth_multiplier, "activation": self.activation, "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.kernel_initializer),
                "pointwise_initializer": initializers.serialize(self.pointwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}

    def keras_layout(self, key, value):
        if key == "depthwise_kernel":
            return _depthwise_to_keras(value, self.depth_multiplier)
        return value.transpose(2, 3, 1, 0) if key == "pointwise_kernel" else value  # (F, CM, 1, 1) -> (1, 1, CM, F)

    def from_keras_layout(self, key, value):
        if key == "depthwise_kernel":
            return _depthwise_from_keras(value)
        return value.transpose(3, 2, 0, 1) if key == "pointwise_kernel" else value
