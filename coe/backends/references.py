"""What an expert's spec points at must exist: weights packages, GGUF files, adapters, recorded responses.

Checked when a registry is imported (`coe registry import`, unless `--no-check` for files that will
appear later), so a typo is caught then rather than as failed generations later.
"""

from __future__ import annotations

import importlib.util

from coe.backends.weights import KNOWN_WEIGHTS
from coe.schema import EmbeddedBackendSpec, ExpertSpec, ReplayBackendSpec

RELATIVE = "relative paths resolve against the registry file's folder, then the data dir (COE_DATA_DIR)"


def missing_references(expert: ExpertSpec) -> list[str]:
    """One line per reference of `expert` that does not exist (empty when all do)."""
    problems = []
    if expert.adapter is not None and not expert.adapter.exists():
        problems.append(f"expert {expert.id!r}: adapter {expert.adapter} does not exist ({RELATIVE})")
    backend = expert.backend
    if isinstance(backend, EmbeddedBackendSpec) and not expert.is_adapter:
        if backend.gguf is not None and not backend.gguf.is_file():
            problems.append(f"expert {expert.id!r}: GGUF file {backend.gguf} does not exist ({RELATIVE})")
        if backend.weights is not None:
            package = KNOWN_WEIGHTS.get(backend.weights)
            if package is None:
                known = ", ".join(sorted(KNOWN_WEIGHTS))
                problems.append(f"expert {expert.id!r}: unknown weights {backend.weights!r}; known: {known}")
            elif importlib.util.find_spec(package.module) is None:
                problems.append(f"expert {expert.id!r}: weights {backend.weights!r} need `{package.install}`")
    if isinstance(backend, ReplayBackendSpec) and not backend.responses.is_file():
        problems.append(f"expert {expert.id!r}: recorded responses {backend.responses} do not exist ({RELATIVE})")
    return problems
