"""Suite parts found by name (lm-evaluation-harness style): each part of a suite is a registered
`SuitePart` that loads its data, declares the sentences it needs and computes its metrics.

`evaluate` runs the parts of the chosen suite in three passes, so that every sentence any part
needs is scored once, in one Scorer pass:

1. `load(context)`: read the data, record its provenance (`context.record`); fail early.
2. `sentences(context)`: the sentences to score (the suite scores them all once, in part order).
3. `run(context)`: fill `context.metrics` / `context.predictions` from `context.scores` (or with
   `context.scorer` directly, for metrics that are not sentence scores).

A new part is one module:

    @register_part("winobias")
    class WinoBias(SuitePart):
        def load(self, context): self.items = ...; context.record("winobias", path, len(...))
        def sentences(self, context): return [s for i in self.items for s in (i.pro, i.anti)]
        def run(self, context): context.metrics["winobias"] = {...}

plus its name in a suite of `fairstamp.evaluation.config.SUITE_PARTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from fairstamp.data.items import BiasItem
from fairstamp.errors import FairstampError
from fairstamp.evaluation.config import EvalConfig
from fairstamp.utils.io import sha256_file


@dataclass
class SuiteContext:
    """What the parts of one evaluation share: the model, its Scorer, the configuration, the
    loaded item sets, the scores of the suite's one pass, and the dictionaries they fill."""

    loaded: Any  # fairstamp.models.LoadedModel
    config: EvalConfig
    scorer: Any  # fairstamp.scoring.Scorer
    root: Path | None  # the public data folder, if any
    reference: dict[str, Any]  # an earlier run's predictions (RS, known_1000 "kept")
    given_bias_items: list[BiasItem] | None = None  # bias items loaded by the caller
    data: dict[str, Any] = field(default_factory=dict)  # → metrics.json "data"
    metrics: dict[str, Any] = field(default_factory=dict)  # → metrics.json "metrics"
    predictions: dict[str, Any] = field(default_factory=dict)  # → predictions.json
    items: dict[str, list] = field(default_factory=dict)  # item sets shared between parts
    scores: dict[str, float] = field(default_factory=dict)  # sentence → score (after pass 2)

    @property
    def parts(self) -> tuple[str, ...]:
        return self.config.parts

    @property
    def bootstrap(self) -> dict[str, int]:
        """The bootstrap keywords of every metric: resamples and seed."""
        return {"n_resamples": self.config.n_resamples, "seed": self.config.seed}

    def record(self, name: str, path: str | Path | None, n: int, unit: str = "records") -> None:
        """A data set's provenance in metrics.json: size, path ("built-in" if none), sha256."""
        entry: dict[str, Any] = {"n": n, "unit": unit,
                                 "path": str(path) if path else "built-in"}
        entry["sha256"] = sha256_file(path) if path and Path(path).is_file() else "-"
        self.data[name] = entry


class SuitePart:
    """One part of a suite; every pass is optional (a part that scores nothing itself leaves
    `sentences` alone). A fresh instance serves each evaluation, so a part may keep what it
    loaded on `self`."""

    name: ClassVar[str] = ""

    def load(self, context: SuiteContext) -> None:
        """Read the data the part needs and record it; runs before any scoring."""

    def sentences(self, context: SuiteContext) -> Iterable[str]:
        """The sentences whose scores `run` reads from `context.scores`."""
        return ()

    def run(self, context: SuiteContext) -> None:
        """Add the part's metrics (and predictions) to the context."""


P = TypeVar("P", bound=type[SuitePart])
_PARTS: dict[str, type[SuitePart]] = {}


def register_part(name: str) -> Callable[[P], P]:
    """Class decorator: make a suite part available by `name`."""

    def decorate(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, SuitePart)):
            raise FairstampError(f"{cls!r} is not a SuitePart")
        if _PARTS.get(name, cls) is not cls:
            raise FairstampError(f"suite part {name!r} is already registered "
                                 f"({_PARTS[name].__qualname__})")
        cls.name = name
        _PARTS[name] = cls
        return cls

    return decorate


def part_names() -> list[str]:
    """The registered parts, sorted."""
    return sorted(_PARTS)


def get_part(name: str) -> type[SuitePart]:
    """The part registered as `name`; unknown names are refused with the list of known ones."""
    if name not in _PARTS:
        raise FairstampError(f"unknown suite part {name!r}; known parts: "
                             f"{', '.join(part_names())}")
    return _PARTS[name]
