"""Compare two `fairstamp debias` metrics.json files number by number (before, after, fit,
history, layer, stamp), ignoring timing, versions, paths and configuration; training-history
keys of older runs are read under their current names.

Usage: python benchmarks/compare_runs.py NEW/metrics.json OLD/metrics.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

IGNORED = {"timing", "seconds", "versions", "peak_rss_mib", "config", "fairstamp_version",
           "setup_seconds", "path", "sha256", "data"}
RENAMED = {"l_e_all": "bias_loss_all", "l_e": "bias_loss", "l_m": "keep_mean",
           "l_s1": "retention_kl", "l_s2": "generic_kl"}
COMPARED = ("before", "after", "fit", "history", "layer", "n_edited", "stamp")


def renamed(x: Any) -> Any:
    if isinstance(x, dict):
        return {RENAMED.get(k, k): renamed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [renamed(v) for v in x]
    return x


def differences(new: Any, old: Any, path: str, out: list) -> list:
    if isinstance(new, dict) and isinstance(old, dict):
        for key in sorted(set(new) | set(old)):
            if key in IGNORED:
                continue
            if key not in new or key not in old:
                out.append((f"{path}/{key}", "only in " + ("old" if key not in new else "new")))
            else:
                differences(new[key], old[key], f"{path}/{key}", out)
    elif isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        for i, (a, b) in enumerate(zip(new, old)):
            differences(a, b, f"{path}[{i}]", out)
    elif new != old:
        out.append((path, new, old))
    return out


def main() -> None:
    new, old = (renamed(json.loads(Path(p).read_text())) for p in sys.argv[1:3])
    found: list = []
    for key in COMPARED:
        differences(new.get(key), old.get(key), key, found)
    print(f"{len(found)} differences")
    print("\n".join(map(str, found[:40])))


if __name__ == "__main__":
    main()
