"""The results the stages write, read back as frozen dataclasses: evaluate's
reports/statistics.json (Statistics), a train summary reports/train/<variant>.json
(TrainReport), a study point's three files together (PointResults), and
the keys of the per-epoch rows of data/models/<variant>/history.json.

Evaluate builds Statistics and writes Statistics.to_json(); the report and
the study and paper summaries load the same classes instead of reading the
raw JSON. No formatting here (pipeline/format.py), and nothing that imports
upward: evaluate depends on this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.stats import LEARNT

DIFFERENCE = "bn_minus_nobn"  # statistics.json's key of the paired comparison of the variants

# history.json: variant -> seed -> per-epoch rows, one hidden layer's numbers keyed by layer_key
History = dict[str, dict[str, list[dict[str, float]]]]


def layer_key(layer: int, name: str) -> str:
    """A history row's key of one hidden layer's number, from 1: "layer_03/flat_fraction"."""
    return f"layer_{layer:02d}/{name}"


def depth_of(row: dict) -> int:
    """How many hidden layers a history row holds numbers of."""
    return len({key.split("/")[0] for key in row if key.startswith("layer_")})


def _pair(values: list[float] | None) -> tuple[float, float] | None:
    return None if values is None else (values[0], values[1])


def _list(values: tuple[float, float] | None) -> list[float] | None:
    return None if values is None else list(values)


@dataclass(frozen=True)
class Outcomes:
    """stats.failures(...) of a variant's seeds: how many ended in each
    outcome, and the fraction that failed with its exact binomial 95% interval."""

    learnt: int
    diverged: int
    not_learning: int
    failed: int
    failed_fraction: float
    failed_fraction_ci95: tuple[float, float]

    @classmethod
    def from_json(cls, data: dict) -> Outcomes:
        return cls(**data | {"failed_fraction_ci95": _pair(data["failed_fraction_ci95"])})

    @property
    def seeds(self) -> int:
        return self.learnt + self.failed


@dataclass(frozen=True)
class Mean:
    """A mean over seeds (or paired differences) with its sample std and 95%
    t-interval, and for a difference the paired t-test's p-value. None where
    there is nothing (no seed learnt) or too little (one seed) to compute."""

    mean: float | None
    std: float | None
    ci95: tuple[float, float] | None
    p_value: float | None = None

    @classmethod
    def from_json(cls, data: dict, key: str, paired: bool = False) -> Mean:
        p_value = data[f"{key}_p_value"] if paired else None
        return cls(data[key], data[f"{key}_std"], _pair(data[f"{key}_ci95"]), p_value)

    def to_json(self, key: str, paired: bool = False) -> dict:
        out = {key: self.mean, f"{key}_std": self.std, f"{key}_ci95": _list(self.ci95)}
        return out | ({f"{key}_p_value": self.p_value} if paired else {})


@dataclass(frozen=True)
class SeedResult:
    """One seed's evaluation of one variant."""

    test_accuracy: float
    test_loss: float | None  # None: the network diverged (JSON has no NaN)
    outcome: str  # stats.LEARNT, DIVERGED or NOT_LEARNING


@dataclass(frozen=True)
class VariantStatistics:
    """One variant in statistics.json: means over the seeds that learnt, the
    outcomes of all of them, and every seed's numbers."""

    seeds: int
    learnt: int
    test_accuracy: Mean
    test_loss: Mean
    outcomes: Outcomes
    per_seed: dict[str, SeedResult]  # seed (a string, as JSON keys it) -> its numbers

    @classmethod
    def from_json(cls, data: dict) -> VariantStatistics:
        return cls(
            data["seeds"],
            data["learnt"],
            Mean.from_json(data, "test_accuracy"),
            Mean.from_json(data, "test_loss"),
            Outcomes.from_json(data["outcomes"]),
            {seed: SeedResult(**result) for seed, result in data["per_seed"].items()},
        )

    def to_json(self) -> dict:
        return {"seeds": self.seeds, "learnt": self.learnt,
                **self.test_accuracy.to_json("test_accuracy"), **self.test_loss.to_json("test_loss"),
                "outcomes": asdict(self.outcomes),
                "per_seed": {seed: asdict(result) for seed, result in self.per_seed.items()}}  # fmt: skip

    def learnt_seeds(self) -> list[str]:
        """The seeds that learnt, in seed order."""
        return [seed for seed in sorted(self.per_seed, key=int)
                if self.per_seed[seed].outcome == LEARNT]  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """bn - nobn paired by seed, over the seeds where both variants learnt."""

    seeds: int  # the pairs
    test_accuracy: Mean
    test_loss: Mean

    @classmethod
    def from_json(cls, data: dict) -> Difference:
        return cls(data["seeds"], *(Mean.from_json(data, key, paired=True)
                                    for key in ("test_accuracy", "test_loss")))  # fmt: skip

    def to_json(self) -> dict:
        return {"seeds": self.seeds, **self.test_accuracy.to_json("test_accuracy", paired=True),
                **self.test_loss.to_json("test_loss", paired=True)}  # fmt: skip


@dataclass(frozen=True)
class Statistics:
    """reports/statistics.json. Where a method takes a name, DIFFERENCE is
    the paired comparison: its seeds are those where both variants learnt,
    its values the differences."""

    bn: VariantStatistics
    nobn: VariantStatistics
    bn_minus_nobn: Difference

    @classmethod
    def from_json(cls, data: dict) -> Statistics:
        return cls(VariantStatistics.from_json(data["bn"]),
                   VariantStatistics.from_json(data["nobn"]), Difference.from_json(data[DIFFERENCE]))  # fmt: skip

    def to_json(self) -> dict:
        return {"bn": self.bn.to_json(), "nobn": self.nobn.to_json(),
                DIFFERENCE: self.bn_minus_nobn.to_json()}  # fmt: skip

    def of(self, name: str) -> Any:
        """The entry "bn" or "nobn" (VariantStatistics), or DIFFERENCE (Difference)."""
        return getattr(self, name)

    @property
    def seeds(self) -> int:
        return self.bn.seeds

    @property
    def any_failed(self) -> bool:
        """Did some seed of either variant fail to learn?"""
        return bool(self.bn.outcomes.failed or self.nobn.outcomes.failed)

    def seed_order(self) -> list[str]:
        return sorted(self.bn.per_seed, key=int)

    def per_seed(self, name: str, key: str = "test_accuracy") -> list[float]:
        """Every seed's value, in seed order, whether or not it learnt."""
        if name == DIFFERENCE:
            return [a - b for a, b in zip(self.per_seed("bn", key), self.per_seed("nobn", key),
                                          strict=True)]  # fmt: skip
        return [getattr(self.of(name).per_seed[seed], key) for seed in self.seed_order()]

    def learnt_seeds(self, name: str) -> list[str]:
        """The seeds, in seed order, that learnt (for DIFFERENCE: with both variants)."""
        if name == DIFFERENCE:
            nobn = set(self.nobn.learnt_seeds())
            return [seed for seed in self.bn.learnt_seeds() if seed in nobn]
        return self.of(name).learnt_seeds()

    def learnt_mask(self, name: str) -> list[bool]:
        """Per seed, in seed order: did it learn."""
        learnt = set(self.learnt_seeds(name))
        return [seed in learnt for seed in self.seed_order()]

    def learnt_values(self, name: str, key: str = "test_accuracy") -> list[float]:
        """The values over the seeds that learnt, what the means are over."""
        seeds = self.learnt_seeds(name)
        if name == DIFFERENCE:
            return [getattr(self.bn.per_seed[s], key) - getattr(self.nobn.per_seed[s], key)
                    for s in seeds]  # fmt: skip
        return [getattr(self.of(name).per_seed[seed], key) for seed in seeds]


@dataclass(frozen=True)
class SeedEpochs:
    """One seed's numbers after every epoch (a train summary's per_epoch)."""

    epoch: list[int]
    test_accuracy: list[float | None]
    layers: dict[str, list[list[float | None]]]  # key -> [epoch][hidden layer]


@dataclass(frozen=True)
class TrainReport:
    """reports/train/<variant>.json as the summaries read it: per hidden
    layer the final diagnostics, mean over the seeds that learnt (None where
    none did); the outcomes; per seed its outcome and its numbers after every
    epoch. Older pipelines wrote fewer keys: what is absent is empty."""

    layers: dict[str, list[float | None]] = field(default_factory=dict)
    outcomes: Outcomes | None = None
    outcome: dict[str, str] = field(default_factory=dict)  # seed -> its outcome
    per_epoch: dict[str, SeedEpochs] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> TrainReport:
        return cls(
            data.get("layers", {}),
            Outcomes.from_json(data["outcomes"]) if "outcomes" in data else None,
            {seed: entry["outcome"] for seed, entry in data.get("per_seed", {}).items()},
            {seed: SeedEpochs(**entry) for seed, entry in data.get("per_epoch", {}).items()},
        )

    def learnt_seeds(self) -> list[str]:
        return [seed for seed, outcome in self.outcome.items() if outcome == LEARNT]


@dataclass(frozen=True)
class PointResults:
    """A study point's results: its statistics.json and its train summaries."""

    statistics: Statistics
    train: dict[str, TrainReport]  # variant -> its summary

    @classmethod
    def from_json(cls, data: dict) -> PointResults:
        """From {"statistics": ..., "bn": ..., "nobn": ...} (pipeline/study.py's read_results)."""
        return cls(Statistics.from_json(data["statistics"]),
                   {k: TrainReport.from_json(v) for k, v in data.items() if k != "statistics"})  # fmt: skip
