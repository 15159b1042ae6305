"""Profiling/test splits: `random:N:SEED` (stratified by category), `ids:FILE`, `symbolic-moe`.

The profiling items are what experts are measured on and routers fit on; the test items are the rest
(or, for `symbolic-moe`, that paper's test ids).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coe.errors import DatasetError
from coe.schema import Query

SPEC_FORMS = "random:N:SEED, ids:FILE or symbolic-moe"


@dataclass(frozen=True)
class Split:
    spec: str
    profile_ids: tuple[str, ...]
    test_ids: tuple[str, ...]


def stratified_sample(queries: Sequence[Query], n: int, seed: int) -> list[str]:
    """`n` query ids drawn without replacement, each category getting its proportional share
    (largest remainder); deterministic for a given dataset order and seed."""
    if not 0 < n < len(queries):
        raise DatasetError(f"random split needs 0 < N < {len(queries)} (the benchmark's size), got {n}")
    by_category: dict[str, list[str]] = {}
    for query in queries:
        by_category.setdefault(query.category or "", []).append(query.id)
    names = sorted(by_category)
    sizes = np.array([len(by_category[name]) for name in names], dtype=float)
    exact = sizes * n / sizes.sum()
    shares = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - shares), kind="stable")[: n - shares.sum()]:
        shares[index] += 1
    rng = np.random.default_rng(seed)
    picked: list[str] = []
    for name, share in zip(names, shares, strict=True):
        ids = by_category[name]
        picked.extend(ids[i] for i in sorted(rng.choice(len(ids), size=share, replace=False)))
    return picked


def check_split_spec(spec: str) -> str:
    """A split spec's form, checked before any data is read: `random:N:SEED` (integers), `ids:FILE`,
    `symbolic-moe`."""
    kind, _, rest = spec.partition(":")
    if kind == "random":
        n_text, _, seed_text = rest.partition(":")
        if not n_text.isdigit() or not (seed_text or "0").lstrip("-").isdigit():
            raise DatasetError(f"split {spec!r}: expected random:N:SEED with integers, e.g. random:1400:0")
        return spec
    if (kind == "ids" and rest) or spec == "symbolic-moe":
        return spec
    raise DatasetError(f"unknown split {spec!r}; use {SPEC_FORMS}")


def make_split(spec: str, queries: Sequence[Query], bench: str, data_dir: Path | None = None) -> Split:
    """Parse a split spec against a benchmark's queries."""
    kind, _, rest = check_split_spec(spec).partition(":")
    known = {query.id for query in queries}
    if kind == "random":
        n_text, _, seed_text = rest.partition(":")
        profile = stratified_sample(queries, int(n_text), int(seed_text or 0))
        return _with_rest(spec, profile, queries)
    if kind == "ids":
        path = Path(rest)
        try:
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as error:
            raise DatasetError(f"split {spec!r}: cannot read {path}: {error}") from error
        ids = [line.split(",")[0] for line in lines if line.split(",")[0] not in ("id", "question_id")]
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise DatasetError(f"split {spec!r}: {len(unknown)} ids are not in {bench} (e.g. {unknown[:3]})")
        return _with_rest(spec, ids, queries)
    train, test = _symbolic_moe_ids(bench, data_dir)  # symbolic-moe
    return Split(spec, tuple(i for i in train if i in known), tuple(i for i in test if i in known))


def _with_rest(spec: str, profile: Sequence[str], queries: Sequence[Query]) -> Split:
    chosen = set(profile)
    return Split(spec, tuple(profile), tuple(q.id for q in queries if q.id not in chosen))


def _symbolic_moe_ids(bench: str, data_dir: Path | None) -> tuple[list[str], list[str]]:
    if data_dir is None:
        raise DatasetError("the symbolic-moe split needs the data dir (COE_DATA_DIR) holding outcomes/")
    path = data_dir / "outcomes" / "symbolic_moe_splits.csv"
    wanted = {"mmlu-pro": "mmlu_pro", "gpqa": "gpqa"}.get(bench)
    if wanted is None:
        raise DatasetError(f"the symbolic-moe split exists for mmlu-pro and gpqa, not {bench!r}")
    try:
        with path.open() as handle:
            rows = [row for row in csv.DictReader(handle) if row["benchmark"] == wanted and row["id"]]
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    train = list(dict.fromkeys(row["id"] for row in rows if row["split"] == "train"))
    test = list(dict.fromkeys(row["id"] for row in rows if row["split"] == "test"))
    return train, test
