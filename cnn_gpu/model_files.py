"""Reading a model file that Sequential.save wrote, as untrusted input: nothing is unpickled, the config is
checked against the stored arrays' headers before anything is built, and every inconsistency is one
ValueError naming the file (``cnn_gpu.models.load_model`` is the public name)."""
from __future__ import annotations

import functools
import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy

from cnn_gpu import layers as layer_classes
from cnn_gpu import losses, optimizers
from cnn_gpu.backend import get_backend
from cnn_gpu.initializers import Initializer
from cnn_gpu.keras_model import check_native_file_name
from cnn_gpu.models import FILE_FORMAT, Sequential


def read_model(path) -> Sequential:
    """A Sequential saved by Sequential.save, rebuilt on the current backend (compiled, if it was).

    The file is treated as untrusted: nothing is unpickled, and every inconsistency (not a .npz archive,
    a missing or malformed config, an unknown layer or keyword, a dtype the layers do not compute in,
    members the model does not have, a weight missing or of another shape than its layer needs, sizes
    the file does not hold, non-finite weights) is a ValueError "not a valid cnn_gpu model file: <path>:
    <problem>", raised before the model is built: the config is checked against the stored arrays'
    headers first, so a file cannot make the loader allocate more than the arrays it holds.
    """
    check_native_file_name(path, "path")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        return _load_model_file(path)
    except _InvalidModelFile as exc:
        raise ValueError(f"not a valid cnn_gpu model file: {path}: {exc}") from None


class _InvalidModelFile(Exception):
    """What is wrong with a model file (load_model adds the file's name)."""


_MAX_CONFIG_BYTES = 16 * 2**20   # a config is a few KB; more is not one Sequential.save wrote
_DEFLATE_MAX_RATIO = 1032        # the most a DEFLATE stream can expand; a member claiming more is lying


def _load_model_file(path: Path) -> Sequential:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        problem = "the file is empty" if path.stat().st_size == 0 else f"not a .npz archive ({exc})"
        raise _InvalidModelFile(problem) from None
    with archive:
        members = {}
        for info in archive.infolist():
            if not info.filename.endswith(".npy") or info.filename[:-4] in members:
                raise _InvalidModelFile(f"member {info.filename!r} is not one array of a model (not a unique .npy)")
            members[info.filename[:-4]] = info
        if "config" not in members:
            raise _InvalidModelFile("it holds no model config")
        config = _read_config(archive, members["config"])
        planned = _planned_weights(config)  # {key: (shape, dtype)}, nothing allocated
        unknown = sorted(set(members) - set(planned) - {"config"})
        if unknown:
            raise _InvalidModelFile(f"members {', '.join(map(repr, unknown))} are not weights of the model it describes")
        missing = sorted(set(planned) - set(members))
        if missing:
            raise _InvalidModelFile(f"weights {', '.join(missing)} of the model it describes are missing")
        headers = {key: _array_header(archive, members[key]) for key in planned}
        for key, (shape, _) in planned.items():
            stored_shape, stored_dtype = headers[key][:2]
            if stored_shape != shape:
                raise _InvalidModelFile(f"weight {key} has shape {stored_shape}, its layer needs {shape}")
            if stored_dtype.kind != "f" or stored_dtype.itemsize not in (4, 8):
                raise _InvalidModelFile(f"weight {key} has dtype {stored_dtype}, not float32 or float64")
        # Every check that needs no weight values has passed: build, then read the weights one by one.
        model = _model_from_config(config)
        for layer in model.layers:
            for kind in ("params", "state"):
                arrays = getattr(layer, kind)
                for name in arrays:
                    key = f"{layer.name}/{name}"
                    values = _read_array(archive, members[key], *headers[key])
                    if not numpy.isfinite(values).all():
                        raise _InvalidModelFile(f"weight {key} holds non-finite values (NaN or inf)")
                    arrays[name] = layer.new_param(values)
    return model


def _read_config(archive, info) -> dict:
    shape, dtype, fortran, offset = _array_header(archive, info, limit=_MAX_CONFIG_BYTES)
    if shape != () or dtype.kind != "U":
        raise _InvalidModelFile(f"its config is a {dtype} array of shape {shape}, not one JSON string")
    try:
        config = json.loads(str(_read_array(archive, info, shape, dtype, fortran, offset)[()]))
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past Python's stack
        raise _InvalidModelFile(f"its config is not JSON ({exc})") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != FILE_FORMAT:
        raise _InvalidModelFile(f"its format is {found!r}, expected {FILE_FORMAT!r}")
    for key, valid, what in (("name", lambda v: isinstance(v, str), "a string"),
                             ("seed", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an int or null"),
                             ("input_shape", lambda v: v is None or (isinstance(v, list) and v and all(
                                 isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)),
                              "null or a list of positive ints"),
                             ("layers", lambda v: isinstance(v, list) and v and all(
                                 isinstance(spec, dict) and isinstance(spec.get("class_name"), str)
                                 and isinstance(spec.get("config"), dict) for spec in v),
                              "a non-empty list of {class_name, config}"),
                             ("compile", lambda v: v is None or isinstance(v, dict), "null or an object")):
        if key not in config:
            raise _InvalidModelFile(f"its config has no {key!r}")
        if not valid(config[key]):
            raise _InvalidModelFile(f"its config's {key!r} must be {what}, got {config[key]!r:.200}")
    return config


def _new_layers(config) -> list:
    """The config's layers, constructed (nothing built), each in a dtype the current backend computes in."""
    dtypes = ("float32",) if get_backend() == "cuda" else ("float32", "float64")
    layers = []
    for index, spec in enumerate(config["layers"]):
        try:
            layer = layer_classes.from_config(spec["class_name"], spec["config"])
        except (TypeError, ValueError) as exc:
            raise _InvalidModelFile(f"layer {index} ({spec['class_name']:.100}): {exc}") from None
        if layer.dtype.name not in dtypes:
            raise _InvalidModelFile(f"layer {index} ({spec['class_name']}) has dtype {layer.dtype.name}; "
                                    f"the {get_backend()} backend computes in {' or '.join(dtypes)}")
        layers.append(layer)
    return layers


class _ShapesOnlyRandom:
    """Stands in for a Generator while a model is built for its weights' shapes: every draw is a
    zero-strided array of the requested size (no memory), or 0."""

    def __getattr__(self, name):
        def draw(*args, size=None, **kwargs):
            return 0 if size is None else numpy.broadcast_to(numpy.float64(0), size)
        return draw


def _planned_weights(config) -> dict:
    """{'layer/param': (shape, dtype)} of the model the config describes, worked out by building it with
    zero-strided stand-ins for its weights (nothing of their size is allocated)."""
    probe = Sequential(name="probe")
    probe._init_rng = _ShapesOnlyRandom()
    try:
        for layer in _new_layers(config):
            layer.new_param = functools.partial(_stand_in_weight, layer.dtype)
            for name, value in vars(layer).items():  # initializers draw full-size arrays: shapes only here
                if isinstance(value, Initializer):
                    setattr(layer, name, _shape_only_initializer)
            probe.add(layer)
        if not probe.built:
            if config["input_shape"] is None:
                raise _InvalidModelFile("neither the config nor its first layer gives the input shape")
            probe.build(config["input_shape"])
    except (TypeError, ValueError) as exc:
        raise _InvalidModelFile(f"its layers do not fit together: {exc}") from None
    except MemoryError:
        raise _InvalidModelFile("its layers are too large to build") from None
    return {f"{layer.name}/{key}": (tuple(value.shape), value.dtype)
            for layer in probe.layers for arrays in (layer.params, layer.state) for key, value in arrays.items()}


def _shape_only_initializer(shape, dtype=None, **kwargs):
    return numpy.broadcast_to(numpy.float64(0), shape)


def _stand_in_weight(dtype, values):
    return numpy.broadcast_to(numpy.zeros((), dtype), numpy.shape(values))


def _model_from_config(config) -> Sequential:
    model = Sequential(seed=config["seed"], name=config["name"])
    for layer in _new_layers(config):
        model.add(layer)
    if not model.built:
        model.build(config["input_shape"])
    try:
        if config["compile"]:
            settings = config["compile"]
            model.compile(optimizer=optimizers.from_config(settings["optimizer"]["class_name"], settings["optimizer"]["config"]),
                          loss=losses.from_config(settings["loss"]["name"], settings["loss"]["config"]),
                          metrics=settings["metrics"], cuda_graph=settings.get("cuda_graph", False))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise _InvalidModelFile(f"its compile settings are not valid ({type(exc).__name__}: {exc})") from None
    return model


def _array_header(archive, info, limit=None) -> tuple:
    """(shape, dtype, fortran_order, data offset) of a .npy member, read from its header alone, after
    checking that the member holds exactly the bytes its header declares and no more than it could."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _InvalidModelFile(f"member {info.filename!r} uses compression method {info.compress_type}")
    if info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
        raise _InvalidModelFile(f"member {info.filename!r} declares {info.file_size} bytes from {info.compress_size}")
    if limit is not None and info.file_size > limit:
        raise _InvalidModelFile(f"member {info.filename!r} is {info.file_size} bytes, more than {limit}")
    try:
        with archive.open(info) as member:
            version = numpy.lib.format.read_magic(member)
            read_header = {(1, 0): numpy.lib.format.read_array_header_1_0,
                           (2, 0): numpy.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version}")
            shape, fortran, dtype = read_header(member)
            offset = member.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _InvalidModelFile(f"member {info.filename!r} is not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise _InvalidModelFile(f"member {info.filename!r} holds Python objects")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise _InvalidModelFile(f"member {info.filename!r} declares shape {shape} of {dtype} ({nbytes} bytes) "
                                f"but holds {info.file_size - offset}")
    return tuple(shape), dtype, fortran, offset


def _read_array(archive, info, shape, dtype, fortran, offset) -> numpy.ndarray:
    """A member's array, its header already checked by _array_header."""
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        with archive.open(info) as member:
            member.read(offset)
            data = member.read(nbytes)
            if len(data) != nbytes or member.read(1):  # reading to the end also checks the CRC
                raise ValueError("its size differs from its header")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _InvalidModelFile(f"member {info.filename!r} cannot be read ({exc})") from None
    order = "F" if fortran else "C"
    array = numpy.empty(shape, dtype, order=order)  # writable: the layers update their state in place
    array.reshape(-1, order=order)[...] = numpy.frombuffer(data, dtype=dtype)
    return array
