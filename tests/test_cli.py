"""The `cnn-gpu` command: train end to end on a tiny budget, info, and one-line errors for bad input.

Each command runs as a user runs it, `python -m cnn_gpu ...` in a subprocess, so that exit codes and
stderr (no traceback) are what is checked.
"""
import os
import subprocess
import sys

import pytest

import cnn_gpu
from cnn_gpu import cli


def run_cli(*args, cwd=None):
    env = {**os.environ, "CNN_GPU_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-m", "cnn_gpu", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnn-gpu: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_train_end_to_end_saves_model_and_pictures(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--limit", "64", "--epochs", "1", "--batch-size", "32", "--backend", "numpy",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("backend: numpy")
    assert "Total params: 192,202" in result.stdout  # the MNIST network
    last = lines[-1]
    assert last.startswith("test accuracy: ") and 0.0 <= float(last.split(": ")[1]) <= 1.0
    assert len(last.split(": ")[1]) == 6, last  # 0.xxxx
    for name in ("model.npz", "training_curves.png", "filters.png", "feature_maps.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert f"saved {path}" in result.stdout
    assert (out / "filters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from cnn_gpu.models import load_model

    model = load_model(out / "model.npz")
    assert model.count_params() == 192_202


def test_info_prints_backend_and_kernel_check():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert "backend: numpy" in result.stdout
    assert "device: " in result.stdout
    assert "kernels/conv2d.cu" in result.stdout or "NVRTC unavailable" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["train", "--data", "mnist"], ["--path"]),
    (["train", "--data", "mnist", "--path", "/nonexistent/mnist"], ["/nonexistent/mnist"]),
    (["train", "--backend", "tpu"], ["--backend", "tpu"]),
    (["train", "--epochs", "0"], ["--epochs"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_bad_input_is_one_line_error(args, words):
    assert_one_line_error(run_cli(*args), *words)


def test_mnist_with_malformed_file_is_one_line_error(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # declares 5 bytes, holds 3
    assert_one_line_error(run_cli("train", "--data", "mnist", "--path", str(tmp_path)), "train-images-idx3-ubyte")


@pytest.mark.skipif(cnn_gpu.cuda_status()[0], reason="a GPU is usable here, so --backend cuda is not an error")
def test_backend_cuda_without_gpu_is_one_line_error():
    assert_one_line_error(run_cli("train", "--backend", "cuda"), "cuda")


def test_bench_arguments_reach_bench_run(monkeypatch, tmp_path):
    import cnn_gpu.bench

    calls = []
    monkeypatch.setattr(cnn_gpu.bench, "run", lambda **kwargs: calls.append(kwargs))
    assert cli.main(["bench", "--ops", "conv2d, matmul", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == [{"ops": ["conv2d", "matmul"], "quick": True, "out": str(tmp_path)}]


def test_expected_error_in_process_is_one_line(monkeypatch, capsys):
    def fail(args):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(cli, "run_info", fail)
    assert cli.main(["info"]) == 1
    err = capsys.readouterr().err
    assert err == "cnn-gpu: error: first line (--debug shows the rest)\n"



def test_train_replays_cuda_graphs_unless_told_not_to(monkeypatch, tmp_path):
    """--cuda-graph (the default) reaches Sequential.compile; --no-cuda-graph turns it off."""
    from cnn_gpu.models import Sequential

    seen = []
    original = Sequential.compile
    monkeypatch.setattr(Sequential, "compile", lambda self, *a, **k: (seen.append(k.get("cuda_graph")), original(self, *a, **k))[1])
    for flag, expected in (([], True), (["--no-cuda-graph"], False)):
        assert cli.main(["train", "--backend", "numpy", "--epochs", "1", "--limit", "40", "--out", str(tmp_path), *flag]) == 0
        assert seen.pop() is expected


# ---- checks before any work ----------------------------------------------------------------------
def assert_no_work_done(result):
    assert "Model:" not in result.stdout and "Epoch" not in result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("args, words", [
    (["--lr", "inf"], ["--lr", "inf"]),
    (["--lr", "1e400"], ["--lr", "1e400"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "-1"], ["--lr"]),
    (["--validation-split", "nan"], ["--validation-split"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--epochs", "abc"], ["--epochs", "'abc'"]),
    (["--batch-size", "2.5"], ["--batch-size"]),
    (["--path", "/tmp"], ["--path", "--data mnist"]),
])
def test_argument_ranges_are_checked_before_work(args, words):
    result = run_cli("train", *args)
    assert_one_line_error(result, *words)
    assert "_positive_int" not in result.stderr and "_seed" not in result.stderr and "invalid" not in result.stderr
    assert_no_work_done(result)


def test_out_that_cannot_be_a_folder_fails_before_training(tmp_path):
    existing_file = tmp_path / "a file"
    existing_file.write_text("keep me")
    for out, words in ((existing_file, ["--out", "not a folder"]), (existing_file / "below", ["--out", "cannot write"])):
        result = run_cli("train", "--epochs", "1", "--limit", "40", "--out", str(out))
        assert_one_line_error(result, *words)
        assert_no_work_done(result)
    assert existing_file.read_text() == "keep me"
    (tmp_path / "run" / "model.npz").mkdir(parents=True)  # where the model file would go
    result = run_cli("train", "--epochs", "1", "--limit", "40", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "model.npz")
    assert_no_work_done(result)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_without_write_permission_fails_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("train", "--epochs", "1", "--limit", "40", "--out", str(locked))
    assert_one_line_error(result, "--out", "cannot write")
    assert_no_work_done(result)


def test_a_corrupt_gzip_idx_file_is_one_line_error(tmp_path):
    import gzip

    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name in names:
        valid = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")
        (tmp_path / f"{name}.gz").write_bytes(valid[:10] + b"\xff" * 20)  # a gzip header, then invalid deflate data
    out = tmp_path / "new" / "run"
    result = run_cli("train", "--data", "mnist", "--path", str(tmp_path), "--out", str(out))
    assert_one_line_error(result, "train-images-idx3-ubyte.gz", "gzip")
    assert not (tmp_path / "new").exists()  # --out is created only when there is something to save


def test_a_diverging_run_stops_with_an_error_and_keeps_the_previous_model(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.npz").write_bytes(b"the previous model")
    result = run_cli("train", "--limit", "64", "--epochs", "1", "--lr", "1e30", "--out", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cnn-gpu: error: training diverged: loss is nan")
    assert (out / "model.npz").read_bytes() == b"the previous model"
    assert sorted(p.name for p in out.iterdir()) == ["model.npz"]


def test_images_with_nan_are_refused_before_training(monkeypatch, tmp_path, capsys):
    import numpy

    from cnn_gpu import datasets

    def digits_with_a_nan(size):
        x = numpy.zeros((50, 28, 28, 1), numpy.float32)
        x[7, 3, 3, 0] = numpy.nan
        y = numpy.arange(50) % 10
        return (x, y), (x[:10].copy() * 0, y[:10])

    monkeypatch.setattr(datasets, "load_digits", digits_with_a_nan)
    assert cli.main(["train", "--backend", "numpy", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == "cnn-gpu: error: the training images hold NaN or infinite pixel values\n"
    assert "Model:" not in captured.out
