"""The train stage end to end on synthetic data, logging into a temporary MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import paths
from pipeline.data import mnist
from pipeline.data.mnist import verified_digests
from pipeline.errors import PipelineError
from pipeline.nn.checkpoint import load_checkpoint
from pipeline.nn.device import select_device
from pipeline.params import parse_params, with_overrides
from pipeline.train import setting

from .conftest import run_stages

EPOCHS, SEEDS = 2, [0, 1]


def runs_file(workspace: Path, variant: str) -> dict:
    return json.loads((workspace / paths.MODELS_DIR / variant / paths.RUNS_NAME).read_text())


@pytest.mark.parametrize("variant", ["bn", "nobn"])
def test_outputs_per_variant(workspace: Path, variant: str) -> None:
    out = workspace / paths.MODELS_DIR / variant
    assert sorted(p.name for p in out.iterdir()) == [
        "history.json",
        "mlflow_runs.json",
        "seed0.pt",
        "seed1.pt",
    ]
    history = json.loads((out / "history.json").read_text())
    assert sorted(history) == ["0", "1"]
    assert [row["epoch"] for row in history["0"]] == [1, 2]
    summary = json.loads((workspace / paths.TRAIN_REPORTS_DIR / f"{variant}.json").read_text())
    finals = [history[s][-1]["test_accuracy"] for s in ("0", "1")]
    assert summary["test_accuracy"] == pytest.approx(sum(finals) / 2)
    # sample std of two values: |a - b| / sqrt(2)
    assert summary["test_accuracy_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
    assert summary["per_seed"]["1"]["test_loss"] == history["1"][-1]["test_loss"]
    plots = (workspace / paths.TRAIN_REPORTS_DIR / f"{variant}.csv").read_text().splitlines()
    header = plots[0].split(",")
    assert header[:5] == ["epoch", "train_loss", "test_loss", "test_accuracy", "epoch_seconds"]
    assert "layer_03/dead_fraction" in header
    assert len(plots) == 1 + EPOCHS
    last = dict(zip(header, plots[-1].split(","), strict=True))
    assert float(last["test_accuracy"]) == pytest.approx(summary["test_accuracy"])


@pytest.mark.parametrize("variant", ["bn", "nobn"])
def test_checkpoint_describes_itself(workspace: Path, variant: str) -> None:
    _, checkpoint = load_checkpoint(workspace / paths.MODELS_DIR / variant / "seed1.pt")
    assert checkpoint["model_config"] == {"depth": 3, "width": 16, "batchnorm": variant == "bn",
                                          "activation": "relu", "init_std": None,
                                          "inputs": "scaled"}  # fmt: skip
    assert (checkpoint["variant"], checkpoint["seed"], checkpoint["epoch"]) == (variant, 1, EPOCHS)
    assert checkpoint["params"]["train"]["lr"] == 0.01
    assert checkpoint["data_sha256"] == mnist.file_digests(workspace / paths.MNIST_RAW_DIR)
    assert checkpoint["mlflow_run_id"] == runs_file(workspace, variant)["runs"]["1"]["run_id"]
    history = json.loads((workspace / paths.MODELS_DIR / variant / "history.json").read_text())
    assert checkpoint["metrics"]["test_accuracy"] == history["1"][-1]["test_accuracy"]


def test_one_parent_run_per_variant_with_a_nested_run_per_seed(workspace: Path, client) -> None:
    experiment = client.get_experiment_by_name("stage-test")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["bn", "bn-seed0", "bn-seed1", "nobn", "nobn-seed0", "nobn-seed1"]
    for name, run in runs.items():
        variant, _, seed = name.partition("-seed")
        assert run.info.status == "FINISHED"
        assert run.data.tags["variant"] == variant
        assert run.data.tags["pipeline_run_id"] == "test-execution"
        assert run.data.tags["device"].startswith("cpu")
        assert run.data.tags["mlflow.source.name"] == "pipeline.train"  # the module, not its file
        assert run.data.params["train.lr"] == "0.01"
        assert run.data.params["model.depth"] == "3"
        assert "visualize.dpi" not in run.data.params  # only the sections training uses
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "mnist"
        if seed:
            assert run.data.tags["seed"] == seed
            assert run.data.tags["mlflow.parentRunId"] == runs[variant].info.run_id
            kind = "BatchNorm" if variant == "bn" else "No-BatchNorm"
            assert run.data.tags["mlflow.note.content"] == (
                f"{kind} variant, seed {seed}: 3 x 16 relu, Adam lr 0.01, 2 epochs of batch 32"
            )
            assert run.data.params["model.activation"] == "relu"
        else:
            assert "mlflow.parentRunId" not in run.data.tags
            assert run.data.tags["seeds"] == "0, 1"
            assert run.data.tags["mlflow.note.content"].endswith(
                "variant, 2 seeds (0, 1) trained together: 3 x 16 relu, Adam lr 0.01, 2 epochs of "
                "batch 32; one nested run per seed"
            )
    record = runs_file(workspace, "bn")
    assert record["parent_run_id"] == runs["bn"].info.run_id
    assert record["runs"]["1"]["run_id"] == runs["bn-seed1"].info.run_id


@pytest.mark.parametrize("variant", ["bn", "nobn"])
def test_the_parent_logs_the_mean_and_std_across_seeds_per_epoch(
    workspace: Path, client, variant: str
) -> None:
    parent = runs_file(workspace, variant)["parent_run_id"]
    history = json.loads((workspace / paths.MODELS_DIR / variant / "history.json").read_text())
    for key in ("train_loss", "test_loss", "test_accuracy"):
        means = client.get_metric_history(parent, f"{key}_mean")
        stds = client.get_metric_history(parent, f"{key}_std")
        assert [p.step for p in means] == [1, 2] and [p.step for p in stds] == [1, 2]
        for epoch in (0, 1):
            values = [history[seed][epoch][key] for seed in ("0", "1")]
            assert means[epoch].value == pytest.approx(sum(values) / 2)
            assert stds[epoch].value == pytest.approx(abs(values[0] - values[1]) / 2**0.5)


@pytest.mark.parametrize("variant", ["bn", "nobn"])
def test_metric_history_has_one_point_per_epoch(workspace: Path, client, variant: str) -> None:
    run_id = runs_file(workspace, variant)["runs"]["0"]["run_id"]
    history = json.loads((workspace / paths.MODELS_DIR / variant / "history.json").read_text())
    for name in (
        "train_loss",
        "test_loss",
        "test_accuracy",
        "epoch_seconds",
        "layer_01/grad_norm",
        "layer_03/dead_fraction",
    ):
        points = client.get_metric_history(run_id, name)
        assert [p.step for p in points] == [1, 2], name
        assert [p.value for p in points] == pytest.approx([row[name] for row in history["0"]])


def test_checkpoints_and_data_lineage_are_artifacts(workspace: Path, client) -> None:
    run_id = runs_file(workspace, "bn")["runs"]["1"]["run_id"]
    checkpoints = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert checkpoints == ["checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"]
    last = Path(client.download_artifacts(run_id, "checkpoints/epoch_002.pt"))
    logged, _ = load_checkpoint(last)
    final, _ = load_checkpoint(workspace / paths.MODELS_DIR / "bn" / "seed1.pt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(logged.state_dict().values(), final.state_dict().values(), strict=True)
    )
    digests = json.loads(Path(client.download_artifacts(run_id, "data/digests.json")).read_text())
    assert digests["sha256"] == mnist.file_digests(workspace / paths.MNIST_RAW_DIR)
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith((workspace / "store" / "mlruns").as_uri())


def test_the_train_summary_holds_each_layers_final_diagnostics(workspace: Path) -> None:
    summary = json.loads((workspace / paths.TRAIN_REPORTS_DIR / "nobn.json").read_text())
    history = json.loads((workspace / paths.MODELS_DIR / "nobn" / "history.json").read_text())
    for key in ("dead_fraction", "grad_norm"):
        expected = [
            sum(history[seed][-1][f"layer_{k:02d}/{key}"] for seed in ("0", "1")) / 2
            for k in (1, 2, 3)
        ]
        assert summary["layers"][key] == pytest.approx(expected)


def test_training_refuses_data_that_changed(workspace: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(workspace / paths.RAW_DIR, raw)
    recorded = verified_digests(raw, verify=False)
    assert recorded == mnist.file_digests(raw / paths.MNIST_SUBDIR)
    with (raw / paths.MNIST_SUBDIR / "train-images-idx3-ubyte").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff")  # one flipped byte
    with (raw / paths.MNIST_SUBDIR / "t10k-labels-idx1-ubyte").open("r+b") as f:
        f.truncate(50)
    with pytest.raises(PipelineError) as caught:
        verified_digests(raw, verify=False)
    lines = caught.value.lines
    assert len(lines) == 3
    assert lines[0].startswith(str(raw / paths.MNIST_SUBDIR / "train-images-idx3-ubyte"))
    assert "differs from" in lines[0] and recorded["train-images-idx3-ubyte"] in lines[0]
    assert lines[1].startswith(str(raw / paths.MNIST_SUBDIR / "t10k-labels-idx1-ubyte"))
    assert "dvc checkout data/raw" in lines[-1] and "dvc repro -f download" in lines[-1]


def test_verify_also_demands_the_canonical_files(workspace: Path) -> None:
    # the workspace's synthetic digits match what download recorded, but are not MNIST
    with pytest.raises(PipelineError, match="does not match the canonical"):
        verified_digests(workspace / paths.RAW_DIR, verify=True)


def test_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="missing; run `dvc repro download`"):
        verified_digests(tmp_path, verify=True)


def test_auto_device_is_cpu_here_and_a_missing_device_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert select_device("auto").type in ("cpu", "mps")
    with pytest.raises(PipelineError, match=r"train\.device = cuda: no cuda device"):
        select_device("cuda")


def test_same_params_give_bit_identical_checkpoints(workspace: Path, tmp_path: Path) -> None:
    # On one machine and kernel set: the same kernels on the same numbers.
    # Training switches from one thread to all (CoresForTheHelper) at a batch
    # that depends on timing; at these sizes the kernels split their work
    # between threads without splitting a sum (seen: one and two threads give
    # the same bits for the seed network), which this test would catch if not.
    run_stages(tmp_path, ["train_bn"])
    for seed in SEEDS:
        again, _ = load_checkpoint(tmp_path / paths.MODELS_DIR / "bn" / f"seed{seed}.pt")
        first, _ = load_checkpoint(workspace / paths.MODELS_DIR / "bn" / f"seed{seed}.pt")
        for (name, a), b in zip(
            first.state_dict().items(), again.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name


def test_a_runs_description_names_the_papers_setting(params_dict: dict) -> None:
    paper = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())["paper"]
    params = with_overrides(parse_params(yaml.safe_dump(params_dict)),
                            paper["fixed"] | {"train.lr": 1.0, "train.momentum": 0.9})  # fmt: skip
    assert setting(params) == (
        "3 x 100 sigmoid, weights N(0, 0.1^2), binary inputs, SGD lr 1 momentum 0.9, "
        "50 epochs of batch 60"
    )
