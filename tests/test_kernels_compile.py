"""Compile every kernel family through NVRTC for sm_80 and sm_90, with no GPU needed.

Same source assembly and options as run time (cnn_gpu.cuda.loader). Asserts no error and no warning,
prints each kernel's registers / shared memory / spills from -Xptxas -v, and fails on any spill in the
convolution and GEMM kernels. Skipped (with the reason) where CuPy's NVRTC binding or libnvrtc is
missing: `pip install -e ".[nvrtc]"` brings both.
"""
import re

import pytest

from cnn_gpu.cuda import loader

NO_SPILL_FAMILIES = ("conv2d", "gemm")
ARCHS = ("sm_80", "sm_90")


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as exc:  # no CuPy, or CuPy without libnvrtc
        pytest.skip(f"NVRTC not available ({type(exc).__name__}: {exc})")


def compile_family(family, arch, defines=None):
    """(log, per-kernel resource report) for one family compiled like run time does."""
    nvrtc = _nvrtc()
    source = loader.assemble_source(family)
    options = list(loader.COMPILE_OPTIONS) + list(loader.define_options(defines or {})) + [f"-arch={arch}", "-Xptxas=-v"]
    program = nvrtc.createProgram(source, f"{family}.cu", [], [])
    try:
        nvrtc.compileProgram(program, options)
        ok = True
    except Exception:
        ok = False
    log = nvrtc.getProgramLog(program).rstrip("\x00")
    nvrtc.destroyProgram(program)
    assert ok, f"kernels/{family}.cu failed to compile for {arch}:\n{log}"
    return log, parse_ptxas_report(log)


def parse_ptxas_report(log):
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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", loader.FAMILIES)
def test_kernel_family_compiles_cleanly(family, arch):
    log, report = compile_family(family, arch)
    problems = [line for line in log.splitlines() if re.search(r"\b(warning|error)\b", line, re.IGNORECASE)]
    assert not problems, f"kernels/{family}.cu ({arch}) compiled with diagnostics:\n" + "\n".join(problems)
    assert report, f"no kernel entry points found in kernels/{family}.cu"
    for name, r in sorted(report.items()):
        print(f"{arch} {family}.cu {name}: {r['registers']} registers, {r['smem']} B smem, "
              f"{r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads")
    if family in NO_SPILL_FAMILIES:
        spilling = {n: r for n, r in report.items() if r["spill_stores"] or r["spill_loads"]}
        assert not spilling, f"{family}.cu spills registers on {arch}: {spilling}"


def test_compile_error_names_file_and_line(tmp_path, monkeypatch):
    """A broken kernel's NVRTC log points at kernels/<family>.cu and the line, not at a temp file."""
    nvrtc = _nvrtc()
    source = loader.assemble_source("activation").replace("GRID_STRIDE_LOOP(j, n - 4 * n4)", "GRID_STRIDE_LOOP(j, n - 4 * n4 +)", 1)
    bad_line = next(i for i, line in enumerate(loader.KERNEL_DIR.joinpath("activation.cu").read_text().splitlines(), 1)
                    if "GRID_STRIDE_LOOP(j, n - 4 * n4)" in line)
    program = nvrtc.createProgram(source, "activation.cu", [], [])
    with pytest.raises(Exception):
        nvrtc.compileProgram(program, list(loader.COMPILE_OPTIONS) + ["-arch=sm_90"])
    log = nvrtc.getProgramLog(program)
    assert f"activation.cu({bad_line})" in log, log
