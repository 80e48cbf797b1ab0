"""Evaluation: one entry point that runs a suite of BiaScope metrics on a model in memory and
writes a run folder (metrics.json, predictions.json, report.md, plots).

The configuration (`config`) imports nothing heavy; `evaluate` and the parts (torch, through the
Scorer) load on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import Any

from fairstamp.evaluation.config import (
    DEFAULT_REDUCTION,
    REDUCTIONS,
    SUITE_PARTS,
    SUITES,
    EvalConfig,
)

_LAZY = {
    "Evaluation": "fairstamp.evaluation.suite",
    "evaluate": "fairstamp.evaluation.suite",
    "SuiteContext": "fairstamp.evaluation.registry",
    "SuitePart": "fairstamp.evaluation.registry",
    "register_part": "fairstamp.evaluation.registry",
    "get_part": "fairstamp.evaluation.registry",
    "part_names": "fairstamp.evaluation.registry",
}

__all__ = ["DEFAULT_REDUCTION", "REDUCTIONS", "SUITES", "SUITE_PARTS", "EvalConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        importlib.import_module("fairstamp.evaluation.parts")  # the built-in parts register
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fairstamp.evaluation' has no attribute {name!r}")
