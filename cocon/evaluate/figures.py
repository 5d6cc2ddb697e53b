"""The report's figures, drawn from the measures of cocon.evaluate.analyses: t-SNE scatters, cosine
histograms, alignment heatmaps and confusion matrices, plus the canvas helpers every figure of the package
uses (cocon.evaluate.views_figure too). Figures are drawn on a private Agg canvas (no pyplot, no global
state) and written atomically with reproducible bytes; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from cocon.evaluate.analyses import labels_1d
from cocon.files import atomic_path

PNG_DPI = 120


def new_figure(width: float, height: float, dpi: float = 100):
    """A matplotlib Figure of width x height inches attached to its own Agg canvas (no pyplot, no global
    backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: str | os.PathLike, dpi: float = PNG_DPI) -> None:
    """Write figure as PNG at dpi with no Software metadata (same figure -> same bytes), atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    figure.clear()


def _class_colours(num_classes: int) -> list:
    from matplotlib import colormaps

    if num_classes <= 10:
        return [colormaps["tab10"](i) for i in range(num_classes)]
    if num_classes <= 20:
        return [colormaps["tab20"](i) for i in range(num_classes)]
    turbo = colormaps["turbo"]
    return [turbo(i / max(1, num_classes - 1)) for i in range(num_classes)]


def plot_tsne(
    xy: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str,
) -> None:
    """Scatter of a 2-D embedding xy (n, 2) coloured by labels (n,) indexing class_names, with a legend."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must have shape (n, 2), got {xy.shape}")
    labels = labels_1d("labels", labels, xy.shape[0]).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must index class_names (0..{len(class_names) - 1})")
    colours = _class_colours(len(class_names))
    present = np.unique(labels)
    legend_columns = max(1, math.ceil(present.size / 25))
    figure = new_figure(6.0 + 2.0 * legend_columns, 6.0)
    axes = figure.add_subplot(1, 1, 1)
    for cls in present:
        mask = labels == cls
        axes.scatter(xy[mask, 0], xy[mask, 1], s=12, color=colours[cls], label=str(class_names[cls]))
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    if present.size:
        axes.legend(
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize="x-small",
            ncol=legend_columns,
            frameon=False,
            markerscale=1.5,
        )
    figure.tight_layout()
    save_png(figure, path)


def plot_cosine_histograms(same: np.ndarray, different: np.ndarray, path: str | os.PathLike, title: str) -> None:
    """Overlaid density histograms of same-class (blue) and different-class (orange) cosines (1-D each)."""
    bins = np.linspace(-1.0, 1.0, 41)
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    for values, colour, name in (
        (same, "tab:blue", "same class"),
        (different, "tab:orange", "different class"),
    ):
        values = np.clip(np.asarray(values, dtype=np.float64).ravel(), -1.0, 1.0)
        if values.size:
            label = f"{name} (mean {values.mean():.3f}, n={values.size})"
            axes.hist(values, bins=bins, density=True, alpha=0.5, color=colour, label=label)
        else:
            axes.plot([], [], color=colour, label=f"{name} (n=0)")
    axes.set_xlim(-1.0, 1.0)
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    save_png(figure, path)


def plot_alignment(matrix: np.ndarray, path: str | os.PathLike, title: str, xlabel: str, ylabel: str) -> None:
    """Heatmap of an alignment matrix (Ta, Tb): rows down the y axis (origin upper), with a colorbar."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
    figure = new_figure(5.5, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, origin="upper", aspect="auto", interpolation="nearest", cmap="viridis")
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    figure.tight_layout()
    save_png(figure, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """Row-normalised heatmap of a confusion matrix of counts (C, C), rows = true class.

    Rows without any video stay all zero. Class names label the axes when there are at most 40 classes.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    num_classes = len(class_names)
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"matrix must have shape ({num_classes}, {num_classes}), got {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
    size = min(14.0, 4.0 + 0.18 * num_classes)
    figure = new_figure(size + 1.0, size)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(normalised, origin="upper", vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="fraction of true class")
    if num_classes <= 40:
        ticks = np.arange(num_classes)
        axes.set_xticks(ticks)
        axes.set_yticks(ticks)
        axes.set_xticklabels([str(name) for name in class_names], rotation=90, fontsize="x-small")
        axes.set_yticklabels([str(name) for name in class_names], fontsize="x-small")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.tight_layout()
    save_png(figure, path)
