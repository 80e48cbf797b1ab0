"""Load a causal LM and its tokenizer by alias, local folder or Hugging Face id.

Aliases (see `aliases.py`) are converted once from GGUF (transformers dequantizes to fp32) into a
safetensors folder in the cache; the conversion happens in a staging folder under a file lock and
is renamed into place, so concurrent or interrupted runs never leave a broken cache.
"""

from __future__ import annotations

import difflib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairstamp.errors import FairstampError, ModelNotFoundError
from fairstamp.models.aliases import ALIASES, ModelAlias
from fairstamp.models.archspec import ArchSpec, arch_spec_for, arch_spec_for_model_type
from fairstamp.models.placement import dtype_name, normalise_max_memory, torch_dtype
from fairstamp.utils.devices import input_device
from fairstamp.utils.io import atomic_write_json, file_lock, sha256_file, staging_dir

log = logging.getLogger(__name__)

CACHE_ENV = "FAIRSTAMP_CACHE"
_MARKER = "fairstamp_source.json"


@dataclass
class LoadedModel:
    """A model ready for fairstamp: eval mode, weights frozen, with its architecture table entry."""

    model: nn.Module
    tokenizer: Any
    arch: ArchSpec
    name: str
    source: str  # "alias", "local" or "hub"
    path: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where the model reads its token ids (its input embeddings' execution device); with a
        device map, other modules may compute elsewhere (`utils.devices.execution_device`)."""
        return input_device(self.model)

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers(self.model)

    @property
    def dtype(self) -> torch.dtype:
        """The frozen model's precision."""
        return getattr(self.model, "dtype", None) or next(self.model.parameters()).dtype

    @property
    def device_map(self) -> dict[str, str] | None:
        """Module name → device of a model loaded with a device map (accelerate's
        `hf_device_map`, devices as strings); None when it sits whole on one device."""
        placed = getattr(self.model, "hf_device_map", None)
        if not placed:
            return None
        return {name: f"cuda:{d}" if isinstance(d, int) else str(d) for name, d in placed.items()}

    def placement(self) -> dict[str, Any]:
        """Precision and placement, for run records: {"dtype": "bfloat16", "device_map": ...}."""
        return {"dtype": dtype_name(self.dtype), "device_map": self.device_map}


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted models live: the argument, else $FAIRSTAMP_CACHE, else ~/.cache/fairstamp."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fairstamp"


def alias_cache_dir(alias: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / "models" / alias


def cached_alias_info(alias: str, cache_dir: str | os.PathLike[str] | None = None) -> dict | None:
    """The conversion record of a cached alias, or None when it is not (completely) cached."""
    import json

    marker = alias_cache_dir(alias, cache_dir) / _MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


def _strip_quantization(model: nn.Module) -> None:
    """Forget that the weights came from GGUF so that save_pretrained writes plain fp32 tensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def convert_alias(
    alias: ModelAlias, cache_dir: str | os.PathLike[str] | None = None, *, force: bool = False
) -> Path:
    """Convert an alias's GGUF file to a safetensors folder in the cache (once) and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = alias_cache_dir(alias.name, cache_dir)
    version = alias.installed_version()
    with file_lock(final.parent / f".{alias.name}.lock"):
        info = cached_alias_info(alias.name, cache_dir)
        if info is not None and not force:
            if info.get("package_version") == version:
                return final
            log.info("cached %s came from %s %s; reconverting from %s", alias.name,
                     alias.distribution, info.get("package_version"), version)
        log.info("converting %s from GGUF to safetensors in %s (once)", alias.name, final)
        with tempfile.TemporaryDirectory(prefix="fairstamp-gguf-", dir=final.parent) as work:
            gguf = alias.materialize(Path(work))
            kwargs = dict(gguf_file=gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), dtype=torch.float32, **kwargs
            )
            _strip_quantization(model)
            with staging_dir(final, overwrite=True) as stage:
                model.save_pretrained(stage, safe_serialization=True)
                tokenizer.save_pretrained(stage)
                import transformers

                atomic_write_json(
                    stage / _MARKER,
                    {
                        "alias": alias.name,
                        "distribution": alias.distribution,
                        "package_version": version,
                        "gguf_file": alias.gguf_name,
                        "gguf_sha256": sha256_file(gguf),
                        "upstream": alias.upstream,
                        "license": alias.license,
                        "transformers_version": transformers.__version__,
                    },
                )
    return final


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(("/", os.sep)) or (
        name.count("/") > 1
    )


def _resolve(name_or_path: str, cache_dir) -> tuple[str, str, str]:
    """(source kind, folder or hub id, display name) for a model reference."""
    if name_or_path in ALIASES:
        return "alias", str(convert_alias(ALIASES[name_or_path], cache_dir)), name_or_path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a model folder (no config.json)")
        return "local", str(path), str(path)
    if path.exists():
        raise ModelNotFoundError(f"{path}: expected a model folder, found a file")
    if _looks_like_path(name_or_path):
        raise ModelNotFoundError(f"{name_or_path}: no such model folder")
    close = difflib.get_close_matches(name_or_path, list(ALIASES), n=1, cutoff=0.75)
    if close:
        raise ModelNotFoundError(
            f"unknown model alias {name_or_path!r}; did you mean {close[0]!r}? "
            f"(aliases: {', '.join(ALIASES)})"
        )
    return "hub", name_or_path, name_or_path


def _unknown_model_message(name: str, exc: Exception) -> str:
    close = difflib.get_close_matches(name, list(ALIASES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"cannot load {name!r}: not a fairstamp alias ({', '.join(ALIASES)}), not a local folder, "
        f"and the Hugging Face Hub could not provide it ({first}).{hint}"
    )


def _config(name_or_path: str, cache_dir, revision: str | None, trust_remote_code: bool
            ) -> tuple[str, str, str, Any, dict[str, Any]]:
    """(source kind, folder or hub id, display name, config, hub kwargs) of a model reference;
    an unsupported family is refused here, before any weights are read."""
    from transformers import AutoConfig

    source, where, display = _resolve(name_or_path, cache_dir)
    hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        hub_kwargs["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(where, **hub_kwargs)
    except OSError as exc:
        if source == "hub":
            raise ModelNotFoundError(_unknown_model_message(name_or_path, exc)) from exc
        raise ModelNotFoundError(f"{where}: cannot read config.json ({exc})") from exc
    arch_spec_for_model_type(config.model_type)
    return source, where, display, config, hub_kwargs


def peek_num_layers(name_or_path: str, *, cache_dir: str | os.PathLike[str] | None = None,
                    revision: str | None = None, trust_remote_code: bool = False) -> int:
    """The number of transformer layers of a model, from its config alone (no weights read), so
    that a layer option can be checked before any model work. An alias is converted first if it
    is not cached yet (as `load` would)."""
    _, _, display, config, _ = _config(name_or_path, cache_dir, revision, trust_remote_code)
    config = getattr(config, "text_config", None) or config
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int):
        raise FairstampError(f"{display}: its config names no number of layers")
    return layers


def load(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM + tokenizer by alias (`smollm2-135m`, `gemma-3-270m`), folder or hub id.

    The architecture is checked against the ArchSpec table before any weights are read. The model
    is returned in eval mode with every parameter frozen; methods unfreeze what they train.

    dtype:          the weights' precision (a torch dtype or "float32", "bfloat16", "float16").
    device:         one device for the whole model; or
    device_map:     accelerate's placement, module by module ("auto", "balanced", "sequential",
                    a device, or {module name: device}; `models.placement`), with
    max_memory:     per-device budgets for a strategy ({0: "10GiB", "cpu": "30GiB"}) and
    offload_folder: where disk-offloaded weights are written when they cannot be read in place.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is not None and device_map is not None:
        raise ValueError("give either device or device_map, not both")
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ValueError("max_memory and offload_folder need a device_map")
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    source, where, display, config, hub_kwargs = _config(name_or_path, cache_dir, revision,
                                                          trust_remote_code)
    placement: dict[str, Any] = {}
    if isinstance(device_map, dict):
        _check_map_names(config, device_map, display, trust_remote_code)
    if device_map is not None:
        placement = {"device_map": device_map, "max_memory": normalise_max_memory(max_memory),
                     "offload_folder": str(offload_folder) if offload_folder else None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **hub_kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **placement,
                                                     **hub_kwargs)
    except OSError as exc:
        raise FairstampError(f"{display}: cannot load weights or tokenizer ({exc})") from exc
    except (ValueError, KeyError) as exc:
        if not placement:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (" (pass --offload-folder)" if "offload" in first.lower() else "")
        raise FairstampError(f"{display}: cannot place the model with this device map: "
                             f"{first}{hint}") from None
    if getattr(model, "hf_quantizer", None) is not None and source != "alias":
        log.warning("%s is quantized; scores are computed with its dequantized weights", display)
    if device is not None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    spec = arch_spec_for(model)
    info: dict[str, Any] = {"model_type": config.model_type, "num_layers": spec.num_layers(model)}
    if source == "alias":
        info.update(cached_alias_info(name_or_path, cache_dir) or {})
    loaded = LoadedModel(model, tokenizer, spec, display, source, where, info)
    info.update(loaded.placement())
    log.info("loaded %s (%s, %d layers, %s) from %s", display, spec.family, info["num_layers"],
             info["dtype"], where)
    if loaded.device_map is not None:
        log.info("device map: %s", _describe_map(loaded.device_map))
    return loaded


def _check_map_names(config: Any, device_map: dict[str, Any], display: str,
                     trust_remote_code: bool) -> None:
    """Refuse a device map that names modules the model does not have or leaves weights without
    a device (transformers would put those on the CPU silently), from the model's skeleton on
    the meta device (no weights read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = {name for name, _ in skeleton.named_modules()}
    unknown = [name for name in device_map if name not in modules]
    if unknown:
        top = [name for name in modules if name and name.count(".") <= 2][:12]
        raise FairstampError(f"{display}: the device map names modules it does not have: "
                             f"{', '.join(unknown[:3])} (its modules include "
                             f"{', '.join(sorted(top))})")
    placed = [name for name in device_map]
    missing = [name for name, _ in skeleton.named_parameters()
               if not any(p == "" or name == p or name.startswith(p + ".") for p in placed)]
    if missing:
        raise FairstampError(f"{display}: the device map gives no device to "
                             f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")


def _describe_map(device_map: dict[str, str]) -> str:
    """`{"model.layers.0": "cpu", "model.layers.1": "disk"}` → "cpu: 1 module, disk: 1 module"."""
    counts: dict[str, int] = {}
    for device in device_map.values():
        counts[device] = counts.get(device, 0) + 1
    return ", ".join(f"{d}: {n} module{'s' if n > 1 else ''}" for d, n in counts.items())
