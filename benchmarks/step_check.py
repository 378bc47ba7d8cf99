"""How far the 100×100 network's training step lands from its float64 truth, with and without Winograd variants.

    PYTHONPATH=. python3 benchmarks/step_check.py [--withdraw f4x4|winograd] [--seeds 2]

The bench's check of this step (`cnn-gpu bench --ops train_step`) compares ours and PyTorch's FP32 step
with PyTorch's float64 one and bounds ours by twice PyTorch's own error, each side's worst of 3 input sets.
This prints, for a few input seeds, both sides' errors of the same check, output by output (loss, first and
last kernels' gradients) and as the check takes them (their maximum). Runs with candidates withdrawn before
anything is tuned (--withdraw f4x4: the F(4×4) forward and backward-filter; winograd: every Winograd variant,
forward and backward-filter) show what those variants add (benchmarks/NOTES.md has the measurements). Run each
setting in its own process: the autotuner remembers its choices per process (benchmarks/gpu_run.sh gives each
a fresh CNN_GPU_AUTOTUNE_CACHE file).
"""
from __future__ import annotations

import argparse

from cnn_gpu import bench
from cnn_gpu.bench.check import _outputs
from cnn_gpu.cuda import variants
from cnn_gpu.ops.conv import WinogradBackwardFilter, WinogradForward


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--withdraw", choices=("f4x4", "winograd"),
                        help="withdraw the F(4×4) variants (forward, backward-filter), or every Winograd variant, from the autotuner")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.withdraw:
        sizes = (4,) if args.withdraw == "f4x4" else (2, 4)
        for op in ("conv2d_fwd", "conv2d_bwd_filter"):
            variants.withdraw(op, lambda v: isinstance(v, (WinogradForward, WinogradBackwardFilter)) and v.m in sizes)
    case = next(c for c in bench.cases(quick=False) if c.op == "train_step" and "100×100" in c.shape
                and c.variant == "fwd+bwd+adam")
    label = {None: "every candidate", "f4x4": "F(4×4) withdrawn", "winograd": "every Winograd variant withdrawn"}[args.withdraw]
    for seed in range(args.seeds):
        side = bench.Side("cuda", seed)
        bound = case.prepare(side)
        with bound.check_context():  # dropout off on both sides, as the bench's check
            results = {"ours": _outputs(bound.ours())}
            truth = _outputs(bound.check_target()[1]())
            results.update((name, _outputs(ref())) for name, ref in bound.refs.items())
        # the check's outputs one by one (it bounds their maximum): where the error comes from
        for index, output in enumerate(("loss", "first kernel's gradient", "last kernel's gradient")):
            errors = ", ".join(f"{name} {bench.relative_error(side, result[index], truth[index]):.2e}"
                               for name, result in results.items())
            print(f"100×100 network step, {label}, seed {seed}, {output}: {errors}", flush=True)
        err_refs = {name: bench.relative_error(side, result, truth) for name, result in results.items() if name != "ours"}
        print(f"100×100 network step, {label}, seed {seed}: ours {bench.relative_error(side, results['ours'], truth):.2e}, "
              f"bound {bench.error_bound(case.tol, err_refs):.2e}", flush=True)
        side.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
