"""Evaluation: one entry point that runs a suite of BiaScope metrics on a model in memory and
writes a run folder (metrics.json, predictions.json, report.md, plots)."""

from fairstamp.evaluation.config import SUITES, EvalConfig
from fairstamp.evaluation.suite import Evaluation, evaluate

__all__ = ["SUITES", "EvalConfig", "Evaluation", "evaluate"]
