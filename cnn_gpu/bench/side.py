"""Where a benchmark run happens: the array library, PyTorch beside it, random inputs and the timer (Side), and
the device's ceilings measured in the same run (copy bandwidth, SGEMM rate)."""
from __future__ import annotations

import statistics
import time

import numpy

MIN_REPEATS = 20
MAX_REPEATS = 100
TARGET_SECONDS_PER_SIDE = 0.25   # repeats grow up to MAX_REPEATS while one side's timing stays under this


class Side:
    """The array library, the optional PyTorch, random inputs and the timer of one run.

    device 'cuda': CuPy + our kernels, torch on the same GPU; 'cpu': NumPy, torch on the CPU.
    with_torch=False leaves the references out (side.torch is None).
    """

    def __init__(self, device: str, seed: int, with_torch: bool = True):
        self.device = device
        if device == "cuda":
            import cupy

            self.xp = cupy
            self.cache_bytes = int(cupy.cuda.Device().attributes["L2CacheSize"])
            self.cupy_float32_gemm = _fp32_cublas_in_cupy()
            self.rng = cupy.random.RandomState(seed)  # cuRAND's host API: no run-time headers needed
        else:
            self.xp = numpy
            self.cache_bytes = 0  # on the CPU the (quick, smoke-test) run does not rotate
            self.rng = numpy.random.default_rng(seed)
        self.torch = _import_torch(device) if with_torch else None

    # inputs: random, never zeros (CuPy's RandomState and NumPy's Generator spell two of these apart)
    def normal(self, *shape, scale=1.0):
        a = self.rng.standard_normal(shape, dtype=numpy.float32)
        return a * numpy.float32(scale) if scale != 1.0 else a

    def uniform(self, *shape, low=0.0, high=1.0):
        draw = self.rng.random_sample if self.device == "cuda" else self.rng.random
        return draw(shape, dtype=numpy.float32) * numpy.float32(high - low) + numpy.float32(low)

    def labels(self, n, classes):
        draw = self.rng.randint if self.device == "cuda" else self.rng.integers
        return draw(0, classes, size=n, dtype=numpy.int64)

    # PyTorch hand-over: zero-copy views both ways
    def to_torch(self, a):
        return self.torch.from_dlpack(a) if self.device == "cuda" else self.torch.from_numpy(a)

    def from_torch(self, t):
        t = t.detach()
        if self.device == "cuda":
            return self.xp.from_dlpack(t.contiguous())
        return t.numpy()

    def synchronize(self):
        if self.device == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def release(self):
        """Return cached device memory between cases (CuPy's pool and PyTorch's allocator)."""
        if self.device == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()

    def time_ms(self, calls, repeats: int) -> list:
        """Milliseconds of each of `repeats` calls, cycling through `calls` (one per input set)."""
        if self.device == "cuda":
            cuda = self.xp.cuda
            starts = [cuda.Event() for _ in range(repeats)]
            ends = [cuda.Event() for _ in range(repeats)]
            for i in range(repeats):
                starts[i].record()
                calls[i % len(calls)]()
                ends[i].record()
            ends[-1].synchronize()
            return [cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            calls[i % len(calls)]()
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    def warm_seconds_per_call(self, calls, count: int) -> float:
        """Run `count` warm-up calls; their mean wall time (synchronised) estimates one call."""
        self.synchronize()
        t0 = time.perf_counter()
        for i in range(count):
            calls[i % len(calls)]()
        self.synchronize()
        return (time.perf_counter() - t0) / max(count, 1)


def _import_torch(device: str):
    """torch set up for FP32-against-FP32 references, or None when it cannot serve this device."""
    try:
        import torch
    except Exception:  # not installed, or a broken install: the run goes on without references
        return None
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    return torch


def _fp32_cublas_in_cupy():
    """Make cupy.matmul plain FP32 (CUPY_TF32=1 would otherwise switch float32 GEMMs to TF32)."""
    import cupy
    from cupy._core import _routines_linalg as linalg

    linalg.set_compute_type(cupy.float32, linalg.COMPUTE_TYPE_DEFAULT)
    return linalg.compute_type_to_str(linalg.get_compute_type(cupy.float32))


# ---- ceilings ------------------------------------------------------------------------------------
def measure_ceilings(side: Side) -> dict:
    """Copy bandwidth (GB/s, read + write) and SGEMM rate (TFLOP/s), measured now on this device."""
    xp = side.xp
    if side.device == "cuda":
        nbytes, n_gemm = 1 << 30, 8192
        src = side.normal(nbytes // 4)
        dst = xp.empty_like(src)
        runtime, stream = xp.cuda.runtime, xp.cuda.get_current_stream().ptr
        copy = lambda: runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, runtime.memcpyDeviceToDevice, stream)
        copy_method = "cudaMemcpyAsync device-to-device, 1 GiB"
        gemm_method = f"cuBLAS SGEMM via cupy.matmul, {n_gemm}³, FP32 (TF32 off)"
    else:
        nbytes, n_gemm = 1 << 26, 512
        src = side.normal(nbytes // 4)
        dst = numpy.empty_like(src)
        copy = lambda: numpy.copyto(dst, src)
        copy_method = "numpy.copyto, 64 MiB"
        gemm_method = f"numpy.matmul float32, {n_gemm}³"
    copy_ms = _median_ms(side, [copy])
    a, b = side.normal(n_gemm, n_gemm), side.normal(n_gemm, n_gemm)
    gemm_ms = _median_ms(side, [lambda: xp.matmul(a, b)])
    src = dst = a = b = None  # the buffers (1 GiB on a GPU) freed before release(); the lambdas are done with them
    side.release()
    return {
        "copy_gbps": 2 * nbytes / copy_ms / 1e6, "copy_ms": copy_ms, "copy_method": copy_method,
        "sgemm_tflops": 2 * n_gemm**3 / gemm_ms / 1e9, "sgemm_ms": gemm_ms, "sgemm_method": gemm_method,
    }


def _median_ms(side: Side, calls, warmup: int = 3) -> float:
    per_call = side.warm_seconds_per_call(calls, max(warmup, len(calls)))
    return statistics.median(side.time_ms(calls, _repeats_for(per_call)))


def _repeats_for(seconds_per_call: float) -> int:
    fitting = int(TARGET_SECONDS_PER_SIDE / max(seconds_per_call, 1e-9))
    return max(MIN_REPEATS, min(MAX_REPEATS, fitting))


