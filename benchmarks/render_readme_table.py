"""Print a `cnn-gpu bench` results.json as a markdown section for the README.

    python benchmarks/render_readme_table.py benchmarks/results/<gpu>-<date>.json > section.md

Everything printed comes from the file: a header line (date, device, driver, CUDA, CuPy / PyTorch /
cuDNN versions, commit), the two ceilings measured in the same run, then one table line per case
(op, variant, shape) with its first reference, the one the case lists first (cuDNN, cuBLAS or
PyTorch; for matmul cupy.matmul, cuBLAS too): ours ms, ref ms, speed-up, rate, fraction of the
ceiling, status. A case that failed its check, raised or was skipped keeps its line, without times.
Results files written before the example networks had names call them seed001 (the MNIST network) and
seed002 (the 100×100 network); their shapes are printed with the names. Standard library only: it runs
wherever the file is.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

MISSING = "–"
COLUMNS = ("op", "variant", "shape", "ours ms", "ref ms", "speed-up", "rate", "of ceiling", "status", "reference")
# the example networks' labels in older results files -> their names
NETWORK_NAMES = (("seed001 28²×1", "MNIST network 28²×1"), ("seed002 100²×1", "100×100 network"),
                 ("seed001 ", "MNIST "), ("seed002 ", "100×100 "))


def shape_label(shape: str) -> str:
    for old, new in NETWORK_NAMES:
        shape = shape.replace(old, new)
    return shape


def render(report: dict, match: str | None = None) -> str:
    """The markdown section for one report (the dict that results.json holds); match: a regular
    expression over "op variant shape" that keeps only the cases it finds (a summary)."""
    env, ceilings = report["environment"], report["ceilings"]
    device = env.get("gpu") or env.get("cpu") or MISSING
    lines = [
        f"### cnn_gpu vs reference libraries: {device}, {env['date']} ({report['mode']} run)",
        "",
        _versions_line(env),
        "",
        f"Ceilings measured in the same run: copy {ceilings['copy_gbps']:.0f} GB/s ({ceilings['copy_method']}); "
        f"SGEMM {ceilings['sgemm_tflops']:.2f} TFLOP/s ({ceilings['sgemm_method']}).",
    ]
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    lines += ["", _table_row(COLUMNS), _table_row("---" for _ in COLUMNS)]
    rows = first_row_per_case(report["rows"])
    if match:
        rows = [row for row in rows if re.search(match, f"{row['op']} {row['variant']} {shape_label(row['shape'])}")]
    lines += [_table_row(_cells(row)) for row in rows]
    lines += ["", "speed-up = ref ms / ours ms (> 1: ours is faster); rate: TFLOP/s or GB/s, whichever floor "
                  "dominates, and its fraction of the measured ceiling (benchmarks/NOTES.md); every row, "
                  "every reference and the check's errors are in results.json."]
    return "\n".join(lines)


def first_row_per_case(rows: list) -> list:
    """The first row of each (op, variant, shape), in report order."""
    chosen = {}
    for row in rows:
        chosen.setdefault((row["op"], row["variant"], row["shape"]), row)
    return list(chosen.values())


def _versions_line(env: dict) -> str:
    smi = env.get("nvidia_smi") or {}
    parts = [
        f"driver {smi.get('driver_version') or MISSING}",
        f"CUDA runtime {env.get('cuda_runtime') or MISSING} (driver API {env.get('cuda_driver') or MISSING})",
        f"CuPy {env.get('cupy') or MISSING}",
        f"PyTorch {env.get('torch') or MISSING}",
        f"cuDNN {env.get('cudnn') or MISSING}",
        f"commit {env.get('commit') or MISSING}",
    ]
    return " · ".join(parts)


def _cells(row: dict) -> list:
    rate = f"{row['rate']:.2f} {row['rate_unit']}" if row.get("rate") is not None else MISSING
    return [row["op"], row["variant"], shape_label(row["shape"]), _number(row.get("ours_ms"), ".3f"),
            _number(row.get("ref_ms"), ".3f"), _number(row.get("speedup"), ".2f"), rate,
            _number(row.get("ceiling_fraction"), ".0%"), row["status"], row.get("ref_name") or MISSING]


def _number(value, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def _table_row(cells) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results.json written by `cnn-gpu bench`")
    parser.add_argument("--match", help='keep the cases whose "op variant shape" this regular expression finds')
    args = parser.parse_args(argv)
    print(render(json.loads(args.results.read_text()), args.match))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
