"""The service's request log round-trips through the database, oldest first, without prompts unless kept."""

from datetime import timedelta
from pathlib import Path

from coe.store import RequestLog, ServedRequest, Store
from coe.store.database import now


def test_served_requests_round_trip_in_order_and_filter_by_time(database_url: str, tmp_path: Path) -> None:
    log = RequestLog(Store(database_url))
    earlier = now() - timedelta(hours=2)
    log.add(
        [
            ServedRequest(model="coe", status=200, router="knn", experts=("a", "b"), created_at=earlier),
            ServedRequest(
                model="coe/skill", status=503, error_kind="unavailable", fallbacks=(("a", "c"),), key_name="team"
            ),
        ]
    )
    everything = log.since()
    assert [(r.model, r.status) for r in everything] == [("coe", 200), ("coe/skill", 503)]
    assert everything[0].experts == ("a", "b") and everything[1].fallbacks == (("a", "c"),)
    assert everything[1].key_name == "team" and everything[1].prompt is None
    assert [r.model for r in log.since(now() - timedelta(hours=1))] == ["coe/skill"]
