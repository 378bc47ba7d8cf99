"""Shape ops: flatten, (N, ...) -> (N, prod(...)) as a reshape (a view when the input is contiguous: no
copy), and zero_pad2d, zeros around images (array slicing on either backend: no kernel of ours)."""
from __future__ import annotations

from cnn_gpu.ops.arrays import array_module


def flatten(x):
    array_module(x=x)
    if x.ndim < 1:
        raise ValueError(f"x must have a batch axis, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def flatten_backward(dy, x_shape):
    array_module(dy=dy)
    x_shape = tuple(int(v) for v in x_shape)
    if dy.size != _prod(x_shape):
        raise ValueError(f"dy shape {tuple(dy.shape)} has {dy.size} elements, x_shape {x_shape} needs {_prod(x_shape)}")
    return dy.reshape(x_shape)


def _prod(shape):
    size = 1
    for v in shape:
        size *= v
    return size


def zero_pad2d(x, pads):
    """(N, C, H, W) -> (N, C, H + top + bottom, W + left + right), zeros around x; pads = (top, bottom, left, right)."""
    xp = array_module(x=x)
    top, bottom, left, right = _check_pads(pads)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    y = xp.zeros((N, C, H + top + bottom, W + left + right), dtype=x.dtype)
    y[:, :, top:top + H, left:left + W] = x
    return y


def zero_pad2d_backward(dy, pads):
    """dx: the interior of dy that zero_pad2d's input filled."""
    xp = array_module(dy=dy)
    top, bottom, left, right = _check_pads(pads)
    if dy.ndim != 4 or dy.shape[2] <= top + bottom or dy.shape[3] <= left + right:
        raise ValueError(f"dy must be 4-D and larger than the padding {pads}, got shape {tuple(dy.shape)}")
    return xp.ascontiguousarray(dy[:, :, top:dy.shape[2] - bottom, left:dy.shape[3] - right])


def _check_pads(pads):
    pads = tuple(pads)
    if len(pads) != 4 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pads):
        raise ValueError(f"pads must be four ints >= 0 (top, bottom, left, right), got {pads!r}")
    return pads
