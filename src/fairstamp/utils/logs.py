"""Logging set-up for the command line and the bench's worker processes (library code only
logs; it never configures logging itself)."""

from __future__ import annotations

import logging


def setup_logging(level: int, show_library_progress: bool) -> None:
    """Rich log lines on stderr at `level` for fairstamp; transformers' own bars and chatter
    ("Loading weights", GGUF conversion) only with `show_library_progress`."""
    from rich.console import Console  # rich and transformers load only when a CLI starts
    from rich.logging import RichHandler
    from transformers.utils import logging as hf_logging

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("fairstamp").setLevel(level)
    hf_logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if not show_library_progress:
        hf_logging.disable_progress_bar()
