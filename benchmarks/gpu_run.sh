#!/usr/bin/env bash
# The one GPU evidence run. From the repository root, on the GPU machine:
#
#     CNN_GPU_COMMIT=$(git rev-parse HEAD) OUT=/some/dir bash benchmarks/gpu_run.sh
#
# (on the device machine the tree is a copy without .git: pass the commit in CNN_GPU_COMMIT, written
# into env.txt and results.json). Stages, the most important evidence first, each under its own
# timeout so that one hang cannot eat the rest, none able to stop the script:
#   1. pytest -q -rs tests/ with CNN_GPU_BACKEND=cuda            (<= 250 s)
#   2-4. compute-sanitizer memcheck, racecheck, synccheck over
#        benchmarks/sanitize_all_kernels.py                      (<= 60 s each, one log)
#   5. python3 -m cnn_gpu bench (the full suite)                 (<= 300 s, the budget less 90 s)
#   6. host time per small op (benchmarks/host_overhead.py),
#      `cnn-gpu train` with its default CUDA-graph steps and
#      benchmarks/step_check.py (the 100×100 network step's error) (<= 150 s, one log)
#   7. Nsight Compute on benchmarks/profile_targets.py's calls    (<= 60 s)
# The whole script keeps within GPU_RUN_BUDGET_S (default 570 s; the device tool allows 600 s a
# command): a later stage gets what is left, the bench is told its budget so that it ends cleanly.
# Writes 8 files to $OUT (the device tool returns at most 8): env.txt (versions, nvidia-smi, each
# stage's exit code and seconds), pytest.log, sanitize.log, host.log, ncu.log, bench.log, results.json,
# speedup.png.
set -u
OUT=${OUT:?set OUT to the folder for the result files}
BUDGET_S=${GPU_RUN_BUDGET_S:-570}
RESERVE_S=20  # kept back from every stage for the bookkeeping after it
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Offer the variants no GPU run has verified yet too (cnn_gpu/cuda/variants.py's VERIFIED): this run is how they
# get verified. A passing run's commit then adds them to VERIFIED.
export CNN_GPU_UNVERIFIED=1
started=$(date +%s)
summary="$OUT/env.txt"
mkdir -p "$OUT"

seconds_left() { echo $(( BUDGET_S - ($(date +%s) - started) - RESERVE_S )); }

# stage NAME LIMIT_S COMMAND...: run COMMAND under a timeout (cut to the time left), output to
# $OUT/NAME.log, and one line with its exit code and duration to env.txt.
stage() {
    local name=$1 limit=$2 left t0 rc note=""
    shift 2
    left=$(seconds_left)
    (( left < limit )) && limit=$left
    if (( limit < 10 )); then
        echo "stage $name: not run, the time budget is spent" >> "$summary"
        return
    fi
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    (( rc == 124 || rc == 137 )) && note=", TIMED OUT"
    echo "stage $name: exit $rc after $(( $(date +%s) - t0 )) s (limit $limit s$note)" >> "$summary"
}

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)

{
    echo "# cnn_gpu GPU run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${CNN_GPU_COMMIT:-unknown}"
    echo "host: $(uname -srm), $(nproc) CPUs"
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu,pstate --format=csv
    python3 --version
    python3 - <<'PY'
import importlib
for name in ("numpy", "numba", "cupy", "torch", "pytest", "pytest_benchmark", "matplotlib", "tqdm"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "not importable:", type(exc).__name__, exc)
try:
    import cupy, torch
    print("CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion(),
          "| torch CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
except Exception as exc:
    print("CUDA versions not readable:", type(exc).__name__, exc)
PY
    command -v nvcc > /dev/null && nvcc --version | tail -n 2
    if [[ -n "$sanitizer" ]]; then "$sanitizer" --version | head -n 2; else echo "compute-sanitizer: not found"; fi
    timeout 90 python3 -m cnn_gpu info
    echo "# stages"
} > "$summary" 2>&1

# The default launcher (cnn_gpu/cuda/driver_launch.py, cuLaunchKernel) must survive a few launches against NumPy;
# if it does not (a crash would take every later stage with it), the run goes on with CuPy's.
if timeout 60 python3 -c 'import cupy, numpy; from cnn_gpu import functional as F
x = numpy.random.default_rng(0).standard_normal((3, 5, 7, 9)).astype(numpy.float32)
w = numpy.random.default_rng(1).standard_normal((4, 5, 3, 3)).astype(numpy.float32)
y = F.conv2d(cupy.asarray(x), cupy.asarray(w), None, 1, 1, "relu").get()
assert numpy.abs(y - F.conv2d(x, w, None, 1, 1, "relu")).max() < 1e-4
assert (F.relu(cupy.asarray(x)).get() == numpy.maximum(x, 0)).all()' >> "$summary" 2>&1; then
    echo "launcher: driver (its smoke test passed)" >> "$summary"
else
    export CNN_GPU_LAUNCHER=cupy
    echo "launcher: the driver launcher FAILED its smoke test (above); every stage runs with CNN_GPU_LAUNCHER=cupy" >> "$summary"
fi

stage pytest 250 env CNN_GPU_BACKEND=cuda python3 -m pytest -q -rs --durations=15 -p no:cacheprovider tests/
for tool in memcheck racecheck synccheck; do
    if [[ -n "$sanitizer" ]]; then
        stage "$tool" 60 "$sanitizer" --tool "$tool" --error-exitcode 9 --print-limit 100 \
            python3 benchmarks/sanitize_all_kernels.py
        { echo "===== compute-sanitizer --tool $tool ====="; cat "$OUT/$tool.log"; } >> "$OUT/sanitize.log"
        rm -f "$OUT/$tool.log"
    else
        echo "stage $tool: not run, compute-sanitizer not found" >> "$summary"
    fi
done

# The bench before the diagnostics: it is the judge, they only explain it (run first, they can leave the bench
# no time). DIAGNOSTICS_S is kept back for them.
DIAGNOSTICS_S=90
bench_dir=$(mktemp -d)
bench_limit=$(( $(seconds_left) - DIAGNOSTICS_S ))
(( bench_limit > 300 )) && bench_limit=300
# the bench stops starting cases 60 s before its stage's limit: time for its last case, the PNG, the table
stage bench "$bench_limit" env CNN_GPU_BENCH_BUDGET_S=$(( bench_limit - 60 )) \
    python3 -m cnn_gpu bench --out "$bench_dir"
for file in results.json speedup.png; do
    if [[ -f "$bench_dir/$file" ]]; then cp "$bench_dir/$file" "$OUT/"; else echo "bench: no $file written" >> "$summary"; fi
done
rm -rf "$bench_dir"

stage host 150 bash -c 'python3 benchmarks/host_overhead.py
    echo "===== python3 -m cnn_gpu train (defaults: CUDA-graph steps) ====="
    python3 -m cnn_gpu train --out "$(mktemp -d)"
    echo "===== the 100×100 network's step against float64, with and without the Winograd variants ====="
    CNN_GPU_AUTOTUNE_CACHE=$(mktemp) python3 benchmarks/step_check.py
    CNN_GPU_AUTOTUNE_CACHE=$(mktemp) python3 benchmarks/step_check.py --withdraw f4x4
    CNN_GPU_AUTOTUNE_CACHE=$(mktemp) python3 benchmarks/step_check.py --withdraw winograd'

ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)
if [[ -n "$ncu" ]]; then
    # the variants the last run left unexplained, each forced (benchmarks/profile_targets.py says which)
    stage ncu 60 env CNN_GPU_AUTOTUNE=0 "$ncu" --kernel-name regex:'maxpool2d|conv2d_fwd|conv2d_sum' --launch-count 12 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section InstructionStats \
        --section WarpStateStats --section Occupancy --section LaunchStats \
        python3 benchmarks/profile_targets.py
else
    echo "stage ncu: not run, ncu not found" >> "$summary"
fi

echo "total: $(( $(date +%s) - started )) s; files: $(cd "$OUT" && ls | tr '\n' ' ')" >> "$summary"
