"""Files shipped inside the package: skill taxonomies, the bundled pools (and the adapters they use)
and example compositions.

They live in the repository's top-level `skills/`, `registry/`, `adapters/` and `compositions/`; `coe/data/` links to
those folders, so a checkout reads them in place and a built wheel carries copies: `pip install coe`
outside the repository still finds the default pool and the taxonomies.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_dir() -> Path:
    """The package's data folder (`coe/data`)."""
    return Path(str(files("coe") / "data"))


def bundled_pools() -> dict[str, Path]:
    """Bundled registry files by pool name (the file's stem), e.g. `embedded`."""
    return {path.stem: path for path in sorted((data_dir() / "registry").glob("*.yaml"))}


def taxonomy_files() -> dict[str, Path]:
    """Bundled skill taxonomies by name, e.g. `mmlu_pro`."""
    return {path.stem: path for path in sorted((data_dir() / "skills").glob("*.yaml"))}


def bundled_compositions() -> dict[str, Path]:
    """Bundled composition files by name (the file's stem), e.g. `knn`."""
    return {path.stem: path for path in sorted((data_dir() / "compositions").glob("*.yaml"))}
