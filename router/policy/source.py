"""Bundle sources: an HTTP(S) URL asked with If-None-Match (304: unchanged), or a local path
(a bundle folder or a .tar.gz) whose content digest serves as its ETag."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

from router.errors import BundleRejected, UpstreamError, UpstreamResponseTooLarge
from router.policy.archive import pack, read_folder, unpack
from router.policy.signing import Files
from router.settings import BundleSourceSettings
from router.upstreams.client import HttpTransport, UpstreamRequest, plain_session
from router.upstreams.tls import ClientTls


@dataclass(frozen=True, slots=True)
class Fetched:
    files: Files
    archive: bytes  # what is kept on disk as the last good bundle
    etag: str | None


class Source(Protocol):
    name: str

    async def fetch(self, etag: str | None) -> Fetched | None:
        """The bundle, or None when it is unchanged since `etag`; BundleRejected on failure."""
        ...

    async def close(self) -> None: ...


class HttpSource:
    def __init__(self, settings: BundleSourceSettings) -> None:
        assert settings.url is not None
        self.url = settings.url
        # What logs and status show: never credentials written into the URL.
        self.name = str(URL(settings.url).with_user(None))
        self._settings = settings
        tls = ClientTls(settings.tls, "policy.source.tls") if settings.tls else None
        self._transport = HttpTransport(plain_session(), tls)

    async def fetch(self, etag: str | None) -> Fetched | None:
        s = self._settings
        headers = dict(s.headers)
        if etag:
            headers["If-None-Match"] = etag
        request = UpstreamRequest("GET", self.url, headers, b"")
        try:
            async with asyncio.timeout(s.timeout_s):
                response = await self._transport.send(request, "bundle source", s.timeout_s)
                body = await response.read(s.max_bytes)
        except UpstreamResponseTooLarge:
            raise BundleRejected(
                f"bundle server answered more than policy.source.max_bytes ({s.max_bytes} bytes)"
            ) from None
        except (UpstreamError, TimeoutError) as exc:
            # Only our own wording: an upstream's message is never quoted.
            raise BundleRejected(f"bundle server unreachable ({type(exc).__name__})") from None
        if response.status == 304:
            return None
        if response.status != 200:
            raise BundleRejected(f"bundle server answered HTTP {response.status}")
        files = await asyncio.to_thread(unpack, body, s.max_bytes)
        return Fetched(files, body, response.headers.get("ETag"))

    async def close(self) -> None:
        await self._transport.close()


class PathSource:
    def __init__(self, settings: BundleSourceSettings) -> None:
        assert settings.path is not None
        self.path = settings.path
        self.name = str(settings.path)
        self._max_bytes = settings.max_bytes

    async def fetch(self, etag: str | None) -> Fetched | None:
        fetched = await asyncio.to_thread(self.read)
        return None if fetched.etag == etag else fetched

    def read(self) -> Fetched:
        """The bundle as it is now (blocking file I/O), its content digest as the ETag."""
        if self.path.is_dir():
            files = read_folder(self.path, self._max_bytes)
            archive = pack(files)
        else:
            try:
                archive = self.path.read_bytes()
            except OSError as exc:
                raise BundleRejected(f"cannot read {self.path}: {exc.strerror or exc}") from None
            try:
                files = unpack(archive, self._max_bytes)
            except BundleRejected as exc:  # the operator must learn which file is meant
                raise BundleRejected(f"{self.path}: {exc.reason}") from None
        return Fetched(files, archive, '"' + hashlib.sha256(archive).hexdigest()[:32] + '"')

    async def close(self) -> None:
        return None


def source_for(settings: BundleSourceSettings) -> Source:
    return HttpSource(settings) if settings.url is not None else PathSource(settings)
