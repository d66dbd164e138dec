"""PNG figures of training runs: curves, first-layer filters, feature maps, image grids.

matplotlib is an optional extra (``pip install juanji[train]``) and is imported only when a
figure is drawn. Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg
canvas, so pyplot's global state (backend, open figures) is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def available() -> bool:
    """Whether matplotlib can be imported, i.e. whether the functions here can draw."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new_figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "juanji.plots needs matplotlib: pip install matplotlib (or juanji[train])"
        ) from e
    return Figure(figsize=(width, height), layout="constrained")


def _grid_shape(count: int, ncols: int | None) -> tuple[int, int]:
    cols = ncols or math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def _tile_figure(tiles: Sequence[np.ndarray], titles: Sequence[str], ncols: int | None,
                 cmap: str, tile_inches: float, suptitle: str | None):
    rows, cols = _grid_shape(len(tiles), ncols)
    fig = _new_figure(cols * tile_inches, rows * tile_inches + (0.4 if suptitle else 0.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, tile, title in zip(axes.flat, tiles, titles):
        ax.imshow(tile, cmap=cmap, interpolation="nearest")
        if title:
            ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def save_image_grid(images: Sequence[np.ndarray], path: str, titles: Sequence[str] | None = None,
                    ncols: int | None = None, cmap: str = "gray", tile_inches: float = 2.0,
                    suptitle: str | None = None) -> None:
    """Saves 2-D images side by side in a grid, each scaled to its own min..max."""
    if len(images) == 0:
        raise ValueError("save_image_grid: no images given")
    for i, image in enumerate(images):
        if np.ndim(image) != 2:
            raise ValueError(f"save_image_grid: image {i} must be 2-D (H, W), "
                             f"got shape {np.shape(image)}")
    titles = list(titles) if titles is not None else [""] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"save_image_grid: {len(images)} images but {len(titles)} titles")
    _tile_figure(images, titles, ncols, cmap, tile_inches, suptitle).savefig(path, dpi=100)


def plot_filters(weights: np.ndarray, path: str, title: str = "first-layer filters") -> None:
    """Saves convolution weights (K, C, R, S) as a grid: one row of C tiles per filter when C > 1,
    else a square grid of the K filters."""
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise ValueError(f"plot_filters: weights must have shape (K, C, R, S), got {weights.shape}")
    k, c = weights.shape[:2]
    tiles = list(weights.reshape(k * c, *weights.shape[2:]))
    titles = [f"{i // c}" if c == 1 else f"{i // c}.{i % c}" for i in range(k * c)]
    # Gray with per-tile scaling: the pattern matters, not the absolute weight size.
    _tile_figure(tiles, titles, c if c > 1 else None, "gray", 0.9, title).savefig(path, dpi=100)


def plot_feature_maps(image: np.ndarray, maps: Sequence[tuple[str, np.ndarray]], path: str,
                      max_channels: int = 8, title: str | None = None) -> None:
    """Saves the input image (H, W) and, one row per layer, the first ``max_channels`` channels
    of each named (C, H, W) feature map."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"plot_feature_maps: image must be 2-D (H, W), got shape {image.shape}")
    for name, fmap in maps:
        if np.ndim(fmap) != 3:
            raise ValueError(f"plot_feature_maps: map {name!r} must be (C, H, W), "
                             f"got shape {np.shape(fmap)}")
    cols = max([1] + [min(max_channels, np.shape(fmap)[0]) for _, fmap in maps])
    rows = 1 + len(maps)
    fig = _new_figure(1.3 * cols + 1.0, 1.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(image, cmap="gray", interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=8)
    for row, (name, fmap) in enumerate(maps, start=1):
        fmap = np.asarray(fmap)
        for channel in range(min(max_channels, fmap.shape[0])):
            ax = axes[row, channel]
            ax.imshow(fmap[channel], cmap="viridis", interpolation="nearest")
            ax.set_title(f"{name} [{channel}]" if channel == 0 else f"[{channel}]", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def plot_curves(log: Mapping[str, Any], path: str) -> None:
    """Saves training curves from a training log (the CLI's log.json): the loss of every step
    and of every epoch (train and test) on the left, test accuracy per epoch on the right.

    ``log`` needs ``"step_losses"`` (list of floats), ``"steps_per_epoch"`` (int) and
    ``"epochs"`` (list of dicts with ``epoch``, ``train_loss``, ``test_loss``, ``test_accuracy``).
    """
    epochs = log["epochs"]
    step_losses = np.asarray(log["step_losses"], dtype=np.float64)
    steps_per_epoch = max(1, int(log["steps_per_epoch"]))
    epoch_numbers = [e["epoch"] for e in epochs]

    fig = _new_figure(11.0, 4.0)
    loss_ax, acc_ax = fig.subplots(1, 2)
    # Step i ends at epoch (i + 1) / steps_per_epoch, so both curves share the epoch axis.
    step_x = np.arange(1, len(step_losses) + 1) / steps_per_epoch
    loss_ax.plot(step_x, step_losses, color="tab:blue", alpha=0.3, linewidth=0.8,
                 label="train (step)")
    loss_ax.plot(epoch_numbers, [e["train_loss"] for e in epochs], "o-", color="tab:blue",
                 label="train (epoch mean)")
    loss_ax.plot(epoch_numbers, [e["test_loss"] for e in epochs], "s-", color="tab:orange",
                 label="test")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy loss")
    loss_ax.set_yscale("log")  # early losses are ~10x the late ones; linear would flatten those
    loss_ax.set_title("loss")
    loss_ax.grid(True, alpha=0.3)
    loss_ax.legend()

    accuracy = [100.0 * e["test_accuracy"] for e in epochs]
    acc_ax.plot(epoch_numbers, accuracy, "s-", color="tab:green")
    for x, y in zip(epoch_numbers, accuracy):
        acc_ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy (%)")
    acc_ax.set_title("test accuracy")
    acc_ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=100)
