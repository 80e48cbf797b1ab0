"""Scoring: the single batched sentence/continuation scorer shared by every metric and method."""

from fairstamp.scoring.scorer import Reduction, Scorer, SentenceScores, TokenLogprobs

__all__ = ["Reduction", "Scorer", "SentenceScores", "TokenLogprobs"]
