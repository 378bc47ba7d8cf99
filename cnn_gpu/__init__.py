"""cnn_gpu: hand-written CUDA kernels for convolutional neural networks, with a NumPy reference.

    import cnn_gpu
    from cnn_gpu import functional as F
    y = F.conv2d(cnn_gpu.asarray(x), cnn_gpu.asarray(w), padding="same")
"""
from cnn_gpu.backend import asarray, cuda_status, get_backend, set_backend, to_numpy

__version__ = "0.1.0"
__all__ = ["asarray", "cuda_status", "get_backend", "set_backend", "to_numpy", "__version__"]
