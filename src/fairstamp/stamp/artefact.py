"""A stamp on disk: `stamp_config.json` + `stamp.safetensors`, tied to its base model.

The config records the base model's name and fingerprint (a sha256 over its architecture and every
weight), where the stamp sits, its shape, how it was trained and with which seed and library
versions. Loading onto a model whose fingerprint differs is refused: a stamp computed for one
model's hidden states is meaningless on another's. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from fairstamp import __version__
from fairstamp.errors import FairstampError
from fairstamp.models.archspec import ArchSpec, check_layer
from fairstamp.stamp.module import FairnessStamp, StampedMLP, attach, detach
from fairstamp.utils.io import atomic_write_bytes, atomic_write_json, staging_dir
from fairstamp.utils.repro import library_versions

log = logging.getLogger(__name__)

CONFIG_NAME = "stamp_config.json"
WEIGHTS_NAME = "stamp.safetensors"
FORMAT_VERSION = 1


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the base model: its config's shape fields and every parameter (stamps excluded),
    in name order, as float32 bytes. Identical weights give the same fingerprint on any device."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    shape = {k: getattr(config, k, None) for k in
             ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "n_layer",
              "intermediate_size")}
    digest.update(json.dumps(shape, sort_keys=True).encode())
    stamp_params = {id(p) for m in model.modules() if isinstance(m, FairnessStamp)
                    for p in m.parameters()}
    named = [(name.replace(".base_layer", ""), p) for name, p in model.named_parameters()
             if id(p) not in stamp_params]
    for name, param in sorted(named, key=lambda x: x[0]):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class StampConfig:
    """Everything needed to rebuild a stamp and to check it belongs to a model."""

    base_model: str
    fingerprint: str
    model_type: str
    family: str
    layer: int
    hidden: int
    width: int
    activation: str = "gelu"
    reads: str = "mlp_output"
    site: str | None = None  # the module the stamp wraps, relative to its layer (ArchSpec.mlp)
    seed: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    fairstamp_version: str = __version__
    versions: dict[str, str] = field(default_factory=library_versions)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "stamp_config.json") -> StampConfig:
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("base_model", "fingerprint", "model_type", "layer", "hidden",
                               "width") if k not in data]
        if missing:
            raise FairstampError(f"{source}: missing {', '.join(missing)}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise FairstampError(f"{source}: written by a newer fairstamp "
                                 f"(format {data['format_version']})")
        return cls(**{k: v for k, v in data.items() if k in known})


class Stamp:
    """A trained stamp: its module and its config. `save_pretrained` / `from_pretrained` as in
    peft; `attach_to(loaded)` puts it into a model."""

    def __init__(self, module: FairnessStamp, config: StampConfig) -> None:
        self.module = module
        self.config = config

    @property
    def layer(self) -> int:
        return self.config.layer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.module.state_dict().items()}

    def save_pretrained(self, folder: str | Path, *, overwrite: bool = False,
                        extra_files: dict[str, Any] | None = None) -> Path:
        """Write `folder` atomically (stamp_config.json, stamp.safetensors, and any extra JSON
        files given as {name: object}); an existing folder is refused unless `overwrite`."""
        folder = Path(folder)
        with staging_dir(folder, overwrite=overwrite) as stage:
            write_stamp_files(stage, self)
            for name, obj in (extra_files or {}).items():
                atomic_write_json(stage / name, obj)
        log.info("saved stamp (layer %d, width %d) to %s", self.layer, self.config.width, folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, loaded: Any = None, *, attach: bool = True,
                        check_fingerprint: bool = True) -> Stamp:
        """Read a stamp; with `loaded` (a LoadedModel), check it was made for that model and
        (by default) attach it."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FairstampError(f"{folder}: not a stamp folder (no {path.name})")
        try:
            config = StampConfig.from_dict(json.loads(config_path.read_text()), str(config_path))
        except json.JSONDecodeError as exc:
            raise FairstampError(f"{config_path}: not valid JSON ({exc})") from None
        tensors = load_file(str(weights_path))
        module = FairnessStamp(config.hidden, config.width, activation=config.activation,
                               reads=config.reads)
        expected = set(module.state_dict())
        if set(tensors) != expected:
            raise FairstampError(f"{weights_path}: tensors {sorted(tensors)} do not match a "
                                 f"stamp ({sorted(expected)})")
        module.load_state_dict(tensors)
        stamp = cls(module, config)
        if loaded is not None:
            stamp.check_model(loaded, strict=check_fingerprint)
            if attach:
                stamp.attach_to(loaded)
        return stamp

    def check_model(self, loaded: Any, *, strict: bool = True) -> None:
        """Refuse (or, not strict, warn about) a model this stamp was not made for."""
        model_type = loaded.model.config.model_type
        if model_type != self.config.model_type:
            raise FairstampError(
                f"this stamp was made for {self.config.base_model} ({self.config.model_type}); "
                f"{loaded.name} is a {model_type} model")
        hidden = int(loaded.model.config.hidden_size)
        if hidden != self.config.hidden:
            raise FairstampError(f"this stamp expects hidden size {self.config.hidden}; "
                                 f"{loaded.name} has {hidden}")
        site = loaded.arch.mlp
        if self.config.site != site and (self.config.site is not None or loaded.arch.mlp_normed):
            # Before `site` was recorded, Gemma 3 stamps sat before the post-feed-forward norm.
            made = self.config.site or "before the norm that follows the MLP"
            raise FairstampError(
                f"this stamp was made to sit at {made!r} of layer {self.config.layer}; fairstamp "
                f"puts {loaded.arch.family} stamps at {site!r}: train it again")
        fingerprint = model_fingerprint(loaded.model)
        if fingerprint != self.config.fingerprint:
            message = (f"this stamp was made for {self.config.base_model} (fingerprint "
                       f"{self.config.fingerprint[:12]}); {loaded.name} has different weights "
                       f"(fingerprint {fingerprint[:12]})")
            if strict:
                raise FairstampError(message + "; refusing to attach it")
            log.warning("%s; attaching anyway", message)

    def attach_to(self, loaded: Any) -> StampedMLP:
        return attach(loaded.model, loaded.arch, self.layer, self.module)

    def detach_from(self, loaded: Any) -> None:
        detach(loaded.model, loaded.arch, self.module)


def new_stamp(loaded: Any, layer: int, *, width: int, activation: str = "gelu",
              reads: str = "mlp_output", seed: int = 0,
              training: dict[str, Any] | None = None) -> Stamp:
    """A zero-effect stamp for `loaded` at `layer` (not yet attached)."""
    arch: ArchSpec = loaded.arch
    check_layer(layer, arch.num_layers(loaded.model), loaded.name)
    hidden = int(loaded.model.config.hidden_size)
    generator = torch.Generator().manual_seed(seed)
    module = FairnessStamp(hidden, width, activation=activation, reads=reads,
                           generator=generator)
    config = StampConfig(base_model=loaded.name, fingerprint=model_fingerprint(loaded.model),
                         model_type=loaded.model.config.model_type, family=arch.family,
                         layer=layer, hidden=hidden, width=width, activation=activation,
                         reads=reads, site=arch.mlp, seed=seed, training=dict(training or {}))
    return Stamp(module, config)


def write_stamp_files(folder: Path, stamp: Stamp) -> None:
    """stamp_config.json and stamp.safetensors into `folder` (each written atomically)."""
    atomic_write_json(folder / CONFIG_NAME, stamp.config.to_dict())
    # One metadata key only: safetensors writes metadata in hash-map order, which varies between
    # runs, and identical stamps must give identical bytes (the version is in the config).
    atomic_write_bytes(folder / WEIGHTS_NAME, save(stamp.state_dict(), metadata={"format": "pt"}))
