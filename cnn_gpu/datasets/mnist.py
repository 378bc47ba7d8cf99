"""keras.datasets.mnist.load_data(): MNIST as Keras returns it, from files the user already has.

    (x_train, y_train), (x_test, y_test) = cnn_gpu.datasets.mnist.load_data()

x: uint8 images (N, 28, 28), 0-255; y: uint8 digits (N,). Nothing is downloaded. ``path`` is
- a file name (default 'mnist.npz', Keras's cache file with arrays x_train, y_train, x_test, y_test),
  looked for where Keras caches it: ``$KERAS_HOME/datasets`` when KERAS_HOME is set, else
  ``~/.keras/datasets`` (and ``/tmp/.keras/datasets``, Keras's fallback when the home folder is not
  writable); an absolute file path is read as it is;
- or a folder holding the four MNIST IDX files (raw or .gz), read by cnn_gpu.datasets.read_mnist_idx.
A missing file is one FileNotFoundError that says where to put it.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy

from cnn_gpu.datasets import MNIST_FILES, read_mnist_idx

KERAS_CACHE_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def keras_datasets_folders() -> list[Path]:
    """Where Keras keeps downloaded data sets, in the order it uses them."""
    if os.environ.get("KERAS_HOME"):
        return [Path(os.environ["KERAS_HOME"]).expanduser() / "datasets"]
    return [Path("~/.keras/datasets").expanduser(), Path("/tmp/.keras/datasets")]


def load_data(path="mnist.npz"):
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays; see the module docstring for ``path``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file name, a file path or a folder, got {type(path).__name__}")
    given = Path(path).expanduser()
    if given.is_dir():
        return read_mnist_idx(given)
    candidates = [given] if given.is_absolute() or given.parent != Path(".") else []
    candidates += [folder / given for folder in keras_datasets_folders()] if not given.is_absolute() else []
    for candidate in candidates:
        if candidate.is_file():
            return _read_keras_cache(candidate)
    folders = " or ".join(str(c.parent) for c in candidates)
    raise FileNotFoundError(
        f"MNIST not found: no {given.name} in {folders}. cnn_gpu never downloads: put Keras's mnist.npz "
        f"(https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz) at {candidates[-1] if candidates else given}, "
        f"or pass path= a folder holding {', '.join(MNIST_FILES.values())} (raw or .gz)")


def _read_keras_cache(file: Path):
    try:
        with numpy.load(file, allow_pickle=False) as stored:
            missing = [name for name in KERAS_CACHE_ARRAYS if name not in stored.files]
            if missing:
                raise ValueError(f"{file} is not Keras's mnist.npz: it lacks {', '.join(missing)} "
                                 f"(it holds {', '.join(stored.files) or 'nothing'})")
            arrays = {name: stored[name] for name in KERAS_CACHE_ARRAYS}
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{file} is not Keras's mnist.npz: not a readable .npz archive ({exc})") from None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{file}: x_{part} must be (N, rows, cols) and y_{part} (N,), got {x.shape} and {y.shape}")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
