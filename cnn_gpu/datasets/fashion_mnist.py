"""keras.datasets.fashion_mnist.load_data(): Fashion-MNIST as Keras returns it, from the files Keras caches.

    (x_train, y_train), (x_test, y_test) = cnn_gpu.datasets.fashion_mnist.load_data()

x: uint8 images (N, 28, 28); y: uint8 classes 0-9. Keras keeps the four gzipped IDX files (MNIST's
names) in ``fashion-mnist`` under its datasets folder ($KERAS_HOME/datasets, else ~/.keras/datasets);
they are read from there, or from the folder ``path``. Nothing is downloaded: a missing folder is one
FileNotFoundError that says where to put the files.
"""
from __future__ import annotations

from pathlib import Path

from cnn_gpu.datasets import MNIST_FILES, read_mnist_idx
from cnn_gpu.datasets.mnist import keras_datasets_folders

FOLDER = "fashion-mnist"


def load_data(path=None):
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays; ``path``: a folder of the four IDX files."""
    folders = [Path(path).expanduser()] if path is not None else [f / FOLDER for f in keras_datasets_folders()]
    for folder in folders:
        if folder.is_dir():
            return read_mnist_idx(folder)
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {' or '.join(map(str, folders))}. cnn_gpu never downloads: put the four files "
        f"{', '.join(name + '.gz' for name in MNIST_FILES.values())} (Keras's cache, from "
        f"https://storage.googleapis.com/tensorflow/tf-keras-datasets/) in {folders[0]}")
