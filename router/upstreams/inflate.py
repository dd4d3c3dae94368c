"""Inflating a compressed upstream body as it is read, for both upstream clients.

A compressed stream that stops before its end is an error (`UpstreamReset`), never a shorter
body passed on as complete: aiohttp's own decoder checks that for deflate only, so its client
reads bodies raw (`auto_decompress=False`) and inflates them here, as the lean client does.
Each step turns out at most INFLATE_PIECE bytes (br's buffer may reach twice that): a few
hundred KiB of a gzip bomb would otherwise become hundreds of MiB in one call, before any
reader's size limit could see them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import brotli

from router.errors import UpstreamError, UpstreamReset

INFLATE_PIECE = 1024 * 1024  # the most one inflating step turns out
GZIP_WBITS = 16 + zlib.MAX_WBITS
GZIP_MAGIC = b"\x1f\x8b"  # how a gzip member begins
MAX_MEMBERS = 1024  # concatenated members in one body, as aiohttp's MAX_DECOMPRESS_MEMBERS


class Inflater(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]:
        """`data` inflated, in pieces of at most INFLATE_PIECE bytes (br: twice that)."""
        ...

    def end(self) -> bytes:
        """The last inflated bytes; raises if the compressed stream did not reach its end."""
        ...


def inflater_for(coding: str, where: str, offered: tuple[str, ...]) -> Inflater | None:
    """The inflater for a Content-Encoding header value; None for none (identity). A coding
    not `offered` raises: relayed as it is, it would look like plain text. `identity` in a
    list (`gzip, identity`) is no coding; two real ones stacked are not inflated."""
    codings = [
        c for c in (c.strip().lower() for c in coding.split(",")) if c not in ("", "identity")
    ]
    if not codings:
        return None
    coding = codings[0]
    if len(codings) > 1 or coding not in offered:
        raise UpstreamError(f"{where}: response in an encoding not offered")
    if coding == "br":
        return BrotliInflater(where)
    return ZlibInflater(coding, where)


class ZlibInflater:
    """gzip (each of its members: concatenated ones are one body) or deflate, with or without
    its zlib header (a raw one, as aiohttp accepts it)."""

    def __init__(self, coding: str, where: str) -> None:
        self._where = where
        self._wbits = zlib.MAX_WBITS if coding == "deflate" else GZIP_WBITS
        self._sniff = coding == "deflate"  # the first byte tells zlib-wrapped from raw
        self._decompress = zlib.decompressobj(self._wbits)
        self._fed = False  # any compressed byte at all
        self._members = 1
        self._held = b""  # bytes after a gzip member too few to tell whether another begins
        self._ignoring = False  # the bytes after the end begin no member: trailing garbage

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data or self._ignoring:
            return
        if self._sniff:
            self._sniff = False
            if data[0] & 0x0F != 8:
                self._wbits = -zlib.MAX_WBITS
                self._decompress = zlib.decompressobj(self._wbits)
        self._fed = True
        while data:
            if self._decompress.eof:
                data, self._held = self._held + data, b""
                if self._wbits != GZIP_WBITS or data[: len(GZIP_MAGIC)] != GZIP_MAGIC[: len(data)]:
                    # Bytes after a whole, checked stream that begin no gzip member (NUL
                    # padding, a newline): ignored, as browsers and the lean client before
                    # did, not a 502 for an intact answer.
                    self._ignoring = True
                    return
                if len(data) < len(GZIP_MAGIC):
                    self._held = data
                    return
                # Another member after the end of one (concatenated gzip): as aiohttp and
                # Python's gzip module read them, one body; as many as aiohttp takes.
                self._members += 1
                if self._members > MAX_MEMBERS:
                    raise UpstreamError(f"{self._where}: response not decodable")
                self._decompress = zlib.decompressobj(self._wbits)
            try:
                out = self._decompress.decompress(data, INFLATE_PIECE)
            except zlib.error:
                raise UpstreamError(f"{self._where}: response not decodable") from None
            data = self._decompress.unconsumed_tail or self._decompress.unused_data
            if out:
                yield out

    def end(self) -> bytes:
        # No compressed byte at all (HEAD, 204, an empty body) is an empty body, not a
        # compressed stream cut short.
        if not self._fed:
            return b""
        try:
            tail = self._decompress.flush()
        except zlib.error:
            raise UpstreamError(f"{self._where}: response not decodable") from None
        if not self._decompress.eof:
            raise UpstreamReset(f"{self._where}: compressed response ended early")
        return tail


class BrotliInflater:
    """br (RFC 7932), which aiohttp's client offers when brotli is installed (a dependency)."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._decompress = brotli.Decompressor()
        self._fed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._fed = True
        if self._decompress.is_finished():
            raise UpstreamError(f"{self._where}: response not decodable")  # bytes past its end
        try:
            # One call turns out one buffer's worth (at most INFLATE_PIECE) and holds the rest
            # of its input: empty input brings the rest, until there is none.
            while out := self._decompress.process(data, output_buffer_limit=INFLATE_PIECE):
                yield out
                data = b""
                if self._decompress.is_finished():
                    break
        except brotli.error:
            raise UpstreamError(f"{self._where}: response not decodable") from None

    def end(self) -> bytes:
        if self._fed and not self._decompress.is_finished():
            raise UpstreamReset(f"{self._where}: compressed response ended early")
        return b""
