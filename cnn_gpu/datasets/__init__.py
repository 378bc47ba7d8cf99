"""Handwritten-digit data for the examples and `cnn-gpu train`, as the layers want it.

Both loaders return ``((x_train, y_train), (x_test, y_test))`` with images float32 in [0, 1],
channels-last ``(N, H, W, 1)`` like Keras, and int64 class labels 0-9. Nothing is downloaded:

- ``load_digits``: scikit-learn's bundled 8×8 digits (1797 images), split train/test, stratified.
  At ``size=28`` each digit is resized bilinearly to 20×20 and centred in a 28×28 frame with a
  4-pixel border, the layout of MNIST (20×20 digit in 28×28), so the MNIST network applies.
- ``load_mnist(path)``: the real MNIST IDX files from a folder the user has, raw or gzipped; the
  headers are checked strictly and a missing or malformed file is named in the error.

``cnn_gpu.datasets.mnist.load_data()`` and ``fashion_mnist.load_data()`` are Keras's loaders (uint8 images
(N, 28, 28), uint8 labels), reading the files Keras caches (mnist.npz; fashion-mnist's IDX files) or the
IDX files of a folder; see those modules.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST uses
_MNIST_BORDER = 4  # MNIST centres a 20×20 digit in a 28×28 frame


def load_digits(size: int = 28, test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8×8 digits as ((x_train, y_train), (x_test, y_test)); see the module docstring.

    size: 8 keeps the original images; size >= 16 resizes the digit to (size - 8)² and centres it
    with a 4-pixel border (28 gives MNIST's layout). The split is stratified by
    class and reproducible from ``seed``.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    size = int(size)
    if size != 8 and size < 8 + 2 * _MNIST_BORDER:  # resizing only ever enlarges the 8×8 digit
        raise ValueError(f"size must be 8 or at least {2 * _MNIST_BORDER + 8}, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(numpy.float32)  # pixel values are 0..16
    if size != 8:
        images = centre_in_frame(resize_bilinear(images, size - 2 * _MNIST_BORDER), size)
    x = images[..., numpy.newaxis]
    y = digits.target.astype(numpy.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def resize_bilinear(images, size: int):
    """Resize a stack of square images (N, h, h) to (N, size, size), bilinear, pixel centres aligned.

    Separable, so it is two matrix products per image: out = A @ image @ A.T with A (size, h)
    holding each output pixel's interpolation weights over the input row.
    """
    h = images.shape[-1]
    weights = _bilinear_weights(h, size).astype(images.dtype)
    return numpy.einsum("ij,njk,lk->nil", weights, images, weights, optimize=True)


def _bilinear_weights(src: int, dst: int):
    """(dst, src) matrix: row i interpolates output pixel i from its two nearest input pixels."""
    centres = (numpy.arange(dst) + 0.5) * (src / dst) - 0.5  # output pixel centres in input coordinates
    centres = numpy.clip(centres, 0, src - 1)
    left = numpy.minimum(numpy.floor(centres).astype(numpy.int64), src - 2)
    frac = centres - left
    weights = numpy.zeros((dst, src))
    rows = numpy.arange(dst)
    weights[rows, left] = 1.0 - frac
    weights[rows, left + 1] = frac
    return weights


def centre_in_frame(images, size: int):
    """Pad (N, h, h) images with zeros to (N, size, size), the image in the middle."""
    before = (size - images.shape[-1]) // 2
    after = size - images.shape[-1] - before
    return numpy.pad(images, ((0, 0), (before, after), (before, after)))


def load_mnist(path):
    """MNIST from the four IDX files in folder ``path`` (each raw or .gz), as ((x, y), (x, y)).

    Images (N, 28, 28, 1) float32 in [0, 1], labels int64. FileNotFoundError names a missing file;
    ValueError names a file whose header, size or contents are not MNIST's.
    """
    splits = []
    for images, labels in read_mnist_idx(path):
        splits.append(((images.astype(numpy.float32) / 255.0)[..., numpy.newaxis], labels.astype(numpy.int64)))
    return tuple(splits)


def read_mnist_idx(path):
    """The four MNIST IDX files of folder ``path`` as they are stored: ((x, y), (x, y)), images uint8
    (N, rows, cols), labels uint8 digits; the errors of load_mnist."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {folder} (it should hold {', '.join(MNIST_FILES.values())}, raw or .gz)")
    arrays = {key: read_idx(_find_idx_file(folder, name)) for key, name in MNIST_FILES.items()}
    splits = []
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        image_file, label_file = MNIST_FILES[f"{part}_images"], MNIST_FILES[f"{part}_labels"]
        if images.ndim != 3:
            raise ValueError(f"{image_file}: expected 3 dimensions (count, rows, cols), got shape {images.shape}")
        if labels.ndim != 1:
            raise ValueError(f"{label_file}: expected 1 dimension (count), got shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"{label_file}: labels must be digits 0-9, found {int(labels.max())}")
        splits.append((images, labels))
    return tuple(splits)


def _find_idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file not found: {folder / name} (or {name}.gz)")


def read_idx(path) -> numpy.ndarray:
    """An unsigned-byte IDX file (raw, or gzip when the name ends in .gz) as a uint8 array.

    Header: two zero bytes, the type code 0x08, the number of dimensions, then each dimension as a
    big-endian uint32; the data must be exactly the product of the dimensions.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a valid gzip file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    if data[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX type code 0x{data[2]:02x} is not 0x08 (unsigned byte), which MNIST uses")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_size:
        raise ValueError(f"{path}: IDX header is truncated or declares {ndim} dimensions")
    dims = tuple(int(d) for d in numpy.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(numpy.prod(dims, dtype=numpy.int64))
    if len(data) - header_size != expected:
        raise ValueError(f"{path}: header declares shape {dims} ({expected} bytes of data), "
                         f"but the file holds {len(data) - header_size}")
    return numpy.frombuffer(data, dtype=numpy.uint8, offset=header_size).reshape(dims)

from cnn_gpu.datasets import fashion_mnist, mnist  # noqa: E402  (keras.datasets.*; they use the readers above)

__all__ = ["MNIST_FILES", "centre_in_frame", "fashion_mnist", "load_digits", "load_mnist", "mnist", "read_idx",
           "read_mnist_idx", "resize_bilinear"]
