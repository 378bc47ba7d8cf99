"""keras.utils: the helpers Keras programs call from there (a namespace; each lives with its idea)."""
from cnn_gpu.losses import to_categorical
from cnn_gpu.models import set_random_seed

__all__ = ["set_random_seed", "to_categorical"]


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.utils has no {name!r}; it has {', '.join(__all__)}")
