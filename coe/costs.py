"""What expert calls cost at the registry's prices, and what a query may spend before it is asked: one
estimate for every face (the per-query cap of a composition and `coe eval --max-cost-usd`, the
service's per-request `max_cost_usd`, the estimated cost of recorded answers)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from coe.answers import question_prompt
from coe.errors import ConfigError
from coe.recovery import restricted
from coe.schema import ExpertChoice, ExpertSpec, Query, Route

CHARS_PER_TOKEN = 4
"""Characters per token where no tokenizer counts them (English text, roughly)."""


def usd(expert: ExpertSpec, n_tokens: float) -> float:
    """`n_tokens` at the expert's registry price (USD per million tokens)."""
    return n_tokens * expert.cost_per_mtok / 1e6


def call_cost_bound(expert: ExpertSpec, n_chars: int, max_tokens: int) -> float:
    """The most one call may cost before it is made: the prompt at about four characters a token plus
    the whole generation budget."""
    return usd(expert, n_chars / CHARS_PER_TOKEN + max_tokens)


def call_cost_bounds(experts: Iterable[ExpertSpec], n_chars: int, max_tokens: int) -> dict[str, float]:
    """`call_cost_bound` of each expert, by id."""
    return {expert.id: call_cost_bound(expert, n_chars, max_tokens) for expert in experts}


def query_cost_bounds(experts: Iterable[ExpertSpec], query: Query, max_tokens: int) -> dict[str, float]:
    """`call_cost_bound` of each expert for the prompt every expert is asked for `query`, by id."""
    return call_cost_bounds(experts, len(question_prompt(query).text), max_tokens)


def affordable(bounds: Mapping[str, float], max_cost_usd: float, query_id: str) -> set[str]:
    """The experts whose call alone fits the cap; a query none fits is refused rather than asked of none."""
    fitting = {expert for expert, bound in bounds.items() if bound <= max_cost_usd}
    if not fitting:
        cheapest = min(bounds, key=bounds.__getitem__)
        raise ConfigError(
            f"max cost {max_cost_usd:g} USD per query (--max-cost-usd, max_cost_usd) admits no expert for query "
            f"{query_id!r}: the cheapest, {cheapest}, may cost {bounds[cheapest]:.6f} USD (its prompt plus the "
            "whole generation budget); raise the cap or lower max_tokens"
        )
    return fitting


def within_cost(route: Route, bounds: Mapping[str, float], max_cost_usd: float) -> Route:
    """The route under a per-query cap: experts whose call alone may cost more are never asked (the
    next-ranked ones that fit take their places, as for any restriction); then, best-ranked first, the
    picks whose bounds together fit are kept and the others dropped (fewer calls), and the fallbacks
    that still fit beside them are kept as replacements, so even a query whose failed calls were billed
    stays within the cap. Refuses a query no expert fits (`affordable`)."""
    ranked = [*route.experts, *route.fallbacks]
    fitting = affordable({choice.expert: bounds[choice.expert] for choice in ranked}, max_cost_usd, route.query_id)
    allowed = restricted(route, fitting)
    taken: list[ExpertChoice] = []
    spent = 0.0
    for choice in (*allowed.experts, *allowed.fallbacks):
        if spent + bounds[choice.expert] <= max_cost_usd:
            taken.append(choice)
            spent += bounds[choice.expert]
    picks = tuple(choice for choice in taken if choice in allowed.experts)
    spares = tuple(choice for choice in taken if choice not in picks)
    if picks == route.experts:
        return route.model_copy(update={"fallbacks": spares})
    most = sum(bounds[choice.expert] for choice in picks)
    reason = f"{route.reason}; {len(picks)} expert(s) within {max_cost_usd:g} USD (at most {most:.6f} USD)"
    return route.model_copy(update={"experts": picks, "fallbacks": spares, "reason": reason})
