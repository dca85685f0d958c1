"""Stage `visualize`: the figures under reports/figures/ and the report.

Reads the checkpoints and training histories of both variants, the
evaluation (reports/statistics.json, reports/evaluation.json) and the test
images; writes six PNG figures (eight when the histories have the
diagnostics of the activations' inputs), reports/report.md and the
self-contained reports/report.html, and attaches figures and report to each variant's
parent run in MLflow.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pipeline import lineage, paths, tracking
from pipeline.cli import run_stage, stage_parser
from pipeline.data.mnist import load_split, scale_images
from pipeline.errors import ParamsError
from pipeline.files import atomic_write_text, read_json, save_figure
from pipeline.nn.checkpoint import checkpoints_of, load_checkpoint
from pipeline.nn.model import VARIANTS, DeepMLP
from pipeline.params import VisualizeParams, load_params
from pipeline.report import comparison, document, figures, inputs, original_post
from pipeline.results import Statistics

log = logging.getLogger("visualize")
RETRAIN = "run `dvc repro train_bn train_nobn`"


@torch.no_grad()
def layer_activations(model: DeepMLP, x: torch.Tensor) -> list[np.ndarray]:
    """Each hidden layer's post-ReLU output for the images x: (N, width) arrays."""
    model.eval()
    return [a.numpy() for a in model.forward_with_activations(x)[1]]


def input_figures(history: figures.History, model: dict) -> dict[str, Figure]:
    """The figures of the activations' inputs (the BatchNorm paper's Figure
    1(b, c), the gradient at each layer's activation input); none where the
    histories come from code that did not log them."""
    if not inputs.has_diagnostics(history):
        return {}
    # checkpoints from before the activation was a parameter trained ReLU networks
    activation = model.get("activation", "relu")
    return {
        "input_percentiles": figures.input_percentiles(history, activation),
        "input_gradients": figures.input_gradients(history),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_params(args.params)
    uri = tracking.tracking_uri(os.environ, Path.cwd())
    # MLflow loads while we draw; a refused login fails here, before any reading.
    tracker = tracking.Tracker(uri, params.tracking.experiment)
    draw_all(params.visualize, tracker)


def draw_all(params: VisualizeParams, tracker: tracking.Tracker) -> None:
    """Draw the figures, write the report, then log them to each parent run."""
    images, labels = load_split(paths.RAW_DIR, train=False)
    if params.sample_index >= len(images):
        raise ParamsError(
            f"params.yaml: visualize.sample_index = {params.sample_index}: "
            f"must be less than {len(images)}, the number of test images"
        )
    # The first seed's model of each variant shows what a single network does.
    loaded = {
        v: load_checkpoint(next(iter(checkpoints_of(paths.MODELS_DIR / v).values())))
        for v in VARIANTS
    }
    sample = scale_images(images[params.sample_index : params.sample_index + 1])
    batch = scale_images(images[: params.distribution_images])
    history = {v: read_json(paths.MODELS_DIR / v / paths.HISTORY_NAME, RETRAIN) for v in VARIANTS}
    evaluation = read_json(paths.EVALUATION_FILE, "run `dvc repro evaluate`")
    statistics = Statistics.from_json(read_json(paths.STATISTICS_FILE, "run `dvc repro evaluate`"))
    confusions = {
        v: np.sum([np.array(s["confusion"]) for s in evaluation[v].values()], axis=0)
        for v in VARIANTS
    }
    drawn = {
        "activations": figures.activation_grid(
            images[params.sample_index].numpy(),
            {v: [a[0] for a in layer_activations(m, sample)] for v, (m, _) in loaded.items()},
            int(labels[params.sample_index]),
            params.sample_index,
        ),
        "activation_distributions": figures.activation_distributions(
            {v: layer_activations(m, batch) for v, (m, _) in loaded.items()}
        ),
        "training_curves": figures.training_curves(history),
        "layer_diagnostics": figures.layer_diagnostics(history),
        **input_figures(history, loaded["bn"][1]["params"]["model"]),
        "confusion_matrices": figures.confusion_matrices(confusions),
        "seed_accuracies": original_post.seed_accuracies(statistics),
    }
    written = []
    for name, fig in drawn.items():
        written.append(paths.FIGURES_DIR / f"{name}.png")
        save_figure(fig, written[-1], params.dpi)
    checkpoint = loaded["bn"][1]
    context = comparison.Context(
        params=checkpoint["params"],
        digests=checkpoint["data_sha256"],
        # the commit the models were trained at (reports may be drawn later)
        commit=checkpoint.get("git_commit") or lineage.git_commit(Path.cwd()) or "unknown",
        device=checkpoint["device"],
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        statistics=statistics,
        evaluation=evaluation,
        history=history,
        figures={
            n: str(p.relative_to(paths.REPORTS_DIR)) for n, p in zip(drawn, written, strict=True)
        },
    )
    blocks = comparison.build(context)
    atomic_write_text(paths.REPORT_MD, document.render_markdown(blocks))
    atomic_write_text(paths.REPORT_HTML, document.render_html(blocks, paths.REPORTS_DIR))
    log.info("wrote %d figures, %s and %s", len(written), paths.REPORT_MD, paths.REPORT_HTML)
    for variant in VARIANTS:  # on the parent runs, one level above each seed's run
        parent = lineage.recorded_parent(paths.MODELS_DIR / variant / paths.RUNS_NAME)
        tracker.log_to_run(parent, files=[*written, paths.REPORT_HTML], folder="report")


if __name__ == "__main__":
    run_stage(main)
