"""What `cnn-gpu bench` and benchmarks/test_bench_*.py measure: every benchmark case, in one place.

A Case names an op (what ``--ops`` selects), a variant and a shape, counts its useful FLOPs, and
prepares one set of random inputs on a Side (cnn_gpu.bench.Side: CuPy on the GPU or NumPy on the
CPU, PyTorch beside it when importable). ``prepare`` returns a Bound: closures over that set that
run ours and each reference on the very same arrays (PyTorch sees them through DLPack / from_numpy
views, no copies). The report checks and times Bounds; the pytest-benchmark tests time Bound.ours.

References (FP32; the report turns TF32 off): convolution through cuDNN (torch conv2d and aten's
convolution_backward, which is what autograd calls), GEMM through cuBLAS (cupy.matmul and
torch.matmul / linear), and PyTorch's own pooling, activation, loss, batch-norm, dropout and
optimizer kernels; the training step against a PyTorch eager step of the same network with the
same weights. A reference returns its results in ours' order; None marks an output it does not
compute (not compared).

The check's truth (Bound.truth) is the first PyTorch reference evaluated in float64 on the same
device and inputs (cuDNN / cuBLAS in float64 where the reference is theirs, cuDNN choosing by its
heuristics), once per case. An FP32 reference is no independent truth: its own error may be the
larger one (autotuned cuDNN may pick FFT or Winograd algorithms), so the report measures ours AND
each FP32 reference against the truth. The exceptions: dropout's forward (torch draws another mask;
our NumPy path draws the same one bit for bit), the optimizers (torch.optim's step repeated on
float64 copies) and the training step (its PyTorch twin in float64; see networks.py).

Shapes (full suite): the example networks' layers (cnn_gpu.networks: the MNIST network at batch 32, 128 and
1024; the 100×100 network at 32 and 128: its first conv's output is 20 GB at batch 1024), the 3×3 layers of ResNet-50 / VGG-16 at
batch 32 and 128, a 1×1 256→64 at 56², MobileNetV2's, ConvNeXt's and a 31×31 depthwise layer, ResNeXt's grouped
and DeepLab's dilated 3×3, square GEMMs 1024..8192 and the dense layers' skinny GEMMs.
The quick suite (CI, no GPU) takes small shapes of the same layers.

Modules: base.py (Case, Bound, the PyTorch reference helpers), kernels.py (convolution, GEMM, dense layers),
grouped.py (grouped, depthwise and dilated convolution),
layers.py (pooling, activations, softmax and losses, batch-norm, dropout, optimizers), networks.py (the
example networks' training steps), torch_dropins.py (LeNet's training step with cnn_gpu.torch against torch.nn).
"""
from __future__ import annotations

from cnn_gpu.bench.cases.base import Bound, Case
from cnn_gpu.bench.cases.grouped import _grouped_cases
from cnn_gpu.bench.cases.kernels import _conv_cases, _linear_cases, _matmul_cases
from cnn_gpu.bench.cases.layers import (_activation_cases, _batchnorm_cases, _dropout_cases, _optimizer_cases,
                                        _pool_cases, _softmax_cases)
from cnn_gpu.bench.cases.networks import _train_step_cases
from cnn_gpu.bench.cases.torch_dropins import _torch_dropin_cases

__all__ = ["Bound", "Case", "cases", "op_names", "representative_cases"]


OPS = ("conv2d", "conv2d_grouped", "matmul", "linear", "train_step", "dropins", "maxpool", "avgpool", "sumpool",
       "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "softmax_xent", "sigmoid_bce", "batchnorm",
       "dropout", "sgd", "adam")


def op_names() -> tuple:
    """The op names that ``--ops`` accepts, in report order."""
    return OPS


def cases(quick: bool = False) -> list:
    """Every case of the full suite (GPU-sized) or of the quick one (CPU-sized), in report order."""
    families = (_conv_cases, _grouped_cases, _matmul_cases, _linear_cases, _train_step_cases, _torch_dropin_cases,
                _pool_cases, _activation_cases, _softmax_cases, _batchnorm_cases, _dropout_cases, _optimizer_cases)
    found = [case for family in families for case in family(quick)]
    order = {op: i for i, op in enumerate(OPS)}
    return sorted(found, key=lambda case: order[case.op])  # stable: a family's own order is kept


def representative_cases(quick: bool = False) -> list:
    """The first case of each (op, variant): what benchmarks/test_bench_*.py time."""
    seen, chosen = set(), []
    for case in cases(quick):
        if (case.op, case.variant) not in seen:
            seen.add((case.op, case.variant))
            chosen.append(case)
    return chosen
