"""Compile kernel families through NVRTC for a given architecture, with no GPU needed.

The one place that does it: the CI compile check (tests/test_kernels_compile.py) and `cnn-gpu info`
both call ``compile_family``, and benchmarks/sass_report.py asks it for the CUBIN to read the SASS.
Same source assembly and options as run time (cnn_gpu.cuda.loader), plus ``-arch`` and ``-Xptxas=-v``
so the log carries each kernel's registers, shared memory and spills.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

from cnn_gpu.cuda import loader


class NVRTCUnavailable(RuntimeError):
    """CuPy's NVRTC binding or libnvrtc itself is missing; the message says which."""


@dataclass
class CompileResult:
    family: str
    arch: str
    ok: bool
    log: str
    report: dict = field(default_factory=dict)  # {kernel: {'registers', 'smem', 'spill_stores', 'spill_loads'}}
    cubin: bytes | None = None  # the compiled ELF, when asked for (want_cubin) and the compile succeeded

    @property
    def diagnostics(self) -> list:
        """The log's warning and error lines."""
        return [line for line in self.log.splitlines() if re.search(r"\b(warning|error)\b", line, re.IGNORECASE)]


def nvrtc_module():
    """CuPy's NVRTC binding, checked to reach a loadable libnvrtc; NVRTCUnavailable otherwise."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as exc:  # no CuPy, or CuPy without libnvrtc
        raise NVRTCUnavailable(f"NVRTC unavailable ({type(exc).__name__}: {exc})") from None


def nvrtc_version() -> str:
    major, minor = nvrtc_module().getVersion()
    return f"{major}.{minor}"


_compile_count = 0


def compile_family(family: str, arch: str, defines: dict | None = None, want_cubin: bool = False) -> CompileResult:
    """Compile kernels/<family>.cu for ``arch`` (e.g. 'sm_90') like run time does (the family's defines, then
    ``defines``); never raises on a compile error. ``want_cubin`` keeps the CUBIN (for SASS inspection with cuobjdump)."""
    nvrtc = nvrtc_module()
    # With a driver present, NVRTC's ptxas goes through CUDA's compute cache: a repeat of a compile it
    # has cached (e.g. one CuPy did at run time, or an earlier test) prints no -v report (seen on the
    # H200; CUDA_CACHE_DISABLE=1 is the documented switch, but it is read when the library loads). A
    # device variable no kernel touches, named anew for every call, makes each PTX unique; the kernels'
    # code is unchanged.
    global _compile_count
    _compile_count += 1
    source = loader.assemble_source(family) + f"__device__ int cnn_gpu_compile_check_{os.getpid()}_{_compile_count};\n"
    options = (list(loader.COMPILE_OPTIONS) + list(loader.define_options(loader.family_defines(family, **(defines or {}))))
               + [f"-arch={arch}", "-Xptxas=-v"])
    program = nvrtc.createProgram(source, f"{family}.cu", [], [])
    try:
        nvrtc.compileProgram(program, options)
        ok = True
    except Exception:  # NVRTCError; the log says why
        ok = False
    log = nvrtc.getProgramLog(program).rstrip("\x00")
    cubin = _whole_elf(nvrtc.getCUBIN(program)) if ok and want_cubin else None
    nvrtc.destroyProgram(program)
    return CompileResult(family, arch, ok, log, parse_ptxas_report(log), cubin)


def _whole_elf(cubin: bytes) -> bytes:
    """The CUBIN padded back to the size its ELF header gives. CuPy's getCUBIN drops the last byte, taking it
    for a string's NUL as in getPTX; the ELF's last bytes (program header alignment) are zeros, and
    cuobjdump refuses the file one byte short."""
    ph_offset, sh_offset = struct.unpack_from("<QQ", cubin, 0x20)
    ph_size, ph_count, sh_size, sh_count = struct.unpack_from("<HHHH", cubin, 0x36)
    end = max(ph_offset + ph_size * ph_count, sh_offset + sh_size * sh_count)
    return cubin + bytes(max(0, end - len(cubin)))


def parse_ptxas_report(log: str) -> dict:
    """{kernel: {'registers': int, 'spill_stores': int, 'spill_loads': int, 'smem': int}} from ptxas -v."""
    report, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line) or re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = m.group(1)
            report.setdefault(current, {"registers": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            report[current]["spill_stores"] = int(m.group(1))
            report[current]["spill_loads"] = int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            report[current]["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            report[current]["smem"] = int(m.group(1))
    return report
