"""The Layer base class: lazy building, parameters, gradients and the Keras config of every layer.

Layers compute on the ops' layout, NCHW (and (N, features) after Flatten), whatever the backend: a
layer makes its parameters with ``cnn_gpu.asarray`` and calls ``cnn_gpu.functional``, so it never
asks where it runs. Shapes a layer is built for are per sample, without the batch axis: (C, H, W)
or (features,). ``input_shape`` and ``data_format`` are taken as Keras takes them, channels-last
(H, W, C) by default; they only tell a model what its data looks like (the model transposes once).

Each layer, usable on its own:
    layer.forward(x, training=False) -> y       builds on first use from x.shape[1:]
    layer.backward(dy) -> dx                    fills layer.grads (same names as layer.params)
    layer.params / layer.grads / layer.state    name -> array (state: non-trainable, e.g. moving mean)

Step scalars, for a training step captured as a CUDA graph (Sequential.compile's cuda_graph): a layer
whose training forward takes a value from the host that changes every step (Dropout: its mask seed)
lists the dtypes in ``step_scalar_dtypes`` and makes the values in ``next_step_scalars()``, which
advances its host state (the seed generator) by one step. After ``read_step_scalars_from(arrays)``
(one-element device arrays, one per dtype) its forward launches kernels that read the values from
those arrays as they run, and leaves advancing the host state to next_step_scalars;
``read_step_scalars_from(None)`` goes back. So a replayed graph gets each step's values from the host,
bit for bit those an eager step would draw.
"""
from __future__ import annotations

import functools
import inspect
import re

import numpy

from cnn_gpu.backend import asarray

DATA_FORMATS = ("channels_last", "channels_first")


class Layer:
    """Base of every layer; subclasses define build_params, output_shape_for, forward and backward."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = listing_accepted_arguments(cls, cls.__dict__["__init__"], lambda: accepted_arguments(cls))

    activation = None  # the activation a layer applies last, by name (Dense, Conv2D and Activation set it)
    step_scalar_dtypes = ()  # most layers take nothing from the host that changes per step (module docstring)

    def __init__(self, *, input_shape=None, data_format=None, name=None, dtype="float32", trainable=True, **unknown):
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown argument(s) {', '.join(sorted(unknown))}; "
                            f"it accepts {', '.join(accepted_arguments(type(self)))}")
        if data_format not in (None, *DATA_FORMATS):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        if input_shape is not None:
            input_shape = tuple(int(v) for v in input_shape)
            if not input_shape or min(input_shape) < 1:
                raise ValueError(f"input_shape must be a tuple of positive sizes, got {input_shape!r}")
        self.input_shape = input_shape
        self.data_format = data_format
        self.name = name
        self.dtype = numpy.dtype(dtype)
        self.params: dict = {}
        self.grads: dict = {}
        self.state: dict = {}
        self.built_shape = None  # per-sample input shape in the layers' layout, once built
        self.output_shape = None
        # False where nothing upstream needs dL/dx (a model's first layer): backward may skip it and return None
        self.needs_input_gradient = True
        self.trainable = bool(trainable)

    # ---- building --------------------------------------------------------------------------------
    def build(self, input_shape, rng=None) -> tuple:
        """Create the parameters for per-sample input_shape (layers' layout); returns the output shape.

        rng: a numpy Generator for the initial weights (a fresh one when None). A layer already built for
        a shape it accepts keeps its weights, as Keras's does: a trained layer put in a new model stays trained.
        """
        input_shape = tuple(int(v) for v in input_shape)
        if self.built and self.accepts(input_shape):
            self.output_shape = tuple(self.output_shape_for(input_shape))
            self.built_shape = input_shape
            return self.output_shape
        rng = numpy.random.default_rng() if rng is None else rng
        self.output_shape = tuple(self.output_shape_for(input_shape))
        self.build_params(input_shape, rng)
        self.built_shape = input_shape
        return self.output_shape

    @property
    def built(self) -> bool:
        return self.built_shape is not None

    def build_params(self, input_shape, rng) -> None:
        """Create self.params / self.state; parameterless layers keep the default."""

    def output_shape_for(self, input_shape) -> tuple:
        """Per-sample output shape for a per-sample input shape (both in the layers' layout)."""
        return input_shape

    def ensure_built(self, x) -> None:
        """Build from the first batch, or check a later batch against the built shape."""
        if not self.built:
            self.build(x.shape[1:])
        elif not self.accepts(tuple(x.shape[1:])):
            raise ValueError(f"{self.describe()} was built for input (N, {', '.join(map(str, self.built_shape))}), "
                             f"got x of shape {tuple(x.shape)}")

    def accepts(self, sample_shape) -> bool:
        return sample_shape == self.built_shape

    def new_param(self, values) -> object:
        """A parameter on the current backend, in the layer's dtype, from host values."""
        return asarray(numpy.asarray(values, dtype=self.dtype))

    # ---- the computation -------------------------------------------------------------------------
    # Abstract: every layer class defines both (Layer itself is never used as a layer).
    def forward(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def next_step_scalars(self) -> tuple:
        """Advance the host state one training step; the values (of step_scalar_dtypes) that step reads."""
        return ()

    def read_step_scalars_from(self, arrays) -> None:
        """arrays: one-element device arrays (one per step_scalar_dtypes) the training forward reads, or None."""

    def saved(self, value, what="forward(x, training=True)"):
        """A value forward kept for backward, or a clear error when backward comes first."""
        if value is None:
            raise RuntimeError(f"{self.describe()}: backward needs a {what} first")
        return value

    # ---- weights as Keras exchanges them ----------------------------------------------------------
    # trainable: Keras's flag. A frozen layer's parameters count as non-trainable; a model reads the
    # flags when it is compiled and updates only the parameters of the layers trainable then.

    def keras_layout(self, key: str, value: numpy.ndarray) -> numpy.ndarray:
        """Parameter ``key`` in Keras's layout (layers whose layout differs override this)."""
        return value

    def from_keras_layout(self, key: str, value: numpy.ndarray) -> numpy.ndarray:
        """The inverse of keras_layout."""
        return value

    @property
    def weights(self) -> dict:
        """Every array the layer keeps, parameters then state, in Keras's order (kernel, bias; gamma, beta,
        moving_mean, moving_variance)."""
        return {**self.params, **self.state}

    def get_weights(self) -> list:
        """The weights as NumPy arrays in Keras's order and layout (a Conv2D kernel is (R, S, C, filters))."""
        from cnn_gpu.backend import to_numpy

        # copies, as Keras's: the NumPy backend's parameters are these very arrays, updated in place
        return [numpy.array(self.keras_layout(key, to_numpy(value))) for key, value in self.weights.items()]

    def set_weights(self, weights) -> None:
        """Set every weight from a list as get_weights returns it; shapes are checked before anything is set."""
        names = list(self.weights)
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"{self.describe()} has {len(names)} weights ({', '.join(names) or 'none'}), "
                             f"set_weights got {len(weights)}")
        converted = {}
        for key, value in zip(names, weights):
            expected = self.keras_layout(key, numpy.empty(self.weights[key].shape)).shape
            value = numpy.asarray(value)
            if value.shape != expected:
                raise ValueError(f"{self.describe()}: weight {key!r} must have shape {expected}, got {value.shape}")
            converted[key] = self.new_param(numpy.ascontiguousarray(self.from_keras_layout(key, value)))
        for key, value in converted.items():
            (self.params if key in self.params else self.state)[key] = value

    # ---- description -----------------------------------------------------------------------------
    def count_params(self) -> tuple[int, int]:
        """(trainable, non-trainable) scalar counts, as Keras's summary counts them (a frozen layer's
        parameters are non-trainable)."""
        params, state = sum(int(p.size) for p in self.params.values()), sum(int(s.size) for s in self.state.values())
        return (params, state) if self.trainable else (0, params + state)

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this layer (JSON-serialisable)."""
        config = {"name": self.name, "dtype": self.dtype.name}
        if not self.trainable:
            config["trainable"] = False
        if self.input_shape is not None:
            config["input_shape"] = list(self.input_shape)
        if self.data_format is not None:
            config["data_format"] = self.data_format
        return config

    @classmethod
    def default_name(cls) -> str:
        """Keras's base name for a class: Conv2D -> conv2d, BatchNormalization -> batch_normalization."""
        return keras_snake_case(cls.__name__)

    def describe(self) -> str:
        return f"{type(self).__name__} layer {self.name!r}" if self.name else f"{type(self).__name__} layer"

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} output_shape={self.output_shape}>"


def keras_snake_case(name: str) -> str:
    """Keras's to_snake_case: 'ReLU' -> 're_lu', 'MaxPooling2D' -> 'max_pooling2d'."""
    intermediate = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", intermediate).lower()


def listing_accepted_arguments(cls, init, accepted):
    """init, checking its arguments first: arguments that do not fit are a TypeError that names the class
    and lists what it accepts (``accepted()``: the names)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            unknown = [name for name in kwargs if name not in accepted()]
            problem = f"unknown argument(s) {', '.join(unknown)}" if unknown else str(exc)
            raise TypeError(f"{cls.__name__}: {problem}; it accepts {', '.join(accepted()) or 'no arguments'}") from None
        init(self, *args, **kwargs)

    return checked


def accepted_arguments(cls) -> list:
    """The keyword arguments a layer class takes: its constructors' and Layer's own."""
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) \
                    and parameter.name not in names:
                names.append(parameter.name)
    return names
