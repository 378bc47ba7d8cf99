"""cnn_gpu.cuda.launch on the host: FastDivmod's parameters, checked through a Python transcription of
the device formula in kernels/common.cuh against // and % (the CPU proof that the kernels' division is
exact for every numerator they can see, 0 <= n < 2**31), and the plain launch-shape helpers."""
import numpy
import pytest

from cnn_gpu.cuda.launch import INT32_MAX, cdiv, elementwise_blocks, fast_divmod_params, require_int32_indexable


def device_divmod(n, divisor, multiplier, shift):
    """FastDivmod::divmod as the device computes it: __umulhi(n, multiplier) >> shift, divisor 1 special-cased.
    n: uint64 array; the product n * multiplier < 2**63 fits in uint64."""
    if divisor == 1:
        quotient = n.copy()
    else:
        quotient = ((n * numpy.uint64(multiplier)) >> numpy.uint64(32)) >> numpy.uint64(shift)
    # the device's uint32 / int32 arithmetic: everything stays below 2**31
    return quotient, n - quotient * numpy.uint64(divisor)


def numerators(divisor, rng):
    """0, 2**31 - 1, every multiple of divisor +-1 up to 64 * divisor and near 2**31, and 4096 random ones."""
    multiples = numpy.concatenate([numpy.arange(65), (INT32_MAX // divisor) - numpy.arange(65)]) * divisor
    near_multiples = (multiples[:, None] + numpy.array([-1, 0, 1])).reshape(-1)
    points = numpy.concatenate([[0, divisor - 1, divisor, INT32_MAX, INT32_MAX - 1], near_multiples,
                                rng.integers(0, 2**31, 4096)])
    points = points[(points >= 0) & (points <= INT32_MAX)]
    return points.astype(numpy.uint64)


def check_divisor(divisor, rng):
    multiplier, shift = fast_divmod_params(divisor)
    assert 0 <= multiplier < 2**32 and 0 <= shift < 32
    n = numerators(divisor, rng)
    quotient, remainder = device_divmod(n, divisor, multiplier, shift)
    expected_q, expected_r = numpy.divmod(n, numpy.uint64(divisor))
    bad = numpy.flatnonzero((quotient != expected_q) | (remainder != expected_r))
    assert bad.size == 0, f"divisor {divisor}: wrong for n = {n[bad[:5]]}"


def test_fast_divmod_exact_for_every_divisor_up_to_4096(rng):
    for divisor in range(1, 4097):
        check_divisor(divisor, rng)


def test_fast_divmod_exact_for_large_divisors(rng):
    edges = [2**k + e for k in range(12, 31) for e in (-1, 0, 1)] + [INT32_MAX]
    for divisor in edges + [int(d) for d in rng.integers(4097, 2**31, 200)]:
        check_divisor(divisor, rng)


def test_fast_divmod_exhaustive_numerators_for_small_divisors():
    n = numpy.arange(0, 2**20, dtype=numpy.uint64)
    for divisor in (1, 2, 3, 5, 6, 7, 9, 10, 12, 49, 56, 98, 112, 641, 1023, 3025):
        quotient, remainder = device_divmod(n, divisor, *fast_divmod_params(divisor))
        assert numpy.array_equal(quotient, n // numpy.uint64(divisor)), divisor
        assert numpy.array_equal(remainder, n % numpy.uint64(divisor)), divisor


def test_elementwise_blocks_cover_every_item_once():
    # 4 float4s a thread, 1024 a 256-thread block; the unaligned path counts elements, not float4s
    assert [elementwise_blocks(n, True) for n in (1, 4095, 4096, 4099, 4100)] == [1, 1, 1, 1, 2]
    assert [elementwise_blocks(n, False) for n in (1, 1024, 1025)] == [1, 1, 2]


@pytest.mark.parametrize("divisor", [0, -3, 2**31])
def test_fast_divmod_rejects_divisor_out_of_range(divisor):
    with pytest.raises(ValueError, match="divisor must be in"):
        fast_divmod_params(divisor)


def test_cdiv():
    assert [cdiv(a, 4) for a in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


def test_require_int32_indexable_names_the_array():
    require_int32_indexable("x", (2**15, 2**16 - 1))
    with pytest.raises(ValueError, match=r"x of shape \(65536, 32768\) has 2147483648 elements"):
        require_int32_indexable("x", (2**16, 2**15))
