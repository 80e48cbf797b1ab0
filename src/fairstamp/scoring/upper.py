"""Run only the layers above a stamp, from cached hidden states, with logits only where needed.

Training a stamp at layer l never changes what layers 0..l-1 compute (they are frozen and below
the stamp), so their output, the hidden states entering layer l, is computed once per training
sentence (`capture`) and fed back in every step (`logits`): the lower layers are swapped for
pass-through modules for the duration of the call, and a pre-hook on layer l substitutes the cached
states. The unembedding is applied only at the positions a loss reads (a pre-hook on the unembedding
module selects them), which matters for models with large vocabularies; within `restricted(vocab)`
the unembedding computes the logits of a subset of the vocabulary only (stamp training's
`train_vocab="seen"`). Works through the model's own forward, so masks, rotary embeddings, final
norms and logit soft-capping stay the model's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from fairstamp.errors import FairstampError
from fairstamp.models.archspec import ArchSpec
from fairstamp.scoring.batching import pad_batch
from fairstamp.utils.devices import resident
from fairstamp.utils.hooks import Capture, hidden_arg, hooks, replace_hidden_arg
from fairstamp.utils.modules import get_module, set_module


@dataclass
class Batch:
    """Right-padded token ids with explicit positions (the Scorer's convention)."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    lengths: list[int]

    @classmethod
    def of(cls, sequences: Sequence[Sequence[int]], pad_id: int,
           device: torch.device | None = None) -> Batch:
        ids, mask, positions = pad_batch(sequences, pad_id)
        return cls(ids.to(device), mask.to(device), positions.to(device),
                   [len(s) for s in sequences])


@dataclass
class Vocabulary:
    """A subset of a model's vocabulary: its token ids (sorted) and, for every token id of the
    model, its index in the subset (-1 where it is not in it)."""

    ids: torch.Tensor
    index: torch.Tensor

    @classmethod
    def of(cls, token_ids: Iterable[int], size: int,
           device: torch.device | str | None = None) -> Vocabulary:
        ids = torch.as_tensor(sorted(set(token_ids)), dtype=torch.long)
        if len(ids) and not 0 <= int(ids[0]) <= int(ids[-1]) < size:
            raise ValueError(f"token ids must be in [0, {size})")
        index = torch.full((size,), -1, dtype=torch.long)
        index[ids] = torch.arange(len(ids))
        return cls(ids.to(device), index.to(device))

    def __len__(self) -> int:
        return len(self.ids)


class _SubUnembed(nn.Module):
    """Stands in for a linear unembedding: the logits of the tokens of a `Vocabulary` only, in its
    order (the same rows of the weight, copied once, frozen)."""

    def __init__(self, unembed: nn.Module, vocab: Vocabulary) -> None:
        super().__init__()
        if not isinstance(unembed, nn.Linear):
            raise FairstampError(f"a restricted training vocabulary needs a linear unembedding, "
                                 f"not {type(unembed).__name__}; use train_vocab='full'")
        # An offloaded unembedding's weight is read back for the copy; the copy lives where
        # the unembedding computes.
        with torch.no_grad(), resident(unembed):
            rows = vocab.ids.to(unembed.weight.device)
            self.register_buffer("weight", unembed.weight.index_select(0, rows).clone(),
                                 persistent=False)
            self.register_buffer("bias", None if unembed.bias is None
                                 else unembed.bias.index_select(0, rows).clone(),
                                 persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden.to(self.weight.device), self.weight, self.bias)


class _PassThrough(nn.Module):
    """Stands in for a frozen lower layer: returns its hidden states input unchanged, in the
    output structure the real layer uses (a tensor, or a tuple led by the hidden states)."""

    def __init__(self, tuple_output: bool) -> None:
        super().__init__()
        self.tuple_output = tuple_output

    def forward(self, *args, **kwargs):
        h = hidden_arg(args, kwargs)
        return (h,) if self.tuple_output else h


class UpperForward:
    """Forward passes that start at layer `layer`'s input. `layer=0` means the full model."""

    def __init__(self, model: nn.Module, arch: ArchSpec, layer: int) -> None:
        self.model, self.arch, self.layer = model, arch, layer
        self._tuple_output: bool | None = None
        self.vocab: Vocabulary | None = None  # while `restricted`: logits cover these tokens only
        self._sub: tuple[Vocabulary, _SubUnembed] | None = None

    def vocab_size(self) -> int:
        """Tokens in the model's vocabulary (rows of its unembedding)."""
        return get_module(self.model, self.arch.unembed).weight.shape[0]

    @contextmanager
    def restricted(self, vocab: Vocabulary | None) -> Iterator[None]:
        """Logits (from `logits` and `logits_and_states`) cover the tokens of `vocab` only, in its
        order; the model's own unembedding is back in place on exit. `None`: no change."""
        if vocab is None:
            yield
            return
        if self.vocab is not None:
            raise RuntimeError("the vocabulary is already restricted")
        if self._sub is None or self._sub[0] is not vocab:
            self._sub = (vocab, _SubUnembed(get_module(self.model, self.arch.unembed), vocab))
        original = get_module(self.model, self.arch.unembed)
        set_module(self.model, self.arch.unembed, self._sub[1])
        self.vocab = vocab
        try:
            yield
        finally:
            set_module(self.model, self.arch.unembed, original)
            self.vocab = None

    def _call(self, batch: Batch):
        return self.model(input_ids=batch.ids, attention_mask=batch.mask,
                          position_ids=batch.positions, use_cache=False)

    @torch.no_grad()
    def capture(self, batch: Batch) -> torch.Tensor:
        """The hidden states entering layer `layer` (one forward pass, stopped there)."""
        path = self.arch.layer_path(self.layer)
        with hooks(self.model, forward=[self._shape_hook()]), \
                Capture(self.model, inputs=[path], stop=True) as seen:
            self._call(batch)
        return seen.inputs[path]

    def logits_and_states(self, batch: Batch, rows: torch.Tensor, cols: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, vocab] at (rows[i], cols[i]) by the full forward pass, and the hidden
        states entering layer `layer` on the way (what `capture` returns)."""
        path = self.arch.layer_path(self.layer)
        with hooks(self.model, forward=[self._shape_hook()], pre=[self._select(rows, cols)]), \
                Capture(self.model, inputs=[path], clone=True) as seen:
            logits = self._call(batch).logits
        return logits, seen.inputs[path]

    def logits(self, batch: Batch, hidden: torch.Tensor | None, rows: torch.Tensor,
               cols: torch.Tensor) -> torch.Tensor:
        """Logits [N, vocab] at (rows[i], cols[i]); from the cached `hidden` (the output of
        `capture` for this batch) when given, else by the full forward pass."""

        unembed = [self._select(rows, cols)]
        if hidden is None or self.layer == 0:
            with hooks(self.model, pre=unembed):
                return self._call(batch).logits

        def inject(module, args, kwargs):
            return replace_hidden_arg(args, kwargs, hidden)

        with self._lower_skipped(), hooks(
            self.model, pre=[(self.arch.layer_path(self.layer), inject), *unembed]
        ):
            return self._call(batch).logits

    def _shape_hook(self):
        """A forward hook on layer 0 that notes whether layers return tuples."""

        def shape(module, args, output):
            self._tuple_output = isinstance(output, tuple)

        return self.arch.layer_path(0), shape

    def _select(self, rows: torch.Tensor, cols: torch.Tensor):
        """A pre-hook on the unembedding that keeps only the positions (rows[i], cols[i])."""

        def select(module, args, kwargs):
            hidden = hidden_arg(args, kwargs)  # on the device of the module before
            at = (rows.to(hidden.device), cols.to(hidden.device))
            return replace_hidden_arg(args, kwargs, hidden[at])

        return self.arch.unembed, select

    @contextmanager
    def _lower_skipped(self) -> Iterator[None]:
        if self._tuple_output is None:
            raise RuntimeError("capture() must run before logits() from cached states")
        layers = get_module(self.model, self.arch.layers)
        originals = [layers[i] for i in range(self.layer)]
        try:
            for i in range(self.layer):
                layers[i] = _PassThrough(self._tuple_output)
            yield
        finally:
            for i, module in enumerate(originals):
                layers[i] = module

