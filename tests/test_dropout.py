"""dropout: the keep mask against a plain-Python-int rendering of the hash, CUDA's mask bits against
NumPy's, the keep fraction, seeding, backward against the formula and finite differences, bad inputs."""
import math

import numpy
import pytest

import cnn_gpu
from checks import numeric_grad, rel_error
from cnn_gpu import functional as F
from cnn_gpu.ops.dropout import _hash_seed_index

U32 = 0xFFFFFFFF


# ---- an independent reference: lowbias32 and hash_seed_index (kernels/common.cuh) on Python ints ----
def ref_mix32(h):
    h ^= h >> 16
    h = (h * 0x7FEB352D) & U32
    h ^= h >> 15
    h = (h * 0x846CA68B) & U32
    return h ^ (h >> 16)


def ref_hash_seed_index(seed, index):
    h = ref_mix32((seed & U32) ^ 0x9E3779B9)
    h = ref_mix32(h ^ (seed >> 32))
    h = ref_mix32(h ^ (index & U32))
    return ref_mix32(h ^ (index >> 32))


def ref_mask(seed, rate, shape):
    threshold = round(rate * 2**24)
    flat = [ref_hash_seed_index(seed, i) >> 8 >= threshold for i in range(math.prod(shape))]
    return numpy.array(flat, dtype=numpy.uint8).reshape(shape)


def naive_scaled(v, mask, rate):
    out = numpy.empty(v.shape, dtype=numpy.float64)
    for i, (a, k) in enumerate(zip(v.reshape(-1).astype(numpy.float64), mask.reshape(-1))):
        out.reshape(-1)[i] = a * k / (1.0 - rate)
    return out


SHAPES = [(1,), (3,), (17,), (2, 3, 17, 31), (1023,), (4097,)]
SEEDS = [0, 1, 2**32 + 7, 2**64 - 1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_numpy_mask_matches_python_int_reference(seed, rate):
    _, mask = F.dropout(numpy.ones((3, 37), numpy.float32), rate, seed)
    assert mask.dtype == numpy.uint8
    numpy.testing.assert_array_equal(mask, ref_mask(seed, rate, (3, 37)))


def test_numpy_hash_matches_reference_past_32_bit_indices(rng):
    seeds = [0, 2**64 - 1] + [int(s) for s in rng.integers(0, 2**63, 6, dtype=numpy.uint64)]
    indices = [0, 2**32 - 1, 2**32, 2**40 + 3, 2**64 - 1] + [int(i) for i in rng.integers(0, 2**63, 6, dtype=numpy.uint64)]
    for seed in seeds:
        for index in indices:
            ours = int(_hash_seed_index(numpy.uint64(seed), numpy.uint64(index)))
            assert ours == ref_hash_seed_index(seed, index), (seed, index)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_naive_and_numpy_bits(backend, xp, rng, shape):
    x = rng.standard_normal(shape).astype(numpy.float32)
    seed, rate = int(rng.integers(0, 2**62)), 0.3
    y, mask = F.dropout(xp.asarray(x), rate, seed)
    assert y.shape == shape and y.dtype == numpy.float32 and mask.shape == shape and mask.dtype == numpy.uint8
    ref_y, ref_m = F.dropout(x, rate, seed)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(mask), ref_m)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(y), ref_y)  # one rounding of x * scale on both
    assert rel_error(y, naive_scaled(x, ref_m, rate)) < 1e-6


# 4 float4s a thread (ELEMENTWISE_UNROLL), 1024 a 256-thread block, the n % 4 tail as scalars.
TAIL_SIZES = [1, 3, 4, 5, 4 * 256 * 4 - 1, 4 * 256 * 4 + 1, 3 * 4 * 256 * 4 + 7]


@pytest.mark.parametrize("n", TAIL_SIZES)
def test_unroll_tails_match_numpy_bits(backend, xp, rng, n):
    x = rng.standard_normal(n).astype(numpy.float32)
    dy = rng.standard_normal(n).astype(numpy.float32)
    seed = int(rng.integers(0, 2**63))
    y, mask = F.dropout(xp.asarray(x), 0.3, seed)
    ref_y, ref_m = F.dropout(x, 0.3, seed)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(mask), ref_m)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(y), ref_y)
    dx = F.dropout_backward(xp.asarray(dy), mask, 0.3)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(dx), F.dropout_backward(dy, ref_m, 0.3))


@pytest.mark.parametrize("n", [5, 4097])
def test_unaligned_input_view(backend, xp, rng, n):
    """Arrays starting one element past an allocation: the kernels' scalar path (vec4 = 0)."""
    buffer = rng.standard_normal(1 + n).astype(numpy.float32)
    x = xp.asarray(buffer)[1:]
    y, mask = F.dropout(x, 0.25, 11)
    ref_y, ref_m = F.dropout(buffer[1:], 0.25, 11)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(mask), ref_m)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(y), ref_y)
    unaligned_mask = xp.concatenate([xp.zeros(1, dtype=numpy.uint8), mask])[1:]
    dx = F.dropout_backward(x, unaligned_mask, 0.25)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(dx), F.dropout_backward(buffer[1:], ref_m, 0.25))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_fraction_within_binomial_bound(backend, xp, rng, rate):
    n = 100_000
    _, mask = F.dropout(xp.asarray(rng.standard_normal(n).astype(numpy.float32)), rate, int(rng.integers(0, 2**62)))
    kept = int(cnn_gpu.to_numpy(mask).sum())
    assert abs(kept - n * (1 - rate)) < 6 * math.sqrt(n * rate * (1 - rate))


def test_same_seed_same_bits_different_seed_different_mask(backend, xp, rng):
    x = xp.asarray(rng.standard_normal((4, 3, 17, 17)).astype(numpy.float32))
    y1, m1 = F.dropout(x, 0.5, 1234)
    y2, m2 = F.dropout(x, 0.5, 1234)
    _, m3 = F.dropout(x, 0.5, 1235)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(m1), cnn_gpu.to_numpy(m2))
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(y1), cnn_gpu.to_numpy(y2))
    assert (cnn_gpu.to_numpy(m1) != cnn_gpu.to_numpy(m3)).mean() > 0.4  # independent masks differ on ~half


def test_mask_depends_on_flat_index_only(backend, xp, rng):
    x = rng.standard_normal(24).astype(numpy.float32)
    _, flat = F.dropout(xp.asarray(x), 0.5, 99)
    _, shaped = F.dropout(xp.asarray(x.reshape(2, 3, 4)), 0.5, 99)
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(shaped).reshape(-1), cnn_gpu.to_numpy(flat))


def test_rate_zero_keeps_everything(backend, xp, rng):
    x = rng.standard_normal((3, 17)).astype(numpy.float32)
    y, mask = F.dropout(xp.asarray(x), 0.0, 5)
    assert (cnn_gpu.to_numpy(mask) == 1).all()
    numpy.testing.assert_array_equal(cnn_gpu.to_numpy(y), x)


def test_nan_propagates_through_dropped_elements(backend, xp):
    y, _ = F.dropout(xp.full(64, numpy.nan, dtype=numpy.float32), 0.5, 3)
    assert numpy.isnan(cnn_gpu.to_numpy(y)).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_formula(backend, xp, rng, shape):
    dy = rng.standard_normal(shape).astype(numpy.float32)
    _, mask = F.dropout(rng.standard_normal(shape).astype(numpy.float32), 0.6, 8)
    dx = F.dropout_backward(xp.asarray(dy), xp.asarray(mask), 0.6)
    assert dx.shape == shape and dx.dtype == numpy.float32
    assert rel_error(dx, naive_scaled(dy, mask, 0.6)) < 1e-6


def test_backward_finite_differences(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    _, mask = F.dropout(x, 0.4, 21)
    grad = F.dropout_backward(dy, mask, 0.4)
    assert rel_error(grad, numeric_grad(lambda v: F.dropout(v, 0.4, 21)[0], x, dy)) < 1e-7


# ---- bad inputs: one test per rule ----------------------------------------------------------------
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_rejects_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="rate must be in"):
        F.dropout(numpy.ones(4, numpy.float32), rate, 0)
    with pytest.raises(ValueError, match="rate must be in"):
        F.dropout_backward(numpy.ones(4, numpy.float32), numpy.ones(4, numpy.uint8), rate)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_rejects_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed must be in"):
        F.dropout(numpy.ones(4, numpy.float32), 0.5, seed)


def test_rejects_non_integer_seed():
    with pytest.raises(TypeError, match="seed must be an int"):
        F.dropout(numpy.ones(4, numpy.float32), 0.5, 1.5)


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="x must be float"):
        F.dropout(numpy.arange(4), 0.5, 0)


def test_backward_rejects_mask_shape_mismatch():
    with pytest.raises(ValueError, match=r"dy shape \(4,\) must equal mask shape \(5,\)"):
        F.dropout_backward(numpy.ones(4, numpy.float32), numpy.ones(5, numpy.uint8), 0.5)


def test_backward_rejects_non_uint8_mask():
    with pytest.raises(TypeError, match="mask must be uint8"):
        F.dropout_backward(numpy.ones(4, numpy.float32), numpy.ones(4, numpy.float32), 0.5)


def test_rejects_mixed_backends(backend, xp):
    if backend != "cuda":
        pytest.skip("mixing needs both NumPy and CuPy arrays")
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        F.dropout_backward(xp.ones(3, dtype=numpy.float32), numpy.ones(3, numpy.uint8), 0.5)
