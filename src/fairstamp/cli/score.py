"""`fairstamp score`: log-probabilities of sentences from a file or stdin, as JSON Lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fairstamp.cli import validate as V
from fairstamp.cli.options import (
    DEFAULT,
    DEFAULT_DTYPE,
    BatchTokensOpt,
    CacheDirOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    MaxMemoryOpt,
    MaxSentenceTokens,
    ModelOpt,
    OffloadFolderOpt,
)
from fairstamp.data.readers import read_sentences
from fairstamp.data.validate import DEFAULT_MAX_SENTENCE_TOKENS, sentence_length_limit
from fairstamp.scoring import Scorer
from fairstamp.utils.io import atomic_write_text


def score(
    input: Annotated[str, typer.Argument(help="Text file (one sentence per line) or JSON Lines "
                                         "file with a 'text' field; '-' reads stdin.")] = "-",
    model: ModelOpt = DEFAULT,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write JSON Lines "  # noqa: UP045
                                                   "here (atomically) instead of stdout.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --output file.")] = False,
    max_sentence_tokens: MaxSentenceTokens = DEFAULT_MAX_SENTENCE_TOKENS,
    batch_tokens: BatchTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_folder: OffloadFolderOpt = None,
    dtype: DtypeOpt = DEFAULT_DTYPE,
) -> None:
    """Score sentences: one JSON object per input line with the summed and per-token-mean
    log-probability (nats) and the number of scored tokens, in input order."""

    placement = V.check_placement(device=device, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder, dtype=dtype)
    V.check_input_file(input, "INPUT")
    with sentence_length_limit(max_sentence_tokens), \
            V.claimed_output(output, overwrite=overwrite, option="--output"):
        records = read_sentences(input)
        loaded = V.load_model(model, cache_dir=cache_dir, **placement)
        V.check_token_lengths([r.text for r in records], [r.where for r in records],
                              loaded.tokenizer)
        scorer = Scorer.from_loaded(loaded, max_batch_tokens=batch_tokens)
        scores = scorer.score([r.text for r in records], description=f"scoring {len(records)}")
        lines = []
        for i, record in enumerate(records):
            row = {**record.extra, "text": record.text,
                   "logprob_sum": float(scores.total[i]),
                   "logprob_mean": float(scores.mean[i]),
                   "n_tokens": int(scores.n_tokens[i])}
            lines.append(json.dumps(row, ensure_ascii=False))
        text = "\n".join(lines) + "\n"
        if output is not None:
            atomic_write_text(output, text)
    if output is None:
        sys.stdout.write(text)
    else:
        typer.echo(f"wrote {len(lines)} scores to {output}", err=True)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
