"""One bench method in its own process:
`python -m fairstamp.bench.worker RUN_FOLDER METHOD [MAX_SENTENCE_TOKENS]` (the parent's sentence
length limit, so that the worker's readers refuse what the parent's would)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from fairstamp.bench.folder import CONFIG_NAME
from fairstamp.bench.runner import BenchConfig, record_failure, run_one
from fairstamp.data.validate import DEFAULT_MAX_SENTENCE_TOKENS, sentence_length_limit
from fairstamp.utils.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m fairstamp.bench.worker RUN_FOLDER METHOD [MAX_SENTENCE_TOKENS]"
    if len(args) not in (2, 3) or (len(args) == 3 and not args[2].isdigit()):
        print(usage, file=sys.stderr)
        return 2
    out, name = Path(args[0]), args[1]
    max_tokens = int(args[2]) if len(args) == 3 else DEFAULT_MAX_SENTENCE_TOKENS
    setup_logging(logging.INFO, show_library_progress=False)
    config = BenchConfig(**json.loads((out / CONFIG_NAME).read_text()))
    try:
        with sentence_length_limit(max(1, max_tokens)):
            run_one(out, name, config)
    except Exception as exc:
        record_failure(out, name, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
