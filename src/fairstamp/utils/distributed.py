"""Data-parallel evaluation over the processes that `accelerate launch` (or `torchrun`) starts.

One process, started without a launcher, is the normal case: `current_processes()` then returns
`ONE` without importing accelerate or starting a process group, and nothing changes. Launched as N
processes, accelerate's `PartialState` joins them (gloo on CPUs, NCCL on GPUs); a piece of model
work is dealt out by `Processes.share` (every process computes the same list of work units and
runs every N-th one) and its results are put back in their original order on every process by
`Processes.gather_in_order` (`accelerate.utils.gather_object`), so every process goes on with the
same results and computes the same metrics. Only the main process writes files.

Every process must make the same calls, in the same order: each gather waits for all of them.
An entry point ends a process of several with `exit_process` (the `fairstamp` command does), which
leaves the group and skips the interpreter's shutdown, where gloo's threads can abort a finished
process.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from fairstamp.errors import FairstampError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where a launcher puts the number of processes: torchrun / accelerate's multi-process launcher,
#: then the MPI launchers `accelerate launch --cpu` uses (the variables accelerate itself reads).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


@dataclass(frozen=True)
class Processes:
    """The processes one evaluation runs on: this one is number `index` of `count`, on `device`
    (accelerate's device for it; None for a single process, whose device is the model's)."""

    index: int = 0
    count: int = 1
    device: str | None = None

    @property
    def is_main(self) -> bool:
        """The process that writes run folders and prints results."""
        return self.index == 0

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def share(self, n: int) -> range:
        """The indices of this process's work units among `n` (in an order every process
        agrees on): every `count`-th from `index`, so that work sorted by size is dealt evenly.
        One process: all of them, in order."""
        return range(self.index, n, self.count)

    def gather(self, local: list[Any]) -> list[Any]:
        """The concatenation, in process order, of every process's `local` list, on every
        process (`local` itself for one process)."""
        if not self.sharded:
            return local
        from accelerate.utils import gather_object

        return list(gather_object(list(local)))

    def gather_in_order(self, n: int, done: Sequence[tuple[int, T]]) -> list[T]:
        """The results of all `n` work units in index order, on every process, from each
        process's `(index, result)` pairs (for one process: its own, which must cover all)."""
        return in_order(n, self.gather(list(done)))

    def wait(self) -> None:
        """Wait until every process gets here (e.g. until the main process has written a file
        the others read)."""
        if self.sharded:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def broadcast_parameters(self, module: Any) -> float:
        """Give every process the main process's values of `module`'s parameters and buffers
        (in place); returns the largest absolute change on this process (0.0 for one
        process)."""
        if not self.sharded:
            return 0.0
        import torch
        from accelerate.utils import broadcast

        change = 0.0
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                received = broadcast(tensor.detach().clone(), from_process=0)
                if tensor.numel():
                    change = max(change, (received.float() - tensor.float()).abs().max().item())
                tensor.copy_(received)
        return change

    def check_model(self, model: Any) -> None:
        """Refuse a model that is not on this process's own device when several processes
        share the work (each process needs a whole copy of the model on its device)."""
        if not self.sharded:
            return
        import torch

        parameters = getattr(model, "parameters", None)
        devices = {p.device for p in parameters()} if callable(parameters) else set()
        where = f"process {self.index} of {self.count}"
        if len(devices) > 1:
            raise FairstampError(
                f"{where}: the model is spread over {', '.join(sorted(map(str, devices)))}; a "
                f"data-parallel evaluation needs a whole copy of the model on each process's "
                f"device (run one process for a model split over devices)")
        if not devices or self.device is None:
            return
        (device,) = devices
        expected = torch.device(self.device)
        if not same_device(device, expected):
            hint = ("launch CPU processes (hide the GPUs: CUDA_VISIBLE_DEVICES=) or pass "
                    "--device cuda, which puts each process on its own GPU"
                    if expected.type != "cpu" else "pass --device cpu (or leave --device out)")
            raise FairstampError(
                f"{where}: accelerate gives this process {expected} but the model is on "
                f"{device}; {hint}")


#: One process, no launcher: what `current_processes` returns unless launched as several.
ONE = Processes()


def same_device(a: Any, b: Any) -> bool:
    """Whether two torch devices are the same: CPUs always are; an accelerator without an
    index is the current one of its type."""
    import torch

    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cpu" or a.index == b.index:
        return True
    module = getattr(torch, a.type, None)
    current = module.current_device() if module is not None and hasattr(
        module, "current_device") else 0
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def in_order(n: int, pairs: Sequence[tuple[int, T]]) -> list[T]:
    """`(index, result)` pairs (from all processes, any order) as the list of the `n` results in
    index order; each index must come exactly once."""
    out: list[Any] = [_MISSING] * n
    for index, value in pairs:
        if not 0 <= index < n:
            raise FairstampError(f"gathered a result for work unit {index}, outside 0..{n - 1}")
        if out[index] is not _MISSING:
            raise FairstampError(f"work unit {index} was gathered twice (processes disagree on "
                                 f"how the work was dealt)")
        out[index] = value
    missing = [i for i, value in enumerate(out) if value is _MISSING]
    if missing:
        raise FairstampError(f"{len(missing)} of {n} work units were gathered from no process "
                             f"(first: {missing[0]})")
    return out


_MISSING = object()


def launched_size() -> int:
    """How many processes a launcher started (1 without one), from its environment alone."""
    return _int_from_env(WORLD_SIZE_VARIABLES, 1)


def launched_rank() -> int:
    """This process's number among them (0 without a launcher), from the environment alone."""
    return _int_from_env(RANK_VARIABLES, 0)


def _int_from_env(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise FairstampError(f"${name}={value!r} is not a number") from None
    return default


def current_processes() -> Processes:
    """The processes of this run: `ONE` unless a launcher started several, and then this
    process's place among them from accelerate's `PartialState` (which joins them: gloo on
    CPUs, NCCL on GPUs). Call it before the model is loaded, so that `--device cuda` means
    this process's own GPU."""
    size = launched_size()
    if size <= 1:
        if os.environ.get("ACCELERATE_MIXED_PRECISION") and os.environ.get("MASTER_ADDR"):
            _warn_one_launched()
        return ONE
    from accelerate import PartialState

    state = PartialState(cpu=_cpu_processes())
    _leave_at_exit()
    if state.num_processes != size:
        raise FairstampError(
            f"{size} processes were launched but accelerate joins {state.num_processes} "
            f"({state.distributed_type}); on CPUs set ACCELERATE_USE_CPU=true, on GPUs give each "
            f"process its own (e.g. accelerate launch --multi_gpu --num_processes {size})")
    return Processes(index=state.process_index, count=state.num_processes,
                     device=str(state.device))


def leave() -> None:
    """Leave the process group this process joined (nothing if it joined none). Registered to
    run at exit by `current_processes` when it joins several processes: a process that exits
    still in the group can abort as the interpreter shuts down (SIGABRT, "terminate called
    without an active exception"), failing the launch after its work is done."""
    if _joined():
        import torch.distributed as dist

        dist.destroy_process_group()


def exit_process(status: int) -> NoReturn:
    """End this process with exit status `status`: `sys.exit` for a process on its own; a
    process of several leaves its group and ends at once (`os._exit`, after flushing the log
    and the standard streams), without the interpreter's shutdown, which can abort even after
    the group is left (SIGABRT, "terminate called without an active exception") and turn a
    finished launch into a failed one (docs/biascope.md, "Several processes"). For entry points
    only: nothing runs after it."""
    if not _joined():
        sys.exit(status)
    leave()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe
            stream.flush()
    os._exit(status)


def _joined() -> bool:
    """Whether this process is in a process group (never imports torch to find out)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


@functools.cache
def _leave_at_exit() -> None:
    atexit.register(leave)


@functools.cache
def _warn_one_launched() -> None:
    log.warning("accelerate launch asked for several processes but started one (on CPUs it needs "
                "mpirun for that): everything runs in this process. For CPU processes use "
                "`accelerate launch --multi_gpu --num_processes N` with no visible GPU, or "
                "`torchrun --nproc-per-node N` (docs/biascope.md, \"Several processes\")")


def _cpu_processes() -> bool:
    """Whether the launched processes join as CPU processes: asked for (ACCELERATE_USE_CPU, set
    by `accelerate launch --cpu`), or there is no accelerator to give them."""
    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes"):
        return True
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return not accelerator.is_available()
    return not torch.cuda.is_available()
