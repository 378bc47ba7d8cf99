"""A benchmark case (Case: an op, a variant, a shape, how to prepare one input set) and what preparing gives
(Bound: ours and each reference as calls over the same arrays), with the helpers that add a PyTorch reference
and its float64 truth."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Bound:
    """One input set and the calls over it."""

    ours: Callable[[], object]
    refs: dict = field(default_factory=dict)     # reference name -> call returning ours' outputs, in order
    inputs: tuple = ()                           # arrays ours reads (with its outputs: the minimum bytes)
    truth: tuple | None = None                   # (name, call): what ours and the references are checked against
    refs_match: bool = True                      # False: the references compute another function (another RNG)
    bytes: float | None = None                   # minimum bytes, when inputs + outputs do not count them (in place)
    check_context: Callable[[], object] | None = None  # a context manager the check runs in

    def check_target(self):
        """(name, call) that ours is checked against: the truth, else the first reference when it computes
        the same function (an FP32 check, e.g. without PyTorch on the GPU), else None (nothing to check)."""
        if self.truth is not None or not self.refs_match:
            return self.truth
        return next(iter(self.refs.items()), None)


@dataclass(frozen=True)
class Case:
    """One benchmark: an op, a variant and a shape, and how to prepare its inputs and calls."""

    op: str                                   # the name --ops selects
    variant: str                              # fwd, fwd+bias+relu, bwd, train, ...
    shape: str                                # what was measured, in words
    prepare: Callable[[object], Bound]        # Side -> Bound over one fresh random input set
    flops: float = 0.0                        # useful FLOPs of one call (0: a memory-bound op)
    tol: float = 1e-5                         # bound on ‖ours − target‖ / ‖target‖
    rotate: bool = True                       # False: stateful across calls, one input set only
    check_sets: int = 1                       # input sets checked (an ill-conditioned check: each side's worst)


def _ref_name(side, library: str, call: str) -> str:
    """'cuDNN (torch conv2d)' on the GPU, 'torch conv2d (CPU)' on the CPU."""
    return f"{library} ({call})" if side.device == "cuda" else f"{call} (CPU)"


def _torch_reference(bound: Bound, side, library: str, call: str, function, *operands):
    """Add the reference `function(*operands)` (FP32, what is timed), operands as torch tensors (arrays
    of the side are viewed through DLPack / from_numpy). The first reference added this way also
    gives the bound its truth: the same function on float64 copies of the operands, made when the
    check runs (once per case, never in a timed call)."""
    T = side.torch
    tensors = [o if o is None or isinstance(o, T.Tensor) else side.to_torch(o) for o in operands]
    name = _ref_name(side, library, call)
    bound.refs[name] = lambda: function(*tensors)
    if bound.truth is None:
        def in_float64():
            with _cudnn_heuristics(T):
                return function(*(_float64_copy(t) for t in tensors))
        bound.truth = (f"{name} in float64", in_float64)


def _float64_copy(tensor):
    """A float64 copy of a floating tensor (a leaf that requires grad where the original does); an
    integer or boolean tensor (labels, indices, masks) or None as it is."""
    if tensor is None or not tensor.is_floating_point():
        return tensor
    return tensor.detach().double().requires_grad_(tensor.requires_grad)


@contextlib.contextmanager
def _cudnn_heuristics(T):
    """cuDNN choosing by its heuristics, not by autotuning: for a float64 truth, which runs once per
    shape, autotuning would time every float64 algorithm first (seconds on the large layers)."""
    saved = T.backends.cudnn.benchmark
    T.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        T.backends.cudnn.benchmark = saved


KERAS_ADAM_EPSILON, ADAM_BETA_2 = 1e-7, 0.999


def torch_adam_epsilon(keras_epsilon=KERAS_ADAM_EPSILON, beta_2=ADAM_BETA_2) -> float:
    """Keras's Adam adds epsilon after the bias correction sqrt(1 - beta_2^t), torch before it: this
    torch epsilon makes the two updates identical at step 1, the step every check compares."""
    return keras_epsilon / (1 - beta_2) ** 0.5
