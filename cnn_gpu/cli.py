"""The `cnn-gpu` command (also `python -m cnn_gpu`): train | info | bench.

Thin on purpose: it parses arguments, calls the library, and prints. Expected failures (missing
files, bad shapes, unknown names, no GPU for --backend cuda) end with one line
``cnn-gpu: error: <message>`` on stderr and exit status 1 (2 for a malformed command line), never a
traceback; ``--debug`` shows the traceback instead. Ctrl-C exits quietly with status 130.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy

import cnn_gpu
from cnn_gpu import backend as backends

EXPECTED_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError)


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is the same single `cnn-gpu: error:` line as every other failure."""

    def error(self, message):
        self.exit(2, f"cnn-gpu: error: {message} (see '{self.prog} --help')\n")


# ---- train ---------------------------------------------------------------------------------------
TRAIN_OUTPUTS = ("model.npz", "training_curves.png", "filters.png", "feature_maps.png")


def _load_data(args):
    from cnn_gpu import datasets

    if args.data == "mnist":
        if not args.path:
            raise ValueError("--data mnist needs --path DIR, the folder holding the MNIST IDX files")
        (x_train, y_train), (x_test, y_test) = datasets.load_mnist(args.path)
    else:
        (x_train, y_train), (x_test, y_test) = datasets.load_digits(size=28)
    if args.limit:
        x_train, y_train, x_test, y_test = x_train[:args.limit], y_train[:args.limit], x_test[:args.limit], y_test[:args.limit]
    if x_train.shape[1:] != (28, 28, 1):
        raise ValueError(f"the network takes 28×28×1 images, the data has {x_train.shape[1:]}")
    for what, x in (("training", x_train), ("test", x_test)):
        if not len(x):
            raise ValueError(f"the {what} data holds no images")
        if not numpy.isfinite(x).all():
            raise ValueError(f"the {what} images hold NaN or infinite pixel values")
    return (x_train, y_train), (x_test, y_test)


def _output_folder(text: str) -> Path:
    """--out as a folder that takes new files, checked before any training. A folder that does not exist yet is
    checked through its nearest existing parent and created only when the results are saved, so a run that
    fails before then leaves no empty folder behind."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot write files there ({exc.strerror or exc})") from None
    for name in TRAIN_OUTPUTS:
        if (out / name).is_dir():
            raise ValueError(f"--out {out}: {name} there is a folder, it would be replaced by a file")
    return out


def _check_finite_losses(history) -> None:
    """A run whose loss is no longer finite is an error: nothing of it is saved (the previous files stay)."""
    for key in ("loss", "val_loss"):
        for epoch, value in enumerate(history.history.get(key, ()), 1):
            if not math.isfinite(value):
                raise RuntimeError(f"training diverged: {key} is {value} at epoch {epoch}; nothing was saved "
                                   f"(try a smaller --lr)")


def run_train(args) -> int:
    from cnn_gpu import viz
    from cnn_gpu.networks import mnist_cnn
    from cnn_gpu.optimizers import Adam

    if args.path and args.data != "mnist":
        raise ValueError(f"--path is read only with --data mnist (--data is {args.data})")
    out = _output_folder(args.out)
    name = backends.set_backend(args.backend)
    print(f"backend: {name} ({_device_line()})")
    (x_train, y_train), (x_test, y_test) = _load_data(args)
    print(f"data: {args.data}, {len(x_train)} training and {len(x_test)} test images of {x_train.shape[1:]}")

    model = mnist_cnn(seed=args.seed)
    model.compile(optimizer=Adam(learning_rate=args.lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  cuda_graph=args.cuda_graph)
    model.summary()
    started = time.perf_counter()
    with numpy.errstate(all="ignore"):  # a diverging run is reported once, below, not by NumPy's overflow warnings
        history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                            validation_split=args.validation_split, verbose=1)
    _check_finite_losses(history)
    print(f"trained in {time.perf_counter() - started:.1f} s")

    out.mkdir(parents=True, exist_ok=True)
    saved = [model.save(out / "model.npz"),
             viz.plot_history(history, out / "training_curves.png"),
             viz.plot_filters(model, out / "filters.png"),
             viz.plot_feature_maps(model, x_test[0], out / "feature_maps.png", label=int(y_test[0]))]
    for path in saved:
        print(f"saved {path}")
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    print(f"test loss: {test_loss:.4f}")
    print(f"test accuracy: {test_accuracy:.4f}")
    return 0


# ---- info ----------------------------------------------------------------------------------------
def _device_line() -> str:
    """'NVIDIA H100 ..., 79.1 GiB' for the current device, or why there is none."""
    usable, reason = cnn_gpu.cuda_status()
    if not usable:
        return f"no GPU: {reason}"
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    free, total = cupy.cuda.runtime.memGetInfo()
    return f"{name}, sm_{props['major']}{props['minor']}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)"


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}" if code else "none"


def _versions() -> list:
    """[(what, version)] for CuPy, the CUDA runtime and driver, NVRTC; 'not installed' / the error otherwise."""
    try:
        import cupy
    except Exception as exc:  # not installed, or a broken install raising at import
        return [("CuPy", f"not importable ({type(exc).__name__})")]
    rows = [("CuPy", cupy.__version__)]
    for what, query in (("CUDA runtime", cupy.cuda.runtime.runtimeGetVersion),
                        ("CUDA driver", cupy.cuda.runtime.driverGetVersion)):
        try:
            rows.append((what, _cuda_version(query())))
        except Exception as exc:  # CUDARuntimeError where the library or driver is missing
            rows.append((what, f"unavailable ({type(exc).__name__})"))
    return rows


def _compile_arch() -> str:
    """The current device's architecture, or sm_90 (H100) to check against when there is no GPU."""
    if cnn_gpu.cuda_status()[0]:
        import cupy

        return f"sm_{cupy.cuda.Device().compute_capability}"
    return "sm_90"


def run_info(args) -> int:
    from cnn_gpu.cuda import compile_check, loader

    print(f"cnn_gpu {cnn_gpu.__version__}")
    print(f"backend: {backends.get_backend()}")
    print(f"device: {_device_line()}")
    for what, version in _versions():
        print(f"{what}: {version}")
    try:
        print(f"NVRTC: {compile_check.nvrtc_version()}")
    except compile_check.NVRTCUnavailable as exc:
        print(f"kernels: not compiled, {exc}")
        return 0
    arch = _compile_arch()
    failed = []
    for family in loader.FAMILIES:
        result = compile_check.compile_family(family, arch)
        if result.ok:
            warnings = len(result.diagnostics)
            note = f", {warnings} warning(s)" if warnings else ""
            print(f"kernels/{family}.cu ({arch}): compiles, {len(result.report)} kernel(s){note}")
        else:
            failed.append(family)
            first_error = next(iter(result.diagnostics), "see the NVRTC log")
            print(f"kernels/{family}.cu ({arch}): FAILS to compile: {first_error}")
    if failed:
        raise RuntimeError(f"{len(failed)} kernel famil{'y' if len(failed) == 1 else 'ies'} failed to compile: {', '.join(failed)}")
    return 0


# ---- bench ---------------------------------------------------------------------------------------
def run_bench(args) -> int:
    from cnn_gpu import bench

    ops = [op.strip() for op in args.ops.split(",") if op.strip()] if args.ops else None
    where = {"out": args.out} if args.out else {}  # bench.run's own default otherwise
    bench.run(ops=ops, quick=args.quick, **where)
    return 0


# ---- command line --------------------------------------------------------------------------------
# Each type's errors are ArgumentTypeErrors, so that argparse shows the message rather than the function's name.
def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _seed(text: str) -> int:
    return _integer(text, 0, "a non-negative integer")


def _float_or_nan(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return value


def _positive_float(text: str) -> float:
    value = _float_or_nan(text)
    if not (math.isfinite(value) and value > 0):  # 1e400 reads as inf
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _float_or_nan(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="cnn-gpu", description="Hand-written CUDA kernels for CNNs: train, inspect, benchmark.")
    parser.add_argument("--version", action="version", version=f"cnn_gpu {cnn_gpu.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,info,bench}")

    train = commands.add_parser("train", help="train the MNIST network on handwritten digits",
                                description="Train the MNIST network (conv 5×5 32 → pool → conv 5×5 64 → pool → "
                                            "dense 128 → dense 64 → dropout → dense 10) and save the model and pictures.")
    train.add_argument("--data", choices=("digits", "mnist"), default="digits",
                       help="scikit-learn's bundled digits resized to 28×28 (default), or MNIST from --path")
    train.add_argument("--path", help="folder holding the MNIST IDX files (raw or .gz), for --data mnist")
    train.add_argument("--epochs", type=_positive_int, default=20, help="passes over the training images (default %(default)s)")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="default %(default)s")
    train.add_argument("--lr", type=_positive_float, default=5e-4, help="Adam's learning rate (default %(default)g)")
    train.add_argument("--validation-split", type=_fraction, default=0.1,
                       help="fraction of the training images held out for the validation curves (default %(default)s)")
    train.add_argument("--backend", choices=("auto", "numpy", "cuda"), default="auto",
                       help="auto (the default) picks cuda when a GPU is usable, numpy otherwise")
    train.add_argument("--seed", type=_seed, default=0, help="seeds the weights, shuffling and dropout; the train/test split is fixed (default %(default)s)")
    train.add_argument("--limit", type=_positive_int, help="use only the first N training and N test images (quick trials)")
    train.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                       help="on the cuda backend, replay each training step as one captured CUDA graph "
                            "(bit-identical to eager steps; no effect on numpy; default on)")
    train.add_argument("--out", default="runs/train", help="folder for the model and the PNG files (default %(default)s)")
    train.set_defaults(run=run_train)

    info = commands.add_parser("info", help="backend, device, CUDA versions, and whether the kernels compile")
    info.set_defaults(run=run_info)

    bench = commands.add_parser("bench", help="time our kernels beside cuDNN / cuBLAS (or NumPy beside PyTorch CPU)")
    bench.add_argument("--ops", help="comma-separated op names (default: all)")
    bench.add_argument("--quick", action="store_true", help="small shapes and few repeats, for CI")
    bench.add_argument("--out", help="where results.json and speedup.png go (default bench-out)")
    bench.set_defaults(run=run_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        more = " (--debug shows the rest)" if len(lines) > 1 else ""
        print(f"cnn-gpu: error: {lines[0]}{more}", file=sys.stderr)
        return 1
