"""cnn_gpu.datasets: the bundled digits (shapes, range, split, resize) and the MNIST IDX reader.

MNIST itself is never downloaded: the IDX tests write tiny synthetic files, raw and gzipped.
"""
import gzip

import numpy
import pytest

from cnn_gpu import datasets


# ---- bundled digits ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 28])
def test_digits_shapes_dtypes_range(size):
    (x_train, y_train), (x_test, y_test) = datasets.load_digits(size=size)
    assert x_train.shape == (1437, size, size, 1) and x_test.shape == (360, size, size, 1)
    assert x_train.dtype == numpy.float32 and y_train.dtype == numpy.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() > 0.9
    assert set(numpy.unique(y_test)) == set(range(10))


def test_digits_split_is_stratified_disjoint_and_seeded():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits(size=8, seed=3)
    counts = numpy.bincount(y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37, counts  # 20 % of each class's ~180 images
    train_rows = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_rows for row in x_test)
    (x_again, _), _ = datasets.load_digits(size=8, seed=3)
    (x_other, _), _ = datasets.load_digits(size=8, seed=4)
    assert numpy.array_equal(x_train, x_again) and not numpy.array_equal(x_train, x_other)


def test_digits_at_28_are_the_8x8_digits_enlarged_and_centred():
    (small, _), _ = datasets.load_digits(size=8)
    (large, _), _ = datasets.load_digits(size=28)
    border = numpy.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert not large[:, border].any(), "the 4-pixel MNIST border must stay empty"
    # Bilinear enlargement with aligned pixel centres keeps each digit's mean intensity (up to edge effects).
    assert numpy.allclose(large[:, 4:24, 4:24].mean(axis=(1, 2)), small.mean(axis=(1, 2)), atol=0.05)


def test_resize_bilinear_matches_naive_loop(rng):
    images = rng.random((3, 5, 5))
    out = datasets.resize_bilinear(images, 11)
    scale = 5 / 11
    expected = numpy.empty((3, 11, 11))
    for i in range(11):
        for j in range(11):
            y = min(max((i + 0.5) * scale - 0.5, 0), 4)
            x = min(max((j + 0.5) * scale - 0.5, 0), 4)
            y0, x0 = min(int(y), 3), min(int(x), 3)
            fy, fx = y - y0, x - x0
            expected[:, i, j] = ((1 - fy) * (1 - fx) * images[:, y0, x0] + (1 - fy) * fx * images[:, y0, x0 + 1]
                                 + fy * (1 - fx) * images[:, y0 + 1, x0] + fy * fx * images[:, y0 + 1, x0 + 1])
    assert numpy.allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, name", [({"size": 12}, "size"), ({"test_fraction": 1.0}, "test_fraction")])
def test_digits_bad_arguments_name_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        datasets.load_digits(**kwargs)


# ---- MNIST IDX files -----------------------------------------------------------------------------
def _idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + numpy.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(numpy.uint8).tobytes()


def _write_mnist(folder, rng, n_train=5, n_test=3, gzipped=False):
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)), "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)), "test_labels": rng.integers(0, 10, n_test),
    }
    for key, array in arrays.items():
        name = datasets.MNIST_FILES[key]
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (folder / name).write_bytes(_idx_bytes(array))
    return arrays


@pytest.mark.parametrize("gzipped", [False, True])
def test_mnist_reads_raw_and_gzipped_idx(tmp_path, rng, gzipped):
    arrays = _write_mnist(tmp_path, rng, gzipped=gzipped)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(tmp_path)
    assert x_train.shape == (5, 28, 28, 1) and x_test.shape == (3, 28, 28, 1)
    assert x_train.dtype == numpy.float32 and y_train.dtype == numpy.int64
    assert numpy.array_equal(x_train[..., 0], (arrays["train_images"] / 255.0).astype(numpy.float32))
    assert numpy.array_equal(y_train, arrays["train_labels"]) and numpy.array_equal(y_test, arrays["test_labels"])


def test_mnist_missing_folder_or_file_is_named(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.load_mnist(tmp_path / "nowhere")
    _write_mnist(tmp_path, rng)
    (tmp_path / datasets.MNIST_FILES["test_labels"]).unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path)


@pytest.mark.parametrize("corrupt, message", [
    (lambda data: b"\x01" + data[1:], "magic"),
    (lambda data: data[:2] + b"\x0d" + data[3:], "type code"),
    (lambda data: data[:-1], "header declares shape"),
    (lambda data: data + b"\x00", "header declares shape"),
    (lambda data: data[:6], "truncated"),
])
def test_mnist_malformed_idx_names_the_file(tmp_path, rng, corrupt, message):
    _write_mnist(tmp_path, rng)
    target = tmp_path / datasets.MNIST_FILES["train_images"]
    target.write_bytes(corrupt(target.read_bytes()))
    with pytest.raises(ValueError, match=message) as info:
        datasets.load_mnist(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_mnist_bad_gzip_and_mismatched_counts(tmp_path, rng):
    _write_mnist(tmp_path, rng)
    name = datasets.MNIST_FILES["train_labels"]
    (tmp_path / name).unlink()
    (tmp_path / f"{name}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        datasets.load_mnist(tmp_path)
    (tmp_path / f"{name}.gz").unlink()
    (tmp_path / name).write_bytes(_idx_bytes(rng.integers(0, 10, 4)))  # 4 labels for 5 images
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        datasets.load_mnist(tmp_path)
