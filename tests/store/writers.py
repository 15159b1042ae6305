"""Several real processes writing one database at once, and the check that nothing was lost or doubled.

Each writer process builds its store, says it is ready, waits for the common start (so first uses of a
new database, and every write after, collide), then makes `writes` rounds of the writes coe makes: a
registry import as a named pool (one expert shared by every writer, one its own), opening and filling the profile
every writer of that round needs, creating a run (its own, and a shared one only one writer can
create), and a chunk of run rows (some shared, some its own).

`python -m tests.store.writers sqlite|postgresql PROCESSES WRITES` runs it on a new SQLite file or a
throwaway PostgreSQL cluster and prints the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from coe.errors import RunError
from coe.schema import ExpertSpec, ReplayBackendSpec
from coe.store import ProfileItem, ProfileOutcome, ProfileStore, RunStore, Store
from tests import postgres

REPO = Path(__file__).resolve().parents[2]
SHARED_RUN = "shared"


@dataclass(frozen=True)
class Figures:
    processes: int
    writes: int
    errors: int
    """Writer processes that failed."""
    lost: int
    """Expected rows missing from the database."""
    duplicated: int
    """Rows stored more than once (or one shared profile stored as several)."""
    miscounted: int
    """Import summaries or run creations that disagree with what was stored (a change counted twice)."""
    wall_s: float
    stderr: str


def expert(expert_id: str) -> ExpertSpec:
    return ExpertSpec(id=expert_id, base="recorded", backend=ReplayBackendSpec(responses=Path("/nowhere.jsonl.gz")))


def write(url: str, worker: int, writes: int, go: Path) -> dict[str, object]:
    """One writer's rounds; returns what it saw (added experts, profile ids, run creations won)."""
    store = Store(url)
    profiles, runs = ProfileStore(store), RunStore(store)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    added: list[str] = []
    profile_ids: dict[str, int] = {}
    created_shared = 0
    for m in range(writes):
        me = f"w{worker}"
        summary = store.import_pool(f"pool-{m}", [expert(f"shared-{m}"), expert(f"{me}-{m}")], source="concurrency")
        added += summary.added
        record = profiles.open(key=f"shared-{m}", bench="b", split="s", pool="p", experts={}, params={})
        profile_ids[record.key] = record.id
        profiles.add(
            record.id,
            [ProfileItem(f"item-{m}", "math", ("algebra",))],
            [ProfileOutcome(f"item-{m}", me, "A", True, text="The answer is (A).")],
        )
        try:
            runs.create(SHARED_RUN, {"writers": "all"})
            created_shared += 1
        except RunError:
            pass
        runs.create(f"{me}-{m}", {"writer": worker})
        for run_id in (SHARED_RUN, f"{me}-{m}"):
            generations = [generation(me, m)] + ([generation("shared", m)] if run_id == SHARED_RUN else [])
            runs.save_chunk(
                run_id,
                0,
                generations=generations,
                routes=[{"router": me, "item_id": f"item-{m}", "experts_json": "[]", "reason": "test"}],
                results=[
                    {"router": me, "aggregator": "majority", "item_id": f"item-{m}", "correct": True, "n_calls": 1}
                ],
            )
    return {"added": added, "profile_ids": profile_ids, "created_shared": created_shared}


def generation(expert_id: str, m: int) -> dict[str, object]:
    return {"expert_id": expert_id, "item_id": f"item-{m}", "choice": "A", "text": "The answer is (A)."}


def run_writers(url: str, processes: int, writes: int) -> Figures:
    """Start the writers, release them together, wait, and count errors, lost and doubled rows."""
    with tempfile.TemporaryDirectory() as folder:
        go = Path(folder) / "go"
        command = [sys.executable, "-m", "tests.store.writers", "--worker", url, str(writes), str(go)]
        workers = [
            subprocess.Popen([*command, str(w)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for w in range(processes)
        ]
        for worker in workers:
            assert worker.stdout is not None
            worker.stdout.readline()  # "ready", or "" when it died starting
        started = time.perf_counter()
        go.touch()
        outputs = [worker.communicate(timeout=600) for worker in workers]
        wall_s = time.perf_counter() - started
    results = [
        json.loads(out.splitlines()[-1]) for (out, _), w in zip(outputs, workers, strict=True) if not w.returncode
    ]
    lost, duplicated = count_rows(url, processes, writes)
    # Each expert is counted as added by exactly one writer, the shared run created by exactly one,
    # and every writer of a round got the same profile.
    experts = [f"shared-{m}" for m in range(writes)] + [f"w{w}-{m}" for w in range(processes) for m in range(writes)]
    added = Counter(e for r in results for e in r["added"])
    miscounted = sum(added[e] != 1 for e in experts) + (sum(r["created_shared"] for r in results) != 1)
    for m in range(writes):
        duplicated += len({r["profile_ids"][f"shared-{m}"] for r in results}) - 1 if results else 0
    stderr = "\n".join(err for _, err in outputs if err.strip())
    return Figures(processes, writes, processes - len(results), lost, duplicated, miscounted, wall_s, stderr)


def count_rows(url: str, processes: int, writes: int) -> tuple[int, int]:
    """(expected rows missing, rows beyond one per expected key) over every table the writers touch."""
    rounds = range(writes)
    own = [(w, m) for w in range(processes) for m in rounds]
    expected = {
        "select id from experts": [f"w{w}-{m}" for w, m in own] + [f"shared-{m}" for m in rounds],
        "select name from pools": [f"pool-{m}" for m in rounds],
        "select key from profiles": [f"shared-{m}" for m in rounds],
        "select p.key || '/' || i.item_id from profile_items i join profiles p on p.id = i.profile_id": [
            f"shared-{m}/item-{m}" for m in rounds
        ],
        "select p.key || '/' || o.expert_id from profile_outcomes o join profiles p on p.id = o.profile_id": [
            f"shared-{m}/w{w}" for w, m in own
        ],
        "select id from runs": [SHARED_RUN] + [f"w{w}-{m}" for w, m in own],
        "select run_id || '/' || expert_id || '/' || item_id from run_generations": [
            *(f"w{w}-{m}/w{w}/item-{m}" for w, m in own),
            *(f"{SHARED_RUN}/w{w}/item-{m}" for w, m in own),
            *(f"{SHARED_RUN}/shared/item-{m}" for m in rounds),
        ],
        "select run_id || '/' || router || '/' || item_id from run_routes": [
            *(f"w{w}-{m}/w{w}/item-{m}" for w, m in own),
            *(f"{SHARED_RUN}/w{w}/item-{m}" for w, m in own),
        ],
        "select run_id || '/' || router || '/' || item_id from run_results": [
            *(f"w{w}-{m}/w{w}/item-{m}" for w, m in own),
            *(f"{SHARED_RUN}/w{w}/item-{m}" for w, m in own),
        ],
    }
    engine = create_engine(url)
    lost = duplicated = 0
    try:
        with engine.connect() as connection:
            for query, keys in expected.items():
                stored = Counter(connection.execute(text(query)).scalars())
                lost += sum(1 for key in keys if key not in stored)
                duplicated += sum(n - 1 for n in stored.values())
    finally:
        engine.dispose()
    return lost, duplicated


def _main(argv: list[str]) -> None:
    if argv[0] == "--worker":
        url, writes, go, worker = argv[1], int(argv[2]), Path(argv[3]), int(argv[4])
        print(json.dumps(write(url, worker, writes, go)))
        return
    database, processes, writes = argv[0], int(argv[1]), int(argv[2])
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        if database == "postgresql":
            url = stack.enter_context(postgres.throwaway_cluster()).new_database()
        else:
            url = f"sqlite:///{folder}/coe.db"
        figures = run_writers(url, processes, writes)
    print(
        f"{database}: {processes} processes x {writes} writes: errors {figures.errors}, lost {figures.lost}, "
        f"duplicated {figures.duplicated}, miscounted {figures.miscounted}, {figures.wall_s:.1f} s"
    )
    if figures.stderr:
        print(figures.stderr)


if __name__ == "__main__":
    _main(sys.argv[1:])
