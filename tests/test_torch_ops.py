"""cnn_gpu.torch as PyTorch operators: opcheck on every torch.ops.cnn_gpu op, torch.compile (fullgraph) against
eager, autocast against torch layers run in float32, torch.func transforms, double backward, torch.fx.

CPU everywhere torch is installed; the tests marked gpu run the same checks on CUDA tensors where a GPU is usable.
"""
import shutil

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra: pip install torch)")
ours = pytest.importorskip("cnn_gpu.torch")

import cnn_gpu  # noqa: E402
from cnn_gpu.torch import ops  # noqa: E402

gpu = [pytest.mark.gpu, pytest.mark.skipif(not (torch.cuda.is_available() and cnn_gpu.cuda_status()[0]),
                                           reason="needs a CUDA device usable by torch and cnn_gpu")]


def _rand(*shape, device="cpu", dtype=torch.float32, grad=True):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)


def _op_cases(device="cpu", dtype=torch.float32):
    """(op, args) for every operator, forward and backward, over the options that change their code path."""
    torch.manual_seed(0)
    r = lambda *s, grad=True: _rand(*s, device=device, dtype=dtype, grad=grad)  # noqa: E731
    x, w, b = r(2, 3, 9, 8), r(4, 3, 3, 3), r(4)
    xc, wc = x.detach(), w.detach()  # a backward operator's inputs: differentiating it is an error
    seed = torch.tensor(7)
    labels = torch.randint(0, 5, (6,), device=device)
    y, indices = ops.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], True)
    stats = (r(3, grad=False), torch.rand(3, device=device, dtype=dtype) + 0.5)
    bn_out = ops.batch_norm(x.detach(), None, None, None, None, True, 0.1, 1e-5)
    return [
        ("conv2d", (x, w, b, [1, 2], [1, 0], [1, 1], 1, False)),
        ("conv2d", (x, r(4, 3, 2, 3), None, [1, 1], [0, 0], [1, 1], 1, True)),
        ("conv2d", (x, r(6, 1, 3, 2), r(6), [2, 1], [1, 2], [2, 3], 3, False)),  # depthwise x2, dilated
        ("conv2d", (x, r(3, 1, 3, 3), None, [1, 1], [0, 0], [2, 1], 3, True)),
        ("conv2d_backward", (r(2, 4, 9, 3, grad=False), xc, wc, [1, 2], [1, 0], [1, 1], 1, False, [True, True, True])),
        ("conv2d_backward", (r(2, 4, 7, 6, grad=False), xc, wc, [1, 1], [0, 0], [1, 1], 1, False,
                             [False, True, False])),
        ("conv2d_backward", (r(2, 6, 4, 9, grad=False), xc, r(6, 1, 3, 2, grad=False), [2, 1], [1, 2], [2, 3], 3,
                             False, [True, True, True])),
        ("conv2d_backward", (r(2, 3, 9, 8, grad=False), xc, r(3, 1, 3, 3, grad=False), [1, 1], [0, 0], [2, 1], 3,
                             True, [True, False, True])),
        ("linear", (r(5, 7), r(3, 7), r(3))),
        ("linear", (r(0, 7), r(3, 7), None)),
        ("linear_backward", (r(5, 3, grad=False), r(5, 7, grad=False), r(3, 7, grad=False))),
        ("max_pool2d", (x, [3, 3], [2, 2], [1, 1], True)),
        ("max_pool2d", (x, [2, 2], [2, 2], [0, 0], False)),
        ("max_pool2d_backward", (torch.randn_like(y), indices, [2, 3, 9, 8], [3, 3], [2, 2], [1, 1], True)),
        ("avg_pool2d", (x, [3, 3], [2, 2], [1, 1], False, None)),
        ("avg_pool2d", (x, [2, 3], [1, 2], [1, 1], True, 4)),
        ("avg_pool2d_backward", (r(2, 3, 5, 4, grad=False), [2, 3, 9, 8], [3, 3], [2, 2], [1, 1], True, None)),
        ("relu", (x,)),
        ("relu", (x.detach().to(memory_format=torch.channels_last).requires_grad_(True),)),
        ("conv2d", (x.detach().to(memory_format=torch.channels_last).requires_grad_(True), w, b, [1, 1], [1, 1],
                    [1, 1], 1, False)),
        ("sigmoid", (x,)),
        ("tanh", (x,)),
        ("leaky_relu", (x, 0.1)),
        ("leaky_relu", (x, -0.2)),
        ("activation_backward", (torch.randn_like(x), x.detach(), "leaky_relu", -0.2)),
        ("activation_backward", (torch.randn_like(x), torch.rand_like(x), "sigmoid", 0.0)),
        ("cross_entropy", (r(6, 5), labels)),
        ("cross_entropy_backward", (r((), grad=False), r(6, 5, grad=False), labels)),
        ("dropout", (x, 0.3, seed)),
        ("dropout_backward", (torch.randn_like(x), (torch.rand(x.shape, device=device) > 0.3).to(torch.uint8), 0.3)),
        ("batch_norm", (x, r(3), r(3), *stats, True, 0.1, 1e-5)),
        ("batch_norm", (x, r(3), r(3), *stats, False, 0.1, 1e-5)),
        ("batch_norm", (x, None, None, None, None, True, 0.0, 1e-3)),
        ("batch_norm_backward", (torch.randn_like(x), xc, r(3, grad=False), bn_out[1], bn_out[2], True)),
        ("batch_norm_backward", (torch.randn_like(x), xc, None, bn_out[1], bn_out[2], False)),
    ]


def test_every_operator_has_an_opcheck_case():
    registered = {op._name for op in ops.FORWARD_OPS + ops.BACKWARD_OPS}
    assert registered == {name for name, _ in _op_cases()}
    for name in registered:
        assert hasattr(torch.ops.cnn_gpu, name)


def _opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.cnn_gpu, name).default, args)


@pytest.mark.parametrize("case", range(len(_op_cases())), ids=[f"{n}-{i}" for i, (n, _) in enumerate(_op_cases())])
def test_opcheck_cpu(case):
    """Schema (no hidden mutation or aliasing), autograd registration, the fake against the real output
    (shapes, dtypes, strides) and tracing with dynamic shapes."""
    _opcheck(*_op_cases()[case])


def test_opcheck_cpu_float64():
    for name, args in _op_cases(dtype=torch.float64):
        if name in ("conv2d", "linear", "max_pool2d", "batch_norm"):
            _opcheck(name, args)


@pytest.mark.parametrize("case", range(len(_op_cases())), ids=[f"{n}-{i}" for i, (n, _) in enumerate(_op_cases())])
@pytest.mark.parametrize("mark", [pytest.param(None, marks=gpu)])
def test_opcheck_cuda(case, mark):
    _opcheck(*_op_cases("cuda")[case])


# ---- torch.compile -------------------------------------------------------------------------------
def _drop_in_model(nn, dropout=True):
    layers = [
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 8, 3, stride=(1, 2)), nn.Tanh(), nn.AvgPool2d(2, count_include_pad=False), torch.nn.Flatten(),
        nn.Linear(8 * 2 * 1, 20), nn.LeakyReLU(-0.1),
    ]
    layers += [nn.Dropout(0.25)] if dropout else []
    layers += [nn.Linear(20, 12), nn.Sigmoid(), nn.Linear(12, 4)]
    return torch.nn.Sequential(*layers)


def _train_step(model, x, labels, seed=1):
    torch.manual_seed(seed)
    logits = model(x)
    loss = ours.cross_entropy(logits, labels)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return logits.detach(), loss.detach(), grads


def _check_compiled_equals_eager(backend, dropout, device="cpu"):
    torch.manual_seed(0)
    eager = _drop_in_model(ours, dropout).to(device)
    compiled_model = _drop_in_model(ours, dropout).to(device)
    compiled_model.load_state_dict(eager.state_dict())
    x = torch.randn(6, 1, 14, 12, device=device)
    labels = torch.randint(0, 4, (6,), device=device)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)  # a graph break is an error
    for step in range(2):
        want, got = _train_step(eager, x, labels, seed=step), _train_step(compiled, x, labels, seed=step)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
        for g, h in zip(got[2], want[2]):
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    for (name, b1), (_, b2) in zip(eager.named_buffers(), compiled_model.named_buffers()):
        torch.testing.assert_close(b2, b1, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_fullgraph_aot_eager_equals_eager():
    """The whole model, dropout included (aot_eager draws its seed from the same generator), trains as in eager."""
    torch._dynamo.reset()
    _check_compiled_equals_eager("aot_eager", dropout=True)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compile_fullgraph_inductor_equals_eager():
    """Inductor draws random numbers its own way, so the model here has no dropout."""
    torch._dynamo.reset()
    _check_compiled_equals_eager("inductor", dropout=False)


@pytest.mark.parametrize("mark", [pytest.param(None, marks=gpu)])
def test_compile_fullgraph_cuda(mark):
    torch._dynamo.reset()
    _check_compiled_equals_eager("aot_eager", dropout=True, device="cuda")


# ---- autocast ------------------------------------------------------------------------------------
class _InFloat32(torch.nn.Module):
    """A torch.nn layer run as PyTorch runs its float32-only ops under autocast: inputs cast to float32."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


def _mixed_model(nn, wrap):
    """torch layers (which autocast runs in low precision) before, between and after the drop-ins."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), wrap(nn.Conv2d(4, 4, 3, padding=1)), wrap(nn.BatchNorm2d(4)), wrap(nn.ReLU()),
        wrap(nn.MaxPool2d(2)), torch.nn.Conv2d(4, 3, 3), torch.nn.Flatten(), wrap(nn.Linear(3 * 2 * 2, 5)),
        torch.nn.Linear(5, 3))


def _check_autocast(device, dtype):
    torch.manual_seed(0)
    reference = _mixed_model(torch.nn, _InFloat32).to(device)
    model = _mixed_model(ours, lambda layer: layer).to(device)
    model.load_state_dict({k.replace(".layer", ""): v for k, v in reference.state_dict().items()})
    x = torch.randn(4, 2, 10, 10, device=device)
    outputs = []
    for m in (reference, model):
        with torch.autocast(device, dtype):
            y = m(x)
            assert m[1](m[0](x)).dtype == torch.float32  # our conv's output under autocast
            loss = y.float().square().mean()
        loss.backward()
        outputs.append((y, [p.grad for p in m.parameters()]))
    (y1, g1), (y2, g2) = outputs
    assert y2.dtype == y1.dtype == dtype  # the last layer is torch's, in low precision
    torch.testing.assert_close(y2, y1, rtol=1e-2, atol=1e-3)
    for a, b in zip(g2, g1):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu_runs_our_ops_in_float32(dtype):
    _check_autocast("cpu", dtype)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, marks=gpu), pytest.param(torch.bfloat16, marks=gpu)])
def test_autocast_cuda_runs_our_ops_in_float32(dtype):
    _check_autocast("cuda", dtype)


def test_autocast_casts_low_precision_inputs_and_returns_their_gradient_dtype():
    x = _rand(2, 3, 6, 6, dtype=torch.bfloat16)
    w = _rand(4, 3, 3, 3)
    with torch.autocast("cpu", torch.bfloat16):
        y = ours.conv2d(x, w)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    ref = torch.nn.functional.conv2d(x.detach().float(), w.detach())
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layer,shape", [(ours.Conv2d(3, 2, 3), (1, 3, 5, 5)), (ours.Linear(3, 2), (4, 3)),
                                         (ours.ReLU(), (4, 3)), (ours.MaxPool2d(2), (1, 3, 4, 4))])
def test_low_precision_outside_autocast_is_a_type_error(layer, shape, dtype):
    with pytest.raises(TypeError, match=rf"cnn_gpu::\w+: x is {dtype}.*float32.*autocast"):
        layer(torch.randn(shape, dtype=dtype))


# ---- torch.func, double backward, torch.fx -------------------------------------------------------
def test_func_grad_equals_autograd():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 7, 6), torch.randn(4, 3, 3, 3), torch.randn(4)

    def loss(w, b):
        return ours.cross_entropy(ours.linear(ours.relu(ours.conv2d(x, w, b, padding=1)).flatten(1)[:, :10],
                                              torch.eye(10)), torch.tensor([1, 3]))

    got = torch.func.grad(loss, argnums=(0, 1))(w, b)
    w1, b1 = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    want = torch.autograd.grad(loss(w1, b1), (w1, b1))
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h)


def test_func_grad_under_autocast_returns_the_input_dtype():
    x, w = torch.randn(2, 3, 6, 6, dtype=torch.bfloat16), torch.randn(4, 3, 3, 3)

    def loss(x):
        with torch.autocast("cpu", torch.bfloat16):
            return ours.relu(ours.conv2d(x, w)).sum()

    got = torch.func.grad(loss)(x)
    x1 = x.clone().requires_grad_(True)
    loss(x1).backward()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, x1.grad)


def test_vmap_equals_a_loop():
    torch.manual_seed(0)
    xs, w = torch.randn(3, 2, 2, 5, 5), torch.randn(4, 2, 3, 3)
    with pytest.warns(UserWarning, match="batching rule"):  # PyTorch's fallback: a loop over the batch
        got = torch.func.vmap(lambda x: ours.relu(ours.conv2d(x, w)))(xs)
    torch.testing.assert_close(got, torch.stack([ours.relu(ours.conv2d(x, w)) for x in xs]))


@pytest.mark.parametrize("build,op", [
    (lambda x: ours.conv2d(x, torch.randn(2, 3, 3, 3, dtype=x.dtype)).square(), "conv2d_backward"),
    (lambda x: ours.tanh(x).square(), "activation_backward"),
    (lambda x: ours.linear(x.flatten(1), torch.randn(2, 48, dtype=x.dtype)).square(), "linear_backward"),
])
def test_double_backward_is_an_error_naming_the_op(build, op):
    x = _rand(2, 3, 4, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad(build(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=rf"cnn_gpu::{op} has no derivative"):
        torch.autograd.grad(g.sum(), x)


def test_fx_symbolic_trace_keeps_each_drop_in_as_one_call():
    torch.manual_seed(0)
    model = _drop_in_model(ours, dropout=False).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 1, 14, 12)
    torch.testing.assert_close(traced(x), model(x))
    called = {n.target.__name__ for n in traced.graph.nodes if n.op == "call_function"}
    assert {"conv2d", "max_pool2d", "avg_pool2d", "linear", "_batch_norm_module"} <= called


def _forward_and_gradients(op, args):
    """The op's outputs through cnn_gpu.torch's call, and the gradients of a fixed weighting of its floating outputs
    with respect to every input that requires grad."""
    torch.manual_seed(1)
    outputs = ops.call(op, *args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    differentiable = [o for o in outputs if o.requires_grad]
    if not inputs or not differentiable:
        return outputs, ()
    loss = sum((o * torch.randn_like(o)).sum() for o in differentiable)
    return outputs, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("case", [i for i, (n, _) in enumerate(_op_cases()) if not n.endswith("_backward")],
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(_op_cases()) if not n.endswith("_backward")])
def test_plain_eager_calls_equal_the_operator(case, monkeypatch):
    """In plain eager mode the modules run each op's autograd formula over its implementation directly (no
    dispatcher round trips); the outputs and gradients are the operator's, bit for bit, and the graph holds the
    direct path's nodes (not the operator's)."""
    from cnn_gpu.torch import bridge

    name, args = _op_cases()[case]
    op = getattr(ops, name)
    direct, direct_grads = _forward_and_gradients(op, args)
    if any(o.requires_grad for o in direct):
        assert any(type(o.grad_fn).__name__ == f"{name}_eagerBackward" for o in direct if o.grad_fn is not None)
    monkeypatch.setattr(bridge, "_plain_eager", lambda args: False)
    through_operator, operator_grads = _forward_and_gradients(op, args)
    assert all(o.grad_fn is None or "eager" not in type(o.grad_fn).__name__ for o in through_operator)
    for a, b in zip(direct + tuple(direct_grads), through_operator + tuple(operator_grads)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.dtype.is_floating_point and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num()))


@pytest.mark.parametrize("case", [i for i, (n, _) in enumerate(_op_cases()) if not n.endswith("_backward")],
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(_op_cases()) if not n.endswith("_backward")])
def test_calls_without_grad_equal_the_recorded_ones(case):
    """Where autograd records nothing (no_grad, inference_mode) the implementation runs bare, as a backward formula's
    own calls do: the same outputs, bit for bit, and no graph."""
    name, args = _op_cases()[case]
    op = getattr(ops, name)
    recorded = _forward_and_gradients(op, args)[0]
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            torch.manual_seed(1)
            bare = ops.call(op, *args)
        bare = bare if isinstance(bare, tuple) else (bare,)
        for a, b in zip(bare, recorded):
            assert a.grad_fn is None and not a.requires_grad
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b) or (a.dtype.is_floating_point and torch.equal(a.isnan(), b.isnan())
                                         and torch.equal(a.nan_to_num(), b.nan_to_num()))


def test_plain_eager_is_only_taken_on_plain_tensors():
    from cnn_gpu.torch import bridge
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3)
    assert bridge._plain_eager((x, [1, 2], 0.5, None, torch.nn.Parameter(x)))
    assert not bridge._plain_eager((x.to("meta"),))
    assert not bridge._plain_eager((x, torch.fx.Proxy(torch.fx.Graph().placeholder("p"))))
    with Passthrough():
        assert not bridge._plain_eager((x,))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
    assert not bridge._plain_eager((fake,))


def test_jacobian_vectorized_equals_the_loop():
    """torch.autograd.functional.jacobian(vectorize=True) batches with the legacy vmap: its tensors take the
    operator (PyTorch's loop over the batch), not the direct path, and the Jacobian is the unvectorised one."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(ours.Conv2d(1, 2, 3), ours.ReLU(), ours.MaxPool2d(2), torch.nn.Flatten(),
                                ours.Linear(8, 3))
    x = torch.randn(1, 1, 6, 6)
    torch.testing.assert_close(torch.autograd.functional.jacobian(model, x, vectorize=True),
                               torch.autograd.functional.jacobian(model, x), rtol=0, atol=0)


def test_jit_trace_records_the_operators_and_saves(tmp_path):
    """torch.jit.trace records torch.ops.cnn_gpu.* calls (not Python functions), so the traced module saves, loads
    and runs like the eager one on another batch size."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(ours.Conv2d(1, 2, 3), ours.ReLU(), ours.MaxPool2d(2), torch.nn.Flatten(),
                                ours.Linear(2 * 3 * 3, 4))
    traced = torch.jit.trace(model, torch.randn(2, 1, 8, 8))
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert {"cnn_gpu::conv2d", "cnn_gpu::relu", "cnn_gpu::max_pool2d", "cnn_gpu::linear"} <= kinds
    assert "prim::PythonOp" not in kinds
    torch.jit.save(traced, tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_forward_mode_derivatives_are_an_error_naming_the_op():
    """Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) has no formula here: a clear error, never a
    silently missing tangent."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(2, 3, 6, 6)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="cnn_gpu::relu has no forward-mode derivative"):
        ours.ReLU()(fwAD.make_dual(x, torch.ones_like(x)))
    with fwAD.dual_level(), torch.no_grad(), pytest.raises(RuntimeError, match="no forward-mode derivative"):
        ours.ReLU()(fwAD.make_dual(x, torch.ones_like(x)))  # no_grad leaves forward mode on
    conv = ours.Conv2d(3, 2, 3)
    with pytest.raises(RuntimeError, match="cnn_gpu::conv2d has no forward-mode derivative"):
        torch.func.jvp(conv, (x,), (torch.ones_like(x),))


@pytest.mark.parametrize("plain", [True, False], ids=["plain eager", "operator"])
@pytest.mark.parametrize("layer", ["MaxPool2d", "Dropout", "BatchNorm2d"])
def test_outputs_without_a_gradient_get_no_tensor_of_zeros_in_backward(layer, plain, monkeypatch):
    """The indices, the dropout mask and the batch statistics have no gradient: backward gets None for them, not a
    tensor of zeros (filling one the size of the input is wasted work, and on the CPU a parallel op after which
    PyTorch's OpenMP workers spin on the cores for several ms). x's gradient is still torch.nn's (dropout's: dy
    times y / x, the kept elements' scale)."""
    from torch.profiler import ProfilerActivity, profile

    from cnn_gpu.torch import bridge

    if not plain:
        monkeypatch.setattr(bridge, "_plain_eager", lambda args: False)
    torch.manual_seed(0)
    module = {"MaxPool2d": lambda: ours.MaxPool2d(2), "Dropout": lambda: ours.Dropout(0.5),
              "BatchNorm2d": lambda: ours.BatchNorm2d(4)}[layer]()
    x = torch.randn(8, 4, 16, 16, requires_grad=True)
    y = module(x)
    dy = torch.randn_like(y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y.backward(dy)
    filled = [e.key for e in prof.key_averages() if e.key in ("aten::zeros", "aten::zeros_like", "aten::zero_",
                                                               "aten::fill_", "aten::new_zeros")]
    assert not filled, filled
    if layer == "Dropout":
        expected = dy * (y / x).detach()
    else:
        x_ref = x.detach().clone().requires_grad_(True)
        (torch.nn.MaxPool2d(2) if layer == "MaxPool2d" else torch.nn.BatchNorm2d(4))(x_ref).backward(dy)
        expected = x_ref.grad
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_undefined_output_gradients_are_zero_gradients():
    """backward with no gradient for y (autograd's undefined gradient, e.g. from gradcheck's check_undefined_grad)
    gives no gradient for x, as a gradient of zeros would."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    for function, args in [(ops.max_pool2d, ([2, 2], [2, 2], [0, 0], False)), (ops.dropout, (0.5, torch.tensor(7))),
                           (ops.batch_norm, (None, None, None, None, True, 0.1, 1e-5))]:
        torch.autograd.gradcheck(lambda t: ops.call(function, t, *args)[0], (x,), check_undefined_grad=True)
