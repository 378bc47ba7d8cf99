"""The benchmark report (cnn_gpu.bench): its quick run writes results.json and speedup.png with the
fields the issue names, a wrong result is a FAIL row without a time, unknown op names are refused."""
from __future__ import annotations

import json

import numpy
import pytest

from cnn_gpu import bench
from cnn_gpu.bench_cases import Bound, Case, op_names

QUICK_OPS = ["matmul", "relu", "softmax_xent"]  # a few fast ops: the full quick suite is the CLI's job
ROW_STATUSES = {"OK", "FAIL", "ERROR", "UNCHECKED", "SKIPPED"}


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    report = bench.run(ops=QUICK_OPS, quick=True, out=out)
    return out, report


def test_quick_run_writes_results_json_with_environment_ceilings_and_rows(quick_report):
    out, report = quick_report
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    env = saved["environment"]
    for key in ("date", "commit", "backend", "python", "numpy", "numba", "cpu", "torch"):
        assert key in env, key
    assert env["commit"]
    if env["backend"] == "cuda":
        for key in ("gpu", "cuda_driver", "cuda_runtime", "cupy", "cudnn", "l2_bytes"):
            assert env[key], key
    assert saved["ceilings"]["copy_gbps"] > 0 and saved["ceilings"]["sgemm_tflops"] > 0
    assert {row["op"] for row in saved["rows"]} == set(QUICK_OPS)
    for row in saved["rows"]:
        assert row["status"] in ROW_STATUSES
        assert isinstance(row["shape"], str) and row["shape"]
        assert row["status"] not in ("FAIL", "ERROR"), row
        assert row["ours_ms"] > 0 and row["rate"] > 0 and row["ceiling_fraction"] > 0
        assert row["rate_unit"] in ("TFLOP/s", "GB/s")


def test_quick_run_reports_speedup_against_a_reference_when_one_ran(quick_report):
    _, report = quick_report
    with_ref = [row for row in report["rows"] if row["ref_name"]]
    if not _torch_importable():
        assert not with_ref and all(row["status"] == "UNCHECKED" for row in report["rows"])
        pytest.skip("torch is not installed: no reference ran, so no speed-up to check")
    assert with_ref
    for row in with_ref:
        assert row["status"] == "OK" and row["checked_against"] and row["rel_error"] is not None
        assert row["speedup"] == pytest.approx(row["ref_ms"] / row["ours_ms"])


def test_quick_run_writes_a_png(quick_report):
    out, _ = quick_report
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_printed_table_has_the_ceilings_and_a_line_per_row(quick_report):
    _, report = quick_report
    lines = bench.format_table(report).splitlines()
    assert lines[1].startswith("ceilings:") and "speed-up" in lines[2]
    assert len(lines) == 4 + len(report["rows"])


def test_unknown_op_names_are_a_value_error_naming_them(tmp_path):
    with pytest.raises(ValueError, match="'conv3d'.*'nonsense'"):
        bench.run(ops=["relu", "conv3d", "nonsense"], quick=True, out=tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_every_op_name_has_quick_cases():
    from cnn_gpu.bench_cases import cases

    assert {case.op for case in cases(quick=True)} == set(op_names())


def _tiny_case(ours_offset, prepare=None):
    def default_prepare(side):
        x = side.normal(5, 7)
        return Bound(lambda: x + numpy.float32(ours_offset), refs={"identity": lambda: x}, inputs=(x,))
    return Case("relu", "test", "5×7", prepare or default_prepare)


def test_a_wrong_result_is_a_fail_row_without_a_time():
    side = bench.Side("cpu", seed=1)
    ceilings = {"copy_gbps": 1.0, "sgemm_tflops": 1.0}
    (row,) = bench.run_case(_tiny_case(ours_offset=1.0), side, ceilings)
    assert row.status == "FAIL" and row.ours_ms is None and row.ref_ms is None and row.rel_error > 1e-5
    (row,) = bench.run_case(_tiny_case(ours_offset=float("nan")), side, ceilings)
    assert row.status == "FAIL" and row.ours_ms is None
    (row,) = bench.run_case(_tiny_case(ours_offset=0.0), side, ceilings)
    assert row.status == "OK" and row.ours_ms > 0 and row.repeats >= bench.MIN_REPEATS


def test_an_exception_is_an_error_row_and_the_run_goes_on():
    def broken(side):
        raise NotImplementedError("no kernel yet")

    (row,) = bench.run_case(_tiny_case(0.0, prepare=broken), bench.Side("cpu", seed=1), {"copy_gbps": 1.0, "sgemm_tflops": 1.0})
    assert row.status == "ERROR" and "NotImplementedError: no kernel yet" in row.message and row.ours_ms is None
