"""The fairness stamp: a small module added after one MLP, and its on-disk artefact."""

from fairstamp.stamp.artefact import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Stamp,
    StampConfig,
    model_fingerprint,
    new_stamp,
)
from fairstamp.stamp.module import (
    FairnessStamp,
    StampedMLP,
    attach,
    detach,
    disabled,
    stamps_of,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FairnessStamp",
    "Stamp",
    "StampConfig",
    "StampedMLP",
    "attach",
    "detach",
    "disabled",
    "model_fingerprint",
    "new_stamp",
    "stamps_of",
]
