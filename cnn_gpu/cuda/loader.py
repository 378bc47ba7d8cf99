"""Load kernels/<family>.cu, compile it once per process with NVRTC (through CuPy), hand out kernels.

Source assembly: ``#include "x.cuh"`` lines are replaced by the header's text, framed by ``#line``
directives so that a compile error names the real file and line, and so that CuPy's on-disk cache
key (which hashes the source text) changes whenever a header does.

Tile sizes and other compile-time constants come in as ``-D`` defines: ``load_kernel("gemm",
"gemm_nn", TILE_M=128)`` compiles (and caches) a separate module for that variant, which is what an
autotuner needs. Constants that a kernel file and its launch code share (block sizes, the default
variant's tile sizes) are stated once, in FAMILY_DEFINES below: every compile of the family starts from
them, and the ops read them from there. The CI compile check (tests/test_kernels_compile.py) uses
``assemble_source``, ``COMPILE_OPTIONS`` and ``family_defines`` from here, so it compiles exactly what run
time compiles.

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

# Compile-time constants that a kernel file and the Python code launching it share, stated only here: every
# compile of the family gets them as -D defines (a variant's own defines, e.g. another tile size, override
# them), and the ops read their launch shapes and default variants from here. The kernel files have no
# defaults for them: a compile without them stops at an #error.
FAMILY_DEFINES = {
    # the default implicit-GEMM tile (cnn_gpu.ops.conv.DEFAULT_TILE), conv2d_bwd_bias's block size, and
    # sum_splits_bias_act's block: 256 columns, one row group (its sums are over a few splits of many values)
    "conv2d": {"CONV_BM": 64, "CONV_BN": 64, "CONV_BK": 16, "CONV_TM": 4, "CONV_TN": 4, "BIAS_THREADS": 256,
               "SPLIT_SUM_COLUMNS": 256, "SPLIT_SUM_ROW_GROUPS": 1},
    # the default tile config (cnn_gpu.ops.gemm.LARGE_TILES), and sum_splits_bias_act's block: 32 columns by
    # 8 row groups (its sums also run over a batch of rows: the bias gradient)
    "gemm": {"TILE_M": 128, "TILE_N": 128, "TILE_K": 8, "THREAD_M": 8, "THREAD_N": 8, "MIN_BLOCKS_PER_SM": 2,
             "SPLIT_SUM_COLUMNS": 32, "SPLIT_SUM_ROW_GROUPS": 8},
    # the direct kernels' limits, within which cnn_gpu.ops.conv offers them. conv2d_fwd_few_filters: up to 8
    # filters, 4 output columns a thread (one float4), 128 threads, 24 staged x elements a thread and channel,
    # K·R·S <= 72 weights, 32 accumulators and a 16-value row segment held in registers.
    # conv2d_bwd_filter_few_channels: C·R·S <= 32, up to 6 filters a thread, 4 pixels a strip, 128 threads,
    # 3 blocks an SM, 128 of its registers holding values.
    "conv2d_direct": {"FK_MAX_FILTERS": 8, "FK_STRIP": 4, "FK_MAX_THREADS": 128, "FK_MAX_LOADS": 24,
                      "FK_MAX_WEIGHTS": 72, "FK_MAX_ACCUMULATORS": 32, "FK_MAX_SEGMENT": 16,
                      "FC_MAX_TAPS": 32, "FC_MAX_FILTERS": 6, "FC_STRIP": 4, "FC_THREADS": 128,
                      "FC_BLOCKS_AN_SM": 3, "FC_HELD_REGISTERS": 128},
    # the depthwise kernels' limits (staged elements a thread, static shared memory a block), and a 3×3 stride-1
    # layer's defines, which the compile check compiles: the planner (cnn_gpu.ops.conv.depthwise) gives every
    # launch its own window, strides, dilations and tile
    "conv2d_depthwise": {"DEPTHWISE_MAX_LOADS": 32, "DEPTHWISE_MAX_SMEM": 48 * 1024,
                         "DEPTHWISE_R": 3, "DEPTHWISE_S": 3, "DEPTHWISE_SH": 1, "DEPTHWISE_SW": 1, "DEPTHWISE_DH": 1,
                         "DEPTHWISE_DW": 1, "DEPTHWISE_U": 2, "DEPTHWISE_V": 4, "DEPTHWISE_BX": 8, "DEPTHWISE_BY": 8,
                         "DEPTHWISE_BP": 2, "DEPTHWISE_RC": 3, "DEPTHWISE_THREADS": 128},
    "winograd": {"WINOGRAD_THREADS": 256},  # the block size of all its kernels
    # maxpool2d_bwd_staged: warps a block, and floats of dx a warp stages in shared memory (32 KB a block)
    "pool": {"STAGED_WARPS": 8, "STAGED_PIECE": 1024},
}

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


def family_defines(family: str, **overrides) -> dict:
    """The defines a compile of kernels/<family>.cu gets: FAMILY_DEFINES[family] (if any), then overrides."""
    return {**FAMILY_DEFINES.get(family, {}), **overrides}


def define_options(defines: dict) -> tuple:
    return tuple(f"-D{key}={value}" for key, value in sorted(defines.items()))


@functools.lru_cache(maxsize=None)
def _load_module(family: str, defines: tuple):
    """kernels/<family>.cu compiled with exactly `defines` (the family's, merged: see load_kernel)."""
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
    itself on each device it is launched on). Modules are cached by the merged define set, so a variant
    named by its defines and the same variant reached through the family's defaults compile once."""
    merged = family_defines(family, **defines)
    return kernel_launcher(_load_module(family, tuple(sorted(merged.items()))).get_function(name))
