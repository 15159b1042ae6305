"""The service's compositions, every one built by its one `CompositionBuilder`: `coe` (the service's
composition), `coe/<router>` (the same with another router), per-request k or aggregator variants,
and a plain proxy per expert (best-single pinned to it). Built on first use and kept (a bounded
number; they share the builder's scheduler, backends and encoder, so dropping one frees little)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from coe.compose import AggregatorSpec, CompositionBuilder, CompositionSpec, RouterSpec
from coe.composer import Composer
from coe.errors import ConfigError
from coe.registry import Registry
from coe.routers import ROUTERS

logger = logging.getLogger(__name__)

SERVED_ROUTERS = tuple(name for name in sorted(ROUTERS) if name != "oracle")
"""The oracle needs each question's right answer: an upper bound for evaluation, not a router to serve."""


class Compositions:
    def __init__(
        self,
        builder: CompositionBuilder,
        spec: CompositionSpec,
        *,
        synthesizer: str | None = None,
        capacity: int = 32,
    ) -> None:
        self.builder = builder
        self.spec = spec
        self.synthesis: AggregatorSpec | None = AggregatorSpec(name="llm", expert=synthesizer)
        """How free-form questions with k > 1 are fused; None once the llm aggregator proved unavailable."""
        self.capacity = capacity
        self._composers: OrderedDict[str, Composer] = OrderedDict()
        self._lock = threading.Lock()
        self._spec_key = spec.model_dump_json()

    @property
    def registry(self) -> Registry:
        return self.composer(self.spec).registry

    def key(self, spec: CompositionSpec) -> str:
        """A composition's identity (the service's own is computed once: most requests use it)."""
        return self._spec_key if spec is self.spec else spec.model_dump_json()

    def models(self) -> list[str]:
        """Every `model` a request may name."""
        return ["coe", *(f"coe/{name}" for name in SERVED_ROUTERS), *self.registry]

    def variant(
        self, *, router: str | None = None, k: int | None = None, aggregator: str | None = None
    ) -> CompositionSpec:
        """The service's composition with another router, k or aggregator."""
        update: dict[str, object] = {}
        if router is not None and router != self.spec.router.name:
            update["router"] = RouterSpec(name=router)
        chosen = self.spec.router.name if router is None else router
        if k is not None and ROUTERS[chosen].picks_k:
            update["k"] = k
        if aggregator is not None and aggregator != self.spec.aggregator.name:
            update["aggregator"] = (
                self.synthesis if aggregator == "llm" and self.synthesis else AggregatorSpec(name=aggregator)
            )
        return self.spec.model_copy(update=update) if update else self.spec

    def proxy(self, expert: str) -> CompositionSpec:
        """A plain proxy: every question to `expert` (its declared priors are all it needs)."""
        return self.spec.model_copy(
            update={
                "router": RouterSpec(name="best-single", params={"expert": expert}),
                "k": 1,
                "profile": "priors",
                "aggregator": AggregatorSpec(name="majority"),
            }
        )

    def answering(self, spec: CompositionSpec, *, free_form: bool) -> tuple[CompositionSpec, Composer]:
        """The composition that answers: a free-form question with more than one expert is fused by
        the llm aggregator when one is available (else the route's best answer is taken)."""
        composer = self.composer(spec)
        if not free_form or self.synthesis is None or spec.aggregator.name == "llm":
            return spec, composer
        if (composer.router.k or len(composer.registry)) <= 1:
            return spec, composer
        fused = spec.model_copy(update={"aggregator": self.synthesis})
        try:
            return fused, self.composer(fused)
        except ConfigError as error:
            logger.warning("free-form questions take the top-ranked answer: no llm aggregator (%s)", error)
            self.synthesis = None
            return spec, composer

    def composer(self, spec: CompositionSpec) -> Composer:
        """The fitted Composer of `spec`, built by the builder on first use."""
        key = self.key(spec)
        with self._lock:
            composer = self._composers.get(key)
            if composer is None:
                composer = self.builder.compose(spec)
                self._composers[key] = composer
                while len(self._composers) > self.capacity:
                    self._composers.popitem(last=False)
            self._composers.move_to_end(key)
            return composer
