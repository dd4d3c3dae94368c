"""Bundle sources as status and logs name them."""

from __future__ import annotations

from router.policy.source import HttpSource
from router.settings import BundleSourceSettings


async def test_credentials_in_a_source_url_are_never_shown() -> None:
    """user:password in the URL is used to fetch but left out of the name status shows."""
    source = HttpSource(BundleSourceSettings(url="https://ops:canary-pw@central.example/b.tar.gz"))
    try:
        assert "canary-pw" not in source.name
        assert source.name == "https://central.example/b.tar.gz"
    finally:
        await source.close()
