"""cnn_gpu: hand-written CUDA kernels for convolutional neural networks, with a NumPy reference.

    import cnn_gpu
    from cnn_gpu import functional as F
    y = F.conv2d(cnn_gpu.asarray(x), cnn_gpu.asarray(w), padding="same")

It also serves where Keras 3 programs write ``import keras`` / ``from keras import layers``:

    import cnn_gpu as keras
    from cnn_gpu import layers
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), layers.Conv2D(32, 3, activation="relu"), ...])

The Keras names are the library's own modules and classes (keras.layers is cnn_gpu.layers, keras.Sequential
is cnn_gpu.models.Sequential), not copies. The package imports only the backend switch itself; each Keras
name is imported when it is first used, so `import cnn_gpu` stays light and the layers of the package
(tests/test_layering.py) import one way.
"""
import importlib

from cnn_gpu.backend import asarray, cuda_status, get_backend, set_backend, to_numpy

__version__ = "0.1.0"
KERAS_MODULES = ("activations", "callbacks", "datasets", "initializers", "layers", "losses", "metrics", "models",
                 "optimizers", "utils")
KERAS_OBJECTS = {"Input": "cnn_gpu.layers", "InputLayer": "cnn_gpu.layers", "Sequential": "cnn_gpu.models",
                 "load_model": "cnn_gpu.models"}
__all__ = ["asarray", "cuda_status", "get_backend", "set_backend", "to_numpy", "__version__", *KERAS_MODULES,
           *KERAS_OBJECTS]


def __getattr__(name):
    if name in KERAS_MODULES:
        return importlib.import_module(f"cnn_gpu.{name}")  # importing sets the attribute: asked once
    if name in KERAS_OBJECTS:
        value = getattr(importlib.import_module(KERAS_OBJECTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnn_gpu' has no attribute {name!r}; as keras it offers "
                         f"{', '.join([*KERAS_OBJECTS, *KERAS_MODULES])} (and the submodules functional, backend, torch)")


def __dir__():
    return sorted({*globals(), *__all__})
