"""Building compositions: `compose(spec)` returns a fitted, ready `Composer`, and a `CompositionBuilder`
shares what is costly between the compositions it builds (database, backends, scheduler, encoder,
skill annotators, loaded benchmarks, measured profiles)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coe.aggregate import Aggregator, make_aggregator
from coe.backends import Backend, default_backends
from coe.compose.spec import (
    AggregatorSpec,
    CompositionSpec,
    KShotProfile,
    ProfileSource,
    RouterSpec,
    SplitProfile,
    StoredProfile,
)
from coe.composer import Composer
from coe.datasets import is_redacted, load_benchmark, load_examples
from coe.embed import DEFAULT_ENCODER
from coe.errors import ConfigError
from coe.executors.base import ExecutorKind
from coe.outcomes import Outcomes
from coe.policy import KPolicy, calibrate
from coe.registry import Registry, load_pool
from coe.routers import make_router
from coe.routers.base import Router
from coe.routers.kshot import draw_examples
from coe.scheduler import Scheduler
from coe.schema import Query, Route
from coe.settings import Settings
from coe.splits import Split, make_split
from coe.types import GenerationParams, ProgressCallback

if TYPE_CHECKING:
    from coe.embed import Encoder
    from coe.profile import Profile
    from coe.skills import SkillAnnotator
    from coe.stacked import StackedVote
    from coe.store import Store


ProgressFactory = Callable[[str, int], AbstractContextManager[ProgressCallback]]
"""(description, total) -> a context yielding `on_progress(n)`; the CLI gives a progress bar."""


def compose(spec: CompositionSpec | Path | str, *, settings: Settings | None = None, **resources: Any) -> Composer:
    """A fitted, ready Composer from a spec, a composition file or a bundled composition's name.
    `settings` default to the environment's (`COE_*`); `resources` (backends, scheduler, store, progress)
    go to the `CompositionBuilder`."""
    chosen = spec if isinstance(spec, CompositionSpec) else CompositionSpec.load(spec)
    return CompositionBuilder(settings or Settings(), **resources).compose(chosen)


class CompositionBuilder:
    """Builds fitted Composers from specs, sharing the database, backends, scheduler, encoder, skill
    annotators, loaded benchmarks and measured profiles between them. Nothing is built before use."""

    def __init__(
        self,
        settings: Settings,
        *,
        backends: dict[str, Backend] | None = None,
        scheduler: Scheduler | None = None,
        store: Store | None = None,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.settings = settings
        self._backends = backends
        self._scheduler = scheduler
        self._store = store
        self.progress = progress or _no_progress
        self._schedulers: dict[str, Scheduler] = {}
        self._benchmarks: dict[tuple[str, str], list[Query]] = {}
        self._encoders: dict[str, Encoder] = {}
        self._annotators: dict[tuple[str, str], SkillAnnotator] = {}

    # ----------------------------------------------------------------------- shared resources

    @cached_property
    def store(self) -> Store:
        if self._store is not None:
            return self._store
        from coe.store import Store

        return Store(self.settings.database_url)

    @cached_property
    def backends(self) -> dict[str, Backend]:
        if self._scheduler is not None:
            return dict(self._scheduler.backends)
        return self._backends or default_backends(cache_dir=self.settings.cache_dir, threads=self.settings.threads)

    @cached_property
    def scheduler(self) -> Scheduler:
        """The given scheduler, or a local one."""
        return self._scheduler or Scheduler(self.backends)

    def scheduler_for(self, executor: ExecutorKind) -> Scheduler:
        """The shared scheduler whose groups run on `executor` (a Ray one joins `settings.ray_address`)."""
        if executor == self.scheduler.executor.kind:
            return self.scheduler
        if executor not in self._schedulers:
            self._schedulers[executor] = Scheduler(
                self.backends, executor=executor, ray_address=self.settings.ray_address
            )
        return self._schedulers[executor]

    def encoder(self, name: str = DEFAULT_ENCODER) -> Encoder:
        """The named encoder (one per name), caching its embeddings under the settings' cache dir."""
        if name not in self._encoders:
            from coe.embed import make_encoder

            self._encoders[name] = make_encoder(name, cache_dir=self.settings.cache_dir)
        return self._encoders[name]

    def flush(self) -> None:
        """Write what the encoders' caches hold in memory (embeddings of recent questions) to disk."""
        for encoder in self._encoders.values():
            encoder.flush()

    def annotator(self, bench: str | None, encoder: str = DEFAULT_ENCODER) -> SkillAnnotator:
        """The embedding skill annotator over the benchmark's taxonomy (every taxonomy for None)."""
        key = (bench or "", encoder)
        if key not in self._annotators:
            from coe.skills import EmbeddingAnnotator, bundled_taxonomy

            names = {"mmlu-pro": ("mmlu_pro",), "gpqa": ("gpqa",)}.get(key[0], ())
            self._annotators[key] = EmbeddingAnnotator(bundled_taxonomy(*names), self.encoder(encoder))
        return self._annotators[key]

    def pool(self, ref: str | Path) -> Registry:
        return load_pool(ref, store=self.store, data_dir=self.settings.data_dir)

    def benchmark(self, bench: str, gpqa_subset: str = "diamond") -> list[Query]:
        key = (bench, gpqa_subset if bench == "gpqa" else "")
        if key not in self._benchmarks:
            self._benchmarks[key] = load_benchmark(bench, self.settings.data_dir, subset=gpqa_subset)
        return self._benchmarks[key]

    def split(self, source: SplitProfile) -> Split:
        return make_split(
            source.split, self.benchmark(source.bench, source.gpqa_subset), source.bench, self.settings.data_dir
        )

    def profile_items(self, source: SplitProfile, split: Split | None = None) -> list[Query]:
        """The benchmark's questions the split profiles on, in the split's order."""
        by_id = {query.id: query for query in self.benchmark(source.bench, source.gpqa_subset)}
        return [by_id[i] for i in (split or self.split(source)).profile_ids]

    # ----------------------------------------------------------------------- the parts of a composition

    def profile(
        self,
        source: SplitProfile,
        registry: Registry,
        params: GenerationParams,
        *,
        annotate: bool = True,
        encoder: str = DEFAULT_ENCODER,
        scheduler: Scheduler | None = None,
    ) -> Profile:
        """Measure the pool on the split's profiling items, or reuse the stored profile of equal inputs."""
        from coe.profile import profile

        split = self.split(source)
        items = self.profile_items(source, split)
        description = f"profiling {len(items)} items × {len(registry)} experts (reused when stored)"
        with self.progress(description, len(items) * len(registry)) as on_progress:
            return profile(
                self.store,
                registry,
                bench=source.bench,
                split=split.spec,
                items=items,
                scheduler=scheduler or self.scheduler,
                params=params,
                annotator=self.annotator(source.bench, encoder) if annotate else None,
                keep_text=not is_redacted(source.bench),
                on_progress=on_progress,
            )

    def outcomes(
        self,
        source: ProfileSource,
        registry: Registry,
        params: GenerationParams,
        *,
        annotate: bool = True,
        encoder: str = DEFAULT_ENCODER,
        scheduler: Scheduler | None = None,
    ) -> tuple[Outcomes, str | None]:
        """The outcomes a router fits on, and the benchmark they were measured on (None for priors)."""
        if source == "priors":
            return Outcomes.from_priors(registry.experts), None
        if isinstance(source, SplitProfile):
            measured = self.profile(source, registry, params, annotate=annotate, encoder=encoder, scheduler=scheduler)
            return measured.outcomes, source.bench
        if isinstance(source, KShotProfile):
            return self.kshot_outcomes(source, registry, params, scheduler=scheduler), source.bench
        from coe.profile import check_profile_covers, find_profile, stored_outcomes

        assert isinstance(source, StoredProfile)
        record = find_profile(self.store, source.stored)
        check_profile_covers(record, registry)
        # every GPQA item is in `extended`, with the same option order as in the smaller subsets
        by_id = {query.id: query for query in self.benchmark(record.bench, "extended")}
        from coe.store import ProfileStore

        items = [by_id[item.item_id] for item in ProfileStore(self.store).items(record.id)]
        return stored_outcomes(self.store, record, registry, items), record.bench

    def kshot_examples(self, source: KShotProfile) -> list[Query]:
        """The K labelled examples a K-shot source names: its file's, or drawn from a split's profiling items."""
        if source.examples is not None:
            return load_examples(Path(source.examples))
        assert source.bench is not None and source.kshot is not None
        split = SplitProfile(bench=source.bench, split=source.split, gpqa_subset=source.gpqa_subset)
        items = self.profile_items(split)
        drawn = draw_examples(items, source.kshot, source.seed, source.category)
        if not drawn:
            raise ConfigError(f"no profiling item of category {source.category!r} in {source.bench} {source.split}")
        return drawn

    def kshot_outcomes(
        self, source: KShotProfile, registry: Registry, params: GenerationParams, *, scheduler: Scheduler | None = None
    ) -> Outcomes:
        """Every expert of the pool on the K examples, now (expert-batched: adapters of a base share one load)."""
        from coe.profile import measure

        examples = self.kshot_examples(source)
        with self.progress(
            f"{len(examples)} K-shot examples × {len(registry)} experts", len(examples) * len(registry)
        ) as on_progress:
            correct, _ = measure(registry, examples, scheduler or self.scheduler, params, on_progress)
        return Outcomes(tuple(registry.experts), tuple(examples), correct)

    def router(
        self,
        spec: RouterSpec,
        outcomes: Outcomes,
        *,
        k: int,
        seed: int,
        bench: str | None,
        encoder: str = DEFAULT_ENCODER,
    ) -> Router:
        """The named router with its hyperparameters, fitted on `outcomes` for `k` experts per query;
        the embedding routers (and skill's annotator) use the named encoder."""
        collaborators: dict[str, Any] = {"random_state": seed, "k": k}
        takes = make_router(spec.name).get_params()
        if "encoder" in takes:
            collaborators["encoder"] = self.encoder(encoder)
        if "annotator" in takes:
            collaborators["annotator"] = self.annotator(bench, encoder)
        router = make_router(spec.name, **collaborators)
        try:
            router.set_params(**spec.params)
        except ValueError as error:
            raise ConfigError(f"router {spec.name!r}: {error}") from error
        return router.fit(outcomes)

    def aggregator(
        self,
        spec: AggregatorSpec,
        registry: Registry,
        bench: str | None,
        *,
        scheduler: Scheduler | None = None,
        routers: Sequence[Router] = (),
        outcomes: Outcomes | None = None,
        params: GenerationParams | None = None,
        seed: int = 0,
    ) -> Aggregator:
        """The named aggregator; `stacked` is trained for `routers` on the profiling `outcomes`."""
        if spec.name == "stacked":
            return self.stacked(routers, outcomes, params or GenerationParams(), seed)
        if spec.name != "llm":
            return make_aggregator(spec.name)
        expert = spec.expert
        if expert is None and bench is not None:
            from coe.store import latest_aggregator_choice

            stored = latest_aggregator_choice(self.store, pool=registry.source, bench=bench)
            expert = stored.expert_id if stored else None
        holder = self.pool(spec.pool) if spec.pool else registry
        return make_aggregator("llm", registry=holder, scheduler=scheduler or self.scheduler, expert=expert)

    def stacked(
        self, routers: Sequence[Router], outcomes: Outcomes | None, params: GenerationParams, seed: int
    ) -> StackedVote:
        """The stacked aggregator, cross-fitted for each router on the profiling items (recorded experts'
        letters are read again from their recordings: a profile keeps no text for them)."""
        from coe.stacked import StackedVote

        return StackedVote(random_state=seed).fit(routers, self.answered(outcomes, params, "the stacked aggregator"))

    def answered(self, outcomes: Outcomes | None, params: GenerationParams, needed_by: str) -> Outcomes:
        """The profiling outcomes with every expert's letters (recorded experts' read again from their
        recordings, at no cost: a profile keeps no text for them)."""
        if outcomes is None or outcomes.is_empty:
            raise ConfigError(f"{needed_by} learns from profiling items: give a profile, not priors")
        from coe.profile import with_recorded_answers

        return with_recorded_answers(outcomes, self.scheduler, params)

    def compose(self, spec: CompositionSpec) -> Composer:
        """A fitted, ready Composer."""
        registry = self.pool(spec.pool)
        params = spec.generation.params()
        scheduler = self.scheduler_for(spec.executor)
        outcomes, bench = self.outcomes(
            spec.profile,
            registry,
            params,
            annotate=spec.router.name == "skill",
            encoder=spec.encoder,
            scheduler=scheduler,
        )
        router = self.router(spec.router, outcomes, k=spec.k, seed=spec.seed, bench=bench, encoder=spec.encoder)
        policy = KPolicy.parse(spec.k_policy)
        composer = Composer(
            registry,
            router=router,
            aggregator=self.aggregator(
                spec.aggregator,
                registry,
                bench,
                scheduler=scheduler,
                routers=[router],
                outcomes=outcomes,
                params=params,
                seed=spec.seed,
            ),
            backends=self.backends,
            scheduler=scheduler,
            params=params,
            recovery=spec.recovery,
            k_policy=policy,
            max_cost_usd=spec.max_cost_usd,
        )
        self.fit_policy(composer, [router], outcomes, params)
        return composer

    def fit_policy(
        self, composer: Composer, routers: Sequence[Router], outcomes: Outcomes, params: GenerationParams
    ) -> None:
        """Give the composer what its k policy reads: the experts' measured reliability for a threshold,
        and each router's threshold for a budget of calls (`coe.policy.calibrate`)."""
        policy = composer.k_policy
        if policy.threshold is None and policy.budget is None:
            return
        answered = self.answered(outcomes, params, f"the k policy {policy}")
        from coe.stacked import measure_reliability

        composer.reliability = measure_reliability(answered)

        def asked(items: Sequence[Query], routes: list[Route]) -> list[Route]:
            return composer.capped(items, routes, params)

        composer.calibrated = {r.name: calibrate(policy, r, answered, composer.reliability, asked) for r in routers}


@contextmanager
def _no_progress(description: str, total: int) -> Iterator[ProgressCallback]:
    yield lambda n: None
