"""BatchNormalization over the channels: after Conv2D (N, C, H, W) or after Dense (N, features).

Parameters gamma (ones) and beta (zeros) train; the moving mean (zeros) and variance (ones) are
state, non-trainable, as Keras counts them. Keras's momentum m weighs the old moving value
(new = m·old + (1 − m)·batch); the batch_norm op takes PyTorch's meaning, so it is given 1 − m.
Training normalises with the batch's statistics and updates the moving ones in place (the moving
variance from the unbiased batch variance, as TF's fused kernel and PyTorch); inference normalises
with the moving ones. A frozen layer (trainable=False) always normalises with the moving statistics,
as Keras's does, and its backward is then that of the fixed affine map y = x·gamma/σ + const.
"""
from __future__ import annotations

import numpy

from cnn_gpu import functional as F
from cnn_gpu.layers.base import Layer


class BatchNormalization(Layer):
    """BatchNormalization(axis=-1, momentum=0.99, epsilon=1e-3): axis is Keras's, the channels (the only
    axis this layer normalises over)."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        if axis != -1:
            raise ValueError(f"axis must be -1 (the channels, which this layer normalises over), got {axis!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        if not (isinstance(epsilon, (int, float)) and epsilon > 0):
            raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self._x = self._saved_mean = self._saved_invstd = None

    def output_shape_for(self, input_shape):
        if len(input_shape) not in (1, 3):
            raise ValueError(f"{self.describe()} needs (N, C, H, W) or (N, features) input, got per-sample "
                             f"shape {tuple(input_shape)}")
        return input_shape

    def build_params(self, input_shape, rng):
        channels = input_shape[0]
        self.params = {"gamma": self.new_param(numpy.ones(channels)), "beta": self.new_param(numpy.zeros(channels))}
        self.state = {"moving_mean": self.new_param(numpy.zeros(channels)),
                      "moving_variance": self.new_param(numpy.ones(channels))}

    def forward(self, x, training=False):
        self.ensure_built(x)
        training = bool(training) and self.trainable
        y, mean, invstd = F.batch_norm(x, self.params["gamma"], self.params["beta"], self.state["moving_mean"],
                                       self.state["moving_variance"], training=training,
                                       momentum=1.0 - self.momentum, eps=self.epsilon)
        self._x, self._saved_mean, self._saved_invstd = (x, mean, invstd) if training else (None, None, None)
        self._inference_ndim = None if training else x.ndim
        return y

    def backward(self, dy):
        if getattr(self, "_inference_ndim", None) is not None:  # the moving statistics are constants here
            variance = self.state["moving_variance"]
            scale = self.params["gamma"] / (variance + variance.dtype.type(self.epsilon)) ** 0.5
            self.grads = {}
            return dy * scale.reshape((1, -1) + (1,) * (self._inference_ndim - 2))
        dx, dgamma, dbeta = F.batch_norm_backward(dy, self.saved(self._x), self.params["gamma"],
                                                  self._saved_mean, self._saved_invstd)
        self.grads = {"gamma": dgamma, "beta": dbeta}
        return dx

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}

