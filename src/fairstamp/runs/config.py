"""The settings of one edit run, written once: `fairstamp debias` (FAST with its trace and the
before/after report) and `fairstamp bench` (the same run over several methods) share them, the CLI
reads its defaults from here, and `choose_layer` is the one place the stamp's layer is picked and
range-checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from fairstamp.errors import FairstampError
from fairstamp.fast.recipes import recipe_for
from fairstamp.models.archspec import check_layer
from fairstamp.models.placement import DTYPES

#: How the layer is picked when none is given (docs/fast.md has the layer sweeps behind the
#: default): "measured": the model's cross-validated layer where fairstamp has one
#: (`fairstamp.fast.recipes`), else "two-thirds": layer round(2/3 · number of layers), the best
#: SS/RS trade-off of the sweep on smollm2-135m; "argmax" / "argmax-after-first": the traced
#: decisive layer (SPEC §4.1), with or without layer 0.
LAYER_RULES = ("measured", "two-thirds", "argmax-after-first", "argmax")
#: The rules that pick a layer without the bias trace.
UNTRACED_RULES = ("measured", "two-thirds")

#: `--quick`: general-ability subsets, tracing and training small enough for a few minutes on a
#: laptop CPU (the README's quick start).
QUICK_GENERAL_LIMITS = {"wikitext2": 4096, "known_1000": 200, "boolq": 50, "copa": 50,
                        "winogrande": 50, "piqa": 50, "arc_easy": 50}
#: `--quick`'s transfer subsets: BBQ items per category and context condition, WinoBias lines per
#: file, BOLD prompts per group (docs/biascope.md, "Transfer suite").
QUICK_TRANSFER_LIMITS = {"bbq": 5, "winobias": 50, "bold": 2}
QUICK_TRACE_ITEMS = 6
QUICK_TRACE_SAMPLES = 3
QUICK_MAX_STEPS = 60


@dataclass
class EditRunConfig:
    """What every edit run records and every method of a bench run shares: the items and their
    split, the layer, the training text, the evaluation and the seed."""

    model: str
    data: str = "stereoset"  # as `load_bias_set`: stereoset | crows | a file
    bias_types: list[str] | None = field(default_factory=lambda: ["gender"])  # None: all
    limit: int | None = None
    held_out_fraction: float = 0.2
    seed: int = 0
    layer: int | None = None  # None: `layer_rule`
    layer_rule: str = "measured"
    trace_items: int = 40  # edited items traced to locate the bias
    trace_samples: int = 5  # noise samples per traced item
    n_generic: int = 200  # generic sentences (L_s2)
    n_passages: int = 32  # generic passages (L_s2)
    passage_words: int = 300
    suite: str = "all"
    general_limits: dict[str, int] = field(default_factory=dict)
    transfer_limits: dict[str, int] = field(default_factory=dict)  # {}: the suite's defaults
    n_resamples: int = 1000
    data_dir: str | None = None
    allow_crows_training: bool = False
    folds: int = 1  # K > 1: also cross-validate by target with K more fits (runs/folds.py)
    # The frozen model's precision and placement (`fairstamp.models.load`; models/placement.py)
    dtype: str = "float32"
    device_map: str | dict[str, Any] | None = None  # as asked: a strategy, a device or a map
    max_memory: dict[Any, str] | None = None
    offload_folder: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 1:
            raise FairstampError(f"folds must be a whole number >= 1, got {self.folds!r}")
        if self.layer_rule not in LAYER_RULES:
            raise FairstampError(f"unknown layer rule {self.layer_rule!r}; choose from "
                                 f"{', '.join(LAYER_RULES)}")
        if self.layer is not None and (isinstance(self.layer, bool) or self.layer < 0):
            raise FairstampError(f"layer must be a layer index >= 0, got {self.layer!r}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise FairstampError(f"held_out_fraction must be in [0, 1), got "
                                 f"{self.held_out_fraction}")
        if min(self.trace_items, self.trace_samples) < 1:
            raise FairstampError("trace_items and trace_samples must be at least 1")
        if self.dtype not in DTYPES:
            raise FairstampError(f"dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.uses_crows and not self.allow_crows_training:
            raise FairstampError(
                "CrowS-Pairs' data statement asks that it not be used to train models; pass "
                "--allow-crows-training to edit on it anyway (the report records it)")

    @property
    def uses_crows(self) -> bool:
        return self.data == "crows" or self.data.endswith(".csv")

    @property
    def traces(self) -> bool:
        """Whether the run traces the bias: always unless the layer is given (the trace is
        reported even when the two-thirds rule picks the layer)."""
        return self.layer is None

    def quick(self) -> EditRunConfig:
        """The same run with `--quick`'s small general and transfer suites and short trace
        (explicit limits win)."""
        return dataclasses.replace(
            self, general_limits={**QUICK_GENERAL_LIMITS, **self.general_limits},
            transfer_limits={**QUICK_TRANSFER_LIMITS, **self.transfer_limits},
            trace_items=min(self.trace_items, QUICK_TRACE_ITEMS),
            trace_samples=min(self.trace_samples, QUICK_TRACE_SAMPLES))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def placement(self) -> dict[str, Any]:
        """The precision and placement keywords of `fairstamp.models.load`."""
        return {"dtype": self.dtype, "device_map": self.device_map,
                "max_memory": self.max_memory, "offload_folder": self.offload_folder}


def default(cls: type, name: str) -> Any:
    """The default of dataclass field `name` (for CLI options that must not restate it)."""
    spec = cls.__dataclass_fields__[name]
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def defaults(cls: type) -> dict[str, Any]:
    """Every field of dataclass `cls` that has a default, with it."""
    return {name: default(cls, name) for name, spec in cls.__dataclass_fields__.items()
            if spec.default is not dataclasses.MISSING
            or spec.default_factory is not dataclasses.MISSING}


def check_given_layer(config: EditRunConfig, num_layers: int, model_name: str) -> None:
    """Refuse a given layer outside the model before any model work (the rules pick in range)."""
    if config.layer is not None:
        check_layer(config.layer, num_layers, model_name)


def choose_layer(config: EditRunConfig, num_layers: int, model_name: str,
                 trace: Any = None) -> tuple[int, str]:
    """(layer, how it was chosen) for an edit run on a `num_layers`-layer model: the given one
    (range-checked), or the layer rule's pick; the argmax rules need the run's `trace`."""
    if config.layer is not None:
        check_given_layer(config, num_layers, model_name)
        return config.layer, "given"
    recipe = recipe_for(model_name) if config.layer_rule == "measured" else None
    if recipe is not None:
        check_layer(recipe.layer, num_layers, model_name)
        return recipe.layer, f"measured for {model_name}"
    if config.layer_rule in UNTRACED_RULES:
        return min(num_layers - 1, round(2 * num_layers / 3)), "rule two-thirds"
    if trace is None:
        raise FairstampError(f"layer rule {config.layer_rule} needs the bias trace")
    layer = trace.decisive_layer("mlp", exclude_first=config.layer_rule == "argmax-after-first")
    return layer, f"rule {config.layer_rule}"
