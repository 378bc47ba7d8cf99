"""Every kernel launch the host path makes, recorded without a GPU: the proof that a host-side refactor changed
nothing the GPU would see.

    PYTHONPATH=. python3 benchmarks/record_launches.py > launches.txt   (CuPy installed; no GPU needed)

The ops run on CuPy arrays over memory no GPU backs (a bump allocator: every allocation gets the next
address, so the record says which buffer each launch reads and writes), on a device of 132 SMs, kernels
not compiled: each kernel is a stand-in that writes one line per launch (family, compile-time defines,
kernel name, grid, block, and every argument: an array as its address, shape and dtype, a scalar as its
type and value). The autotuner's timer runs each candidate once and times them all alike, so every variant
the tuner offers for a problem (the unverified ones too) is launched once, then the default runs. Grouped and
dilated convolutions come last, each grouped implicit-GEMM variant forced in turn where it applies (their ops'
other variants run CuPy's own kernels, which need a GPU).
Run it before and after a change and diff the outputs: identical text means identical launches.
"""
from __future__ import annotations

import os
import sys
import tempfile
from types import SimpleNamespace

os.environ["CNN_GPU_LAUNCHER"] = "cupy"     # the stand-in kernels are called directly
os.environ["CNN_GPU_UNVERIFIED"] = "1"      # offer every variant, verified on a GPU or not
os.environ.pop("CNN_GPU_AUTOTUNE", None)

import cupy  # noqa: E402
import numpy  # noqa: E402
from cupy.cuda import memory  # noqa: E402

from cnn_gpu import functional as F  # noqa: E402
from cnn_gpu.cuda import autotune, loader  # noqa: E402

BASE = 0x7F00_0000_0000
LINES: list = []


class _Allocator:
    def __init__(self):
        self.next = BASE
        self.memory = memory.UnownedMemory(BASE, 1 << 46, None, device_id=0)

    def __call__(self, shape, dtype=numpy.float32, *_, **__):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = numpy.dtype(dtype)
        offset = self.next - BASE
        self.next += max(256, -(-int(numpy.prod(shape)) * dtype.itemsize // 256) * 256)
        return cupy.ndarray(shape, dtype, memptr=memory.MemoryPointer(self.memory, offset))


def _describe(arg) -> str:
    if isinstance(arg, cupy.ndarray):
        return f"@{arg.data.ptr - BASE:#x}{list(arg.shape)}{arg.dtype.str}"
    if arg is None:
        return "null"
    return f"{type(arg).__name__}:{arg}"


class _RecordingKernel:
    def __init__(self, family, defines, name):
        self.family, self.defines, self.name = family, defines, name

    def __call__(self, grid, block, args, shared_mem=0):
        LINES.append(f"{self.family}{dict(self.defines)} {self.name} grid={tuple(grid)} block={tuple(block)} "
                     f"shared={shared_mem} args=" + " ".join(_describe(a) for a in args))


def install_stand_ins() -> _Allocator:
    new = _Allocator()
    cupy.empty = cupy.zeros = new
    cupy.full = lambda shape, fill, dtype=numpy.float32: new(shape, dtype)

    def copy(a, dtype=None):
        out = new(a.shape, a.dtype if dtype is None else dtype)
        LINES.append(f"copy {_describe(a)} strides={a.strides} -> {_describe(out)}")
        return out

    cupy.ascontiguousarray = copy
    cupy.cuda.runtime.getDevice = lambda: 0
    cupy.cuda.Device = lambda device_id=0: SimpleNamespace(attributes={"MultiProcessorCount": 132}, id=0)
    loader._load_module = lambda family, defines: SimpleNamespace(
        get_function=lambda name: _RecordingKernel(family, defines, name))

    def run_once(run):
        run()
        return 1.0

    autotune._tuner = autotune.Autotuner(cache_file=os.path.join(tempfile.mkdtemp(), "autotune.json"),
                                         timer=run_once, context=lambda family: family)
    return new


# (x shape, w shape, stride, padding): the example networks' layers, first layers of 1 and 3 channels, few filters
# (1-8) and many, 1×1, 3×3 (Winograd's), 5×5, 7×7, strides 1-3, asymmetric 'same' pads, batches 1-128.
CONV_CASES = [
    ((128, 1, 28, 28), (32, 1, 5, 5), 1, 0), ((32, 32, 12, 12), (64, 32, 5, 5), 1, 0),
    ((8, 1, 100, 100), (64, 1, 3, 3), 1, 0), ((8, 64, 49, 49), (64, 64, 3, 3), 1, 0),
    ((4, 3, 32, 32), (16, 3, 3, 3), 1, 1), ((4, 3, 32, 32), (16, 3, 3, 3), 2, 1), ((2, 16, 17, 13), (8, 16, 3, 3), 1, "same"),
    ((2, 8, 9, 9), (4, 8, 3, 3), 1, 0), ((2, 8, 9, 9), (2, 8, 3, 3), 1, 1), ((3, 4, 12, 10), (1, 4, 5, 5), 1, 2),
    ((2, 32, 16, 16), (16, 32, 1, 1), 1, 0), ((2, 3, 64, 64), (64, 3, 7, 7), 2, 3), ((2, 2, 16, 16), (16, 2, 4, 4), 1, 1),
    ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0), ((2, 5, 11, 7), (6, 5, 2, 4), (1, 3), "same"), ((4, 6, 15, 15), (12, 6, 3, 3), 3, 2),
    ((64, 16, 8, 8), (256, 16, 3, 3), 1, 1), ((1, 3, 40, 40), (8, 3, 3, 3), 1, 1),
]
ACTIVATIONS = (None, "relu", "leaky_relu", "tanh")


def record(new) -> None:
    for x_shape, w_shape, stride, padding in CONV_CASES:
        x, w, b = new(x_shape), new(w_shape), new(w_shape[:1])
        LINES.append(f"# conv2d {x_shape} {w_shape} stride={stride} padding={padding}")
        for activation in ACTIVATIONS:
            y = F.conv2d(x, w, b if activation else None, stride, padding, activation=activation)
        dy = new(y.shape)
        F.conv2d_backward(dy, x, w, stride, padding)
        F.conv2d_backward(dy, x, w, stride, padding, compute_dx=False)
    for n, i, o in ((128, 1024, 128), (1024, 64, 10), (3, 5, 7), (256, 4096, 512)):
        x, w, b, dy = new((n, i)), new((o, i)), new((o,)), new((n, o))
        LINES.append(f"# linear {n}x{i} -> {o}")
        F.linear(x, w, b, "relu")
        F.linear(x, w)
        F.linear_backward(dy, x, w)
        F.matmul(x, w.T)
    for shape, k, s, p in (((32, 32, 24, 24), 2, 2, 0), ((4, 8, 13, 11), 3, 2, 1), ((2, 3, 9, 9), 3, 1, 1),
                           ((8, 64, 50, 50), 2, 2, 0)):
        x = new(shape)
        LINES.append(f"# pool {shape} k{k} s{s} p{p}")
        y, idx = F.max_pool2d(x, k, s, p)
        F.max_pool2d_backward(new(y.shape), idx, x.shape, k, s, p)
        ya = F.avg_pool2d(x, k, s, p)
        F.avg_pool2d_backward(new(ya.shape), x.shape, k, s, p)


# (x shape, w shape, stride, padding, dilation, groups): groups 4 with dilation (2, 3); a split forward and
# backward-filter; depthwise
GROUPED_CASES = [((2, 8, 11, 9), (8, 2, 3, 2), 2, (2, 3), (2, 3), 4), ((4, 64, 16, 16), (32, 32, 3, 3), 1, 2, 2, 2),
                 ((3, 32, 14, 14), (64, 1, 3, 3), 1, 1, 1, 32)]


def record_grouped(new) -> None:
    from cnn_gpu.cuda.variants import registered
    from cnn_gpu.ops.conv.grouped import grouped_problem
    from cnn_gpu.ops.conv.implicit_gemm import _GroupedImplicitGemm
    from cnn_gpu.ops.geometry import window_geometry

    calls = {"conv2d_grouped_fwd": lambda x, w, b, dy, kw: F.conv2d(x, w, b, activation="relu", **kw),
             "conv2d_grouped_bwd_data": lambda x, w, b, dy, kw: F.conv2d_backward(dy, x, w, compute_dw=False, **kw),
             "conv2d_grouped_bwd_filter": lambda x, w, b, dy, kw: F.conv2d_backward(dy, x, w, compute_dx=False, **kw)}
    for x_shape, w_shape, stride, padding, dilation, groups in GROUPED_CASES:
        problem = grouped_problem(window_geometry(x_shape, w_shape[2:], stride, padding, dilation=dilation), w_shape[0],
                                  groups)
        x, w, b, dy = new(x_shape), new(w_shape), new(w_shape[:1]), new((x_shape[0], w_shape[0], problem.g.OH, problem.g.OW))
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        for op, call in calls.items():
            for variant in registered(op):
                if isinstance(variant, _GroupedImplicitGemm) and variant.applies(problem):
                    LINES.append(f"# {op} {x_shape} {w_shape} stride={stride} padding={padding} dilation={dilation} "
                                 f"groups={groups}: {variant.name}")
                    with autotune.forced({op: variant.name}):
                        call(x, w, b, dy, kw)


def main() -> int:
    new = install_stand_ins()
    record(new)
    record_grouped(new)
    sys.stdout.write("\n".join(LINES) + "\n")
    print(f"# {sum(1 for line in LINES if not line.startswith(('#', 'copy')))} launches", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
