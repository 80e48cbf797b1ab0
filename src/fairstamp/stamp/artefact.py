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
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from torch import nn

from fairstamp import __version__
from fairstamp.errors import FairstampError
from fairstamp.models.archspec import ArchSpec, check_layer
from fairstamp.models.placement import DEFAULT_DTYPE, DTYPES, dtype_name, torch_dtype
from fairstamp.stamp.module import ACTIVATIONS, READS, FairnessStamp, StampedMLP, attach, detach
from fairstamp.utils.devices import resident
from fairstamp.utils.io import atomic_write_bytes, atomic_write_json, staging_dir
from fairstamp.utils.repro import library_versions

log = logging.getLogger(__name__)

CONFIG_NAME = "stamp_config.json"
WEIGHTS_NAME = "stamp.safetensors"
FORMAT_VERSION = 1


def model_fingerprint(model: nn.Module, rounded_to: str | None = None) -> str:
    """sha256 of the base model: its config's shape fields and every parameter (stamps excluded),
    in name order, as float32 bytes. Identical weights give the same fingerprint on any device,
    offloaded ones included. `rounded_to` ("bfloat16", "float16"): of the weights rounded to that
    precision first, which is the fingerprint of the same checkpoint loaded in it."""
    return model_fingerprints(model, [rounded_to])[0]


def model_fingerprints(model: nn.Module, roundings: Sequence[str | None]) -> list[str]:
    """`model_fingerprint(model, r)` for each r of `roundings`, reading every weight once."""
    digests = [hashlib.sha256() for _ in roundings]
    config = getattr(model, "config", None)
    shape = {k: getattr(config, k, None) for k in
             ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "n_layer",
              "intermediate_size")}
    for digest in digests:
        digest.update(json.dumps(shape, sort_keys=True).encode())
    dtypes = [None if r is None else torch_dtype(r) for r in roundings]
    stamp_params = {id(p) for m in model.modules() if isinstance(m, FairnessStamp)
                    for p in m.parameters()}
    named = [(name.replace(".base_layer", ""), name, p) for name, p in model.named_parameters()
             if id(p) not in stamp_params]
    for shown, name, param in sorted(named, key=lambda x: x[0]):
        with _readable(model, name, param) as value:
            for digest, dtype in zip(digests, dtypes):
                weights = value if dtype is None else value.to(dtype)
                digest.update(shown.encode())
                digest.update(weights.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return [d.hexdigest() for d in digests]


@contextmanager
def _readable(model: nn.Module, name: str, param: torch.Tensor) -> Iterator[torch.Tensor]:
    """The values of parameter `name`: itself, or, offloaded (`meta`), read back by accelerate
    for the block."""
    if param.device.type != "meta":
        yield param.detach()
        return
    owner_path, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    with resident(owner):
        yield getattr(owner, attr).detach()


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
    weights_sha256: str | None = None  # of stamp.safetensors, checked on load (absent before)
    # The precision of the model the stamp was trained on (the stamp itself is float32), and
    # the fingerprints of that model's weights rounded to lower precisions, so that the stamp
    # can be checked against the same model loaded in them (absent before: float32, none).
    model_dtype: str = DEFAULT_DTYPE
    fingerprints: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "stamp_config.json") -> StampConfig:
        """A config read from JSON, checked against the schema (types and ranges) first."""
        if not isinstance(data, dict):
            raise FairstampError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_FIELDS if k not in data]
        if missing:
            raise FairstampError(f"{source}: missing {', '.join(missing)}")
        version = data.get("format_version", FORMAT_VERSION)
        if _is_int(version) and version > FORMAT_VERSION:
            raise FairstampError(f"{source}: written by a newer fairstamp (format {version})")
        check_config_schema(data, source)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


REQUIRED_FIELDS = ("base_model", "fingerprint", "model_type", "layer", "hidden", "width")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_config_schema(data: dict[str, Any], source: str) -> None:
    """Refuse a stamp config whose fields have the wrong type or range, in one line naming the
    field, before anything is built from it."""

    def fail(name: str, expected: str) -> None:
        value = json.dumps(data[name])
        value = value if len(value) <= 40 else value[:37] + "..."
        raise FairstampError(f"{source}: field '{name}' is {value}, expected {expected}")

    for name in ("base_model", "model_type"):
        if not isinstance(data[name], str) or not data[name]:
            fail(name, "a non-empty string")
    for name in ("family", "site"):
        if data.get(name) is not None and not isinstance(data[name], str):
            fail(name, "a string")
    for name in ("fingerprint", "weights_sha256"):
        value = data.get(name)
        if name == "weights_sha256" and value is None:
            continue
        if not (isinstance(value, str) and _SHA256.fullmatch(value)):
            fail(name, "a sha256 (64 lowercase hex digits)")
    if not _is_int(data["layer"]) or data["layer"] < 0:
        fail("layer", "a layer number (an integer >= 0)")
    for name in ("hidden", "width"):
        if not _is_int(data[name]) or not 1 <= data[name] <= MAX_DIM:
            fail(name, f"an integer from 1 to {MAX_DIM}")
    if data.get("activation", "gelu") not in ACTIVATIONS:
        fail("activation", f"one of {', '.join(ACTIVATIONS)}")
    if data.get("reads", "mlp_output") not in READS:
        fail("reads", f"one of {', '.join(READS)}")
    if data.get("seed") is not None and not _is_int(data["seed"]):
        fail("seed", "an integer or null")
    for name in ("training", "versions"):
        if name in data and not isinstance(data[name], dict):
            fail(name, "an object")
    if not isinstance(data.get("model_dtype", DEFAULT_DTYPE), str):
        fail("model_dtype", "a dtype name such as float32")
    rounded = data.get("fingerprints", {})
    if not isinstance(rounded, dict) or any(
            k not in DTYPES or not (isinstance(v, str) and _SHA256.fullmatch(v))
            for k, v in rounded.items()):
        fail("fingerprints", f"an object of {', '.join(DTYPES)} to sha256s")
    if "format_version" in data and not _is_int(data["format_version"]):
        fail("format_version", "an integer")


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
            text = config_path.read_bytes().decode("utf-8")
            config = StampConfig.from_dict(json.loads(text), str(config_path))
        except UnicodeDecodeError:
            raise FairstampError(f"{config_path}: not valid UTF-8") from None
        except json.JSONDecodeError as exc:
            raise FairstampError(f"{config_path}: not valid JSON ({exc})") from None
        data = weights_path.read_bytes()
        check_weights(data, config, str(weights_path))
        try:
            tensors = load(data)
        except Exception as exc:  # safetensors' own error types; the header was checked above
            raise FairstampError(f"{weights_path}: cannot read the tensors ({exc})") from None
        module = FairnessStamp(config.hidden, config.width, activation=config.activation,
                               reads=config.reads)
        module.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
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
        num_layers = loaded.arch.num_layers(loaded.model)
        if self.config.layer >= num_layers:
            raise FairstampError(f"this stamp sits at layer {self.config.layer}; {loaded.name} "
                                 f"has {num_layers} layers (0-{num_layers - 1})")
        site = loaded.arch.mlp
        if self.config.site != site and (self.config.site is not None or loaded.arch.mlp_normed):
            # Before `site` was recorded, Gemma 3 stamps sat before the post-feed-forward norm.
            made = self.config.site or "before the norm that follows the MLP"
            raise FairstampError(
                f"this stamp was made to sit at {made!r} of layer {self.config.layer}; fairstamp "
                f"puts {loaded.arch.family} stamps at {site!r}: train it again")
        compared = self._fingerprints_to_compare(loaded)
        if compared is None:
            return
        expected, fingerprint = compared
        if fingerprint != expected:
            message = (f"this stamp was made for {self.config.base_model} (fingerprint "
                       f"{expected[:12]}); {loaded.name} has different weights "
                       f"(fingerprint {fingerprint[:12]})")
            if strict:
                raise FairstampError(message + "; refusing to attach it")
            log.warning("%s; attaching anyway", message)

    def _fingerprints_to_compare(self, loaded: Any) -> tuple[str, str] | None:
        """(recorded, found) fingerprints of the stamp's model and `loaded`, at the coarser of
        their two precisions; None (with a warning) when no recorded one is comparable."""
        made, here = self.config.model_dtype, dtype_name(loaded.dtype)
        if here == made:
            return self.config.fingerprint, model_fingerprint(loaded.model)
        if made == "float32" and here in self.config.fingerprints:
            return self.config.fingerprints[here], model_fingerprint(loaded.model)
        if here == "float32":
            return self.config.fingerprint, model_fingerprint(loaded.model, rounded_to=made)
        log.warning("this stamp was trained on %s in %s and %s is in %s: its weights cannot be "
                    "checked against the stamp's fingerprint; attaching it unchecked",
                    self.config.base_model, made, loaded.name, here)
        return None

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
    made = dtype_name(loaded.dtype)
    # A float32 model's fingerprints in the lower precisions too (one reading of the weights).
    lower = [d for d in DTYPES if d != made] if made == "float32" else []
    fingerprint, *rounded = model_fingerprints(loaded.model, [None, *lower])
    config = StampConfig(base_model=loaded.name, fingerprint=fingerprint,
                         model_type=loaded.model.config.model_type, family=arch.family,
                         layer=layer, hidden=hidden, width=width, activation=activation,
                         reads=reads, site=arch.mlp, seed=seed, training=dict(training or {}),
                         model_dtype=made, fingerprints=dict(zip(lower, rounded)))
    return Stamp(module, config)


def write_stamp_files(folder: Path, stamp: Stamp) -> None:
    """stamp.safetensors and stamp_config.json (with the weights' sha256) into `folder`, each
    written atomically."""
    # One metadata key only: safetensors writes metadata in hash-map order, which varies between
    # runs, and identical stamps must give identical bytes (the version is in the config).
    data = save(stamp.state_dict(), metadata={"format": "pt"})
    stamp.config.weights_sha256 = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(folder / WEIGHTS_NAME, data)
    atomic_write_json(folder / CONFIG_NAME, stamp.config.to_dict())


#: safetensors dtypes a stamp may be stored in (read into float32)
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
MAX_DIM = 1 << 20
_MAX_HEADER = 1 << 20


def expected_shapes(config: StampConfig) -> dict[str, list[int]]:
    """The tensors of a stamp of this config, by name, with their shapes."""
    h, w = config.hidden, config.width
    return {"up.weight": [w, h], "up.bias": [w], "down.weight": [h, w], "down.bias": [h]}


def check_weights(data: bytes, config: StampConfig, source: str) -> None:
    """Refuse a stamp.safetensors that is not what `config` describes — empty, truncated, not
    safetensors, other tensors, dtypes or shapes, or other bytes than the recorded sha256 — in
    one line, before any tensor is built. Older stamps without a checksum load with a note."""
    if len(data) < 8:
        raise FairstampError(f"{source}: {'empty' if not data else 'truncated'} "
                             f"({len(data)} bytes; not a safetensors file)")
    size = int.from_bytes(data[:8], "little")
    if size > min(_MAX_HEADER, len(data) - 8):
        raise FairstampError(f"{source}: not a safetensors file, or truncated (its header "
                             f"claims {size} bytes, the file has {len(data)})")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FairstampError(f"{source}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise FairstampError(f"{source}: not a safetensors file (unreadable header)")
    header.pop("__metadata__", None)
    expected = expected_shapes(config)
    if set(header) != set(expected):
        raise FairstampError(f"{source}: tensors {sorted(header)} do not match a stamp "
                             f"({sorted(expected)})")
    end = 0
    for name, shape in expected.items():
        entry = header[name]
        if not isinstance(entry, dict):
            raise FairstampError(f"{source}: tensor {name}: unreadable header entry")
        if entry.get("dtype") not in FLOAT_DTYPES:
            raise FairstampError(f"{source}: tensor {name} has dtype {entry.get('dtype')}, "
                                 f"expected one of {', '.join(FLOAT_DTYPES)}")
        if entry.get("shape") != shape:
            raise FairstampError(f"{source}: tensor {name} has shape {entry.get('shape')}, but "
                                 f"the config's hidden {config.hidden} and width {config.width} "
                                 f"make it {shape}")
        offsets = entry.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise FairstampError(f"{source}: tensor {name}: unreadable data offsets")
        end = max(end, offsets[1])
    if 8 + size + end > len(data):
        raise FairstampError(f"{source}: truncated ({len(data)} bytes; its header needs "
                             f"{8 + size + end})")
    if config.weights_sha256 is None:
        log.info("%s: the stamp records no sha256 of its weights (written by fairstamp before "
                 "checksums); loading it unchecked", source)
    elif hashlib.sha256(data).hexdigest() != config.weights_sha256:
        raise FairstampError(f"{source}: its sha256 differs from the one recorded in "
                             f"{CONFIG_NAME} (the file was changed or damaged after saving)")
