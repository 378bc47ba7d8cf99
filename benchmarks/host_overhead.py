"""Where a small op's time goes on the host: wall-clock microseconds per call, ours against PyTorch.

    PYTHONPATH=. python3 benchmarks/host_overhead.py                (needs a GPU, CuPy and PyTorch)
    PYTHONPATH=. python3 benchmarks/host_overhead.py --python-only  (CuPy installed; no GPU needed)

Small tensors are launch-bound: the GPU finishes a kernel in a few microseconds while the host spends
tens preparing it. This measures that host side, which `cnn-gpu bench` (CUDA events around each call)
sees only as a total:
  1. the launch floor: an empty kernel with 1 and 16 arguments (arrays, numpy scalars, or raw pointers
     as uint64), launched by each CNN_GPU_LAUNCHER path (cupy: CuPy's RawKernel; driver: our
     cuLaunchKernel wrapper, cnn_gpu/cuda/driver_launch.py), and cupy.empty;
  2. per op, once per launcher (each in a process of its own: the switch is read when kernels load):
     back-to-back calls with no synchronisation in between, so the time per call is max(host, GPU);
     the ours/torch ratio is what a launch-bound row of the bench reports;
  3. (driver launcher) a cProfile of our calls of three ops, the top functions by own time;
  4. the --python-only tables below, on this host's CPU.
--python-only: what is left once the GPU's and the driver's share is taken out (CPU time of this thread):
the driver launcher's own Python per call, the CUDA calls replaced by no-ops; then, per small op of (2),
our Python per call and the Python functions it runs, with real CuPy arrays over memory no GPU backs
(allocation makes such arrays: CuPy's memory pool is not timed), the launcher's CUDA calls no-ops,
kernels not compiled, 132 SMs and the autotuner keeping each default. These rows need no GPU, so they
compare a change measured on a workstation with what the GPU host's CPU makes of it.
Prints plain text; benchmarks/gpu_run.sh keeps it as host.log. Not a test: the numbers are the point.
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
import timeit
from types import SimpleNamespace

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
    from cnn_gpu.cuda.driver_launch import DriverKernel

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
    thread (min of 9 rounds), so a busy machine does not inflate it. Then each small op's Python (see the
    module docstring). Needs CuPy installed, not a GPU; replaces CuPy's allocation for the rest of the process."""
    from cupy.cuda import memory

    from cnn_gpu.cuda import driver_launch

    nowhere = memory.UnownedMemory(0x7F00_0000_0000, 1 << 40, None, device_id=0)  # an address no GPU backs
    new = _without_gpu(lambda shape, dtype: cupy.ndarray(shape, dtype, memptr=memory.MemoryPointer(nowhere, 0)))
    kernel = driver_launch.DriverKernel(SimpleNamespace(kernel=SimpleNamespace(ptr=1), name="empty"))
    rows = floor_cases(kernel, kernel, new((16,), numpy.float32))[:2] + [
        ("the no-op stand-in for cuLaunchKernel alone", lambda: driver_launch._launch_kernel(*range(11)))]
    print("## The driver launcher's Python (µs a call; CPU time, CUDA calls replaced by no-ops, no GPU)")
    for label, fn in rows:
        seconds = min(timeit.repeat(fn, number=100_000, repeat=9, timer=time.thread_time))
        print(f"{1e6 * seconds / 100_000:8.2f}  {label}")

    print("\n## Small ops' Python (µs a call, CPU time, min of 5 x 2000 calls; Python functions run a call; "
          "allocation, kernels and CUDA calls replaced by stand-ins, no GPU)")
    print(f"{'op':40s} {'µs':>8s} {'calls':>6s}")
    for label, ours in our_calls(small_op_inputs(new)):
        try:
            for _ in range(20):
                ours()
        except Exception as exc:  # a path the stand-ins cannot take (a CuPy routine that needs the GPU)
            print(f"{label:40s}  n/a: {type(exc).__name__}: {exc}"[:120])
            continue
        seconds = min(timeit.repeat(ours, number=2000, repeat=5, timer=time.thread_time))
        print(f"{label:40s} {1e6 * seconds / 2000:8.2f} {python_calls(ours):6d}")


def _without_gpu(new_array):
    """Stand-ins for what needs a GPU, for the rest of this process: cupy.empty / zeros / full return
    new_array(shape, dtype) (contents never read or written), the driver launcher's CUDA calls and the
    kernels' compilation do nothing, the device is 0 with 132 SMs, and the autotuner times every candidate
    alike (so it keeps the default, as CNN_GPU_AUTOTUNE=0 would, but through the same lookups). Returns
    new(shape, dtype=float32)."""
    from cupy.cuda import runtime

    from cnn_gpu.cuda import autotune, device, driver_launch

    def new(shape, dtype=numpy.float32, *_, **__):
        return new_array(shape, dtype)

    cupy.empty = cupy.zeros = new
    cupy.full = lambda shape, fill, dtype=numpy.float32: new(shape, dtype)
    runtime.getDevice = driver_launch._get_device = lambda: 0
    stream = SimpleNamespace(ptr=0)
    driver_launch._current_stream = lambda device: stream
    driver_launch._launch_kernel = lambda *call: None
    driver_launch._make_context_current = lambda: None
    device._device_attributes = lambda device_id: {"MultiProcessorCount": 132}
    loader._load_module = lambda family, defines: SimpleNamespace(
        get_function=lambda name: SimpleNamespace(kernel=SimpleNamespace(ptr=1), name=name))
    autotune._tuner = autotune.Autotuner(cache_file=os.path.join(tempfile.mkdtemp(), "autotune.json"),
                                         timer=lambda run: 1.0, context=lambda family: family)
    return new


def python_calls(fn, calls: int = 100) -> int:
    """Python functions a call of fn runs (sys.setprofile's 'call' events; this file's own stand-ins and
    lambdas not counted), the same on every CPU: what a change to the host path removes, free of noise."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_filename != __file__:
            count += 1

    sys.setprofile(profile)
    try:
        for _ in range(calls):
            fn()
    finally:
        sys.setprofile(None)
    return round(count / calls)


def small_op_inputs(new) -> SimpleNamespace:
    """The small ops' inputs, made by new(shape, dtype=float32) (int64 only for class labels), on the shapes of
    the bench's launch-bound rows (cnn_gpu/bench/cases); saved tensors (pool indices, dropout mask,
    batch-norm statistics) come from our own forward calls."""
    v = SimpleNamespace(
        x=new((32, 32, 24, 24)), xl=new((128, 1024)), wl=new((128, 1024)), bl=new((128,)), dyl=new((128, 128)),
        x3=new((1024, 64)), w3=new((10, 64)), b3=new((10,)), dy3=new((1024, 10)),
        xc=new((128, 1, 28, 28)), wc=new((32, 1, 5, 5)), bc=new((32,)), dyc=new((128, 32, 24, 24)),
        x1=new((32, 1, 28, 28)), dy1=new((32, 32, 24, 24)),  # the MNIST network at N32: conv1 (with wc, bc), conv2
        x2=new((32, 32, 12, 12)), w2=new((64, 32, 5, 5)), b2=new((64,)), dy2=new((32, 64, 8, 8)),
        logits=new((128, 10)), labels=new((128,), numpy.int64), xd=new((128, 64)),
        xb=new((32, 128, 8, 8)), gamma=new((128,)), beta=new((128,)), running_mean=new((128,)), running_var=new((128,)),
        param=new((128, 1024)), grad=new((128, 1024)), m=new((128, 1024)),
        v=F.relu(new((128, 1024))))  # Adam's second moment: never negative
    y, v.idx = F.max_pool2d(v.x, 2)
    v.dy = new(y.shape)
    _, v.mask = F.dropout(v.xd, 0.3, 12345)
    _, v.saved_mean, v.saved_invstd = F.batch_norm(v.xb, v.gamma, v.beta, training=True)
    return v


def our_calls(v) -> list:
    """(label, call) of our side of each small op, over small_op_inputs."""
    return [
        ("relu (32, 32, 24, 24)", lambda: F.relu(v.x)),
        ("relu_backward", lambda: F.relu_backward(v.x, v.x)),
        ("max_pool2d k2 (32, 32, 24, 24)", lambda: F.max_pool2d(v.x, 2)),
        ("max_pool2d_backward", lambda: F.max_pool2d_backward(v.dy, v.idx, v.x.shape, 2)),
        ("matmul 128x128 @ 128x64", lambda: F.matmul(v.xl[:, :128], v.wl[:64, :128].T)),
        ("linear 1024->128 relu, N128", lambda: F.linear(v.xl, v.wl, v.bl, "relu")),
        ("linear_backward 1024->128, N128", lambda: F.linear_backward(v.dyl, v.xl, v.wl)),
        ("linear 64->10, N1024", lambda: F.linear(v.x3, v.w3, v.b3)),
        ("linear_backward 64->10, N1024", lambda: F.linear_backward(v.dy3, v.x3, v.w3)),
        ("conv2d 1->32 k5 relu, N128", lambda: F.conv2d(v.xc, v.wc, v.bc, activation="relu")),
        ("conv2d_backward (first layer: no dx)", lambda: F.conv2d_backward(v.dyc, v.xc, v.wc, compute_dx=False)),
        ("conv2d 1->32 k5 relu, N32", lambda: F.conv2d(v.x1, v.wc, v.bc, activation="relu")),
        ("conv2d_backward 1->32 k5 no dx, N32", lambda: F.conv2d_backward(v.dy1, v.x1, v.wc, compute_dx=False)),
        ("conv2d 32->64 k5 relu, N32", lambda: F.conv2d(v.x2, v.w2, v.b2, activation="relu")),
        ("conv2d_backward 32->64 k5, N32", lambda: F.conv2d_backward(v.dy2, v.x2, v.w2)),
        ("softmax_cross_entropy N128 K10", lambda: F.softmax_cross_entropy(v.logits, v.labels, check_labels=False)),
        ("dropout (128, 64) rate 0.3", lambda: F.dropout(v.xd, 0.3, 12345)),
        ("dropout_backward", lambda: F.dropout_backward(v.xd, v.mask, 0.3)),
        ("batch_norm train (32, 128, 8, 8)", lambda: F.batch_norm(v.xb, v.gamma, v.beta, v.running_mean, v.running_var)),
        ("batch_norm_backward", lambda: F.batch_norm_backward(v.xb, v.xb, v.gamma, v.saved_mean, v.saved_invstd)),
        ("sgd_update momentum (128, 1024)", lambda: F.sgd_update(v.param, v.grad, v.m, 0.1, 0.9)),
        ("adam_update (128, 1024)", lambda: F.adam_update(v.param, v.grad, v.m, v.v, 1)),
    ]


def torch_calls(v, torch) -> dict:
    """label -> PyTorch's call doing what ours does, on views of the same memory (made once, outside the calls)."""
    t = SimpleNamespace(**{name: torch.from_dlpack(a) for name, a in vars(v).items()})
    logits = t.logits.detach().requires_grad_()
    _, indices = torch.nn.functional.max_pool2d(t.x, 2, return_indices=True)
    mask = t.mask.bool()
    param = torch.nn.Parameter(t.param)
    param.grad = t.grad
    sgd, adam = torch.optim.SGD([param], lr=0.1, momentum=0.9), torch.optim.Adam([param])
    sgd.step(), adam.step()  # their state exists from here on, as ours does
    _, saved_mean, saved_invstd = torch.ops.aten.native_batch_norm(t.xb, t.gamma, t.beta, None, None, True, 0.1, 1e-5)
    mm, linear, aten = torch.mm, torch.nn.functional.linear, torch.ops.aten
    return {
        "relu (32, 32, 24, 24)": lambda: torch.relu(t.x),
        "relu_backward": lambda: aten.threshold_backward(t.x, t.x, 0),
        "max_pool2d k2 (32, 32, 24, 24)": lambda: torch.nn.functional.max_pool2d(t.x, 2, return_indices=True),
        "max_pool2d_backward": lambda: aten.max_pool2d_with_indices_backward(
            t.dy, t.x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices),
        "matmul 128x128 @ 128x64": lambda: mm(t.xl[:, :128], t.wl[:64, :128].T),
        "linear 1024->128 relu, N128": lambda: torch.relu(linear(t.xl, t.wl, t.bl)),
        "linear_backward 1024->128, N128": lambda: (mm(t.dyl, t.wl), mm(t.dyl.T, t.xl), t.dyl.sum(0)),
        "linear 64->10, N1024": lambda: linear(t.x3, t.w3, t.b3),
        "linear_backward 64->10, N1024": lambda: (mm(t.dy3, t.w3), mm(t.dy3.T, t.x3), t.dy3.sum(0)),
        "conv2d 1->32 k5 relu, N128": lambda: torch.relu(torch.nn.functional.conv2d(t.xc, t.wc, t.bc)),
        "conv2d_backward (first layer: no dx)": lambda: aten.convolution_backward(
            t.dyc, t.xc, t.wc, [32], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, True]),
        "conv2d 1->32 k5 relu, N32": lambda: torch.relu(torch.nn.functional.conv2d(t.x1, t.wc, t.bc)),
        "conv2d_backward 1->32 k5 no dx, N32": lambda: aten.convolution_backward(
            t.dy1, t.x1, t.wc, [32], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, True]),
        "conv2d 32->64 k5 relu, N32": lambda: torch.relu(torch.nn.functional.conv2d(t.x2, t.w2, t.b2)),
        "conv2d_backward 32->64 k5, N32": lambda: aten.convolution_backward(
            t.dy2, t.x2, t.w2, [64], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, True]),
        "softmax_cross_entropy N128 K10": lambda: torch.autograd.grad(
            torch.nn.functional.cross_entropy(logits, t.labels), logits),
        "dropout (128, 64) rate 0.3": lambda: torch.native_dropout(t.xd, 0.3, True),
        "dropout_backward": lambda: aten.native_dropout_backward(t.xd, mask, 1.0 / 0.7),
        "batch_norm train (32, 128, 8, 8)": lambda: torch.nn.functional.batch_norm(
            t.xb, t.running_mean, t.running_var, t.gamma, t.beta, training=True),
        "batch_norm_backward": lambda: aten.native_batch_norm_backward(
            t.xb, t.xb, t.gamma, None, None, saved_mean, saved_invstd, True, 1e-5, [True, True, True]),
        "sgd_update momentum (128, 1024)": sgd.step,
        "adam_update (128, 1024)": adam.step,
    }


def ops(with_profile: bool):
    import torch

    r = cupy.random.RandomState(0)

    def new(shape, dtype=numpy.float32):
        if dtype == numpy.int64:  # class labels
            return r.randint(0, 10, size=shape, dtype=numpy.int64)
        return r.standard_normal(shape, dtype=numpy.float32)

    v = small_op_inputs(new)
    refs = torch_calls(v, torch)
    cases = our_calls(v)
    torch.backends.cudnn.benchmark = True
    print(f"\n## Small ops, CNN_GPU_LAUNCHER={loader.launcher_choice()}: back-to-back calls "
          "(µs a call; wall clock, GPU drained at the end)")
    print(f"{'op':40s} {'ours':>8s} {'torch':>8s} {'torch/ours':>10s}")
    for label, ours in cases:
        a, b = per_call_us(ours), per_call_us(refs[label])
        print(f"{label:40s} {a:8.1f} {b:8.1f} {b / a:10.2f}")
    if not with_profile:
        return
    print("\n## cProfile of our calls (top 12 by own time, 1000 calls each)")
    for label, ours in cases:
        if label not in PROFILED:
            continue
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(1000):
            ours()
        profile.disable()
        cupy.cuda.Device().synchronize()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
        print(f"\n### {label}\n" + "\n".join(line for line in text.getvalue().splitlines()[6:] if line.strip()))


PROFILED = ("max_pool2d k2 (32, 32, 24, 24)", "linear 1024->128 relu, N128", "conv2d_backward (first layer: no dx)")


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
        print(flush=True)
        subprocess.run([sys.executable, __file__, "--python-only"], check=True)  # its stand-ins need a process of their own
