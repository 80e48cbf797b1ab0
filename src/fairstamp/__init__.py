"""fairstamp: find social biases stored in a causal language model and remove them one by one.

Implements FAST (Fairness Stamp) and the BiaScope benchmark. Importing the package has no side
effects: heavy modules (torch, transformers) load on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "fairstamp.models",
    "LoadedModel": "fairstamp.models",
    "ArchSpec": "fairstamp.models",
    "Scorer": "fairstamp.scoring",
    "SentenceScores": "fairstamp.scoring",
    "load_stereoset": "fairstamp.data.stereoset",
    "load_crows_pairs": "fairstamp.data.crows",
    "load_bias_file": "fairstamp.data.bias_file",
    "load_retention": "fairstamp.data.retention",
    "split_by_target": "fairstamp.data.splits",
    "trace_bias": "fairstamp.tracing",
    "fit_stamp": "fairstamp.fast.train",
    "FitConfig": "fairstamp.fast.train",
    "training_text": "fairstamp.data.training_text",
    "debias": "fairstamp.runs.debias",
    "DebiasConfig": "fairstamp.runs.debias",
    "Stamp": "fairstamp.stamp",
    "evaluate": "fairstamp.evaluation.suite",
    "EvalConfig": "fairstamp.evaluation.config",
    "EditRunConfig": "fairstamp.runs.config",
    "choose_layer": "fairstamp.runs.config",
    "prepare_edit": "fairstamp.runs.setup",
    "cross_validate": "fairstamp.runs.folds",
    "Edit": "fairstamp.methods",
    "get_method": "fairstamp.methods",
    "method_names": "fairstamp.methods",
    "EditContext": "fairstamp.methods",
    "run_bench": "fairstamp.bench",
    "BenchConfig": "fairstamp.bench",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fairstamp' has no attribute {name!r}")
