"""What a benchmark report carries besides its rows: the environment (versions, device, clocks, commit, date),
the printed table, the speed-up chart, and the atomic write of results.json."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy

import cnn_gpu
from cnn_gpu.bench.side import Side
from cnn_gpu.files import atomic_write, write_text


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
    root = Path(__file__).resolve().parents[2]
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
