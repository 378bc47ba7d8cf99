"""Keras's SGD and Adam, their updates done in place by the optim ops (our kernels on the GPU).

An optimizer keeps its state per parameter key (a model uses 'layer_name/param_name') and counts
``iterations``, the steps applied, as Keras does; Adam's bias correction uses that count.

    opt = Adam(learning_rate=1e-3)
    opt.apply({"w": w}, {"w": dw})      # w updated in place

Step scalars, for a training step captured as a CUDA graph (Sequential.compile's cuda_graph): the
values an update takes from the host at each step (Adam: its step size alpha) have the dtypes
``step_scalar_dtypes``; ``next_step_scalars()`` counts the next iteration and returns them. After
``read_step_scalars_from(arrays)`` (one-element device arrays, one per dtype) apply() launches
updates that read them from those arrays as they run, and leaves the counting to next_step_scalars;
``read_step_scalars_from(None)`` goes back. The replayed graph then gets each step's values from the
host through those arrays, bit for bit the values an eager step uses.
"""
from __future__ import annotations

import numpy

from cnn_gpu import functional as F
from cnn_gpu.backend import asarray
from cnn_gpu.ops.arrays import real_number
from cnn_gpu.ops.optim import adam_step_size


class Optimizer:
    """Base: learning_rate, iterations, per-parameter slots, step scalars, config for saving."""

    step_scalar_dtypes = ()  # none: plain SGD and momentum take nothing from the host that changes per step

    def __init__(self, learning_rate):
        self.learning_rate = real_number("learning_rate", learning_rate, 0, low_open=True)
        self.iterations = 0
        self._slots: dict = {}
        self._step_scalars = None  # one-element device arrays the updates read, or None (see the module docstring)

    def apply(self, params: dict, grads: dict) -> None:
        """One step: every params[key] updated in place from grads[key]."""
        missing = sorted(set(params) - set(grads))
        if missing:
            raise ValueError(f"grads has no entry for {', '.join(missing)}")
        if self._step_scalars is None:
            self.iterations += 1
        for key, param in params.items():
            self.update(key, param, grads[key])

    def next_step_scalars(self) -> tuple:
        """Count the next iteration; the values (of step_scalar_dtypes) its updates take from the host."""
        self.iterations += 1
        return ()

    def read_step_scalars_from(self, arrays) -> None:
        """arrays: one-element device arrays (one per step_scalar_dtypes) that apply()'s updates read, or None."""
        self._step_scalars = None if arrays is None else tuple(arrays)

    def update(self, key, param, grad) -> None:  # abstract: SGD and Adam define it
        raise NotImplementedError(f"{type(self).__name__} does not define update")

    def slots(self, key, param, names) -> list:
        """This parameter's state arrays (zeros of its shape on its first step)."""
        if key not in self._slots:
            self._slots[key] = [asarray(numpy.zeros(param.shape, dtype=param.dtype)) for _ in names]
        return self._slots[key]

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate}


class SGD(Optimizer):
    """SGD(learning_rate=0.01, momentum=0.0, nesterov=False): v = momentum·v − lr·g; w += v
    (nesterov: w += momentum·v − lr·g)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        self.momentum = real_number("momentum", momentum, 0, 1)  # Keras's range; 1 never decays the velocity
        self.nesterov = bool(nesterov)

    def update(self, key, param, grad):
        velocity = self.slots(key, param, ["velocity"])[0] if self.momentum else None
        F.sgd_update(param, grad, velocity, self.learning_rate, self.momentum, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7), Keras's formulas."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = real_number("beta_1", beta_1, 0, 1, high_open=True)
        self.beta_2 = real_number("beta_2", beta_2, 0, 1, high_open=True)
        self.epsilon = real_number("epsilon", epsilon, 0, low_open=True)

    step_scalar_dtypes = (numpy.dtype(numpy.float32),)  # alpha, the step size with the bias corrections

    def next_step_scalars(self):
        super().next_step_scalars()
        return (adam_step_size(self.learning_rate, self.beta_1, self.beta_2, self.iterations),)

    def update(self, key, param, grad):
        m, v = self.slots(key, param, ["m", "v"])
        if self._step_scalars is None:
            F.adam_update(param, grad, m, v, self.iterations, self.learning_rate, self.beta_1, self.beta_2, self.epsilon)
        else:
            F.adam_update(param, grad, m, v, None, self.learning_rate, self.beta_1, self.beta_2, self.epsilon,
                          step_size=self._step_scalars[0])

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get(identifier) -> Optimizer:
    """An Optimizer from a Keras name ('sgd', 'adam', any case, Keras defaults) or an instance."""
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
    return classes[class_name](**config)
