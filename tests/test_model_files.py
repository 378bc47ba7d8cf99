"""Files the library writes and reads back: every write atomic (a fault mid-write leaves the previous file),
and load_model treating a model file as untrusted (each crafted inconsistency refused, naming the file and the
problem, before anything of a declared size is allocated)."""
import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy
import pytest

from cnn_gpu import files
from cnn_gpu.layers import BatchNormalization, Conv2D, Dense, Flatten
from cnn_gpu.models import Sequential, load_model

ROOT = str(Path(__file__).resolve().parents[1])


def small_model(seed=0):
    model = Sequential([Conv2D(3, 3, input_shape=(6, 6, 1)), BatchNormalization(), Flatten(), Dense(4, activation="softmax")],
                       seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def stored(path):
    """{member: array} of an .npz file, read with NumPy itself (the independent reader)."""
    with numpy.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def write_npz(path, arrays):
    numpy.savez(path, **arrays)
    return path


# ---- atomic writes ---------------------------------------------------------------------------------
def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "file.bin"
    files.write_bytes(target, b"old contents")
    with pytest.raises(RuntimeError, match="mid-write"):
        with files.atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("mid-write")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]  # the temporary file is gone
    files.write_text(target, "new")
    assert target.read_text() == "new"
    assert (target.stat().st_mode & 0o777) == 0o666 & ~files._UMASK  # what open(path, "w") would have made


def test_atomic_write_keeps_a_symlink_and_the_mode(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    files.write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new" and (real.stat().st_mode & 0o777) == 0o640


def test_an_exception_while_saving_leaves_the_previous_model(tmp_path, monkeypatch):
    x = numpy.random.default_rng(0).random((2, 6, 6, 1), dtype=numpy.float32)
    path = small_model(seed=1).save(tmp_path / "model.npz")
    before = load_model(path).predict(x)

    def savez_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 a partial archive")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(numpy, "savez", savez_then_fail)
    with pytest.raises(KeyboardInterrupt):
        small_model(seed=2).save(path)
    monkeypatch.undo()
    assert numpy.array_equal(load_model(path).predict(x), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


_DISK_FULL = """
import resource, signal, sys
import numpy
from cnn_gpu import viz
from cnn_gpu.models import load_model
from cnn_gpu.bench import _write_json
from cnn_gpu.cuda import autotune
folder = sys.argv[1]
model = load_model(folder + "/model.npz")
for layer in model.layers:                      # a different model, the size of the first
    for key, value in layer.params.items():
        value += 1
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # over the limit, write() fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the disk is full after 4 KB
failures = []
for name, write in (("model", lambda: model.save(folder + "/model.npz")),
                    ("picture", lambda: viz.plot_history({"loss": [3, 2, 1]}, folder + "/curves.png")),
                    ("bench results", lambda: _write_json({"rows": ["x" * 10000]}, __import__("pathlib").Path(folder + "/results.json"))),
                    ("autotune cache", lambda: autotune._write_atomically(__import__("pathlib").Path(folder + "/tune.json"),
                                                                         {"choices": "x" * 10000}))):
    try:
        write()
    except OSError as exc:
        failures.append(name)
print(",".join(failures))
"""


def test_a_full_disk_while_saving_leaves_every_previous_file(tmp_path):
    """RLIMIT_FSIZE makes every write past 4 KB fail as on a full disk; the model (hundreds of KB), the
    picture, the bench results and the autotune cache must each fail whole, the previous file intact."""
    model = Sequential([Conv2D(16, 3, input_shape=(12, 12, 1)), Flatten(), Dense(64), Dense(10, activation="softmax")],
                       seed=3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "model.npz")
    previous = {name: (tmp_path / name).read_bytes() if name == "model.npz" else None for name in ("model.npz",)}
    for name, contents in (("curves.png", b"old picture"), ("results.json", b"{}"), ("tune.json", b"{}")):
        (tmp_path / name).write_bytes(contents)
        previous[name] = contents
    assert len(previous["model.npz"]) > 100_000
    result = subprocess.run([sys.executable, "-c", _DISK_FULL, str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split(",") == ["model", "picture", "bench results", "autotune cache"]
    for name, contents in previous.items():
        assert (tmp_path / name).read_bytes() == contents, name
    assert load_model(tmp_path / "model.npz").count_params() == model.count_params()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(previous)  # no temporary file left behind


# ---- load_model and untrusted files ----------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    """(path, config, arrays) of a saved small model."""
    path = small_model().save(tmp_path / "model.npz")
    arrays = stored(path)
    return path, json.loads(str(arrays.pop("config")[()])), arrays


def with_config(path, config, arrays):
    return write_npz(path, {"config": numpy.array(json.dumps(config)), **arrays})


def refused(path, *words):
    with pytest.raises(ValueError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"not a valid cnn_gpu model file: {path}: "), message
    for word in words:
        assert word in message, message
    return message


def test_the_saved_model_loads(saved):
    path, config, arrays = saved
    model = load_model(path)
    assert {f"{layer.name}/{k}" for layer in model.layers for k in {**layer.params, **layer.state}} == set(arrays)


def test_an_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    refused(path, "empty")


def test_truncated_and_corrupted_archives(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[:len(data) // 2])
    refused(truncated)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside a weight's data: the CRC no longer matches
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(flipped))
    refused(corrupt)


@pytest.mark.parametrize("key", ["layers", "name", "seed", "input_shape", "compile"])
def test_a_config_without_a_key(saved, key):
    path, config, arrays = saved
    del config[key]
    refused(with_config(path, config, arrays), repr(key))


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["layers"][0]["config"].update(frobnicate=1), ["layer 0", "frobnicate"]),
    (lambda c: c["layers"][0]["config"].update(dtype="float16"), ["float16"]),
    (lambda c: c["layers"][0].update(class_name="Lambda"), ["Lambda"]),
    (lambda c: c["layers"][3]["config"].update(units=-3), ["units"]),
    (lambda c: c.update(layers="Dense"), ["'layers'"]),
    (lambda c: c.update(seed="zero"), ["'seed'"]),
    (lambda c: c["compile"]["optimizer"]["config"].update(warp_speed=9), ["warp_speed"]),
    (lambda c: c["compile"].update(loss={"name": "nonsense", "config": {}}), ["nonsense"]),
])
def test_a_malformed_config(saved, edit, words):
    path, config, arrays = saved
    edit(config)
    refused(with_config(path, config, arrays), *words)


def test_config_not_json_and_not_a_string(saved):
    path, config, arrays = saved
    refused(write_npz(path, {"config": numpy.array("{not json"), **arrays}), "not JSON")
    refused(write_npz(path, {"config": numpy.ones(3), **arrays}), "config")


def test_weights_of_another_shape_or_missing_or_unknown(saved):
    path, config, arrays = saved
    wrong = dict(arrays, **{"dense/kernel": arrays["dense/kernel"][:, :-1]})
    refused(with_config(path, config, wrong), "dense/kernel", str(arrays["dense/kernel"].shape))
    missing = {k: v for k, v in arrays.items() if k != "batch_normalization/moving_variance"}
    refused(with_config(path, config, missing), "batch_normalization/moving_variance", "missing")
    refused(with_config(path, config, {**arrays, "notes": numpy.ones(2)}), "'notes'")
    refused(with_config(path, config, {**arrays, "dense/kernel": arrays["dense/kernel"].astype(numpy.int32)}), "int32")


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
def test_non_finite_weights(saved, bad):
    path, config, arrays = saved
    kernel = arrays["conv2d/kernel"].copy()
    kernel.flat[5] = bad
    refused(with_config(path, config, {**arrays, "conv2d/kernel": kernel}), "conv2d/kernel", "non-finite")


def test_a_pickled_member_is_refused_without_unpickling(saved):
    path, config, arrays = saved
    refused(with_config(path, config, {**arrays, "dense/bias": numpy.array([object()], dtype=object)}), "dense/bias")


def test_a_huge_declared_layer_is_refused_before_allocating(tmp_path):
    """A few-KB file declaring Dense(20000) on a 20000-wide input (a 1.6 GB kernel): refused from the stored
    shapes alone, with a few MB allocated at most."""
    model = Sequential([Dense(20, input_shape=(20,)), Dense(3)])
    model.build((20,))
    path = model.save(tmp_path / "model.npz")
    arrays = stored(path)
    config = json.loads(str(arrays.pop("config")[()]))
    config["layers"][0]["config"].update(units=20000, input_shape=[20000])
    with_config(path, config, arrays)
    assert path.stat().st_size < 10_000  # a few KB
    tracemalloc.start()
    try:
        refused(path, "dense/kernel", "(20000, 20000)")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak


def test_an_unused_deflated_member_is_not_read(saved):
    """A 200 MB member that deflates to a few hundred KB: refused by its name, never decompressed."""
    path, config, arrays = saved
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("padding.npy", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(200):
                member.write(chunk)
    tracemalloc.start()
    try:
        refused(path, "'padding'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak


def test_a_member_whose_header_lies_about_its_size(saved):
    """A weight whose .npy header declares more data than the member holds (a used member, so it is read)."""
    path, config, arrays = saved
    rebuilt = {k: v for k, v in arrays.items() if k != "dense/bias"}
    with_config(path, config, rebuilt)
    header = b"\x93NUMPY\x01\x00" + b"v\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }".ljust(117) + b"\n"
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("dense/bias.npy", header + bytes(8))  # 4 float32 declared, 2 held
    refused(path, "dense/bias")


def test_deeply_nested_config_json(saved):
    path, config, arrays = saved
    refused(write_npz(path, {"config": numpy.array("[" * 100_000 + "]" * 100_000), **arrays}), "config")


def test_saving_into_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist"):
        small_model().save(tmp_path / "missing" / "model.npz")
    assert not (tmp_path / "missing").exists()
