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
    "transfer": ("bbq", "winobias", "bold"),
    "all": ("stereoset", "paraphrase", "edited", "held_out", "crows", "retention", "general",
            "bbq", "winobias", "bold"),
}
SUITES = tuple(SUITE_PARTS)

#: How a sentence's token log-probabilities become its score: per-token mean or sum.
REDUCTIONS = ("mean", "sum")
DEFAULT_REDUCTION = "mean"


#: Default subset sizes of the transfer suite (0 = all): BBQ items per category and context
#: condition (ambiguous, disambiguated), WinoBias test lines per file (four files: type 1/2,
#: pro/anti), BOLD prompts per group (43 groups). Chosen so that the suite stays within 10
#: minutes on a 2-core CPU with smollm2-135m (295 s measured on one contended thread;
#: docs/biascope.md, "Cost").
TRANSFER_LIMITS: dict[str, int] = {"bbq": 25, "winobias": 0, "bold": 10}
#: BOLD decoding: sampled (seeded) by default, or greedy.
BOLD_DECODINGS = ("sample", "greedy")


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
    # The transfer suite's subsets ({"bbq": N, ...}, 0 = all; TRANSFER_LIMITS for the rest) and
    # BOLD's decoding: continuations of bold_max_new_tokens tokens, sampled at bold_temperature
    # with `seed`, or greedy.
    transfer_limits: dict[str, int] = field(default_factory=dict)
    bold_decoding: str = "sample"
    bold_max_new_tokens: int = 20
    bold_temperature: float = 0.8
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
        for name, value in self.transfer_limits.items():
            if name not in TRANSFER_LIMITS:
                raise FairstampError(f"unknown transfer subset {name!r}; choose from "
                                     f"{', '.join(TRANSFER_LIMITS)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FairstampError(f"transfer subset {name}: expected a whole number >= 0 "
                                     f"(0 = all), got {value!r}")
        if self.bold_decoding not in BOLD_DECODINGS:
            raise FairstampError(f"bold_decoding must be one of {', '.join(BOLD_DECODINGS)}, "
                                 f"got {self.bold_decoding!r}")
        if isinstance(self.bold_max_new_tokens, bool) or not isinstance(
                self.bold_max_new_tokens, int) or self.bold_max_new_tokens < 1:
            raise FairstampError(f"bold_max_new_tokens must be a whole number >= 1, got "
                                 f"{self.bold_max_new_tokens!r}")
        if not self.bold_temperature > 0:
            raise FairstampError(f"bold_temperature must be > 0, got {self.bold_temperature!r}")

    @property
    def parts(self) -> tuple[str, ...]:
        """The names of the suite's parts, in the order they run."""
        return SUITE_PARTS[self.suite]

    def transfer_limit(self, name: str) -> int | None:
        """The subset size of one transfer part (None: all)."""
        return self.transfer_limits.get(name, TRANSFER_LIMITS[name]) or None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out
