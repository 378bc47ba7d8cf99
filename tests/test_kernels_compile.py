"""Compile every kernel family through NVRTC for sm_80 and sm_90, with no GPU needed.

Same source assembly, options and family defines as run time (cnn_gpu.cuda.loader). Asserts no error and no warning,
prints each kernel's registers / shared memory / spills from -Xptxas -v, and fails on any spill in the
convolution and GEMM kernels. Skipped (with the reason) where CuPy's NVRTC binding or libnvrtc is
missing: `pip install -e ".[nvrtc]"` brings both.
"""
import re

import pytest

from cnn_gpu.cuda import compile_check, loader

NO_SPILL_FAMILIES = ("conv2d", "conv2d_direct", "conv2d_depthwise", "gemm")
ARCHS = ("sm_80", "sm_90")


def _nvrtc():
    try:
        return compile_check.nvrtc_module()
    except compile_check.NVRTCUnavailable as exc:
        pytest.skip(str(exc))


def compile_family(family, arch, defines=None):
    """(log, per-kernel resource report) for one family compiled like run time does."""
    _nvrtc()
    result = compile_check.compile_family(family, arch, defines)
    assert result.ok, f"kernels/{family}.cu failed to compile for {arch}:\n{result.log}"
    return result.log, result.report


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


@pytest.mark.parametrize("family", sorted(loader.FAMILY_DEFINES))
def test_family_defines_have_no_second_source_in_the_kernel(family, monkeypatch):
    """The constants FAMILY_DEFINES states (tile sizes, block sizes) have no defaults in the kernel files: without
    them the compile stops at the file's #error, so Python is the one place they live."""
    _nvrtc()
    monkeypatch.setattr(loader, "FAMILY_DEFINES", {})
    result = compile_check.compile_family(family, "sm_90")
    assert not result.ok and "FAMILY_DEFINES" in result.log, result.log


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
