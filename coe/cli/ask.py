"""`coe ask`: one question through a composition."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from coe.answers import check_options
from coe.cli.common import ExecutorOption, RayAddressOption, builder, join_ray, out, progress, settings
from coe.compose import CompositionSpec, GenerationSpec, parse_profile_source
from coe.embed import EncoderName
from coe.errors import GenerationError, QueryError
from coe.schema import Answer, Query

PoolOption = Annotated[
    str | None,
    typer.Option("--pool", help="Registry file, imported pool name or bundled pool name (default: embedded)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer(s) as JSON.")]


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    choices: Annotated[
        str | None,
        typer.Option("--choices", help='Options, comma-separated ("Venus,Mars") or a JSON list (\'["a, b", "c"]\').'),
    ] = None,
    choice: Annotated[
        list[str] | None, typer.Option("--choice", help="One option (repeat it; commas allowed).")
    ] = None,
    composition: Annotated[
        str | None,
        typer.Option("--composition", help="A composition file or a bundled one's name (knn, embedded, ...)."),
    ] = None,
    pool: PoolOption = None,
    router: Annotated[str | None, typer.Option(help="Router (default: all experts).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Experts per query, for routers that pick k.")] = None,
    aggregator: Annotated[str | None, typer.Option(help="majority, weighted or llm.")] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="What the router fits on: priors, a stored profile (id or name), BENCH:SPLIT, or kshot:FILE "
            "(every expert run now on a K-shot examples file; use with --router kshot)."
        ),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Generation budget per expert (default 384).")] = None,
    encoder: Annotated[EncoderName | None, typer.Option(help="Query encoder of the embedding routers.")] = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer one question with a composition (default: every expert of the pool, majority vote)."""
    query = Query(id="q0", text=question, choices=parse_options(choices, choice))
    spec = composition_spec(composition, pool, router, k, aggregator, profile, max_tokens, encoder, executor)
    join_ray(spec.executor, ray_address)
    with builder().compose(spec) as composer, progress("asking experts", total=len(composer.registry)) as advance:
        result = composer.run([query], advance)
    answer = result.answers[0]
    if as_json:
        out.print_json(answer.model_dump_json())
    else:
        print_answer(answer)
    failed = [a for a in answer.expert_answers if a.error is not None]
    if failed and len(failed) == len(answer.expert_answers):
        reasons = "; ".join(f"{a.expert}: {a.error}" for a in failed)
        raise GenerationError(f"no expert answered ({reasons})")


def print_answer(answer: Answer) -> None:
    """Each expert's answer (or its error) on a line, then the fused answer and why these experts."""
    for expert_answer in answer.expert_answers:
        said = (
            f"error ({expert_answer.error.kind}): {expert_answer.error}" if expert_answer.error else expert_answer.text
        )
        out.print(Text.assemble((expert_answer.expert, "bold"), f" → {expert_answer.choice or '-'}: {_one_line(said)}"))
    for fallback in answer.fallbacks:
        instead = f"replaced by {fallback.replacement}" if fallback.replacement else "no ranked expert left"
        out.print(
            Text.assemble(("fallback: ", "yellow"), f"{fallback.expert} failed ({fallback.error.kind}), {instead}")
        )
    out.print(
        Text.assemble(
            ("answer: ", "bold green"), f"{answer.choice or _one_line(answer.answer)}   ({answer.route.reason})"
        )
    )


def parse_options(choices: str | None, repeated: list[str] | None) -> tuple[str, ...] | None:
    """`--choices` (comma-separated, or a JSON list for options holding commas) and any `--choice`."""
    options: list[str] = []
    if choices and choices.lstrip().startswith("["):
        try:
            parsed = json.loads(choices)
        except json.JSONDecodeError as error:
            raise QueryError(f"--choices: not a JSON list of strings ({error})") from error
        if not isinstance(parsed, list) or not all(isinstance(option, str) for option in parsed):
            raise QueryError('--choices: a JSON list must hold strings, e.g. ["a, b", "c"]')
        options.extend(option.strip() for option in parsed)
    elif choices:
        options.extend(option.strip() for option in choices.split(","))
    options.extend(option.strip() for option in repeated or ())
    return check_options(options) if options else None


def composition_spec(
    composition: str | None,
    pool: str | None,
    router: str | None,
    k: int | None,
    aggregator: str | None,
    profile: str | None,
    max_tokens: int | None,
    encoder: str | None = None,
    executor: str | None = None,
) -> CompositionSpec:
    """A composition file (or the defaults) with the command line's options laid over it."""
    current = settings()
    base = (
        CompositionSpec.load(composition)
        if composition
        else CompositionSpec(pool=current.pool, seed=current.seed, generation=GenerationSpec(seed=current.seed))
    )
    data = base.model_dump()
    given = {
        "pool": pool,
        "router": {"name": router} if router else None,
        "k": k,
        "aggregator": {"name": aggregator} if aggregator else None,
        "profile": parse_profile_source(profile) if profile else None,
        "generation": {**data["generation"], "max_tokens": max_tokens} if max_tokens else None,
        "encoder": encoder,
        "executor": executor,
    }
    return CompositionSpec.model_validate({**data, **{key: value for key, value in given.items() if value is not None}})


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
