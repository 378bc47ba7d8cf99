"""The default conv2d kernels (dense: dilation 1, one group) compile to the SASS recorded in
tests/data/implicit_gemm_sass.json, i.e. adding dilation and groups to the loaders they share with the
conv2d_grouped_* kernels changed nothing in them. (The record's commit is in the record; whether its SASS has run on a
GPU is benchmarks/results/gpu-verification.md's business.)

The record holds, for each conv2d tile variant (its defines) and each of sm_80 and sm_90, the sha256 of every kernel's
normalised SASS (benchmarks/sass_compare.py's normalise: runs of blanks as one space) as NVRTC compiled the sources of
one commit, and the NVRTC and cuobjdump versions that did it. This test compiles the same define sets from the
working tree as run time does and requires every recorded kernel to hash the same: a change to a shared loader, the
main loop or an epilogue that alters what the verified implicit GEMMs compile to fails here, in CI, without a GPU.
Kernels the record does not name (added since) are not compared. Skipped, with the reason, where NVRTC or cuobjdump
is missing, or where either version differs from the recorded one (another compiler may emit other SASS).

Regenerate the record (from the sources of COMMIT, through git archive) only when a change to these kernels is meant,
and say so in gpu-verification.md:

    python benchmarks/sass_compare.py reference tests/data/implicit_gemm_sass.json COMMIT
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from checks import load_benchmark_script
from cnn_gpu.cuda import compile_check

RECORD = Path(__file__).resolve().parent / "data" / "implicit_gemm_sass.json"
sass_compare = load_benchmark_script("sass_compare")
sass_report = load_benchmark_script("sass_report")


def _record() -> dict:
    return json.loads(RECORD.read_text())


@pytest.fixture(scope="module")
def tools():
    try:
        versions = sass_compare.tool_versions()
    except (compile_check.NVRTCUnavailable, sass_report.CuobjdumpUnavailable) as exc:
        pytest.skip(str(exc))
    record = _record()
    for tool in ("nvrtc", "cuobjdump"):
        if versions[tool] != record[tool]:
            pytest.skip(f"{tool} is {versions[tool]!r}, the record was made with {record[tool]!r}: regenerate it "
                        f"(see this module's docstring) to compare with this compiler")
    return versions


def test_record_covers_every_verified_implicit_gemm_kernel():
    record = _record()
    from cnn_gpu.ops.conv import CONV_TILES

    assert {tuple(sorted(v["defines"].items())) for v in record["variants"]} == \
        {tuple(sorted(t.defines.items())) for t in CONV_TILES}
    for variant in record["variants"]:
        assert {"conv2d_fwd_bias_act", "conv2d_bwd_data", "conv2d_bwd_filter"} <= set(variant["sha256"])
        for kernel, by_arch in variant["sha256"].items():
            assert set(by_arch) == set(record["archs"]) == {"sm_80", "sm_90"}, (variant["label"], kernel)


@pytest.mark.parametrize("arch", ("sm_80", "sm_90"))
@pytest.mark.parametrize("variant", _record()["variants"], ids=lambda v: v["label"].replace(" ", "_"))
def test_verified_kernels_compile_to_the_recorded_sass(tools, variant, arch):
    result = compile_check.compile_family(variant["family"], arch, variant["defines"], want_cubin=True)
    assert result.ok, result.log
    functions = sass_compare.split_functions(sass_report.dump_sass(result.cubin))
    changed = {kernel: (by_arch[arch][:12], sass_compare.sass_sha256(functions[kernel])[:12] if kernel in functions
                        else "missing")
               for kernel, by_arch in variant["sha256"].items()
               if kernel not in functions or sass_compare.sass_sha256(functions[kernel]) != by_arch[arch]}
    assert not changed, (f"{variant['label']} on {arch}: SASS differs from the record (recorded, now): {changed}; "
                         f"`python benchmarks/sass_compare.py compare {_record()['commit'][:7]}` shows the diff")
