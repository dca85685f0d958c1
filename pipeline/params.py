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
import typing
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
    model_validator,
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
    activation: Literal["relu", "tanh", "sigmoid"]
    init_std: Annotated[float, Field(gt=0, le=10)] | None  # None: PyTorch's default init
    inputs: Literal["scaled", "binary"]  # x/255, or pixels above half intensity as 1


class TrainParams(Section):
    epochs: Annotated[int, Field(ge=1, le=1000)]
    batch_size: Annotated[int, Field(ge=2, le=60000)]  # BatchNorm needs 2 samples
    optimizer: Literal["adam", "sgd"]
    lr: Annotated[float, Field(gt=0, le=10_000)]  # huge values are allowed: divergence is caught
    momentum: Annotated[float, Field(ge=0, lt=1)]  # SGD's; Adam's are its betas
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)]
    eps: Annotated[PositiveFloat, Field(le=1)]
    weight_decay: Annotated[float, Field(ge=0, le=1)]
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=100)]
    device: Literal["auto", "cpu", "cuda", "mps"]
    cpu_threads: Annotated[int, Field(ge=0, le=1024)]  # 0: torch's default
    cuda_graph: Literal["auto", True, False]  # auto: on for CUDA, off elsewhere

    @field_validator("momentum")
    @classmethod
    def momentum_is_sgds(cls, momentum: float, info: ValidationInfo) -> float:
        if momentum != 0 and info.data.get("optimizer") == "adam":
            raise ValueError("must be 0 with train.optimizer adam (Adam's momentum is "
                             "train.betas); set train.optimizer sgd for SGD with momentum")  # fmt: skip
        return momentum

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


StudyName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
Value = bool | int | float | str | list[int] | list[float]  # what a model or train key holds


class StudyParams(Section):
    """One named study (`make study STUDY=<name>`, pipeline/study.py): a DVC
    experiment per value of `param`, with `fixed` set in every point and the
    rest as in the workspace. No stage of `dvc repro` reads it."""

    param: str  # a model or train key: model.depth, train.lr, ...
    values: Annotated[list[Value], Field(min_length=2, max_length=50)]  # a study: 2 or more
    fixed: dict[str, Value]  # other keys set for the whole study ({} for none)

    @field_validator("values")
    @classmethod
    def values_unique(cls, values: list[Value]) -> list[Value]:
        repeated = [v for k, v in enumerate(values) if v in values[:k]]
        if repeated:
            raise ValueError(f"must not repeat a value (repeated: {repeated})")
        return values


STUDIED_SECTIONS = ("model", "train")  # what a study may vary or fix


class Params(Section):
    data: DataParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    visualize: VisualizeParams
    tracking: TrackingParams
    studies: dict[StudyName, StudyParams]
    paper: StudyParams  # `make paper`: the BatchNorm paper's MNIST experiment, as a study

    @model_validator(mode="after")
    def studies_are_valid_params(self) -> Params:
        """Every key a study (or the paper's) varies or fixes exists, and every point's params pass."""
        problems = []
        keys = studied_keys(self)
        named = {f"studies.{name}": study for name, study in self.studies.items()}
        for where, study in (named | {"paper": self.paper}).items():
            unknown = [key for key in [study.param, *study.fixed] if key not in keys]
            problems += [f"{where}: {key}: not a key a study can set; allowed: {', '.join(keys)}"
                         for key in unknown]  # fmt: skip
            if study.param in study.fixed:
                problems.append(f"{where}.fixed: {study.param}: is the param the study varies")
            if unknown or study.param in study.fixed:
                continue
            for k, value in enumerate(study.values):
                try:
                    with_overrides(self, study.fixed | {study.param: value})
                except ParamsError as err:
                    problems += [f"{where}.values[{k}] = {_show(value)}: {line}"
                                 for line in err.lines]  # fmt: skip
        if problems:
            raise ValueError("\n".join(problems))
        return self


def studied_keys(params: Params) -> list[str]:
    return [key for section in STUDIED_SECTIONS
            for key in flatten(getattr(params, section), f"{section}.")]  # fmt: skip


def with_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """params with dotted model/train keys set, checked as params.yaml is
    (what `dvc exp run -S key=value` would make); ParamsError if not valid."""
    sections = {name: getattr(params, name).model_dump() for name in STUDIED_SECTIONS}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        sections[section][name] = value
    try:
        changed = {name: type(getattr(params, name)).model_validate(tree)
                   for name, tree in sections.items()}  # fmt: skip
    except ValidationError as err:
        section = {"ModelParams": "model", "TrainParams": "train"}[err.title]
        raise ParamsError(*(_describe({**e, "loc": (section, *e["loc"])})
                            for e in err.errors())) from None  # fmt: skip
    return params.model_copy(update=changed)


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
        problems = [line for error in err.errors() for line in _describe(error).splitlines()]
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
    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        sub = field.annotation if field else None
        if typing.get_origin(sub) is dict:  # studies: name -> StudyParams
            if not parts:
                return None
            parts.pop(0)
            sub = typing.get_args(sub)[1]
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = _dotted(loc)
    kind = error["type"]
    if not loc:  # a check of the whole file (Params' model validator): its own lines
        return error["msg"].removeprefix("Value error, ")
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
