"""`cnn-gpu bench`: our kernels beside cuDNN and cuBLAS (or NumPy beside PyTorch CPU), same inputs, one run.

    from cnn_gpu import bench
    report = bench.run(ops=["conv2d", "matmul"], out="bench-out")   # -> dict, also results.json + speedup.png

What is measured lives in cnn_gpu/bench_cases.py (shared with the pytest-benchmark tests in
benchmarks/); this module is the method (../shared/guide/benchmarking.md, benchmarks/NOTES.md):
- Where: the current backend. 'cuda': CuPy arrays through our kernels, PyTorch CUDA (cuDNN, cuBLAS)
  and cupy.matmul (cuBLAS) as references, FP32 on both sides (TF32 off everywhere), arrays handed to
  PyTorch through DLPack, both libraries on the same (legacy default) stream. 'numpy': the NumPy path
  beside PyTorch CPU when torch imports, beside nothing otherwise. Without a GPU the full suite
  would take hours, so a full run there falls back to the quick one (and says so).
- Correct first: each case runs once on ours, on its truth and on each reference, on the same
  inputs. The truth is the reference evaluated in float64 on the same device (cnn_gpu.bench_cases:
  an FP32 cuDNN result is no truth, its own error can exceed ours), or, where none computes the same
  function, our NumPy path (dropout's hash mask). Each row reports err_ours and err_ref, the relative
  errors of ours and of that FP32 reference against the truth. err_ours over the bound (the case's
  tolerance, or twice the best reference's own FP32 error where that is larger: error_bound), or a
  NaN, makes FAIL rows with no time; a reference over the tolerance is only noted. A case whose
  check is ill-conditioned (Case.check_sets > 1: the seed 002 training step) is checked on that many
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
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy

import cnn_gpu
from cnn_gpu.bench_cases import Case, cases, op_names
from cnn_gpu.cuda import autotune
from cnn_gpu.files import atomic_write, write_text

MIN_REPEATS = 20
MAX_REPEATS = 100
TARGET_SECONDS_PER_SIDE = 0.25   # repeats grow up to MAX_REPEATS while one side's timing stays under this
FULL_RUN_BUDGET_S = 240          # cases not started within this many seconds are SKIPPED rows
QUICK_RUN_BUDGET_S = 90
ROTATION_L2_MULTIPLE = 2         # rotating input sets cover at least this many L2 sizes
MAX_INPUT_SETS = 64
CHECK_CHUNK = 1 << 24            # elements per slice of the float64 error sums (bounded extra memory)


# ---- where a run happens -------------------------------------------------------------------------
class Side:
    """The array library, the optional PyTorch, random inputs and the timer of one run.

    device 'cuda': CuPy + our kernels, torch on the same GPU; 'cpu': NumPy, torch on the CPU.
    with_torch=False leaves the references out (side.torch is None).
    """

    def __init__(self, device: str, seed: int, with_torch: bool = True):
        self.device = device
        if device == "cuda":
            import cupy

            self.xp = cupy
            self.cache_bytes = int(cupy.cuda.Device().attributes["L2CacheSize"])
            self.cupy_float32_gemm = _fp32_cublas_in_cupy()
            self.rng = cupy.random.RandomState(seed)  # cuRAND's host API: no run-time headers needed
        else:
            self.xp = numpy
            self.cache_bytes = 0  # on the CPU the (quick, smoke-test) run does not rotate
            self.rng = numpy.random.default_rng(seed)
        self.torch = _import_torch(device) if with_torch else None

    # inputs: random, never zeros (CuPy's RandomState and NumPy's Generator spell two of these apart)
    def normal(self, *shape, scale=1.0):
        a = self.rng.standard_normal(shape, dtype=numpy.float32)
        return a * numpy.float32(scale) if scale != 1.0 else a

    def uniform(self, *shape, low=0.0, high=1.0):
        draw = self.rng.random_sample if self.device == "cuda" else self.rng.random
        return draw(shape, dtype=numpy.float32) * numpy.float32(high - low) + numpy.float32(low)

    def labels(self, n, classes):
        draw = self.rng.randint if self.device == "cuda" else self.rng.integers
        return draw(0, classes, size=n, dtype=numpy.int64)

    # PyTorch hand-over: zero-copy views both ways
    def to_torch(self, a):
        return self.torch.from_dlpack(a) if self.device == "cuda" else self.torch.from_numpy(a)

    def from_torch(self, t):
        t = t.detach()
        if self.device == "cuda":
            return self.xp.from_dlpack(t.contiguous())
        return t.numpy()

    def synchronize(self):
        if self.device == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def release(self):
        """Return cached device memory between cases (CuPy's pool and PyTorch's allocator)."""
        if self.device == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()

    def time_ms(self, calls, repeats: int) -> list:
        """Milliseconds of each of `repeats` calls, cycling through `calls` (one per input set)."""
        if self.device == "cuda":
            cuda = self.xp.cuda
            starts = [cuda.Event() for _ in range(repeats)]
            ends = [cuda.Event() for _ in range(repeats)]
            for i in range(repeats):
                starts[i].record()
                calls[i % len(calls)]()
                ends[i].record()
            ends[-1].synchronize()
            return [cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            calls[i % len(calls)]()
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    def warm_seconds_per_call(self, calls, count: int) -> float:
        """Run `count` warm-up calls; their mean wall time (synchronised) estimates one call."""
        self.synchronize()
        t0 = time.perf_counter()
        for i in range(count):
            calls[i % len(calls)]()
        self.synchronize()
        return (time.perf_counter() - t0) / max(count, 1)


def _import_torch(device: str):
    """torch set up for FP32-against-FP32 references, or None when it cannot serve this device."""
    try:
        import torch
    except Exception:  # not installed, or a broken install: the run goes on without references
        return None
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    return torch


def _fp32_cublas_in_cupy():
    """Make cupy.matmul plain FP32 (CUPY_TF32=1 would otherwise switch float32 GEMMs to TF32)."""
    import cupy
    from cupy._core import _routines_linalg as linalg

    linalg.set_compute_type(cupy.float32, linalg.COMPUTE_TYPE_DEFAULT)
    return linalg.compute_type_to_str(linalg.get_compute_type(cupy.float32))


# ---- ceilings ------------------------------------------------------------------------------------
def measure_ceilings(side: Side) -> dict:
    """Copy bandwidth (GB/s, read + write) and SGEMM rate (TFLOP/s), measured now on this device."""
    xp = side.xp
    if side.device == "cuda":
        nbytes, n_gemm = 1 << 30, 8192
        src = side.normal(nbytes // 4)
        dst = xp.empty_like(src)
        runtime, stream = xp.cuda.runtime, xp.cuda.get_current_stream().ptr
        copy = lambda: runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, runtime.memcpyDeviceToDevice, stream)
        copy_method = "cudaMemcpyAsync device-to-device, 1 GiB"
        gemm_method = f"cuBLAS SGEMM via cupy.matmul, {n_gemm}³, FP32 (TF32 off)"
    else:
        nbytes, n_gemm = 1 << 26, 512
        src = side.normal(nbytes // 4)
        dst = numpy.empty_like(src)
        copy = lambda: numpy.copyto(dst, src)
        copy_method = "numpy.copyto, 64 MiB"
        gemm_method = f"numpy.matmul float32, {n_gemm}³"
    copy_ms = _median_ms(side, [copy])
    a, b = side.normal(n_gemm, n_gemm), side.normal(n_gemm, n_gemm)
    gemm_ms = _median_ms(side, [lambda: xp.matmul(a, b)])
    src = dst = a = b = None  # the buffers (1 GiB on a GPU) freed before release(); the lambdas are done with them
    side.release()
    return {
        "copy_gbps": 2 * nbytes / copy_ms / 1e6, "copy_ms": copy_ms, "copy_method": copy_method,
        "sgemm_tflops": 2 * n_gemm**3 / gemm_ms / 1e9, "sgemm_ms": gemm_ms, "sgemm_method": gemm_method,
    }


def _median_ms(side: Side, calls, warmup: int = 3) -> float:
    per_call = side.warm_seconds_per_call(calls, max(warmup, len(calls)))
    return statistics.median(side.time_ms(calls, _repeats_for(per_call)))


def _repeats_for(seconds_per_call: float) -> int:
    fitting = int(TARGET_SECONDS_PER_SIDE / max(seconds_per_call, 1e-9))
    return max(MIN_REPEATS, min(MAX_REPEATS, fitting))


# ---- one case: check, then time -------------------------------------------------------------------
@dataclass
class Row:
    """One line of the report: our call against one reference (or against none)."""

    op: str
    variant: str
    shape: str
    status: str                       # OK | FAIL (ours over tol) | ERROR | UNCHECKED (no truth) | SKIPPED
    ours_ms: float | None = None
    ref_ms: float | None = None
    ref_name: str | None = None
    speedup: float | None = None      # ref_ms / ours_ms: > 1 means ours is faster
    rate: float | None = None         # achieved TFLOP/s or GB/s, whichever floor dominates
    rate_unit: str | None = None
    ceiling_fraction: float | None = None
    flops: float | None = None
    bytes: float | None = None
    checked_against: str | None = None  # the truth: a float64 evaluation, or the NumPy path (dropout)
    err_ours: float | None = None     # ‖ours − truth‖ / ‖truth‖
    err_ref: float | None = None      # ‖reference − truth‖ / ‖truth‖ (None: it is the truth, or differs)
    tol: float | None = None          # the bound on err_ours
    input_sets: int | None = None
    repeats: int | None = None
    message: str | None = None


def run_case(case: Case, side: Side, ceilings: dict) -> list:
    """The rows of one case, one per reference (or one without): FAIL rows without times when ours
    misses the truth by more than case.tol, else timed rows; an ERROR row when anything raises."""
    base = dict(op=case.op, variant=case.variant, shape=case.shape, flops=case.flops or None)
    sets = []
    try:
        sets.append(case.prepare(side))
        check = _check(sets[0], side)
        for _ in range(case.check_sets - 1):  # an ill-conditioned check: each side's worst over fresh input sets
            side.release()
            check = _worst(check, _check(case.prepare(side), side))
        side.release()  # the truth's float64 arrays go back before the timed input sets are made
        names = list(sets[0].refs) or [None]

        tol = error_bound(case.tol, check.err_refs)

        def checked(name):
            err_ref = check.err_refs.get(name)
            message = _check_message(case.tol, tol, check.err_ours, err_ref)
            if case.check_sets > 1:
                message = "; ".join(filter(None, (message, f"errors: each side's worst of {case.check_sets} input sets")))
            return dict(ref_name=name, checked_against=check.truth, err_ours=check.err_ours, err_ref=err_ref,
                        tol=tol, bytes=check.nbytes, message=message)
        if check.truth is not None and not check.err_ours <= tol:  # NaN fails too
            return [Row(**base, status="FAIL", **checked(name)) for name in names]
        sets += [case.prepare(side) for _ in range(_extra_sets(case, side, check.nbytes))]
        ours_ms, repeats = _time_side(side, [s.ours for s in sets])
        rows = []
        for name in names:
            ref_ms = _time_side(side, [s.refs[name] for s in sets])[0] if name else None
            rows.append(Row(**base, status="OK" if check.truth else "UNCHECKED", ours_ms=ours_ms, ref_ms=ref_ms,
                            speedup=ref_ms / ours_ms if ref_ms else None, input_sets=len(sets), repeats=repeats,
                            **checked(name), **_rate(case.flops, check.nbytes, ours_ms, ceilings)))
        return rows
    except Exception as exc:  # a missing op, a bad launch, out of memory: reported, and the run goes on
        return [Row(**base, status="ERROR", message=f"{type(exc).__name__}: {exc}"[:500])]
    finally:
        sets.clear()
        side.release()


@dataclass
class Check:
    """What the check of one input set found."""

    truth: str | None      # name of what ours was checked against (None: nothing to check against)
    err_ours: float | None
    err_refs: dict         # reference name -> its error against the truth (only references measured)
    nbytes: float          # minimum bytes of one call of ours


def _check(bound, side: Side) -> Check:
    """Run ours, the truth and each reference once on the same inputs, inside the bound's check_context
    if it has one (the training step turns dropout off there: the two sides draw different masks).

    The truth runs once per case; a reference is measured against it unless it is the truth itself
    (an FP32 fallback, e.g. no float64 reference) or computes another function (torch's dropout)."""
    with bound.check_context() if bound.check_context is not None else contextlib.nullcontext():
        ours = bound.ours()
        target = bound.check_target()
        truth_name, err_ours, err_refs = None, None, {}
        if target is not None:
            truth_name, truth = target[0], target[1]()
            err_ours = relative_error(side, ours, truth)
            if bound.refs_match:
                err_refs = {name: relative_error(side, ref(), truth)
                            for name, ref in bound.refs.items() if name != truth_name}
    nbytes = bound.bytes if bound.bytes is not None else _nbytes(bound.inputs) + _nbytes(_outputs(ours))
    return Check(truth_name, err_ours, err_refs, nbytes)


# A problem whose FP32 answer is ill-conditioned (deep nets with batch-norm: the seed 002 training step)
# puts every FP32 implementation far from the float64 truth; there ours must be no worse than the vendor
# library's own FP32 error times this slack, rather than within a tolerance nobody's FP32 meets.
REFERENCE_ERROR_SLACK = 2.0


def _worst(a: Check, b: Check) -> Check:
    """Two checks of one case on different input sets as one: each side's larger error (NaN wins)."""
    def larger(x, y):
        if x is None or y is None:
            return x if y is None else y
        return x if x != x or (y == y and x >= y) else y
    refs = {name: larger(a.err_refs.get(name), b.err_refs.get(name)) for name in {**a.err_refs, **b.err_refs}}
    return Check(a.truth, larger(a.err_ours, b.err_ours), refs, a.nbytes)


def error_bound(tol: float, err_refs: dict) -> float:
    """The bound on err_ours: the case's tolerance, or REFERENCE_ERROR_SLACK times the best FP32
    reference's own error against the truth where that is larger."""
    measured = [e for e in err_refs.values() if e is not None and e == e]
    return max(tol, REFERENCE_ERROR_SLACK * min(measured)) if measured else tol


def _check_message(tol: float, bound: float, err_ours: float | None, err_ref: float | None) -> str | None:
    """What a reader must know about a row's check: ours over its bound, or the reference over the
    case's tolerance (which then widens the bound: error_bound)."""
    if err_ours is not None and not err_ours <= bound:
        return f"ours: relative error {err_ours:.3g} > bound {bound:.3g} (tolerance {tol:g})"
    if err_ref is not None and not err_ref <= tol:
        return f"the reference's own relative error {err_ref:.3g} > tolerance {tol:g} (ours within {bound:.3g})"


def _time_side(side: Side, calls) -> tuple[float, int]:
    per_call = side.warm_seconds_per_call(calls, max(3, len(calls)))
    repeats = _repeats_for(per_call)
    return statistics.median(side.time_ms(calls, repeats)), repeats


def _extra_sets(case: Case, side: Side, nbytes: float) -> int:
    """How many more input sets make the rotation cover ROTATION_L2_MULTIPLE × L2 (0 when not rotating)."""
    if not case.rotate or side.cache_bytes == 0 or nbytes <= 0:
        return 0
    needed = -(-ROTATION_L2_MULTIPLE * side.cache_bytes // int(nbytes))
    return min(max(needed, 1), MAX_INPUT_SETS) - 1


def _rate(flops: float, nbytes: float, ms: float, ceilings: dict) -> dict:
    """Achieved rate against the floor that dominates: max(flops / SGEMM rate, bytes / copy rate)."""
    compute_floor_ms = flops / (ceilings["sgemm_tflops"] * 1e9) if flops else 0.0
    memory_floor_ms = nbytes / (ceilings["copy_gbps"] * 1e6)
    if compute_floor_ms >= memory_floor_ms:
        return {"rate": flops / ms / 1e9, "rate_unit": "TFLOP/s", "ceiling_fraction": compute_floor_ms / ms}
    return {"rate": nbytes / ms / 1e6, "rate_unit": "GB/s", "ceiling_fraction": memory_floor_ms / ms}


def _outputs(result) -> list:
    """A call's result as a flat list (tuples unpacked; None kept as 'not compared')."""
    if isinstance(result, (tuple, list)):
        return [item for part in result for item in _outputs(part)]
    return [result]


def _nbytes(arrays) -> int:
    return sum(int(getattr(a, "nbytes", 0)) for a in arrays if a is not None)


def relative_error(side: Side, result, truth) -> float:
    """max over compared outputs of ‖result − truth‖ / ‖truth‖ (float64 sums; NaN anywhere -> nan)."""
    xp = side.xp
    result, truth = _outputs(result), _outputs(truth)
    if len(result) != len(truth):
        raise ValueError(f"a call gave {len(result)} outputs, the truth {len(truth)}")
    worst = 0.0
    for a, b in zip(result, truth):
        if b is None or a is None:
            continue
        a, b = _on_side(side, a), _on_side(side, b)
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"output shape {tuple(a.shape)} differs from the truth's {tuple(b.shape)}")
        a, b = a.reshape(-1), b.reshape(-1)
        diff_sq = ref_sq = 0.0
        for i in range(0, a.size, CHECK_CHUNK):
            a64 = a[i:i + CHECK_CHUNK].astype(xp.float64)
            b64 = b[i:i + CHECK_CHUNK].astype(xp.float64)
            diff_sq += float(((a64 - b64) ** 2).sum())
            ref_sq += float((b64 ** 2).sum())
        error = (diff_sq / ref_sq) ** 0.5 if ref_sq > 0 else diff_sq ** 0.5
        if error != error:  # NaN: the check must fail
            return float("nan")
        worst = max(worst, error)
    return worst


def _on_side(side: Side, a):
    """A torch tensor, NumPy array or scalar as an array of the side's library."""
    if side.torch is not None and isinstance(a, side.torch.Tensor):
        return side.from_torch(a)
    return side.xp.asarray(a)


# ---- environment ---------------------------------------------------------------------------------
def environment(side: Side) -> dict:
    """Versions, device, clocks, commit and date: recorded with every result."""
    import numba

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "cnn_gpu": cnn_gpu.__version__,
        "backend": side.device,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": getattr(side.torch, "__version__", None),
    }
    if side.device == "cuda":
        import cupy

        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        env.update({
            "gpu": name,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": props["multiProcessorCount"],
            "l2_bytes": side.cache_bytes,
            "memory_bytes": props["totalGlobalMem"],
            "cuda_driver": _cuda_version(runtime.driverGetVersion()),
            "cuda_runtime": _cuda_version(runtime.runtimeGetVersion()),
            "cupy": cupy.__version__,
            "cupy_float32_gemm": side.cupy_float32_gemm,
            "tf32_variables": {name: os.environ.get(name) for name in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")},
            "cudnn": side.torch.backends.cudnn.version() if side.torch is not None else None,
            "torch_cuda": side.torch.version.cuda if side.torch is not None else None,
            "torch_tf32": ({"cudnn": side.torch.backends.cudnn.allow_tf32,
                            "matmul": side.torch.backends.cuda.matmul.allow_tf32} if side.torch is not None else None),
            "streams": _streams(side),
            **_nvidia_smi(),
        })
    return env


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def _streams(side: Side) -> str:
    cupy_stream = side.xp.cuda.get_current_stream().ptr
    torch_stream = side.torch.cuda.current_stream().cuda_stream if side.torch is not None else None
    return f"cupy {cupy_stream:#x}, torch {torch_stream:#x}" if torch_stream is not None else f"cupy {cupy_stream:#x}"


def _nvidia_smi() -> dict:
    """Driver and clocks from nvidia-smi, when it is there."""
    fields = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "power.draw", "power.limit", "temperature.gpu", "pstate")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"nvidia_smi": None}
    values = [v.strip() for v in out.strip().splitlines()[0].split(",")] if out.strip() else []
    return {"nvidia_smi": dict(zip(fields, values))}


def _commit() -> str:
    """CNN_GPU_COMMIT (set where the tree has no .git, e.g. a copied checkout), else git, else 'unknown'."""
    if os.environ.get("CNN_GPU_COMMIT"):
        return os.environ["CNN_GPU_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- the report ----------------------------------------------------------------------------------
def run(ops=None, quick: bool = False, out="bench-out", budget_s: float | None = None) -> dict:
    """Measure ceilings, then every selected case; print the table; write results.json and speedup.png.

    ops: op names to keep (see cnn_gpu.bench_cases.op_names()); None keeps all. Unknown names are a
    ValueError naming them. quick: small shapes (the CI smoke run). budget_s: cases not started
    within this many seconds become SKIPPED rows; default $CNN_GPU_BENCH_BUDGET_S, else 240 s full
    and 90 s quick (a full H100 run needs about half of that; benchmarks/gpu_run.sh sets the variable
    to what its stage has left).
    """
    from tqdm import tqdm

    selected = _select(ops)
    device = cnn_gpu.get_backend()
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


def missing_references_note(device: str) -> str:
    """Why a run has no reference times, and how to get them: the references are PyTorch's."""
    if device == "cuda":
        return ("note: the reference timings (cuDNN, cuBLAS) come from PyTorch with CUDA, which is not usable here, "
                "so every row is UNCHECKED and has no speed-up; install the torch build for your CUDA version "
                "(https://pytorch.org/get-started/locally/)")
    return ("note: the reference timings come from PyTorch, which is not installed here, so every row is UNCHECKED "
            "and has no speed-up; install it with: pip install torch")


def _write_json(report: dict, path: Path):
    write_text(path, json.dumps(report, indent=1, default=_json_default))


def _json_default(value):
    if isinstance(value, (numpy.integer, numpy.floating)):
        return value.item()
    return str(value)


def format_table(report: dict) -> str:
    """The printed table: one line per row, environment and ceilings above it."""
    env, ceil = report["environment"], report["ceilings"]
    device = env.get("gpu") or env["cpu"]
    lines = [
        f"cnn_gpu bench ({report['mode']}) on {device}, commit {env['commit']}, {env['date']}",
        f"ceilings: copy {ceil['copy_gbps']:.0f} GB/s ({ceil['copy_method']}); "
        f"SGEMM {ceil['sgemm_tflops']:.2f} TFLOP/s ({ceil['sgemm_method']})",
    ]
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    header = (f"{'op':<12} {'variant':<14} {'shape':<30} {'ours ms':>9} {'ref ms':>9} {'speed-up':>8} {'rate':>14} "
              f"{'of ceil':>7}  {'status':<9} {'err ours':>8} {'err ref':>8}  reference")
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        rate = f"{r['rate']:.2f} {r['rate_unit']}" if r["rate"] is not None else ""
        lines.append(
            f"{r['op']:<12} {r['variant']:<14} {r['shape']:<30} {_fmt(r['ours_ms'], '.3f'):>9} "
            f"{_fmt(r['ref_ms'], '.3f'):>9} {_fmt(r['speedup'], '.2f'):>8} {rate:>14} "
            f"{_fmt(r['ceiling_fraction'], '.0%'):>7}  {r['status']:<9} {_fmt(r['err_ours'], '.1e'):>8} "
            f"{_fmt(r['err_ref'], '.1e'):>8}  {r['ref_name'] or ''}"
            + (f"  [{r['message']}]" if r["message"] else "")
        )
    lines.append("err ours / err ref = ||x - truth|| / ||truth|| of ours / of the row's FP32 reference; "
                 "the truth is the row's reference in float64, except:")
    exceptions = dict.fromkeys(f"  {r['op']} {r['variant']}: {r['checked_against']}" for r in report["rows"]
                               if r["checked_against"] and r["checked_against"] != f"{r['ref_name']} in float64")
    lines += list(exceptions) or ["  (none)"]
    return "\n".join(lines)


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def plot_speedups(report: dict, path: Path) -> Path:
    """Horizontal bars of speed-up (ref / ours, log scale) per op, variant, shape and reference; 1.0 marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in report["rows"] if r["speedup"] is not None]
    fig = Figure(figsize=(12, 1.5 + 0.22 * max(len(rows), 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    env = report["environment"]
    ax.set_title(f"cnn_gpu vs reference ({report['mode']}): {env.get('gpu') or env['cpu']}\n"
                 f"{env['date']}, commit {env['commit'][:12]}", fontsize=9)
    if rows:
        labels = [f"{r['op']} {r['variant']} {r['shape']} vs {r['ref_name']}" for r in rows]
        values = [r["speedup"] for r in rows]
        y = numpy.arange(len(rows))
        ax.barh(y, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
        ax.set_yticks(y, labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xlabel("speed-up = reference time / our time (> 1: ours is faster)")
    else:
        why = "" if env.get("torch") else f"\n{missing_references_note(env.get('backend', 'cpu'))}"
        ax.text(0.5, 0.5, "no row has a reference time" + why, ha="center", va="center", transform=ax.transAxes,
                wrap=True)
        ax.set_axis_off()
    with atomic_write(path) as file:
        fig.savefig(file, format="png", dpi=100, bbox_inches="tight")
    return path
