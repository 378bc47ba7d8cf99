"""Load kernels/<family>.cu, compile it once per process with NVRTC (through CuPy), hand out kernels.

Source assembly: ``#include "x.cuh"`` lines are replaced by the header's text, framed by ``#line``
directives so that a compile error names the real file and line, and so that CuPy's on-disk cache
key (which hashes the source text) changes whenever a header does.

Tile sizes and other compile-time constants come in as ``-D`` defines: ``load_kernel("gemm",
"gemm_nn", TILE_M=128)`` compiles (and caches) a separate module for that variant, which is what an
autotuner needs. The CI compile check (tests/test_kernels_compile.py) uses ``assemble_source`` and
``COMPILE_OPTIONS`` from here, so it compiles exactly what run time compiles.

Launching: ``load_kernel`` hands out a callable ``kernel(grid, block, args)`` whose launch path the
environment variable ``CNN_GPU_LAUNCHER`` picks, read when each kernel is first loaded (so in effect
once per process: set it before the first launch):
  ``driver`` (default)  cnn_gpu.cuda.driver_launch.DriverKernel: cuLaunchKernel with reused argument buffers,
                        less host time a launch than CuPy (benchmarks/NOTES.md); stricter arguments
  ``cupy``              CuPy's RawKernel itself, for A/B comparison and as a fallback (also what
                        ``driver`` gives on ROCm/HIP, where CuPy launches through another path)
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

# Options for every kernel, at run time and in the compile check. No fast-math: the kernels are
# tested against the NumPy reference at 1e-5 relative error, and __expf & co. would miss it.
COMPILE_OPTIONS = ("--std=c++17",)

LAUNCHERS = ("driver", "cupy")

FAMILIES = ("activation", "conv2d", "conv2d_direct", "conv2d_depthwise", "gemm", "pool", "softmax", "batchnorm", "dropout", "optim", "winograd")

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


class KernelCompileError(RuntimeError):
    """A kernel source failed to compile; the message carries NVRTC's log (file(line): error)."""


def _find_kernel_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # .../cnn_gpu
    for candidate in (here.parent / "kernels", here / "kernels"):  # source checkout, then wheel
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"CUDA kernel sources not found next to {here} (looked for kernels/common.cuh)")


KERNEL_DIR = _find_kernel_dir()


def assemble_source(family: str) -> str:
    """The full compilable text of kernels/<family>.cu with its local headers inlined."""
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
    return _assemble(KERNEL_DIR / f"{family}.cu", seen=set())


def _assemble(path: Path, seen: set) -> str:
    out = [f'#line 1 "{path.name}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match and (KERNEL_DIR / match.group(1)).is_file():
            header = KERNEL_DIR / match.group(1)
            if header not in seen:  # headers also carry #pragma once; this keeps the text small
                seen.add(header)
                out.append(_assemble(header, seen))
            out.append(f'#line {lineno + 1} "{path.name}"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def define_options(defines: dict) -> tuple:
    return tuple(f"-D{key}={value}" for key, value in sorted(defines.items()))


@functools.lru_cache(maxsize=None)
def _load_module(family: str, defines: tuple):
    import cupy

    options = COMPILE_OPTIONS + define_options(dict(defines))
    module = cupy.RawModule(code=assemble_source(family), options=options)
    try:
        module.compile()
    except cupy.cuda.compiler.CompileException as exc:
        raise KernelCompileError(f"kernels/{family}.cu failed to compile with {' '.join(options)}:\n{exc}") from None
    return module


def launcher_choice() -> str:
    """CNN_GPU_LAUNCHER (default 'driver'), checked: one of LAUNCHERS."""
    choice = os.environ.get("CNN_GPU_LAUNCHER", "").strip().lower() or "driver"
    if choice not in LAUNCHERS:
        raise ValueError(f"CNN_GPU_LAUNCHER must be one of {', '.join(LAUNCHERS)}; got {choice!r}")
    return choice


def kernel_launcher(raw_kernel):
    """What load_kernel hands out for a CuPy RawKernel: a DriverKernel over it, or (CNN_GPU_LAUNCHER=cupy,
    or ROCm/HIP) the RawKernel itself."""
    import cupy

    if launcher_choice() == "cupy" or cupy.cuda.runtime.is_hip:
        return raw_kernel
    from cnn_gpu.cuda.driver_launch import DriverKernel

    return DriverKernel(raw_kernel)


@functools.lru_cache(maxsize=None)
def load_kernel(family: str, name: str, **defines):
    """The compiled kernel ``name`` from kernels/<family>.cu (compiled once per process and define set),
    called as ``kernel(grid, block, args)`` and launched by the path CNN_GPU_LAUNCHER picks (above).

    Cached: an op's launch path pays one dictionary lookup here, not a module lookup (the kernel loads
    itself on each device it is launched on)."""
    return kernel_launcher(_load_module(family, tuple(sorted(defines.items()))).get_function(name))
