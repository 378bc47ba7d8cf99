"""Kernel variants: one type for every op's alternative ways of computing the same result.

A Variant belongs to one tuned op (``op``: 'conv2d_fwd', 'conv2d_bwd_data', 'conv2d_bwd_filter', 'gemm',
'gemm_k_slices', 'maxpool2d_fwd', 'maxpool2d_bwd') and one algorithm (``algorithm``: the unit a GPU run
verifies, e.g. 'implicit GEMM, split'). It says whether it applies to a problem (``applies``), plans it
(``plan``: pure, public, raising ValueError where it cannot run the problem; ``planned`` is the one cache
of plans) and runs it (``launch``, whose arguments each op defines). Ops register their variants here in
their autotuner order (``register``); ``offered(op, problem)`` is what the autotuner chooses among, the
default first. Variants are frozen dataclasses: equal fields, equal variant; ``name`` is what the
autotuner's cache file and ``cnn_gpu.cuda.autotune.forced`` know a variant by.

Verified variants. A variant joins the default candidates only after a GPU run has passed its CUDA tests;
until then it is offered only when asked for: CNN_GPU_UNVERIFIED=1 (read when the autotuner makes a choice for a
shape: set it before the process's first call), or by forcing it
(``cnn_gpu.cuda.autotune.forced``). VERIFIED below is the one record of which algorithms a GPU run has
passed; the commit that records a passing GPU run (benchmarks/results/gpu-verification.md) updates it.
"""
from __future__ import annotations

import abc

import functools
import os

UNVERIFIED_VARIABLE = "CNN_GPU_UNVERIFIED"

# op -> the algorithms whose variants a GPU run has passed (CUDA-vs-NumPy tests, sanitizers).
VERIFIED = {
    "conv2d_fwd": frozenset({"implicit GEMM", "implicit GEMM, split", "Winograd F(2x2, 3x3)"}),
    "conv2d_bwd_data": frozenset({"implicit GEMM", "as forward"}),
    "conv2d_bwd_filter": frozenset({"implicit GEMM, split", "Winograd F(2x2, 3x3)", "few input channels"}),
    "gemm": frozenset({"tiled SGEMM"}),
    "gemm_k_slices": frozenset({"tiled SGEMM"}),
    "maxpool2d_fwd": frozenset({"generic window", "fixed window"}),
    "maxpool2d_bwd": frozenset({"cells", "gather", "staged"}),
}
# Not yet run on a GPU: the few-filter forward and its split ('few output channels', 'few output channels,
# split'), Winograd F(4x4, 3x3) forward and backward-filter (its interpolation points changed after its
# forward last ran on a GPU).


class Variant(abc.ABC):
    """One way of computing an op (see the module docstring). Subclasses are frozen dataclasses that set
    ``op`` and define ``algorithm``, ``name``, ``plan`` and ``launch`` (abstract: a subclass without them cannot be
    made); ``applies`` defaults to True."""

    op: str = ""
    algorithm: str = ""  # subclasses set it, or make it a property of their fields
    name: str = ""

    @property
    def verified(self) -> bool:
        return self.algorithm in VERIFIED.get(self.op, ())

    def applies(self, problem) -> bool:
        return True

    @abc.abstractmethod
    def plan(self, problem, *args):
        """What launch needs for this problem, computed once (planned caches it)."""

    @abc.abstractmethod
    def launch(self, *args):
        """Runs the variant on its arrays and returns the op's result."""

    def __str__(self) -> str:
        return self.name


_REGISTRY: dict = {}  # op -> [Variant], in registration (autotuner) order


def register(*variants: Variant) -> None:
    """Add variants to their ops' lists, after those registered before (the first of an op is its default)."""
    for variant in variants:
        if any(v.name == variant.name for v in _REGISTRY.get(variant.op, ())):
            raise ValueError(f"a {variant.op} variant named {variant.name!r} is registered already")
        _REGISTRY.setdefault(variant.op, []).append(variant)


def withdraw(op: str, which) -> None:
    """Take op's variants for which which(variant) is true out of the autotuner's candidates, for the rest of the
    process (benchmarks/step_check.py measures a network's step without some); the default cannot be withdrawn."""
    kept = [v for v in registered(op) if not which(v)]
    if not kept or kept[0] is not _REGISTRY[op][0]:
        raise ValueError(f"{op}'s default variant {_REGISTRY[op][0].name!r} cannot be withdrawn")
    _REGISTRY[op] = kept


def registered(op: str) -> tuple:
    """Every variant of op, verified or not, in autotuner order."""
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops with variants: {', '.join(sorted(_REGISTRY))}")
    return tuple(_REGISTRY[op])


def named(op: str, name: str) -> Variant:
    """op's variant called name; ValueError naming the known ones otherwise."""
    for variant in registered(op):
        if variant.name == name:
            return variant
    raise ValueError(f"{op} has no variant named {name!r}; its variants: {', '.join(v.name for v in registered(op))}")


def unverified_allowed() -> bool:
    """CNN_GPU_UNVERIFIED: 1 offers variants no GPU run has verified yet."""
    return _unverified_setting(os.environ.get(UNVERIFIED_VARIABLE, "0"))


@functools.lru_cache(maxsize=16)
def _unverified_setting(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no", ""):
        return False
    raise ValueError(f"{UNVERIFIED_VARIABLE} must be 1 (offer unverified variants too) or 0, got {value!r}")


def applicable(op: str, problem) -> tuple:
    """op's variants that apply to problem, verified or not, in autotuner order."""
    return tuple(v for v in registered(op) if v.applies(problem))


def offered(op: str, problem) -> tuple:
    """What the autotuner chooses among for problem: the applicable variants, only the verified ones unless
    CNN_GPU_UNVERIFIED=1; the first (the default) is always a verified one."""
    candidates = applicable(op, problem)
    if not unverified_allowed():
        candidates = tuple(v for v in candidates if v.verified)
    if not candidates or not candidates[0].verified:
        raise RuntimeError(f"{op}: no verified default variant applies to {problem}")  # a registration bug
    return candidates


@functools.lru_cache(maxsize=4096)
def planned(variant: Variant, problem, *args):
    """variant.plan(problem, *args), worked out once: the one cache of plans (a launch pays one lookup)."""
    return variant.plan(problem, *args)


def fits(variant: Variant, problem, *args) -> bool:
    """variant's plan for problem passes its checks (buffer sizes, grid extents)."""
    try:
        planned(variant, problem, *args)
    except ValueError:
        return False
    return True
