"""Bad input, tried the way a new user would: every case runs `coe` in its own process and is sorted into
a clear error (non-zero exit, no traceback), a traceback, or silent acceptance
(exit 0). The last two must stay at zero.

    .venv/bin/python -m benchmarks.edges [--show]

Cases cover `coe ask` options, `coe eval` options, the environment (threads, database URL, a file that is
not a database), registry files (malformed, wrong types, missing references, odd names) and unknown names
(runs, pools, profiles). Each runs in a fresh temporary database; no model is loaded and nothing is
downloaded. `--show` prints each case's first stderr line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REF8 = str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml")
EVAL = (
    "eval",
    "--bench",
    "mmlu-pro",
    "--pool",
    REF8,
    "--split",
    "random:1400:0",
    "--routers",
    "best-single",
    "--limit",
    "5",
)


@dataclass(frozen=True)
class Case:
    kind: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str | bytes] = field(default_factory=dict)
    """Files written into the case's folder first; `{dir}` in args and env names that folder."""


def registry_case(name: str, text: str | bytes, filename: str = "pool.yaml") -> Case:
    return Case("registry file", ("registry", "import", "{dir}/" + filename), files={filename: text})


EXPERT = "experts:\n  - id: a\n    base: x\n    backend: {kind: replay, responses: %s}\n"
CASES: tuple[Case, ...] = (
    # coe ask
    Case("ask option", ("ask", "   ")),
    Case("ask option", ("ask", "x", "--choices", "a,,b")),
    Case("ask option", ("ask", "x", "--choices", "Mars,Mars")),
    Case("ask option", ("ask", "x", "--choices", '["a, b"')),
    Case("ask option", ("ask", "x", "--choices", ",".join("abcdefghijk"))),
    Case("ask option", ("ask", "x", "--router", "smart")),
    Case("ask option", ("ask", "x", "--aggregator", "smart")),
    Case("ask option", ("ask", "x", "--composition", "nosuch")),
    Case("ask option", ("ask", "x", "--pool", "nosuch-pool")),
    Case("ask option", ("ask", "x", "--k", "0")),
    Case("ask option", ("ask", "x", "--profile", "nosuch-profile")),
    # coe eval
    Case("eval option", ("eval", "--bench", "nosuch", *EVAL[3:])),
    Case("eval option", (*EVAL[:-2], "--limit", "-1")),
    Case("eval option", (*EVAL, "--k", "0")),
    Case("eval option", (*EVAL, "--k", "50", "--routers", "knn")),
    Case("eval option", (*EVAL, "--chunk-size", "0")),
    Case("eval option", (*EVAL, "--seeds", "garbage")),
    Case("eval option", (*EVAL, "--seeds", "0,0")),
    Case("eval option", (*EVAL[:-4], "--routers", "", "--limit", "5")),
    Case("eval option", (*EVAL, "--split", "random:1400:x")),
    Case("eval option", (*EVAL, "--split", "random:abc")),
    Case("eval option", (*EVAL, "--aggregators", "smart")),
    Case("eval option", (*EVAL, "--max-failure-rate", "2")),
    Case("eval option", (*EVAL, "--max-cost-usd", "-1")),
    Case("eval option", (*EVAL, "--max-cost-usd", "1e-9")),
    Case("eval option", ("eval", "--resume", "nosuch-run")),
    Case("eval option", (*EVAL[:4], "{dir}/nosuch.yaml", *EVAL[5:])),
    # environment
    Case("environment", ("registry", "list"), env={"COE_THREADS": "abc"}),
    Case("environment", ("registry", "list"), env={"COE_DATABASE_URL": "nosuch://x"}),
    Case(
        "environment",
        ("registry", "list"),
        env={"COE_DATABASE_URL": "sqlite:///{dir}/text.db"},
        files={"text.db": "hello\n"},
    ),
    Case("environment", ("registry", "list"), env={"COE_DATABASE_URL": "mysql://127.0.0.1:9/x"}),
    # registry files
    registry_case("malformed YAML", "experts: [a, {b\n"),
    registry_case("not a mapping", "- a\n- b\n"),
    registry_case("no experts", "experts: []\n"),
    registry_case(
        "unknown field",
        "experts:\n  - id: a\n    base: x\n    colour: red\n    backend: {kind: embedded, gguf: x.gguf}\n",
    ),
    registry_case("unknown backend", "experts:\n  - id: a\n    base: x\n    backend: {kind: telepathy}\n"),
    registry_case(
        "duplicate ids",
        EXPERT % "a.jsonl" + "  - id: a\n    base: y\n    backend: {kind: replay, responses: a.jsonl}\n",
    ),
    registry_case(
        "boolean as number",
        "experts:\n  - id: a\n    base: x\n    params_b: true\n    backend: {kind: embedded, gguf: x.gguf}\n",
    ),
    registry_case(
        "missing GGUF", "experts:\n  - id: a\n    base: x\n    backend: {kind: embedded, gguf: missing.gguf}\n"
    ),
    registry_case("missing replay file", EXPERT % "missing.jsonl"),
    registry_case(
        "missing adapter",
        "experts:\n  - id: b\n    base: x\n    backend: {kind: embedded, weights: smollm2-135m}\n"
        "  - id: a\n    base: b\n    adapter: adapters/nosuch\n",
    ),
    registry_case("binary file", bytes(range(256))),
    registry_case("markup-like name", "experts: [\n", filename="[/x].yaml"),
    Case("registry file", ("registry", "import", "{dir}")),
    Case("registry file", ("registry", "import", "{dir}/nosuch.yaml")),
    # unknown names
    Case("unknown name", ("runs", "trace", "nosuch-run", "1")),
    Case("unknown name", ("report", "nosuch-run")),
    Case("unknown name", ("registry", "show", "nosuch-expert")),
    Case("unknown name", ("profile", "--pool", "nosuch-pool")),
)


@dataclass(frozen=True)
class Outcome:
    case: Case
    verdict: str
    """clear, traceback or silent."""
    first_line: str
    seconds: float


def run_case(case: Case, coe: Path) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="coe-edge-") as folder:
        for name, content in case.files.items():
            path = Path(folder) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        env = {
            **os.environ,
            "COE_DATABASE_URL": f"sqlite:///{folder}/coe.db",
            **{key: value.replace("{dir}", folder) for key, value in case.env.items()},
        }
        args = [arg.replace("{dir}", folder) for arg in case.args]
        started = time.perf_counter()
        done = subprocess.run([str(coe), *args], env=env, capture_output=True, text=True, timeout=300, cwd=folder)
        seconds = time.perf_counter() - started
    lines = done.stderr.strip().splitlines()
    if done.returncode == 0:
        verdict = "silent"
    elif "Traceback" in done.stderr + done.stdout:
        verdict = "traceback"
    else:
        verdict = "clear"
    return Outcome(case, verdict, lines[0] if lines else "", seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show", action="store_true", help="print each case's first stderr line")
    options = parser.parse_args()
    coe = Path(sys.executable).parent / "coe"
    outcomes = [run_case(case, coe) for case in CASES]
    tally: dict[str, Counter[str]] = {}
    for outcome in outcomes:
        tally.setdefault(outcome.case.kind, Counter())[outcome.verdict] += 1
        if options.show or outcome.verdict != "clear":
            print(f"{outcome.verdict:9} {' '.join(outcome.case.args)[:70]:70} {outcome.first_line[:110]}")
    print(f"\n{'kind':16} {'cases':>5} {'clear':>5} {'traceback':>9} {'silent':>6}")
    for kind, counts in tally.items():
        total = sum(counts.values())
        print(f"{kind:16} {total:5} {counts['clear']:5} {counts['traceback']:9} {counts['silent']:6}")
    overall = Counter(outcome.verdict for outcome in outcomes)
    print(
        f"{len(outcomes)} bad inputs: {overall['clear']} clear errors, {overall['traceback']} tracebacks, "
        f"{overall['silent']} accepted silently ({sum(o.seconds for o in outcomes):.0f} s)"
    )


if __name__ == "__main__":
    main()
