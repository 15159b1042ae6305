"""Small synthetic pools where the right expert is known: three experts, three topics of templated
questions (real text for the real MiniLM encoder), each topic answered right by one expert."""

import numpy as np

from coe.outcomes import Outcomes
from coe.schema import EmbeddedBackendSpec, ExpertSpec, Query

EXPERTS = tuple(
    ExpertSpec(
        id=name,
        base=name,
        backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"),
        cost_per_mtok=cost,
        skills={"overall": prior},
    )
    for name, cost, prior in (("alpha", 0.0, 0.2), ("beta", 1.0, 0.6), ("gamma", 3.0, 0.4))
)
TOPICS = {
    "math": ["Compute {n} plus {m}.", "Solve {n}x = {m} for x.", "What is {n} squared minus {m}?"],
    "biology": ["Which organelle of cell type {n} makes ATP?", "How many chromosomes does species {n} carry?"],
    "law": ["Is an oral contract for {n} dollars binding?", "Can a landlord evict tenant {n} without notice?"],
}
EXPERT_OF = {"math": 0, "biology": 1, "law": 2}
"""The expert right on every item of a topic (and only there)."""
NEW_QUERIES = (
    Query(id="m", text="Solve 7x = 22 for x.", category="math"),
    Query(id="b", text="Which organelle of a liver cell makes ATP?", category="biology"),
    Query(id="l", text="Is an oral contract for a house binding?", category="law"),
)
"""Unseen questions of each topic, in EXPERT_OF order."""


def topical_items(per_topic: int) -> list[Query]:
    items = []
    for topic, templates in TOPICS.items():
        for i in range(per_topic):
            text = templates[i % len(templates)].format(n=i + 2, m=3 * i + 1)
            items.append(Query(id=f"{topic}-{i}", text=text, category=topic))
    return items


def specialist_outcomes(per_topic: int) -> Outcomes:
    """Each topic's items right for its own expert only."""
    items = topical_items(per_topic)
    correct = np.zeros((len(items), len(EXPERTS)))
    for row, item in enumerate(items):
        correct[row, EXPERT_OF[item.category or ""]] = 1
    return Outcomes(EXPERTS, tuple(items), correct)


def signal_free_outcomes(per_topic: int, seed: int = 0) -> Outcomes:
    """Right at random with overall rates 0.3, 0.7, 0.5, whatever the topic: nothing local to find."""
    items = topical_items(per_topic)
    correct = (np.random.default_rng(seed).random((len(items), 3)) < [0.3, 0.7, 0.5]).astype(float)
    return Outcomes(EXPERTS, tuple(items), correct)
