"""Sentence pairs (stereotype, anti-stereotype) as every metric, trace and training loss reads
them: scores laid out in alternating rows (row 2i the stereotype sentence of pair i, row 2i + 1
its anti-stereotype), numpy arrays or torch tensors alike (gradients flow through)."""

from __future__ import annotations

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


def batch_lean(gaps: Scores) -> Scores:
    """|mean signed gap|: how far the pairs lean one way as a group (0 when their leans cancel,
    however large each is). Beside the mean |gap| it weighs the sign: while the pairs lean
    stereotypical, an anti-leaning pair's two gradients cancel and it is not pulled back."""
    return abs(gaps.mean())


def stereotyped(gaps: Scores) -> Scores:
    """Per pair, whether the model prefers the stereotype: gap > 0, a tie is not stereotypical
    (as StereoSet counts). For finite scores the same as score(stereo) > score(anti)."""
    return gaps > 0


def stereotype_percent(gaps: np.ndarray) -> float:
    """SS (%): the share of pairs whose gap is positive. Ideal 50."""
    return float(100.0 * np.mean(stereotyped(gaps)))


__all__ = ["batch_lean", "bias_loss", "pair_gaps", "pair_sums", "stereotype_percent", "stereotyped"]
