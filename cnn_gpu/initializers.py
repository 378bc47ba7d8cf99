"""Weight initialisers by Keras name: kernel_initializer= / bias_initializer= of Conv2D and Dense.

    Dense(64, kernel_initializer="he_normal")            # a name, as Keras spells it
    Conv2D(32, 3, kernel_initializer=HeUniform(seed=1))  # or an instance

Each draws host values with Keras's formulas (keras.initializers): the variance-scaling family
(glorot_*, he_*, lecun_*) from fan_in / fan_out as Keras counts them for the layer (a convolution:
R·S·C in, R·S·filters out), a truncated normal cut at two standard deviations. A layer passes its
fans with its own parameter layout (ours is not Keras's), so the statistics are Keras's:

    init(shape, dtype=None, *, fan_in=None, fan_out=None, rng=None) -> numpy array

An initialiser made with a seed draws from its own generator; otherwise from ``rng`` (a model's
seed then makes the draw reproducible).
"""
from __future__ import annotations

import math

import numpy


# stddev of a standard normal truncated to [-2, 2], which the truncated draws divide by (Keras's constant)
_TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


def keras_fans(shape) -> tuple[float, float]:
    """(fan_in, fan_out) of a weight of ``shape`` in Keras's layout (kernel (..., in, out))."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def _truncated_normal(rng, mean, stddev, shape):
    """N(mean, stddev²) cut to mean ± 2·stddev, by redrawing what falls outside."""
    values = rng.standard_normal(shape)
    outside = numpy.abs(values) > 2
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = numpy.abs(values) > 2
    return mean + stddev * values


class Initializer:
    """Base: seed handling, config, the call contract of the module docstring."""

    def __init__(self, seed=None):
        if seed is not None and (not isinstance(seed, (int, numpy.integer)) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self._rng = None if seed is None else numpy.random.default_rng(seed)

    def __call__(self, shape, dtype=None, *, fan_in=None, fan_out=None, rng=None):
        shape = tuple(int(v) for v in shape)
        if fan_in is None or fan_out is None:
            fan_in, fan_out = keras_fans(shape)
        generator = self._rng or rng or numpy.random.default_rng()
        values = numpy.asarray(self.draw(generator, shape, float(fan_in), float(fan_out)), dtype=numpy.float64)
        values = numpy.broadcast_to(values, shape)
        return values.astype(dtype or numpy.float32)

    def draw(self, rng, shape, fan_in, fan_out):  # abstract: every initialiser below defines it
        raise NotImplementedError(f"{type(self).__name__} does not define draw")

    def get_config(self) -> dict:
        return {"seed": self.seed}


class Zeros(Initializer):
    def __init__(self):
        super().__init__()

    def draw(self, rng, shape, fan_in, fan_out):
        return numpy.zeros(shape)

    def get_config(self):
        return {}


class Ones(Zeros):
    def draw(self, rng, shape, fan_in, fan_out):
        return numpy.ones(shape)


class Constant(Initializer):
    def __init__(self, value=0.0):
        super().__init__()
        self.value = float(value)

    def draw(self, rng, shape, fan_in, fan_out):
        return numpy.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def draw(self, rng, shape, fan_in, fan_out):
        return rng.normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class TruncatedNormal(RandomNormal):
    def draw(self, rng, shape, fan_in, fan_out):
        return _truncated_normal(rng, self.mean, self.stddev, shape)


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def draw(self, rng, shape, fan_in, fan_out):
        return rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class VarianceScaling(Initializer):
    """Keras's VarianceScaling(scale=1.0, mode='fan_in', distribution='truncated_normal', seed=None)."""

    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(self.DISTRIBUTIONS)}, got {distribution!r}")
        self.scale, self.mode = float(scale), mode
        self.distribution = "untruncated_normal" if distribution == "normal" else distribution

    def draw(self, rng, shape, fan_in, fan_out):
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3 * variance)
            return rng.uniform(-limit, limit, shape)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(variance), shape)
        return _truncated_normal(rng, 0.0, math.sqrt(variance) / _TRUNCATED_NORMAL_STDDEV, shape)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution, "seed": self.seed}


def _variance_scaling(name, scale, mode, distribution):
    """A VarianceScaling subclass with Keras's fixed arguments (GlorotUniform, HeNormal, ...)."""

    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return {"seed": self.seed}

    doc = f"Keras's {name}: VarianceScaling(scale={scale}, mode={mode!r}, distribution={distribution!r})."
    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config, "__doc__": doc,
                                           "__module__": __name__})


GlorotUniform = _variance_scaling("GlorotUniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _variance_scaling("GlorotNormal", 1.0, "fan_avg", "truncated_normal")
HeNormal = _variance_scaling("HeNormal", 2.0, "fan_in", "truncated_normal")
HeUniform = _variance_scaling("HeUniform", 2.0, "fan_in", "uniform")
LecunNormal = _variance_scaling("LecunNormal", 1.0, "fan_in", "truncated_normal")
LecunUniform = _variance_scaling("LecunUniform", 1.0, "fan_in", "uniform")

INITIALIZERS = {"zeros": Zeros, "ones": Ones, "constant": Constant, "random_normal": RandomNormal,
                "random_uniform": RandomUniform, "truncated_normal": TruncatedNormal,
                "variance_scaling": VarianceScaling, "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
                "he_normal": HeNormal, "he_uniform": HeUniform, "lecun_normal": LecunNormal,
                "lecun_uniform": LecunUniform}
_CLASS_NAMES = {cls.__name__: cls for cls in INITIALIZERS.values()}
ALIASES = {"zero": "zeros", "one": "ones"}


def get(identifier, argument="initializer") -> Initializer:
    """An Initializer from a Keras name ('he_normal', 'HeNormal', ...), a {'class_name', 'config'} dict, or an
    instance; anything else a ValueError naming ``argument`` and listing the names."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASS_NAMES:
        return _CLASS_NAMES[identifier["class_name"]](**identifier.get("config", {}))
    if isinstance(identifier, str):
        name = ALIASES.get(identifier, identifier)
        cls = INITIALIZERS.get(name) or _CLASS_NAMES.get(name)
        if cls is not None:
            return cls()
    raise ValueError(f"{argument} must be one of {', '.join(sorted(INITIALIZERS))} (or the class names, or an "
                     f"Initializer), got {identifier!r}")


def serialize(initializer: Initializer) -> dict:
    """The {'class_name', 'config'} dict that get() rebuilds."""
    return {"class_name": type(initializer).__name__, "config": initializer.get_config()}


def initializer_config(layer) -> dict:
    """The kernel_initializer / bias_initializer entries of a layer's get_config()."""
    return {"kernel_initializer": serialize(layer.kernel_initializer), "bias_initializer": serialize(layer.bias_initializer)}


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.initializers has no {name!r}; it has {', '.join(sorted(_CLASS_NAMES))}")
