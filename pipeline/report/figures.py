"""The report's figures, as pure functions from numbers to matplotlib Figures.

No pyplot: each function builds its own `Figure`, so nothing global is
touched and no display backend is needed. Colours are fixed per variant.
Margins are set by hand: matplotlib's automatic layouts draw every figure
twice, which doubled the visualize stage's time.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

COLORS = {"bn": "tab:blue", "nobn": "tab:orange"}
LABELS = {"bn": "with BatchNorm", "nobn": "without BatchNorm"}

# history: variant -> seed -> per-epoch rows of metrics (data/models/<v>/history.json)
History = dict[str, dict[str, list[dict[str, float]]]]


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
    a square grey image; one row per variant, one grey scale per row."""
    depth = len(next(iter(activations.values())))
    fig = Figure(figsize=(1.3 * (depth + 1) + 0.8, 1.6 * len(activations) + 0.7))
    fig.subplots_adjust(left=0.04, right=1.02, top=0.86, bottom=0.03, wspace=0.12, hspace=0.3)
    axes = fig.subplots(len(activations), depth + 1, squeeze=False)
    for row, (variant, layers) in zip(axes, activations.items(), strict=True):
        top = max(float(np.max(a)) for a in layers) or 1.0
        row[0].imshow(image, cmap="gray")
        row[0].set_title("input", fontsize=8)
        row[0].set_ylabel(LABELS[variant], fontsize=8)
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
    variants over the same test images (log count)."""
    depth = len(next(iter(activations.values())))
    cols = min(depth, 5)
    rows = math.ceil(depth / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6))
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.6 / (2.6 * rows + 0.6), bottom=0.08,
                        wspace=0.3, hspace=0.5)  # fmt: skip
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for number, ax in enumerate(axes[:depth], start=1):
        values = {v: layers[number - 1].ravel() for v, layers in activations.items()}
        edges = np.linspace(0, max(float(x.max()) for x in values.values()) or 1.0, 41)
        for variant, x in values.items():
            zeros = float(np.mean(x == 0))
            counts, _ = np.histogram(x, bins=edges)
            # stairs: one filled outline per histogram, far cheaper to draw than 40 bars
            ax.stairs(
                counts,
                edges,
                fill=True,
                alpha=0.55,
                color=COLORS[variant],
                label=f"{variant} ({100 * zeros:.0f}% zeros)",
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


def _series(runs: dict[str, list[dict[str, float]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) with one row of values per seed."""
    first = next(iter(runs.values()))
    epochs = np.array([row["epoch"] for row in first])
    return epochs, np.array([[row[key] for row in rows] for rows in runs.values()])


def training_curves(history: History) -> Figure:
    """Train loss, test loss and test accuracy per epoch; mean across seeds,
    with a band of one standard deviation when there are several."""
    fig = Figure(figsize=(13, 3.8))
    fig.subplots_adjust(left=0.06, right=0.98, top=0.84, bottom=0.14, wspace=0.28)
    axes = fig.subplots(1, 3)
    panels = [
        ("train_loss", "train loss (mean over batches)"),
        ("test_loss", "test loss"),
        ("test_accuracy", "test accuracy (%)"),
    ]
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        for variant, runs in history.items():
            epochs, values = _series(runs, key)
            scale = 100 if key == "test_accuracy" else 1
            mean = scale * values.mean(0)
            std = scale * values.std(0, ddof=1) if len(values) > 1 else 0 * mean  # as mean_std
            label = f"{LABELS[variant]} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            ax.plot(epochs, mean, marker="o", color=COLORS[variant], label=label)
            if len(runs) > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=COLORS[variant], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" (")[0].capitalize())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Training curves")
    return fig


def layer_diagnostics(history: History) -> Figure:
    """Per hidden layer over the epochs: the mean weight-gradient norm and the
    fraction of dead units; one column per variant, one line per layer."""
    variants = list(history)
    fig = Figure(figsize=(6 * len(variants), 7))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.08, wspace=0.12, hspace=0.3)
    axes = fig.subplots(2, len(variants), squeeze=False, sharey="row")
    first = next(iter(history[variants[0]].values()))[0]
    depth = sum(1 for key in first if key.endswith("/grad_norm"))
    colors = [_viridis(i / max(depth - 1, 1)) for i in range(depth)]
    rows = [("grad_norm", "weight-gradient L2 norm"), ("dead_fraction", "dead units (fraction)")]
    for (metric, ylabel), axes_row in zip(rows, axes, strict=True):
        for ax, variant in zip(axes_row, variants, strict=True):
            for layer in range(1, depth + 1):
                epochs, values = _series(history[variant], f"layer_{layer:02d}/{metric}")
                ax.plot(epochs, values.mean(0), color=colors[layer - 1], label=f"layer {layer}")
            ax.set_title(f"{ylabel.split(' (')[0]}, {LABELS[variant]}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            if metric == "grad_norm":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
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


def seed_accuracies(
    values: dict[str, list[float]],
    intervals: dict[str, list[float] | None],
    post: dict[str, float],
) -> Figure:
    """Every seed's final test accuracy per variant (dots), their mean and 95%
    CI, a line joining each seed's two models; beside it each seed's gain
    (bn - nobn) with its mean and CI. `values` and `intervals` are fractions
    keyed by bn, nobn and bn_minus_nobn, values in seed order; `post` the
    original post's single-run figures, drawn as stars."""
    fig = Figure(figsize=(10, 4.4))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.14, wspace=0.35)
    accuracy, gain = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    positions = {"bn": 0.0, "nobn": 1.0}
    for a, b in zip(values["bn"], values["nobn"], strict=True):
        accuracy.plot([0, 1], [100 * a, 100 * b], color="0.6", lw=1, zorder=1)
    for variant, x in positions.items():
        dots = [100 * v for v in values[variant]]
        accuracy.scatter([x] * len(dots), dots, color=COLORS[variant], zorder=2,
                         label=f"{variant}: one dot per seed")  # fmt: skip
        _mean_and_interval(accuracy, x + 0.12, values[variant], intervals[variant])
        accuracy.scatter([x - 0.12], [100 * post[variant]], marker="*", s=160, color="black",
                         zorder=3, label="original post (one run)" if variant == "bn" else None,
                         gid="post")  # fmt: skip
    accuracy.set_xticks(list(positions.values()), [LABELS[v] for v in positions])
    accuracy.set_xlim(-0.5, 1.5)
    accuracy.set_ylabel("final test accuracy (%)")
    accuracy.set_title("Per seed, joined by seed")
    accuracy.grid(alpha=0.3, axis="y")
    accuracy.legend(fontsize=7, loc="lower left")
    differences = values["bn_minus_nobn"]
    gain.axhline(0, color="0.4", lw=1, ls="--")
    gain.scatter([0.0] * len(differences), [100 * d for d in differences], color="tab:green",
                 zorder=2)  # fmt: skip
    _mean_and_interval(gain, 0.12, differences, intervals["bn_minus_nobn"])
    gain.scatter([-0.12], [100 * post["bn_minus_nobn"]], marker="*", s=160, color="black",
                 zorder=3, gid="post")  # fmt: skip
    gain.set_xticks([0.0], ["bn - nobn"])
    gain.set_xlim(-0.5, 0.5)
    gain.set_ylabel("gain (points)")
    gain.set_title("BatchNorm's gain per seed")
    gain.grid(alpha=0.3, axis="y")
    seeds = len(differences)
    fig.suptitle(
        f"Final test accuracy of {seeds} seed{'s' if seeds > 1 else ''}: "
        "mean with 95% CI (bars), original post (stars)"
    )
    return fig


def _mean_and_interval(
    ax: Axes, x: float, values: list[float], interval: list[float] | None
) -> None:
    """A diamond at the mean, with the interval as an error bar (none with one seed)."""
    mean = 100 * float(np.mean(values))
    errors = None
    if interval is not None:
        errors = [[mean - 100 * interval[0]], [100 * interval[1] - mean]]
    ax.errorbar([x], [mean], yerr=errors, fmt="D", color="black", capsize=4, zorder=3)
