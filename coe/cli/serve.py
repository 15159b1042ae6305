"""`coe serve` (the OpenAI-compatible service) and `coe keys` (its API keys)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from coe.cli.ask import PoolOption, composition_spec
from coe.cli.common import ExecutorOption, RayAddressOption, builder, join_ray, out, settings
from coe.compose import CompositionSpec, StoredProfile
from coe.errors import ProfileError
from coe.service.config import ComposerKind
from coe.store import KeyStore, Store

keys_app = typer.Typer(help="API keys of `coe serve`: stored hashed; a key is shown once, when created.")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")


def serve(
    pool: PoolOption = None,
    composition: Annotated[
        str | None, typer.Option("--composition", help="A composition file or a bundled one's name.")
    ] = None,
    router: Annotated[str | None, typer.Option(help="The router of `model=coe` (default: knn).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Experts per question, for routers that pick k.")] = None,
    aggregator: Annotated[str | None, typer.Option(help="majority, weighted or llm (multiple choice).")] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="What routers fit on: a stored profile (id or name), BENCH:SPLIT or priors (default: "
            "the newest stored profile of the pool)."
        ),
    ] = None,
    synthesizer: Annotated[
        str | None, typer.Option(help="The llm aggregator's expert for free-form questions with k > 1.")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default 127.0.0.1; beyond it keys are required).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Default generation budget per expert.")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests waiting for a batch before 429s.")] = 1024,
    max_batch: Annotated[int, typer.Option(help="Requests per micro-batch.")] = 256,
    batch_window_ms: Annotated[float, typer.Option(help="Wait this long for more requests before a batch.")] = 0.0,
    timeout: Annotated[float, typer.Option(help="Seconds before a request gets 504.")] = 300.0,
    max_resident: Annotated[
        int | None, typer.Option(help="Local models kept loaded (default: all of the pool's).")
    ] = None,
    log_prompts: Annotated[bool, typer.Option(help="Keep questions in the request log (off by default).")] = False,
    require_keys: Annotated[bool, typer.Option(help="Demand an API key even on loopback.")] = False,
    access_log: Annotated[bool, typer.Option(help="uvicorn's access log (method, path, status).")] = True,
    composer: Annotated[
        ComposerKind,
        typer.Option(help="Compose in a process of its own (HTTP and composing on two cores) or a thread."),
    ] = "process",
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
) -> None:
    """Serve the pool as one OpenAI-compatible model: POST /v1/chat/completions with model=coe."""
    import uvicorn

    from coe.service import ServiceConfig, create_app
    from coe.service.batches import freeze_startup_objects

    current = settings()
    spec = composition_spec(
        composition,
        pool,
        router or (None if composition else "knn"),
        k,
        aggregator,
        profile,
        max_tokens,
        executor=executor,
    )
    join_ray(spec.executor, ray_address)
    if profile is None and composition is None:
        spec = with_newest_profile(spec)
    config = ServiceConfig(
        composition=spec,
        host=host or current.host,
        port=current.port if port is None else port,
        synthesizer=synthesizer,
        max_queue=max_queue,
        max_batch=max_batch,
        batch_window_s=batch_window_ms / 1000,
        request_timeout_s=timeout,
        max_resident=max_resident,
        log_prompts=log_prompts,
        require_keys=require_keys,
        composer=composer,
    )
    app = create_app(config, builder=builder())  # the composition is built: what start-up makes is made
    freeze_startup_objects()
    out.print(
        f"coe serving {spec.pool} (router {spec.router.name}, k {spec.k}, aggregator {spec.aggregator.name}) "
        f"on http://{config.host}:{config.port}/v1"
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=current.log_level.lower(),
        access_log=access_log,
        timeout_graceful_shutdown=int(config.request_timeout_s),
    )


def with_newest_profile(spec: CompositionSpec) -> CompositionSpec:
    """The spec fitted on the newest stored profile that measured this pool; routers that need none
    (all, random, best-single on priors) serve without; the others say what to run."""
    from coe.profile import newest_profile

    registry = builder().pool(spec.pool)
    record = newest_profile(builder().store, registry)
    if record is not None:
        return spec.model_copy(update={"profile": StoredProfile(stored=record.id)})
    if spec.router.name in ("all", "random", "best-single"):
        return spec
    raise ProfileError(
        f"no stored profile measured pool {registry.source}: the {spec.router.name} router fits on one. Run "
        f"`coe profile --pool {spec.pool} --bench mmlu-pro` first, or serve with --profile priors "
        "(the registry's declared priors) or --router all"
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (who uses it).")],
    rate_limit: Annotated[int | None, typer.Option(help="Requests per minute allowed with this key.")] = None,
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    key = KeyStore(Store(settings().database_url)).create(name, rate_limit)
    out.print(key)
    out.print(Text(f"key {name!r} created; it is not shown again: pass it as `Authorization: Bearer <key>`", "dim"))


@keys_app.command("list")
def keys_list() -> None:
    """Every key: name, prefix, rate limit, created, revoked."""
    table = Table(title="API keys")
    for column in ("name", "prefix", "rate limit / min", "created", "revoked"):
        table.add_column(column)
    for key in KeyStore(Store(settings().database_url)).all():
        revoked = f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else ""
        rate = str(key.rate_limit_per_min or "")
        table.add_row(key.name, key.prefix + "…", rate, f"{key.created_at:%Y-%m-%d %H:%M}", revoked)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: the service refuses it within a second."""
    KeyStore(Store(settings().database_url)).revoke(name)
    out.print(f"revoked key {name!r}")
