"""Learning-rate schedules (keras.optimizers.schedules): a rate computed from the optimizer's step count.

    lr = ExponentialDecay(1e-2, decay_steps=100, decay_rate=0.9)
    Adam(learning_rate=lr)          # step t (0-based: the iterations before it) uses lr(t)

Keras's formulas, on the host in float64:
    ExponentialDecay        initial · decay_rate^(step / decay_steps)   (staircase: the exponent floored)
    CosineDecay             optional linear warm-up from initial to warmup_target over warmup_steps, then
                            from there (target, or initial) · ((1 − alpha) · ½(1 + cos(π · min(s, decay_steps) / decay_steps)) + alpha)
    InverseTimeDecay        initial / (1 + decay_rate · step / decay_steps)   (staircase: floored)
    PiecewiseConstantDecay  values[i] while step <= boundaries[i] (values[-1] after the last boundary)
"""
from __future__ import annotations

import math


def _positive(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _non_negative(name, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class LearningRateSchedule:
    """Base: schedule(step) -> learning rate (a float); get_config() rebuilds it."""

    def __call__(self, step) -> float:  # abstract: each schedule below defines it
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def get_config(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not define get_config")


class ExponentialDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.decay_rate = _positive("decay_rate", decay_rate)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return float(self.initial_learning_rate * self.decay_rate ** exponent)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        self.initial_learning_rate = _non_negative("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.alpha = _non_negative("alpha", alpha)
        self.name = name
        self.warmup_target = None if warmup_target is None else _non_negative("warmup_target", warmup_target)
        self.warmup_steps = _non_negative("warmup_steps", warmup_steps)

    def _decayed(self, step, start):
        fraction = step / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
        return start * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        if self.warmup_target is None:
            return float(self._decayed(min(step, self.decay_steps), self.initial_learning_rate))
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            return float((self.warmup_target - self.initial_learning_rate) * step / self.warmup_steps
                         + self.initial_learning_rate)
        return float(self._decayed(step - self.warmup_steps, self.warmup_target))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


class InverseTimeDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="InverseTimeDecay"):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        fraction = step / self.decay_steps
        if self.staircase:
            fraction = math.floor(fraction)
        return float(self.initial_learning_rate / (1 + self.decay_rate * fraction))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more entry than boundaries, got {len(values)} values and "
                             f"{len(boundaries)} boundaries")
        for value in values:
            _non_negative("values", value)
        self.boundaries, self.values, self.name = boundaries, values, name

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return float(value)
        return float(self.values[-1])

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, CosineDecay, InverseTimeDecay, PiecewiseConstantDecay)}


def serialize(schedule: LearningRateSchedule) -> dict:
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config: dict) -> LearningRateSchedule:
    if config.get("class_name") not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {config.get('class_name')!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[config["class_name"]](**config["config"])


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.optimizers.schedules has no {name!r}; it has {', '.join(SCHEDULES)}, "
                         f"LearningRateSchedule")
