"""Throughput of fairstamp's batched scorer on every StereoSet dev intrasentence sentence.

Measured side by side in one run, on the same model and sentences:
  ours      fairstamp.scoring.Scorer.score (tokenize, length-sorted batches, sentences of one
            context packed into one row with their common beginning once, gather, logsumexp)
  unpacked  the same with one row per sentence (Scorer(pack=False))
  bare      only the batched forward passes over the padded token tensors that `unpacked` builds,
            with tokenization, batching and log-prob bookkeeping done beforehand: the lower bound
            of any scorer that runs every sentence in full
  naive     one sentence at a time, the way bias-bench scores causal LMs for StereoSet: a forward
            pass per sentence, a full log-softmax, a Python loop over the tokens

ours, unpacked and bare run on every sentence. The naive way takes about half an hour for all of
them on a 2-core CPU, so it runs on the sentences of every k-th context (--naive-every, default 5;
StereoSet scores a context's three sentences together) and ours is timed again on exactly that
subset: the speed-up is measured on identical work.

Usage: python benchmarks/scoring.py [--model smollm2-135m] [--data PATH] [--repeats 2]
Writes benchmarks/results/scoring.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fairstamp.models import load
from fairstamp.scoring import Scorer
from fairstamp.utils.io import atomic_write_json, atomic_write_text
from fairstamp.utils.repro import library_versions

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "stereoset" / "dev.json"


def stereoset_contexts(path: Path) -> list[list[str]]:
    """The sentences of each StereoSet dev intrasentence context, in file order."""
    data = json.loads(path.read_text())
    return [[s["sentence"] for s in item["sentences"]] for item in data["data"]["intrasentence"]]


def naive_scores(model, scorer: Scorer, sentences: list[str]) -> np.ndarray:
    """bias-bench style: one sentence per forward pass, full log-softmax, per-token Python loop."""
    out = np.empty(len(sentences))
    with torch.no_grad():
        for i, sentence in enumerate(sentences):
            ids = scorer.encode(sentence)
            logits = model(torch.tensor([ids])).logits[0]
            logprobs = torch.log_softmax(logits, dim=-1)
            total = 0.0
            for t in range(1, len(ids)):
                total += logprobs[t - 1, ids[t]].item()
            out[i] = total
    return out


def bare_forward(model, scorer: Scorer, sentences: list[str]) -> float:
    """Seconds for just the forward passes of the batches `scorer` would run."""
    unique = list(dict.fromkeys(sentences))
    sequences = [scorer._with_prefix(ids) for ids in scorer._tokenize(unique)]
    tensors = []
    for batch in scorer._batches([len(s) for s in sequences]):
        seqs = [sequences[i] for i in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), scorer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        positions = torch.arange(width).unsqueeze(0).expand(len(seqs), width)
        tensors.append((ids, mask, positions))
    start = time.perf_counter()
    with torch.no_grad():
        for ids, mask, positions in tensors:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for the batched runs")
    parser.add_argument("--naive-every", type=int, default=5,
                        help="time the naive way on every k-th context's sentences (1: all)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    loaded = load(args.model)
    contexts = stereoset_contexts(args.data)
    sentences = [s for context in contexts for s in context]
    scorer = Scorer.from_loaded(loaded, progress=False)
    unpacked_scorer = Scorer.from_loaded(loaded, progress=False, pack=False)
    n_tokens = sum(len(scorer.encode(s)) for s in sentences)
    print(f"{len(sentences)} sentences, {n_tokens} tokens, model {loaded.name}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)

    scorer.score(sentences[:64])  # warm-up
    ours_times, unpacked_times, bare_times = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = scorer.score(sentences)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        unpacked = unpacked_scorer.score(sentences)
        unpacked_times.append(time.perf_counter() - start)
        bare_times.append(bare_forward(loaded.model, unpacked_scorer, sentences))
    first = np.cumsum([0, *map(len, contexts)])  # index of each context's first sentence
    chosen = [i for c in range(0, len(contexts), args.naive_every)
              for i in range(first[c], first[c + 1])]
    subset = [sentences[i] for i in chosen]
    sub_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours_sub = scorer.score(subset)
        sub_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    naive = naive_scores(loaded.model, scorer, subset)
    naive_time = time.perf_counter() - start

    t_ours, t_bare, t_sub = min(ours_times), min(bare_times), min(sub_times)
    t_unpacked = min(unpacked_times)
    max_diff = float(np.max(np.abs(naive - ours_sub.total)))
    packing_diff = float(np.max(np.abs(ours.total - unpacked.total)))
    assert np.allclose(ours_sub.total, ours.total[chosen])
    result = {
        "benchmark": "scoring",
        "model": loaded.name,
        "data": str(args.data.name),
        "sentences": len(sentences),
        "tokens": n_tokens,
        "threads": torch.get_num_threads(),
        "max_batch_tokens": scorer.max_batch_tokens,
        "seconds": {"ours": t_ours, "unpacked": t_unpacked, "bare_forward": t_bare},
        "naive_subset": {"every": args.naive_every, "sentences": len(subset),
                         "seconds_naive": naive_time, "seconds_ours": t_sub},
        "sentences_per_second": {
            "ours": len(sentences) / t_ours,
            "unpacked": len(sentences) / t_unpacked,
            "naive_one_at_a_time": len(subset) / naive_time,
            "bare_forward": len(sentences) / t_bare,
        },
        "speedup_vs_naive": naive_time / t_sub,
        "speedup_from_packing": t_unpacked / t_ours,
        "ours_vs_bare_forward": t_ours / t_bare,
        "max_abs_diff_vs_naive_nats": max_diff,
        "max_abs_diff_packed_vs_unpacked_nats": packing_diff,
        "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": torch.get_num_threads()},
        "versions": library_versions(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "scoring.json", result)
    table = (
        f"# Scoring benchmark\n\n"
        f"`python benchmarks/scoring.py` — {len(sentences)} StereoSet dev intrasentence sentences "
        f"({n_tokens} tokens), `{loaded.name}`, {torch.get_num_threads()} CPU threads, "
        f"best of {args.repeats} for the batched runs.\n\n"
        f"| way | sentences | seconds | sentences/s | ratio |\n|---|---:|---:|---:|---:|\n"
        f"| fairstamp Scorer | {len(sentences)} | {t_ours:.1f} | {len(sentences) / t_ours:.1f} "
        f"| 1.00 |\n"
        f"| fairstamp Scorer, one row per sentence (`pack=False`) | {len(sentences)} | "
        f"{t_unpacked:.1f} | {len(sentences) / t_unpacked:.1f} | packing is "
        f"{t_unpacked / t_ours:.2f}x faster |\n"
        f"| bare batched forward, one row per sentence | {len(sentences)} | {t_bare:.1f} | "
        f"{len(sentences) / t_bare:.1f} | ours takes {t_ours / t_bare:.2f}x its time |\n"
        f"| fairstamp Scorer, every {args.naive_every}th context | {len(subset)} | {t_sub:.1f} | "
        f"{len(subset) / t_sub:.1f} | 1.00 |\n"
        f"| one at a time (bias-bench style), same subset | {len(subset)} | {naive_time:.1f} | "
        f"{len(subset) / naive_time:.1f} | ours is {naive_time / t_sub:.1f}x faster |\n\n"
        f"Largest difference between our and the naive sentence scores: {max_diff:.2e} nats; "
        f"between packed and one-row-per-sentence scores: {packing_diff:.2e} nats.\n"
    )
    atomic_write_text(args.out / "scoring.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
