"""What an evaluation run measures, on which data, with which seed: recorded in every run folder.

The one place that defines the suites, the sentence-score reductions and their default; the CLI
and every other caller read them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fairstamp.errors import FairstampError

# What each suite measures, in the order its sections appear in metrics.json; each name is a
# registered suite part (`fairstamp.evaluation.registry`). "biascope" is SPEC §3's bias +
# knowledge trade-off; "edited" reports SS/PS on a stamp's edited items when they are known.
SUITE_PARTS: dict[str, tuple[str, ...]] = {
    "biascope": ("stereoset", "paraphrase", "edited", "held_out", "retention"),
    "stereoset": ("stereoset", "paraphrase", "edited"),
    "crows": ("crows",),
    "general": ("general",),
    "all": ("stereoset", "paraphrase", "edited", "held_out", "crows", "retention", "general"),
}
SUITES = tuple(SUITE_PARTS)

#: How a sentence's token log-probabilities become its score: per-token mean or sum.
REDUCTIONS = ("mean", "sum")
DEFAULT_REDUCTION = "mean"


def check_reduction(reduction: str, what: str = "reduction") -> str:
    """`reduction` if it is one of REDUCTIONS; a FairstampError naming `what` otherwise."""
    if reduction not in REDUCTIONS:
        raise FairstampError(f"{what} must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


@dataclass
class EvalConfig:
    """Options of `fairstamp eval` (and of the evaluations inside `fairstamp debias`)."""

    model: str
    suite: str = "biascope"
    bias_types: list[str] | None = None
    limit: int | None = None
    reduction: str = DEFAULT_REDUCTION
    seed: int = 0
    n_resamples: int = 1000
    held_out_fraction: float = 0.2
    stereoset_file: str | None = None
    crows_file: str | None = None
    bias_file: str | None = None
    retention_file: str | None = None
    paraphrase_file: str | None = None
    rule_paraphrases: bool = True
    reference: str | None = None
    data_dir: str | None = None
    general_limits: dict[str, int] = field(default_factory=dict)
    # Ids of the bias items a stamp was trained on (from its run folder): then SS/PS are also
    # reported on them ("edited"), and held-out SS is over targets with no edited item.
    edited_ids: list[str] | None = None
    # Ids of the retention items a stamp's L_s1 term saw: RS is also reported without them.
    retention_trained_ids: list[str] | None = None
    stamp: str | None = None  # the stamp folder attached during the evaluation, if any

    def __post_init__(self) -> None:
        if self.suite not in SUITE_PARTS:
            raise FairstampError(f"unknown suite {self.suite!r}; choose from "
                                 f"{', '.join(SUITE_PARTS)}")
        check_reduction(self.reduction)

    @property
    def parts(self) -> tuple[str, ...]:
        """The names of the suite's parts, in the order they run."""
        return SUITE_PARTS[self.suite]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out
