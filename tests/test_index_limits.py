"""The host checks in front of the 32-bit-indexed kernels, at their boundary, with sizes that are never
allocated: what require_int32_indexable and the conv problem check admit, and, for the reductions split in
chunks, that the launch arguments the host computes for the largest admitted problem keep every index the
kernel forms (begin + chunk, i + block size) below 2**31 (see the audit in benchmarks/NOTES.md)."""
import numpy
import pytest

from cnn_gpu.cuda import device
from cnn_gpu.cuda import grid as launch
from cnn_gpu.ops.conv import implicit_gemm
from cnn_gpu.ops.conv.problem import conv_problem as _problem
from cnn_gpu.ops.geometry import WindowGeometry, window_geometry

LIMIT = launch.INT32_INDEXABLE


def test_the_limit_leaves_headroom_below_2_to_the_31():
    assert LIMIT + launch.INDEX_HEADROOM == 2**31 - 1 and launch.INDEX_HEADROOM >= 4096


@pytest.mark.parametrize("shape", [(LIMIT,), (LIMIT // 7, 7), (1, 1, LIMIT)])
def test_require_int32_indexable_admits_the_limit_and_not_one_more(shape):
    launch.require_int32_indexable("x", shape)
    bigger = shape[:-1] + (shape[-1] + 1,) if shape != (LIMIT // 7, 7) else (LIMIT // 7 + 1, 7)
    with pytest.raises(ValueError, match=r"x of shape .* more than this kernel's 32-bit indexing allows"):
        launch.require_int32_indexable("x", bigger)


def pixels_geometry(n: int) -> WindowGeometry:
    """A 1x1 convolution over n images of one pixel: N·OH·OW = N·H·W = n, every image tiny."""
    return WindowGeometry(N=n, C=1, H=1, W=1, R=1, S=1, stride_h=1, stride_w=1, pad_top=0, pad_bottom=0,
                          pad_left=0, pad_right=0, OH=1, OW=1)


def test_conv_problem_admits_the_limit_of_pixels_and_names_one_more():
    _problem(pixels_geometry(LIMIT), 3)
    with pytest.raises(ValueError, match=r"the output pixels N\*OH\*OW .* 32-bit indexing"):
        _problem(pixels_geometry(LIMIT + 1), 3)
    with pytest.raises(ValueError, match="one image of y"):
        _problem(pixels_geometry(1)._replace(OH=2**16, OW=2**15), 1)


@pytest.mark.parametrize("sms", [1, 8, 132, 264])
@pytest.mark.parametrize("K", [1, 3, 64])
def test_bias_reduction_indices_stay_below_2_to_the_31_at_the_limit(monkeypatch, sms, K):
    """conv2d_bwd_bias over the largest admitted N·OH·OW: block z reduces [z·chunk, z·chunk + min(chunk, npix −
    z·chunk)) stepping by the block size; every index it forms, the last step's included, fits a signed int."""
    monkeypatch.setattr(device, "sm_count", lambda: sms)
    monkeypatch.setattr(implicit_gemm, "_kernel", lambda name, tile=implicit_gemm.DEFAULT_TILE: name)  # no compilation
    for npix in (LIMIT, LIMIT - 255, 2**30 + 1):
        implicit_gemm._bias_launch.cache_clear()  # it remembers launches per problem, not per (patched) GPU
        bias = implicit_gemm._bias_launch(_problem(pixels_geometry(npix), K))
        k, ohw, pixels, chunk = (int(v) for v in bias.scalars)
        assert (k, ohw, pixels) == (K, 1, npix) and all(isinstance(v, numpy.int32) for v in bias.scalars)
        splits = bias.grid[1]
        for z in range(splits):
            begin = z * chunk
            assert begin < npix                                       # no empty split
            end = begin + min(chunk, npix - begin)                    # the kernel's end, without begin + chunk
            assert end <= npix <= 2**31 - 1
            assert end - 1 + implicit_gemm._BIAS_THREADS <= 2**31 - 1      # the last step of the loop
        assert (splits - 1) * chunk + implicit_gemm._BIAS_THREADS < 2**31
    implicit_gemm._bias_launch.cache_clear()


def test_window_geometry_refuses_pads_and_strides_past_32_bits_before_any_backend():
    with pytest.raises(ValueError, match=r"stride must be at most 2\*\*31 - 1"):
        window_geometry((1, 1, 4, 4), (1, 1), 2**31, 0)
    with pytest.raises(ValueError, match=r"padding must be at most 2\*\*31 - 1"):
        window_geometry((1, 1, 4, 4), (1, 1), 1, (0, 2**31))
    with pytest.raises(ValueError, match="exceeds 2\\*\\*31 - 1"):
        window_geometry((1, 1, 4, 2**31 - 4), (1, 1), 1, (0, 4))  # the padded width passes 2**31 - 1
    assert window_geometry((1, 1, 4, 4), (1, 1), 2**31 - 1, 0).OH == 1
