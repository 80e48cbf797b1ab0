"""Data: validated readers for user files and the sets fairstamp ships or loads."""

from fairstamp.data.examples import EXAMPLE_PAIRS, ExamplePair
from fairstamp.data.readers import iter_jsonl, read_sentences

__all__ = ["EXAMPLE_PAIRS", "ExamplePair", "iter_jsonl", "read_sentences"]
