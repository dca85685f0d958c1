"""The report's figures, as pure functions from numbers to matplotlib Figures.

No pyplot: each function builds its own `Figure`, so nothing global is
touched and no display backend is needed. Colours are fixed per variant.
Margins are set by hand: matplotlib's automatic layouts draw every figure
twice, which doubled the visualize stage's time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from pipeline.format import LABELS
from pipeline.results import History, depth_of, layer_key

COLORS = {"bn": "tab:blue", "nobn": "tab:orange"}
ACTIVATION_NAMES = {"relu": "ReLU", "tanh": "tanh", "sigmoid": "sigmoid"}


def dress(ax: Axes, title: str = "", xlabel: str = "", ylabel: str = "",
          legend: float | None = None, **grid: Any) -> None:  # fmt: skip
    """An axes' title and labels (those given), a light grid (`grid`: its
    options, e.g. axis="y") and a legend at font size `legend`."""
    for setter, text in ((ax.set_title, title), (ax.set_xlabel, xlabel), (ax.set_ylabel, ylabel)):
        if text:
            setter(text)
    ax.grid(alpha=0.3, **grid)
    if legend:
        ax.legend(fontsize=legend)


def square(vector: np.ndarray) -> np.ndarray:
    """A width-long activation vector as the nearest square image (8x8 for 64),
    padded with NaN (drawn blank) when the width is not a square."""
    side = math.ceil(math.sqrt(len(vector)))
    padded = np.full(side * side, np.nan)
    padded[: len(vector)] = vector
    return padded.reshape(side, side)


def activation_grid(
    image: np.ndarray, activations: dict[str, list[np.ndarray]], label: int, index: int
) -> Figure:
    """The seed's picture: the input, then every hidden layer's activations as
    a square grey image; one row per variant, one grey scale per row. A
    diverged network's activations are NaN: its row is blank, and says so."""
    depth = len(next(iter(activations.values())))
    fig = Figure(figsize=(1.3 * (depth + 1) + 0.8, 1.6 * len(activations) + 0.7))
    fig.subplots_adjust(left=0.04, right=1.02, top=0.86, bottom=0.03, wspace=0.12, hspace=0.3)
    axes = fig.subplots(len(activations), depth + 1, squeeze=False)
    for row, (variant, layers) in zip(axes, activations.items(), strict=True):
        top = _finite_max(layers) or 1.0
        row[0].imshow(image, cmap="gray")
        row[0].set_title("input", fontsize=8)
        blank = not any(np.isfinite(a).any() for a in layers)
        row[0].set_ylabel(LABELS[variant] + ("\n(diverged: NaN)" if blank else ""), fontsize=8)
        for number, (ax, vector) in enumerate(zip(row[1:], layers, strict=True), start=1):
            shown = ax.imshow(square(vector), cmap="gray", vmin=0, vmax=top)
            ax.set_title(f"layer {number}", fontsize=8)
        fig.colorbar(shown, ax=row.tolist(), shrink=0.8, label="activation")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Post-ReLU activations per hidden layer, test image {index} (label {label})")
    return fig


def activation_distributions(activations: dict[str, list[np.ndarray]]) -> Figure:
    """Per hidden layer, histograms of the post-ReLU activations of both
    variants over the same test images (log count). NaN values (a diverged
    network's) are left out; a variant with nothing else says so in the legend."""
    depth = len(next(iter(activations.values())))
    cols = min(depth, 5)
    rows = math.ceil(depth / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6))
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.6 / (2.6 * rows + 0.6), bottom=0.08,
                        wspace=0.3, hspace=0.5)  # fmt: skip
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for number, ax in enumerate(axes[:depth], start=1):
        values = {v: layers[number - 1].ravel() for v, layers in activations.items()}
        edges = np.linspace(0, _finite_max(values.values()) or 1.0, 41)
        for variant, everything in values.items():
            x = everything[np.isfinite(everything)]
            zeros = f"{100 * float(np.mean(x == 0)):.0f}% zeros" if x.size else "diverged: NaN"
            counts, _ = np.histogram(x, bins=edges)
            # stairs: one filled outline per histogram, far cheaper to draw than 40 bars
            ax.stairs(
                counts,
                edges,
                fill=True,
                alpha=0.55,
                color=COLORS[variant],
                label=f"{variant} ({zeros})",
            )
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(NullLocator())  # minor log ticks: slow, and clutter
        ax.set_title(f"layer {number}", fontsize=9)
        ax.set_xlabel("activation", fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes[depth:]:
        ax.set_visible(False)
    images = len(next(iter(activations.values()))[0])
    fig.suptitle(f"Distribution of post-ReLU activations over {images} test images")
    return fig


def _finite_max(arrays: Iterable[np.ndarray]) -> float:
    """The largest finite value in any of the arrays; 0 when there is none."""
    return max(
        (float(a[np.isfinite(a)].max()) for a in arrays if np.isfinite(a).any()), default=0.0
    )


def _series(runs: dict[str, list[dict[str, float]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) with one row of values per seed; NaN from a seed's
    divergence on (its network's numbers describe the failure, not training)."""
    first = next(iter(runs.values()))
    epochs = np.array([row["epoch"] for row in first])
    values = [[math.nan if row.get("diverged") or row[key] is None else row[key] for row in rows]
              for rows in runs.values()]  # fmt: skip
    return epochs, np.array(values, dtype=float)


def _finite_mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch (column of `values`, one row per seed), the mean and sample
    std (0 with one seed, as mean_std) over the seeds whose value is finite:
    a diverged seed's NaN leaves it out from its divergence on. The mean is
    NaN (not drawn) where every seed diverged."""
    finite = np.isfinite(values)
    count = finite.sum(0)
    mean = np.where(finite, values, 0.0).sum(0) / np.where(count > 0, count, np.nan)
    squares = np.where(finite, values - mean, 0.0) ** 2
    std = np.sqrt(squares.sum(0) / np.where(count > 1, count - 1, np.nan))
    return mean, np.where(count > 1, std, 0.0)


def training_curves(history: History) -> Figure:
    """Train loss, test loss and test accuracy per epoch; mean across seeds,
    with a band of one standard deviation when there are several. A diverged
    seed's values are NaN from its divergence on: from there the mean is over
    the others (none left: no point), and the legend counts such seeds."""
    fig = Figure(figsize=(13, 3.8))
    fig.subplots_adjust(left=0.06, right=0.98, top=0.84, bottom=0.14, wspace=0.28)
    axes = fig.subplots(1, 3)
    shown = [
        ("train_loss", "train loss (mean over batches)"),
        ("test_loss", "test loss"),
        ("test_accuracy", "test accuracy (%)"),
    ]
    for ax, (key, ylabel) in zip(axes, shown, strict=True):
        for variant, runs in history.items():
            epochs, values = _series(runs, key)
            scale = 100 if key == "test_accuracy" else 1
            mean, std = (scale * x for x in _finite_mean_std(values))
            ax.plot(epochs, mean, marker="o", color=COLORS[variant], label=_seeds(variant, runs))
            if len(runs) > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=COLORS[variant], alpha=0.2)
        dress(ax, ylabel.split(" (")[0].capitalize(), "epoch", ylabel, legend=8)
    fig.suptitle("Training curves")
    return fig


def _seeds(variant: str, runs: dict[str, list[dict]]) -> str:
    """ "with BatchNorm (3 seeds, 1 diverged)"."""
    diverged = sum(bool(rows[-1].get("diverged")) for rows in runs.values())
    return f"{LABELS[variant]} ({len(runs)} seed{'s' * (len(runs) > 1)}" + (
        f", {diverged} diverged)" if diverged else ")"
    )


def layer_diagnostics(history: History) -> Figure:
    """Per hidden layer over the epochs: the mean weight-gradient norm and the
    fraction of dead units; one column per variant, one line per layer. Means
    are over the seeds that have not diverged (see _finite_mean_std)."""
    variants = list(history)
    fig = Figure(figsize=(6 * len(variants), 7))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.08, wspace=0.12, hspace=0.3)
    axes = fig.subplots(2, len(variants), squeeze=False, sharey="row")
    depth = depth_of(next(iter(history[variants[0]].values()))[0])
    colors = [_viridis(i / max(depth - 1, 1)) for i in range(depth)]
    rows = [("grad_norm", "weight-gradient L2 norm"), ("dead_fraction", "dead units (fraction)")]
    for (metric, ylabel), axes_row in zip(rows, axes, strict=True):
        for ax, variant in zip(axes_row, variants, strict=True):
            for layer in range(1, depth + 1):
                epochs, values = _series(history[variant], layer_key(layer, metric))
                mean, _ = _finite_mean_std(values)
                ax.plot(epochs, mean, color=colors[layer - 1], label=f"layer {layer}")
            dress(ax, f"{ylabel.split(' (')[0]}, {LABELS[variant]}", "epoch", ylabel)
            if metric == "grad_norm":
                ax.set_yscale("log")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.suptitle("Per-layer diagnostics (mean across seeds)")
    return fig


def _viridis(fraction: float) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["viridis"](fraction)


def confusion_matrices(confusions: dict[str, np.ndarray]) -> Figure:
    """One confusion matrix per variant, counts written in the cells."""
    fig = Figure(figsize=(6 * len(confusions), 5.2))
    fig.subplots_adjust(left=0.06, right=0.98, top=0.86, bottom=0.1, wspace=0.15)
    axes = fig.subplots(1, len(confusions), squeeze=False)[0]
    for ax, (variant, matrix) in zip(axes, confusions.items(), strict=True):
        shown = ax.imshow(np.log1p(matrix), cmap="Blues")
        for (true, predicted), count in np.ndenumerate(matrix):
            dark = np.log1p(count) > 0.6 * np.log1p(matrix.max())
            ax.text(
                predicted,
                true,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
        accuracy = 100 * np.trace(matrix) / matrix.sum()
        ax.set_title(f"{LABELS[variant]}: {accuracy:.2f}% correct")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(range(len(matrix)))
        ax.set_yticks(range(len(matrix)))
        fig.colorbar(shown, ax=ax, shrink=0.8, label="log(1 + count)")
    fig.suptitle("Confusion matrices on the test set (summed over seeds)")
    return fig


PERCENTILE_COLORS = {15: "tab:green", 50: "black", 85: "tab:purple"}


def input_percentiles(history: History, activation: str, layer: int | None = None) -> Figure:
    """The BatchNorm paper's Figure 1(b, c): over the epochs, the 15th, 50th
    and 85th percentiles of the activation's input of the fixed unit
    (diagnostics.TYPICAL_UNIT) in one hidden layer (default: the last), over
    the test images; one panel per variant, a shared y axis, one thin line
    per seed and percentile. A diverged seed's line stops where it diverged.
    Dashed: the edges of the activation's flat region (ReLU: 0)."""
    from pipeline.nn.diagnostics import TYPICAL_UNIT, flat_threshold

    variants = list(history)
    layer = layer or depth_of(next(iter(history[variants[0]].values()))[0])
    fig = Figure(figsize=(5.5 * len(variants), 4.2))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.13, wspace=0.06)
    axes = fig.subplots(1, len(variants), squeeze=False, sharey=True)[0]
    edge = flat_threshold(activation)
    for ax, variant in zip(axes, variants, strict=True):
        runs = history[variant]
        for q, color in PERCENTILE_COLORS.items():
            epochs, values = _series(runs, layer_key(layer, f"unit_p{q}"))
            for number, seed in enumerate(values):
                ax.plot(epochs, seed, color=color, lw=0.9, alpha=0.75,
                        label=f"{q}th percentile" if number == 0 else None)  # fmt: skip
        for y in sorted({-edge, edge}):
            ax.axhline(y, color="0.5", lw=0.8, ls="--")
        dress(ax, _seeds(variant, runs), "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(f"input of {ACTIVATION_NAMES[activation]}")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{ACTIVATION_NAMES[activation]} input of unit {TYPICAL_UNIT}, hidden layer {layer}: "
        "15th, 50th, 85th percentiles over the test images, every seed"
    )
    return fig


def input_gradients(history: History) -> Figure:
    """Per hidden layer (first to last), the gradient norm at the activation's
    input after the last epoch, one thin line per seed, coloured by variant,
    on a log scale: a gradient vanishing toward the input falls to the left.
    Diverged seeds are left out (their numbers are null)."""
    fig = Figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.13, right=0.97, top=0.88, bottom=0.13)
    ax = fig.subplots()
    for variant, runs in history.items():
        finals = [rows[-1] for rows in runs.values() if not rows[-1].get("diverged")]
        layers = np.arange(1, depth_of(next(iter(runs.values()))[-1]) + 1)
        for number, row in enumerate(finals):
            values = [row[layer_key(k, "input_grad_norm")] for k in layers]
            ax.plot(layers, [math.nan if v is None else v for v in values], color=COLORS[variant],
                    lw=0.9, marker=".", label=f"{LABELS[variant]}, one line per seed"
                    if number == 0 else None)  # fmt: skip
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    dress(ax, "", "hidden layer (input side first)", "gradient norm at the activation's input", 8)
    fig.suptitle("Gradient at each layer's activation input, last epoch")
    return fig
