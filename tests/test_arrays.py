"""cnn_gpu.ops.arrays' argument checks, on the fast path every op call takes: once an array type and the
usual float32 operands have been seen, what the checks refuse is still refused, with the same message."""
import numpy
import pytest

from cnn_gpu.ops.arrays import ALIGNMENT, aligned_copy, aligned_empty, array_module, float_operands

LAYOUTS = {"x": (2, "N, K"), "w": (2, "K, M")}


def valid_call():
    x, w = numpy.ones((3, 4), numpy.float32), numpy.ones((4, 5), numpy.float32)
    assert float_operands(LAYOUTS, x=x, w=w) is numpy


class Subclass(numpy.ndarray):
    pass


def test_array_module_learns_types_not_values():
    valid_call()
    assert array_module(("b",), x=numpy.ones(2).view(Subclass), b=None) is numpy
    assert array_module() is numpy and array_module(("b",), b=None) is numpy
    with pytest.raises(TypeError, match="b is required: a numpy.ndarray or cupy.ndarray, got None"):
        array_module(x=numpy.ones(2), b=None)
    with pytest.raises(TypeError, match="w must be a numpy.ndarray or cupy.ndarray, got list"):
        array_module(x=numpy.ones(2), w=[1.0, 2.0])
    with pytest.raises(TypeError, match="x must be a numpy.ndarray or cupy.ndarray, got float"):
        array_module(x=1.0)


@pytest.mark.parametrize("x, w, error, message", [
    (numpy.ones((3, 4), numpy.float16), numpy.ones((4, 5), numpy.float16), TypeError, "x must be float32 or float64"),
    (numpy.ones((3, 4), ">f4"), numpy.ones((4, 5), ">f4"), TypeError, "x must be float32 or float64"),
    (numpy.ones((3, 4), numpy.float32), numpy.ones((4, 5), numpy.float64), TypeError, "operands must share one dtype"),
    (numpy.ones((3, 4), numpy.float32), numpy.ones(4, numpy.float32), ValueError, r"w must be 2-D \(K, M\), got shape \(4,\)"),
    (numpy.ones((3, 4, 1), numpy.float32), numpy.ones((4, 5), numpy.float32), ValueError, "x must be 2-D"),
])
def test_float_operands_fast_path_refuses_what_the_checks_refuse(x, w, error, message):
    valid_call()
    with pytest.raises(error, match=message):
        float_operands(LAYOUTS, x=x, w=w)
    valid_call()


def test_float_operands_accepts_float64_on_numpy_and_absent_operands():
    x, w = numpy.ones((3, 4)), numpy.ones((4, 5))
    assert float_operands(LAYOUTS, ("b",), x=x, w=w, b=None) is numpy
    assert float_operands({}, ("b",), b=None) is numpy
    with pytest.raises(TypeError, match="x is required"):
        float_operands(LAYOUTS, ("b",), x=None, w=w, b=None)


@pytest.mark.parametrize("shape, dtype", [((3, 5, 7), numpy.float32), ((0, 4), numpy.float64), ((1,), numpy.int8)])
def test_aligned_arrays_start_on_the_boundary(shape, dtype):
    for _ in range(20):  # NumPy's own allocations start on 16 bytes: some of these would not be aligned by chance
        a = aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % ALIGNMENT == 0  # an empty array has no data to place
    source = numpy.arange(2 * 3 * 4, dtype=numpy.float32).reshape(2, 3, 4).transpose(2, 0, 1)
    copy = aligned_copy(source)
    assert copy.ctypes.data % ALIGNMENT == 0 and copy.flags.c_contiguous and numpy.array_equal(copy, source)
