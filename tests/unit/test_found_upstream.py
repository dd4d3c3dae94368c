"""Reading what a previous router found (X-Layer-Router-Found): entity types only, bounded, and
anything that is not a name fails closed as an unknown (strictest) entity."""

from __future__ import annotations

from collections import Counter

from router.stages.classify import MAX_FOUND_UPSTREAM, UNKNOWN_ENTITY, found_upstream


def test_names_are_read_once_each() -> None:
    """A list of entity types gives each once; an absent or empty header gives none."""
    assert found_upstream("EMAIL, CARD,EMAIL") == Counter({"EMAIL": 1, "CARD": 1})
    assert found_upstream(None) == Counter()
    assert found_upstream("") == Counter()


def test_garbled_names_count_as_unknown() -> None:
    """A value that is not an entity name is kept as an unknown entity, not dropped."""
    assert found_upstream("EMAIL,not a name!,") == Counter({"EMAIL": 1, UNKNOWN_ENTITY: 1})


def test_too_many_names_count_as_unknown() -> None:
    """Past the cap the rest is not read, and its presence is an unknown entity."""
    raw = ",".join(f"E{i}" for i in range(MAX_FOUND_UPSTREAM + 5))
    found = found_upstream(raw)
    assert len(found) == MAX_FOUND_UPSTREAM + 1
    assert UNKNOWN_ENTITY in found
