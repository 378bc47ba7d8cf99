"""Run a kernel file's launches on the CPU: g++ compiles the CUDA source against cuda_shim.h (one std::thread per
CUDA thread, AddressSanitizer and UBSan on), once per define set, and a launch runs as a subprocess over files.

A kernel file runs through its driver, tests/emulation/<file>_main.cpp (emulation_main.h's command line). Used by
tests that check a kernel without a GPU: the launch (defines, grid, block, scalars) comes from the same
planner the CUDA path calls, so the emulation runs exactly the launches a GPU would.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
# CNN_GPU_EMULATION_KERNELS: another kernels/ directory (e.g. a mutated copy, to see that the tests catch the change)
KERNEL_DIR = Path(os.environ.get("CNN_GPU_EMULATION_KERNELS") or HERE.parent.parent / "kernels")
_BUILD_DIR = Path(tempfile.gettempdir()) / f"cnn_gpu_emulation_{os.getuid()}"
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined")


def available() -> str | None:
    """None when g++ can build the emulation, else why not."""
    if shutil.which("g++") is None:
        return "g++ not found"
    return None


def build(main: str, defines: dict) -> Path:
    """The executable of tests/emulation/<main> with these -D defines (cached on disk by source and defines)."""
    sources = [HERE / main, HERE / "cuda_shim.h", HERE / "emulation_main.h"] + sorted(KERNEL_DIR.glob("*.cu*"))
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    options = [f"-D{k}={v}" for k, v in sorted(defines.items())]
    digest.update(" ".join(options + list(SANITIZE)).encode())
    exe = _BUILD_DIR / f"{Path(main).stem}_{digest.hexdigest()[:16]}"
    if not exe.exists():
        _BUILD_DIR.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        command = (["g++", "-std=c++20", "-O1", "-g", "-pthread", "-fno-strict-aliasing", "-Wno-unknown-pragmas",
                    *SANITIZE, "-I", str(HERE), "-I", str(KERNEL_DIR), *options, str(HERE / main), "-o", str(tmp)])
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(tmp, exe)
    return exe


def run(main: str, launch, arrays, scalars, misalign: bool = False, out: int = -1) -> numpy.ndarray:
    """arrays[out] after launch (kernel: its name, defines, grid, block; 1-D blocks) on float32 arrays (None: a
    null pointer) with the scalar arguments (ints, and floats with a '.' in their text)."""
    exe = build(main, dict(launch.defines))
    grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, a in enumerate(arrays):
            if a is None:
                paths.append("-")
                continue
            path = os.path.join(tmp, f"a{i}.bin")
            numpy.ascontiguousarray(a, dtype=numpy.float32).tofile(path)
            paths.append(path)
        words = [f"{float(v):.9e}" if isinstance(v, (float, numpy.floating)) else str(int(v)) for v in scalars]
        if numpy.prod(launch.block[1:]) != 1:
            raise ValueError(f"the emulation runs 1-D blocks only, not block {launch.block}")
        command = [str(exe), launch.kernel, *map(str, grid), str(launch.block[0]), "1" if misalign else "0",
                   str(len(paths)), *paths, *words]
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"emulated {launch.kernel} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return numpy.fromfile(paths[out], dtype=numpy.float32).reshape(numpy.shape(arrays[out]))
