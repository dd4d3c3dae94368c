"""HTTP/1.1 framing and desync vectors on raw sockets (TESTING.md S3): CL.TE, TE.CL, obfuscated
Transfer-Encoding, duplicate or malformed Content-Length, bare LF and CR, NUL, chunk sizes and
extensions, trailers, pipelining. Each is either rejected or served once, and the recording
fake upstream behind the router sees not one smuggled message (RFC 9112 §6.3)."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
import pytest

from router.testing import AppThread, FakeUpstream, RouterThread, chat_forwarding_settings

CHAT = "/v1/chat/completions"
FRONT = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "front"}]})
_INNER = orjson.dumps({"model": "gpt-test", "input": "SMUGGLED"})
SMUGGLED = (
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_INNER), _INNER)
)
IDLE_S = 1.5  # a vector's connection is over once the router says nothing for this long
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


def head(*headers: str, line: str = f"POST {CHAT} HTTP/1.1") -> bytes:
    return ("\r\n".join([line, "Host: router", "Content-Type: application/json", *headers])).encode(
        "latin-1"
    ) + b"\r\n\r\n"


def chunk(data: bytes, size: str | None = None) -> bytes:
    return (size or f"{len(data):x}").encode() + b"\r\n" + data + b"\r\n"


CHUNKED_FRONT = chunk(FRONT) + b"0\r\n\r\n"
TE = "Transfer-Encoding: chunked"


def cl(body: bytes) -> str:
    return f"Content-Length: {len(body)}"


@dataclass(frozen=True)
class Vector:
    name: str
    wire: bytes
    legit: int = 0  # well-formed requests in it, each to be served exactly once


ATTACKS = [
    # CL.TE and TE.CL: both framings present; whichever wins, the inner request must not run.
    Vector("cl-te", head(cl(CHUNKED_FRONT + SMUGGLED), TE) + CHUNKED_FRONT + SMUGGLED),
    Vector("te-cl", head(TE, cl(CHUNKED_FRONT)) + CHUNKED_FRONT + SMUGGLED),
    Vector("te-cl-short", head(TE, "Content-Length: 4") + CHUNKED_FRONT + SMUGGLED),
    Vector("cl-zero-te", head("Content-Length: 0", TE) + CHUNKED_FRONT + SMUGGLED),
    Vector("cl-te-lower", head(cl(FRONT), "transfer-encoding: chunked") + FRONT + SMUGGLED),
    # Obfuscated Transfer-Encoding next to a Content-Length that covers the smuggled request.
    *(
        Vector(
            f"te-obfuscated-{i}", head(te, cl(CHUNKED_FRONT + SMUGGLED)) + CHUNKED_FRONT + SMUGGLED
        )
        for i, te in enumerate(
            [
                "Transfer-Encoding: xchunked",
                "Transfer-Encoding : chunked",
                "Transfer-Encoding:\tchunked",
                "Transfer-Encoding: chunked, identity",
                "Transfer-Encoding: identity, chunked",
                "Transfer-Encoding: CHUNKED",
                "Transfer-Encoding:\x0bchunked",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
                "Transfer-Encoding: x\r\nTransfer-Encoding: chunked",
                'Transfer-Encoding: "chunked"',
                "Transfer-Encoding: chunked\r\n\tx",
                " Transfer-Encoding: chunked",
                "X-Pad: x\nTransfer-Encoding: chunked",
                "Transfer_Encoding: chunked",
                "Transfer-Encoding: chunk",
            ]
        )
    ),
    # Content-Length: duplicated, listed, signed, hex, spaced.
    Vector("cl-duplicate-same", head(cl(FRONT), cl(FRONT)) + FRONT + SMUGGLED),
    Vector("cl-duplicate-differ", head(cl(FRONT), cl(FRONT + SMUGGLED)) + FRONT + SMUGGLED),
    Vector(
        "cl-list", head(f"Content-Length: {len(FRONT)}, {len(FRONT + SMUGGLED)}") + FRONT + SMUGGLED
    ),
    Vector("cl-plus", head(f"Content-Length: +{len(FRONT + SMUGGLED)}") + FRONT + SMUGGLED),
    Vector("cl-hex", head(f"Content-Length: 0x{len(FRONT + SMUGGLED):x}") + FRONT + SMUGGLED),
    Vector("cl-negative", head("Content-Length: -1") + FRONT + SMUGGLED),
    Vector("cl-inner-space", head(f"Content-Length: 1 {len(FRONT)}") + FRONT + SMUGGLED),
    Vector(
        "cl-space-before-colon",
        head(f"Content-Length : {len(FRONT + SMUGGLED)}") + FRONT + SMUGGLED,
    ),
    Vector("cl-overflow", head("Content-Length: 99999999999999999999999") + FRONT + SMUGGLED),
    # Bare LF, bare CR and NUL where a parser might split lines differently than the next hop.
    Vector(
        "bare-lf-request-line",
        head(cl(FRONT)).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\n", 1) + FRONT + SMUGGLED,
    ),
    Vector(
        "bare-lf-everywhere", head(cl(FRONT + SMUGGLED)).replace(b"\r\n", b"\n") + FRONT + SMUGGLED
    ),
    Vector(
        "bare-cr-in-value",
        head("X-Pad: a\rTransfer-Encoding: chunked", cl(CHUNKED_FRONT + SMUGGLED))
        + CHUNKED_FRONT
        + SMUGGLED,
    ),
    Vector("nul-in-value", head("X-Pad: a\x00b", cl(FRONT + SMUGGLED)) + FRONT + SMUGGLED),
    Vector("nul-in-name", head("X-P\x00ad: a", cl(FRONT + SMUGGLED)) + FRONT + SMUGGLED),
    Vector(
        "nul-in-target",
        head(cl(FRONT + SMUGGLED), line=f"POST {CHAT}\x00x HTTP/1.1") + FRONT + SMUGGLED,
    ),
    Vector(
        "space-in-target",
        head(cl(FRONT + SMUGGLED), line=f"POST {CHAT} x HTTP/1.1") + FRONT + SMUGGLED,
    ),
    Vector("http-0.9-style", b"POST " + CHAT.encode() + b"\r\n\r\n" + FRONT + SMUGGLED),
    # Chunk sizes and extensions.
    Vector(
        "chunk-ext-quoted-crlf",
        head(TE) + chunk(FRONT, f'{len(FRONT):x};a="x\r\n0\r\n\r\n"') + b"0\r\n\r\n" + SMUGGLED,
    ),
    Vector(
        "chunk-size-leading-space",
        head(TE) + chunk(FRONT, f"  {len(FRONT):x}") + b"0\r\n\r\n" + SMUGGLED,
    ),
    Vector(
        "chunk-size-overflow",
        head(TE) + chunk(FRONT, "f" * 20 + f"{len(FRONT):x}") + b"0\r\n\r\n" + SMUGGLED,
    ),
    Vector(
        "chunk-size-negative", head(TE) + chunk(FRONT, f"-{len(FRONT):x}") + b"0\r\n\r\n" + SMUGGLED
    ),
    Vector("chunk-size-0x", head(TE) + chunk(FRONT, f"0x{len(FRONT):x}") + b"0\r\n\r\n" + SMUGGLED),
    Vector(
        "chunk-data-overrun",
        head(TE) + chunk(FRONT + b"   ", f"{len(FRONT):x}") + b"0\r\n\r\n" + SMUGGLED,
    ),
    Vector(
        "chunk-missing-crlf",
        head(TE) + f"{len(FRONT):x}\r\n".encode() + FRONT + b"0\r\n\r\n" + SMUGGLED,
    ),
    Vector(
        "chunk-size-bare-lf",
        head(TE) + f"{len(FRONT):x}\n".encode() + FRONT + b"\r\n0\r\n\r\n" + SMUGGLED,
    ),
    Vector("last-chunk-bare-lf", head(TE) + chunk(FRONT) + b"0\n\n" + SMUGGLED),
    Vector(
        "trailer-framing-headers",
        head(TE)
        + chunk(FRONT)
        + b"0\r\nContent-Length: 200\r\nTransfer-Encoding: chunked\r\n\r\n"
        + SMUGGLED,
    ),
    Vector("chunked-http-1.0", head(TE, line=f"POST {CHAT} HTTP/1.0") + CHUNKED_FRONT + SMUGGLED),
    Vector(
        "expect-100-continue", head("Expect: 100-continue", cl(FRONT + SMUGGLED)) + FRONT + SMUGGLED
    ),
    Vector(
        "upgrade-h2c",
        head(
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            cl(FRONT + SMUGGLED),
        )
        + FRONT
        + SMUGGLED,
    ),
    Vector("get-with-body", head(cl(SMUGGLED), line="GET /v1/models HTTP/1.1") + SMUGGLED),
]
PIPELINES = [
    # Well-formed, though unusual: served once, and nothing follows to smuggle.
    Vector(
        "chunk-ext", head(TE) + chunk(FRONT, f"{len(FRONT):x};name=value") + b"0\r\n\r\n", legit=1
    ),
    Vector("cl-leading-zeros", head(f"Content-Length: 000{len(FRONT)}") + FRONT, legit=1),
    Vector(
        "pipelined-two",
        head(cl(FRONT)) + FRONT + head(cl(FRONT), "Connection: close") + FRONT,
        legit=2,
    ),
    Vector(
        "pipelined-chunked-then-length",
        head(TE) + CHUNKED_FRONT + head(cl(FRONT), "Connection: close") + FRONT,
        legit=2,
    ),
    Vector(
        "pipelined-three-small-writes",
        (head(cl(FRONT)) + FRONT) * 2 + head(cl(FRONT), "Connection: close") + FRONT,
        legit=3,
    ),
]


def statuses(reply: bytes) -> list[int]:
    """The final (non-1xx) statuses of the responses in `reply`, framed by Content-Length."""
    found = []
    while reply:
        head, sep, rest = reply.partition(b"\r\n\r\n")
        match = _STATUS_LINE.match(head)
        if not sep or match is None:
            found.append(-1)  # something that is not a well-framed response
            break
        length = _LENGTH.search(head)
        size = int(length.group(1)) if length else 0
        if int(match.group(1)) >= 200:
            found.append(int(match.group(1)))
        reply = rest[size:]
    return found


def exchange(port: int, wire: bytes) -> bytes:
    """Send the bytes; read until the router closes or goes quiet for IDLE_S."""
    with socket.create_connection(("127.0.0.1", port), timeout=IDLE_S) as sock:
        # Closed on us mid-send or mid-read: a rejection, judged by what came back.
        with contextlib.suppress(OSError):
            sock.sendall(wire)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    return data


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[RouterThread, FakeUpstream]]:
    fake = FakeUpstream("central")
    with AppThread(fake.app) as upstream:
        settings = chat_forwarding_settings(upstream.url)
        with RouterThread(settings) as router:
            yield router, fake


def test_there_are_at_least_forty_attack_vectors() -> None:
    """S3 asks for 40 or more distinct framing vectors."""
    assert len({v.name for v in ATTACKS}) == len(ATTACKS) >= 40


def test_every_vector_is_rejected_or_served_once_and_nothing_is_smuggled(
    stack: tuple[RouterThread, FakeUpstream],
) -> None:
    """Each attack gets at most one answer; legitimate pipelines get one per request; the
    upstream receives only the front request, exactly as sent, and no more messages than the
    router answered with success."""
    router, fake = stack
    vectors = ATTACKS + PIPELINES
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda v: exchange(router.port, v.wire), vectors))
    problems = []
    served = 0
    for vector, reply in zip(vectors, replies, strict=True):
        answers = statuses(reply)
        served += answers.count(200)
        if vector.legit:
            if answers != [200] * vector.legit:
                problems.append(f"{vector.name}: {answers}, expected {vector.legit} x 200")
        elif len(answers) > 1 or (
            answers and answers[0] not in (200, 400, 408, 411, 413, 415, 417, 431, 501)
        ):
            problems.append(f"{vector.name}: answered {answers}")
    smuggled = [r for r in fake.received if r.body != FRONT or r.path != CHAT]
    assert not problems
    assert smuggled == []
    assert len(fake.received) <= served  # a GET /v1/models is answered here, not upstream
