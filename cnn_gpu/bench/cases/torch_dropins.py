"""Benchmark case of the PyTorch drop-ins (cnn_gpu.torch): one SGD training step of LeNet-5 built from the drop-ins,
against the same step of LeNet built from torch.nn with the same weights, in the same process. On the CPU it measures
what a user of the drop-ins pays for our NumPy path beside PyTorch's own (thread pools included)."""
from __future__ import annotations

import copy

from cnn_gpu.bench.cases.base import Bound, Case, _cudnn_heuristics, _float64_copy
from cnn_gpu.bench.cases.kernels import conv_flops

LENET_FORWARD_FLOPS = (conv_flops(1, 1, 6, 5, 5, 28, 28) + conv_flops(1, 6, 16, 5, 5, 10, 10)
                       + 2.0 * (400 * 120 + 120 * 84 + 84 * 10))
LENET_BATCH = 64


def _torch_dropin_cases(quick):
    yield Case("dropins", "train step", f"LeNet-5 28²×1 N{LENET_BATCH}", _lenet_step(LENET_BATCH),
               3 * LENET_BATCH * LENET_FORWARD_FLOPS, tol=1e-4, rotate=False)


def lenet(torch, nn):
    """LeNet-5 for 28×28 images from the layers of `nn` (torch.nn or cnn_gpu.torch): logits of 10 classes."""
    return torch.nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        torch.nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def lenet_steps(torch, device: str, N: int, seed: int = 0):
    """(drop-in step, torch.nn step, float64 truth) over one batch: SGD training steps of LeNet built from
    cnn_gpu.torch and from torch.nn, holding the same weights. Each call returns the loss and the first and last
    kernels' gradients (taken before the update); the truth is the torch.nn network's first step in float64."""
    import cnn_gpu.torch as dropins

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, 28, 28, generator=generator).to(device)
    labels = torch.randint(0, 10, (N,), generator=generator).to(device)
    theirs = lenet(torch, torch.nn).to(device)
    mine = lenet(torch, dropins).to(device)
    mine.load_state_dict(theirs.state_dict())
    theirs64 = copy.deepcopy(theirs).double()

    def step_of(model, loss_fn):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        kernels = [m.weight for m in model if hasattr(m, "weight")]

        def step(x=x):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), labels)
            loss.backward()
            outputs = loss.detach(), kernels[0].grad.clone(), kernels[-1].grad.clone()
            optimizer.step()
            return outputs
        return step

    truth = step_of(theirs64, torch.nn.functional.cross_entropy)

    def in_float64():
        with _cudnn_heuristics(torch):
            return truth(_float64_copy(x))
    return step_of(mine, dropins.cross_entropy), step_of(theirs, torch.nn.functional.cross_entropy), in_float64


def _lenet_step(N):
    def prepare(side):
        try:
            import torch
        except ImportError as exc:
            raise ImportError(f"the drop-ins row needs PyTorch: pip install torch ({exc})") from exc
        ours, reference, truth = lenet_steps(torch, "cuda" if side.device == "cuda" else "cpu", N)
        bound = Bound(ours, bytes=0.0)
        if side.torch is not None:
            bound.refs["torch.nn step" + (" (CPU)" if side.device != "cuda" else "")] = reference
            bound.truth = ("torch.nn step in float64: loss, first and last kernels' gradients", truth)
        return bound
    return prepare
