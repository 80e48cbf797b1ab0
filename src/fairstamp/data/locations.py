"""Where the public data lies: the data folder (../shared/data layout) and the files inside it.

Every room that reads the public data folder finds it here: evaluation (paraphrases, WikiText-2
test, known_1000, downstream sets), training text and the baselines (WikiText-2 valid, attribute
words).
"""

from __future__ import annotations

import os
from pathlib import Path

from fairstamp.errors import DataError

DATA_ENV = "FAIRSTAMP_DATA"
GPT_PARAPHRASES = Path("model_editing_for_debias") / "steroset.jsonl"
WIKITEXT2_TEST = Path("wikitext2") / "raw_tyloquant"
#: What training reads as generic text (L_s2) and the baselines' corpora; perplexity reads test.
WIKITEXT2_VALID = Path("wikitext2") / "pytorch_examples" / "valid.txt"
KNOWN_1000 = Path("counterfact") / "known_1000.json"
DOWNSTREAM = Path("downstream") / "llm_foundry"


def data_root(data_dir: str | Path | None = None) -> Path | None:
    """The public data folder: `data_dir` (--data-dir), $FAIRSTAMP_DATA, or a `shared/data` beside
    the working directory's repository; None when there is none. A folder the user named must
    exist."""
    named = ((data_dir, "--data-dir"), (os.environ.get(DATA_ENV), f"${DATA_ENV}"))
    for given, what in named:
        if given:
            if not Path(given).is_dir():
                raise DataError(f"{given}: no such folder ({what})")
            return Path(given)
    beside_repo = Path.cwd().parent / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else None


def require(root: str | Path | None, relative: str | Path, what: str) -> Path:
    """`root / relative`, which `what` needs; a clear error when the folder or file is missing."""
    if root is None:
        raise DataError(f"{what} needs the public data folder: pass --data-dir or set "
                        f"${DATA_ENV} (the layout of shared/data)")
    path = Path(root) / relative
    if not path.exists():
        raise DataError(f"{path}: missing ({what})")
    return path
