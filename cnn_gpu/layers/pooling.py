"""Pooling layers: MaxPooling2D, AveragePooling2D, SumPooling2D, GlobalAveragePooling2D and
GlobalMaxPooling2D over the pool ops (a global pooling is one window the size of the image).

Keras's arguments: pool_size=2, strides=None (= pool_size), padding='valid' | 'same'. 'same'
average pooling divides by the in-bounds count, as Keras does (count_include_pad=False).
SumPooling2D is not in Keras; it is the window sum, with the same arguments.
"""
from __future__ import annotations

from cnn_gpu import functional as F
from cnn_gpu.layers.base import Layer
from cnn_gpu.layers.conv import check_padding, spatial_input
from cnn_gpu.ops.geometry import as_pair, window_geometry


class Pooling2D(Layer):
    """What the three pooling layers share: arguments, output shape, config, the saved input shape."""

    def __init__(self, pool_size=2, strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = as_pair("pool_size", pool_size, 1)
        self.strides = self.pool_size if strides is None else as_pair("strides", strides, 1)
        self.padding = check_padding(padding)
        self._x_shape = None

    def output_shape_for(self, input_shape):
        C, H, W = spatial_input(self, input_shape)
        g = window_geometry((1, C, H, W), self.pool_size, self.strides, self.padding,
                            x_name="input", window_name="pool_size")
        return (C, g.OH, g.OW)

    def accepts(self, sample_shape):
        return len(sample_shape) == 3 and sample_shape[0] == self.built_shape[0]

    def window(self) -> tuple:
        """(kernel_size, stride, padding) as the pool ops take them."""
        return self.pool_size, self.strides, self.padding

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPooling2D(Pooling2D):
    """The maximum of each window; backward routes dy to the argmax the forward kept."""

    _indices = None

    def forward(self, x, training=False):
        self.ensure_built(x)
        y, self._indices = F.max_pool2d(x, *self.window())
        self._x_shape = x.shape
        return y

    def backward(self, dy):
        return F.max_pool2d_backward(dy, self._indices, self.saved(self._x_shape), *self.window())


class AveragePooling2D(Pooling2D):
    """The mean of each window's in-bounds elements."""

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._x_shape = x.shape
        return F.avg_pool2d(x, *self.window(), count_include_pad=False)

    def backward(self, dy):
        return F.avg_pool2d_backward(dy, self.saved(self._x_shape), *self.window(), count_include_pad=False)


class SumPooling2D(Pooling2D):
    """The sum of each window (padding counts as zero)."""

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._x_shape = x.shape
        return F.sum_pool2d(x, *self.window())

    def backward(self, dy):
        return F.sum_pool2d_backward(dy, self.saved(self._x_shape), *self.window())


class GlobalPooling2D(Layer):
    """What the two global poolings share: one window over the whole image, (N, C) out (keepdims: the
    image axes kept as 1 × 1)."""

    def __init__(self, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self.keepdims = bool(keepdims)
        self._x_shape = None

    def output_shape_for(self, input_shape):
        C, _, _ = spatial_input(self, input_shape)
        return (C, 1, 1) if self.keepdims else (C,)

    def _window(self):
        return self.built_shape[1:], 1, 0  # kernel (H, W), stride 1, no padding

    def _shaped(self, y):
        return y if self.keepdims else y.reshape(y.shape[0], -1)

    def _pooled_shape(self, dy):
        return dy.reshape(dy.shape[0], -1, 1, 1)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling2D(GlobalPooling2D):
    """The mean over each channel's image (Keras's GlobalAveragePooling2D)."""

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._x_shape = x.shape
        return self._shaped(F.avg_pool2d(x, *self._window()))

    def backward(self, dy):
        return F.avg_pool2d_backward(self._pooled_shape(dy), self.saved(self._x_shape), *self._window())


class GlobalMaxPooling2D(GlobalPooling2D):
    """The maximum over each channel's image; backward routes dy to the argmax."""

    _indices = None

    def forward(self, x, training=False):
        self.ensure_built(x)
        y, self._indices = F.max_pool2d(x, *self._window())
        self._x_shape = x.shape
        return self._shaped(y)

    def backward(self, dy):
        return F.max_pool2d_backward(self._pooled_shape(dy), self._indices, self.saved(self._x_shape), *self._window())
