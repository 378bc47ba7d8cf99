"""What research code does with layers beyond a training step, run on the drop-ins and checked against torch.nn on
the same weights or against the same computation done plainly: activation checkpointing, torch.export, model
ensembling and per-sample gradients with torch.func, the meta device, spectral_norm, torch.save of a whole model,
inference_mode, full backward hooks. CPU only (the NumPy path)."""
import copy
import io

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra: pip install torch)")
ours = pytest.importorskip("cnn_gpu.torch")


def small_net(nn, dropout=0.0):
    """Conv, BN, ReLU, pool, dropout, Linear from `nn` (torch.nn or cnn_gpu.torch)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()


def twin_nets(dropout=0.0):
    theirs, mine = small_net(torch.nn, dropout), small_net(ours, dropout)
    mine.load_state_dict(theirs.state_dict())
    return theirs, mine


def inputs(n=5):
    return torch.randn(n, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_gives_the_plain_runs_gradients(use_reentrant):
    """torch.utils.checkpoint reruns the forward in backward; dropout's mask must come out the same (the RNG state
    is restored), so the gradients equal the plain run's, bit for bit."""
    from torch.utils.checkpoint import checkpoint

    _, model = twin_nets(dropout=0.5)
    x = inputs().requires_grad_()
    torch.manual_seed(3)
    model(x).square().sum().backward()
    plain, plain_x = grads(model), x.grad.clone()
    model.zero_grad(set_to_none=True)
    x.grad = None
    torch.manual_seed(3)
    body, head = model[:5], model[5:]
    head(checkpoint(body, x, use_reentrant=use_reentrant)).square().sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(plain, grads(model)))
    assert torch.equal(plain_x, x.grad)


def test_export_records_our_operators_and_runs_as_eager():
    theirs, model = twin_nets()
    model.eval()
    x = inputs()
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any(t.startswith("cnn_gpu.") for t in targets), targets
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), rtol=0, atol=0)
        assert torch.allclose(model(x), theirs.eval()(x), rtol=1e-12, atol=1e-12)


# torch.func's vmap runs our operators through PyTorch's batching fallback (a loop over the batch), and says so
_BATCHING_FALLBACK = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@_BATCHING_FALLBACK
def test_ensembling_with_stack_module_state_and_vmap_equals_a_loop():
    from torch.func import functional_call, stack_module_state

    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(torch.nn.Sequential(ours.Conv2d(2, 3, 3), ours.ReLU(), ours.Flatten(),
                                          ours.Linear(3 * 6 * 6, 4)).double())
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = inputs()

    def one(p, b):
        return functional_call(base, (p, b), (x,))

    stacked = torch.vmap(one)(params, buffers)
    looped = torch.stack([m(x) for m in models])
    assert torch.allclose(stacked, looped, rtol=1e-12, atol=1e-12)


@_BATCHING_FALLBACK
def test_per_sample_gradients_with_vmap_of_grad_equal_a_loop():
    from torch.func import functional_call, grad

    theirs, model = twin_nets()
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    x = inputs()

    def loss(p, sample):
        return functional_call(model, (p, buffers), (sample[None],)).square().sum()

    per_sample = torch.vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        one = grad(loss)(params, x[i])
        for name in params:
            assert torch.allclose(per_sample[name][i], one[name], rtol=1e-12, atol=1e-12)
    theirs.eval()  # and torch.nn's own gradient for the first sample
    theirs.zero_grad()
    theirs(x[:1]).square().sum().backward()
    for name, p in theirs.named_parameters():
        assert torch.allclose(per_sample[name][0], p.grad, rtol=1e-10, atol=1e-12), name


def test_meta_device_gives_torch_nns_shapes():
    theirs, model = twin_nets()
    x = inputs().to("meta")
    y = model.to("meta")(x)
    assert y.device.type == "meta" and y.shape == theirs.to("meta")(x).shape


def test_spectral_norm_over_a_drop_in_equals_torch_nns():
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    theirs = torch.nn.Linear(6, 4).double()
    mine = ours.Linear(6, 4).double()
    mine.load_state_dict(theirs.state_dict())
    torch.manual_seed(5)
    theirs = spectral_norm(theirs)
    torch.manual_seed(5)
    mine = spectral_norm(mine)
    x = torch.randn(3, 6, dtype=torch.float64)
    for _ in range(3):  # training mode: a power iteration each call
        assert torch.allclose(mine(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_torch_save_of_a_whole_model_loads_and_runs():
    _, model = twin_nets()
    model.eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded[0], ours.Conv2d)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_inference_mode_equals_no_grad():
    _, model = twin_nets()
    model.eval()
    x = inputs()
    with torch.inference_mode():
        y = model(x)
    with torch.no_grad():
        assert torch.equal(y, model(x))
    assert y.is_inference()


def test_full_backward_hooks_see_torch_nns_gradients():
    theirs, mine = twin_nets()
    seen = {}
    for name, model in (("theirs", theirs), ("mine", mine)):
        seen[name] = []
        for layer in model:
            layer.register_full_backward_hook(
                lambda module, grad_input, grad_output, into=seen[name]: into.append(grad_output[0].clone()))
        model(inputs().requires_grad_()).square().sum().backward()
    assert len(seen["mine"]) == len(seen["theirs"]) == len(mine)
    for a, b in zip(seen["mine"], seen["theirs"]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_backward_twice_with_retain_graph_accumulates_as_torch_nn():
    theirs, mine = twin_nets()
    x = inputs()
    for model in (theirs, mine):
        loss = model(x).square().sum()
        loss.backward(retain_graph=True)
        loss.backward()
    for a, b in zip(grads(theirs), grads(mine)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_weight_norm_and_pruning_over_drop_ins_equal_torch_nns():
    """Both rewrite the weight a module reads (a parametrization; a pruning mask applied by a forward pre-hook)."""
    from torch.nn.utils import prune
    from torch.nn.utils.parametrizations import weight_norm

    theirs, mine = twin_nets()
    for model in (theirs, mine):
        model[0] = weight_norm(model[0])
        prune.l1_unstructured(model[6], "weight", amount=0.5)
    x = inputs()
    for model in (theirs, mine):
        model(x).square().sum().backward()
    assert torch.allclose(mine(x), theirs(x), rtol=1e-10, atol=1e-12)
    assert torch.allclose(mine[6].weight_orig.grad, theirs[6].weight_orig.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(mine[0].parametrizations.weight.original0.grad,
                          theirs[0].parametrizations.weight.original0.grad, rtol=1e-10, atol=1e-12)
