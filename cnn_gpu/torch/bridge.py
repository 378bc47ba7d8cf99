"""How a cnn_gpu op becomes a PyTorch operator (cnn_gpu.torch.ops): the checks its implementation and fake share,
the zero-copy hand-over of tensors to our ops (NumPy views of CPU tensors, CuPy views of CUDA tensors through
DLPack, on PyTorch's current stream), and the registration of autograd and autocast rules."""
import contextlib
from typing import Optional

import numpy
import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.library import custom_op, register_autocast

from cnn_gpu.torch.threads import cpu_threads_for_numpy

DEVICES = ("cpu", "cuda")  # where our ops run, and where autocast casts their inputs


# ---- checks shared by the implementations and the fakes -----------------------------------------
def check_tensors(op: str, **tensors):
    """One device; floating tensors float32 (float64 too on the CPU and the meta device), all of one dtype."""
    if _plainly_float32(tensors.values()):
        return
    given = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in given.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in given.items())
        raise ValueError(f"cnn_gpu::{op}: tensors must be on one device: {listing}")
    floats = {name: t for name, t in given.items() if t.is_floating_point()}
    for name, t in floats.items():
        # meta tensors (shapes only) take what the CPU takes
        allowed = (torch.float32, torch.float64) if t.device.type in ("cpu", "meta") else (torch.float32,)
        if t.dtype not in allowed:
            names = " or ".join(str(d) for d in allowed)
            raise TypeError(
                f"cnn_gpu::{op}: {name} is {t.dtype} (shape {tuple(t.shape)}); it takes {names} on {t.device.type}. "
                f"Under torch.autocast it casts its inputs to float32 itself; otherwise convert with .float()")
    if len({t.dtype for t in floats.values()}) > 1:
        listing = ", ".join(f"{n} is {t.dtype}" for n, t in floats.items())
        raise TypeError(f"cnn_gpu::{op}: floating tensors must share one dtype: {listing}")


def _plainly_float32(tensors) -> bool:
    """check_tensors' fast yes (every op call makes it): all float32 or integer, on one device. False means
    "check rule by rule", not "invalid"."""
    device = None
    for t in tensors:
        if t is None:
            continue
        if t.dtype is not torch.float32 and t.is_floating_point():
            return False
        if device is None:
            device = t.device
        elif t.device != device:
            return False
    return True


# ---- zero-copy hand-over -------------------------------------------------------------------------
def _to_array(t):
    """A NumPy (CPU) or CuPy (CUDA) view of a tensor's storage, or None."""
    if t is None:
        return None
    t = t.detach()
    if t.is_cuda:
        import cupy

        return cupy.from_dlpack(t)
    return t.numpy()


def _to_tensor(a):
    """A tensor over an output array, C-contiguous as the fakes promise (the NumPy path keeps the layout of a
    strided input in places, e.g. an element-wise op on a channels_last view)."""
    if a is None:
        return None
    if type(a).__module__.startswith("cupy"):
        import cupy

        return torch.from_dlpack(a if a.flags.c_contiguous else cupy.ascontiguousarray(a))
    return torch.from_numpy(a if a.flags.c_contiguous else numpy.ascontiguousarray(a))


@contextlib.contextmanager
def _on_cuda_stream(t):
    """CuPy launches on the tensor's device and PyTorch's current stream there."""
    import cupy

    stream = torch.cuda.current_stream(t.device)
    with cupy.cuda.Device(t.device.index), cupy.cuda.ExternalStream(stream.cuda_stream, t.device.index):
        yield


def run(function, *tensors, **kwargs):
    """function on array views of the tensors (NumPy on torch's threads, CuPy on torch's current stream); results
    back as tensors (tuples stay tuples)."""
    anchor = next(t for t in tensors if t is not None)
    if anchor.is_cuda:
        with _on_cuda_stream(anchor):
            return _run(function, tensors, kwargs)
    # torch's CPU ops give NaN and inf without a warning, so ours do too (NumPy would warn of each)
    with cpu_threads_for_numpy(), numpy.errstate(all="ignore"):
        return _run(function, tensors, kwargs)


def _run(function, tensors, kwargs):
    out = function(*[_to_array(t) for t in tensors], **kwargs)
    if isinstance(out, tuple):
        return tuple(_to_tensor(o) for o in out)
    return _to_tensor(out)


# ---- registration helpers ------------------------------------------------------------------------
def operator(qualname, function=None, schema=None):
    """torch.library.custom_op(qualname, function) for CPU and CUDA tensors, mutating none of its arguments, keeping
    `function` as the operator's `implementation`, which `call` runs directly in plain eager mode. A decorator when
    function is None."""
    if function is None:
        return lambda f: operator(qualname, f, schema)
    op = custom_op(qualname, function, mutates_args=(), device_types=DEVICES, schema=schema)
    op.implementation = function
    return op


def no_derivative(op):
    """Backward operators: differentiating one (double backward) is an error that names it."""
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op._qualname} has no derivative: cnn_gpu's ops support first derivatives only (no double backward, "
            f"create_graph=True followed by another grad, or torch.func.hessian); the torch.nn layer can take "
            f"its place where second derivatives are needed")

    op.differentiable = differentiable(op, backward, setup_context)


def differentiable(op, formula, setup_context):
    """Registers the op's autograd formula, and returns the same formula as a torch.autograd.Function that
    calls the op: what the modules call, since the torch.func transforms (grad, vmap, jacrev) take an
    autograd.Function with setup_context, not an operator's registered formula. Its vmap rule is generated
    (the op's batching is PyTorch's fallback: a loop over the batch). The formula is also kept as `op.eager`,
    an autograd.Function over the op's implementation itself: what `call` runs in plain eager mode."""
    def backward(ctx, grad, *other_grads):  # y's gradient None (see non_differentiable): no gradient for any input
        return (None,) * len(ctx.needs_input_grad) if grad is None else formula(ctx, grad, *other_grads)

    op.register_autograd(backward, setup_context=setup_context)
    overload = getattr(torch.ops.cnn_gpu, op._name).default

    def eager_forward(ctx, *args):  # forward and setup_context in one (Function.apply then skips an inspect.signature)
        output = op.implementation(*args)
        setup_context(ctx, args, output)
        return output

    def jvp(ctx, *tangents):
        raise RuntimeError(
            f"{op._qualname} has no forward-mode derivative (torch.autograd.forward_ad, torch.func.jvp / jacfwd): "
            f"cnn_gpu's ops have reverse-mode autograd only; the torch.nn layer can take its place")

    op.eager = type(f"{op._name}_eager", (torch.autograd.Function,), {
        "forward": staticmethod(eager_forward), "backward": staticmethod(backward), "jvp": staticmethod(jvp)})
    return type(f"{op._name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(lambda *args: overload(*args)), "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward), "jvp": staticmethod(jvp), "generate_vmap_rule": True})


def call(op, *args):
    """op(*args) with autograd. torch.compile traces the operator, and so do FX tracing, torch.jit.trace, fake
    tensors, tensor subclasses and dispatch modes. Under a torch.func transform (grad, vmap, jacrev) it runs the op's
    autograd.Function (the transforms take no operator's registered formula). Otherwise, on plain CPU or CUDA
    tensors, the same autograd formula runs over the op's implementation directly (op.eager), without the
    dispatcher's round trips through Python: about 0.1 ms an op, which is most of a small layer's time on the CPU.
    Where autograd records nothing (no_grad, inference_mode, a backward formula's own call), the implementation
    runs bare. All give the same results, autocast's float32 rule included."""
    if torch.compiler.is_compiling():
        return op(*args)
    if torch._C._are_functorch_transforms_active():
        return op.differentiable.apply(*_autocast_inputs(args))
    if _plain_eager(args):
        args = _autocast_inputs(args)
        if torch.is_grad_enabled() or forward_ad._current_level >= 0:  # the Function records, or raises on a dual
            return op.eager.apply(*args)
        return op.implementation(*args)
    return op(*args)


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)
# torch.autograd.functional's vectorize=True batches with the legacy vmap, whose tensors are of type Tensor
_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)


def _plain_eager(args) -> bool:
    """Every tensor argument a plain CPU or CUDA tensor (not a legacy-vmap batched one: the operator has PyTorch's
    loop over the batch for those), no other argument that overrides torch functions (an FX Proxy), no mode that
    intercepts operators, and no torch.jit.trace recording (it must record the operator, which torch.jit.save can
    write, where a Function would be a Python call it cannot)."""
    if (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch.jit.is_tracing()):
        return False
    return _plain_arguments(args)


_SCALARS = (int, float, bool, str, type(None))


def _plain_arguments(args) -> bool:
    for a in args:
        kind = type(a)
        if kind in _SCALARS:
            continue
        if kind in _PLAIN_TENSORS:
            if not (a.is_cpu or a.is_cuda) or _legacy_batched(a):
                return False
        elif kind in (list, tuple):
            if not _plain_arguments(a):
                return False
        elif isinstance(a, Tensor) or hasattr(a, "__torch_function__"):
            return False
    return True


def _autocast_inputs(args):
    """The operator's autocast rule applied before an autograd.Function (which saves the inputs it is given):
    float16 / bfloat16 tensors to float32 where autocast is on for their device, the casts recorded by autograd."""
    if not any(torch.is_autocast_enabled(device) for device in DEVICES):
        return args

    def cast(a):
        if isinstance(a, Tensor) and a.dtype in (torch.float16, torch.bfloat16) and a.device.type in DEVICES \
                and torch.is_autocast_enabled(a.device.type):
            return a.float()
        return a
    return tuple(cast(a) for a in args)


def non_differentiable(ctx, *outputs):
    """Marks outputs that have no gradient (indices, masks, statistics) as such, and has autograd pass None for every
    undefined output gradient rather than a tensor of zeros (a None for y is then no gradient for any input, see
    differentiable): filling one the size of the input is wasted work, and on the CPU a parallel op after which
    PyTorch's OpenMP workers spin on the cores for several ms, slowing the NumPy work that follows."""
    ctx.mark_non_differentiable(*outputs)
    ctx.set_materialize_grads(False)


def float32_under_autocast(op):
    for device in DEVICES:
        register_autocast(op, device, torch.float32)


def empty(like: Tensor, shape=(0,)) -> Tensor:
    """The placeholder for an output a caller did not ask for (operators return tensors, never None)."""
    return like.new_empty(shape)


def zeros_or_empty(wanted: bool, like: Optional[Tensor]) -> Tensor:
    return torch.zeros_like(like) if wanted and like is not None else empty(like)
