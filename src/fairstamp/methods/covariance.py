"""Second moment of the keys an MLP output projection reads, over generic text (ROME's `mom2`).

ROME and MEMIT weigh their updates by C = E[k kᵀ], the uncentred second moment of the inputs k of
the MLP output projection (`ArchSpec.mlp_out_proj_path`), so that an edit changes the projection's
output little for keys the model usually sees. ROME estimated it on 100,000 Wikipedia samples;
here it is the per-token mean over the first `n_tokens` tokens of WikiText-2 *valid* (headings and
blank lines dropped, the text cut into `chunk_tokens`-token chunks, each after the Scorer's
start-of-text token; every token position counts, the start token included). Sums are kept in
float64; the mean is stored as float32 (ROME's `mom2_dtype`).

Several layers are measured in one pass (a forward pre-hook per layer; the pass stops after the
deepest). Results are cached as safetensors under
`<cache>/stats/<model fingerprint[:16]>/mlp_keys_layer<l>_<n_tokens>.safetensors`, written
atomically under a file lock; a cached file is reused without running the model.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from fairstamp.data.locations import WIKITEXT2_VALID, require
from fairstamp.data.locations import data_root as find_data_root
from fairstamp.errors import DataError, FairstampError
from fairstamp.models.archspec import check_layers
from fairstamp.models.loader import cache_root
from fairstamp.scoring.batching import pad_batch
from fairstamp.scoring.scorer import Scorer
from fairstamp.stamp.artefact import model_fingerprint
from fairstamp.utils.devices import input_device
from fairstamp.utils.hooks import Capture
from fairstamp.utils.io import atomic_write_bytes, file_lock, sha256_file
from fairstamp.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: Tokens of WikiText-2 valid the second moment is estimated on (ROME: 100k Wikipedia samples).
DEFAULT_N_TOKENS = 50_000
#: Tokens per chunk (start-of-text token included).
CHUNK_TOKENS = 128
_TENSOR = "mom2"
_META = "fairstamp"  # one metadata key (a sorted JSON string), so equal stats give equal bytes


def stats_path(folder: Path, layer: int, n_tokens: int) -> Path:
    return folder / f"mlp_keys_layer{layer}_{n_tokens}.safetensors"


def stats_folder(model: torch.nn.Module, cache_dir: str | Path | None = None) -> Path:
    """`<cache>/stats/<fingerprint[:16]>`: statistics belong to one set of weights."""
    return cache_root(cache_dir) / "stats" / model_fingerprint(model)[:16]


def generic_text_path(data_root: str | Path | None) -> Path:
    """WikiText-2 valid in the public data folder (default: $FAIRSTAMP_DATA or ../shared/data)."""
    return require(data_root if data_root is not None else find_data_root(), WIKITEXT2_VALID,
                   "WikiText-2 valid, for ROME/MEMIT key statistics")


def text_chunks(tokenizer: Any, path: str | Path, n_tokens: int, *,
                prefix_id: int | None, chunk_tokens: int = CHUNK_TOKENS) -> list[list[int]]:
    """The first `n_tokens` tokens of the text as chunks of at most `chunk_tokens` tokens, each
    led by `prefix_id` (counted), in file order."""
    if n_tokens < 1:
        raise FairstampError(f"n_tokens must be positive, not {n_tokens}")
    lead = 1 if prefix_id is not None else 0
    if chunk_tokens <= lead:
        raise FairstampError(f"chunk_tokens must exceed {lead}")
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("=")]
    body = chunk_tokens - lead
    chunks: list[list[int]] = []
    pending: list[int] = []
    total = 0
    for start in range(0, len(lines), 256):
        for ids in tokenizer(lines[start : start + 256], add_special_tokens=False).input_ids:
            pending.extend(ids)
        while len(pending) >= body and total < n_tokens:
            take = min(body, n_tokens - total - lead)
            chunks.append([prefix_id] * lead + pending[:take])
            pending, total = pending[take:], total + take + lead
        if total >= n_tokens:
            return chunks
    if pending and total + lead < n_tokens:
        take = min(len(pending), n_tokens - total - lead)
        chunks.append([prefix_id] * lead + pending[:take])
        total += take + lead
    if total < n_tokens:
        raise DataError(f"{path}: only {total} tokens of text, {n_tokens} requested (n_tokens)")
    return chunks



@torch.no_grad()
def second_moments(loaded: Any, layers: Sequence[int], chunks: Sequence[Sequence[int]], *,
                   batch_size: int = 8, progress: bool | None = None) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (float64, per-token mean over every non-pad position) of the MLP output
    projection's inputs at each layer, in one pass over `chunks`."""
    model, arch = loaded.model, loaded.arch
    paths = {layer: arch.mlp_out_proj_path(layer) for layer in sorted(set(layers))}
    device = input_device(model)
    pad = Scorer.from_loaded(loaded).pad_token_id
    sums: dict[int, torch.Tensor] = {}
    count = 0
    batches = [chunks[i : i + batch_size] for i in range(0, len(chunks), batch_size)]
    with progress_bar(len(batches), "key statistics", progress) as step:
        for batch in batches:
            ids, mask, positions = pad_batch(batch, pad)
            tokens = mask.bool().to(device)
            # The forward pass stops at the deepest layer's projection.
            with Capture(model, inputs=list(paths.values()), stop=True) as seen:
                model(input_ids=ids.to(device), attention_mask=mask.to(device),
                      position_ids=positions.to(device), use_cache=False)
            for layer, path in paths.items():
                x = seen.inputs[path]
                x = x.reshape(*tokens.shape, x.shape[-1])[tokens].double()
                gram = x.T @ x
                sums[layer] = gram if layer not in sums else sums[layer] + gram
            count += int(mask.sum())
            step()
    return {layer: (sums[layer] / count).cpu() for layer in paths}


def mlp_key_second_moments(
    loaded: Any,
    layers: Sequence[int],
    *,
    n_tokens: int = DEFAULT_N_TOKENS,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
) -> dict[int, torch.Tensor]:
    """C = E[k kᵀ] (float32, as cached) of the MLP output projection's inputs at each layer,
    from the cache or measured for the missing layers in one pass (and then cached)."""
    check_layers(layers, loaded.arch.num_layers(loaded.model), loaded.name)
    folder = stats_folder(loaded.model, cache_dir)
    out: dict[int, torch.Tensor] = {}
    with file_lock(folder / ".lock"):
        missing = [layer for layer in sorted(set(layers))
                   if not stats_path(folder, layer, n_tokens).is_file()]
        if missing:
            path = generic_text_path(data_root)
            scorer = Scorer.from_loaded(loaded)
            chunks = text_chunks(loaded.tokenizer, path, n_tokens,
                                 prefix_id=scorer.prefix_token_id)
            start = time.perf_counter()
            log.info("measuring MLP key statistics of layers %s on %d tokens of %s", missing,
                     n_tokens, path.name)
            measured = second_moments(loaded, missing, chunks, progress=progress)
            meta = {_META: json.dumps({"n_tokens": n_tokens, "chunk_tokens": CHUNK_TOKENS,
                                       "text": str(path.name),
                                       "text_sha256": sha256_file(path),
                                       "statistic": "uncentred second moment, per-token mean"},
                                      sort_keys=True)}
            for layer, moment in measured.items():
                tensor = {_TENSOR: moment.to(torch.float32).contiguous()}
                atomic_write_bytes(stats_path(folder, layer, n_tokens),
                                   save(tensor, metadata=meta))
            log.info("key statistics measured in %.1f s", time.perf_counter() - start)
        for layer in layers:
            out[layer] = load_file(str(stats_path(folder, layer, n_tokens)))[_TENSOR]
    return out


def context_second_moments(context: Any, layers: Sequence[int], n_tokens: int
                           ) -> dict[int, torch.Tensor]:
    """`mlp_key_second_moments` with the data and cache folders of an `EditContext`."""
    return mlp_key_second_moments(context.loaded, layers, n_tokens=n_tokens,
                                  data_root=context.data_root, cache_dir=context.cache_dir,
                                  progress=context.progress)


__all__ = ["DEFAULT_N_TOKENS", "context_second_moments", "mlp_key_second_moments",
           "second_moments", "stats_folder", "text_chunks"]
