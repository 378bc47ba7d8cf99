"""One benchmark case, checked then timed: ours, the truth and each reference run once on the same inputs; a
case whose error is over its bound becomes FAIL rows with no time, else its rows carry the median times, the
speed-up and the rate against the ceiling that bounds it."""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass

from cnn_gpu.bench.cases import Case
from cnn_gpu.bench.side import Side, _repeats_for

ROTATION_L2_MULTIPLE = 2         # rotating input sets cover at least this many L2 sizes
MAX_INPUT_SETS = 64
CHECK_CHUNK = 1 << 24            # elements per slice of the float64 error sums (bounded extra memory)


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


# A problem whose FP32 answer is ill-conditioned (deep nets with batch-norm: the 100×100 network's training step)
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


