"""What an evaluation run measures, on which data, with which seed: recorded in every run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUITES = ("biascope", "stereoset", "crows", "general", "all")

# What each suite measures. "biascope" is SPEC §3's bias + knowledge trade-off.
SUITE_PARTS = {
    "biascope": ("stereoset", "paraphrase", "held_out", "retention"),
    "stereoset": ("stereoset", "paraphrase"),
    "crows": ("crows",),
    "general": ("general",),
    "all": ("stereoset", "paraphrase", "held_out", "retention", "crows", "general"),
}


@dataclass
class EvalConfig:
    """Options of `fairstamp eval` (and of the evaluations inside `fairstamp debias`)."""

    model: str
    suite: str = "biascope"
    bias_types: list[str] | None = None
    limit: int | None = None
    reduction: str = "mean"
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
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; choose from {', '.join(SUITES)}")
        if self.reduction not in ("mean", "sum"):
            raise ValueError("reduction must be 'mean' or 'sum'")

    @property
    def parts(self) -> tuple[str, ...]:
        return SUITE_PARTS[self.suite]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out
