"""Keras's callbacks: hooks that fit calls with the model and the logs (keras.callbacks).

    class Print(Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(epoch, logs["loss"], self.model.optimizer.learning_rate)

    model.fit(x, y, callbacks=[EarlyStopping(patience=3, restore_best_weights=True), Print()])

Hooks and their logs, as in Keras: on_train_begin / on_train_end(logs), on_epoch_begin(epoch, logs),
on_epoch_end(epoch, logs) with the epoch's means ('loss', the metrics, and 'val_' ones after validation),
on_train_batch_begin(batch, logs) / on_train_batch_end(batch, logs) with the running means of the epoch
so far (on_batch_begin / on_batch_end are their old names), on_test_begin / on_test_end and
on_test_batch_begin / on_test_batch_end during evaluate. ``self.model`` is the model,
``self.params`` {'epochs', 'steps', 'verbose'}; a callback stops training with
``self.model.stop_training = True`` (checked after every batch, as Keras does).

Reading running means makes the host wait for the device, so fit reads them after a batch only when
some callback defines a batch hook (``needs_batch_logs``); epoch hooks cost nothing extra.

Files: ModelCheckpoint writes through the model's save / save_weights, whose writes are atomic (a
temporary file, then os.replace); CSVLogger appends one row an epoch. The Keras formats .keras and .h5
are refused (cnn_gpu writes its own .npz), with an error at construction.
"""
from __future__ import annotations

import csv
import inspect
import math
import os
import warnings

import numpy

from cnn_gpu.layers.base import listing_accepted_arguments

MODES = ("auto", "min", "max")


class Callback:
    """Base: every hook does nothing; set_model / set_params are called by fit."""

    def __init__(self):
        self.model = None
        self.params = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            init = cls.__dict__["__init__"]
            cls.__init__ = listing_accepted_arguments(cls, init, lambda: [
                name for name, p in inspect.signature(init).parameters.items()
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)])

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params) -> None:
        self.params = params

    @property
    def needs_batch_logs(self) -> bool:
        """Whether fit must read the running means for this callback's batch hooks (it defines one)."""
        return any(getattr(type(self), hook) is not getattr(Callback, hook) for hook in _BATCH_HOOKS)

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): self.on_batch_begin(batch, logs)
    def on_train_batch_end(self, batch, logs=None): self.on_batch_end(batch, logs)
    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_test_batch_begin(self, batch, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...


_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end",
                "on_test_batch_begin", "on_test_batch_end")


class CallbackList:
    """The callbacks of one fit or evaluate, called in order; History (when given) last, as in Keras."""

    def __init__(self, callbacks, model, params: dict):
        callbacks = list(callbacks or [])
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must hold cnn_gpu.callbacks.Callback instances, got {type(callback).__name__}")
        self.callbacks = callbacks
        for callback in callbacks:
            callback.set_model(model)
            callback.set_params(params)

    @property
    def needs_batch_logs(self) -> bool:
        return any(callback.needs_batch_logs for callback in self.callbacks)

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)


class History(Callback):
    """What fit returns (and keeps as model.history): ``history`` maps each log key ('loss', 'accuracy',
    'val_loss', ...) to its per-epoch values, ``epoch`` the epoch indices, ``params`` fit's settings."""

    def __init__(self):
        super().__init__()
        self.history: dict = {}
        self.epoch: list = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self

    def __repr__(self):
        return f"<History epochs={len(self.epoch)} keys={list(self.history)}>"


class _Monitor(Callback):
    """What EarlyStopping, ModelCheckpoint and ReduceLROnPlateau share: a monitored log value and whether a
    new value improves on a reference (Keras's MonitorCallback: 'auto' minimises a loss, maximises an
    accuracy; min_delta is the least change that counts)."""

    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0.0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if not isinstance(monitor, str):
            raise TypeError(f"{type(self).__name__}: monitor must be a log name such as 'val_loss', got {monitor!r}")
        _finite(type(self).__name__, "min_delta", min_delta)
        self.monitor, self.mode = monitor, mode
        self.baseline = baseline
        self.min_delta = abs(float(min_delta))
        self._direction = None  # +1: larger is better, -1: smaller is better

    def _resolve_direction(self) -> None:
        if self.mode != "auto":
            self._direction = 1 if self.mode == "max" else -1
            return
        name = self.monitor.removeprefix("val_")
        metric_names = [m.name for m in getattr(self.model, "compiled_metrics", None) or []]
        if name == "loss" or name.endswith("loss") or name in ("mse", "mae", "mean_squared_error", "mean_absolute_error"):
            self._direction = -1
        elif name in metric_names or "acc" in name:
            self._direction = 1
        else:
            raise ValueError(f"{type(self).__name__}: cannot tell whether {self.monitor!r} should be minimised or "
                             f"maximised; pass mode='min' or mode='max'")

    def _is_improvement(self, value, reference) -> bool:
        if self._direction is None:
            self._resolve_direction()
        if reference is None:
            return True
        if self._direction > 0:
            return value - self.min_delta > reference
        return value + self.min_delta < reference

    def _monitored(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{type(self).__name__} is conditioned on {self.monitor!r}, which is not in the logs; "
                          f"available: {', '.join(logs or {}) or 'none'}", RuntimeWarning, stacklevel=3)
        return value


class EarlyStopping(_Monitor):
    """Stop training when the monitored value has stopped improving (Keras's EarlyStopping).

    EarlyStopping(monitor='val_loss', min_delta=0, patience=0, verbose=0, mode='auto', baseline=None,
    restore_best_weights=False, start_from_epoch=0): stops after ``patience`` epochs without an improvement
    of more than min_delta (nor of the baseline, when given); epochs before start_from_epoch are not
    judged. restore_best_weights: at the end of training the weights of the best epoch come back.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, baseline, min_delta)
        self.patience = _non_negative_int("EarlyStopping", "patience", patience)
        self.start_from_epoch = _non_negative_int("EarlyStopping", "start_from_epoch", start_from_epoch)
        self.verbose = verbose
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = self.stopped_epoch = self.best_epoch = 0
        self.best = self.best_weights = None

    def on_train_begin(self, logs=None):
        self.wait = self.stopped_epoch = self.best_epoch = 0
        self.best = self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitored(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch  # the first judged epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0  # only beating both the baseline and the best so far restarts the count
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model (or its weights) during training (Keras's ModelCheckpoint).

    ModelCheckpoint(filepath, monitor='val_loss', verbose=0, save_best_only=False, save_weights_only=False,
    mode='auto', save_freq='epoch', initial_value_threshold=None). filepath may hold Keras's fields:
    '{epoch:02d}' (1-based) and any log key ('{val_loss:.2f}'); with save_freq=N also '{batch}'. Each write
    goes through model.save / model.save_weights: one atomic write of cnn_gpu's .npz format.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__(monitor, mode, None, 0.0)
        from cnn_gpu.models import check_native_file_name

        self.filepath = os.fspath(filepath)
        check_native_file_name(self.filepath, "ModelCheckpoint filepath")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and not isinstance(save_freq, bool) and save_freq > 0):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive int (batches), got {save_freq!r}")
        self.verbose, self.save_freq = verbose, save_freq
        self.save_best_only, self.save_weights_only = bool(save_best_only), bool(save_weights_only)
        self.best = initial_value_threshold
        self._batches_since_save = 0

    @property
    def needs_batch_logs(self):
        return self.save_freq != "epoch"

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._epoch, batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _save(self, epoch, batch, logs):
        logs = dict(logs or {})
        fields = {"epoch": epoch + 1, **logs} if batch is None else {"epoch": epoch + 1, "batch": batch + 1, **logs}
        try:
            path = self.filepath.format(**fields)
        except (KeyError, IndexError) as exc:
            raise KeyError(f"ModelCheckpoint: cannot format filepath {self.filepath!r}: no {exc} among "
                           f"{', '.join(fields)}") from None
        if self.save_best_only:
            current = self._monitored(logs)
            if current is not None and not self._is_improvement(current, self.best):
                if self.verbose > 0:
                    print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if current is not None:
                self.best = current
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saved the model to {path}")


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when the monitored value has stopped improving (Keras's).

    ReduceLROnPlateau(monitor='val_loss', factor=0.1, patience=10, verbose=0, mode='auto', min_delta=1e-4,
    cooldown=0, min_lr=0.0). Adds 'learning_rate' to each epoch's logs.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, None, min_delta)
        if not (isinstance(factor, (int, float)) and 0 <= factor < 1):
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1) (the rate is multiplied by it), got {factor!r}")
        self.factor = float(factor)
        self.patience = _non_negative_int("ReduceLROnPlateau", "patience", patience)
        self.cooldown = _non_negative_int("ReduceLROnPlateau", "cooldown", cooldown)
        self.min_lr = float(_finite("ReduceLROnPlateau", "min_lr", min_lr))
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.best = None
        self.cooldown_counter = self.wait = 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(self.model.optimizer.learning_rate)
        current = self._monitored(logs)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(self.model.optimizer.learning_rate)
                if old > numpy.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite."""

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class CSVLogger(Callback):
    """CSVLogger(filename, separator=',', append=False): one row an epoch, 'epoch' then the log keys sorted."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, bool(append)
        self._file = self._writer = self._keys = None

    def on_train_begin(self, logs=None):
        header_written = self.append and os.path.isfile(self.filename) and os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._writer, self._keys, self._header_written = None, None, header_written

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch", *self._keys], delimiter=self.sep)
            if not self._header_written:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{key: logs.get(key, "NA") for key in self._keys}})
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


class LambdaCallback(Callback):
    """A callback from functions: LambdaCallback(on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
    on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None, ...); each takes the hook's
    arguments (epoch / batch, logs; or logs)."""

    HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_begin", "on_train_end", "on_train_batch_begin",
             "on_train_batch_end", "on_batch_begin", "on_batch_end", "on_test_begin", "on_test_end",
             "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end")

    def __init__(self, **hooks):
        super().__init__()
        unknown = sorted(set(hooks) - set(self.HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback got unknown hook(s) {', '.join(unknown)}; it accepts {', '.join(self.HOOKS)}")
        for name, function in hooks.items():
            if function is not None:
                if not callable(function):
                    raise TypeError(f"LambdaCallback: {name} must be callable, got {function!r}")
                setattr(self, name, function)
        self._batch_hooks = any(hooks.get(name) is not None for name in _BATCH_HOOKS)

    @property
    def needs_batch_logs(self):
        return self._batch_hooks


class LearningRateScheduler(Callback):
    """LearningRateScheduler(schedule, verbose=0): at each epoch's start the learning rate becomes
    schedule(epoch, lr) (or schedule(epoch)); 'learning_rate' goes into the epoch's logs."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, got {schedule!r}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.model.optimizer.learning_rate)
        try:
            new = self.schedule(epoch, lr)
        except TypeError:  # a schedule of the epoch alone, as Keras allows
            new = self.schedule(epoch)
        if not isinstance(new, (int, float, numpy.floating, numpy.integer)) or isinstance(new, bool):
            raise ValueError(f"LearningRateScheduler: the schedule must return a number, got {new!r}")
        self.model.optimizer.learning_rate = float(new)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(new)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


def _non_negative_int(owner, name, value) -> int:
    if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{owner}: {name} must be an int >= 0, got {value!r}")
    return int(value)


def _finite(owner, name, value):
    if not (isinstance(value, (int, float, numpy.floating, numpy.integer)) and not isinstance(value, bool)
            and math.isfinite(value)):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return value


CALLBACKS = ("Callback", "CSVLogger", "EarlyStopping", "History", "LambdaCallback", "LearningRateScheduler",
             "ModelCheckpoint", "ReduceLROnPlateau", "TerminateOnNaN")


def __getattr__(name):
    raise AttributeError(f"cnn_gpu.callbacks has no {name!r}; it has {', '.join(CALLBACKS)}")
