"""Count the SASS instructions that matter in the hot kernels, with no GPU: NVRTC's CUBIN through cuobjdump.

    python benchmarks/sass_report.py [--arch sm_90]

For each kernel of conv2d.cu (default tile) and gemm.cu (its two default tile configs; the float4 path
is the vec_a/vec_b branch inside each gemm_* kernel, so it is in the same SASS): instructions in all,
128-bit global loads (LDG.E.128), scalar global loads, 128- and 64-bit shared loads, FFMAs, and local
memory traffic (LDL/STL: register spills or arrays the compiler could not keep in registers).
cuobjdump and the nvdisasm it runs come from PATH or from their wheels (the `nvrtc` extra installs them).
tests/test_sass.py asserts on these counts.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from cnn_gpu.cuda import compile_check
from cnn_gpu.ops.conv import DEFAULT_TILE
from cnn_gpu.ops.gemm import LARGE_TILES, SKINNY_TILES

# (label, family, defines) of the variants reported: what run time uses with the autotuner off.
VARIANTS = (
    (f"conv2d {DEFAULT_TILE.bm}x{DEFAULT_TILE.bn}x{DEFAULT_TILE.bk}", "conv2d", DEFAULT_TILE.defines),
    *((f"gemm {t.tile_m}x{t.tile_n}x{t.tile_k}", "gemm", t.defines) for t in (LARGE_TILES, SKINNY_TILES)),
)
COLUMNS = ("instructions", "LDG.E.128", "LDG.E", "LDS.128", "LDS.64", "LDS", "FFMA", "LDL", "STL")

_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
# "/*0070*/   @!P0 LDG.E.128.CONSTANT R4, desc[UR6][R2.64] ;": address, optional predicate, opcode
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_WIDTHS = {"64", "128", "U8", "S8", "U16", "S16"}


class CuobjdumpUnavailable(RuntimeError):
    """No cuobjdump (with the nvdisasm it runs) on PATH nor in the nvidia-cuda-cuobjdump wheel."""


def find_cuobjdump() -> str:
    try:
        import nvidia  # namespace package of NVIDIA's CUDA wheels: nvidia/cu13/bin/cuobjdump
        wheel_dirs = list(nvidia.__path__)
    except ImportError:
        wheel_dirs = []
    candidates = [shutil.which("cuobjdump")] + [str(c) for d in wheel_dirs
                                                for c in sorted(Path(d).glob("*/bin/cuobjdump"))]
    for cuobjdump in filter(None, candidates):
        if shutil.which("nvdisasm") or (Path(cuobjdump).parent / "nvdisasm").is_file():
            return cuobjdump
    raise CuobjdumpUnavailable("cuobjdump and nvdisasm not found on PATH nor in the nvidia-cuda-cuobjdump and "
                               'nvidia-cuda-nvdisasm wheels (pip install -e ".[nvrtc]" brings them)')


def dump_sass(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.cubin"
        path.write_bytes(cubin)
        return subprocess.run([find_cuobjdump(), "--dump-sass", str(path)], check=True,
                              capture_output=True, text=True).stdout


def opcode_class(opcode: str) -> str | None:
    """The report column an opcode counts in: LDG.E.128.CONSTANT -> 'LDG.E.128', LDG.E -> 'LDG.E' (32-bit)."""
    parts = opcode.split(".")
    width = next((p for p in parts[1:] if p in _WIDTHS), None)
    if parts[0] == "LDG":
        return {"128": "LDG.E.128", None: "LDG.E"}.get(width)
    if parts[0] == "LDS":
        return {"128": "LDS.128", "64": "LDS.64", None: "LDS"}.get(width)
    if parts[0] in ("FFMA", "LDL", "STL"):
        return parts[0]
    return None


def count_instructions(sass: str) -> dict:
    """{kernel: Counter over COLUMNS} from cuobjdump --dump-sass text."""
    counts, current = {}, None
    for line in sass.splitlines():
        function = _FUNCTION.match(line)
        if function:
            current = counts.setdefault(function.group(1), Counter())
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction and current is not None:
            current["instructions"] += 1
            column = opcode_class(instruction.group(1))
            if column:
                current[column] += 1
    return counts


def kernel_counts(family: str, arch: str, defines: dict) -> dict:
    """{kernel: Counter} for kernels/<family>.cu compiled with defines as run time does."""
    result = compile_check.compile_family(family, arch, defines, want_cubin=True)
    if not result.ok:
        raise RuntimeError(f"kernels/{family}.cu failed to compile for {arch}:\n{result.log}")
    return count_instructions(dump_sass(result.cubin))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args(argv)
    print(f"SASS for {args.arch}, NVRTC {compile_check.nvrtc_version()}, {find_cuobjdump()}")
    print(f"| variant | kernel | {' | '.join(COLUMNS)} |")
    print("|" + "---|" * (len(COLUMNS) + 2))
    for label, family, defines in VARIANTS:
        for kernel, counts in sorted(kernel_counts(family, args.arch, defines).items()):
            print(f"| {label} | {kernel} | " + " | ".join(str(counts[c]) for c in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
