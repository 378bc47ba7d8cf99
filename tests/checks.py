"""Comparison helpers for the op tests: relative error, moving data to a backend, finite differences, the thread
count of the NumPy path's loops."""
from __future__ import annotations

import numba
import numpy

import cnn_gpu


def pair(v):
    """An int or a pair as a pair (kernel sizes, strides, paddings)."""
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_axis(size, window, stride, padding):
    """(pad before, output size) along one axis, derived from the definitions ('same': Keras, an odd extra
    pad at the end). The tests' own reference geometry, independent of cnn_gpu.ops.geometry."""
    if padding == "same":
        out = -(-size // stride)
        return max((out - 1) * stride + window - size, 0) // 2, out
    pad = 0 if padding == "valid" else padding
    return pad, (size + 2 * pad - window) // stride + 1


def naive_conv2d(x, w, b, stride, pads):
    """y[n,k,oh,ow] = b[k] + Σ w[k,c,r,s]·x[n,c,oh·sh − pt + r, ow·sw − pl + s] (x zero outside), the definition one
    multiply-add at a time in float64; stride = (sh, sw), pads = (top, bottom, left, right)."""
    return naive_grouped_conv2d(x, w, b, stride, (1, 1), pads, 1)


def naive_grouped_conv2d(x, w, b, stride, dilation, pads, groups):
    """y[n,k,oh,ow] = b[k] + Σ_{c',r,s} w[k,c',r,s]·x[n, g·Cg + c', oh·sh − pt + r·dh, ow·sw − pl + s·dw] (g = k // Kg,
    x zero outside): the definition, one multiply-add at a time in float64. pads = (top, bottom, left, right)."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = stride, dilation, pads
    Kg = K // groups
    OH = (H + pt + pb - (R - 1) * dh - 1) // sh + 1
    OW = (W + pl + pr - (S - 1) * dw - 1) // sw + 1
    y = numpy.zeros((N, K, OH, OW))
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for oh in range(OH):
                for ow in range(OW):
                    total = 0.0 if b is None else float(b[k])
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h, v = oh * sh - pt + r * dh, ow * sw - pl + s * dw
                                if 0 <= h < H and 0 <= v < W:
                                    total += float(w[k, c, r, s]) * float(x[n, g * Cg + c, h, v])
                    y[n, k, oh, ow] = total
    return y


def rel_error(ours, ref) -> float:
    """‖ours − ref‖ / ‖ref‖ in float64, on the host. NaN anywhere in ours makes it NaN (fails < tol)."""
    ours = numpy.asarray(cnn_gpu.to_numpy(ours), dtype=numpy.float64)
    ref = numpy.asarray(cnn_gpu.to_numpy(ref), dtype=numpy.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference shape {ref.shape}"
    denom = numpy.linalg.norm(ref)
    diff = numpy.linalg.norm(ours - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def error_relative_to(ours, ref, scale) -> float:
    """‖ours − ref‖ / ‖scale‖ in float64: the error measured against the size of the terms that formed
    ref, for results that cancel (1 − y² near |y| = 1, sigmoid(z) − t near t). rel_error would divide
    a rounding error of the terms by a small difference and fail on an unlucky draw."""
    ours = numpy.asarray(cnn_gpu.to_numpy(ours), dtype=numpy.float64)
    ref = numpy.asarray(cnn_gpu.to_numpy(ref), dtype=numpy.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference shape {ref.shape}"
    return float(numpy.linalg.norm(ours - ref) / numpy.linalg.norm(numpy.asarray(scale, dtype=numpy.float64)))


def to_backend(xp, *arrays):
    """Host float arrays -> the test's backend (float32 there for cuda)."""
    out = tuple(xp.asarray(a) for a in arrays)
    return out if len(out) > 1 else out[0]


def numeric_grad(f, x, dy, eps=1e-6):
    """Central finite differences of sum(f(x) * dy) with respect to x (float64, modifies x temporarily)."""
    grad = numpy.zeros_like(x)
    flat = x.reshape(-1)
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = numpy.sum(f(x) * dy)
        flat[i] = old - eps
        minus = numpy.sum(f(x) * dy)
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return grad


def compile_variant_without_spills(family, arch, defines):
    """NVRTC-compile one variant of kernels/<family>.cu as run time does (skips where NVRTC is missing) and
    assert no error, no warning and no register spill; returns the per-kernel report."""
    import pytest

    from cnn_gpu.cuda import compile_check

    try:
        result = compile_check.compile_family(family, arch, defines)
    except compile_check.NVRTCUnavailable as exc:
        pytest.skip(str(exc))
    assert result.ok and not result.diagnostics, result.log
    assert result.report, f"no ptxas -v report for {family}.cu {defines} on {arch}:\n{result.log}"
    spills = {name: r for name, r in result.report.items() if r["spill_stores"] or r["spill_loads"]}
    assert not spills, f"{family}.cu with {defines} spills registers on {arch}: {spills}"
    return result.report


def load_benchmark_script(name):
    """Import benchmarks/<name>.py (a script folder, not a package) as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@numba.njit(parallel=True)
def _threads_seen(out):
    for i in numba.prange(out.size):
        out[i] = numba.get_num_threads()


def threads_of_a_loop() -> set:
    """The numba thread counts a loop of the NumPy path sees when run as the path runs its loops (run_loop)."""
    from cnn_gpu.ops.parallel import run_loop

    out = numpy.zeros(8, dtype=numpy.int64)
    run_loop(_threads_seen, out)
    return set(out.tolist())
