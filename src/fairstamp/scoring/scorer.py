"""The one way fairstamp scores text: batched token log-probabilities under a causal LM.

Every metric and method goes through `Scorer`. A sentence's score is the log-probability of its
tokens given a start-of-text token: the tokenizer's BOS where it defines one, else its EOS (the
lm-evaluation-harness convention), else nothing (then the first token cannot be scored and is left
out). Batches are sorted by length and right-padded with explicit position ids, so neither the
tokenizer's padding side nor the other sentences in a batch can change a score.

Scoring `seq[start:]` needs the model's output at positions start-1 .. len-2 only, i.e. one
forward pass of `seq[:-1]`. Sequences whose forward input is the same as, or a prefix of, another
one's share that other one's forward pass (a causal model's outputs at a position do not depend on
what follows): the choices of a multiple-choice item with one-token answers (BoolQ's " yes" /
" no") cost one pass, not one per choice. Given the model's `ArchSpec`:
- inputs that begin alike share that beginning too: they are packed into one row, the common
  prefix once and then each input's own tokens, with an attention mask that lets each input's
  tokens see the prefix and their own earlier tokens only, and the positions each token has in
  its own input (StereoSet's three sentences per context, a question's answer choices);
- the unembedding runs only at the positions that predict a scored token (a multiple-choice
  context or a perplexity window's leading context costs no logits);
- a `LowerLayerCache` lets a second evaluation of the same text skip the layers below a stamp
  (`fairstamp debias` evaluates before and after).

With `processes` (`fairstamp.utils.distributed.Processes`, several processes of `accelerate
launch`), every process builds the same forward passes, runs every N-th of them and gathers the
results of all, in input order: the passes, hence every float, are those of one process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fairstamp.errors import FairstampError
from fairstamp.scoring.batching import length_batches, logits_token_budget, pad_batch
from fairstamp.scoring.upper import Batch, UpperForward
from fairstamp.utils.devices import input_device
from fairstamp.utils.distributed import ONE, Processes
from fairstamp.utils.progress import progress_bar

log = logging.getLogger(__name__)

Reduction = Literal["sum", "mean"]


@dataclass(frozen=True)
class SentenceScores:
    """Scores of N sentences, in input order. `total` is the summed log-probability (nats),
    `mean` the per-token mean, `n_tokens` how many tokens were scored."""

    total: np.ndarray
    mean: np.ndarray
    n_tokens: np.ndarray

    def by(self, reduction: Reduction) -> np.ndarray:
        if reduction == "sum":
            return self.total
        if reduction == "mean":
            return self.mean
        raise ValueError(f"unknown reduction {reduction!r}; use 'sum' or 'mean'")

    def __len__(self) -> int:
        return len(self.total)


@dataclass(frozen=True)
class TokenLogprobs:
    """Per-token log-probabilities of one scored span; `top1` is the model's argmax token at each
    position and `greedy` whether the actual token was that argmax."""

    token_ids: np.ndarray
    logprobs: np.ndarray
    greedy: np.ndarray
    top1: np.ndarray

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())

    @property
    def mean(self) -> float:
        return float(self.logprobs.mean()) if len(self.logprobs) else float("nan")

    @property
    def all_greedy(self) -> bool:
        return bool(self.greedy.all())


class Scorer:
    """Batched log-probabilities of sentences and continuations under one model.

    max_batch_tokens: padded tokens per forward pass (default: what fits 512 MiB of logits).
    arch:             the model's ArchSpec: logits only at scored positions (`from_loaded` passes
                      it for a plain transformers model, not for wrappers such as Self-Debias).
    lower_cache:      a LowerLayerCache to record into or replay from (needs `arch`).
    pack:             run inputs that begin alike in one row, their common prefix once (with
                      `arch`; False: one row per input).
    max_batch_size:   sentences per forward pass.
    progress:         draw a progress bar (None: when stderr is a terminal).
    processes:        deal the forward passes out over these processes and gather the results
                      (default: this process alone); every process must make the same calls.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        max_batch_tokens: int | None = None,
        max_batch_size: int = 128,
        progress: bool | None = None,
        arch: Any = None,
        lower_cache: LowerLayerCache | None = None,
        pack: bool = True,
        processes: Processes | None = None,
    ) -> None:
        if lower_cache is not None and arch is None:
            raise ValueError("a lower-layer cache needs the model's ArchSpec")
        self.model = model
        self.arch = arch
        self.lower_cache = lower_cache
        self._upper = UpperForward(model, arch, 0) if arch is not None else None
        self.tokenizer = tokenizer
        vocab = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
        self.max_batch_tokens = logits_token_budget(vocab, max_batch_tokens)
        self.max_batch_size = max_batch_size
        self.progress = progress
        self.prefix_token_id, self.prefix_kind = _prefix_token(tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        self.max_length = max_positions(model)
        self.pack = pack and arch is not None
        self._window = attention_window(model)
        self.processes = processes or ONE

    @classmethod
    def from_loaded(cls, loaded: Any, **kwargs: Any) -> Scorer:
        """A scorer for a `fairstamp.models.LoadedModel`."""
        from transformers import PreTrainedModel  # heavy: only where a scorer is built this way

        if isinstance(loaded.model, PreTrainedModel):
            kwargs.setdefault("arch", loaded.arch)
        return cls(loaded.model, loaded.tokenizer, **kwargs)

    def describe(self) -> dict[str, Any]:
        """How scores are computed, for run records and reports."""
        token = None
        if self.prefix_token_id is not None:
            token = self.tokenizer.convert_ids_to_tokens(self.prefix_token_id)
        return {
            "prefix": self.prefix_kind,
            "prefix_token": token,
            "prefix_token_id": self.prefix_token_id,
            "max_batch_tokens": self.max_batch_tokens,
            "max_batch_size": self.max_batch_size,
        }

    # -- encoding ------------------------------------------------------------------------------

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False).input_ids
        return [list(ids) for ids in encoded]

    def encode(self, sentence: str) -> list[int]:
        """Token ids of a sentence as scored: the start-of-text token (if any), then its tokens."""
        return self._with_prefix(self._tokenize([sentence])[0])

    def _with_prefix(self, ids: list[int]) -> list[int]:
        return [self.prefix_token_id, *ids] if self.prefix_token_id is not None else list(ids)

    # -- public scoring ------------------------------------------------------------------------

    def score(self, sentences: Sequence[str], *, description: str = "scoring") -> SentenceScores:
        """Log-probability (sum and per-token mean) of each sentence, in input order.

        Identical sentences are scored once.
        """
        sentences = list(sentences)
        unique = list(dict.fromkeys(sentences))
        sequences = [self._with_prefix(ids) for ids in self._tokenize(unique)]
        start = 1
        for text, seq in zip(unique, sequences):
            if len(seq) <= start:
                raise FairstampError(f"cannot score {text!r}: it has no tokens to score")
        spans = self.token_logprobs(sequences, [start] * len(sequences), description=description)
        index = {text: i for i, text in enumerate(unique)}
        total = np.array([spans[index[s]].total for s in sentences], dtype=np.float64)
        n = np.array([len(spans[index[s]].logprobs) for s in sentences], dtype=np.int64)
        return SentenceScores(total=total, mean=total / np.maximum(n, 1), n_tokens=n)

    def continuation_logprobs(
        self,
        prefixes: Sequence[str],
        continuations: Sequence[str],
        *,
        description: str = "scoring",
    ) -> list[TokenLogprobs]:
        """Per-token log-probs of each continuation given its prefix (prefix tokens not scored).

        Tokenized as lm-evaluation-harness does: the whole string is encoded and the continuation is
        its tokens after as many as the prefix alone encodes to, so the model reads the text as one
        piece. Trailing spaces of a prefix move to its continuation. A prefix too long for the
        model loses its oldest tokens (after the start token), as lm-evaluation-harness does.
        """
        if len(prefixes) != len(continuations):
            raise ValueError("prefixes and continuations must have the same length")
        moved = [_move_trailing_space(p, c) for p, c in zip(prefixes, continuations)]
        whole = self._tokenize([p + c for p, c in moved])
        heads = self._tokenize([p for p, _ in moved])
        sequences, starts = [], []
        for (prefix, cont), ids, head in zip(moved, whole, heads):
            if not cont:
                raise FairstampError(f"empty continuation after prefix {prefix!r}")
            cut = min(len(head), len(ids) - 1)
            seq = self._with_prefix(ids)
            start = max(1, cut + len(seq) - len(ids))
            if self.max_length is not None and len(seq) > self.max_length:
                drop = len(seq) - self.max_length
                keep = 1 if self.prefix_token_id is not None else 0  # the start token
                if drop >= start:  # nothing of the continuation would be scored
                    raise FairstampError(f"the continuation {cont!r} alone exceeds the model's "
                                         f"{self.max_length} positions")
                seq = seq[:keep] + seq[keep + drop :]
                start -= drop
            sequences.append(seq)
            starts.append(start)
        return self.token_logprobs(sequences, starts, description=description)

    # -- the core ------------------------------------------------------------------------------

    @torch.no_grad()
    def token_logprobs(
        self,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        *,
        description: str = "scoring",
    ) -> list[TokenLogprobs]:
        """Log-probabilities of `seq[start:]` for each token sequence, each token predicted from
        everything before it. `start >= 1`; results are in input order."""
        if len(sequences) != len(starts):
            raise ValueError("sequences and starts must have the same length")
        for seq, start in zip(sequences, starts):
            if not 1 <= start <= len(seq):
                raise ValueError(f"start {start} out of range for a sequence of {len(seq)} tokens")
            if self.max_length is not None and len(seq) > self.max_length:
                raise FairstampError(
                    f"a sequence of {len(seq)} tokens exceeds the model's {self.max_length} "
                    f"positions"
                )
        results: list[TokenLogprobs | None] = [None] * len(sequences)
        device = input_device(self.model)  # where the token ids go (first module's device)
        inputs, served = shared_inputs(sequences, starts)
        empty = [i for i, (seq, start) in enumerate(zip(sequences, starts)) if start == len(seq)]
        for i in empty:  # nothing to score
            results[i] = _span(sequences[i], starts[i], np.zeros(0), np.zeros(0, bool),
                               np.zeros(0, int))
        if self.pack:
            rows = pack_rows(inputs, max_tokens=self.max_batch_tokens, max_length=self._window)
        else:
            rows = [PackedRow.single(k, x) for k, x in enumerate(inputs)]
        # Packed rows run apart from single ones, which keep the model's own masks.
        alone = [k for k, row in enumerate(rows) if len(row.members) == 1]
        packed = [k for k, row in enumerate(rows) if len(row.members) > 1]
        batches = [[group[b] for b in batch] for group in (alone, packed)
                   for batch in self._batches([len(rows[k].ids) for k in group])]
        # Several processes: each runs its share of the passes (all of them for one process).
        processes = self.processes
        mine = [batches[b] for b in processes.share(len(batches))]
        todo = sum(len(served[k]) for batch in mine for b in batch for k in rows[b].members)
        if processes.is_main:
            todo += len(empty)
        show = self.progress if processes.is_main else False
        with progress_bar(todo, description, show) as advance:
            if empty and processes.is_main:
                advance(len(empty))
            for batch in mine:
                requests = [[(m, i, sequences[i], starts[i]) for m, k in enumerate(rows[b].members)
                             for i in served[k]] for b in batch]
                self._forward_batch([rows[b] for b in batch], requests, device, results)
                advance(sum(len(r) for r in requests))
        if processes.sharded:
            # Each process's results, put in input order on every process (the spans of
            # sequences with nothing to score come from the main process).
            skip = () if processes.is_main else set(empty)
            return processes.gather_in_order(len(sequences), [
                (i, r) for i, r in enumerate(results) if r is not None and i not in skip])
        return results  # type: ignore[return-value]

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        return length_batches(lengths, self.max_batch_tokens, self.max_batch_size)

    def _forward_batch(
        self,
        packed: list[PackedRow],
        requests: list[list[tuple[int, int, Sequence[int], int]]],
        device: torch.device,
        results: list[TokenLogprobs | None],
    ) -> None:
        """One forward pass of the rows `packed`; row r serves `requests[r]`, each (member,
        result index, sequence, start) whose `sequence[:-1]` is a prefix of that member of the
        row."""
        if len(packed[0].members) == 1:  # a batch of single rows (token_logprobs)
            ids, mask, positions = pad_batch([row.ids for row in packed], self.pad_token_id)
        else:
            dtype = next(self.model.parameters()).dtype
            ids, mask, positions = tree_batch(packed, self.pad_token_id, dtype)
        # Only the positions that predict a scored token: (row, position of the previous token).
        flat = [(r, m, seq, st) for r, group in enumerate(requests) for m, _, seq, st in group]
        rows = torch.cat([torch.full((len(s) - st,), r) for r, _, s, st in flat]).to(device)
        cols = torch.cat([packed[r].index(m, torch.arange(st - 1, len(s) - 1))
                          for r, m, s, st in flat]).to(device)
        targets = torch.cat([torch.as_tensor(list(s[st:]), dtype=torch.long)
                             for *_, s, st in flat]).to(device)
        # Members of a packed row share their prefix's positions, and inputs served by one row
        # share its positions: each (row, position) is unembedded once.
        width = ids.shape[1]
        where, inverse = torch.unique(rows * width + cols, return_inverse=True)
        rows, cols = where // width, where % width
        if self._upper is None:
            logits = self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=False,
            ).logits
            picked = logits[rows.to(logits.device), cols.to(logits.device)].float()
        else:
            batch = Batch(ids.to(device), mask.to(device), positions.to(device),
                          [len(row.ids) for row in packed])
            if self.lower_cache is not None:
                key = tuple((row.ids, row.cuts) for row in packed)
                picked = self.lower_cache.logits(key, batch, rows, cols)
            else:
                picked = self._upper.logits(batch, None, rows, cols)
            picked = picked.float()
        # The logits come from the last module's device, which a device map may set apart.
        inverse, targets = inverse.to(picked.device), targets.to(picked.device)
        target_logits = picked[inverse, targets]
        logprobs = (target_logits - torch.logsumexp(picked, dim=-1)[inverse]).double().cpu().numpy()
        top1 = picked.argmax(dim=-1)[inverse]
        greedy = (top1 == targets).cpu().numpy()
        top1 = top1.cpu().numpy()
        offset = 0
        for _, i, seq, start in (request for group in requests for request in group):
            end = offset + len(seq) - start
            results[i] = _span(seq, start, logprobs[offset:end], greedy[offset:end],
                               top1[offset:end])
            offset = end


class LowerLayerCache:
    """The hidden states entering layer `layer`, per forward pass, recorded while one scorer runs
    and replayed by another that scores the same text on a model whose layers below `layer` are
    the same (a stamp at `layer`): those layers are then skipped. `replay()` switches from
    recording to replaying; a pass not recorded runs in full. Recording stops (with a log line)
    once `max_bytes` are held."""

    def __init__(self, model: nn.Module, arch: Any, layer: int, *, max_bytes: int = 2 << 30):
        self.upper = UpperForward(model, arch, layer)
        self.layer, self.max_bytes = layer, max_bytes
        self.states: dict[tuple, torch.Tensor] = {}
        self.bytes = 0
        self.full = False
        self.replaying = False
        self.replayed = self.recomputed = 0

    def replay(self) -> LowerLayerCache:
        self.replaying = True
        return self

    def logits(self, key: tuple, batch: Any, rows: torch.Tensor, cols: torch.Tensor
               ) -> torch.Tensor:
        """Logits at (rows, cols) of this batch, recording or replaying its lower layers."""
        if self.layer == 0:
            return self.upper.logits(batch, None, rows, cols)
        if self.replaying:
            hidden = self.states.get(key)
            if hidden is not None:
                self.replayed += 1
                return self.upper.logits(batch, hidden, rows, cols)
            self.recomputed += 1
            return self.upper.logits(batch, None, rows, cols)
        logits, hidden = self.upper.logits_and_states(batch, rows, cols)
        size = hidden.numel() * hidden.element_size()
        if not self.full and self.bytes + size <= self.max_bytes:
            self.states[key] = hidden
            self.bytes += size
        elif not self.full:
            self.full = True
            log.info("lower-layer cache full (%d MiB): later passes will run in full",
                     self.bytes >> 20)
        return logits


def _span(seq: Sequence[int], start: int, logprobs, greedy, top1) -> TokenLogprobs:
    return TokenLogprobs(token_ids=np.asarray(list(seq[start:]), dtype=np.int64),
                         logprobs=logprobs, greedy=greedy, top1=top1)


def shared_inputs(sequences: Sequence[Sequence[int]], starts: Sequence[int]
                  ) -> tuple[list[tuple[int, ...]], list[list[int]]]:
    """The forward passes that score every sequence: (inputs, served), where `served[k]` lists the
    indices of the sequences whose scored tokens `inputs[k]` gives (their `seq[:-1]` equals it or
    is a prefix of it). Sequences with nothing to score are in no list.

    Sorted, a prefix comes right before the sequences that extend it, and anything sorted between
    a prefix and one of its extensions extends it too, so comparing neighbours finds each input's
    longest extension.
    """
    keys = [tuple(seq[:-1]) for seq in sequences]
    distinct = sorted({k for k, seq, st in zip(keys, sequences, starts) if st < len(seq)})
    owner: dict[tuple[int, ...], tuple[int, ...]] = {}
    for j in range(len(distinct) - 1, -1, -1):
        key = distinct[j]
        after = distinct[j + 1] if j + 1 < len(distinct) else None
        owner[key] = owner[after] if after is not None and after[: len(key)] == key else key
    index: dict[tuple[int, ...], int] = {}
    inputs: list[tuple[int, ...]] = []
    served: list[list[int]] = []
    for i, (key, seq, start) in enumerate(zip(keys, sequences, starts)):
        if start == len(seq):
            continue
        root = owner[key]
        if root not in index:
            index[root] = len(inputs)
            inputs.append(root)
            served.append([])
        served[index[root]].append(i)
    return inputs, served


@dataclass(frozen=True)
class PackedRow:
    """One row of a forward pass: the members' common prefix (`ids[:shared]`), then each
    member's own tokens, member m's from `cuts[m]` to `cuts[m + 1]`. `members` index the inputs
    packed here; a row of one member is that input as it is."""

    ids: tuple[int, ...]
    shared: int
    cuts: tuple[int, ...]  # len(members) + 1 boundaries
    members: tuple[int, ...]

    @classmethod
    def single(cls, index: int, sequence: Sequence[int]) -> PackedRow:
        ids = tuple(sequence)
        return cls(ids, len(ids), (len(ids), len(ids)), (index,))

    @classmethod
    def of(cls, indices: Sequence[int], sequences: Sequence[Sequence[int]]) -> PackedRow:
        if len(indices) == 1:
            return cls.single(indices[0], sequences[0])
        shared = min(_common_prefix(sequences[0], s) for s in sequences[1:])
        ids, cuts = list(sequences[0][:shared]), [shared]
        for s in sequences:
            ids.extend(s[shared:])
            cuts.append(len(ids))
        return cls(tuple(ids), shared, tuple(cuts), tuple(indices))

    def index(self, member: int, positions: torch.Tensor) -> torch.Tensor:
        """Where positions of member `member`'s own sequence lie in this row."""
        own = self.cuts[member] + positions - self.shared
        return torch.where(positions < self.shared, positions, own)

    def layout(self) -> tuple[list[int], list[int]]:
        """Per row token: its position in its own sequence and its branch (0: the common
        prefix, m + 1: member m's own tokens)."""
        positions, branch = list(range(self.shared)), [0] * self.shared
        for m in range(len(self.members)):
            n = self.cuts[m + 1] - self.cuts[m]
            positions.extend(range(self.shared, self.shared + n))
            branch.extend([m + 1] * n)
        return positions, branch


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


#: Packing weighs a row of n tokens as n + n²/ATTENTION_SPAN positions: attention grows with the
#: square of a row's length (~n/3,500 of the per-token work at smollm2's and gemma-3-270m's
#: widths, more with a masked attention kernel), so long inputs that share a short beginning
#: are not worth one row.
ATTENTION_SPAN = 1024


def _row_cost(n: int) -> float:
    return n + n * n / ATTENTION_SPAN


def pack_rows(inputs: Sequence[Sequence[int]], *, max_tokens: int, min_shared: int = 4,
              max_members: int = 16, max_length: int | None = None) -> list[PackedRow]:
    """Rows that cover every input, inputs that begin alike packed into one (see `PackedRow`).

    Sorted, inputs with a common beginning are neighbours; each joins the row of the one before
    when they share at least `min_shared` tokens and the row then costs at least `min_shared`
    positions less than the two apart (`ATTENTION_SPAN`), within `max_members` per row and
    `max_tokens` per row; with a model's local-attention window `max_length`, a packed row is no
    longer than that window (some models apply the window by place in the row, and a packed row's
    mask of its own does not apply it at all, so neither can matter). No input may be a prefix of
    another (`shared_inputs` gives such inputs)."""
    order = sorted(range(len(inputs)), key=lambda k: tuple(inputs[k]))
    limit = max_tokens if max_length is None else min(max_tokens, max_length)
    groups: list[list[int]] = []
    shared = length = 0  # of the last group's row
    for k in order:
        seq = inputs[k]
        if groups:
            group = groups[-1]
            common = min(shared, _common_prefix(inputs[group[0]], seq))
            packed = common + sum(len(inputs[j]) - common for j in group) + len(seq) - common
            if (common >= min_shared and len(group) < max_members and packed <= limit
                    and _row_cost(packed) + min_shared
                    <= _row_cost(length) + _row_cost(len(seq))):
                group.append(k)
                shared, length = common, packed
                continue
        groups.append([k])
        shared = length = len(seq)
    return [PackedRow.of(g, [inputs[k] for k in g]) for g in groups]


def tree_batch(rows: Sequence[PackedRow], pad_token_id: int, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of packed rows, right-padded: the mask is 4D
    [N, 1, longest, longest] and additive (0 where a token may attend, the dtype's minimum
    elsewhere): each token sees the common prefix and its own member's earlier tokens; positions
    are each token's position in its own sequence."""
    width = max(len(row.ids) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    positions = torch.arange(width).unsqueeze(0).repeat(len(rows), 1)
    branch = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding
    for r, row in enumerate(rows):
        pos, br = row.layout()
        ids[r, : len(row.ids)] = torch.as_tensor(row.ids, dtype=torch.long)
        positions[r, : len(pos)] = torch.as_tensor(pos, dtype=torch.long)
        branch[r, : len(br)] = torch.as_tensor(br, dtype=torch.long)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (branch.unsqueeze(1) == 0) | (branch.unsqueeze(1) == branch.unsqueeze(2))
    allowed = causal & same  # [N, query, key]; padding queries see the prefix and padding
    mask = torch.zeros(len(rows), 1, width, width, dtype=dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    return ids, mask, positions


def next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the ones before it, from one forward pass.

    `logits` [batch, seq, vocab] and `input_ids` [batch, seq] give [batch, seq - 1] (float32):
    entry t is log p(input_ids[:, t + 1] | input_ids[:, : t + 1]), computed as `Scorer` does.
    Padding is the caller's to mask.
    """
    picked = logits[:, :-1].float()
    targets = input_ids[:, 1:].to(picked.device).unsqueeze(-1)
    return picked.gather(-1, targets).squeeze(-1) - torch.logsumexp(picked, dim=-1)


def _prefix_token(tokenizer: Any) -> tuple[int | None, str]:
    for kind in ("bos", "eos"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            return int(token_id), kind
    log.warning("tokenizer defines neither BOS nor EOS: the first token of each sentence is not "
                "scored")
    return None, "none"


def attention_window(model: nn.Module) -> int | None:
    """The span of a model's local (sliding-window) attention layers, if it has any: packed
    rows use a mask of their own, which does not apply that window, so longer inputs are not
    packed."""
    config = getattr(model, "config", None)
    spans = [getattr(config, name, None) for name in ("sliding_window", "window_size")]
    spans = [v for v in spans if isinstance(v, int) and v > 0]
    return min(spans) if spans else None


def max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _move_trailing_space(prefix: str, continuation: str) -> tuple[str, str]:
    stripped = prefix.rstrip(" ")
    return stripped, prefix[len(stripped) :] + continuation

