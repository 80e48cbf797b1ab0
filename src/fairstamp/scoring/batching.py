"""How fairstamp lays token sequences out for forward passes: right-padding with explicit
positions, batches of similar lengths, and how many tokens a pass may hold. The Scorer, the lower
layers' cache (`scoring.upper`), tracing and the training loop all batch this way."""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Memory for the float32 logits of one batch; sets the default token budget per forward pass.
LOGITS_BUDGET_BYTES = 512 * 2**20


def logits_token_budget(vocab_size: int, max_batch_tokens: int | None = None, *,
                        budget_bytes: int = LOGITS_BUDGET_BYTES) -> int:
    """Padded tokens per forward pass: `max_batch_tokens` when given, else as many as fit
    `budget_bytes` of float32 logits over a vocabulary of `vocab_size` tokens (at least 64)."""
    return max_batch_tokens or max(64, budget_bytes // (4 * max(vocab_size, 1)))


def length_batches(lengths: Sequence[int], max_tokens: int,
                   max_size: int | None = None) -> list[list[int]]:
    """Indices grouped longest first, so that each group holds sequences of similar length (little
    padding); a group's padded size fits `max_tokens` and it has at most `max_size` members (a
    sequence longer than `max_tokens` goes alone). Every forward pass over a set of sequences
    batches with this."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        fits = (len(current) + 1) * width <= max_tokens
        if current and (not fits or (max_size is not None and len(current) >= max_size)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), each [N, longest]: right-padded with explicit
    positions, so neither the padding side nor the other sequences can change a result. The one
    padding convention of fairstamp (scoring, tracing and stamp training)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    positions = torch.arange(width).unsqueeze(0).expand(len(sequences), width).contiguous()
    return ids, mask, positions
