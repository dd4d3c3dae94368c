"""The spool's upload format, shared by the drainer (encoding) and the collector (decoding).

A batch is JSON lines (`application/x-ndjson`), one record per line, or one JSON object
`{"records": [...]}` (`application/json`). A record is
`{"key": str, "kind": str, "created": number, "expires": number?, "payload": base64}`; unknown
fields are ignored so either side can grow. The collector answers
`{"accepted": [keys], "new": n, "duplicates": n}`, where `accepted` lists every key of the
batch it now holds, whether it arrived now or before: the sender may forget exactly those.
Each upload names its site (`X-Layer-Router-Site`) and carries the site's upload key
(`Authorization: Bearer`), which the collector checks first (router.spool.sites).

Decoding is strict and total: any input either yields items or raises BatchError, whose
messages name positions and fields, never the bytes received.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from router.errors import MalformedBody, UnsupportedMediaType
from router.spool.records import KEY, KIND, Record

NDJSON = "application/x-ndjson"
JSON = "application/json"
_LINES_TYPES = frozenset({NDJSON, "application/jsonl", "application/json-lines"})
MAX_BATCH_RECORDS = 10_000


class BatchError(MalformedBody):
    """A batch that does not follow the upload format."""


class DeliveryFailed(Exception):
    """The collector did not acknowledge a batch (bad status or unreadable answer)."""


class CollectorRefused(DeliveryFailed):
    """The collector refused the site's credentials (401, 403): its upload key or site id."""


@dataclass(frozen=True)
class Item:
    key: str
    kind: str
    payload: bytes
    created: float
    expires: float | None


def encode_batch(records: Iterable[Record]) -> bytes:
    lines = (
        orjson.dumps(
            {
                "key": record.key,
                "kind": record.kind,
                "created": record.created,
                "expires": record.expires,
                "payload": base64.b64encode(record.payload).decode("ascii"),
            }
        )
        for record in records
    )
    return b"".join(line + b"\n" for line in lines)


def decode_batch(body: bytes, content_type: str) -> list[Item]:
    """The items of a batch; BatchError (400) or UnsupportedMediaType (415) otherwise."""
    if content_type in _LINES_TYPES:
        entries: list[Any] = list(_lines(body))
    elif content_type == JSON:
        document = _json(body, "body")
        if not isinstance(document, dict) or not isinstance(document.get("records"), list):
            raise BatchError('a JSON batch is an object with a "records" list')
        entries = document["records"]
    else:
        raise UnsupportedMediaType(f"send batches as {NDJSON} or {JSON}")
    if len(entries) > MAX_BATCH_RECORDS:
        raise BatchError(f"a batch holds at most {MAX_BATCH_RECORDS} records")
    return [_item(entry, index) for index, entry in enumerate(entries)]


def decode_accepted(body: bytes, sent: Iterable[str]) -> set[str]:
    """The sent keys the collector acknowledged; keys it names that were not sent are ignored."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DeliveryFailed("the collector's answer is not JSON") from None
    accepted = document.get("accepted") if isinstance(document, dict) else None
    if not isinstance(accepted, list):
        raise DeliveryFailed('the collector\'s answer has no "accepted" list')
    return {key for key in accepted if isinstance(key, str)} & set(sent)


def _lines(body: bytes) -> Iterator[Any]:
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            yield _json(line, f"line {number}")


def _json(data: bytes, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BatchError(f"{where}: not valid JSON") from None


def _item(entry: Any, index: int) -> Item:
    where = f"record {index}"
    if not isinstance(entry, dict):
        raise BatchError(f"{where}: not an object")
    key, kind, payload = entry.get("key"), entry.get("kind"), entry.get("payload")
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise BatchError(f"{where}: key must be 1-128 of letters, digits and ._:-")
    if not isinstance(kind, str) or not KIND.fullmatch(kind):
        raise BatchError(f"{where}: kind must be 1-64 of letters, digits and ._-")
    if not isinstance(payload, str):
        raise BatchError(f"{where}: payload must be a base64 string")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BatchError(f"{where}: payload is not valid base64") from None
    created = _number(entry.get("created"), f"{where}: created")
    expires = entry.get("expires")
    return Item(
        key, kind, data, created, None if expires is None else _number(expires, f"{where}: expires")
    )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BatchError(f"{where} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise BatchError(f"{where} must be finite")
    return number
