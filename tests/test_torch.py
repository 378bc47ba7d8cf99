"""cnn_gpu.torch: our modules against torch.nn with the same weights, gradcheck, training, DDP.

Runs on the CPU (NumPy backend through zero-copy views) everywhere torch is installed, and on CUDA
tensors (our kernels, through DLPack) where a GPU is usable.
"""
import os
import socket
import subprocess
import sys
import warnings

import numpy
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra: pip install torch)")
ours = pytest.importorskip("cnn_gpu.torch")

from checks import rel_error  # noqa: E402


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


def test_cross_entropy_of_one_unbatched_row_and_of_infinite_logits_matches_torch(device):
    logits = torch.randn(10, device=device, requires_grad=True)
    label = torch.tensor(3, device=device)
    loss, ref = ours.cross_entropy(logits, label), torch.nn.functional.cross_entropy(logits, label)
    assert loss.shape == ref.shape == ()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(ref, logits)[0])
    inf = float("inf")
    logits = torch.tensor([[inf, 0.0, 1.0], [2.0, -inf, 0.0]], device=device)
    labels = torch.tensor([0, 2], device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(ours.cross_entropy(logits, labels),
                                   torch.nn.functional.cross_entropy(logits, labels), equal_nan=True)


@pytest.mark.parametrize("labels", [lambda d: torch.tensor([0.0, 2.0], dtype=torch.float64, device=d),
                                    lambda d: torch.full((2, 3), 1 / 3, device=d)], ids=["float64-indices", "probabilities"])
def test_cross_entropy_refuses_float_labels_naming_them(device, labels):
    with pytest.raises(TypeError, match=r"labels must be integer class indices .* \(class probabilities are not"):
        ours.cross_entropy(torch.randn(2, 3, device=device), labels(device))


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


def test_training_is_reproducible_bit_for_bit():
    """Same seed, same result: three SGD steps of the drop-in LeNet (products on torch's threads, loops on numba's),
    run twice in one process, where the arrays land at other addresses the second time."""
    from cnn_gpu.bench.cases.torch_dropins import lenet_steps

    def train():
        torch.manual_seed(5)  # the weights
        step = lenet_steps(torch, "cpu", 32, seed=5)[0]
        return [tensor.clone() for _ in range(3) for tensor in step()]

    first = train()
    keep_addresses_apart = [numpy.empty(n, numpy.float32) for n in (3, 1000, 77, 100000)]
    second = train()
    assert keep_addresses_apart and all(torch.equal(a, b) for a, b in zip(first, second))


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


# ---- every input shape and option torch.nn takes, against torch.nn on the same weights --------------
def _compare_shapes(theirs, mine, x, device):
    """_compare_module for any output (also empty ones: their gradients must be zeros, as torch's)."""
    theirs, mine = theirs.to(device), mine.to(device)
    mine.load_state_dict(theirs.state_dict())
    x1 = x.to(device).requires_grad_(True)
    x2 = x.to(device).requires_grad_(True)
    y1, y2 = theirs(x1), mine(x2)
    assert y2.shape == y1.shape and y2.dtype == y1.dtype
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    dy = torch.randn_like(y1)
    y1.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-6)
    for (name, p1), (_, p2) in zip(theirs.named_parameters(), mine.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 7), (2, 1, 3, 7), (0, 7), (2, 0, 7)])
def test_linear_takes_any_leading_dimensions(device, shape):
    torch.manual_seed(0)
    _compare_shapes(torch.nn.Linear(7, 4), ours.Linear(7, 4), torch.randn(shape), device)


@pytest.mark.parametrize("shape", [(0,), (4, 0), (2, 3, 0)])
def test_linear_with_no_input_features_matches_torch(device, shape):
    """torch.nn.Linear(0, n) gives the bias at each leading position (and warns while initialising its empty weight)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, mine = torch.nn.Linear(0, 4), ours.Linear(0, 4)
    _compare_shapes(theirs, mine, torch.randn(shape), device)


@pytest.mark.parametrize("pair", [
    (lambda nn: nn.Conv2d(3, 4, 3, padding=1)),
    (lambda nn: nn.Conv2d(3, 4, (2, 3), stride=(2, 1))),
    (lambda nn: nn.MaxPool2d(2)),
    (lambda nn: nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
    (lambda nn: nn.AvgPool2d(3, 2, 1)),
], ids=["conv", "conv-strided", "maxpool", "maxpool-ceil", "avgpool"])
@pytest.mark.parametrize("shape", [(3, 9, 8), (0, 3, 9, 8)], ids=["unbatched", "empty-batch"])
def test_unbatched_and_empty_batch_inputs(device, pair, shape):
    torch.manual_seed(0)
    _compare_shapes(pair(torch.nn), pair(ours), torch.randn(shape), device)


@pytest.mark.parametrize("kernel", [(4, 4), (2, 3)])
def test_conv2d_same_padding_with_even_kernels(device, kernel):
    """PyTorch's 'same' puts the odd extra row/column of padding at the bottom/right, as ours."""
    torch.manual_seed(0)
    _compare_shapes(torch.nn.Conv2d(2, 3, kernel, padding="same"), ours.Conv2d(2, 3, kernel, padding="same"),
                    torch.randn(2, 2, 7, 6), device)


@pytest.mark.parametrize("kernel,stride,padding,size", [
    (2, 2, 0, (7, 7)), (3, 2, 1, (8, 9)), (3, 3, 1, (5, 6)), (3, 2, 0, (10, 10)), (4, 3, 2, (6, 6)),
    (2, 2, 1, (1, 1)), ((3, 2), (2, 1), (1, 0), (9, 4)),
])
@pytest.mark.parametrize("return_indices", [False, True])
def test_max_pool_ceil_mode_matches_torch(device, kernel, stride, padding, size, return_indices):
    torch.manual_seed(0)
    theirs = torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=True, return_indices=return_indices)
    mine = ours.MaxPool2d(kernel, stride, padding, ceil_mode=True, return_indices=return_indices)
    x = torch.randn(2, 3, *size, device=device)
    if return_indices:
        (y1, i1), (y2, i2) = theirs(x), mine(x)
        assert torch.equal(i2, i1) and torch.equal(y2, y1)
    else:
        _compare_shapes(theirs, mine, x, device)


@pytest.mark.parametrize("count_include_pad,divisor_override", [(False, None), (True, 5), (False, 2)])
def test_avg_pool_options_match_torch(device, count_include_pad, divisor_override):
    torch.manual_seed(0)
    args = dict(kernel_size=3, stride=2, padding=1, count_include_pad=count_include_pad, divisor_override=divisor_override)
    _compare_shapes(torch.nn.AvgPool2d(**args), ours.AvgPool2d(**args), torch.randn(2, 3, 9, 8), device)


@pytest.mark.parametrize("slope", [-0.3, 0.0, 0.2, 1.5])
def test_leaky_relu_any_slope_matches_torch(device, slope):
    torch.manual_seed(0)
    _compare_shapes(torch.nn.LeakyReLU(slope), ours.LeakyReLU(slope), torch.randn(4, 3, 5), device)


@pytest.mark.parametrize("make", [
    lambda nn: nn.LeakyReLU(-0.3), lambda nn: nn.LeakyReLU(0.2), lambda nn: nn.ReLU(), lambda nn: nn.Sigmoid(),
    lambda nn: nn.Tanh(), lambda nn: nn.MaxPool2d(2), lambda nn: nn.AvgPool2d(2), lambda nn: nn.Conv2d(1, 2, 2),
], ids=["leaky-negative", "leaky", "relu", "sigmoid", "tanh", "maxpool", "avgpool", "conv"])
def test_infinities_and_nan_give_torchs_values_without_warnings(device, make):
    """Forward values with inf, -inf and NaN inputs, and gradients with infinite ones, equal torch.nn's; no warning
    (torch's CPU ops give none; NumPy warns of each invalid or overflowing operation unless told not to)."""
    torch.manual_seed(0)
    theirs, mine = make(torch.nn).to(device), make(ours).to(device)
    mine.load_state_dict(theirs.state_dict())
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[inf, -inf, 1.0, -2.0], [0.5, -inf, nan, 3.0], [-1.0, 2.0, -0.5, inf], [4.0, nan, 0.0, -3.0]],
                     device=device).reshape(1, 1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(mine(x), theirs(x), equal_nan=True)
        no_nan = x.nan_to_num(nan=0.5, posinf=inf, neginf=-inf)
        x1, x2 = no_nan.clone().requires_grad_(True), no_nan.clone().requires_grad_(True)
        y1, y2 = theirs(x1), mine(x2)
        torch.testing.assert_close(y2, y1, equal_nan=True)
        y1.backward(torch.ones_like(y1))
        y2.backward(torch.ones_like(y2))
    torch.testing.assert_close(x2.grad, x1.grad, equal_nan=True)


def test_dropout_p_one_and_zero_match_torch(device):
    x = torch.tensor([[1.0, float("nan"), -2.0, 0.5]], device=device)
    for p in (0.0, 1.0):
        theirs, mine = torch.nn.Dropout(p), ours.Dropout(p)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y1, y2 = theirs(x1), mine(x2)
        torch.testing.assert_close(y2, y1, equal_nan=True)
        y1.sum().backward()
        y2.sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad)


def _batch_norm_pair(device, **options):
    torch.manual_seed(0)
    theirs, mine = torch.nn.BatchNorm2d(3, **options).to(device), ours.BatchNorm2d(3, **options).to(device)
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-0.5, 0.5)
    if theirs.track_running_stats:
        with torch.no_grad():
            theirs.running_mean.uniform_(-1, 1)
            theirs.running_var.uniform_(0.5, 2)
    mine.load_state_dict(theirs.state_dict())
    return theirs, mine


@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
                                     {"affine": False, "track_running_stats": False, "momentum": None}],
                         ids=["default", "cumulative", "no-affine", "no-running-stats", "bare"])
def test_batch_norm_options_match_torch_over_steps(device, options):
    """Train and eval alternated over a few steps: outputs, gradients w.r.t. the input and the affine
    parameters, running statistics and the step count as torch.nn.BatchNorm2d's."""
    theirs, mine = _batch_norm_pair(device, **options)
    for step in range(3):
        x = torch.randn(4, 3, 5, 6) * 2 + step
        for training in (True, False):
            theirs.train(training)
            mine.train(training)
            _compare_shapes(theirs, mine, x, device)
            theirs.zero_grad()
            mine.zero_grad()
        for (name, b1), (_, b2) in zip(theirs.named_buffers(), mine.named_buffers()):
            torch.testing.assert_close(b2, b1, rtol=1e-5, atol=1e-6, msg=name)


def test_batch_norm_eval_is_differentiable(device):
    """In eval mode the gradient reaches the input, weight and bias (the running statistics are constants),
    in float64 against finite differences too."""
    theirs, mine = _batch_norm_pair(device)
    theirs.eval()
    mine.eval()
    _compare_shapes(theirs, mine, torch.randn(3, 3, 4, 5), device)
    if device.type == "cpu":
        mine.double()
        x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, w, b: ours.batch_norm(a, mine.running_mean, mine.running_var, w, b),
                                        (x, mine.weight, mine.bias))


def test_batch_norm_eval_with_an_empty_batch(device):
    theirs, mine = _batch_norm_pair(device)
    theirs.eval()
    mine.eval()
    _compare_shapes(theirs, mine, torch.randn(0, 3, 4, 5), device)


@pytest.mark.parametrize("build,argument", [
    (lambda: ours.MaxPool2d(3, dilation=2), "dilation"),
    (lambda: ours.AvgPool2d(3, ceil_mode=True), "ceil_mode"),
])
def test_refused_options_name_the_argument_and_the_torch_layer(build, argument):
    with pytest.raises(ValueError, match=rf"{argument}=.*torch\.nn\.\w+ can take its place"):
        build()


def test_products_inside_our_cpu_ops_run_on_torchs_threads_and_numpys_blas_is_left_alone(monkeypatch):
    """Inside a drop-in op every product of the NumPy path goes through torch.matmul (torch's threads, torch's thread
    count): a conv and a linear layer make three each, forward and backward; NumPy's BLAS keeps the thread count the
    user gave it, inside the op and after. Outside an op the NumPy path's products are NumPy's."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import cnn_gpu.functional as F
    from cnn_gpu.torch import threads

    def blas_threads():  # NumPy's (torch's MKL, where it has one, is torch's to set)
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]

    products, blas_inside = [], []
    torch_matmul = threads.torch_matmul

    def counted(a, b):
        products.append((a.shape, b.shape))
        blas_inside.append(blas_threads())
        return torch_matmul(a, b)

    monkeypatch.setattr(threads, "torch_matmul", counted)
    before = blas_threads()
    model = torch.nn.Sequential(ours.Conv2d(2, 3, 3), torch.nn.Flatten(), ours.Linear(3 * 4 * 4, 5))
    model(torch.randn(4, 2, 6, 6, requires_grad=True)).sum().backward()
    assert len(products) == 6 and all(seen == before for seen in blas_inside)
    assert blas_threads() == before
    products.clear()
    F.linear(numpy.ones((2, 3), numpy.float32), numpy.ones((4, 3), numpy.float32))
    assert products == []


def test_products_on_torchs_threads_start_aligned_and_equal_numpys(rng):
    """torch_matmul copies an operand that does not start on a 64-byte boundary (a BLAS's sums may depend on where it
    starts, as MKL's do when it splits a long sum over threads): the result is the aligned operands', whatever the
    offset, and equals NumPy's product within float32 rounding."""
    from cnn_gpu.torch.threads import torch_matmul

    a = rng.standard_normal((6, 50176)).astype(numpy.float32)  # the MNIST-sized filter gradient of LeNet's conv1
    b = rng.standard_normal((25, 50176)).astype(numpy.float32)
    expected = torch_matmul(a, b.T)
    buffer = numpy.empty(b.size + 16, numpy.float32)
    for offset in range(16):
        shifted = buffer[offset:offset + b.size].reshape(b.shape)
        shifted[...] = b
        assert numpy.array_equal(torch_matmul(a, shifted.T), expected)
    numpy.testing.assert_allclose(expected, a.astype(numpy.float64) @ b.T.astype(numpy.float64), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("torch_threads", [None, 1], ids=["torch's default", "torch.set_num_threads(1)"])
def test_numpy_path_loops_run_with_torchs_thread_count_inside_our_cpu_ops(monkeypatch, torch_threads):
    """The NumPy path's numba loops take torch's intra-op thread count (at most numba's) inside an op where numba's
    threading layer is OpenMP (torch's runtime), one thread outside (cnn_gpu.ops.parallel)."""
    import numba

    from checks import threads_of_a_loop
    from cnn_gpu.ops import parallel
    from cnn_gpu.torch import threads

    if torch_threads is not None:
        monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    parallel.numba_threads_started()  # numba's threading layer is known once started
    inside = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS) if numba.threading_layer() == "omp" else 1
    with threads.cpu_threads_for_numpy():
        assert threads_of_a_loop() == {inside}
    assert threads_of_a_loop() == {1}


_THREADS_AFTER_FIRST_DROPOUT = """
import torch
torch.set_num_threads(1)
import cnn_gpu.torch as ours
ours.Dropout(0.5)(torch.randn(8, 100))
import cnn_gpu.functional as F, numpy
F.dropout(numpy.ones((8, 100), numpy.float32), 0.5, 1)
print(torch.get_num_threads())
"""


def test_the_first_dropout_keeps_the_torch_thread_count_the_user_set():
    """numba's OpenMP threading layer, started by the first NumPy dropout, sets the OpenMP thread count to its own;
    where that is PyTorch's runtime, torch.set_num_threads(1) was undone. A fresh process: the layer starts once."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("with one core numba's count is torch's default anyway")
    result = subprocess.run([sys.executable, "-c", _THREADS_AFTER_FIRST_DROPOUT], capture_output=True, text=True,
                            env={**os.environ, "CNN_GPU_BACKEND": "numpy"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "1"
