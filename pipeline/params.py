"""Typed mirror of params.yaml: the pipeline's only configuration.

Every section and key is required, unknown keys fail, and values are checked
once, at start-up, before any stage touches an output. A bad file becomes a
`ParamsError` with one line per problem, e.g.
`params.yaml: train.lr = -0.1: must be greater than 0`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from pipeline.errors import ParamsError

PositiveFloat = Annotated[float, Field(gt=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Depth = Annotated[int, Field(ge=1, le=100)]  # hidden blocks


def no_repeats(values: list[int], what: str) -> list[int]:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"must not repeat a {what} (repeated: {repeated})")
    return values


class Section(BaseModel):
    # strict: `epochs: "9"` or `verify: 1` is a mistake, not something to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    source: Literal["auto", "torchvision", "pypi", "local"]
    local_dir: str | None  # relative paths are relative to the repository root
    verify: bool
    timeout_s: Annotated[float, Field(gt=0, le=300)]

    @field_validator("local_dir")
    @classmethod
    def local_needs_a_folder(cls, local_dir: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("source") == "local" and not local_dir:
            raise ValueError("must name a folder when data.source is local")
        return local_dir


class ModelParams(Section):
    depth: Depth
    width: Annotated[int, Field(ge=1, le=4096)]


class TrainParams(Section):
    epochs: Annotated[int, Field(ge=1, le=1000)]
    batch_size: Annotated[int, Field(ge=2, le=60000)]  # BatchNorm needs 2 samples
    lr: Annotated[float, Field(gt=0, le=10_000)]  # huge values are allowed: divergence is caught
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)]
    eps: Annotated[PositiveFloat, Field(le=1)]
    weight_decay: Annotated[float, Field(ge=0, le=1)]
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=100)]
    device: Literal["auto", "cpu", "cuda", "mps"]
    cpu_threads: Annotated[int, Field(ge=0, le=1024)]  # 0: torch's default
    cuda_graph: Literal["auto", True, False]  # auto: on for CUDA, off elsewhere

    @field_validator("seeds")
    @classmethod
    def seeds_unique(cls, seeds: list[int]) -> list[int]:
        return no_repeats(seeds, "seed")


class EvaluateParams(Section):
    batch_size: Annotated[int, Field(ge=1, le=100000)]


class VisualizeParams(Section):
    sample_index: Annotated[int, Field(ge=0)]
    distribution_images: Annotated[int, Field(ge=1, le=100000)]
    dpi: Annotated[int, Field(ge=30, le=600)]


class TrackingParams(Section):
    experiment: Annotated[str, Field(min_length=1, max_length=200)]
    log_model: bool


class StudyParams(Section):
    """`make study` (pipeline/study.py); no stage of `dvc repro` reads it."""

    depths: Annotated[list[Depth], Field(min_length=2, max_length=50)]  # a study: 2 or more

    @field_validator("depths")
    @classmethod
    def depths_unique(cls, depths: list[int]) -> list[int]:
        return sorted(no_repeats(depths, "depth"))


class Params(Section):
    data: DataParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    visualize: VisualizeParams
    tracking: TrackingParams
    study: StudyParams


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads floats the YAML 1.2 way, as DVC does (`1e-3` is a
    float, not a string), and rejects a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def flatten(params: BaseModel, prefix: str = "") -> dict[str, Any]:
    """`{"train.lr": 0.001, ...}`: the form MLflow params and error messages use."""
    flat: dict[str, Any] = {}
    for name, value in params:
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            flat.update(flatten(value, f"{key}."))
        else:
            flat[key] = value
    return flat


def parse_params(text: str, source: str = "params.yaml") -> Params:
    """Validate the text of a params file; raise ParamsError listing every problem."""
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        raise ParamsError(f"{source}: {_describe_yaml_error(err)}") from None
    if not isinstance(raw, dict):
        sections = ", ".join(Params.model_fields)
        raise ParamsError(f"{source}: must be a mapping with the sections {sections}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = [_describe(error) for error in err.errors()]
        raise ParamsError(*(f"{source}: {p}" for p in problems)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and check the params file, including that data.local_dir exists."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run stages from the repository root)") from None
    params = parse_params(text, str(path))
    data = params.data
    if data.source == "local" and not local_folder(data.local_dir or "", os.environ).is_dir():
        raise ParamsError(
            f"{path}: data.local_dir = {_show(data.local_dir)}: no such folder "
            "(a relative path starts at the repository root)"
        )
    return params


def local_folder(local_dir: str, environ: Mapping[str, str]) -> Path:
    """data.local_dir as a path; a relative one is taken from the repository
    root, also when DVC runs a stage in a temporary copy (DVC_ROOT names it)."""
    folder = Path(local_dir).expanduser()
    return folder if folder.is_absolute() else Path(environ.get("DVC_ROOT") or ".") / folder


def _describe_yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(err, "problem", None) or str(err)
    return f"{where}YAML syntax error: {problem}"


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    shown = json.dumps(value, default=str)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        sub = field.annotation if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = _dotted(loc)
    kind = error["type"]
    if kind == "missing":
        return f"{key}: missing: every section and key is required (see the committed params.yaml)"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        what = "section" if len(loc) == 1 else "key"
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        parent = _dotted(loc[:-1])
        prefix = f"{parent}." if parent else ""
        suggestion = f"did you mean {prefix}{hint[0]}? " if hint else ""
        return (
            f"{key} = {_show(error['input'])}: unknown {what}; {suggestion}"
            f"allowed: {', '.join(allowed)}"
        )
    if kind in ("model_type", "dict_type"):
        return f"{key} = {_show(error['input'])}: must be a mapping of keys"
    message = re.sub(r"^\w+ should", "must", error["msg"])
    message = message.removeprefix("Value error, ")
    message = re.sub(r" after validation, not \d+$", "", message)
    return f"{key} = {_show(error['input'])}: {message}"
