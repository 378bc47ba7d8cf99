"""Where a small op's time goes on the host: wall-clock microseconds per call, ours against PyTorch.

    PYTHONPATH=. python3 benchmarks/host_overhead.py                (needs a GPU, CuPy and PyTorch)
    PYTHONPATH=. python3 benchmarks/host_overhead.py --python-only  (CuPy installed; no GPU needed)

Small tensors are launch-bound: the GPU finishes a kernel in a few microseconds while the host spends
tens preparing it. This measures that host side, which `cnn-gpu bench` (CUDA events around each call)
sees only as a total:
  1. the launch floor: an empty kernel with 1 and 16 arguments (arrays, numpy scalars, or raw pointers
     as uint64), launched by each CNN_GPU_LAUNCHER path (cupy: CuPy's RawKernel; driver: our
     cuLaunchKernel wrapper, cnn_gpu/cuda/launcher.py), and cupy.empty;
  2. per op, once per launcher (each in a process of its own: the switch is read when kernels load):
     back-to-back calls with no synchronisation in between, so the time per call is max(host, GPU);
     the ours/torch ratio is what a launch-bound row of the bench reports;
  3. (driver launcher) a cProfile of our calls of three ops, the top functions by own time.
--python-only: the driver launcher's own Python per call, the CUDA calls replaced by no-ops (CPU time
of this thread): what is left of a launch once the driver's share is taken out.
Prints plain text; benchmarks/gpu_run.sh keeps it as host.log. Not a test: the numbers are the point.
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import subprocess
import sys
import time
import timeit

import cupy
import numpy

from cnn_gpu import functional as F
from cnn_gpu.cuda import loader

CALLS = 2000
EMPTY_KERNELS = r'''
extern "C" __global__ void one(float* a) {}
extern "C" __global__ void sixteen(const float* a, const float* b, float* c, long long n,
    int p0, int p1, int p2, int p3, int p4, int p5, int p6, int p7, int p8, int p9, int p10, float s) {}
'''


def per_call_us(fn, calls=CALLS):
    """Microseconds a call over `calls` back-to-back calls (after warm-up), the GPU drained at the end (a
    device synchronize also waits for PyTorch's streams: same device, same primary context)."""
    for _ in range(20):
        fn()
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    cupy.cuda.Device().synchronize()
    return 1e6 * (time.perf_counter() - start) / calls


def floor_cases(one, sixteen, a):
    """(label, call) for the empty kernels `one` (1 pointer) and `sixteen` (3 pointers + 13 scalars) on a."""
    ints = tuple(numpy.int32(i) for i in range(11))
    ptr = numpy.uint64(a.data.ptr)
    return [
        ("1 array argument", lambda: one((1,), (32,), (a,))),
        ("16 args: 3 arrays + 13 numpy scalars",
         lambda: sixteen((1,), (32,), (a, a, a, numpy.int64(16)) + ints + (numpy.float32(1),))),
        ("16 args: 3 uint64 pointers + 13 scalars",
         lambda: sixteen((1,), (32,), (ptr, ptr, ptr, numpy.int64(16)) + ints + (numpy.float32(1),))),
    ]


def launch_floor():
    from cnn_gpu.cuda.launcher import DriverKernel

    module = cupy.RawModule(code=EMPTY_KERNELS)
    a = cupy.zeros(16, dtype=numpy.float32)
    columns = {}
    for launcher, wrap in (("cupy", lambda raw: raw), ("driver", DriverKernel)):  # what load_kernel hands out
        one, sixteen = (wrap(module.get_function(name)) for name in ("one", "sixteen"))
        columns[launcher] = [per_call_us(fn) for _, fn in floor_cases(one, sixteen, a)]
    print("## Launch floor: an empty kernel (µs a call), by CNN_GPU_LAUNCHER")
    print(f"{'':48s}" + "".join(f"{launcher:>9s}" for launcher in loader.LAUNCHERS))
    for row, (label, _) in enumerate(floor_cases(None, None, a)):
        print(f"{label:48s}" + "".join(f"{columns[launcher][row]:9.2f}" for launcher in loader.LAUNCHERS))
    allocation = per_call_us(lambda: cupy.empty((32, 32, 24, 24), dtype=numpy.float32))
    print(f"{allocation:8.2f}  cupy.empty((32, 32, 24, 24), float32)")
    print(f"{per_call_us(lambda: numpy.int32(7)):8.2f}  numpy.int32(7) (one scalar argument built)")


def python_only():
    """The driver launcher's Python per call on this CPU, the CUDA calls replaced by no-ops; CPU time of this
    thread (min of 9 rounds), so a busy machine does not inflate it. Needs CuPy installed, not a GPU."""
    from types import SimpleNamespace

    from cupy.cuda import memory

    from cnn_gpu.cuda import launcher

    stream = SimpleNamespace(ptr=0)
    launcher._get_device = lambda: 0
    launcher._current_stream = lambda device: stream
    launcher._launch_kernel = lambda *call: None
    launcher._make_context_current = lambda: None
    kernel = launcher.DriverKernel(SimpleNamespace(kernel=SimpleNamespace(ptr=1), name="empty"))
    nowhere = memory.UnownedMemory(0x7F00_0000_0000, 64, None, device_id=0)  # an address no GPU backs
    a = cupy.ndarray((16,), numpy.float32, memptr=memory.MemoryPointer(nowhere, 0))
    rows = floor_cases(kernel, kernel, a)[:2] + [("the no-op stand-in for cuLaunchKernel alone",
                                                   lambda: launcher._launch_kernel(*range(11)))]
    print("## The driver launcher's Python (µs a call; CPU time, CUDA calls replaced by no-ops, no GPU)")
    for label, fn in rows:
        seconds = min(timeit.repeat(fn, number=100_000, repeat=9, timer=time.thread_time))
        print(f"{1e6 * seconds / 100_000:8.2f}  {label}")


def ops(with_profile: bool):
    import torch

    r = cupy.random.RandomState(0)
    t = lambda a: torch.from_dlpack(a)  # noqa: E731  zero-copy view of the same memory
    x = r.standard_normal((32, 32, 24, 24), dtype=numpy.float32)
    y, idx = F.max_pool2d(x, 2)
    dy = r.standard_normal(y.shape, dtype=numpy.float32)
    tx, tdy = t(x), t(dy)
    ty, tidx = torch.nn.functional.max_pool2d(tx, 2, return_indices=True)
    xl, wl, bl = (r.standard_normal(s, dtype=numpy.float32) for s in ((128, 1024), (128, 1024), (128,)))
    dyl = r.standard_normal((128, 128), dtype=numpy.float32)
    xc, wc, bc = (r.standard_normal(s, dtype=numpy.float32) for s in ((128, 1, 28, 28), (32, 1, 5, 5), (32,)))
    dyc = r.standard_normal((128, 32, 24, 24), dtype=numpy.float32)
    logits, labels = r.standard_normal((128, 10), dtype=numpy.float32), r.randint(0, 10, size=128, dtype=numpy.int64)
    tlogits = t(logits).requires_grad_()
    cases = [
        ("relu (32, 32, 24, 24)", lambda: F.relu(x), lambda: torch.relu(tx)),
        ("relu_backward", lambda: F.relu_backward(x, x), lambda: torch.ops.aten.threshold_backward(tx, tx, 0)),
        ("max_pool2d k2 (32, 32, 24, 24)", lambda: F.max_pool2d(x, 2),
         lambda: torch.nn.functional.max_pool2d(tx, 2, return_indices=True)),
        ("max_pool2d_backward", lambda: F.max_pool2d_backward(dy, idx, x.shape, 2),
         lambda: torch.ops.aten.max_pool2d_with_indices_backward(tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, tidx)),
        ("matmul 128x128 @ 128x64", lambda: F.matmul(xl[:, :128], wl[:64, :128].T),
         lambda: torch.mm(t(xl)[:, :128], t(wl)[:64, :128].T)),
        ("linear 1024->128 relu, N128", lambda: F.linear(xl, wl, bl, "relu"),
         lambda: torch.relu(torch.nn.functional.linear(t(xl), t(wl), t(bl)))),
        ("linear_backward 1024->128, N128", lambda: F.linear_backward(dyl, xl, wl),
         lambda: (torch.mm(t(dyl), t(wl)), torch.mm(t(dyl).T, t(xl)), t(dyl).sum(0))),
        ("conv2d 1->32 k5 relu, N128", lambda: F.conv2d(xc, wc, bc, activation="relu"),
         lambda: torch.relu(torch.nn.functional.conv2d(t(xc), t(wc), t(bc)))),
        ("conv2d_backward (first layer: no dx)", lambda: F.conv2d_backward(dyc, xc, wc, compute_dx=False),
         lambda: torch.ops.aten.convolution_backward(t(dyc), t(xc), t(wc), [32], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, True])),
        ("softmax_cross_entropy N128 K10", lambda: F.softmax_cross_entropy(logits, labels, check_labels=False),
         lambda: torch.autograd.grad(torch.nn.functional.cross_entropy(tlogits, t(labels)), tlogits)),
    ]
    torch.backends.cudnn.benchmark = True
    print(f"\n## Small ops, CNN_GPU_LAUNCHER={loader.launcher_choice()}: back-to-back calls "
          "(µs a call; wall clock, GPU drained at the end)")
    print(f"{'op':40s} {'ours':>8s} {'torch':>8s} {'torch/ours':>10s}")
    for label, ours, ref in cases:
        a, b = per_call_us(ours), per_call_us(ref)
        print(f"{label:40s} {a:8.1f} {b:8.1f} {b / a:10.2f}")
    if not with_profile:
        return
    print("\n## cProfile of our calls (top 12 by own time, 1000 calls each)")
    for label, ours, _ in (cases[2], cases[5], cases[8]):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(1000):
            ours()
        profile.disable()
        cupy.cuda.Device().synchronize()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
        print(f"\n### {label}\n" + "\n".join(line for line in text.getvalue().splitlines()[6:] if line.strip()))


if __name__ == "__main__":
    if "--python-only" in sys.argv:
        python_only()
    elif "--ops" in sys.argv:
        ops(with_profile="--profile" in sys.argv)
    else:
        launch_floor()
        sys.stdout.flush()
        for launcher in loader.LAUNCHERS:  # a process each: the switch is read as kernels load
            extra = ["--profile"] if launcher == "driver" else []
            subprocess.run([sys.executable, __file__, "--ops", *extra], check=True,
                           env={**os.environ, "CNN_GPU_LAUNCHER": launcher})
