"""One interface for every debiasing method (FAST and the baselines), as `fairstamp bench` and the
Python API use them.

A `Method` is built from its config dataclass (the knobs its paper exposes) and `fit`s on an
`EditContext` — the same model, edit-side bias items, layer, retention and generic text and seed for
every method of a run. `fit` leaves the model edited and returns an `Edit`, which can `restore` the
original model exactly, counts the parameters it changed or added, and saves itself (safetensors +
JSON, never pickle). The four kinds of edit a method can make:

- `WeightEdit`: weights changed in place (FT-L, ROME, MEMIT, CDA); the original tensors are kept
  and copied back on `restore` (bitwise).
- `StampEdit`: a FAST stamp attached after an MLP; `restore` detaches it.
- hooks on the model (INLP, SentenceDebias: a projection of the final hidden state); `restore`
  removes them (`HookEdit`).
- a wrapper that replaces `loaded.model` (Self-Debias: decoding-time); `restore` puts the model
  back (`WrapperEdit`).
"""

from __future__ import annotations

import importlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from fairstamp.data.items import BiasItem
from fairstamp.errors import FairstampError
from fairstamp.utils.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

EDIT_CONFIG = "edit.json"
EDIT_TENSORS = "edit.safetensors"


@dataclass
class EditContext:
    """What every method of a run sees: the same model, items, layer, text and seed."""

    loaded: Any  # models.loader.LoadedModel
    items: list[BiasItem]  # the edit side of the split; held-out targets never appear here
    bias_types: list[str]
    layer: int  # the layer single-layer methods edit (FAST's layer rule, or the user's)
    retention_sentences: list[str] = field(default_factory=list)  # L_s1 text (trained half)
    generic_sentences: list[str] = field(default_factory=list)  # WikiText-2 valid sentences
    generic_passages: list[str] = field(default_factory=list)  # WikiText-2 valid passages
    data_root: Path | None = None  # the public data folder (shared/data layout)
    cache_dir: Path | None = None  # where reusable statistics go (e.g. ROME's key covariance)
    seed: int = 0
    progress: bool | None = None
    group_swap: Any = None  # data.counterfactual.AttributeSwap: the subject-swap pairs' words
    # items scored at every training check and only recorded (cross-validation's held-out
    # targets, `runs.folds.cross_validate(monitor=True)`); no method trains on or chooses by them
    monitor_items: list[BiasItem] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return self.loaded.arch.num_layers(self.loaded.model)


class Edit(ABC):
    """A fitted method, applied to the model it was fitted on."""

    method: str = ""
    info: dict[str, Any]
    #: "module:Class" whose `from_saved` puts a saved edit of this kind back on a model
    #: (recorded in edit.json; `Edit.load` reads it).
    loader: ClassVar[str] = ""

    @abstractmethod
    def restore(self, loaded: Any) -> None:
        """Give back the original model exactly (weights, modules, hooks)."""

    @abstractmethod
    def parameters_changed(self) -> int:
        """How many parameters the edit changed or added (0 for decoding-time methods)."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """What `save` writes to edit.safetensors (the edit's own tensors)."""
        return {}

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "parameters_changed": self.parameters_changed(),
                **self.info}

    def save(self, folder: str | Path) -> Path:
        """edit.json (method, knobs, summary, loader) + edit.safetensors (the edit's tensors)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
        if tensors:
            atomic_write_bytes(folder / EDIT_TENSORS,
                               save_tensors(tensors, metadata={"method": self.method}))
        atomic_write_json(folder / EDIT_CONFIG, {**self.summary(), "loader": self.loader})
        return folder

    @staticmethod
    def load(folder: str | Path, loaded: Any) -> Edit:
        """Put the edit saved in `folder` back on `loaded` (the model it was fitted on) and return
        it; `restore` takes it off again."""
        folder = Path(folder)
        if not (folder / EDIT_CONFIG).is_file():
            raise FairstampError(f"{folder}: not a saved edit (no {EDIT_CONFIG})")
        summary = json.loads((folder / EDIT_CONFIG).read_text())
        loader = summary.get("loader")
        if not loader or ":" not in loader:
            raise FairstampError(f"{folder / EDIT_CONFIG}: names no loader for a "
                                 f"{summary.get('method')!r} edit (saved by an older fairstamp; "
                                 f"fit it again)")
        module, name = loader.split(":")
        kind = getattr(importlib.import_module(module), name)
        tensors = load_tensors(str(folder / EDIT_TENSORS)) if (folder / EDIT_TENSORS).is_file() \
            else {}
        return kind.from_saved(folder, loaded, summary, tensors)

    @classmethod
    def from_saved(cls, folder: Path, loaded: Any, summary: dict[str, Any],
                   tensors: dict[str, torch.Tensor]) -> Edit:
        """Rebuild a saved edit of this kind on `loaded` (see `load`)."""
        raise FairstampError(f"a {summary.get('method')!r} edit cannot be loaded back")


class WeightEdit(Edit):
    """Weights changed in place; the originals of exactly those tensors are kept to restore."""

    loader = "fairstamp.methods.base:WeightEdit"

    def __init__(self, method: str, model: nn.Module, originals: dict[str, torch.Tensor],
                 info: dict[str, Any] | None = None) -> None:
        self.method, self.originals, self.info = method, originals, dict(info or {})
        self._params = dict(model.named_parameters())
        missing = [n for n in originals if n not in self._params]
        if missing:
            raise FairstampError(f"no such parameters: {', '.join(missing)}")

    def restore(self, loaded: Any) -> None:
        with torch.no_grad():
            for name, original in self.originals.items():
                self._params[name].copy_(original)

    def deltas(self) -> dict[str, torch.Tensor]:
        return {n: (self._params[n].detach() - o.to(self._params[n].device)).cpu()
                for n, o in self.originals.items()}

    def parameters_changed(self) -> int:
        return int(sum(int((d != 0).sum()) for d in self.deltas().values()))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"delta.{n}": d for n, d in self.deltas().items()}

    @classmethod
    def from_saved(cls, folder: Path, loaded: Any, summary: dict[str, Any],
                   tensors: dict[str, torch.Tensor]) -> WeightEdit:
        """Add the saved deltas to the model's weights (equal to the fitted weights up to one
        float rounding of original + delta)."""
        deltas = {name.removeprefix("delta."): t for name, t in tensors.items()
                  if name.startswith("delta.")}
        params = dict(loaded.model.named_parameters())
        wrong = [n for n, d in deltas.items() if n not in params or params[n].shape != d.shape]
        if wrong:
            raise FairstampError(f"{folder}: the saved edit does not fit this model "
                                 f"({', '.join(wrong[:3])})")
        originals = snapshot(loaded.model, deltas)
        with torch.no_grad():
            for name, delta in deltas.items():
                params[name].add_(delta.to(params[name].device, params[name].dtype))
        info = {k: v for k, v in summary.items()
                if k not in ("method", "parameters_changed", "loader")}
        return cls(summary["method"], loaded.model, originals, info)


def snapshot(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters, to hand to `WeightEdit` before changing them."""
    params = dict(model.named_parameters())
    out = {}
    for name in names:
        if name not in params:
            raise FairstampError(f"no parameter {name!r} in the model")
        if params[name].device.type == "meta":
            raise FairstampError(
                f"{name} is offloaded (the device map or --max-memory put it on the CPU or "
                f"disk, loaded only for each forward pass): weight-editing methods change it "
                f"in place and need it resident; give its layer a device, or use FAST")
        out[name] = params[name].detach().clone()
    return out


def module_param_name(model: nn.Module, module: nn.Module, attr: str = "weight") -> str:
    """The `named_parameters` name of `module.<attr>` inside `model`."""
    target = getattr(module, attr)
    for name, param in model.named_parameters():
        if param is target:
            return name
    raise FairstampError(f"{type(module).__name__}.{attr} is not a parameter of the model")


class HookEdit(Edit):
    """Torch hooks registered on the model; `restore` removes every one of them."""

    def __init__(self, method: str, handles: Sequence[Any], tensors: dict[str, torch.Tensor],
                 added: int, info: dict[str, Any] | None = None) -> None:
        self.method, self.handles, self._tensors = method, list(handles), dict(tensors)
        self.added, self.info = added, dict(info or {})

    def restore(self, loaded: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def parameters_changed(self) -> int:
        return self.added

    def tensors(self) -> dict[str, torch.Tensor]:
        return self._tensors


class WrapperEdit(Edit):
    """`loaded.model` replaced by a wrapper around it (decoding-time methods)."""

    def __init__(self, method: str, original: nn.Module, info: dict[str, Any] | None = None
                 ) -> None:
        self.method, self.original, self.info = method, original, dict(info or {})

    def restore(self, loaded: Any) -> None:
        loaded.model = self.original

    def parameters_changed(self) -> int:
        return 0


class Method(ABC):
    """A debiasing method: a name, a config dataclass of its knobs, and `fit`."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: One line for tables and `--help`: what it changes.
    description: ClassVar[str] = ""

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        config = config if config is not None else self.config_class()
        if overrides:
            config = _with_overrides(config, overrides, self.name)
        self.config = config

    @abstractmethod
    def fit(self, context: EditContext) -> Edit:
        """Edit `context.loaded` (in place or by attaching) and return the edit."""

    def seeded_config(self, seed: int) -> Any:
        """The config a fit uses in a run with seed `seed`: a config's own `seed` (FAST, CDA,
        FT-L) is always the run's, which is why it is refused as an option."""
        if "seed" not in {f.name for f in fields(self.config)}:
            return self.config
        return replace(self.config, seed=seed)

    def config_dict(self, seed: int | None = None) -> dict[str, Any]:
        """The config as a record; with `seed`, as a fit in a run with that seed uses it."""
        return asdict(self.config if seed is None else self.seeded_config(seed))


def _with_overrides(config: Any, overrides: dict[str, Any], method: str) -> Any:
    known = {f.name: f for f in fields(config)}
    values = asdict(config)
    for key, value in overrides.items():
        if key not in known:
            raise FairstampError(f"{method} has no option {key!r}; its options: "
                                 f"{', '.join(known)}")
        if key == "seed":  # every method's fit takes the run's seed, so this would be ignored
            raise FairstampError(f"{method}.seed: the seed is the run's, shared by every "
                                 f"method; use --seed")
        values[key] = _coerce(value, values[key], f"{method}.{key}")
    return type(config)(**values)


def _coerce(value: Any, current: Any, what: str) -> Any:
    """Turn a command-line string into the type of the option's default."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    if current is None:  # an optional knob (e.g. max_items): a number, "none", or the text
        if value.lower() in ("none", "null", ""):
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                continue
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, (list, tuple)):
            parts = [p for p in value.split(",") if p]
            kind = type(current[0]) if current else str
            return type(current)(kind(p) for p in parts)
    except ValueError:
        raise FairstampError(f"{what}: cannot read {value!r} as {type(current).__name__}") from None
    return value
