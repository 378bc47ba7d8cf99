"""`cnn-gpu bench`: our kernels beside cuDNN and cuBLAS (or NumPy beside PyTorch CPU), same inputs, one run.

    from cnn_gpu import bench
    report = bench.run(ops=["conv2d", "matmul"], out="bench-out")   # -> dict, also results.json + speedup.png

An application of the library: it calls only cnn_gpu's public API. What is measured lives in
cnn_gpu.bench.cases (shared with the pytest-benchmark tests in benchmarks/); the method (benchmarks/NOTES.md):
- Where: the current backend. 'cuda': CuPy arrays through our kernels, PyTorch CUDA (cuDNN, cuBLAS)
  and cupy.matmul (cuBLAS) as references, FP32 on both sides (TF32 off everywhere), arrays handed to
  PyTorch through DLPack, both libraries on the same (legacy default) stream. 'numpy': the NumPy path
  beside PyTorch CPU when torch imports, beside nothing otherwise. Without a GPU the full suite
  would take hours, so a full run there falls back to the quick one (and says so).
- Correct first: each case runs once on ours, on its truth and on each reference, on the same
  inputs. The truth is the reference evaluated in float64 on the same device (cnn_gpu.bench.cases:
  an FP32 cuDNN result is no truth, its own error can exceed ours), or, where none computes the same
  function, our NumPy path (dropout's hash mask). Each row reports err_ours and err_ref, the relative
  errors of ours and of that FP32 reference against the truth. err_ours over the bound (the case's
  tolerance, or twice the best reference's own FP32 error where that is larger: error_bound), or a
  NaN, makes FAIL rows with no time; a reference over the tolerance is only noted. A case whose
  check is ill-conditioned (Case.check_sets > 1: the 100×100 network's training step) is checked on that many
  fresh input sets, and each side is judged by its worst.
- Ceilings first, in the same run: device-to-device copy bandwidth (bytes read + written) and SGEMM
  at 8192³ through cuBLAS (NumPy matmul at 512³ on the CPU).
- Timing: CUDA events around each call (wall clock on the CPU), warm-up first, median of at least
  20 repeats (up to 100 for fast calls). On the GPU the input sets rotate so that together they are
  at least twice the L2 size: a memory-bound op is not timing the cache.
- Each row: ours_ms, ref_ms, speedup = ref / ours (> 1: we are faster), the rate of the dominant
  floor (TFLOP/s when flops / SGEMM ceiling > bytes / copy ceiling, else GB/s; bytes = the inputs read
  once + the outputs written once) and the fraction of that ceiling the call reached.
- Every result file carries the environment: versions, GPU, clocks, commit, date; and the autotuner's
  choices of the run (autotune_choices: context, key, chosen variant), so a row's time can be read with
  the variant that made it.

Modules: side.py (where a run happens, ceilings), check.py (one case checked then timed), report.py
(environment, table, chart), cases/ (what is measured: kernels, layers, networks).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict
from pathlib import Path

import cnn_gpu
from cnn_gpu.bench.cases import Bound, Case, cases, op_names
from cnn_gpu.bench.check import ROTATION_L2_MULTIPLE, Check, Row, error_bound, relative_error, run_case
from cnn_gpu.bench.report import _write_json, environment, format_table, missing_references_note, plot_speedups
from cnn_gpu.bench.side import MAX_REPEATS, MIN_REPEATS, Side, measure_ceilings
from cnn_gpu.cuda import autotune

__all__ = ["Bound", "Case", "Check", "Row", "Side", "cases", "environment", "error_bound", "format_table",
           "measure_ceilings", "op_names", "plot_speedups", "relative_error", "run", "run_case"]

FULL_RUN_BUDGET_S = 240          # cases not started within this many seconds are SKIPPED rows
QUICK_RUN_BUDGET_S = 90


def run(ops=None, quick: bool = False, out="bench-out", budget_s: float | None = None) -> dict:
    """Measure ceilings, then every selected case; print the table; write results.json and speedup.png.

    ops: op names to keep (see cnn_gpu.bench.cases.op_names()); None keeps all. Unknown names are a
    ValueError naming them. quick: small shapes (the CI smoke run). budget_s: cases not started
    within this many seconds become SKIPPED rows; default $CNN_GPU_BENCH_BUDGET_S, else 240 s full
    and 90 s quick (a full H100 run needs about half of that; benchmarks/gpu_run.sh sets the variable
    to what its stage has left).
    """
    from tqdm import tqdm

    selected = _select(ops)
    device = "cuda" if cnn_gpu.get_backend() == "cuda" else "cpu"  # the backend's name on the CPU is 'numpy'
    note = None
    if device != "cuda" and not quick:
        note = "no GPU backend here: the full suite is GPU-sized, so the quick suite ran instead"
        quick = True
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if budget_s is None:
        budget_s = float(os.environ.get("CNN_GPU_BENCH_BUDGET_S") or (QUICK_RUN_BUDGET_S if quick else FULL_RUN_BUDGET_S))

    started = time.perf_counter()
    side = Side(device, seed=int.from_bytes(os.urandom(4), "little"))
    if side.torch is None:
        print(missing_references_note(device), flush=True)  # once, before the rows it explains
    with _one_thread_per_library(side) if device == "cpu" else contextlib.nullcontext():
        report = {
            "mode": "quick" if quick else "full",
            "note": note,
            "environment": environment(side),
            "method": _method(side, quick),
            "ceilings": measure_ceilings(side),
            "rows": [],
        }
        todo = [case for case in cases(quick=quick) if case.op in selected]
        for case in tqdm(todo, desc="bench", unit="case", dynamic_ncols=True):
            if time.perf_counter() - started > budget_s:
                rows = [Row(case.op, case.variant, case.shape, status="SKIPPED", message=f"time budget {budget_s:g} s spent")]
            else:
                rows = run_case(case, side, report["ceilings"])
            report["rows"].extend(asdict(row) for row in rows)
            _write_json(report, out / "results.json")  # after every case: a killed run still leaves its rows
    report["elapsed_s"] = time.perf_counter() - started
    report["autotune_choices"] = autotune.tuner().choices()  # which variant each tuned shape ran
    _write_json(report, out / "results.json")
    plot_speedups(report, out / "speedup.png")
    print(format_table(report))
    return report


@contextlib.contextmanager
def _one_thread_per_library(side: Side):
    """On the CPU, NumPy's BLAS, numba and torch each get one thread for the run: on a small machine
    their pools otherwise fight over the cores, and the medians measure the scheduler (seen on 2
    cores: 16 ms for a 20 µs op). One thread each is also the like-for-like comparison."""
    import numba
    from threadpoolctl import threadpool_limits

    saved = numba.get_num_threads(), side.torch.get_num_threads() if side.torch is not None else None
    numba.set_num_threads(1)
    if side.torch is not None:
        side.torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        numba.set_num_threads(saved[0])
        if side.torch is not None:
            side.torch.set_num_threads(saved[1])


def _select(ops) -> set:
    known = op_names()
    if ops is None:
        return set(known)
    ops = [ops] if isinstance(ops, str) else list(ops)
    unknown = [name for name in ops if name not in known]
    if unknown:
        raise ValueError(f"unknown op name(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return set(ops)


def _method(side: Side, quick: bool) -> dict:
    return {
        "timing": "CUDA events around each call" if side.device == "cuda" else "time.perf_counter around each call",
        "statistic": f"median of {MIN_REPEATS}..{MAX_REPEATS} repeats after warm-up",
        "rotation": (f"input sets rotate to cover >= {ROTATION_L2_MULTIPLE} x L2 ({side.cache_bytes} bytes)"
                     if side.cache_bytes else "one input set (CPU)"),
        "threads": "GPU run" if side.device == "cuda" else "one thread each for NumPy's BLAS, numba and torch",
        "precision": "FP32 on both sides; TF32 off in cuDNN, torch.matmul and cupy.matmul",
        "check": ("before timing, ours and each FP32 reference against the truth (the reference in float64 on the "
                  "same device and inputs, once per case) as err_ours / err_ref = ||x - truth|| / ||truth||; "
                  "err_ours over max(tolerance, 2 x the best reference's own error) = FAIL, no time; a reference over the tolerance is noted"),
        "speedup": "ref_ms / ours_ms (> 1: ours is faster)",
        "bytes": "inputs read once + outputs written once (the minimum a call must move)",
        "quick": quick,
    }
