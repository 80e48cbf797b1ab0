"""Text generation through a (possibly stamped) model, reproducibly: the one code path of
`fairstamp generate` and of the BOLD part of the transfer suite.

Prompts start with the start-of-text token the Scorer uses, so generation sees what scoring
sees. Batches are left-padded (each prompt's last token is where every row's generation starts;
transformers derives the position ids from the attention mask, so padding does not shift a
prompt's positions), sorted by length to waste little padding, and returned in input order.
Sampling is seeded per batch (`seed + batch number`) inside a forked RNG, so the caller's random
state is untouched and the same prompts, seed and batch size give the same text. With
`processes` (several processes of `accelerate launch`) each process generates every N-th batch,
seeded as in one process, and the texts are gathered in input order on every process: the same
text as one process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from fairstamp.scoring.scorer import Scorer
from fairstamp.utils.distributed import ONE, Processes
from fairstamp.utils.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32


@torch.no_grad()
def generate_batch(loaded: Any, prompts: Sequence[str], *, max_new_tokens: int = 30,
                   sample: bool = False, temperature: float = 0.8, seed: int = 0,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None,
                   description: str = "generating",
                   processes: Processes | None = None) -> list[str]:
    """The model's continuation of each prompt (the prompt itself not included), in input
    order. Greedy unless `sample` (then plain sampling at `temperature`, no top-k/top-p)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    scorer = Scorer(loaded.model, loaded.tokenizer)  # the start token scoring uses
    encoded = [scorer.encode(p) for p in prompts]
    pad = _pad_id(loaded.tokenizer, scorer.pad_token_id)
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    device = loaded.device
    cuda = [device] if device.type == "cuda" else []
    out: list[str] = [""] * len(prompts)
    processes = processes or ONE
    batches = _batches(order, encoded, batch_size, _takes_padding(loaded.model))
    mine = [(number, batches[number]) for number in processes.share(len(batches))]
    show = progress if processes.is_main else False
    with progress_bar(sum(len(b) for _, b in mine), description, show) as advance:
        for number, batch in mine:
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding
                ids[row, width - len(encoded[i]):] = torch.as_tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed + number)
                output = loaded.model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens, do_sample=sample,
                    temperature=temperature if sample else None, top_p=None, top_k=None,
                    pad_token_id=pad)
            texts = loaded.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                out[i] = text
            advance(len(batch))
    if processes.sharded:
        return processes.gather_in_order(len(prompts), [(i, out[i]) for _, b in mine for i in b])
    return out


def _takes_padding(model: Any) -> bool:
    """transformers models generate from left-padded batches; a wrapper such as Self-Debias's
    may not, and then gets batches of prompts of one length."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _batches(order: list[int], encoded: list[list[int]], size: int, padded: bool
             ) -> list[list[int]]:
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < size and (
                padded or len(encoded[batches[-1][0]]) == len(encoded[i])):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _pad_id(tokenizer: Any, fallback: int) -> int:
    """What fills a row after its end of text: the pad token, else EOS (both dropped when
    decoding), else the Scorer's pad id."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return fallback


def continue_text(loaded: Any, prompt: str, *, max_new_tokens: int = 30, sample: bool = False,
                  temperature: float = 0.8, seed: int = 0) -> str:
    """The model's continuation of one prompt (`generate_batch` with a batch of one)."""
    return generate_batch(loaded, [prompt], max_new_tokens=max_new_tokens, sample=sample,
                          temperature=temperature, seed=seed, progress=False)[0]
