"""The record types of BiaScope (SPEC §2), shared by loaders, metrics and methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STEREOSET_BIAS_TYPES = ("gender", "profession", "race", "religion")
CROWS_BIAS_TYPES = (
    "race-color",
    "socioeconomic",
    "gender",
    "disability",
    "nationality",
    "sexual-orientation",
    "physical-appearance",
    "religion",
    "age",
)
RETENTION_BIAS_TYPES = ("gender", "race", "religion", "profession", "age")


@dataclass(frozen=True)
class Paraphrase:
    """A reworded (stereo, anti) pair of a bias item; `origin` says where it came from."""

    stereo: str
    anti: str
    origin: str = "file"  # "file" (e.g. the GPT paraphrases of StereoSet dev) or "rule"


@dataclass(frozen=True)
class BiasItem:
    """One bias (Ω_S): two full sentences that differ only where the bias lives.

    `stereo_id`/`anti_id`/`unrelated_id` keep the source's sentence ids (StereoSet) so predictions
    can be exported in the official format.
    """

    id: str
    source: str  # "stereoset", "crows_pairs" or "user"
    bias_type: str
    target: str
    stereo: str
    anti: str
    unrelated: str | None = None
    paraphrases: tuple[Paraphrase, ...] = ()
    stereo_id: str | None = None
    anti_id: str | None = None
    unrelated_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class RetentionItem:
    """Knowledge about a group (Ω_D) that is legitimately different between groups."""

    id: str
    bias_type: str
    group: str
    true: str
    false: str
