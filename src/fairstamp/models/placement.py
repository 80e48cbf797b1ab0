"""Where a model's weights live and in which precision: the `--dtype`, `--device-map`,
`--max-memory` and `--offload-folder` options, parsed and checked before any model work.

- dtype: the frozen model's weights and activations (float32, bfloat16 or float16). Stamps,
  their optimiser state and every loss and score stay float32.
- device map: a strategy of accelerate (auto, balanced, balanced_low_0, sequential), one device
  (cpu, cuda:0, ...), or a JSON object (inline or in a file) from module names to devices (a GPU
  number, "cuda:N", "cpu" or "disk"); transformers and accelerate place the modules, and
  offloaded ones ("cpu" next to a GPU, "disk") are loaded on the fly for each forward pass.
- max memory: per device, e.g. `0=10GiB,cpu=30GiB` (a strategy's budget; implies --device-map
  auto when no map is given).
- offload folder: where weights that cannot be read in place are written for disk offload
  (a safetensors checkpoint, as every converted alias is, is read in place and needs none).

Parsing needs no torch; `torch_dtype` imports it when called.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fairstamp.errors import FairstampError

#: --dtype's choices, the default first.
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DTYPE = "float32"
#: Device-map strategies that transformers resolves with accelerate's `infer_auto_device_map`.
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

_SIZE = re.compile(r"(\d+(\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)


def torch_dtype(name: str) -> Any:
    """The torch dtype of one of DTYPES."""
    import torch

    if name not in DTYPES:
        raise FairstampError(f"dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def dtype_name(dtype: Any) -> str:
    """`torch.bfloat16` → "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def parse_device_map(value: str, option: str = "--device-map") -> str | dict[str, Any]:
    """A strategy name, a single device name (returned as is), or a JSON object of module names
    to devices, given inline (`{"model.layers.0": 0, ...}`) or as a file path."""
    text = value.strip()
    if text in STRATEGIES:
        return text
    if text.startswith("{"):
        return _device_map_object(text, option)
    path = Path(text).expanduser()
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FairstampError(f"{option} {value}: no such file")
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FairstampError(f"{option} {value}: cannot read it ({exc})") from None
        return _device_map_object(raw, f"{option} {value}")
    return text  # one device; checked by the caller like --device


def _device_map_object(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FairstampError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise FairstampError(f"{where}: expected a JSON object of module names to devices, e.g. "
                             '{"model.embed_tokens": 0, "model.layers.0": 0, "lm_head": "cpu"}')
    for name, device in data.items():
        if isinstance(device, bool) or not isinstance(device, (int, str)) or (
                isinstance(device, int) and device < 0):
            raise FairstampError(f"{where}: module {name!r} has device {json.dumps(device)}; "
                                 f"expected a GPU number, \"cuda:N\", \"cpu\" or \"disk\"")
    return data


def map_devices(device_map: str | dict[str, Any]) -> list[str]:
    """The devices a parsed device map names, as torch device strings ("disk" kept): what must
    exist on this machine. A strategy names none."""
    if isinstance(device_map, str):
        return [] if device_map in STRATEGIES else [device_map]
    return sorted({f"cuda:{d}" if isinstance(d, int) else d for d in device_map.values()})


def parse_max_memory(value: str, option: str = "--max-memory") -> dict[int | str, str]:
    """`0=10GiB,cpu=30GiB` → {0: "10GiB", "cpu": "30GiB"} (GPU numbers as ints, as accelerate
    wants them); sizes in B, KB/KiB, MB/MiB, GB/GiB or TB/TiB, or bytes."""
    out: dict[int | str, str] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        key, sep, size = (s.strip() for s in part.partition("="))
        if not sep or not key or not size:
            raise FairstampError(f"{option}: expected DEVICE=SIZE, e.g. 0=10GiB,cpu=30GiB, got "
                                 f"{part!r}")
        device: int | str = int(key) if key.isdigit() else key.lower()
        if isinstance(device, str) and device not in ("cpu", "mps", "disk"):
            raise FairstampError(f"{option}: unknown device {key!r} (a GPU number, cpu, mps or "
                                 f"disk)")
        if not _SIZE.fullmatch(size):
            raise FairstampError(f"{option}: {key}={size}: expected a size such as 10GiB, "
                                 f"500MB or a number of bytes")
        if device in out:
            raise FairstampError(f"{option}: device {key} is given twice")
        out[device] = size
    if not out:
        raise FairstampError(f"{option}: name at least one DEVICE=SIZE, e.g. 0=10GiB,cpu=30GiB")
    return out


def normalise_max_memory(max_memory: dict[Any, Any] | None) -> dict[int | str, Any] | None:
    """A max-memory mapping read back from JSON (GPU numbers became strings) as accelerate
    wants it."""
    if max_memory is None:
        return None
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in max_memory.items()}
