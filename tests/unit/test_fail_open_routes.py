"""Which routes a bundle's `fail_open_paths` covers: whole path segments, never a longer name."""

from __future__ import annotations

import pytest

from router.stages.classify import fails_open


@pytest.mark.parametrize(
    ("path", "routes", "covered"),
    [
        ("/v1/chat/completions", ("/v1/chat/",), True),
        ("/v1/chat/completions?x=1", ("/v1/chat/completions",), True),
        ("/v2/models/cam/infer", ("/v2/models/cam",), True),
        ("/v2/models/camera_pii/infer", ("/v2/models/cam",), False),
        ("/v1/chat/completions", ("/v1/chat/completion",), False),
        ("/v1/embeddings", ("/v1/chat/",), False),
        ("/v1/embeddings", (), False),
    ],
)
def test_routes_cover_whole_segments(path: str, routes: tuple[str, ...], covered: bool) -> None:
    """A route covers itself and what lies under it; a model whose name merely starts with a
    fail-open model's name still fails closed."""
    assert fails_open(path, routes) is covered
