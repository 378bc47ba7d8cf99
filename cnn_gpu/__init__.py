"""cnn_gpu: hand-written CUDA kernels for convolutional neural networks, with a NumPy reference.

    import cnn_gpu
    from cnn_gpu import functional as F
    y = F.conv2d(cnn_gpu.asarray(x), cnn_gpu.asarray(w), padding="same")

It also serves where Keras 3 programs write ``import keras`` / ``from keras import layers``:

    import cnn_gpu as keras
    from cnn_gpu import layers
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), layers.Conv2D(32, 3, activation="relu"), ...])

The Keras names below are the library's own modules and classes (keras.layers is cnn_gpu.layers,
keras.Sequential is cnn_gpu.models.Sequential), not copies.
"""
from cnn_gpu.backend import asarray, cuda_status, get_backend, set_backend, to_numpy
from cnn_gpu import (activations, callbacks, datasets, initializers, layers, losses, metrics, models,  # noqa: E402
                     optimizers, utils)
from cnn_gpu.layers import Input, InputLayer  # noqa: E402
from cnn_gpu.models import Sequential, load_model  # noqa: E402

__version__ = "0.1.0"
__all__ = ["asarray", "cuda_status", "get_backend", "set_backend", "to_numpy", "__version__",
           "Input", "InputLayer", "Sequential", "activations", "callbacks", "datasets", "initializers", "layers", "load_model",
           "losses", "metrics", "models", "optimizers", "utils"]
KERAS_NAMES = __all__[6:]


def __getattr__(name):
    raise AttributeError(f"module 'cnn_gpu' has no attribute {name!r}; as keras it offers {', '.join(KERAS_NAMES)} "
                         f"(and the submodules functional, backend, torch)")
