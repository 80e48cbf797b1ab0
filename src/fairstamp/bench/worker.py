"""One bench method in its own process: `python -m fairstamp.bench.worker RUN_FOLDER METHOD`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from fairstamp.bench.folder import CONFIG_NAME
from fairstamp.bench.runner import BenchConfig, record_failure, run_one
from fairstamp.utils.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m fairstamp.bench.worker RUN_FOLDER METHOD", file=sys.stderr)
        return 2
    out, name = Path(args[0]), args[1]
    setup_logging(logging.INFO, show_library_progress=False)
    config = BenchConfig(**json.loads((out / CONFIG_NAME).read_text()))
    try:
        run_one(out, name, config)
    except Exception as exc:
        record_failure(out, name, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
