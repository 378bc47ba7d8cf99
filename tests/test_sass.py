"""What the hot kernels compile to on sm_90, read from NVRTC's CUBIN with cuobjdump (no GPU needed).

conv2d.cu (default tile, grouped kernels included) and gemm.cu (both default tile configs): no local memory (LDL/STL: spills or
arrays left in memory), FFMAs in every GEMM-shaped kernel, float4 fragment reads from shared memory
(LDS.128) as their header comments say, and in gemm_* the float4 global path (LDG.E.128). Counts come
from benchmarks/sass_report.py (`python benchmarks/sass_report.py` prints them all). Skipped, with the
reason, where NVRTC or cuobjdump / nvdisasm is missing: `pip install -e ".[nvrtc]"` brings all three.
"""
from __future__ import annotations

import pytest

from cnn_gpu.cuda import compile_check
from checks import load_benchmark_script

ARCH = "sm_90"
IMPLICIT_GEMMS = ("conv2d_fwd_bias_act", "conv2d_bwd_data", "conv2d_bwd_filter", "conv2d_grouped_fwd_bias_act",
                  "conv2d_grouped_bwd_data", "conv2d_grouped_bwd_filter")
GEMMS = ("gemm_nn", "gemm_nt", "gemm_tn", "gemm_tt")


def _sass_report():
    return load_benchmark_script("sass_report")


sass_report = _sass_report()


@pytest.fixture(scope="module")
def counts():
    """{(variant label, kernel): Counter} for every variant sass_report covers, compiled for ARCH."""
    try:
        compile_check.nvrtc_module()
        sass_report.find_cuobjdump()
    except (compile_check.NVRTCUnavailable, sass_report.CuobjdumpUnavailable) as exc:
        pytest.skip(str(exc))
    return {(label, kernel): c for label, family, defines in sass_report.VARIANTS
            for kernel, c in sass_report.kernel_counts(family, ARCH, defines).items()}


def _kernels(counts, names):
    found = {key: c for key, c in counts.items() if key[1] in names}
    assert found, f"none of {names} in the SASS"
    return found


def test_no_local_memory(counts):
    local = {key: (c["LDL"], c["STL"]) for key, c in counts.items() if c["LDL"] or c["STL"]}
    assert not local, f"LDL/STL (local memory) on {ARCH}: {local}"


def test_gemm_kernels_use_128_bit_loads(counts):
    for key, c in _kernels(counts, GEMMS).items():
        assert c["LDG.E.128"] > 0, f"{key}: no LDG.E.128 (float4 global path): {dict(c)}"
        assert c["LDS.128"] > 0, f"{key}: no LDS.128 (float4 fragment reads): {dict(c)}"
        assert c["FFMA"] > 0, f"{key}: no FFMA: {dict(c)}"


def test_implicit_gemm_kernels_read_float4_fragments(counts):
    for key, c in _kernels(counts, IMPLICIT_GEMMS).items():
        assert c["LDS.128"] > 0, f"{key}: no LDS.128 (A fragments read as float4): {dict(c)}"
        assert c["FFMA"] > 0, f"{key}: no FFMA: {dict(c)}"


def test_counts_parse_predicated_and_suffixed_opcodes():
    sass = """
        Function : k
        /*0000*/                   LDG.E.128.CONSTANT R4, desc[UR6][R2.64] ;
        /*0010*/               @!P0 LDG.E R8, desc[UR6][R2.64] ;
        /*0020*/               @P1 LDS.64 R10, [R0] ;
        /*0030*/                   FFMA.SAT R1, R2, R3, R4 ;
        /*0040*/                   STL [R1], R2 ;
        /*0050*/                   LDG.E.64 R6, desc[UR6][R2.64] ;
    """
    c = sass_report.count_instructions(sass)["k"]
    assert (c["instructions"], c["LDG.E.128"], c["LDG.E"], c["LDS.64"], c["FFMA"], c["STL"]) == (6, 1, 1, 1, 1, 1)
