"""What happens when an expert fails, for every face at once: a picked expert whose generation failed
(after its backend's own retries, the one retry layer), or that is to be avoided (cooling down), is
replaced by the next expert its route ranks; the failed call is never made again. A `Lineup` tracks
this for one query and router; `StreamSinks` knows which streamed answers already began (those are
never replaced: their text is out)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from coe.schema import Fallback, Frozen, Route
from coe.types import Failure, Generation

ExpertSink = Callable[[str, str], None]
"""`on_text(expert, text)`: a piece of a streamed answer and the expert writing it."""


class Recovery(Frozen):
    """What the Composer does when an expert's generation fails (retries are the backend's, not here)."""

    replace: bool = True
    """Replace a picked expert that still fails by the next expert its route ranks."""


def restricted(route: Route, allowed: Collection[str]) -> Route:
    """The route over `allowed` experts only: its best-ranked allowed experts, as many as it picked."""
    ranked = [choice for choice in (*route.experts, *route.fallbacks) if choice.expert in allowed]
    k = len(route.experts)
    return route.model_copy(
        update={
            "experts": tuple(ranked[:k]),
            "fallbacks": tuple(ranked[k:]),
            "reason": f"{route.reason}; restricted to {len(allowed)} expert(s)",
        }
    )


class Lineup:
    """Who answers one query for one router: the route's picks in order, each one that fails (or is
    avoided) followed by its replacement, the next expert the route ranks."""

    def __init__(self, route: Route, avoid: Mapping[str, Failure], replace: bool, asked: int | None = None) -> None:
        self.called: list[str] = []
        """The experts asked, in route order (a replacement right after the expert it replaces)."""
        self.fallbacks: list[Fallback] = []
        self._spare = [choice.expert for choice in route.fallbacks] if replace else []
        self._avoid = avoid
        self._replace = replace
        self._settled: set[str] = set()
        picks = route.expert_ids
        self._later = list(picks[asked:]) if asked is not None else []
        """Picks a k policy has not asked yet (`ask_next` asks them one at a time)."""
        for expert in picks[:asked]:
            self._ask(expert)

    @property
    def remaining(self) -> int:
        """Picks not asked yet."""
        return len(self._later)

    def ask_next(self) -> None:
        """Ask the next pick not asked yet (a k policy found the answers so far not enough)."""
        if self._later:
            self._ask(self._later.pop(0))

    def _ask(self, expert: str) -> None:
        if expert not in self._avoid:
            self.called.append(expert)
            return
        replacement = self._replacement()
        self.fallbacks.append(Fallback(expert=expert, error=self._avoid[expert], replacement=replacement))
        self.called.extend([replacement] if replacement else [])

    def settle(
        self,
        index: int,
        generations: Mapping[tuple[str, int], Generation],
        emitted: Callable[[str, int], bool],
    ) -> None:
        """Replace each newly failed expert (not one whose streamed answer already began)."""
        for expert in list(self.called):
            generation = generations.get((expert, index))
            if generation is None or generation.error is None or expert in self._settled:
                continue
            self._settled.add(expert)
            if not self._replace or emitted(expert, index):
                continue
            replacement = self._replacement()
            self.fallbacks.append(Fallback(expert=expert, error=generation.error, replacement=replacement))
            if replacement:
                self.called.insert(self.called.index(expert) + 1, replacement)

    def _replacement(self) -> str | None:
        while self._spare:
            expert = self._spare.pop(0)
            if expert not in self._avoid and expert not in self.called:
                return expert
        return None

    def route_of_answers(self, route: Route) -> Route:
        """The route as the aggregator should weigh it: the experts that were asked, with their scores."""
        if self.called == list(route.expert_ids):
            return route
        scores = {choice.expert: choice for choice in (*route.experts, *route.fallbacks)}
        return route.model_copy(update={"experts": tuple(scores[expert] for expert in self.called)})


class StreamSinks:
    """Text sinks of streamed queries (those whose route picks one expert), and whether each
    (expert, query) began its stream: a stream that began cannot be retried or replaced."""

    def __init__(self, stream: Mapping[int, ExpertSink], lineups: Mapping[str, Sequence[Lineup]]) -> None:
        self._stream = {
            index: sink
            for index, sink in stream.items()
            if all(len(per_query[index].called) <= 1 for per_query in lineups.values())
        }
        self._began: set[tuple[str, int]] = set()

    def sink(self, expert: str, index: int) -> Callable[[str], None] | None:
        target = self._stream.get(index)
        if target is None:
            return None

        def on_text(text: str) -> None:
            self._began.add((expert, index))
            target(expert, text)

        return on_text

    def emitted(self, expert: str, index: int) -> bool:
        return (expert, index) in self._began
