"""Pictures of a trained model, as PNG files: training curves, first-layer filters, feature maps.

The feature-map picture shows what each layer extracts: one digit, then the maps each
convolution produces from it (after its activation), from edge-like detectors to coarser parts.

matplotlib is imported only when a picture is drawn, and only its object API (Figure + the Agg
canvas) is used, so nothing here touches pyplot's global backend or an interactive session.
"""
from __future__ import annotations

from pathlib import Path

import numpy

from cnn_gpu.backend import asarray, to_numpy
from cnn_gpu.files import atomic_write


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # lazily: matplotlib is slow to import

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        FigureCanvasAgg(fig).print_png(file)
    return path


def plot_history(history, path) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side; ``history`` is a History or its dict."""
    curves = getattr(history, "history", history)
    if not curves.get("loss"):
        raise ValueError("history has no 'loss' values to plot")
    epochs = numpy.arange(1, len(curves["loss"]) + 1)
    fig = _figure(10, 4)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "--s")):
            if curves.get(key):
                ax.plot(epochs, curves[key], style, label=label, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def conv_layers(model) -> list:
    """The model's convolution layers, in order (anything with a 4-D 'kernel' parameter)."""
    return [layer for layer in model.layers if _kernel_of(layer) is not None]


def _kernel_of(layer):
    kernel = getattr(layer, "params", {}).get("kernel")
    return kernel if kernel is not None and kernel.ndim == 4 else None


def plot_filters(model, path) -> Path:
    """The first convolution's learned kernels as a grid of small images (input channel 0 of each).

    Each filter is shown on its own symmetric colour scale (red positive, blue negative), which is
    what makes its pattern (edge, blob, stroke direction) readable.
    """
    convs = conv_layers(model)
    if not convs:
        raise ValueError("the model has no convolution layer whose filters could be drawn")
    kernel = to_numpy(_kernel_of(convs[0]))[:, 0]  # (K, R, S)
    cols = min(8, len(kernel))
    rows = -(-len(kernel) // cols)
    fig = _figure(1.2 * cols, 1.2 * rows + 0.4)
    fig.suptitle(f"{convs[0].name}: {len(kernel)} learned {kernel.shape[1]}×{kernel.shape[2]} filters")
    for ax, k in zip(fig.subplots(rows, cols, squeeze=False).ravel(), _padded(kernel, rows * cols)):
        if k is not None:
            limit = float(numpy.abs(k).max()) or 1.0
            ax.imshow(k, cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_axis_off()
    return _save(fig, path)


def feature_maps(model, image) -> list:
    """[(layer name, maps (C, H, W))] after each convolution, for one image in the model's layout.

    Runs the model's layers in inference mode on a batch of one and keeps each convolution's output
    (after its activation, which the layer applies).
    """
    x = model.to_layer_layout(asarray(numpy.asarray(image, dtype=numpy.float32)[numpy.newaxis]))
    maps = []
    for layer in model.layers:
        x = layer.forward(x, training=False)
        if _kernel_of(layer) is not None:
            maps.append((layer.name, to_numpy(x)[0]))
    return maps


def plot_feature_maps(model, image, path, max_maps: int = 16, label=None, per_row: int = 8) -> Path:
    """One digit (a single-channel image in the model's layout), then the first ``max_maps`` maps of
    each convolution's output, a block of ``per_row``-wide rows per layer."""
    image = numpy.asarray(image)
    maps = feature_maps(model, image)
    if not maps:
        raise ValueError("the model has no convolution layer whose feature maps could be drawn")
    picture = image[..., 0] if model.data_format in (None, "channels_last") else image[0]
    block_rows = [-(-min(len(layer_maps), max_maps) // per_row) for _, layer_maps in maps]
    fig = _figure(1.3 * per_row + 2.2, 1.3 * sum(block_rows) + 0.8)
    left, right = fig.subfigures(1, 2, width_ratios=[2.2, 1.3 * per_row])
    ax = left.subplots()
    ax.imshow(picture, cmap="gray_r", interpolation="nearest")
    ax.set_title("input" if label is None else f"input (label {label})")
    ax.set_axis_off()
    blocks = right.subfigures(len(maps), 1, height_ratios=block_rows, squeeze=False).ravel()
    for block, rows, (name, layer_maps) in zip(blocks, block_rows, maps):
        shown = layer_maps[:max_maps]
        block.suptitle(f"{name}: {len(shown)} of {len(layer_maps)} maps, {layer_maps.shape[1]}×{layer_maps.shape[2]}",
                       fontsize="medium")
        for ax, m in zip(block.subplots(rows, per_row, squeeze=False).ravel(), _padded(shown, rows * per_row)):
            if m is not None:
                ax.imshow(m, cmap="viridis", interpolation="nearest")
            ax.set_axis_off()
    return _save(fig, path)


def _padded(items, count: int) -> list:
    """items followed by None up to count, so a grid's spare axes are blanked too."""
    return list(items) + [None] * (count - len(items))
