"""CDA: counterfactual data augmentation (Webster et al. 2020; bias-bench's `run_clm.py`), then
causal-LM fine-tuning on the augmented text, here with LoRA adapters merged into the weights.

Augmentation is two-sided, as bias-bench's: every WikiText-2 *valid* sentence that contains an
attribute word of the context's bias types (data/bias_bench/bias_attribute_words.json) is kept
together with its counterfactual, in which every attribute word is swapped. Gender words come in
pairs and swap with each other; race and religion words come in triples, and (as bias-bench) each
sentence draws, for each position of a triple, which of the two other positions its words become
(the same for every word of that position in the sentence). A word listed in several tuples uses
the last one, as bias-bench's loop does (so "her" becomes "his", "sir" becomes "miss").
Unlike bias-bench, words are matched whole and case-insensitively, and the replacement copies the
original's case ("He" → "She", "MEN" → "WOMEN"); bias-bench compares whitespace tokens exactly, so
it never swaps a capitalised word.

Fine-tuning: next-token cross-entropy over every token after the start-of-text token (the Scorer's
BOS convention), averaged over a batch's tokens. Full fine-tuning of every weight is too slow on a
CPU, so each chosen module (default: every layer's MLP output projection) gets a rank-r adapter
W + (α/r)·B·A (LoRA, Hu et al. 2022; B starts at zero, A as nn.Linear's init), trained with Adam and
then merged into W. The edit is therefore a `WeightEdit` of those projection weights, and `restore`
copies the originals back.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairstamp.data.attribute_words import ATTRIBUTE_WORDS
from fairstamp.data.counterfactual import AttributeSwap
from fairstamp.data.locations import WIKITEXT2_VALID
from fairstamp.data.wikitext import clean_sentences
from fairstamp.errors import DataError, FairstampError
from fairstamp.methods.base import (
    Edit,
    EditContext,
    Method,
    WeightEdit,
    module_param_name,
    snapshot,
)
from fairstamp.models.archspec import get_module, is_conv1d, linear_weight
from fairstamp.scoring import Scorer
from fairstamp.scoring.upper import Batch, UpperForward
from fairstamp.utils.devices import input_device
from fairstamp.utils.hooks import hooks
from fairstamp.utils.progress import progress_bar

log = logging.getLogger(__name__)

# -- augmentation ------------------------------------------------------------------------------


def corpus_sentences(path: str | Path, *, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Every sentence of a WikiText file in file order, as `data.wikitext.generic_sentences` cuts
    and detokenises them (headings and sentences with <unk> dropped)."""
    return clean_sentences(path, min_words=min_words, max_words=max_words,
                           what="WikiText-2 valid, the text CDA augments")


def augment(sentences: Sequence[str], swap: AttributeSwap, *, max_sentences: int,
            plain_sentences: int = 0, seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """CDA's training text: up to `max_sentences` sentences with attribute words (a seeded
    choice), each followed by its counterfactual, plus `plain_sentences` without any."""
    rng = random.Random(seed)
    with_words = [s for s in sentences if swap.has_attribute(s)]
    plain = [s for s in sentences if not swap.has_attribute(s)]
    chosen = rng.sample(with_words, min(max_sentences, len(with_words)))
    text = []
    for sentence in chosen:
        text += [sentence, swap.counterfactual(sentence, rng)]
    text += rng.sample(plain, min(plain_sentences, len(plain)))
    return text, {"with_attribute_words": len(with_words), "augmented_sources": len(chosen),
                  "plain": len(text) - 2 * len(chosen), "training_sentences": len(text)}


# -- LoRA --------------------------------------------------------------------------------------


class LoRA(nn.Module):
    """A rank-r update (α/r)·B·A of one Linear or Conv1D weight; B starts at zero."""

    def __init__(self, module: nn.Module, rank: int, alpha: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        weight = module.weight
        self.conv1d = is_conv1d(module)  # GPT-2's [in, out] weight
        if weight.dim() != 2:
            raise FairstampError(f"LoRA needs a 2-d weight, not {tuple(weight.shape)}")
        n_out, n_in = linear_weight(module).shape
        bound = 1.0 / math.sqrt(n_in)  # nn.Linear's kaiming-uniform bound
        a = torch.empty(rank, n_in).uniform_(-bound, bound, generator=generator)
        self.A = nn.Parameter(a.to(device=weight.device, dtype=torch.float32))
        self.B = nn.Parameter(torch.zeros(n_out, rank, device=weight.device))
        self.scale = alpha / rank

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() @ self.A.T @ self.B.T * self.scale).to(x.dtype)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.delta(args[0])

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor) -> None:
        update = (self.B @ self.A) * self.scale  # [out, in]
        weight.add_((update.T if self.conv1d else update).to(weight.dtype))


def target_paths(loaded: Any, modules: Sequence[str]) -> list[str]:
    """Absolute module paths of the adapted modules: `mlp_out` (the ArchSpec's MLP output
    projection) or a path relative to a decoder layer (e.g. `self_attn.o_proj`), in every layer."""
    arch, model = loaded.arch, loaded.model
    out = []
    for layer in range(arch.num_layers(model)):
        for name in modules:
            out.append(arch.mlp_out_proj_path(layer) if name == "mlp_out"
                       else arch.layer_path(layer, name))
    return out


@contextmanager
def adapters_on(model: nn.Module, adapters: Mapping[str, LoRA]) -> Iterator[None]:
    """The unmerged adapters as forward hooks (removed on exit)."""
    with hooks(model, forward=[(path, lora.hook) for path, lora in adapters.items()]):
        yield


# -- the method --------------------------------------------------------------------------------


@dataclass
class CdaConfig:
    """CDA's knobs (defaults: a few minutes on smollm2-135m on a 2-core CPU)."""

    max_sentences: int = 300  # source sentences with attribute words (each + its counterfactual)
    plain_sentences: int = 0  # WikiText sentences without attribute words added unchanged
    max_words: int = 40  # longest source sentence, in words
    max_tokens: int = 64  # token ids per training sequence (start token included)
    steps: int = 60
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    rank: int = 8
    lora_alpha: float = 16.0
    modules: tuple[str, ...] = ("mlp_out",)
    seed: int = 0


class CdaMethod(Method):
    name = "cda"
    config_class = CdaConfig
    description = ("counterfactual data augmentation of WikiText-2 valid, then causal-LM "
                   "fine-tuning (LoRA on every MLP output projection, merged)")

    def fit(self, context: EditContext) -> Edit:
        config = self.seeded_config(context.seed)
        if context.data_root is None:
            raise FairstampError("CDA needs the public data folder (WikiText-2 valid and "
                                 "bias-bench's attribute words): pass data_root / --data-dir")
        if config.rank < 1 or config.steps < 1 or config.batch_size < 1:
            raise FairstampError("cda: rank, steps and batch_size must be at least 1")
        start = time.perf_counter()
        swap = AttributeSwap.from_file(Path(context.data_root) / ATTRIBUTE_WORDS,
                                       context.bias_types)
        source = corpus_sentences(Path(context.data_root) / WIKITEXT2_VALID,
                                  max_words=config.max_words)
        text, counts = augment(source, swap, max_sentences=config.max_sentences,
                               plain_sentences=config.plain_sentences, seed=config.seed)
        if not text:
            raise DataError(f"no WikiText-2 valid sentence contains an attribute word of "
                            f"{', '.join(context.bias_types)}")
        loaded, model = context.loaded, context.loaded.model
        paths = target_paths(loaded, config.modules)
        names = [module_param_name(model, get_module(model, p)) for p in paths]
        originals = snapshot(model, names)
        run = train_lora(loaded, text, paths, config, progress=context.progress)
        weights = dict(model.named_parameters())
        for path, name in zip(paths, names):
            run.adapters[path].merge_into(weights[name])
        info = {**asdict(config), "modules": list(config.modules), **counts,
                "parameters_trained": run.trained, "steps": run.steps,
                "loss_first": run.losses[0], "loss_last": run.losses[-1],
                "losses": [round(x, 4) for x in run.losses],
                "seconds": round(time.perf_counter() - start, 2)}
        log.info("CDA: %d sentences (%d sources + counterfactuals), %d steps, LM loss %.3f → "
                 "%.3f", len(text), counts["augmented_sources"], run.steps, run.losses[0],
                 run.losses[-1])
        return LoraEdit(self.name, model, originals, info, run.adapters)


class LoraEdit(WeightEdit):
    """The merged weights (restored as any `WeightEdit`); saves the low-rank factors, not the
    full deltas (rank·(in+out) numbers per module instead of in·out)."""

    def __init__(self, method: str, model: nn.Module, originals: dict[str, torch.Tensor],
                 info: dict[str, Any], adapters: Mapping[str, LoRA]) -> None:
        super().__init__(method, model, originals, info)
        self.adapters = dict(adapters)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for path, lora in self.adapters.items():
            out[f"lora.{path}.A"] = lora.A.detach()
            out[f"lora.{path}.B"] = (lora.B.detach() * lora.scale)  # scale folded in
        return out


@dataclass
class LoraRun:
    adapters: dict[str, LoRA]
    losses: list[float]
    steps: int
    trained: int


def lm_loss(loaded: Any, scorer: Scorer, seqs: Sequence[Sequence[int]],
            upper: UpperForward | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over every token after the first of each sequence."""
    device = input_device(loaded.model)
    upper = upper or UpperForward(loaded.model, loaded.arch, 0)
    batch = Batch.of(seqs, scorer.pad_token_id, device)
    rows = torch.cat([torch.full((n - 1,), r) for r, n in enumerate(batch.lengths)]).to(device)
    cols = torch.cat([torch.arange(0, n - 1) for n in batch.lengths]).to(device)
    logits = upper.logits(batch, None, rows, cols).float()
    return torch.nn.functional.cross_entropy(logits, batch.ids[rows, cols + 1].to(logits.device))


def train_lora(loaded: Any, text: Sequence[str], paths: Sequence[str], config: CdaConfig, *,
               progress: bool | None = None) -> LoraRun:
    """Adapters on `paths` trained on `text` with the LM loss (not merged; no hooks left)."""
    model = loaded.model
    scorer = Scorer.from_loaded(loaded)
    seqs = [ids[: config.max_tokens] for ids in (scorer.encode(t) for t in text)]
    seqs = [s for s in seqs if len(s) >= 2]
    if not seqs:
        raise DataError("CDA: no training sentence has a token to predict")
    generator = torch.Generator().manual_seed(config.seed)
    adapters = {p: LoRA(get_module(model, p), config.rank, config.lora_alpha, generator)
                for p in paths}
    params = [q for lora in adapters.values() for q in lora.parameters()]
    try:
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    except ValueError as exc:
        raise FairstampError(f"cda settings: {exc}") from None
    upper = UpperForward(model, loaded.arch, 0)
    order: list[int] = []
    losses: list[float] = []
    with adapters_on(model, adapters), progress_bar(config.steps, "CDA (LoRA)",
                                                    progress) as advance:
        for step in range(1, config.steps + 1):
            while len(order) < min(config.batch_size, len(seqs)):
                order += torch.randperm(len(seqs), generator=generator).tolist()
            chosen, order = order[: config.batch_size], order[config.batch_size:]
            loss = lm_loss(loaded, scorer, [seqs[i] for i in chosen], upper)
            if not torch.isfinite(loss):
                raise FairstampError(f"cda: the loss became {loss.item()} at step {step}; "
                                     f"lower lr. The model is unchanged.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            advance(status=f"loss {losses[-1]:.3f}")
    return LoraRun(adapters, losses, config.steps, sum(q.numel() for q in params))
