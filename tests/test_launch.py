"""cnn_gpu.cuda.grid and cnn_gpu.cuda.driver_launch on the host.

launch: FastDivmod's parameters, checked through a Python transcription of the device formula in
kernels/common.cuh against // and % (the CPU proof that the kernels' division is exact for every numerator
they can see, 0 <= n < 2**31), and the plain launch-shape helpers.

launcher (the cuLaunchKernel path load_kernel hands out): each argument's slot byte for byte, the
TypeError for what it does not take, one set of buffers per thread, what reaches the driver call (with the
driver replaced by a recorder), CNN_GPU_LAUNCHER; on a GPU, a kernel that writes back every argument it
received, launched both ways, eagerly and replayed from a captured CUDA graph.
"""
import ctypes
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy
import pytest

from cnn_gpu.cuda.grid import INT32_MAX, cdiv, elementwise_blocks, fast_divmod_params, require_int32_indexable


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
    require_int32_indexable("x", (2**15, 2**16 - 3))  # within 2**31 - 1 less the kernels' headroom
    with pytest.raises(ValueError, match=r"x of shape \(65536, 32768\) has 2147483648 elements"):
        require_int32_indexable("x", (2**16, 2**15))


# ---- cnn_gpu.cuda.driver_launch -------------------------------------------------------------------------
@pytest.fixture
def launcher():
    """cnn_gpu.cuda.driver_launch (it needs CuPy installed, not a GPU)."""
    return pytest.importorskip("cnn_gpu.cuda.driver_launch")


def device_array(address: int, n: int = 16, subclass: bool = False):
    """A float32 cupy.ndarray (or an instance of a subclass) said to live at `address`, backed by nothing:
    packs like a real one, no GPU needed."""
    import cupy
    from cupy.cuda import memory

    nowhere = memory.UnownedMemory(address, 4 * n, None, device_id=0)
    kind = type("DeviceArraySubclass", (cupy.ndarray,), {}) if subclass else cupy.ndarray
    return kind((n,), numpy.float32, memptr=memory.MemoryPointer(nowhere, 0))


def slot_bytes(params: int, count: int) -> list:
    """The 8 bytes each of the void*[] kernel_params' `count` pointers points at."""
    return [ctypes.string_at(p, 8) for p in (ctypes.c_void_p * count).from_address(params)]


def float32_from_bits(bits: int):
    return numpy.array(bits, numpy.uint32).view(numpy.float32)[()]


def test_slots_hold_each_argument_byte_for_byte(launcher):
    base = 0x7F00_1234_5600
    subnormal = numpy.float32(1e-38)
    assert 0 < subnormal < numpy.finfo(numpy.float32).tiny
    quiet_nan = float32_from_bits(0xFFC0_1234)  # negative, with a payload
    signalling_nan = float32_from_bits(0x7F80_0001)  # a trip through a C float or double would quiet it
    cases = [
        (device_array(base), struct.pack("<Q", base)),
        (device_array(base)[3:], struct.pack("<Q", base + 12)),  # a view: its own pointer
        (device_array(base + 64, subclass=True), struct.pack("<Q", base + 64)),
        (None, bytes(8)),
        (numpy.int32(-1), struct.pack("<q", -1)),  # 64-bit two's complement: the low 4 are the int32's
        (numpy.int32(2**31 - 1), struct.pack("<q", 2**31 - 1)),
        (numpy.int32(-2**31), struct.pack("<q", -2**31)),
        (numpy.int64(-(2**62) - 12345), struct.pack("<q", -(2**62) - 12345)),
        (numpy.int64(2**63 - 1), struct.pack("<q", 2**63 - 1)),
        (numpy.uint64(0xFFFF_8000_DEAD_BEE8), struct.pack("<Q", 0xFFFF_8000_DEAD_BEE8)),  # above 2**63
        (numpy.uint64(0), bytes(8)),
        (numpy.uint32(0xFFFF_FFFF), struct.pack("<Q", 0xFFFF_FFFF)),
        (numpy.float32(1.5), struct.pack("<f", 1.5) + bytes(4)),
        (numpy.float32(-0.0), struct.pack("<f", -0.0) + bytes(4)),
        (subnormal, struct.pack("<f", 1e-38) + bytes(4)),
        (numpy.float32(numpy.inf), struct.pack("<f", float("inf")) + bytes(4)),
        (quiet_nan, struct.pack("<f", float(quiet_nan)) + bytes(4)),
        (quiet_nan, struct.pack("<I", 0xFFC0_1234) + bytes(4)),
        (signalling_nan, struct.pack("<I", 0x7F80_0001) + bytes(4)),
    ]
    args = tuple(arg for arg, _ in cases)
    assert slot_bytes(launcher.pack_arguments(args), len(args)) == [expected for _, expected in cases]


def test_buffers_are_built_once_per_argument_count_and_rewritten(launcher):
    first = launcher.pack_arguments((numpy.int32(1), numpy.int32(2)))
    again = launcher.pack_arguments((numpy.int32(-3), None))
    assert again == first
    assert slot_bytes(again, 2) == [struct.pack("<q", -3), bytes(8)]
    assert launcher.pack_arguments((numpy.int32(1), numpy.int32(2), numpy.int32(3))) != first


def test_each_thread_packs_into_buffers_of_its_own(launcher):
    both_packed, both_read = threading.Barrier(2), threading.Barrier(2)

    def pack(value):
        params = launcher.pack_arguments((numpy.int32(value), numpy.int64(value)))
        both_packed.wait()  # the other thread has written its slots by now
        contents = slot_bytes(params, 2)
        both_read.wait()  # neither thread ends (freeing its buffers) before the other has read
        return params, contents

    with ThreadPoolExecutor(2) as pool:
        (params_a, read_a), (params_b, read_b) = pool.map(pack, (7, -9))
    assert params_a != params_b
    assert read_a == [struct.pack("<q", 7)] * 2
    assert read_b == [struct.pack("<q", -9)] * 2


class FakeRawKernel:
    """What DriverKernel uses of a CuPy RawKernel: .kernel.ptr, loaded for the current device."""

    name = "fake"

    def __init__(self, driver):
        self.driver = driver

    @property
    def kernel(self):
        self.driver.loads += 1
        return type("Function", (), {"ptr": 0xF000 + self.driver.device})()


class FakeDriver:
    """The CUDA calls of a launch replaced by a recorder: each launch with its arguments' slot bytes."""

    def __init__(self):
        self.device, self.loads, self.contexts, self.launches = 0, 0, [], []

    def launch(self, function, gx, gy, gz, bx, by, bz, shared_mem, stream, params, extra):
        self.launches.append(dict(function=function, grid=(gx, gy, gz), block=(bx, by, bz), shared_mem=shared_mem,
                                  stream=stream, params=params, extra=extra))


@pytest.fixture
def fake_driver(launcher, monkeypatch):
    driver = FakeDriver()
    streams = {0: type("Stream", (), {"ptr": 0x5_0000})(), 1: type("Stream", (), {"ptr": 0x5_0001})()}
    monkeypatch.setattr(launcher, "_get_device", lambda: driver.device)
    monkeypatch.setattr(launcher, "_current_stream", lambda device: streams[device])
    monkeypatch.setattr(launcher, "_launch_kernel", driver.launch)
    monkeypatch.setattr(launcher, "_make_context_current", lambda: driver.contexts.append(driver.device))
    monkeypatch.setattr(launcher, "_THREAD", launcher._ThreadState())  # no context marked entered for real
    return driver


def test_a_launch_passes_dims_stream_function_and_arguments(launcher, fake_driver):
    kernel = launcher.DriverKernel(FakeRawKernel(fake_driver))
    kernel((5,), (128,), (device_array(0x7F00_0000_0100), numpy.int32(-4), numpy.float32(0.25)))
    first = fake_driver.launches[-1]
    assert slot_bytes(first["params"], 3) == [struct.pack("<Q", 0x7F00_0000_0100), struct.pack("<q", -4),
                                              struct.pack("<f", 0.25) + bytes(4)]
    assert first == dict(function=0xF000, grid=(5, 1, 1), block=(128, 1, 1), shared_mem=0, stream=0x5_0000,
                         params=first["params"], extra=0)
    kernel((2, 3), (8, 4, 2), (None,), shared_mem=1024)
    kernel((0,), (32,), (None,))  # an empty problem: one block, as CuPy launches it
    fake_driver.device = 1
    kernel((1, 1, 7), (64, 2), ())
    _, second, empty, other_device = fake_driver.launches
    assert (second["grid"], second["block"], second["shared_mem"]) == ((2, 3, 1), (8, 4, 2), 1024)
    assert empty["grid"] == (1, 1, 1)
    assert (other_device["function"], other_device["stream"], other_device["grid"], other_device["block"]) == \
        (0xF001, 0x5_0001, (1, 1, 7), (64, 2, 1))
    assert fake_driver.loads == 2  # the CUfunction looked up once per device
    assert fake_driver.contexts == [0, 1]  # each device's context made current once in this thread


@pytest.mark.parametrize("bad", [3, 2.5, True, numpy.float64(1.0), numpy.zeros(2, numpy.float32)],
                         ids=["int", "float", "bool", "float64", "numpy-array"])
def test_an_unsupported_argument_is_a_type_error_naming_it_before_any_launch(launcher, fake_driver, bad):
    kernel = launcher.DriverKernel(FakeRawKernel(fake_driver))
    kind = type(bad)
    with pytest.raises(TypeError, match=rf"kernel argument 2 is a {kind.__module__}\.{kind.__qualname__}; "):
        kernel((1,), (32,), (None, numpy.int32(1), bad, numpy.int32(2)))
    assert fake_driver.launches == []


@pytest.mark.parametrize("setting, driver_path", [(None, True), ("driver", True), (" Driver ", True), ("cupy", False)])
def test_cnn_gpu_launcher_picks_the_launch_path(launcher, monkeypatch, setting, driver_path):
    from cnn_gpu.cuda import loader

    if setting is None:
        monkeypatch.delenv("CNN_GPU_LAUNCHER", raising=False)
    else:
        monkeypatch.setenv("CNN_GPU_LAUNCHER", setting)
    raw = FakeRawKernel(FakeDriver())
    kernel = loader.kernel_launcher(raw)
    if driver_path:
        assert isinstance(kernel, launcher.DriverKernel) and kernel.raw_kernel is raw
    else:
        assert kernel is raw


def test_cnn_gpu_launcher_names_itself_when_unknown(launcher, monkeypatch):
    from cnn_gpu.cuda import loader

    monkeypatch.setenv("CNN_GPU_LAUNCHER", "fast")
    with pytest.raises(ValueError, match=r"CNN_GPU_LAUNCHER must be one of driver, cupy; got 'fast'"):
        loader.kernel_launcher(FakeRawKernel(FakeDriver()))


# ---- on a GPU: every argument kind arrives, both launch paths, eagerly and from a captured graph -----
ECHO_SOURCE = r'''
extern "C" __global__ void echo_arguments(const float* x, int a, long long b, int c, float f, const float* absent,
                                          unsigned long long u, int d, long long* out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    out[0] = (long long)x;
    out[1] = __float_as_uint(x[1]);  // read through the pointer
    out[2] = a;
    out[3] = b;
    out[4] = c;
    out[5] = __float_as_uint(f);
    out[6] = (long long)absent;
    out[7] = (long long)u;
    out[8] = d;
}
'''


def echo_case(x, out, a, b, c, f, u, d):
    """(arguments, the 9 values echo_arguments writes, as uint64s) for these values."""
    import cupy

    args = (x, numpy.int32(a), numpy.int64(b), numpy.int32(c), numpy.float32(f), None, numpy.uint64(u),
            numpy.int32(d), out)
    x1_bits = cupy.asnumpy(x[1:2]).view(numpy.uint32)[0]
    f_bits = numpy.float32(f).view(numpy.uint32)
    return args, [int(v) % 2**64 for v in (x.data.ptr, x1_bits, a, b, c, f_bits, 0, u, d)]


@pytest.mark.parametrize("mode", ["driver", "cupy"])
def test_every_argument_arrives_eagerly_and_from_a_captured_graph(backend, rng, mode):
    if backend != "cuda":
        pytest.skip("launches a CUDA kernel")
    import cupy

    from cnn_gpu.cuda.driver_launch import DriverKernel

    raw = cupy.RawKernel(ECHO_SOURCE, "echo_arguments")
    kernel = DriverKernel(raw) if mode == "driver" else raw
    x = cupy.asarray(rng.standard_normal(3).astype(numpy.float32))
    out = cupy.full(9, -7, numpy.int64)
    eager, expected_eager = echo_case(x, out, -123456, -(2**40) - 5, 2**31 - 1, 1e-38, 2**63 + 1, -1)
    captured, expected_captured = echo_case(x[1:], out, 42, 2**62 + 3, -2**31, -0.0, 0xFFFF_FFFF, 7)

    kernel((1,), (32,), eager)
    assert cupy.asnumpy(out).view(numpy.uint64).tolist() == expected_eager

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            kernel((1,), (32,), captured)
        finally:
            graph = stream.end_capture()
    out.fill(-7)
    kernel((1,), (32,), eager)  # rewrites this thread's slots after the capture: the graph keeps its own copy
    cupy.cuda.Device().synchronize()
    assert cupy.asnumpy(out).view(numpy.uint64).tolist() == expected_eager
    graph.launch(stream)
    stream.synchronize()
    assert cupy.asnumpy(out).view(numpy.uint64).tolist() == expected_captured
