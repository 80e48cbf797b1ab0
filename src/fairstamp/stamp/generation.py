"""Text generation through a (possibly stamped) model, reproducibly."""

from __future__ import annotations

from typing import Any

import torch

from fairstamp.scoring.scorer import Scorer


@torch.no_grad()
def continue_text(loaded: Any, prompt: str, *, max_new_tokens: int = 30, sample: bool = False,
                  temperature: float = 0.8, seed: int = 0) -> str:
    """The model's continuation of `prompt` (the prompt itself not included). The prompt starts
    with the start-of-text token the Scorer uses, so generation sees what scoring sees."""
    scorer = Scorer.from_loaded(loaded)
    ids = torch.tensor([scorer.encode(prompt)], device=loaded.device)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        output = loaded.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            do_sample=sample, temperature=temperature if sample else None, top_p=None,
            top_k=None, pad_token_id=scorer.pad_token_id)
    finally:
        torch.random.set_rng_state(generator_state)
    return loaded.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
