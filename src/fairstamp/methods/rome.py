"""ROME (rank-one model editing; Meng et al. 2022), applied to social bias [baseline].

Each bias item is one edit request. Its *subject* is the item's target (e.g. "schoolgirl"); the
*key* k* is the input of layer l's MLP output projection at the subject's last token, averaged over
the item's sentences (stereo and anti, as they are and behind the lead-ins of
`data.training_text.FRAMINGS`, which stand in for ROME's model-generated random prefixes). The
*value* v* is found by optimising a vector δ added to the projection's output at those positions,
so that the FAST bias loss of the item, mean |score(stereo) − score(anti)| over its sentence pairs
(scores as the Scorer computes them), falls, while a KL term keeps the next-token distribution
after "{target} is a" near the unedited model's and a decay term keeps δ small; ‖δ‖ is clamped to
`clamp_norm_factor`·‖v‖. Then the projection gets the rank-one update W ← W + Λ (C⁻¹k*)ᵀ, Λ = (v* −
W k*) / ((C⁻¹k*)ᵀ k*), with C the keys' second moment on generic text (`covariance`), so it maps k*
to v* and changes little for keys the model usually sees. Items are edited one after another, each
edit in place before the next v* is computed (ROME's sequential editing).

The pieces MEMIT shares (finding the subject, collecting keys and layer outputs at it, the
v*/z* optimisation, adding an update to a Linear or Conv1D weight) live here.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fairstamp.data.items import BiasItem
from fairstamp.data.training_text import FRAMINGS
from fairstamp.errors import FairstampError
from fairstamp.methods.base import EditContext, Method, WeightEdit, module_param_name, snapshot
from fairstamp.methods.covariance import DEFAULT_N_TOKENS, context_second_moments
from fairstamp.models.archspec import check_layer, get_module, is_conv1d, linear_weight
from fairstamp.scoring.pairs import bias_loss, pair_gaps
from fairstamp.scoring.scorer import Scorer
from fairstamp.scoring.upper import Batch, UpperForward
from fairstamp.utils.devices import input_device
from fairstamp.utils.hooks import Capture, first_tensor, hooks, replace_first
from fairstamp.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: ROME's KL prompt: the subject's "essence".
ESSENCE_PROMPT = "{} is a"


@dataclass
class RomeConfig:
    """ROME's knobs (defaults: ROME's GPT-2 XL hyperparameters)."""

    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_loss_stop: float = 0.0  # stop optimising v* below this loss (ROME: 5e-2 on its NLL)
    framings: int = 2  # lead-ins (of data.training_text.FRAMINGS) the sentences also appear behind
    n_tokens: int = DEFAULT_N_TOKENS  # generic-text tokens for the key statistics C
    max_items: int | None = None  # edit a seeded sample of this many items (None: all)


# -- edit requests --------------------------------------------------------------------------------


@dataclass
class EditRequest:
    """One bias item as ROME/MEMIT edit it: token sequences (as scored: start token first) of its
    sentence pairs (stereo, anti, stereo, anti, ...) and, last, the essence prompt; and the index
    of the subject's last token in each."""

    item_id: str
    target: str
    seqs: list[list[int]]
    subject: list[int]
    fallbacks: int = 0  # sentences whose subject position came from the stereo/anti difference

    @property
    def n_pair_seqs(self) -> int:
        return len(self.seqs) - 1


def _char_span(text: str, target: str) -> tuple[int, int] | None:
    """(start, end) of the target in the text, case-insensitively: as a whole word if it occurs
    as one, else as any substring."""
    target = target.strip()
    if not target:
        return None
    for pattern in (rf"(?<!\w){re.escape(target)}(?!\w)", re.escape(target)):
        found = re.search(pattern, text, flags=re.IGNORECASE)
        if found:
            return found.span()
    return None


def subject_token(tokenizer: Any, text: str, target: str, ids: Sequence[int], lead: int,
                  start: int = 0) -> int | None:
    """Index in `ids` (the scored sequence: `lead` start tokens, then the text's tokens) of the
    token holding the last character of the target's first occurrence in `text[start:]`; None if
    it does not occur there or the tokenizer cannot map characters to tokens."""
    span = _char_span(text[start:], target)
    if span is None:
        return None
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    if list(encoded.input_ids) != list(ids[lead:]):
        return None
    last = start + span[1] - 1
    hits = [t for t, (a, b) in enumerate(encoded["offset_mapping"]) if a <= last < b]
    return hits[-1] + lead if hits else None


def _before_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """The last token before the first one where two sequences differ."""
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), n)
    return max(first - 1, 0)


def build_request(scorer: Any, item: BiasItem, framings: int) -> EditRequest:
    """The item's sentences (as they are, then behind `framings` lead-ins) and essence prompt,
    tokenised as the Scorer does, with the subject's last token in each."""
    if not 0 <= framings <= len(FRAMINGS):
        raise FairstampError(f"framings must be in [0, {len(FRAMINGS)}], not {framings}")
    tokenizer = scorer.tokenizer
    lead = 1 if scorer.prefix_token_id is not None else 0
    seqs, subject, fallbacks = [], [], 0
    for prefix in ("", *FRAMINGS[:framings]):
        texts = (prefix + item.stereo, prefix + item.anti)
        ids = [scorer.encode(t) for t in texts]
        fallback = _before_difference(*ids)
        for text, seq in zip(texts, ids):
            found = subject_token(tokenizer, text, item.target, seq, lead, len(prefix))
            fallbacks += found is None
            seqs.append(seq)
            subject.append(fallback if found is None else found)
    essence = ESSENCE_PROMPT.format(item.target.strip())
    seq = scorer.encode(essence)
    found = subject_token(tokenizer, essence, item.target, seq, lead)
    seqs.append(seq)
    subject.append(found if found is not None else max(len(seq) - 3, 0))
    for seq in seqs:
        if len(seq) < 2:
            raise FairstampError(f"item {item.id}: a sentence has no tokens to score")
    return EditRequest(item.id, item.target, seqs, subject, fallbacks)


def build_requests(loaded: Any, items: Sequence[BiasItem], framings: int) -> list[EditRequest]:
    scorer = Scorer.from_loaded(loaded)
    requests = [build_request(scorer, item, framings) for item in items]
    fallbacks = sum(r.fallbacks for r in requests)
    if fallbacks:
        log.info("%d of %d sentences do not contain their target; their subject position is "
                 "the last token before the stereo/anti difference", fallbacks,
                 sum(r.n_pair_seqs for r in requests))
    return requests


def requests_and_statistics(context: EditContext, settings: Any, layers: Sequence[int]
                            ) -> tuple[list[EditRequest], dict[int, torch.Tensor], float]:
    """ROME's and MEMIT's inputs: the requests of the items to edit (`settings.max_items` of
    them, `settings.framings` lead-ins), the key statistics of `layers` on
    `settings.n_tokens` tokens, and the seconds those statistics took."""
    items = choose_items(context.items, settings.max_items, context.seed)
    requests = build_requests(context.loaded, items, settings.framings)
    start = time.perf_counter()
    moments = context_second_moments(context, layers, settings.n_tokens)
    return requests, moments, time.perf_counter() - start


def choose_items(items: Sequence[BiasItem], max_items: Any, seed: int) -> list[BiasItem]:
    """All items, or a seeded sample of `max_items` of them in their original order."""
    if not items:
        raise FairstampError("no bias items to edit")
    if max_items is None or max_items == "":
        return list(items)
    try:
        k = int(max_items)
    except (TypeError, ValueError):
        raise FairstampError(f"max_items must be a whole number, not {max_items!r}") from None
    if k < 1:
        raise FairstampError(f"max_items must be positive, not {k}")
    if k >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in keep]


# -- reading the model at the subject --------------------------------------------------------------


def _flat(x: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[batch, seq, d] view of a module's input or output (OPT's fc2 works on [batch*seq, d])."""
    return x.reshape(*batch.ids.shape, x.shape[-1])



@torch.no_grad()
def collect_at_subjects(loaded: Any, requests: Sequence[EditRequest], *,
                        key_layers: Sequence[int] = (), out_layer: int | None = None,
                        chunk: int = 32) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Per request, the mean over its sentence pairs (not the essence prompt) at the subject's
    last token of: the MLP output projection's input at each of `key_layers` ({layer: [n, d_in]}),
    and the output of decoder layer `out_layer` ([n, d] or None)."""
    model, arch = loaded.model, loaded.arch
    pad = Scorer.from_loaded(loaded).pad_token_id
    device = input_device(model)
    owner = [r for r, req in enumerate(requests) for _ in range(req.n_pair_seqs)]
    seqs = [s for req in requests for s in req.seqs[:-1]]
    cols = [c for req in requests for c in req.subject[:-1]]
    key_layers = sorted(set(key_layers))
    key_paths = {layer: arch.mlp_out_proj_path(layer) for layer in key_layers}
    out_path = None if out_layer is None else arch.layer_path(out_layer)
    got: dict[Any, list[torch.Tensor]] = {k: [] for k in [*key_layers, "out"]}
    for start in range(0, len(seqs), chunk):
        part = range(start, min(start + chunk, len(seqs)))
        batch = Batch.of([seqs[i] for i in part], pad, device)
        rows = torch.arange(len(part), device=device)
        at = torch.tensor([cols[i] for i in part], device=device)
        # The forward pass stops once the deepest of these has been read.
        with Capture(model, inputs=list(key_paths.values()),
                     outputs=[] if out_path is None else [out_path], stop=True) as seen:
            model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions,
                  use_cache=False)
        read = {layer: seen.inputs[path] for layer, path in key_paths.items()}
        if out_path is not None:
            read["out"] = seen.outputs[out_path]
        for name, x in read.items():
            got[name].append(_flat(x, batch)[rows, at].float())
    index = torch.tensor(owner, device=device)

    def mean(parts: list[torch.Tensor]) -> torch.Tensor:
        rows = torch.cat(parts)
        sums = rows.new_zeros((len(requests), rows.shape[-1])).index_add(0, index, rows)
        counts = torch.bincount(index, minlength=len(requests)).to(rows.dtype)
        return sums / counts.unsqueeze(1)

    keys = {layer: mean(got[layer]) for layer in key_layers}
    return keys, (mean(got["out"]) if out_layer is not None else None)


# -- the v* / z* optimisation ----------------------------------------------------------------------


@dataclass
class TargetResult:
    """The optimised vector: `init` (the unedited mean output at the subject), `delta`, and the
    losses of the first and last step."""

    init: torch.Tensor
    delta: torch.Tensor
    loss_before: float
    loss_after: float
    bias_before: float
    bias_after: float
    steps: int

    @property
    def target(self) -> torch.Tensor:
        return self.init + self.delta


def optimise_target(loaded: Any, upper: UpperForward, request: EditRequest, path: str,
                    settings: Any) -> TargetResult:
    """ROME's v* (MEMIT's z*) for one request: δ added to the output of module `path` (at or
    above `upper.layer`) at the subject's last token of every sentence, optimised with Adam on
    bias loss + kl_factor·KL(edited ‖ unedited) on the essence prompt's next token
    + v_weight_decay·‖δ‖/‖v‖² (ROME's code), with ‖δ‖ ≤ clamp_norm_factor·‖v‖ after each step
    (ROME's `compute_v`). The layers below `upper.layer` run once, and the log-probabilities of
    tokens predicted before a sentence's subject (which δ cannot change) are computed once.

    `settings` has v_num_grad_steps, v_lr, v_weight_decay, clamp_norm_factor, kl_factor and
    v_loss_stop."""
    if settings.v_num_grad_steps < 1:
        raise FairstampError("v_num_grad_steps must be at least 1")
    model = loaded.model
    device = input_device(model)
    batch = Batch.of(request.seqs, Scorer.from_loaded(loaded).pad_token_id, device)
    hidden = upper.capture(batch) if upper.layer > 0 else None
    n_pairs = request.n_pair_seqs
    rows = torch.cat([torch.full((n - 1,), r) for r, n in enumerate(batch.lengths[:n_pairs])])
    cols = torch.cat([torch.arange(n - 1) for n in batch.lengths[:n_pairs]])
    targets = batch.ids[rows.to(device), cols.to(device) + 1]  # the token each position predicts
    subject = torch.tensor(request.subject)
    varies = cols >= subject[rows]  # positions at or after the subject see δ
    last = len(request.seqs) - 1
    var_rows = torch.cat([rows[varies], torch.tensor([last])]).to(device)
    var_cols = torch.cat([cols[varies], torch.tensor([batch.lengths[last] - 1])]).to(device)
    counts = torch.tensor([n - 1 for n in batch.lengths[:n_pairs]], device=device)
    sub_rows = torch.arange(len(request.seqs), device=device)
    sub_cols = subject.to(device)
    state: dict[str, Any] = {}

    def add_delta(module, args, output):
        h = first_tensor(output)
        shaped = _flat(h, batch)
        picked = shaped[sub_rows, sub_cols]
        if "delta" not in state:  # first pass: δ = 0, and v is the unedited mean output
            state["init"] = picked[:n_pairs].detach().float().mean(0)
            state["delta"] = torch.zeros(h.shape[-1], device=h.device, requires_grad=True)
        edited = shaped.index_put((sub_rows, sub_cols), picked + state["delta"].to(h.dtype))
        return replace_first(output, edited.reshape(h.shape))

    def token_logprobs(at_rows, at_cols) -> torch.Tensor:
        return torch.log_softmax(upper.logits(batch, hidden, at_rows, at_cols).float(), dim=-1)

    optimizer = None
    kl_init = None
    history: list[tuple[float, float]] = []
    steps = 0
    with hooks(model, forward=[(path, add_delta)]):
        fixed = torch.zeros(n_pairs, device=device)
        if (~varies).any():
            with torch.no_grad():
                lp = token_logprobs(rows[~varies].to(device), cols[~varies].to(device))
                picked = lp.gather(1, targets[~varies.to(device)].unsqueeze(1)).squeeze(1)
                fixed.index_add_(0, rows[~varies].to(device), picked)
        for it in range(settings.v_num_grad_steps):
            logprobs = token_logprobs(var_rows, var_cols)
            if "delta" not in state:
                raise FairstampError(f"{path} did not run in the forward pass")
            delta = state["delta"]
            token = logprobs[:-1].gather(1, targets[varies.to(device)].unsqueeze(1)).squeeze(1)
            sums = fixed.index_add(0, var_rows[:-1], token)
            means = sums / counts
            bias = bias_loss(pair_gaps(means))
            essence = logprobs[-1:]
            if kl_init is None:
                kl_init = essence.detach().clone()
            kl = settings.kl_factor * torch.nn.functional.kl_div(
                kl_init, essence, log_target=True, reduction="batchmean")
            decay = settings.v_weight_decay * delta.norm() / state["init"].norm() ** 2
            loss = bias + kl + decay
            if not torch.isfinite(loss):
                raise FairstampError(f"item {request.item_id}: the v* loss became "
                                     f"{loss.item()}; lower v_lr")
            history.append((float(loss.detach()), float(bias.detach())))
            if loss.item() < settings.v_loss_stop or it == settings.v_num_grad_steps - 1:
                break
            if optimizer is None:
                optimizer = torch.optim.Adam([delta], lr=settings.v_lr)
            (grad,) = torch.autograd.grad(loss, [delta])
            delta.grad = grad
            optimizer.step()
            steps += 1
            max_norm = settings.clamp_norm_factor * state["init"].norm()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return TargetResult(init=state["init"], delta=state["delta"].detach().clone(),
                        loss_before=history[0][0], loss_after=history[-1][0],
                        bias_before=history[0][1], bias_after=history[-1][1], steps=steps)


# -- weight updates -------------------------------------------------------------------------------


def add_update(module: nn.Module, update: torch.Tensor) -> None:
    """Add `update` ([out, in], nn.Linear's orientation) to a Linear or Conv1D weight."""
    if not (isinstance(module, nn.Linear) or is_conv1d(module)):
        raise FairstampError(f"cannot edit a {type(module).__name__}: ROME/MEMIT edit an "
                             f"nn.Linear or Conv1D MLP output projection")
    with torch.no_grad():
        weight = linear_weight(module)
        if update.shape != weight.shape:
            raise FairstampError(f"update of shape {tuple(update.shape)} does not fit the weight "
                                 f"{tuple(weight.shape)} ([out, in])")
        weight.add_(update.to(weight.device, weight.dtype))


def solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """matrix⁻¹ rhs; the pseudo-inverse if the matrix is singular."""
    try:
        return torch.linalg.solve(matrix, rhs)
    except RuntimeError:  # singular: too few statistics tokens for the key width
        log.warning("key statistics are singular; using the pseudo-inverse")
        return torch.linalg.pinv(matrix) @ rhs


def rank_one_update(module: nn.Module, key: torch.Tensor, value: torch.Tensor,
                    second_moment: torch.Tensor) -> torch.Tensor:
    """ROME's update of the projection so that it maps `key` to `value`:
    W ← W + Λ uᵀ with u = C⁻¹k, Λ = (v − W k − b)/(uᵀk). Returns the update ([out, in])."""
    device = module.weight.device
    k = key.to(device, torch.float64)
    u = solve(second_moment.to(device, torch.float64), k)
    with torch.no_grad():
        current = module(key.to(device, module.weight.dtype).unsqueeze(0))[0]
    lam = (value.to(device, torch.float64) - current.double()) / (u @ k)
    update = torch.outer(lam, u)
    add_update(module, update)
    return update


# -- the method -----------------------------------------------------------------------------------


class RomeMethod(Method):
    """ROME: one rank-one update of layer l's MLP output projection per bias item, in sequence."""

    name = "rome"
    config_class = RomeConfig
    description = "rank-one edits of one MLP output projection, one per item (ROME)"

    def fit(self, context: EditContext) -> WeightEdit:
        cfg: RomeConfig = self.config
        start = time.perf_counter()
        loaded, layer = context.loaded, context.layer
        model, arch = loaded.model, loaded.arch
        check_layer(layer, context.num_layers, loaded.name)
        requests, moments, stats_seconds = requests_and_statistics(context, cfg, [layer])
        second_moment = moments[layer]
        path = arch.mlp_out_proj_path(layer)
        proj = get_module(model, path)
        name = module_param_name(model, proj)
        originals = snapshot(model, [name])
        upper = UpperForward(model, arch, layer)
        results: list[TargetResult] = []
        log.info("ROME: %d sequential edits of %s", len(requests), path)
        try:
            with progress_bar(len(requests), "ROME edits", context.progress) as advance:
                for request in requests:
                    keys, _ = collect_at_subjects(loaded, [request], key_layers=[layer])
                    result = optimise_target(loaded, upper, request, path, cfg)
                    rank_one_update(proj, keys[layer][0], result.target, second_moment)
                    results.append(result)
                    advance(status=f"bias {result.bias_before:.3f} → {result.bias_after:.3f}")
        except BaseException:
            WeightEdit(self.name, model, originals).restore(loaded)
            raise
        info = {"layer": layer, "module": path, "items_edited": len(requests),
                "item_ids": [r.item_id for r in requests],
                "config": self.config_dict(), **target_summary(results),
                "subject_fallbacks": sum(r.fallbacks for r in requests),
                "stats_seconds": round(stats_seconds, 2),
                "seconds": round(time.perf_counter() - start, 2)}
        return WeightEdit(self.name, model, originals, info)


def target_summary(results: Sequence[TargetResult]) -> dict[str, Any]:
    """Mean losses of the v*/z* optimisations (first and last step) for an edit's info."""
    def mean(values) -> float:
        return round(float(np.mean(list(values))), 6)

    return {"v_loss_before": mean(r.loss_before for r in results),
            "v_loss_after": mean(r.loss_after for r in results),
            "v_bias_loss_before": mean(r.bias_before for r in results),
            "v_bias_loss_after": mean(r.bias_after for r in results),
            "v_steps_mean": mean(r.steps for r in results),
            "delta_norm_ratio_mean": mean(float(r.delta.norm() / r.init.norm())
                                          for r in results)}


__all__ = ["EditRequest", "RomeConfig", "RomeMethod", "TargetResult", "add_update",
           "build_requests", "choose_items", "collect_at_subjects", "optimise_target",
           "rank_one_update", "requests_and_statistics", "solve", "subject_token",
           "target_summary"]

