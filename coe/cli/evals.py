"""`coe profile`, `coe eval`, `coe report`: measuring pools and comparing compositions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from coe.aggregate import AGGREGATORS
from coe.cli.common import ExecutorOption, RayAddressOption, builder, join_ray, load_pool, out, progress, settings
from coe.compose import SplitProfile
from coe.embed import DEFAULT_ENCODER, EncoderName
from coe.errors import ConfigError, RunError
from coe.evals.config import ADDED_FIELDS, EvalConfig
from coe.evals.run import run_eval
from coe.evals.summary import EvalSummary
from coe.evals.sweep import SWEEP, sweep_points, write_sweep_report
from coe.executors.base import ExecutorKind
from coe.outcomes import Outcomes
from coe.routers import ROUTERS
from coe.routers.skill import skill_profile
from coe.settings import Settings
from coe.store import RunStore, Store
from coe.types import GenerationParams

BenchOption = Annotated[str, typer.Option("--bench", help="mmlu-pro or gpqa.")]
PoolOption = Annotated[str, typer.Option("--pool", help="Registry file, imported pool name or bundled pool name.")]
SplitOption = Annotated[str, typer.Option("--split", help="random:N:SEED, ids:FILE or symbolic-moe.")]
ENCODER_HELP = "Query encoder of knn, skill, classifier and skill annotation."


aggregators_app = typer.Typer(help="Aggregators: choose the LLM aggregator expert.")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_command)
    app.command("eval")(eval_command)
    app.command("report")(report_command)
    app.add_typer(aggregators_app, name="aggregators")


def profile_command(
    pool: PoolOption,
    bench: BenchOption = "mmlu-pro",
    split: SplitOption = "random:1400:0",
    max_tokens: Annotated[int, typer.Option(help="Generation budget per expert.")] = 512,
    annotate: Annotated[bool, typer.Option(help="Tag profiling items with taxonomy skills (embeddings).")] = True,
    encoder: Annotated[EncoderName, typer.Option(help=ENCODER_HELP)] = DEFAULT_ENCODER,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Run every expert of a pool over the profiling items and store the measured profile."""
    from coe.profile import profile_name

    join_ray(executor, ray_address)
    registry = load_pool(pool)
    source = SplitProfile.model_validate({"bench": bench, "split": split})
    params = GenerationParams(max_tokens=max_tokens, seed=settings().seed)
    scheduler = builder().scheduler_for(executor or "local")
    try:
        measured = builder().profile(source, registry, params, annotate=annotate, encoder=encoder, scheduler=scheduler)
    finally:
        scheduler.close()
    outcomes = measured.outcomes
    state = "reused the stored profile" if measured.reused else "stored"
    record = measured.record
    out.print(
        f"profile {record.id} {profile_name(record)} ({state}): {len(outcomes.items)} items, "
        f"{record.created_at:%Y-%m-%d %H:%M}; use it with --profile {record.id}"
    )
    categories = outcomes.category_accuracy()
    table = Table(title="measured accuracy on the profiling items (a failed answer counts as wrong)")
    table.add_column("expert")
    table.add_column("overall")
    table.add_column("failed")
    for category in categories:
        table.add_column(category[:10])
    overall, failed = outcomes.accuracy(), outcomes.failure_rate()
    for j, expert in enumerate(outcomes.expert_ids):
        cells = (f"{values[j]:.2f}" for values in categories.values())
        table.add_row(expert, f"{overall[j]:.3f}", f"{failed[j]:.1%}", *cells)
    out.print(table)
    if any(item.skills for item in outcomes.items):
        print_skill_profiles(outcomes)


def print_skill_profiles(outcomes: Outcomes) -> None:
    """Symbolic-MoE's ±1 profiles: each expert's strongest and weakest skills."""
    names, scores, _ = skill_profile([item.skills for item in outcomes.items], outcomes.correct)
    table = Table(title="skill profiles (+1 per right, −1 per wrong answer on an item needing the skill)")
    for column in ("expert", "strongest skills", "weakest skills"):
        table.add_column(column)
    for j, expert in enumerate(outcomes.expert_ids):
        order = np.argsort(-scores[:, j], kind="stable")
        strongest = ", ".join(f"{names[i]} {scores[i, j]:+.0f}" for i in order[:3])
        weakest = ", ".join(f"{names[i]} {scores[i, j]:+.0f}" for i in order[::-1][:3])
        table.add_row(expert, strongest, weakest)
    out.print(table)


def eval_command(
    pool: Annotated[str | None, typer.Option("--pool", help="Registry file, imported or bundled pool name.")] = None,
    bench: Annotated[str | None, typer.Option("--bench", help="mmlu-pro or gpqa.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="random:N:SEED, ids:FILE or symbolic-moe.")] = None,
    routers: Annotated[str | None, typer.Option(help="Comma-separated routers.")] = None,
    aggregators: Annotated[str | None, typer.Option(help="Comma-separated aggregators.")] = None,
    k: Annotated[
        str | None,
        typer.Option(
            "--k",
            help=(
                "Experts per query (N), or a policy: auto, cascade[:START], calls:B, gain:B, agree, topp:P "
                "(up to --max-k)."
            ),
        ),
    ] = None,
    max_k: Annotated[int | None, typer.Option("--max-k", help="The most experts a k policy asks (default 3).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most N test items per seed (stratified).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Generation budget per expert.")] = None,
    max_cost_usd: Annotated[
        float | None,
        typer.Option(
            "--max-cost-usd",
            help="The most a query may cost (prompt at 4 characters a token plus --max-tokens, at each expert's "
            "price): pricier experts are not asked, a route over it keeps its best-ranked experts that fit.",
        ),
    ] = None,
    aggregator_expert: Annotated[str | None, typer.Option(help="Expert of the llm aggregator.")] = None,
    aggregator_pool: Annotated[str | None, typer.Option(help="Pool holding the llm aggregator expert.")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Test items stored per transaction (resume unit).")] = None,
    kshot: Annotated[
        int | None, typer.Option("--kshot", help="The kshot router sees K profiling items per category.")
    ] = None,
    max_failure_rate: Annotated[
        float | None, typer.Option(help="Share of failed generations above which the run fails (default 0.1).")
    ] = None,
    encoder: Annotated[EncoderName | None, typer.Option(help=f"{ENCODER_HELP} (default {DEFAULT_ENCODER})")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write the JSON summary here.")] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue this run where it stopped; failed generations are retried.")
    ] = None,
    fallback: Annotated[
        bool | None,
        typer.Option("--fallback/--no-fallback", help="Replace a failed expert by the router's next-ranked one."),
    ] = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    sweep: Annotated[
        bool, typer.Option("--sweep", help=f"One run per k policy ({', '.join(SWEEP)}) and a report of the curves.")
    ] = False,
) -> None:
    """Evaluate routers × aggregators against baselines over seeds; resumable."""
    current = join_ray(executor, ray_address)
    store = Store(current.database_url)
    given = {
        "pool": str(Path(pool).resolve()) if pool and Path(pool).is_file() else pool,
        "bench": bench,
        "split": split,
        "routers": _names("--routers", routers, ROUTERS),
        "aggregators": _names("--aggregators", aggregators, AGGREGATORS),
        "k": int(k) if k and k.isdigit() else max_k,
        "k_policy": None if k is None else "fixed" if k.isdigit() else k,
        "seeds": _integers("--seeds", seeds) if seeds else None,
        "limit": limit,
        "max_tokens": max_tokens,
        "max_cost_usd": max_cost_usd,
        "aggregator_expert": aggregator_expert,
        "aggregator_pool": aggregator_pool,
        "chunk_size": chunk_size,
        "fallback": fallback,
        "kshot": kshot,
        "max_failure_rate": max_failure_rate,
        "encoder": encoder,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if resume:
        stored = RunStore(store).get(resume).config
        config = EvalConfig.model_validate({**ADDED_FIELDS, **stored, **given})
    else:
        missing = [name for name in ("pool", "bench", "split") if name not in given]
        if missing:
            raise RunError(f"coe eval needs --{', --'.join(missing)} (or --resume RUN_ID)")
        config = EvalConfig.model_validate(given)
    if resume and (failed := len(RunStore(store).failed_items(resume))):
        out.print(f"asking again the {failed} item(s) whose generations failed")
    if sweep:
        if resume or k is not None:
            raise ConfigError("--sweep runs its own k policies: leave out --k and --resume (resume each run by its id)")
        return sweep_command(config, current, store, json_file, executor or "local")
    summary = run_eval(
        config, settings=current, store=store, run_id=resume, progress=progress, executor=executor or "local"
    )
    print_summary(summary)
    if json_file:
        json_file.write_text(json.dumps(json_summary(summary), indent=2))
        out.print(f"wrote {json_file}")
    check_failures(summary, config)


def sweep_command(
    config: EvalConfig, current: Settings, store: Store, json_file: Path | None, executor: ExecutorKind
) -> None:
    """One run per k policy of the sweep, then the curves' report (and JSON: every point)."""
    summaries = []
    for policy in SWEEP:
        fixed = policy.isdigit()
        update = {"k": int(policy), "k_policy": "fixed"} if fixed else {"k_policy": policy}
        summary = run_eval(
            config.model_copy(update=update), settings=current, store=store, progress=progress, executor=executor
        )
        print_summary(summary)
        check_failures(summary, config)
        summaries.append(summary)
    path = write_sweep_report(summaries, (store.folder or current.cache_dir) / "reports")
    out.print(f"wrote {path.resolve()} and its plots beside it")
    if json_file:
        points = [point.model_dump(mode="json") for point in sweep_points(summaries)]
        json_file.write_text(json.dumps({"runs": [s.run_id for s in summaries], "points": points}, indent=2))
        out.print(f"wrote {json_file}")


def check_failures(summary: EvalSummary, config: EvalConfig) -> None:
    if summary.failure_rate > config.max_failure_rate:
        raise RunError(
            f"{summary.failure_rate:.0%} of the run's generations failed (more than --max-failure-rate "
            f"{config.max_failure_rate:g}): its accuracies count those as wrong; fix the experts above and "
            f"`coe eval --resume {summary.run_id}` asks them again"
        )


def _names(option: str, text: str | None, known: Iterable[str]) -> tuple[str, ...] | None:
    """Comma-separated names as given; an empty list is refused rather than read as the default."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise ConfigError(f"{option}: name at least one; known: {', '.join(sorted(known))}")
    return names


def _integers(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, e.g. 0,1,2; got {text!r}") from None


def json_summary(summary: EvalSummary) -> dict:
    """The documented JSON shape (plus the run id and per-seed details)."""
    data = summary.model_dump(mode="json")
    return {
        "run_id": data["run_id"],
        "bench": data["bench"],
        "pool": data["pool"],
        "split": data["split"],
        "seeds": data["seeds"],
        "n_test": data["n_test"],
        "k_policy": data["k_policy"],
        "max_cost_usd": data["max_cost_usd"],
        "results": data["results"],
        "best_single": data["best_single"],
        "oracle": data["oracle"],
        "per_category": data["per_category"],
        "kshot": data["kshot"],
        "failures": data["failures"],
        "failure_rate": data["failure_rate"],
    }


def print_summary(summary: EvalSummary) -> None:
    title = f"{summary.bench}, pool {Path(summary.pool).name}, split {summary.split}, seeds {summary.seeds}"
    if summary.k_policy != "fixed":
        title += f", k policy {summary.k_policy}"
    if summary.max_cost_usd is not None:
        title += f", at most {summary.max_cost_usd:g} USD per query"
    table = Table(title=f"{title}, {summary.n_test} test items per seed")
    columns = ("router", "aggregator", "accuracy", "Δ pts [95% CI]", "wins", "calls/query", "loads", "time (s)")
    for column in columns:
        table.add_column(column, justify="left" if column in ("router", "aggregator") else "right")
    for r in summary.results:
        table.add_row(
            r.router,
            r.aggregator,
            f"{r.accuracy_mean:.4f} ± {r.accuracy_std:.4f}",
            r.delta_text(),
            "yes" if r.wins else "",
            f"{r.calls_per_query:.2f}",
            f"{r.n_loads:g}",
            f"{r.wall_s:.1f}",
        )
    out.print(table)
    best = summary.best_single
    out.print(f"best single expert (chosen on profiling): {best.expert} {best.accuracy_mean:.4f}")
    out.print("Δ: accuracy points over it, with a paired bootstrap 95% interval over the test items; wins: above zero")
    if summary.oracle:
        out.print(f"oracle (upper bound): {summary.oracle.accuracy_mean:.4f}")
    rows = list(summary.per_category)
    categories = sorted({c for values in summary.per_category.values() for c in values})
    per_category = Table(title="accuracy per category (mean over seeds)")
    per_category.add_column("router/aggregator")
    for category in categories:
        per_category.add_column(category[:10], justify="right")
    for row in rows:
        per_category.add_row(row, *(f"{summary.per_category[row].get(c, float('nan')):.2f}" for c in categories))
    out.print(per_category)
    if summary.failures:
        failures = Table(title=f"failed generations ({summary.failure_rate:.2%} of the run's; counted as wrong)")
        for column in ("expert", "failed", "of", "share"):
            failures.add_column(column, justify="left" if column == "expert" else "right")
        for failing in summary.failures:
            share = failing.n_failed / max(failing.n_generations, 1)
            failures.add_row(failing.expert, str(failing.n_failed), str(failing.n_generations), f"{share:.1%}")
        out.print(failures)
    out.print(f"run id: {summary.run_id}  (coe report {summary.run_id})")


def report_command(
    run_ids: Annotated[
        list[str], typer.Argument(help="A run id (see the end of `coe eval`); several: the curves of a sweep.")
    ],
    output: Annotated[
        Path | None, typer.Option(help="Folder for the Markdown and plots (default: `reports/` beside the database).")
    ] = None,
) -> None:
    """Write a run's Markdown report and plots; for several runs (k policies of one setting), the
    accuracy-against-calls and accuracy-against-cost curves."""
    from coe.evals.report import write_report

    current = settings()
    store = Store(current.database_url)
    summaries = []
    for run_id in run_ids:
        record = RunStore(store).get(run_id)
        if record.summary is None:
            raise RunError(f"run {run_id!r} has not finished; finish it with `coe eval --resume {run_id}`")
        summaries.append(EvalSummary.model_validate(record.summary))
    folder = output or (store.folder or current.cache_dir) / "reports"
    path = write_report(summaries[0], folder) if len(summaries) == 1 else write_sweep_report(summaries, folder)
    out.print(f"wrote {path.resolve()} and its plots beside it")


@aggregators_app.command("probe")
def probe_command(
    pool: PoolOption,
    bench: BenchOption = "mmlu-pro",
    split: SplitOption = "random:1400:0",
    candidates: Annotated[str | None, typer.Option(help="Comma-separated candidate ids (default: all live).")] = None,
    aggregator_pool: Annotated[str | None, typer.Option(help="Pool of the candidates (default: --pool).")] = None,
    items: Annotated[int, typer.Option(help="Probe items (one correct, up to two incorrect answers).")] = 50,
    max_tokens: Annotated[int, typer.Option(help="Generation budget of a synthesis.")] = 512,
) -> None:
    """Rank candidate aggregator experts by how often their synthesis recovers the correct answer,
    and store the winner for `coe eval --aggregators llm`."""
    from coe.evals.probe import run_probe

    current = settings()
    compositions = builder()
    registry = load_pool(pool)
    candidate_pool = load_pool(aggregator_pool) if aggregator_pool else registry
    live = [e for e in candidate_pool.experts if not compositions.scheduler.backend_for(e).capabilities.recorded]
    chosen = [candidate_pool[c] for c in candidates.split(",")] if candidates else live
    if not chosen:
        raise RunError(f"{candidate_pool.source} has no expert that can synthesize; pass --aggregator-pool")
    params = GenerationParams(max_tokens=max_tokens, seed=current.seed)
    source = SplitProfile.model_validate({"bench": bench, "split": split})
    measured = compositions.profile(source, registry, params, annotate=False)
    result = run_probe(
        compositions.store,
        registry,
        chosen,
        bench=bench,
        profile_id=measured.record.id,
        items=measured.outcomes.items,
        scheduler=compositions.scheduler,
        params=params,
        n_items=items,
    )
    table = Table(title=f"aggregator probe: {result.n_items} items, one correct and up to two incorrect answers")
    table.add_column("candidate")
    table.add_column("recovers the correct answer", justify="right")
    for expert, score in sorted(result.scores.items(), key=lambda pair: -pair[1]):
        table.add_row(expert, f"{score:.3f}")
    out.print(table)
    out.print(f"chose and stored {result.chosen} as the llm aggregator of {registry.source} on {bench}")
