"""cnn_gpu.torch: our modules against torch.nn with the same weights, gradcheck, training, DDP.

Runs on the CPU (NumPy backend through zero-copy views) everywhere torch is installed, and on CUDA
tensors (our kernels, through DLPack) where a GPU is usable.
"""
import os
import socket

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra: pip install torch)")
ours = pytest.importorskip("cnn_gpu.torch")

from checks import rel_error  # noqa: E402


@pytest.fixture
def device(backend):
    """torch device for the backend under test: cpu for numpy, cuda for cuda."""
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch.device("cuda" if backend == "cuda" else "cpu")


def _compare_module(theirs, mine, x, device):
    theirs, mine = theirs.to(device), mine.to(device)
    mine.load_state_dict(theirs.state_dict())
    x1 = x.to(device).requires_grad_(True)
    x2 = x.to(device).requires_grad_(True)
    y1, y2 = theirs(x1), mine(x2)
    assert y1.shape == y2.shape
    assert rel_error(y2.detach().cpu().numpy(), y1.detach().cpu().numpy()) < 1e-5
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy)
    assert rel_error(x2.grad.cpu().numpy(), x1.grad.cpu().numpy()) < 1e-5
    for (name, p1), (_, p2) in zip(theirs.named_parameters(), mine.named_parameters()):
        assert rel_error(p2.grad.cpu().numpy(), p1.grad.cpu().numpy()) < 1e-5, name


@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, False), ((1, 3), (2, 0), True)])
def test_conv2d_matches_torch(device, stride, padding, bias):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 17, 13)
    _compare_module(torch.nn.Conv2d(3, 5, 3, stride, padding, bias=bias), ours.Conv2d(3, 5, 3, stride, padding, bias=bias), x, device)


def test_linear_matches_torch(device):
    _compare_module(torch.nn.Linear(33, 7), ours.Linear(33, 7), torch.randn(5, 33), device)


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 0)])
def test_max_pool_matches_torch(device, kernel, stride, padding):
    _compare_module(torch.nn.MaxPool2d(kernel, stride, padding), ours.MaxPool2d(kernel, stride, padding), torch.randn(2, 3, 11, 9), device)


def test_avg_pool_matches_torch(device):
    _compare_module(torch.nn.AvgPool2d(3, 2, 1), ours.AvgPool2d(3, 2, 1), torch.randn(2, 3, 11, 9), device)


@pytest.mark.parametrize("pair", [(torch.nn.ReLU, ours.ReLU), (torch.nn.Sigmoid, ours.Sigmoid), (torch.nn.Tanh, ours.Tanh)])
def test_activations_match_torch(device, pair):
    _compare_module(pair[0](), pair[1](), torch.randn(4, 3, 5, 7), device)


def test_leaky_relu_matches_torch(device):
    _compare_module(torch.nn.LeakyReLU(0.2), ours.LeakyReLU(0.2), torch.randn(4, 37), device)


def test_batch_norm_matches_torch_and_updates_running_stats(device):
    theirs, mine = torch.nn.BatchNorm2d(3).to(device), ours.BatchNorm2d(3).to(device)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    _compare_module(theirs, mine, torch.randn(4, 3, 5, 6) * 2 + 1, device)
    for name in ("running_mean", "running_var"):
        assert rel_error(getattr(mine, name).cpu().numpy(), getattr(theirs, name).cpu().numpy()) < 1e-5
    assert int(mine.num_batches_tracked) == int(theirs.num_batches_tracked) == 1
    theirs.eval()
    mine.eval()
    x = torch.randn(2, 3, 4, 4, device=device)
    assert rel_error(mine(x).detach().cpu().numpy(), theirs(x).detach().cpu().numpy()) < 1e-5


def test_cross_entropy_matches_torch(device):
    logits = torch.randn(9, 10, device=device, requires_grad=True)
    labels = torch.randint(0, 10, (9,), device=device)
    loss = ours.cross_entropy(logits, labels)
    ref = torch.nn.functional.cross_entropy(logits, labels)
    assert abs(loss.item() - ref.item()) < 1e-5
    (g,) = torch.autograd.grad(loss * 3, logits)
    (g_ref,) = torch.autograd.grad(ref * 3, logits)
    assert rel_error(g.cpu().numpy(), g_ref.cpu().numpy()) < 1e-5


def test_dropout_is_reproducible_and_scaled(device):
    layer = ours.Dropout(0.25)
    x = torch.ones(64, 64, device=device, requires_grad=True)
    torch.manual_seed(3)
    y1 = layer(x)
    torch.manual_seed(3)
    y2 = layer(x)
    assert torch.equal(y1, y2)
    kept = (y1 != 0).float().mean().item()
    assert 0.7 < kept < 0.8
    assert torch.allclose(y1[y1 != 0], torch.full_like(y1[y1 != 0], 1 / 0.75))
    y1.sum().backward()
    assert torch.equal(x.grad, (y1 != 0).float() / 0.75)
    assert torch.equal(layer.eval()(x), x)


def test_state_dict_interchangeable_both_ways():
    theirs, mine = torch.nn.Conv2d(2, 4, 3), ours.Conv2d(2, 4, 3)
    mine.load_state_dict(theirs.state_dict())
    theirs2 = torch.nn.Conv2d(2, 4, 3)
    theirs2.load_state_dict(mine.state_dict())
    assert torch.equal(theirs2.weight, theirs.weight)


def test_gradcheck_float64_cpu():
    torch.manual_seed(1)
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ours.conv2d(x, w, b, stride=(2, 1), padding=1), (x, w, b))
    lw = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    lx = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: ours.linear(a, w), (lx, lw))
    px = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ours.max_pool2d(a, 2, 1), (px,))


def test_rejects_device_or_dtype_mix():
    with pytest.raises((TypeError, ValueError), match="dtype|float"):
        ours.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2, dtype=torch.float64))


def test_rejects_unsupported_module_options():
    with pytest.raises(ValueError, match="groups"):
        ours.Conv2d(4, 4, 3, groups=2)


def _mixed_model():
    return torch.nn.Sequential(
        ours.Conv2d(1, 4, 3, padding=1), ours.ReLU(), ours.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        ours.Linear(4 * 2 * 2, 3),
    )


def _toy_data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].sum(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].sum(dim=(1, 2)) > 0).long()
    return x, y


def test_mixed_model_trains_with_torch_sgd():
    torch.manual_seed(0)
    model = _mixed_model()
    x, y = _toy_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ours.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, state, x, y, steps, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = _mixed_model()
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    for _ in range(steps):
        opt.zero_grad()
        ours.cross_entropy(ddp(x[shard]), y[shard]).backward()
        opt.step()
    out[rank] = {k: v.clone() for k, v in model.state_dict().items()}
    dist.destroy_process_group()


def test_ddp_two_processes_match_single_process():
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    reference = _mixed_model()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    x, y = _toy_data(32)
    steps = 3
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        ours.cross_entropy(reference(x), y).backward()
        opt.step()
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), state, x, y, steps, out), nprocs=2, join=True)
    for name, value in reference.state_dict().items():
        assert torch.equal(out[0][name], out[1][name]), f"ranks disagree on {name}"
        assert rel_error(out[0][name].numpy(), value.numpy()) < 1e-5, name
