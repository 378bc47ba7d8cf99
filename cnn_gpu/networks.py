"""The example networks, built in one place: `cnn-gpu train` trains the MNIST network, `cnn-gpu bench` times
both networks' training steps beside PyTorch twins of them, and the tests train them.

The MNIST network (mnist_cnn), for 28×28×1 digits, 10 classes:
    conv 5×5 valid 32 + ReLU → max-pool 2 → conv 5×5 valid 64 + ReLU → max-pool 2 → flatten (4·4·64)
    → dense 128 ReLU → dense 64 ReLU → dropout → dense 10 softmax.
The 100×100 network (cnn_100x100), for 100×100×1 images, one binary output:
    3 × [conv 3×3 valid (512, 256, 128 filters) → batch-norm → ReLU → max-pool 3 → dropout]
    → flatten (2·2·128) → dense 1 sigmoid.
Both are channels-last Keras models (input_shape (H, W, C)); their last activation fuses with the loss
(sparse categorical / binary cross-entropy), so a training step takes the last layer's logits.
"""
from __future__ import annotations

from cnn_gpu.models import Sequential


def mnist_cnn(num_classes: int = 10, dropout: float = 0.3, seed: int | None = None) -> Sequential:
    """The MNIST network (see the module docstring), built for 28×28×1 inputs."""
    from cnn_gpu.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D

    model = Sequential(seed=seed)
    model.add(Conv2D(32, 5, activation="relu", input_shape=(28, 28, 1)))
    model.add(MaxPooling2D(2))
    model.add(Conv2D(64, 5, activation="relu"))
    model.add(MaxPooling2D(2))
    model.add(Flatten())
    model.add(Dense(128, activation="relu"))
    model.add(Dense(64, activation="relu"))
    model.add(Dropout(dropout))
    model.add(Dense(num_classes, activation="softmax"))
    return model


def cnn_100x100(dropout: float = 0.1, seed: int | None = None) -> Sequential:
    """The 100×100 network (see the module docstring), built for 100×100×1 inputs."""
    from cnn_gpu.layers import Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D

    model = Sequential(seed=seed)
    for i, filters in enumerate((512, 256, 128)):
        model.add(Conv2D(filters, 3, input_shape=(100, 100, 1)) if i == 0 else Conv2D(filters, 3))
        model.add(BatchNormalization())
        model.add(Activation("relu"))
        model.add(MaxPooling2D(3))
        model.add(Dropout(dropout))
    model.add(Flatten())
    model.add(Dense(1, activation="sigmoid"))
    return model
