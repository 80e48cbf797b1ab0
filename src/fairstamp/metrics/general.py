"""General ability (SPEC §3): perplexity, known_1000 top-1 and zero-shot multiple choice.

Each metric is one batched call to the project's `Scorer`, so an edited model is measured exactly as
the original. A quick suite uses fixed subsets (the first N items in file order) chosen so that the
whole suite on `smollm2-135m` runs in about five minutes on a 2-core CPU:

| set (first N, file order) | default N        | of      | time  | smollm2-135m              |
|---------------------------|------------------|---------|-------|---------------------------|
| WikiText-2 test (raw)     | 16,384 tokens    | 301,948 | 52 s  | ppl 19.55 [16.30, 23.28]  |
| known_1000                | 1,209 (all)      | 1,209   | 31 s  | top-1 20.3% [18.2, 22.3]  |
| BoolQ                     | 100              | 3,270   | 60 s  | acc 33.0 [24.0, 43.0]     |
| COPA                      | 100 (all)        | 100     | 7 s   | acc 58.0 [48.0, 68.0]     |
| WinoGrande                | 400              | 1,267   | 34 s  | acc 51.5 [46.8, 56.2]     |
| PIQA                      | 300              | 1,838   | 46 s  | acc 64.0, acc_norm 67.0   |
| ARC-Easy                  | 200              | 2,376   | 52 s  | acc 49.5, acc_norm 46.0   |
| all seven                 |                  |         | 283 s | + 4 s to load the model   |

Measured with the default `Scorer` batching, fp32, torch's default 2 threads, on an otherwise idle
2-core CPU; other processes on the same cores make it up to three times slower. smollm2-135m is
SmolLM2-135M-Instruct dequantised from Q4_1, which knows few of ROME's known_1000 facts (built for
GPT-2 XL) and answers BoolQ mostly "no" (70 of the first 100 are "yes"). BoolQ is the costly task:
its passages make ~300 tokens per item. Pass larger limits for tighter intervals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fairstamp.data.general import ChoiceItem, KnownFact
from fairstamp.errors import FairstampError
from fairstamp.metrics.bootstrap import MetricValue, bootstrap, percent_true
from fairstamp.scoring import Scorer

log = logging.getLogger(__name__)

#: Subset sizes of the quick general suite (tokens of WikiText-2 test, else items).
DEFAULT_LIMITS: dict[str, int] = {
    "wikitext2": 16384,
    "known_1000": 1209,
    "boolq": 100,
    "copa": 100,
    "winogrande": 400,
    "piqa": 300,
    "arc_easy": 200,
}

DEFAULT_WINDOW = 1024
DEFAULT_STRIDE = 768


# -- perplexity --------------------------------------------------------------------------------


def perplexity_windows(n_positions: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(context start, score start, end) of each window over `n_positions` tokens whose positions
    1..n-1 are scored: window k starts at k * stride, is at most `window` long and scores the
    positions after the previous window's end, so every position is scored once."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride < window:
        raise ValueError(f"stride must be between 1 and window - 1 ({window - 1}), got {stride}")
    spans: list[tuple[int, int, int]] = []
    scored_to = 1
    for begin in range(0, n_positions, stride):
        end = min(begin + window, n_positions)
        spans.append((begin, scored_to, end))
        scored_to = end
        if end == n_positions:
            break
    return spans


def perplexity(
    scorer: Scorer,
    text: str,
    *,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
    max_tokens: int | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
) -> MetricValue:
    """Strided sliding-window perplexity of `text` (exp of the mean token NLL), with a bootstrap CI
    over windows.

    The text is tokenized whole, the scorer's start token (BOS) is put in front, and it is cut into
    windows of at most `window` tokens: the first window scores all its tokens, each later one
    scores the next `stride` tokens with the `window - stride` tokens before them as context (the
    Hugging Face recipe), so every token is scored exactly once. `max_tokens` keeps only the first
    N text tokens. All windows go to the scorer in one batched call. `n` of the result is the
    number of windows.

    Defaults: window 1024, stride 768 (each token after the first window sees >= 256 tokens of
    context; 1.33 forward tokens per scored token). On smollm2-135m with 2 CPU cores this scores
    ~315 tokens/s: 52 s for the suite's 16,384 tokens, about 16 min for the whole WikiText-2 test
    text (301,948 tokens), hence `DEFAULT_LIMITS["wikitext2"]`. Measured on the first 8,192 tokens,
    window 512/stride 384 gave 30.67 in 27 s and 1024/768 gave 25.63 in 24 s, so the longer window
    costs nothing here.
    """
    ids = list(scorer.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        ids = ids[:max_tokens]
    if scorer.max_length is not None and window > scorer.max_length:
        raise FairstampError(f"window {window} exceeds the model's {scorer.max_length} positions")
    full = scorer._with_prefix(ids)
    if len(full) < 2:
        raise FairstampError("the text has no tokens to score")
    spans = perplexity_windows(len(full), window, stride)
    sequences = [full[begin:end] for begin, _, end in spans]
    starts = [score_start - begin for begin, score_start, _ in spans]
    scored = scorer.token_logprobs(sequences, starts, description="perplexity")
    nll = np.array([-s.total for s in scored], dtype=np.float64)
    counts = np.array([len(s.logprobs) for s in scored], dtype=np.float64)
    log.info("perplexity over %d tokens in %d windows (window %d, stride %d)",
             int(counts.sum()), len(spans), window, stride)
    return bootstrap(lambda idx: float(np.exp(nll[idx].sum() / counts[idx].sum())), len(spans),
                     n_resamples=n_resamples, seed=seed)


# -- known_1000 --------------------------------------------------------------------------------


def known_facts(
    scorer: Scorer,
    facts: Sequence[KnownFact],
    *,
    reference: Mapping[str, int] | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Next-token knowledge of known_1000 facts.

    Returns `accuracy` (% of facts whose top-1 next token after `prompt` is the first token of
    `" " + attribute`), `top1` (str(known_id) -> the model's top-1 token id, to keep as the
    reference of later runs) and, when `reference` is given, `kept` (% of facts whose top-1 is
    still the reference's) and `changed`: one record per fact whose top-1 is not, with the
    prompt, the answer, both top-1 tokens decoded and whether each was right, so that a report
    can tell a lost fact from a flipped guess. Prompt and attribute are tokenized together (the
    harness rule).
    """
    if not facts:
        raise FairstampError("no facts to evaluate")
    spans = scorer.continuation_logprobs([f.prompt for f in facts],
                                         [" " + f.attribute.strip() for f in facts],
                                         description="known_1000")
    top1 = {str(f.known_id): int(s.top1[0]) for f, s in zip(facts, spans)}
    correct = np.array([s.top1[0] == s.token_ids[0] for s in spans], dtype=bool)
    out: dict[str, Any] = {
        "accuracy": percent_true(correct, n_resamples=n_resamples, seed=seed),
        "top1": top1,
    }
    if reference is not None:
        missing = [k for k in top1 if k not in reference]
        if missing:
            raise FairstampError(f"the reference has no top-1 for {len(missing)} fact(s), "
                                 f"e.g. known_id {missing[0]}")
        kept = np.array([top1[k] == int(reference[k]) for k in top1], dtype=bool)
        out["kept"] = percent_true(kept, n_resamples=n_resamples, seed=seed)
        decode = scorer.tokenizer.decode
        out["changed"] = [
            {"known_id": f.known_id, "prompt": f.prompt, "answer": f.attribute.strip(),
             "before": decode([int(reference[str(f.known_id)])]),
             "after": decode([int(s.top1[0])]),
             "right_before": int(reference[str(f.known_id)]) == int(s.token_ids[0]),
             "right_after": bool(right)}
            for f, s, right, same in zip(facts, spans, correct, kept) if not same]
    return out


# -- multiple choice ---------------------------------------------------------------------------


def multiple_choice_accuracy(
    scorer: Scorer,
    items: Sequence[ChoiceItem],
    *,
    seed: int = 0,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Zero-shot accuracy by likelihood ranking, as the lm-evaluation-harness computes it.

    `acc`: the choice with the highest summed log-probability of its continuation is right.
    `acc_norm`: the same after dividing by the continuation's length in characters (without the
    joining space, like the harness's acc_norm). Ties go to the first choice. `n` is the number of
    items; `predictions` the chosen index per item (by acc).
    """
    if not items:
        raise FairstampError("no multiple-choice items to evaluate")
    prefixes = [p for item in items for p in item.prefixes]
    continuations = [c for item in items for c in item.continuations]
    spans = scorer.continuation_logprobs(prefixes, continuations,
                                         description="multiple choice")
    totals = np.array([s.total for s in spans], dtype=np.float64)
    chars = np.array([max(1, len(c) - c.startswith(" ")) for c in continuations],
                     dtype=np.float64)
    hits, hits_norm, predictions, offset = [], [], [], 0
    for item in items:
        k = item.n_choices
        scores = totals[offset : offset + k]
        best = int(np.argmax(scores))
        predictions.append(best)
        hits.append(best == item.gold)
        hits_norm.append(int(np.argmax(scores / chars[offset : offset + k])) == item.gold)
        offset += k
    return {
        "acc": percent_true(np.array(hits), n_resamples=n_resamples, seed=seed),
        "acc_norm": percent_true(np.array(hits_norm), n_resamples=n_resamples, seed=seed),
        "n": len(items),
        "predictions": predictions,
    }
