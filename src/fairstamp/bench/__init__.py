"""`fairstamp bench`: every debiasing method on the same model, items, layer and seed, through
the same BiaScope evaluation, in one resumable run folder."""

from fairstamp.bench.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
