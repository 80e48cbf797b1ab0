"""Data-parallel evaluation (`fairstamp.utils.distributed`): the split and the in-order gather, the
Scorer and BOLD's generations sharded over simulated processes (threads), and a real 2-process
CPU evaluation under `accelerate launch` (gloo) compared with one process."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
import threading
import types
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from conftest import SHARED_DATA, stereoset_sentences
from fairstamp.cli.main import main
from fairstamp.errors import FairstampError
from fairstamp.utils.distributed import ONE, Processes, current_processes, in_order

# -- the split and the gather -------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 12])
def test_shares_cover_every_unit_once_and_gather_restores_the_order(n, count):
    shares = [list(Processes(index=k, count=count).share(n)) for k in range(count)]
    assert sorted(i for share in shares for i in share) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # dealt evenly
    # every process's (index, result) pairs, concatenated in process order as gather_object does
    pairs = [(i, f"r{i}") for share in shares for i in share]
    assert in_order(n, pairs) == [f"r{i}" for i in range(n)]
    assert list(ONE.share(n)) == list(range(n))


@pytest.mark.parametrize(("pairs", "message"), [
    ([(0, "a"), (0, "a"), (1, "b")], "gathered twice"),
    ([(0, "a")], "1 of 2 work units were gathered from no process"),
    ([(0, "a"), (2, "c")], "outside 0..1"),
])
def test_a_wrong_gather_is_refused(pairs, message):
    with pytest.raises(FairstampError, match=message):
        in_order(2, pairs)


def test_one_process_imports_no_accelerate_and_starts_no_process_group(monkeypatch):
    import torch

    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "accelerate", None)  # importing it would fail
    processes = current_processes()
    assert processes is ONE and processes.is_main and not processes.sharded
    assert ONE.gather([(0, "x")]) == [(0, "x")]
    ONE.wait()
    ONE.check_model(torch.nn.Linear(2, 2, device="meta"))  # one process: any device
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


def test_accelerate_cpu_launch_that_started_one_process_is_named(monkeypatch, caplog):
    from fairstamp.utils import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate launch sets
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    distributed._warn_one_launched.cache_clear()
    with caplog.at_level("WARNING", logger="fairstamp"):
        assert current_processes() is ONE
        assert current_processes() is ONE
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "started one (on CPUs it needs mpirun" in caplog.text


def test_launched_processes_that_accelerate_does_not_join_are_refused(monkeypatch):
    state = types.SimpleNamespace(num_processes=1, process_index=0, device="cpu",
                                  distributed_type="DistributedType.NO")
    fake = types.ModuleType("accelerate")
    fake.PartialState = lambda cpu=False: state
    monkeypatch.setitem(sys.modules, "accelerate", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FairstampError, match="2 processes were launched but accelerate joins 1"):
        current_processes()
    state.num_processes, state.process_index = 2, 1
    assert current_processes() == Processes(index=1, count=2, device="cpu")


def test_every_joined_process_leaves_its_process_group_at_exit(monkeypatch):
    import atexit

    import torch.distributed as dist

    from fairstamp.utils import distributed

    registered: list = []
    monkeypatch.setattr(atexit, "register", registered.append)
    state = types.SimpleNamespace(num_processes=2, process_index=1, device="cpu")
    fake = types.ModuleType("accelerate")
    fake.PartialState = lambda cpu=False: state
    monkeypatch.setitem(sys.modules, "accelerate", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed._leave_at_exit.cache_clear()
    try:
        current_processes()
        current_processes()
        assert registered == [distributed.leave]  # once, however often the run asks
    finally:
        distributed._leave_at_exit.cache_clear()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        distributed.leave()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    distributed.leave()  # no group joined: nothing to leave


@pytest.mark.parametrize("joined", [False, True])
def test_an_entry_point_ends_with_its_status(joined):
    """A process on its own exits as usual (its exit handlers run); a process that joined a
    group leaves it and ends at once with the same status, its output flushed."""
    code = ("import atexit, torch.distributed as dist\n"
            "from fairstamp.utils.distributed import exit_process\n"
            f"if {joined}:\n"
            "    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)\n"
            "atexit.register(print, ' exit handlers ran', end='')\n"
            "print('done', end='')\n"
            "exit_process(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 3, done.stderr
    assert done.stdout == ("done" if joined else "done exit handlers ran")


def test_a_model_off_the_process_device_is_refused():
    import torch

    model = torch.nn.Linear(2, 2)
    Processes(index=1, count=2, device="cpu:0").check_model(model)  # accelerate's CPU name
    with pytest.raises(FairstampError, match=r"process 1 of 2: accelerate gives this process "
                                             r"cuda:1 but the model is on cpu; .*--device cuda"):
        Processes(index=1, count=2, device="cuda:1").check_model(model)
    spread = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    with pytest.raises(FairstampError, match="spread over cpu, meta"):
        Processes(index=0, count=2, device="cpu").check_model(spread)


def test_bench_under_several_processes_needs_in_process(monkeypatch, tmp_path):
    from fairstamp.bench import runner

    monkeypatch.setattr(runner, "current_processes",
                        lambda: Processes(index=0, count=2, device="cpu"))
    with pytest.raises(FairstampError, match="bench under 2 processes needs --in-process"):
        runner.run_bench(runner.BenchConfig(model="tiny", methods=["fast"]), tmp_path / "b")
    assert not (tmp_path / "b").exists()


# -- simulated processes: threads that gather through a barrier ---------------------------------


class Hub:
    """all_gather_object between threads."""

    def __init__(self, count: int) -> None:
        self.barrier = threading.Barrier(count, timeout=120)
        self.slots: list[list] = [[] for _ in range(count)]

    def exchange(self, index: int, local: list) -> list:
        self.slots[index] = list(local)
        self.barrier.wait()
        out = [x for slot in self.slots for x in slot]
        self.barrier.wait()  # all have read before the next exchange writes
        return out


@dataclass(frozen=True)
class ThreadProcesses(Processes):
    hub: Any = field(default=None, compare=False)

    def gather(self, local: list) -> list:
        return self.hub.exchange(self.index, local)


def simulate(count: int, loaded: Any, run) -> list:
    """`run(loaded_copy, processes)` as each of `count` processes (one model copy each: the
    Scorer hooks its model); returns each process's result."""
    hub = Hub(count)
    results: list = [None] * count
    errors: list = []

    def one(k: int) -> None:
        try:
            own = replace(loaded, model=copy.deepcopy(loaded.model))
            results[k] = run(own, ThreadProcesses(index=k, count=count, hub=hub))
        except BaseException as exc:
            errors.append(exc)
            hub.barrier.abort()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    from fairstamp.models import load

    return load(str(tiny_model_dir))


def test_sharded_scoring_equals_one_process(tiny_loaded):
    from fairstamp.scoring import Scorer

    sentences = stereoset_sentences(90)
    prefixes = ["The doctor said that", "My neighbour is", "The doctor said that"] * 5
    continuations = [" she was late.", " from Ghana.", " he was late."] * 5

    def run(loaded, processes):
        scorer = Scorer.from_loaded(loaded, max_batch_tokens=64, processes=processes)
        scores = scorer.score(sentences)
        spans = scorer.continuation_logprobs(prefixes, continuations)
        return scores, spans

    one_scores, one_spans = run(tiny_loaded, ONE)
    for scores, spans in simulate(3, tiny_loaded, run):
        np.testing.assert_array_equal(scores.n_tokens, one_scores.n_tokens)
        np.testing.assert_allclose(scores.total, one_scores.total, rtol=0, atol=1e-6)
        assert len(spans) == len(one_spans)
        for span, expected in zip(spans, one_spans):
            np.testing.assert_array_equal(span.token_ids, expected.token_ids)
            np.testing.assert_array_equal(span.top1, expected.top1)
            np.testing.assert_allclose(span.logprobs, expected.logprobs, rtol=0, atol=1e-6)


def test_sharded_generation_gives_the_texts_of_one_process(tiny_loaded, monkeypatch):
    import contextlib

    import torch

    from fairstamp.stamp.generation import generate_batch

    prompts = [s.rsplit(" ", 2)[0] for s in stereoset_sentences(70)]  # 3 batches of <= 32
    decoding = dict(max_new_tokens=4, sample=True, temperature=1.0)
    expected = generate_batch(tiny_loaded, prompts, seed=5, progress=False, **decoding)
    # Threads share torch's global RNG, which processes do not: one seeded batch at a time.
    lock = threading.Lock()
    fork_rng = torch.random.fork_rng

    @contextlib.contextmanager
    def one_at_a_time(*args, **kwargs):
        with lock, fork_rng(*args, **kwargs):
            yield

    monkeypatch.setattr(torch.random, "fork_rng", one_at_a_time)
    texts = simulate(2, tiny_loaded, lambda loaded, processes: generate_batch(
        loaded, prompts, seed=5, progress=False, processes=processes, **decoding))
    assert texts == [expected, expected]


# -- a real 2-process evaluation ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _walk(a: Any, b: Any, path: str, floats: list, mismatches: list) -> None:
    """Float leaves' (abs difference, path) into `floats`; anything else that differs (keys,
    lengths, strings, counts, booleans) into `mismatches`."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            mismatches.append((path, sorted(set(a) ^ set(b))))
        for key in set(a) & set(b):
            _walk(a[key], b[key], f"{path}/{key}", floats, mismatches)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            mismatches.append((path, len(a), len(b)))
        for k, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{k}]", floats, mismatches)
    elif isinstance(a, float) and isinstance(b, float):
        if not (math.isnan(a) and math.isnan(b)):
            floats.append((abs(a - b), path))
    elif a != b or type(a) is not type(b):
        mismatches.append((path, a, b))


#: metrics and per-item predictions of 1 and 2 processes may differ by float32 rounding of the
#: log-probabilities only; the forward passes are the same, so on one machine they are equal.
ATOL = 1e-6


def test_two_process_evaluation_equals_one_process(tmp_path, tiny_model_dir):
    args = ["eval", "--model", str(tiny_model_dir), "--suite", "all", "--limit", "30",
            "--bootstrap", "20", "--batch-tokens", "256", "--data-dir", str(SHARED_DATA),
            "--general-limits", "wikitext2=600,known_1000=20,boolq=5,copa=5,winogrande=5,"
            "piqa=5,arc_easy=5", "--transfer-limits", "bbq=1,winobias=5,bold=1",
            "--bold-max-new-tokens", "5"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # CPU processes, gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    done = subprocess.run([*launch, "-m", "fairstamp", *args, "--out", str(tmp_path / "p2")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("General ability") == 1  # the summary, from one process only
    assert main([*args, "--out", str(tmp_path / "p1")]) == 0  # one process: this one
    runs = {count: {name: json.loads((tmp_path / f"p{count}" / name).read_text())
                    for name in ("metrics.json", "predictions.json")} for count in (1, 2)}
    one, two = runs[1], runs[2]
    assert one["metrics.json"]["scoring"]["processes"] == 1
    assert two["metrics.json"]["scoring"]["processes"] == 2
    assert (two["metrics.json"]["scoring"]["sentences_scored"]
            == one["metrics.json"]["scoring"]["sentences_scored"] > 1000)
    predictions = one["predictions.json"]
    assert len(predictions["bold"]) == 43 and len(predictions["known_1000_top1"]) == 20
    floats: list = []
    mismatches: list = []
    _walk(one["metrics.json"]["metrics"], two["metrics.json"]["metrics"], "metrics", floats,
          mismatches)
    _walk(predictions, two["predictions.json"], "predictions", floats, mismatches)
    assert mismatches == []  # counts, strings (BOLD's sampled continuations), booleans
    assert len(floats) > 500
    assert max(floats)[0] <= ATOL, max(floats)
