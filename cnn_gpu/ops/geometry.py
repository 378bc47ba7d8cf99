"""Output geometry of sliding-window ops (convolution and pooling), written once for both backends.

padding: an int, a pair (top/bottom, left/right), 'valid' (0) or 'same' (Keras/TF meaning: output
ceil(H / stride); total pad max((out - 1) * stride + R' - H, 0), the odd extra row/column at the
bottom/right). dilation d spaces a window's taps d apart: an R-tap window spans R' = (R - 1) * d + 1
input rows, which is what the padding and the output size are worked out from (as in TF/Keras and PyTorch).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy


# The kernels take every size, stride and pad as a 32-bit int: a larger one is refused here, before either
# backend runs, so that both give the same error.
INT32_MAX = 2**31 - 1


def _is_int(value) -> bool:
    """An int or a NumPy integer (PyTorch takes both), not a bool."""
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, (bool, numpy.bool_))


def as_pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints (Python or NumPy integers) -> (h, w), each in [minimum, 2**31 - 1], or a
    ValueError naming the argument."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if max(pair) > INT32_MAX:
        raise ValueError(f"{name} must be at most 2**31 - 1 (the kernels index in 32 bits), got {value!r}")
    return pair


class WindowGeometry(NamedTuple):
    """Everything a sliding-window kernel needs: sizes, strides, the four pads, the output size. A NamedTuple:
    ops key their launch caches by it, and its hash runs in C."""

    N: int
    C: int
    H: int
    W: int
    R: int  # window height
    S: int  # window width
    stride_h: int
    stride_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    OH: int
    OW: int
    dilation_h: int = 1  # taps dilation_h rows apart
    dilation_w: int = 1

    @property
    def window_extent(self):
        """(rows, columns) of the input one window spans: (R - 1) * dilation + 1."""
        return ((self.R - 1) * self.dilation_h + 1, (self.S - 1) * self.dilation_w + 1)

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def padded_hw(self):
        return (self.H + self.pad_top + self.pad_bottom, self.W + self.pad_left + self.pad_right)


def _same_pads(size: int, window: int, stride: int) -> tuple[int, int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2, out


def window_geometry(x_shape, window, stride, padding, *, x_name="x", window_name="kernel_size",
                    dilation=1) -> WindowGeometry:
    """Validate and compute the geometry of a window of size ``window`` (R, S) sliding over ``x_shape``.

    Remembered per arguments when window, stride and padding are plain (plain_arguments): an op is called
    with the same few shapes over and over, and its host time is part of every small call's latency. x_shape
    needs no such check (its sizes are read through int()). Invalid arguments are never remembered, so they
    raise every time."""
    if plain_arguments(window, stride, padding, dilation):
        return _remembered_geometry(tuple(x_shape), window, stride, padding, x_name, window_name, dilation)
    return _window_geometry(x_shape, window, stride, padding, x_name, window_name, dilation)


def plain_arguments(*values) -> bool:
    """Each value is None, a str, an int or a tuple of two ints, exactly: not a bool, a float, a NumPy integer or a
    list. Such values can key a cache of checked results: an argument merely equal to a remembered one (True for 1,
    2.0 for 2) must still be checked, and refused, as it would be uncached."""
    for value in values:
        kind = type(value)
        if not (kind is int or kind is str or value is None
                or (kind is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int)):
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _remembered_geometry(x_shape, window, stride, padding, x_name, window_name, dilation=1) -> WindowGeometry:
    return _window_geometry(x_shape, window, stride, padding, x_name, window_name, dilation)


def _window_geometry(x_shape, window, stride, padding, x_name, window_name, dilation=1) -> WindowGeometry:
    N, C, H, W = (int(v) for v in x_shape)
    R, S = window
    stride_h, stride_w = as_pair("stride", stride, 1)
    dilation_h, dilation_w = as_pair("dilation", dilation, 1)
    RE, SE = (R - 1) * dilation_h + 1, (S - 1) * dilation_w + 1  # the input rows and columns a window spans
    if min(N, C, H, W) < 1:
        raise ValueError(f"{x_name} must have positive sizes, got shape {tuple(x_shape)}")
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            pt = pb = pl = pr = 0
            OH = OW = None
        elif mode == "same":
            pt, pb, OH = _same_pads(H, RE, stride_h)
            pl, pr, OW = _same_pads(W, SE, stride_w)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        ph, pw = as_pair("padding", padding, 0)
        pt = pb = ph
        pl = pr = pw
        OH = OW = None
    Hp, Wp = H + pt + pb, W + pl + pr
    if max(Hp, Wp, RE, SE) > INT32_MAX:
        raise ValueError(f"{x_name} shape {tuple(x_shape)} padded by {padding!r} ({(Hp, Wp)}) or {window_name} "
                         f"{(R, S)} (spanning {(RE, SE)}) exceeds 2**31 - 1, the kernels' 32-bit indexing")
    if RE > Hp or SE > Wp:
        dilated = "" if (dilation_h, dilation_w) == (1, 1) else f" dilated by {dilation!r} (spanning {(RE, SE)})"
        raise ValueError(
            f"{window_name} {(R, S)}{dilated} is larger than the padded input {(Hp, Wp)} "
            f"({x_name} shape {tuple(x_shape)}, padding {padding!r})"
        )
    if OH is None:
        OH = (Hp - RE) // stride_h + 1
        OW = (Wp - SE) // stride_w + 1
    return WindowGeometry(N, C, H, W, R, S, stride_h, stride_w, pt, pb, pl, pr, OH, OW, dilation_h, dilation_w)


def with_pads(x, g: WindowGeometry, fill):
    """x inside a border of fill, g's pads wide; x itself where there are none (the windows only read it). NumPy or
    CuPy. A full array and one copy: numpy.pad costs 4x that."""
    if not (g.pad_top or g.pad_bottom or g.pad_left or g.pad_right):
        return x
    if isinstance(x, numpy.ndarray):
        xp = numpy
    else:
        import cupy as xp
    out = xp.full((g.N, g.C) + g.padded_hw, fill, dtype=x.dtype)
    out[:, :, g.pad_top : g.pad_top + g.H, g.pad_left : g.pad_left + g.W] = x
    return out
