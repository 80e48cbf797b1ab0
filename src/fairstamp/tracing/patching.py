"""Activation patching by noise corruption and restoration (causal tracing, after ROME).

One generic function, in the shape of TransformerLens's `patching.py`: `patch_activations` runs a
group of token sequences clean once, caching every component it will restore; then runs them
corrupted (Gaussian noise added to the token embeddings at chosen positions) with many
restorations at once, and returns the metric of each run. A run may need several sequences
together (bias tracing needs a stereotype and an anti-stereotype sentence for one gap), so the
metric sees the logits of the whole group.

Speed: every restoration and every noise sample is a slice of the batch dimension of one forward
pass (row = (run, sample, sequence)); each hook writes clean values into its own rows only. Noise
sample k is the same tensor in every run, so the runs' metrics differ only by what they restore.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fairstamp.models.archspec import ArchSpec, check_layer, check_layers
from fairstamp.scoring.batching import logits_token_budget, pad_batch
from fairstamp.utils.devices import execution_device, input_device
from fairstamp.utils.hooks import Capture, first_tensor, hooks, replace_first
from fairstamp.utils.modules import get_module

COMPONENTS = ("mlp", "attn", "resid")

#: Memory for the float32 logits of one corrupted forward pass (sets how many runs share a
#: batch); tracing's own figure, half the Scorer's (`scoring.batching.LOGITS_BUDGET_BYTES`).
TRACE_LOGITS_BUDGET_BYTES = 256 * 2**20

Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Restoration:
    """Put back the clean output of `component` in `layers` at `positions`.

    component: "mlp" (the output of `ArchSpec.mlp_path`), "attn" (the first output of
               `ArchSpec.attn_path`) or "resid" (the decoder layer's output hidden states).
    layers:    the layers whose component is restored (a window, see `window_layers`); empty
               restores nothing (the corrupted run itself).
    positions: token positions to restore, one tuple per sequence of the group.
    """

    component: str
    layers: tuple[int, ...]
    positions: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown component {self.component!r}; use one of {COMPONENTS}")


@dataclass(frozen=True)
class TokenGroup:
    """Token sequences run together, right-padded, with explicit positions (as `Scorer` pads)."""

    input_ids: torch.Tensor  # [G, T] long
    attention_mask: torch.Tensor  # [G, T] long
    position_ids: torch.Tensor  # [G, T] long
    lengths: tuple[int, ...]

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]],
                       pad_token_id: int = 0) -> TokenGroup:
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("a token group needs at least one non-empty sequence")
        ids, mask, positions = pad_batch(sequences, pad_token_id)
        return cls(ids, mask, positions, tuple(len(s) for s in sequences))

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass(frozen=True)
class Corruption:
    """Noise added to the token embeddings where `mask` is set.

    mask:  [G, T] bool, the corrupted positions of each sequence.
    noise: [K, T, H] (the same noise at a position in every sequence) or [K, G, T, H]; K is the
           number of noise samples.
    """

    mask: torch.Tensor
    noise: torch.Tensor

    @property
    def samples(self) -> int:
        return int(self.noise.shape[0])

    def per_sequence(self, group_size: int) -> torch.Tensor:
        """The noise as [K, G, T, H], zero outside the mask."""
        noise = self.noise if self.noise.dim() == 4 else self.noise.unsqueeze(1)
        noise = noise.expand(noise.shape[0], group_size, *noise.shape[2:])
        return noise * self.mask.to(noise.dtype).unsqueeze(0).unsqueeze(-1)


@dataclass(frozen=True)
class PatchingResult:
    """Metric values: `clean` (one run), `corrupted` [K] and `restored` [R, K], per noise
    sample."""

    clean: float
    corrupted: torch.Tensor
    restored: torch.Tensor

    def effects(self) -> torch.Tensor:
        """Share of the corruption's change that each restoration undoes, [R]:
        (restored − corrupted) / (clean − corrupted), each averaged over the noise samples."""
        corrupted = self.corrupted.mean()
        return (self.restored.mean(dim=1) - corrupted) / (self.clean - corrupted)


def window_layers(layer: int, window: int, num_layers: int) -> tuple[int, ...]:
    """The `window` layers centred on `layer`: [layer − window//2, layer − window//2 + window),
    clipped to the model's layers (as ROME does, so windows at the ends are shorter)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    check_layer(layer, num_layers)
    start = layer - window // 2
    return tuple(range(max(0, start), min(num_layers, start + window)))


def component_path(arch: ArchSpec, component: str, layer: int) -> str:
    """Module path whose (first) output is `component` of `layer`."""
    if component == "mlp":
        return arch.mlp_path(layer)
    if component == "attn":
        return arch.attn_path(layer)
    if component == "resid":
        return arch.layer_path(layer)
    raise ValueError(f"unknown component {component!r}; use one of {COMPONENTS}")


@torch.no_grad()
def embedding_std(model: nn.Module, arch: ArchSpec, chunk: int = 8192) -> float:
    """Standard deviation of the token embeddings as the model sees them: the embedding module's
    outputs over the whole vocabulary (equal to the weight matrix's std unless the module scales,
    as Gemma's does)."""
    embed = get_module(model, arch.embed)
    device = execution_device(embed)
    vocab = int(getattr(embed, "num_embeddings", 0) or model.config.vocab_size)
    total = total_sq = 0.0
    count = 0
    for start in range(0, vocab, chunk):
        ids = torch.arange(start, min(vocab, start + chunk), device=device).unsqueeze(0)
        values = first_tensor(embed(ids)).double()
        total += float(values.sum())
        total_sq += float((values * values).sum())
        count += values.numel()
    mean = total / count
    return math.sqrt(max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1))


def gaussian_noise(samples: int, width: int, hidden: int, scale: float,
                   generator: torch.Generator) -> torch.Tensor:
    """[samples, width, hidden] float32 noise of standard deviation `scale`, from `generator`
    (on the CPU, so the numbers do not depend on the device)."""
    return torch.randn((samples, width, hidden), generator=generator) * scale


def _check(tokens: TokenGroup, corruption: Corruption, restorations: Sequence[Restoration],
           num_layers: int) -> None:
    if tuple(corruption.mask.shape) != (tokens.size, tokens.width):
        raise ValueError(f"corruption mask {tuple(corruption.mask.shape)} does not match the "
                         f"tokens {(tokens.size, tokens.width)}")
    if corruption.noise.shape[-2] != tokens.width:
        raise ValueError("corruption noise does not cover the token positions")
    for r in restorations:
        if len(r.positions) != tokens.size:
            raise ValueError(f"{r}: needs one tuple of positions per sequence ({tokens.size})")
        check_layers(r.layers, num_layers)
        for g, positions in enumerate(r.positions):
            if any(not 0 <= p < tokens.lengths[g] for p in positions):
                raise ValueError(f"{r}: position out of range for sequence {g} "
                                 f"({tokens.lengths[g]} tokens)")


def _runs_per_batch(tokens: TokenGroup, samples: int, vocab: int,
                    max_batch_tokens: int | None) -> int:
    budget = logits_token_budget(vocab, max_batch_tokens, budget_bytes=TRACE_LOGITS_BUDGET_BYTES)
    return max(1, budget // (samples * tokens.size * tokens.width))


@torch.no_grad()
def patch_activations(
    model: nn.Module,
    arch: ArchSpec,
    tokens: TokenGroup,
    corruption: Corruption,
    restorations: Sequence[Restoration],
    metric: Metric,
    *,
    max_batch_tokens: int | None = None,
) -> PatchingResult:
    """Clean, corrupted and restored metric values for one token group.

    metric: logits [n_runs, G, T, vocab] → [n_runs] (one value per run of the whole group).
    max_batch_tokens: padded tokens per corrupted forward pass (default: what fits 256 MiB of
    logits); restorations are batched up to it. Results do not depend on it beyond float noise.
    """
    num_layers = arch.num_layers(model)
    _check(tokens, corruption, restorations, num_layers)
    device = input_device(model)
    G, T = tokens.size, tokens.width
    inputs = dict(input_ids=tokens.input_ids.to(device),
                  attention_mask=tokens.attention_mask.to(device),
                  position_ids=tokens.position_ids.to(device), use_cache=False)

    # 1. The clean run, caching the outputs of every restored component.
    restored = sorted({(r.component, layer) for r in restorations for layer in r.layers})
    needed = {(c, i): component_path(arch, c, i) for c, i in restored}
    with Capture(model, outputs=list(needed.values()), clone=True) as seen:
        logits = model(**inputs).logits
    clean_cache = {key: seen.outputs[path].reshape(G, T, -1) for key, path in needed.items()}
    clean = float(metric(logits.reshape(1, G, T, -1))[0])
    del logits

    # 2. Corrupted runs: run 0 restores nothing, run j ≥ 1 does restorations[j - 1].
    K = corruption.samples
    noise = corruption.per_sequence(G).to(device)  # [K, G, T, H]
    runs: list[Restoration | None] = [None, *restorations]
    per_batch = _runs_per_batch(tokens, K, int(model.config.vocab_size), max_batch_tokens)
    values: list[torch.Tensor] = []
    for start in range(0, len(runs), per_batch):
        chunk = runs[start : start + per_batch]
        values.append(_corrupted_batch(model, arch, inputs, noise, chunk, clean_cache, metric,
                                       G, T).reshape(len(chunk), K))
    table = torch.cat(values).double().cpu()
    return PatchingResult(clean=clean, corrupted=table[0], restored=table[1:])


def _corrupted_batch(model, arch, inputs, noise, chunk, clean_cache, metric, G, T) -> torch.Tensor:
    """Metric values [len(chunk) * K] of one forward pass over all runs of `chunk`."""
    K = noise.shape[0]
    n_runs = len(chunk)
    rows = n_runs * K * G
    batch = {k: (v.repeat(n_runs * K, 1) if isinstance(v, torch.Tensor) else v)
             for k, v in inputs.items()}
    noise_rows = noise.unsqueeze(0).expand(n_runs, *noise.shape).reshape(rows, T, -1)

    def corrupt(module, args, output):
        hidden = first_tensor(output)
        return replace_first(output, hidden + noise_rows.to(hidden.device, hidden.dtype))

    # Rows and positions each (component, layer) restores: row = (run * K + k) * G + g.
    targets: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
    for run, restoration in enumerate(chunk):
        if restoration is None:
            continue
        for layer in restoration.layers:
            row_list, pos_list = targets.setdefault((restoration.component, layer), ([], []))
            for k in range(K):
                for g, positions in enumerate(restoration.positions):
                    row_list += [(run * K + k) * G + g] * len(positions)
                    pos_list += positions

    def restore(key: tuple[str, int]):
        row_list, pos_list = targets[key]
        # On the device the component computes on (where its clean output was recorded).
        cached = clean_cache[key]
        row_idx = torch.tensor(row_list, dtype=torch.long, device=cached.device)
        pos_idx = torch.tensor(pos_list, dtype=torch.long, device=cached.device)
        values = cached[row_idx % G, pos_idx]

        def hook(module, args, output):
            hidden = first_tensor(output)
            # OPT's MLP works on tokens flattened to [rows * T, hidden].
            patched = hidden.reshape(rows, T, -1).clone()
            at = (row_idx.to(patched.device), pos_idx.to(patched.device))
            patched[at] = values.to(patched.device, patched.dtype)
            return replace_first(output, patched.reshape(hidden.shape))
        return hook

    forward = [(arch.embed, corrupt)]
    forward += [(component_path(arch, c, i), restore((c, i)))
                for c, i in targets if targets[(c, i)][0]]
    with hooks(model, forward=forward):
        logits = model(**batch).logits
    return metric(logits.reshape(n_runs * K, G, T, -1))
