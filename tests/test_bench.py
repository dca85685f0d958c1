"""The benchmark's report (its timings are measured, not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import bench, paths

from .conftest import REPO, write_synthetic_idx


def test_bench_prints_medians_and_ratio_as_json_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    write_synthetic_idx(tmp_path / paths.MNIST_RAW_DIR, n_train=96, n_test=32)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(depth=2, width=8)
    params["train"].update(batch_size=16, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()  # what train.cpu_threads: 0 keeps
    bench.main(["--repeats", "2", "--seeds", "3", "--step-batch-sizes", "8", "--steps", "3"])
    assert torch.get_num_threads() == threads  # put back
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["device"] == "cpu" and result["variant"] == "bn" and result["repeats"] == 2
    assert result["seeds"] == 3 and result["threads_one_seed"] == 1
    assert result["threads_seeds"] == threads
    for key in ("baseline_epoch_s", "project_epoch_s", "project_autograd_epoch_s",
                "project_no_diagnostics_epoch_s", "project_seeds_epoch_s"):  # fmt: skip
        assert result[key] > 0
    assert {"speedup", "manual_backward_speedup", "diagnostics_overhead", "seeds_ratio"} <= set(
        result
    )
    assert any(line.startswith("3 stacked seeds") for line in lines)
    # the step prices: both variants at the asked batch size and the train stage's
    assert set(result["stacked_step_ms"]) == {"bn", "nobn"}
    for prices in result["stacked_step_ms"].values():
        assert set(prices) == {"8", "16"} and all(ms > 0 for ms in prices.values())
    steps = result["stacked_step_ms"]
    assert result["bn_over_nobn"] == pytest.approx(steps["bn"]["16"] / steps["nobn"]["16"], 1e-2)
    assert lines[0].startswith("baseline (DataLoader) median")


def test_compare_takes_medians_and_ratios() -> None:
    times = {
        "baseline": [7.0, 6.0, 30.0],  # one slow outlier: the median ignores it
        "project": [2.1, 2.0, 1.9],
        "project_autograd": [3.0, 3.1, 2.9],
        "project_no_diagnostics": [1.8, 1.9, 2.0],
        "project_seeds": [4.6, 4.4, 4.5],
    }
    assert bench.compare(times) == {
        "baseline_epoch_s": 7.0,
        "project_epoch_s": 2.0,
        "project_autograd_epoch_s": 3.0,
        "project_no_diagnostics_epoch_s": 1.9,
        "speedup": 3.5,
        "manual_backward_speedup": 1.5,
        "diagnostics_overhead": 0.053,
        "project_seeds_epoch_s": 4.5,
        "seeds_ratio": 2.25,
    }


def test_step_prices_are_medians_per_variant_and_batch() -> None:
    times = {  # seconds per step, per round
        ("bn", 16): [0.0020, 0.0030, 0.0021],
        ("nobn", 16): [0.0015, 0.0014, 0.0016],
        ("bn", 64): [0.0040, 0.0042, 0.0041],
        ("nobn", 64): [0.0030, 0.0031, 0.0100],  # a slow round: the median ignores it
    }
    assert bench.step_prices(times, 64) == {
        "stacked_step_ms": {"bn": {"16": 2.1, "64": 4.1}, "nobn": {"16": 1.5, "64": 3.1}},
        "bn_over_nobn": 1.323,
    }
