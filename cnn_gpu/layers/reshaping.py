"""Layers that move or scale values without parameters: ZeroPadding2D and Rescaling (Keras's names).

ZeroPadding2D(padding=(1, 1)): Keras's forms, an int (all four sides), (rows, cols) (symmetric), or
((top, bottom), (left, right)). Rescaling(scale, offset=0.0): y = x · scale + offset, e.g. 1/255 for
uint8 images.
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
