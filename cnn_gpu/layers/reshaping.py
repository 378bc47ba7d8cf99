"""Layers that move or scale values without parameters: ZeroPadding2D, Rescaling and Reshape (Keras's names).

ZeroPadding2D(padding=(1, 1)): Keras's forms, an int (all four sides), (rows, cols) (symmetric), or
((top, bottom), (left, right)). Rescaling(scale, offset=0.0): y = x · scale + offset, e.g. 1/255 for
uint8 images. Reshape(target_shape): Keras's reshape of each sample, in the data's layout (channels-last
unless data_format='channels_first'): the layer moves an image to that layout, reshapes, and moves a
3-D result back to the layers' NCHW, so it gives what Keras gives (one -1 is inferred).
"""
from __future__ import annotations

from cnn_gpu import functional as F
from cnn_gpu.layers.base import Layer
from cnn_gpu.layers.conv import spatial_input


def _pads(padding) -> tuple:
    """(top, bottom, left, right) from Keras's three forms, or a ValueError naming padding."""
    def count(v):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"padding must be an int >= 0, a pair of them, or ((top, bottom), (left, right)); "
                             f"got {padding!r}")
        return v

    if isinstance(padding, int) and not isinstance(padding, bool):
        return (count(padding),) * 4
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding):
            return tuple(count(v) for pair in padding for v in pair)
        rows, cols = count(padding[0]), count(padding[1])
        return rows, rows, cols, cols
    return count(None)


class ZeroPadding2D(Layer):
    def __init__(self, padding=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.pads = _pads(padding)

    def output_shape_for(self, input_shape):
        C, H, W = spatial_input(self, input_shape)
        top, bottom, left, right = self.pads
        return (C, H + top + bottom, W + left + right)

    def forward(self, x, training=False):
        self.ensure_built(x)
        return F.zero_pad2d(x, self.pads)

    def backward(self, dy):
        return F.zero_pad2d_backward(dy, self.pads)

    def get_config(self):
        top, bottom, left, right = self.pads
        return {**super().get_config(), "padding": [[top, bottom], [left, right]]}


class Rescaling(Layer):
    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("scale", scale), ("offset", offset)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x, training=False):
        self.ensure_built(x)
        real = x.dtype.type
        return x * real(self.scale) + real(self.offset)

    def backward(self, dy):
        return dy * dy.dtype.type(self.scale)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class Reshape(Layer):
    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        target = tuple(target_shape) if isinstance(target_shape, (tuple, list)) else None
        if not target or any(not isinstance(v, int) or isinstance(v, bool) or (v < 1 and v != -1) for v in target) \
                or target.count(-1) > 1:
            raise ValueError(f"target_shape must be a tuple of positive ints (one may be -1), got {target_shape!r}")
        self.target_shape = target

    @property
    def _channels_last(self) -> bool:
        return self.data_format != "channels_first"

    def _user_shape(self, shape) -> tuple:
        return (shape[1], shape[2], shape[0]) if self._channels_last and len(shape) == 3 else tuple(shape)

    def _resolved_target(self, input_shape) -> tuple:
        size = 1
        for v in input_shape:
            size *= v
        known = 1
        for v in self.target_shape:
            known *= v if v != -1 else 1
        target = tuple(size // known if v == -1 else v for v in self.target_shape)
        total = 1
        for v in target:
            total *= v
        if total != size:
            raise ValueError(f"{self.describe()}: cannot reshape a sample of {size} values ({tuple(input_shape)}) "
                             f"to {self.target_shape}")
        return target

    def output_shape_for(self, input_shape):
        target = self._resolved_target(input_shape)
        return (target[2], target[0], target[1]) if self._channels_last and len(target) == 3 else target

    def forward(self, x, training=False):
        self.ensure_built(x)
        self._x_shape = x.shape
        if self._channels_last and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)  # to the data's layout, where Keras reshapes
        y = x.reshape((len(x), *self._resolved_target(self.built_shape)))
        return y.transpose(0, 3, 1, 2).copy() if self._channels_last and y.ndim == 4 else y.copy()

    def backward(self, dy):
        x_shape = self.saved(getattr(self, "_x_shape", None))
        if self._channels_last and dy.ndim == 4:
            dy = dy.transpose(0, 2, 3, 1)
        if self._channels_last and len(x_shape) == 4:
            N, C, H, W = x_shape
            return dy.reshape(N, H, W, C).transpose(0, 3, 1, 2).copy()
        return dy.reshape(x_shape).copy()

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}
