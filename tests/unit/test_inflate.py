"""Inflating compressed upstream bodies (router/upstreams/inflate.py), shared by both upstream
clients: whole streams inflate byte for byte, in bounded pieces; a stream cut short or holding
bytes that do not decode is an error, never a shorter body."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable

import brotli
import pytest

from router.errors import UpstreamError, UpstreamReset
from router.upstreams.inflate import INFLATE_PIECE, MAX_MEMBERS, Inflater, inflater_for

OFFERED = ("gzip", "x-gzip", "deflate", "br")
BODY = random.Random(3).randbytes(64 * 1024).hex().encode()


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw-deflate": raw_deflate,
    "br": brotli.compress,
}


def inflater(coding: str) -> Inflater:
    made = inflater_for("deflate" if coding == "raw-deflate" else coding, "test", OFFERED)
    assert made is not None
    return made


def inflate(coding: str, encoded: bytes, piece: int = 4096) -> bytes:
    """`encoded` fed in `piece`-byte reads, then ended."""
    made = inflater(coding)
    out = bytearray()
    for start in range(0, len(encoded), piece):
        for chunk in made.feed(encoded[start : start + piece]):
            out += chunk
    return bytes(out + made.end())


@pytest.mark.parametrize("coding", CODINGS)
def test_a_whole_stream_inflates_byte_for_byte(coding: str) -> None:
    """Fed in small reads or in one, a whole stream is the body it was made from."""
    encoded = CODINGS[coding](BODY)
    assert inflate(coding, encoded) == BODY
    assert inflate(coding, encoded, len(encoded)) == BODY


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("short_by", [1, 4, 200])
def test_a_stream_cut_short_is_a_reset(coding: str, short_by: int) -> None:
    """A stream missing its last bytes (its gzip trailer alone, even) raises at its end."""
    encoded = CODINGS[coding](BODY)[:-short_by]
    with pytest.raises(UpstreamReset, match="ended early"):
        inflate(coding, encoded)


@pytest.mark.parametrize("coding", CODINGS)
def test_no_byte_at_all_is_an_empty_body(coding: str) -> None:
    """A HEAD, a 204, an empty body: nothing fed is nothing, not a stream cut short."""
    made = inflater(coding)
    assert list(made.feed(b"")) == []
    assert made.end() == b""


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_bytes_that_do_not_decode_are_an_error(coding: str) -> None:
    """A checksum that does not match, or bytes that are no stream, are not decodable."""
    encoded = bytearray(CODINGS[coding](BODY))
    encoded[len(encoded) // 2] ^= 0xFF
    with pytest.raises(UpstreamError, match="not decodable"):
        inflate(coding, bytes(encoded))
    with pytest.raises(UpstreamError, match="not decodable"):
        inflate(coding, b"\x1f\x8b\x09" + bytes(64))


def test_bytes_past_the_end_of_a_br_stream_are_an_error() -> None:
    """br has one stream per body: more bytes after its end do not decode."""
    with pytest.raises(UpstreamError, match="not decodable"):
        inflate("br", brotli.compress(BODY) + b"more", piece=1 << 20)


def test_concatenated_gzip_members_are_one_body() -> None:
    """Two gzip members one after the other are both inflated, as gzip itself reads them."""
    encoded = gzip.compress(BODY[:1000]) + gzip.compress(BODY[1000:])
    assert inflate("gzip", encoded, 333) == BODY
    assert inflate("gzip", encoded, len(encoded)) == BODY


def test_too_many_members_are_an_error() -> None:
    """More members than aiohttp takes (a cheap way to cost a decoder each) are refused."""
    member = gzip.compress(b"x")
    assert inflate("gzip", member * MAX_MEMBERS, 1 << 20) == b"x" * MAX_MEMBERS
    with pytest.raises(UpstreamError, match="not decodable"):
        inflate("gzip", member * (MAX_MEMBERS + 1), 1 << 20)


@pytest.mark.parametrize(("coding", "bound"), [("gzip", 1), ("deflate", 1), ("br", 2)])
def test_a_bomb_inflates_in_bounded_pieces(coding: str, bound: int) -> None:
    """16 MiB of zeros, a few KiB compressed, fed in one read: no piece over INFLATE_PIECE
    (br's buffer may reach twice it), so a reader's limit sees the bytes as they come."""
    size = 16 * 1024 * 1024
    encoded = CODINGS[coding](bytes(size))
    made = inflater(coding)
    pieces = [len(piece) for piece in made.feed(encoded)]
    assert made.end() == b""
    assert sum(pieces) == size
    assert max(pieces) <= bound * INFLATE_PIECE
    assert len(pieces) >= size // (bound * INFLATE_PIECE)


def test_codings_not_offered_are_refused_and_identity_is_none() -> None:
    """No inflater for identity or none; a coding not offered is an upstream error."""
    assert inflater_for("", "test", OFFERED) is None
    assert inflater_for(" Identity ", "test", OFFERED) is None
    assert inflater_for("GZIP", "test", OFFERED) is not None
    with pytest.raises(UpstreamError, match="not offered"):
        inflater_for("br", "test", ("gzip", "deflate"))
    with pytest.raises(UpstreamError, match="not offered"):
        inflater_for("zstd", "test", OFFERED)


def test_identity_in_a_coding_list_is_no_coding() -> None:
    """`gzip, identity` (identity listed, as RFC 9110 allows) is gzip; a list of identities is
    none; two real codings stacked are refused, never relayed half decoded."""
    made = inflater_for("gzip, identity", "test", OFFERED)
    assert made is not None
    assert b"".join(made.feed(gzip.compress(BODY))) + made.end() == BODY
    assert inflater_for("Identity ,GZIP", "test", OFFERED) is not None
    assert inflater_for("identity, identity", "test", OFFERED) is None
    with pytest.raises(UpstreamError, match="not offered"):
        inflater_for("gzip, gzip", "test", OFFERED)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
@pytest.mark.parametrize("trailing", [b"\n", bytes(8), b"\x1f", b"garbage!"])
@pytest.mark.parametrize("piece", [1, 4096, 1 << 20])
def test_bytes_after_a_whole_stream_that_begin_no_member_are_ignored(
    coding: str, trailing: bytes, piece: int
) -> None:
    """A whole gzip or deflate stream followed by bytes that begin no gzip member (a newline,
    NUL padding) is its body, as browsers read it: not a 502, nor a reset retried."""
    assert inflate(coding, CODINGS[coding](BODY) + trailing, piece) == BODY


def test_a_member_after_a_split_magic_is_still_inflated() -> None:
    """A second member whose two magic bytes arrive in two reads is inflated, not dropped."""
    first = gzip.compress(BODY[:1000])
    encoded = first + gzip.compress(BODY[1000:])
    made = inflater("gzip")
    out = bytearray()
    for part in (encoded[: len(first) + 1], encoded[len(first) + 1 :]):
        for chunk in made.feed(part):
            out += chunk
    assert bytes(out + made.end()) == BODY
