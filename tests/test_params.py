"""params.yaml validation: every bound, unknown keys, types, YAML errors, exit 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.params import Params, flatten, load_params, parse_params

from .conftest import REPO


def dump(params: dict) -> str:
    return yaml.safe_dump(params, sort_keys=False)


def with_value(params: dict, dotted: str, value: Any) -> dict:
    changed = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[last] = value
    return changed


def problems(text: str) -> list[str]:
    with pytest.raises(ParamsError) as caught:
        parse_params(text)
    return list(caught.value.lines)


def test_committed_params_are_the_seed_experiment() -> None:
    params = load_params(REPO / "params.yaml")
    assert (params.model.depth, params.model.width) == (10, 64)
    train = params.train
    assert (train.epochs, train.batch_size, train.lr) == (9, 64, 0.001)
    assert (train.betas, train.eps, train.weight_decay) == ([0.9, 0.999], 1e-8, 0.0)
    assert (train.seeds, train.device) == ([0, 1, 2, 3, 4], "auto")  # five seeds by default
    assert (params.data.source, params.data.verify) == ("auto", True)
    assert params.tracking.experiment == "batchnorm-mnist"


def numeric_bounds() -> list[tuple[str, str, float]]:
    """(dotted key, bound kind, bound) for every numeric bound of every scalar field."""
    found = []
    for section, section_field in Params.model_fields.items():
        if section == "studies":  # a mapping of named studies: tests/test_study.py
            continue
        for name, field in section_field.annotation.model_fields.items():
            for meta in field.metadata:
                for kind in ("gt", "ge", "lt", "le"):
                    bound = getattr(meta, kind, None)
                    if isinstance(meta, annotated_types.BaseMetadata) and bound is not None:
                        found.append((f"{section}.{name}", kind, bound))
    return found


BOUNDS = numeric_bounds()


def test_bounds_found_for_every_numeric_key() -> None:
    keys = {key for key, _, _ in BOUNDS}
    assert {"model.depth", "model.width", "train.epochs", "train.batch_size", "train.lr"} <= keys
    assert {"train.eps", "train.weight_decay", "data.timeout_s", "visualize.dpi"} <= keys


@pytest.mark.parametrize(("key", "kind", "bound"), BOUNDS, ids=[f"{k}-{b}" for k, b, _ in BOUNDS])
def test_every_bound_rejects_the_value_beyond_and_accepts_the_edge(
    params_dict: dict, key: str, kind: str, bound: float
) -> None:
    integer = isinstance(bound, int) and kind in ("ge", "le")
    step = 1 if integer else max(abs(bound) * 1e-3, 1e-9)
    outside = {"gt": bound, "ge": bound - step, "lt": bound, "le": bound + step}[kind]
    lines = problems(dump(with_value(params_dict, key, outside)))
    assert len(lines) == 1
    assert lines[0].startswith(f"params.yaml: {key} = {outside}: must be ")
    assert str(bound) in lines[0]
    if kind in ("ge", "le"):  # the edge itself is allowed
        parse_params(dump(with_value(params_dict, key, bound)))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.lr", -0.1, "params.yaml: train.lr = -0.1: must be greater than 0"),
        ("train.seeds", [], "params.yaml: train.seeds = []: must have at least 1 item"),
        (
            "train.seeds",
            [3, 1, 3],
            "train.seeds = [3, 1, 3]: must not repeat a seed (repeated: [3])",
        ),
        ("train.seeds", [-1], "train.seeds[0] = -1: must be greater than or equal to 0"),
        ("train.betas", [0.9], "train.betas = [0.9]: must have at least 2 items"),
        ("train.betas", [0.9, 1.0], "train.betas[1] = 1.0: must be less than 1"),
        ("train.betas", [-0.1, 0.9], "train.betas[0] = -0.1: must be greater than or equal to 0"),
        (
            "train.betas",
            [0.9, 0.99, 0.999],
            "train.betas = [0.9, 0.99, 0.999]: must have at most 2",
        ),
        ("train.seeds", [2**31], "train.seeds[0] = 2147483648: must be less than or equal to"),
        ("train.seeds", list(range(101)), "...: must have at most 100 items"),
        ("train.device", "tpu", "train.device = \"tpu\": must be 'auto', 'cpu', 'cuda' or 'mps'"),
        (
            "train.cuda_graph",
            "sometimes",
            "train.cuda_graph = \"sometimes\": must be 'auto', True or False",
        ),
        ("data.source", "s3", "data.source = \"s3\": must be 'auto', 'torchvision', 'pypi'"),
        ("train.epochs", "9", 'train.epochs = "9": must be a valid integer'),
        ("train.epochs", 9.5, "train.epochs = 9.5: must be a valid integer"),
        ("train.epochs", True, "train.epochs = true: must be a valid integer"),
        ("data.verify", "yes", 'data.verify = "yes": must be a valid boolean'),
        ("train.lr", "fast", 'train.lr = "fast": must be a valid number'),
        ("tracking.experiment", "", 'tracking.experiment = "": must have at least 1 character'),
        ("model", 5, "params.yaml: model = 5: must be a mapping of keys"),
        (
            "model.activation",
            "gelu",
            "model.activation = \"gelu\": must be 'relu', 'tanh' or 'sigmoid'",
        ),
        ("model.init_std", 0, "model.init_std = 0: must be greater than 0"),
        ("model.init_std", -1, "model.init_std = -1: must be greater than 0"),
        ("model.init_std", 10.5, "model.init_std = 10.5: must be less than or equal to 10"),
        ("model.init_std", "small", 'model.init_std = "small": must be a valid number'),
        ("model.inputs", "grey", "model.inputs = \"grey\": must be 'scaled' or 'binary'"),
        ("train.optimizer", "rmsprop", "train.optimizer = \"rmsprop\": must be 'adam' or 'sgd'"),
        ("train.momentum", 1.0, "train.momentum = 1.0: must be less than 1"),
        ("train.momentum", -0.1, "train.momentum = -0.1: must be greater than or equal to 0"),
    ],
)
def test_bad_value_is_named_with_what_is_allowed(
    params_dict: dict, key: str, value: Any, expected: str
) -> None:
    lines = problems(dump(with_value(params_dict, key, value)))
    assert len(lines) == 1
    assert expected in lines[0]
    assert lines[0].startswith("params.yaml: ")


MOMENTUM_WITH_ADAM = (
    "params.yaml: train.momentum = 0.9: must be 0 with train.optimizer adam (Adam's momentum "
    "is train.betas); set train.optimizer sgd for SGD with momentum"
)


def test_momentum_with_adam_is_refused_in_one_line(params_dict: dict) -> None:
    bad = with_value(with_value(params_dict, "train.optimizer", "adam"), "train.momentum", 0.9)
    assert problems(dump(bad)) == [MOMENTUM_WITH_ADAM]


@pytest.mark.parametrize(("momentum", "expected"), [
    (1.0, "params.yaml: train.momentum = 1.0: must be less than 1"),
    (-0.1, "params.yaml: train.momentum = -0.1: must be greater than or equal to 0"),
])  # fmt: skip
def test_sgd_momentum_is_below_1_and_not_negative(
    params_dict: dict, momentum: float, expected: str
) -> None:
    sgd = with_value(params_dict, "train.optimizer", "sgd")
    assert problems(dump(with_value(sgd, "train.momentum", momentum))) == [expected]


@pytest.mark.parametrize(("key", "value"), [
    ("train.optimizer", "sgd"), ("model.activation", "relu"), ("model.activation", "tanh"),
    ("model.activation", "sigmoid"), ("model.inputs", "scaled"), ("model.inputs", "binary"),
    ("model.init_std", None), ("model.init_std", 0.1), ("model.init_std", 10),
])  # fmt: skip
def test_each_allowed_setting_is_read_as_written(params_dict: dict, key: str, value: Any) -> None:
    # with SGD, momentum is allowed (and kept); with Adam it must be 0
    sgd = with_value(with_value(params_dict, "train.optimizer", "sgd"), "train.momentum", 0.9)
    params = parse_params(dump(with_value(sgd, key, value)))
    assert flatten(params)[key] == value
    assert (params.train.optimizer, params.train.momentum) == ("sgd", 0.9)


def test_adam_with_zero_momentum_is_accepted(params_dict: dict) -> None:
    adam = with_value(with_value(params_dict, "train.optimizer", "adam"), "train.momentum", 0)
    assert parse_params(dump(adam)).train.momentum == 0


def test_local_source_needs_a_folder(params_dict: dict) -> None:
    params_dict["data"].update(source="local", local_dir=None)
    assert problems(dump(params_dict)) == [
        "params.yaml: data.local_dir = null: must name a folder when data.source is local"
    ]


def test_unknown_key_suggests_the_close_one(params_dict: dict) -> None:
    params_dict["train"]["batchsize"] = params_dict["train"].pop("batch_size")
    lines = problems(dump(params_dict))
    assert any(
        line.startswith(
            "params.yaml: train.batchsize = 64: unknown key; did you mean train.batch_size?"
        )
        for line in lines
    )
    assert "params.yaml: train.batch_size: missing" in "\n".join(lines)


def test_unknown_section_and_unrelated_key(params_dict: dict) -> None:
    params_dict["trian"] = {"epochs": 1}
    params_dict["model"]["colour"] = "red"
    lines = problems(dump(params_dict))
    assert len(lines) == 2
    section = next(line for line in lines if "trian" in line)
    assert "unknown section; did you mean train?" in section
    key = next(line for line in lines if "colour" in line)
    assert 'model.colour = "red": unknown key; allowed: depth, width' in key
    assert "did you mean" not in key


def test_every_problem_gets_its_own_line(params_dict: dict) -> None:
    bad = with_value(with_value(params_dict, "train.lr", 0), "model.depth", 0)
    del bad["evaluate"]
    lines = problems(dump(bad))
    assert sorted(line.split(" ")[1] for line in lines) == ["evaluate:", "model.depth", "train.lr"]


def test_missing_section_is_reported(params_dict: dict) -> None:
    del params_dict["tracking"]
    assert problems(dump(params_dict)) == [
        "params.yaml: tracking: missing: every section and key is required "
        "(see the committed params.yaml)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  depth: [10\n", "params.yaml: line 3, column 1: YAML syntax error: "),
        (
            "model:\n  depth: 1\n  depth: 2\n",
            "line 3, column 3: YAML syntax error: duplicate key 'depth'",
        ),
        ("model: {depth: 1\n", "YAML syntax error"),
        ("", "params.yaml: must be a mapping with the sections data, model, train"),
        ("- 1\n- 2\n", "params.yaml: must be a mapping with the sections"),
    ],
)
def test_yaml_errors_name_file_and_position(text: str, expected: str) -> None:
    lines = problems(text)
    assert len(lines) == 1
    assert expected in lines[0]


def test_exponent_floats_read_the_yaml_1_2_way(params_dict: dict) -> None:
    # DVC (ruamel, YAML 1.2) reads 1e-3 as a float; so must we, or `-S train.lr=1e-3` breaks.
    text = dump(params_dict).replace("lr: 0.001", "lr: 1e-3").replace("eps: 1.0e-08", "eps: 1E-8")
    params = parse_params(text)
    assert (params.train.lr, params.train.eps) == (0.001, 1e-8)


def test_integer_accepted_where_a_float_is_expected(params_dict: dict) -> None:
    assert parse_params(dump(with_value(params_dict, "train.lr", 1))).train.lr == 1.0


def test_flatten_names_every_key_once(params_dict: dict) -> None:
    flat = flatten(parse_params(dump(params_dict)))
    assert flat["train.lr"] == 0.001
    assert flat["model.depth"] == 10
    assert flat["studies"] == parse_params(dump(params_dict)).studies  # one mapping of studies
    assert len(flat) == 1 + sum(len(v) for k, v in params_dict.items() if k != "studies")


@pytest.mark.parametrize(
    "stage", ["download", "train --variant bn", "train --variant nobn", "evaluate", "visualize"]
)
def test_stage_exits_2_before_touching_outputs(
    tmp_path: Path, params_dict: dict, stage: str
) -> None:
    (tmp_path / "params.yaml").write_text(dump(with_value(params_dict, "train.batchsize", 32)))
    sentinel = tmp_path / "data" / "raw" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes(b"previous good output")
    done = subprocess.run(
        [sys.executable, "-m", f"pipeline.{stage.split()[0]}", *stage.split()[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "params.yaml: train.batchsize = 32: unknown key; did you mean train.batch_size? "
        "allowed: epochs, batch_size, optimizer, lr, momentum, betas, eps, weight_decay, seeds, "
        "device, cpu_threads, "
        "cuda_graph"
    ]
    assert "Traceback" not in done.stderr
    assert sentinel.read_bytes() == b"previous good output"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


@pytest.mark.parametrize(("changes", "expected"), [
    ({"train.optimizer": "adam", "train.momentum": 0.9}, MOMENTUM_WITH_ADAM),
    ({"model.activation": "gelu"},
     "params.yaml: model.activation = \"gelu\": must be 'relu', 'tanh' or 'sigmoid'"),
], ids=["momentum-with-adam", "activation-gelu"])  # fmt: skip
def test_training_with_a_bad_new_setting_exits_2_before_touching_outputs(
    tmp_path: Path, params_dict: dict, changes: dict, expected: str
) -> None:
    for key, value in changes.items():
        params_dict = with_value(params_dict, key, value)
    (tmp_path / "params.yaml").write_text(dump(params_dict))
    sentinel = tmp_path / "data" / "models" / "bn" / "seed0.pt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes(b"previous good output")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--variant", "bn"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [expected]
    assert sentinel.read_bytes() == b"previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]


def test_missing_params_file_is_a_params_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
