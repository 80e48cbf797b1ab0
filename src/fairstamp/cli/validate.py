"""Checks every command runs before any model work, worded the same way everywhere: the output
can be written and is claimed, options are in their sets and ranges, the device exists, the files
the command reads are read (and validated) first, files it will not read are named, and no
sentence is longer than the sentence length limit.

Each check raises `FairstampError` (the CLI prints one line and exits 2) or returns what it read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from fairstamp.data.validate import max_sentence_tokens
from fairstamp.errors import DataError, FairstampError
from fairstamp.utils.io import OutputClaimedError, claim_output

log = logging.getLogger(__name__)


# -- output -------------------------------------------------------------------------------------

def check_writable(path: Path, option: str = "--out") -> None:
    """Refuse an output whose nearest existing parent is not a writable folder."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FairstampError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FairstampError(f"{option} {path}: cannot write in {parent} (permission denied)")


@contextmanager
def claimed_output(path: Path | None, *, overwrite: bool = False, exist_ok: bool = False,
                   option: str = "--out") -> Iterator[None]:
    """Claim `path` for this run for the block (nothing for None): refused at once when it exists
    (unless `overwrite` / `exist_ok`), when another run holds it, or when it cannot be written
    there. The library's writers find the claim held and write into it at the end."""
    if path is None:
        yield
        return
    if path.exists() and not (overwrite or exist_ok):
        raise FairstampError(f"{option} {path} already exists (pass --overwrite to replace it)")
    check_writable(path, option)
    stack = ExitStack()
    try:
        stack.enter_context(claim_output(path, overwrite=overwrite, exist_ok=exist_ok))
    except OutputClaimedError as exc:
        raise FairstampError(f"{option} {exc}") from None
    except FileExistsError:
        raise FairstampError(f"{option} {path} already exists (pass --overwrite to replace "
                             f"it)") from None
    except OSError as exc:
        raise FairstampError(f"{option} {path}: cannot write there "
                             f"({exc.strerror or exc})") from None
    with stack:
        yield


# -- options ------------------------------------------------------------------------------------

def check_choice(value: str, choices: Iterable[str], option: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise FairstampError(f"{option} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_choices(values: Sequence[str] | None, choices: Iterable[str], option: str) -> None:
    choices = tuple(choices)
    unknown = [v for v in values or () if v not in choices]
    if unknown:
        raise FairstampError(f"{option}: unknown {', '.join(map(repr, unknown))} (choose from "
                             f"{', '.join(choices)})")


def check_positive(value: float, option: str) -> float:
    """A number that must be > 0 (a learning rate, a temperature)."""
    if not value > 0 or value != value or value == float("inf"):
        raise FairstampError(f"{option} {value}: must be a positive number")
    return value


def check_non_negative(value: float, option: str) -> float:
    if not value >= 0 or value == float("inf"):
        raise FairstampError(f"{option} {value}: must be a number >= 0")
    return value


def check_device(device: str | None, option: str = "--device") -> str | None:
    """Refuse a torch device this machine does not have (e.g. cuda without CUDA)."""
    if device is None:
        return None
    import torch  # at call time: the CLI starts without torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise FairstampError(f"{option} {device!r}: not a torch device (e.g. cpu, cuda, "
                             f"cuda:1, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "has no CUDA support" if torch.version.cuda is None else "finds no GPU"
            raise FairstampError(f"{option} {device}: CUDA is not available on this machine "
                                 f"(this torch {why}); use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise FairstampError(f"{option} {device}: this machine has {count} CUDA device(s) "
                                 f"(cuda:0 to cuda:{count - 1})")
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise FairstampError(f"{option} {device}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise FairstampError(f"{option} {device}: only cpu, cuda and mps devices are supported")
    return device


def check_placement(*, device: str | None = None, device_map: str | None = None,
                    max_memory: str | None = None, offload_folder: Path | None = None,
                    dtype: str = "float32") -> dict[str, Any]:
    """`--device`, `--device-map`, `--max-memory`, `--offload-folder` and `--dtype`, checked
    together; returns the keyword arguments of `fairstamp.models.load` (and of `load_model`)."""
    from fairstamp.models.placement import (
        DTYPES,
        STRATEGIES,
        map_devices,
        parse_device_map,
        parse_max_memory,
    )

    check_choice(dtype, DTYPES, "--dtype")
    check_device(device)
    if device is not None and (device_map is not None or max_memory is not None):
        raise FairstampError("--device puts the whole model on one device; --device-map and "
                             "--max-memory spread it over several: give one or the other")
    placed = parse_device_map(device_map) if device_map is not None else None
    memory = parse_max_memory(max_memory) if max_memory is not None else None
    if memory is not None:
        if placed is None:
            placed = "auto"
            log.info("--max-memory given: placing the model with --device-map auto")
        elif isinstance(placed, dict) or placed not in STRATEGIES:
            raise FairstampError(f"--max-memory sets the budgets of a --device-map strategy "
                                 f"({', '.join(STRATEGIES)}), not of --device-map {device_map}")
    if offload_folder is not None:
        if placed is None:
            raise FairstampError("--offload-folder holds weights offloaded by --device-map or "
                                 "--max-memory; give one of them")
        if offload_folder.exists() and not offload_folder.is_dir():
            raise FairstampError(f"--offload-folder {offload_folder}: is a file, not a folder")
        check_writable(offload_folder / "x", "--offload-folder")
    for name in map_devices(placed) if placed is not None else ():
        if name != "disk":
            check_device(name, "--device-map")
    gpus = [k for k in memory or {} if isinstance(k, int)]
    if gpus:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if max(gpus) >= count:
            raise FairstampError(f"--max-memory {max_memory}: names GPU {max(gpus)}, this "
                                 f"machine has {count} CUDA device(s)")
    if dtype == "float16" and _runs_on_cpu(device, placed, memory):
        log.warning("--dtype float16 on the CPU: most CPUs have no float16 arithmetic, so "
                    "matrix products fall back to a slow path (35x slower than float32 where "
                    "measured, docs/fast.md, Devices and precision); bfloat16 is the CPU's "
                    "half precision")
    return {"device": device, "device_map": placed, "max_memory": memory,
            "offload_folder": str(offload_folder) if offload_folder is not None else None,
            "dtype": dtype}


def _runs_on_cpu(device: str | None, device_map: Any, max_memory: Any) -> bool:
    """Whether a model placed so computes on the CPU (nothing names a GPU, and none is found
    for a strategy)."""
    if device is not None:
        return device.startswith("cpu")
    if isinstance(device_map, dict):
        return all(d in ("cpu", "disk") for d in device_map.values())
    from fairstamp.models.placement import STRATEGIES

    if isinstance(device_map, str) and device_map not in STRATEGIES:
        return device_map.startswith("cpu")
    import torch

    return not torch.cuda.is_available() or (
        max_memory is not None and not any(isinstance(k, int) for k in max_memory))


# -- files --------------------------------------------------------------------------------------

def check_input_file(path: Path | str | None, option: str) -> None:
    """A file the command will read: it exists, is a file and can be read."""
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if not p.exists():
        raise DataError(f"{option} {p}: no such file")
    if p.is_dir():
        raise DataError(f"{option} {p}: is a folder, expected a file")
    if not os.access(p, os.R_OK):
        raise DataError(f"{option} {p}: cannot read it (permission denied)")


def check_input_folder(path: Path | str | None, option: str) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{option} {p}: no such folder")


def warn_unused_files(given: dict[str, Any], read: Iterable[str], why: str) -> list[str]:
    """Name the given file options that this run will not read (returns them): e.g. a
    --crows-file when the suite has no CrowS-Pairs part."""
    read = set(read)
    unused = [option for option, value in given.items() if value is not None and
              option not in read]
    for option in unused:
        log.warning("%s %s is not read: %s", option, given[option], why)
    return unused


def check_data(data: str) -> None:
    """`--data`: a built-in set name or a file that exists."""
    if data in ("stereoset", "crows"):
        return
    if data.startswith("hf:"):
        return
    check_input_file(data, "--data")


# -- model --------------------------------------------------------------------------------------

def check_model_folder(model: str) -> None:
    """A local model folder whose config.json cannot be read or names no `model_type` is refused
    here, in one line, before transformers sees it."""
    path = Path(model).expanduser()
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return  # an alias or hub id; the loader words its own errors
    try:
        data = json.loads(config.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FairstampError(f"{config}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise FairstampError(f"{config}: names no model_type, so the model's architecture is "
                             f"unknown (is this a Hugging Face causal LM folder?)")


def peek_layers(model: str, cache_dir: Path | None) -> int:
    """The model's number of layers from its config alone, with config errors in one line."""
    from fairstamp.models.loader import peek_num_layers

    check_model_folder(model)
    try:
        return peek_num_layers(model, cache_dir=cache_dir)
    except FairstampError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise FairstampError(f"{model}: cannot read its config ({_first_line(exc)})") from None


def check_layer_option(layer: int | None, model: str, cache_dir: Path | None) -> None:
    """`--layer N` against the model's layer range, from its config alone."""
    if layer is None:
        return
    from fairstamp.models.archspec import LayerRangeError, check_layer

    try:
        check_layer(layer, peek_layers(model, cache_dir), model)
    except LayerRangeError as exc:
        raise FairstampError(f"--{exc}") from None


def load_model(model: str, *, cache_dir: Path | None, device: str | None = None,
               **placement: Any) -> Any:
    """`fairstamp.models.load`, with a model folder whose config or weights cannot be read
    reported in one line; `placement`: what `check_placement` returned (less `device`)."""
    from fairstamp.models import load

    check_model_folder(model)
    try:
        return load(model, cache_dir=cache_dir, device=device, **placement)
    except FairstampError:
        raise
    except Exception as exc:  # transformers and safetensors raise many types
        if not Path(model).expanduser().is_dir():
            raise
        raise FairstampError(f"{model}: cannot load the model ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- sentence length ----------------------------------------------------------------------------

def item_texts(item: Any) -> Iterator[tuple[str, str]]:
    """(field, text) of every sentence of a bias item, paraphrases included."""
    for name in ("stereo", "anti", "unrelated"):
        text = getattr(item, name, None)
        if text:
            yield name, text
    for k, para in enumerate(getattr(item, "paraphrases", ()) or ()):
        yield f"paraphrases[{k}].stereo", para.stereo
        yield f"paraphrases[{k}].anti", para.anti


def first_too_long(texts: Sequence[str], tokenizer: Any,
                   max_tokens: int | None = None) -> tuple[int, int] | None:
    """(index, tokens) of the first text longer than `max_tokens` tokens (the limit in force by
    default), counting the BOS the scorer adds; None when all fit. Texts were already capped in
    characters when read, so tokenizing them is cheap; none goes into a model batch."""
    limit = max_sentence_tokens() if max_tokens is None else max_tokens
    if not texts:
        return None
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for index, row in enumerate(ids):
        if len(row) + 1 > limit:
            return index, len(row) + 1
    return None


def check_token_lengths(texts: Sequence[str], where: Sequence[str], tokenizer: Any,
                        max_tokens: int | None = None) -> None:
    """Refuse the first text longer than the limit, naming `where[i]`."""
    found = first_too_long(texts, tokenizer, max_tokens)
    if found is not None:
        index, n = found
        limit = max_sentence_tokens() if max_tokens is None else max_tokens
        raise DataError(f"{where[index]}: the sentence is {n} tokens long, over the limit of "
                        f"{limit} (--max-sentence-tokens)")


def item_location(item_id: str, data: str) -> str:
    """Where an item is, for messages: `file:line` for a JSON Lines file, else `SOURCE: item X`."""
    path = Path(data)
    if data not in ("stereoset", "crows") and path.suffix not in (".json", ".csv") \
            and path.is_file():
        from fairstamp.data.readers import iter_jsonl

        for _, number, obj in iter_jsonl(path):
            if obj.get("id") == item_id:
                return f"{data}:{number}"
    return f"{data}: item {item_id}"


def check_item_lengths(items: Sequence[Any], data: str, tokenizer: Any,
                       max_tokens: int | None = None) -> None:
    """No sentence of any bias item (paraphrases included) longer than the limit; the error
    names file:line (or the item) and the field."""
    rows = [(item.id, field, text) for item in items for field, text in item_texts(item)]
    found = first_too_long([t for _, _, t in rows], tokenizer, max_tokens)
    if found is not None:
        index, n = found
        item_id, field, _ = rows[index]
        limit = max_sentence_tokens() if max_tokens is None else max_tokens
        raise DataError(f"{item_location(item_id, data)}: field '{field}' is {n} tokens long, "
                        f"over the limit of {limit} (--max-sentence-tokens)")
