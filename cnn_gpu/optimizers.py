"""Keras's optimizers, SGD, Adam, AdamW and RMSprop, their updates done in place by the optim ops (our
kernels on the GPU); ``cnn_gpu.optimizers.schedules`` for learning rates that change per step.

An optimizer keeps its state per parameter key (a model uses 'layer_name/param_name') and counts
``iterations``, the steps applied, as Keras does. As in Keras, a step first reads the learning rate
(a number, or a schedule called with the iterations so far), applies the decoupled weight decay when
``weight_decay`` is set (param -= param · weight_decay · lr), then the optimizer's update; Adam's bias
correction uses the step's 1-based count.

    opt = Adam(learning_rate=1e-3)
    opt.apply({"w": w}, {"w": dw})      # w updated in place
    opt.learning_rate                   # the learning rate the next step uses; settable (not with a schedule)

Step scalars, for a training step captured as a CUDA graph (Sequential.compile's cuda_graph): the
values an update takes from the host at each step (the learning rate; Adam's step size alpha too)
have the dtypes ``step_scalar_dtypes``; ``next_step_scalars()`` counts the next iteration and
returns them. After ``read_step_scalars_from(arrays)`` (one-element device arrays, one per dtype)
apply() launches updates that read them from those arrays as they run, and leaves the counting to
next_step_scalars; ``read_step_scalars_from(None)`` goes back. The replayed graph then gets each
step's values from the host through those arrays, bit for bit the values an eager step uses (so a
schedule, or a callback changing the rate between epochs, reaches the replayed steps).
"""
from __future__ import annotations

import sys

import numpy

from cnn_gpu import functional as F
from cnn_gpu import learning_rate_schedules as schedules
from cnn_gpu.backend import asarray
from cnn_gpu.learning_rate_schedules import LearningRateSchedule
from cnn_gpu.ops.arrays import real_number
from cnn_gpu.ops.optim import adam_step_size

# keras.optimizers.schedules is a module: `from cnn_gpu.optimizers.schedules import CosineDecay` works too.
sys.modules[f"{__name__}.schedules"] = schedules


class Optimizer:
    """Base: learning rate (or schedule), weight decay, iterations, per-parameter slots, step scalars, config."""

    def __init__(self, learning_rate, weight_decay=None, name=None):
        self._schedule = None
        self._learning_rate = None
        self.learning_rate = learning_rate  # checked by the setter (a schedule is kept as it is)
        self.weight_decay = None if weight_decay is None else real_number("weight_decay", weight_decay, 0)
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._slots: dict = {}
        self._step_scalars = None  # one-element device arrays the updates read, or None (see the module docstring)

    # ---- the learning rate -----------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step (a schedule's value at ``iterations``)."""
        return self._schedule(self.iterations) if self._schedule is not None else self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, LearningRateSchedule):
            self._schedule, self._learning_rate = value, None
            return
        if self._schedule is not None:
            raise TypeError("this optimizer's learning_rate is a LearningRateSchedule; it cannot be set to a number")
        self._learning_rate = real_number("learning_rate", value, 0, low_open=True)

    @property
    def step_scalar_dtypes(self) -> tuple:
        """The learning rate, then what the optimizer adds (extra_step_scalars)."""
        return (numpy.dtype(numpy.float32),) * (1 + len(self.extra_step_scalars(1, 1.0)))

    def extra_step_scalars(self, step: int, learning_rate: float) -> tuple:
        """Values besides the learning rate that step (1-based) takes from the host."""
        return ()

    # ---- a step ----------------------------------------------------------------------------------
    def apply(self, params: dict, grads: dict) -> None:
        """One step: every params[key] updated in place from grads[key]."""
        missing = sorted(set(params) - set(grads))
        if missing:
            raise ValueError(f"grads has no entry for {', '.join(missing)}")
        if self._step_scalars is None:
            lr = self.learning_rate
            self.iterations += 1
            scalars = (lr, *self.extra_step_scalars(self.iterations, lr))
        else:
            scalars = None  # the updates read them from the step-scalar arrays
        for key, param in params.items():
            if self.weight_decay:
                if scalars is None:
                    F.weight_decay_update(param, None, self.weight_decay, learning_rate_from=self._step_scalars[0])
                else:
                    F.weight_decay_update(param, scalars[0], self.weight_decay)
            self.update(key, param, grads[key], scalars)

    def next_step_scalars(self) -> tuple:
        """Count the next iteration; the values (of step_scalar_dtypes) its updates take from the host."""
        lr = self.learning_rate
        self.iterations += 1
        return (lr, *self.extra_step_scalars(self.iterations, lr))

    def read_step_scalars_from(self, arrays) -> None:
        """arrays: one-element device arrays (one per step_scalar_dtypes) that apply()'s updates read, or None."""
        self._step_scalars = None if arrays is None else tuple(arrays)

    def learning_rate_arguments(self, scalars) -> dict:
        """The learning-rate keyword arguments of an optim op: the value, or the step-scalar array."""
        if scalars is None:
            return {"learning_rate": None, "learning_rate_from": self._step_scalars[0]}
        return {"learning_rate": scalars[0]}

    def update(self, key, param, grad, scalars) -> None:  # abstract: each optimizer below defines it
        """One parameter's update; scalars: (lr, *extra) of this step, or None to read the step-scalar arrays."""
        raise NotImplementedError(f"{type(self).__name__} does not define update")

    def slots(self, key, param, names) -> list:
        """This parameter's state arrays (zeros of its shape on its first step)."""
        if key not in self._slots:
            self._slots[key] = [asarray(numpy.zeros(param.shape, dtype=param.dtype)) for _ in names]
        return self._slots[key]

    def get_config(self) -> dict:
        rate = schedules.serialize(self._schedule) if self._schedule is not None else self._learning_rate
        config = {"learning_rate": rate, "name": self.name}
        if self.weight_decay is not None and "weight_decay" not in config:
            config["weight_decay"] = self.weight_decay
        return config


class SGD(Optimizer):
    """SGD(learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None): v = momentum·v − lr·g; w += v
    (nesterov: w += momentum·v − lr·g)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, name=None):
        super().__init__(learning_rate, weight_decay, name)
        self.momentum = real_number("momentum", momentum, 0, 1)
        self.nesterov = bool(nesterov)

    def update(self, key, param, grad, scalars):
        velocity = self.slots(key, param, ["velocity"])[0] if self.momentum else None
        F.sgd_update(param, grad, velocity, momentum=self.momentum, nesterov=self.nesterov,
                     **self.learning_rate_arguments(scalars))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None), Keras's formulas."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, name=None):
        super().__init__(learning_rate, weight_decay, name)
        self.beta_1 = real_number("beta_1", beta_1, 0, 1, high_open=True)
        self.beta_2 = real_number("beta_2", beta_2, 0, 1, high_open=True)
        self.epsilon = real_number("epsilon", epsilon, 0, low_open=True)

    def extra_step_scalars(self, step, learning_rate):
        return (adam_step_size(learning_rate, self.beta_1, self.beta_2, step),)  # alpha, bias corrections folded in

    def update(self, key, param, grad, scalars):
        m, v = self.slots(key, param, ["m", "v"])
        if scalars is None:
            F.adam_update(param, grad, m, v, None, 1.0, self.beta_1, self.beta_2, self.epsilon,
                          step_size=self._step_scalars[1])
        else:  # alpha from the step count, as extra_step_scalars computes it
            F.adam_update(param, grad, m, v, self.iterations, scalars[0], self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class AdamW(Adam):
    """AdamW(learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7): Adam with
    Keras's decoupled weight decay, param -= param · weight_decay · lr before each Adam step."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name=None):
        if weight_decay is None:
            raise ValueError("weight_decay must be a finite number >= 0 for AdamW, got None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, name)


class RMSprop(Optimizer):
    """RMSprop(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=None),
    Keras's formulas (ops/optim.py): epsilon inside the square root, momentum on the increment."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=None,
                 name=None):
        super().__init__(learning_rate, weight_decay, name)
        self.rho = real_number("rho", rho, 0, 1, high_open=True)
        self.momentum = real_number("momentum", momentum, 0, 1, high_open=True)
        self.epsilon = real_number("epsilon", epsilon, 0, low_open=True)
        self.centered = bool(centered)

    def update(self, key, param, grad, scalars):
        names = ["velocity"] + ["average_grad"] * self.centered + ["momentum"] * (self.momentum > 0)
        state = dict(zip(names, self.slots(key, param, names)))
        F.rmsprop_update(param, grad, state["velocity"], state.get("average_grad"), state.get("momentum"),
                         rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
                         **self.learning_rate_arguments(scalars))

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    """An Optimizer from a Keras name ('sgd', 'adam', 'adamw', 'rmsprop', any case, Keras defaults) or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()]()
    raise ValueError(f"optimizer must be one of {', '.join(repr(n) for n in OPTIMIZERS)} or an Optimizer, got {identifier!r}")


def from_config(class_name: str, config: dict) -> Optimizer:
    """Rebuild an optimizer saved as (type name, get_config())."""
    classes = {cls.__name__: cls for cls in OPTIMIZERS.values()}
    if class_name not in classes:
        raise ValueError(f"unknown optimizer class {class_name!r}; known: {', '.join(classes)}")
    config = dict(config)
    if isinstance(config.get("learning_rate"), dict):
        config["learning_rate"] = schedules.deserialize(config["learning_rate"])
    return classes[class_name](**config)


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.optimizers has no {name!r}; it has {', '.join(sorted(c.__name__ for c in OPTIMIZERS.values()))}"
                         f" and schedules")
