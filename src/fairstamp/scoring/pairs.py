"""Sentence pairs (stereotype, anti-stereotype) as every metric, trace and training loss reads
them: scores laid out in alternating rows (row 2i the stereotype sentence of pair i, row 2i + 1
its anti-stereotype), numpy arrays or torch tensors alike (gradients flow through)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np

Scores = TypeVar("Scores")  # a numpy array or a torch tensor, [2 * pairs, ...]


def pair_gaps(scores: Scores) -> Scores:
    """score(stereo) − score(anti) of each pair, [pairs, ...]."""
    return scores[0::2] - scores[1::2]


def pair_sums(scores: Scores) -> Scores:
    """score(stereo) + score(anti) of each pair, [pairs, ...]."""
    return scores[0::2] + scores[1::2]


def bias_loss(gaps: Scores) -> Scores:
    """The mean |gap| (FAST's bias loss L_e, and the "bias" a training check reports)."""
    return abs(gaps).mean()


def batch_lean(gaps: Scores, groups: Sequence[Hashable] | None = None) -> Scores:
    """|mean signed gap|: how far the pairs lean one way as a group (0 when their leans cancel,
    however large each is). With `groups` (each pair's, e.g. its bias type), each group's lean
    weighted by its share of the pairs, so that one group's lean cannot cancel another's. Beside
    the mean |gap| it weighs the sign: while a group leans stereotypical, its anti-leaning pairs'
    two gradients cancel and they are not pulled back."""
    if groups is None:
        return abs(gaps.mean())
    lean = 0.0
    for group in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == group]
        lean = lean + len(rows) / len(groups) * abs(gaps[rows].mean())
    return lean


def stereotyped(gaps: Scores) -> Scores:
    """Per pair, whether the model prefers the stereotype: gap > 0, a tie is not stereotypical
    (as StereoSet counts). For finite scores the same as score(stereo) > score(anti)."""
    return gaps > 0


def stereotype_percent(gaps: np.ndarray) -> float:
    """SS (%): the share of pairs whose gap is positive. Ideal 50."""
    return float(100.0 * np.mean(stereotyped(gaps)))


__all__ = ["batch_lean", "bias_loss", "pair_gaps", "pair_sums", "stereotype_percent", "stereotyped"]
