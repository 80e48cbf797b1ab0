"""Bias causal tracing (SPEC §4.1 "Locate"): which layers carry a bias item's preference.

For each item the stereotype and anti-stereotype sentences run together. The metric is the gap
score(stereo) − score(anti) (per-token mean log-probability, as `Scorer` computes it; "sum" on
request). Corrupting the target group's tokens (else the tokens where the sentences differ) moves
the gap; restoring one component's clean output at one layer and position brings back a share of
it, the effect:

    effect = (gap_restored − gap_corrupted) / (gap_clean − gap_corrupted)

Over items the effect is averaged as a ratio of sums, Σ numerators / Σ denominators, after turning
each item so that its corruption moves the gap in the positive direction (numerator and
denominator multiplied by the sign of the denominator). That is the per-item effects weighted by
|gap_clean − gap_corrupted|: an item whose corruption barely moves the gap (a denominator near 0
and a wild ratio) counts for little, and items whose corruption moves the gap in opposite
directions do not cancel in the denominator. Per-item effects are kept as well.

The layer profile restores at the last corrupted token (ROME's "last subject token") for every
layer and component; heat-maps restore at every position, for the first few items only (a
heat-map costs about as many forward passes as its number of positions times a profile).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fairstamp.data.items import BiasItem
from fairstamp.errors import FairstampError
from fairstamp.scoring.pairs import pair_gaps
from fairstamp.scoring.scorer import Reduction, Scorer, next_token_logprobs
from fairstamp.tracing.patching import (
    COMPONENTS,
    Corruption,
    Restoration,
    TokenGroup,
    embedding_std,
    gaussian_noise,
    patch_activations,
    window_layers,
)
from fairstamp.utils.modules import get_module
from fairstamp.utils.progress import progress_bar

if TYPE_CHECKING:
    from fairstamp.models.loader import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemTokens:
    """The two scored token sequences of an item and the positions corrupted in each.

    rule: "target" (the target group's tokens) or "difference" (the tokens where the sentences
    differ).
    """

    stereo: tuple[int, ...]
    anti: tuple[int, ...]
    corrupted: tuple[tuple[int, ...], tuple[int, ...]]
    rule: str

    @property
    def aligned(self) -> bool:
        return self.corrupted[0] == self.corrupted[1]


@dataclass
class Heatmap:
    """Effects of restoring each (layer, position) of one item: `effects[component]` is
    [n_layers, n_positions]. Positions before the first corrupted token are 0 without being run
    (their clean and corrupted values are the same)."""

    item_id: str
    tokens: list[str]
    corrupted: list[int]
    effects: dict[str, np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "tokens": self.tokens, "corrupted": self.corrupted,
                "effects": {c: _json_array(v) for c, v in self.effects.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Heatmap:
        return cls(item_id=data["item_id"], tokens=list(data["tokens"]),
                   corrupted=list(data["corrupted"]),
                   effects={c: _array(v) for c, v in data["effects"].items()})


@dataclass
class TraceResult:
    """Bias tracing of a set of items on one model.

    clean_gaps, corrupted_gaps: [n_items] gap score(stereo) − score(anti) clean and corrupted
                                (the latter averaged over noise samples).
    restored_gaps[component]:   [n_items, n_layers] gap with that layer (window) restored at the
                                last corrupted token.
    """

    item_ids: list[str]
    num_layers: int
    components: tuple[str, ...]
    clean_gaps: np.ndarray
    corrupted_gaps: np.ndarray
    restored_gaps: dict[str, np.ndarray]
    corrupted_positions: list[list[list[int]]]
    corruption_rules: list[str]
    heatmaps: list[Heatmap] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def profiles(self) -> dict[str, np.ndarray]:
        """Per-item effects {component: [n_items, n_layers]} (nan where corruption left the gap
        unchanged)."""
        denominator = (self.clean_gaps - self.corrupted_gaps)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return {c: np.where(denominator != 0,
                                (g - self.corrupted_gaps[:, None]) / denominator, np.nan)
                    for c, g in self.restored_gaps.items()}

    @property
    def average(self) -> dict[str, np.ndarray]:
        """Effects over all items {component: [n_layers]}: Σ sign(d)·(restored − corrupted) /
        Σ |d| with d = clean − corrupted (see the module docstring)."""
        d = self.clean_gaps - self.corrupted_gaps
        sign = np.sign(d)[:, None]
        total = np.abs(d).sum()
        out = {}
        for c, g in self.restored_gaps.items():
            numerator = (sign * (g - self.corrupted_gaps[:, None])).sum(axis=0)
            out[c] = numerator / total if total > 0 else np.full(self.num_layers, np.nan)
        return out

    def ranked_layers(self, component: str = "mlp") -> list[int]:
        """Layers sorted by averaged effect, largest first (ties: lower layer first)."""
        profile = self._profile(component)
        return sorted(range(self.num_layers), key=lambda i: (-_finite(profile[i]), i))

    def decisive_layer(self, component: str = "mlp", exclude_first: bool = False) -> int:
        """The layer whose `component` restores the largest share of the gap on average.
        `exclude_first` skips layer 0 (whose MLP often acts as part of the embedding)."""
        ranked = self.ranked_layers(component)
        if exclude_first and len(ranked) > 1:
            ranked = [i for i in ranked if i != 0]
        return ranked[0]

    def _profile(self, component: str) -> np.ndarray:
        if component not in self.restored_gaps:
            raise ValueError(f"component {component!r} was not traced (traced: "
                             f"{', '.join(self.components)})")
        return self.average[component]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (nan becomes null)."""
        return {
            "config": self.config,
            "num_layers": self.num_layers,
            "components": list(self.components),
            "item_ids": self.item_ids,
            "clean_gaps": _json_array(self.clean_gaps),
            "corrupted_gaps": _json_array(self.corrupted_gaps),
            "restored_gaps": {c: _json_array(v) for c, v in self.restored_gaps.items()},
            "corrupted_positions": self.corrupted_positions,
            "corruption_rules": self.corruption_rules,
            "average": {c: _json_array(v) for c, v in self.average.items()},
            "profiles": {c: _json_array(v) for c, v in self.profiles.items()},
            "decisive_layer": {c: self.decisive_layer(c) for c in self.components},
            "ranked_layers": {c: self.ranked_layers(c) for c in self.components},
            "heatmaps": [h.to_dict() for h in self.heatmaps],
            "timing": self.timing,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceResult:
        """Inverse of `to_dict` (derived fields are recomputed, not read)."""
        return cls(
            item_ids=list(data["item_ids"]),
            num_layers=int(data["num_layers"]),
            components=tuple(data["components"]),
            clean_gaps=_array(data["clean_gaps"]),
            corrupted_gaps=_array(data["corrupted_gaps"]),
            restored_gaps={c: _array(v).reshape(-1, int(data["num_layers"]))
                           for c, v in data["restored_gaps"].items()},
            corrupted_positions=[[list(p) for p in pair] for pair in data["corrupted_positions"]],
            corruption_rules=list(data["corruption_rules"]),
            heatmaps=[Heatmap.from_dict(h) for h in data.get("heatmaps", [])],
            config=dict(data.get("config", {})),
            timing=dict(data.get("timing", {})),
        )


def trace_bias(
    loaded: LoadedModel,
    items: Sequence[BiasItem],
    *,
    components: Sequence[str] = COMPONENTS,
    window: int = 1,
    samples: int = 5,
    noise_scale: float = 3.0,
    seed: int = 0,
    reduction: Reduction = "mean",
    heatmap_items: int = 3,
    max_batch_tokens: int | None = None,
    progress: bool | None = None,
) -> TraceResult:
    """Trace where `items`' bias lives in a `fairstamp.models.LoadedModel`.

    window:      layers restored together around each layer (clipped at the ends).
    samples:     noise samples per item; noise_scale: noise std in units of the embedding std.
    seed:        the noise of an item comes from a generator seeded by (seed, item id), so an
                 item gets the same noise whatever other items are traced with it.
    heatmap_items: how many of the first items also get a layer × position heat-map.
    """
    components = tuple(components)
    if not items:
        raise FairstampError("no bias items to trace")
    if not components or any(c not in COMPONENTS for c in components):
        raise FairstampError(f"components must be some of {', '.join(COMPONENTS)}, got "
                             f"{', '.join(components) or 'none'}")
    if reduction not in ("mean", "sum"):
        raise FairstampError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
    if samples < 1 or window < 1 or heatmap_items < 0 or noise_scale < 0:
        raise FairstampError("samples and window must be ≥ 1, heatmap_items and noise_scale ≥ 0")
    model, arch = loaded.model, loaded.arch
    scorer = Scorer(model, loaded.tokenizer)
    num_layers = arch.num_layers(model)
    std = embedding_std(model, arch)
    noise_std = noise_scale * std
    config = {"samples": samples, "noise_scale": noise_scale, "embedding_std": std,
              "noise_std": noise_std, "window": window, "seed": seed, "reduction": reduction,
              "components": list(components), "position": "last corrupted token",
              "heatmap_items": min(heatmap_items, len(items)),
              "model": getattr(loaded, "name", None)}
    log.info("tracing %d items on %d layers (%s; %d noise samples of std %.4g)", len(items),
             num_layers, ", ".join(components), samples, noise_std)

    clean, corrupted = np.zeros(len(items)), np.zeros(len(items))
    restored = {c: np.zeros((len(items), num_layers)) for c in components}
    positions, rules, heatmaps = [], [], []
    n_heat = min(heatmap_items, len(items))
    timing = {"profile_s": 0.0, "heatmap_s": 0.0}
    with progress_bar(len(items) + n_heat, "tracing", progress) as advance:
        for i, item in enumerate(items):
            tokens = item_tokens(scorer, item)
            group = TokenGroup.from_sequences([tokens.stereo, tokens.anti], scorer.pad_token_id)
            corruption = Corruption(mask=_mask(group, tokens.corrupted),
                                    noise=_item_noise(item, seed, samples, group.width,
                                                      _hidden_size(model, arch), noise_std))
            metric = gap_metric(group, reduction)
            last = tuple((p[-1],) for p in tokens.corrupted)
            restorations = [Restoration(c, window_layers(layer, window, num_layers), last)
                            for c in components for layer in range(num_layers)]
            start = time.perf_counter()
            result = patch_activations(model, arch, group, corruption, restorations, metric,
                                       max_batch_tokens=max_batch_tokens)
            timing["profile_s"] += time.perf_counter() - start
            clean[i] = result.clean
            corrupted[i] = float(result.corrupted.mean())
            gaps = result.restored.mean(dim=1).numpy().reshape(len(components), num_layers)
            for k, c in enumerate(components):
                restored[c][i] = gaps[k]
            positions.append([list(p) for p in tokens.corrupted])
            rules.append(tokens.rule)
            advance(1)
            if i < n_heat:
                start = time.perf_counter()
                heatmaps.append(_heatmap(loaded.tokenizer, model, arch, item, tokens, group,
                                         corruption, metric, components, window, num_layers,
                                         max_batch_tokens))
                timing["heatmap_s"] += time.perf_counter() - start
                advance(1)
    timing["profile_s_per_item"] = timing["profile_s"] / len(items)
    return TraceResult(item_ids=[it.id for it in items], num_layers=num_layers,
                       components=components, clean_gaps=clean, corrupted_gaps=corrupted,
                       restored_gaps=restored, corrupted_positions=positions,
                       corruption_rules=rules, heatmaps=heatmaps, config=config, timing=timing)


def gap_metric(group: TokenGroup, reduction: Reduction = "mean") -> Callable[[torch.Tensor],
                                                                            torch.Tensor]:
    """The metric of a (stereo, anti) group: logits [n, 2, T, V] → [n] gaps score(stereo) −
    score(anti), scoring every token after the first as `Scorer` does."""
    lengths = torch.tensor(group.lengths, dtype=torch.float64)
    width = group.width
    valid = (torch.arange(width - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)).double()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        ids = group.input_ids.to(logits.device).repeat(n, 1)
        logprobs = next_token_logprobs(logits.reshape(n * 2, width, -1), ids).double()
        scores = (logprobs.reshape(n, 2, width - 1) * valid.to(logprobs.device)).sum(-1)
        if reduction == "mean":
            scores = scores / (lengths.to(scores.device) - 1)
        return pair_gaps(scores.reshape(n * 2))

    return metric


def item_tokens(scorer: Scorer, item: BiasItem) -> ItemTokens:
    """Scored token ids of an item's sentences and the positions to corrupt: the target's tokens
    where the target occurs (case-insensitive) in both sentences, else the tokens where the
    sentences differ (each sentence its own span)."""
    stereo, anti = scorer.encode(item.stereo), scorer.encode(item.anti)
    offset = 1 if scorer.prefix_token_id is not None else 0
    for seq, text in ((stereo, item.stereo), (anti, item.anti)):
        if len(seq) - offset < 1 or len(seq) < 2:
            raise FairstampError(f"item {item.id}: cannot trace {text!r}, too few tokens")
    spans = [_target_tokens(scorer.tokenizer, text, seq[offset:], item.target)
             for text, seq in ((item.stereo, stereo), (item.anti, anti))]
    if all(spans):
        corrupted = tuple(tuple(p + offset for p in span) for span in spans)
        return ItemTokens(tuple(stereo), tuple(anti), corrupted, "target")  # type: ignore[arg-type]
    return ItemTokens(tuple(stereo), tuple(anti), _difference(stereo, anti, offset), "difference")


def _target_tokens(tokenizer: Any, text: str, ids: list[int], target: str) -> list[int]:
    target = " ".join(target.split())
    if not target:
        return []
    match = re.search(re.escape(target), text, flags=re.IGNORECASE)
    if match is None:
        return []
    a, b = match.span()
    return [i for i, (s, e) in enumerate(_char_spans(tokenizer, text, ids)) if s < b and e > a]


def _char_spans(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each token of `text` (offsets of a fast tokenizer, else lengths of
    decoded prefixes)."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(encoded.input_ids) == list(ids):
            return [tuple(span) for span in encoded.offset_mapping]
    spans, previous = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[: i + 1]))
        spans.append((previous, end))
        previous = end
    return spans


def _difference(stereo: list[int], anti: list[int],
                offset: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Each sequence's span of tokens between the common prefix and the common suffix (at least
    one token: an insertion in the other sentence corrupts the token where they part)."""
    prefix = offset
    while prefix < min(len(stereo), len(anti)) and stereo[prefix] == anti[prefix]:
        prefix += 1
    suffix = 0
    while (suffix < min(len(stereo), len(anti)) - prefix
           and stereo[-1 - suffix] == anti[-1 - suffix]):
        suffix += 1
    out = []
    for seq in (stereo, anti):
        end = len(seq) - suffix
        span = tuple(range(prefix, end)) if end > prefix else (min(prefix, len(seq) - 1),)
        out.append(span)
    return out[0], out[1]


def _mask(group: TokenGroup, corrupted: Sequence[Sequence[int]]) -> torch.Tensor:
    mask = torch.zeros((group.size, group.width), dtype=torch.bool)
    for g, positions in enumerate(corrupted):
        mask[g, list(positions)] = True
    return mask


def _hidden_size(model: Any, arch: Any) -> int:
    embed = get_module(model, arch.embed)
    return int(getattr(embed, "embedding_dim", 0) or embed.weight.shape[1])


def _item_noise(item: BiasItem, seed: int, samples: int, width: int, hidden: int,
                std: float) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}\x1f{item.id}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    return gaussian_noise(samples, width, hidden, std, generator)


def _heatmap(tokenizer, model, arch, item, tokens, group, corruption, metric, components,
             window, num_layers, max_batch_tokens) -> Heatmap:
    first = min(min(p) for p in tokens.corrupted)
    columns = list(range(first, group.width))
    restorations = [
        Restoration(c, window_layers(layer, window, num_layers),
                    tuple((p,) if p < n else () for n in group.lengths))
        for c in components for layer in range(num_layers) for p in columns]
    effects = patch_activations(model, arch, group, corruption, restorations, metric,
                                max_batch_tokens=max_batch_tokens).effects().numpy()
    grid = effects.reshape(len(components), num_layers, len(columns))
    out = {}
    for k, c in enumerate(components):
        full = np.zeros((num_layers, group.width))
        full[:, first:] = grid[k]
        out[c] = full
    corrupted = sorted(set(tokens.corrupted[0]) | set(tokens.corrupted[1]))
    return Heatmap(item_id=item.id, tokens=_labels(tokenizer, tokens), corrupted=corrupted,
                   effects=out)


def _labels(tokenizer: Any, tokens: ItemTokens) -> list[str]:
    """One label per position: the token, or "stereo/anti" where the sentences differ."""
    out = []
    for p in range(max(len(tokens.stereo), len(tokens.anti))):
        pieces = [tokenizer.decode([seq[p]]) for seq in (tokens.stereo, tokens.anti)
                  if p < len(seq)]
        out.append(pieces[0] if len(set(pieces)) == 1 else "/".join(pieces))
    return out


def _json_array(values: np.ndarray) -> Any:
    return _nan_to_none(np.asarray(values, dtype=np.float64).tolist())


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _array(values: Any) -> np.ndarray:
    return np.array(_none_to_nan(values), dtype=np.float64)


def _none_to_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return np.nan if value is None else value


def _finite(value: float) -> float:
    return float(value) if np.isfinite(value) else -np.inf
