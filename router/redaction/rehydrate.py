"""Restore tokens in upstream answers: text, JSON documents and OpenAI SSE streams.

Only tokens issued by the request's own vault are restored; unknown or mangled ones are left
as they are. Streams are rewritten event by event: the only text held back is a possible
partial token at the end of a choice's content, never more than a token's length.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from router.redaction.vault import TOKEN_RE, TokenVault

# Past this depth a response subtree is passed on as it is: an unrestored placeholder reveals
# nothing, and the bound keeps recursion well inside Python's limit.
MAX_DEPTH = 256
# An SSE line longer than this is passed through unparsed rather than buffered further.
MAX_LINE_BYTES = 1 << 20
# A line ends at CRLF, LF or a bare CR (SSE allows all three). A CR that ends a chunk ends its
# line at once: should an LF follow in the next chunk, it passes on as an empty line, and the
# bytes are the same.
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Delta fields carrying model text, besides tool-call arguments.
_TEXT_FIELDS = ("content", "reasoning", "reasoning_content", "refusal")
# A choice's fields handled piece by piece (held tails); whole tokens in any other are restored
# as in a plain answer (an audio transcript, say).
_STREAMED = frozenset({"text", "delta", "index", "finish_reason"})
_STREAMED_DELTA = frozenset({*_TEXT_FIELDS, "tool_calls", "role"})


def rehydrate_text(text: str, vault: TokenVault, *, json_escaped: bool = False) -> str:
    """Text with the vault's tokens replaced by their values.

    ``json_escaped``: the text is JSON source (tool-call arguments), so values are inserted
    escaped as inside a JSON string.
    """
    if not len(vault) or "<" not in text:
        return text

    def restore(match: re.Match[str]) -> str:
        token = match.group()
        value = vault.restore(token)
        if value is None:
            return token
        return orjson.dumps(value).decode()[1:-1] if json_escaped else value

    return TOKEN_RE.sub(restore, text)


def rehydrate_json(doc: Any, vault: TokenVault) -> Any:
    """A copy of a parsed JSON document with tokens restored in every string, keys included."""
    if not len(vault):
        return doc
    return _rehydrate(doc, vault, 0)


def _rehydrate(v: Any, vault: TokenVault, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return v
    if isinstance(v, str):
        return _rehydrate_string(v, vault, depth)
    if isinstance(v, dict):
        return {
            (rehydrate_text(k, vault) if isinstance(k, str) else k): _rehydrate(m, vault, depth + 1)
            for k, m in v.items()
        }
    if isinstance(v, list):
        return [_rehydrate(item, vault, depth + 1) for item in v]
    return v


def _rehydrate_string(s: str, vault: TokenVault, depth: int) -> str:
    restored = rehydrate_text(s, vault)
    if restored is s or s.lstrip()[:1] not in ("{", "["):
        return restored
    # A JSON document inside a string (tool-call arguments, a structured-output answer):
    # restore inside it so values with quotes or backslashes keep it valid JSON.
    try:
        inner = orjson.loads(s)
    except orjson.JSONDecodeError:
        return restored
    if not isinstance(inner, dict | list):
        return restored
    parsed = _rehydrate(inner, vault, depth + 1)
    # As written where that reads the same: its layout and number literals kept (a parse
    # re-encoded turns 12345678901234567890123 into 1.2345678901234568e+22). A token inside
    # a JSON text nested in one of its strings needs more escaping than one level gives.
    as_written = rehydrate_text(s, vault, json_escaped=True)
    try:
        if orjson.loads(as_written) == parsed:
            return as_written
    except orjson.JSONDecodeError:
        pass
    return orjson.dumps(parsed).decode()


def rehydrate_v2_binary(body: bytes, header_length: int, vault: TokenVault) -> tuple[bytes, int]:
    """A KServe v2 binary answer (a JSON header, then each output's bytes) with tokens restored
    in the header's strings and in every BYTES output's elements, and its new header length.
    An answer whose parts do not add up is returned as it is."""
    if not len(vault) or not 0 < header_length <= len(body):
        return body, header_length
    read = _v2_header(body[:header_length])
    if read is None:
        return body, header_length
    header, dumps = read
    outputs = header.get("outputs") if isinstance(header, dict) else None
    parts: list[bytes] = []
    offset = header_length
    for output in outputs if isinstance(outputs, list) else ():
        params = output.get("parameters") if isinstance(output, dict) else None
        if not isinstance(params, dict):
            continue
        size = params.get("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool):
            continue
        raw = body[offset : offset + size]
        offset += size
        if size < 0 or len(raw) != size:
            return body, header_length
        if output.get("datatype") == "BYTES":
            raw = _rehydrate_elements(raw, vault)
            params["binary_data_size"] = len(raw)
        parts.append(raw)
    if offset != len(body):
        return body, header_length
    encoded = dumps(rehydrate_json(header, vault))
    return encoded + b"".join(parts), len(encoded)


def _v2_header(raw: bytes) -> tuple[Any, Callable[[Any], bytes]] | None:
    """An answer's JSON header and how to write it back; None when it cannot be read. Triton
    (and a layer-router) write non-finite outputs as bare NaN/Infinity tokens, which orjson
    refuses: the stdlib reads and writes those back as such."""
    try:
        return orjson.loads(raw), orjson.dumps
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw), dumps_stdlib
    except (ValueError, RecursionError):
        return None


def dumps_stdlib(doc: Any) -> bytes:
    """A document the stdlib read (bare NaN/Infinity, lone surrogate escapes: what orjson
    refuses) written back the same way: a lone surrogate, which UTF-8 cannot carry, stays
    the escape it came as."""
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(doc, separators=(",", ":")).encode()


def _rehydrate_elements(raw: bytes, vault: TokenVault) -> bytes:
    """BYTES elements (a 4-byte little-endian length, then the bytes) with tokens restored in
    those that are UTF-8 text; elements that are not, or data that does not parse, unchanged."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            return raw
        length = int.from_bytes(raw[offset : offset + 4], "little")
        element = raw[offset + 4 : offset + 4 + length]
        if len(element) != length:
            return raw
        offset += 4 + length
        if b"<" in element:
            with contextlib.suppress(UnicodeDecodeError):  # not text: no token in it
                element = rehydrate_text(element.decode("utf-8"), vault).encode("utf-8")
        out += [len(element).to_bytes(4, "little"), element]
    return b"".join(out)


class SseRehydrator:
    """Restores tokens in an OpenAI-style SSE stream arriving in arbitrary byte chunks.

    Lines are rewritten as they complete; a data event whose JSON changes is re-serialised,
    anything else (comments, ``[DONE]``, usage chunks, non-JSON data) passes through byte for
    byte. Per choice and field (``delta.content``, completions ``text``, each tool call's
    ``arguments``), a tail that may be the start of a token is held back and joined to that
    field's next delta, so tokens split across chunks or events are restored. A held tail is
    released when its choice finishes, before a choice-less event or ``[DONE]`` and at close,
    in an event of its own if needed.
    """

    def __init__(self, vault: TokenVault) -> None:
        self._vault = vault
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line, passed through until its end
        self._held: dict[tuple[int, str, int], str] = {}
        self._template: dict[str, Any] = {}
        self._out = bytearray()
        self._recent = b"\n\n"  # the last bytes emitted: a flush must start a fresh event

    @property
    def held_chars(self) -> int:
        """Characters held back across all choices (each tail is shorter than a token)."""
        return sum(len(t) for t in self._held.values())

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete line waiting for its end."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> bytes:
        """The output ready after this chunk."""
        if not len(self._vault) and not self._buf and not self._held:
            return chunk  # no tokens were issued: nothing to restore
        start = 0
        while (match := _LINE_END.search(chunk, start)) is not None:
            line = chunk[start : match.end()]
            start = match.end()
            if self._skipping:
                self._skipping = False
                self._put(line)
            elif self._buf:
                self._buf += line
                self._line(bytes(self._buf))
                self._buf.clear()
            else:
                self._line(line)
        rest = chunk[start:]
        if self._skipping:
            self._put(rest)
        else:
            self._buf += rest
            if len(self._buf) > MAX_LINE_BYTES:
                self._put(bytes(self._buf))
                self._buf.clear()
                self._skipping = True
        return self._take()

    def close(self) -> bytes:
        """Whatever is still held back, released as it is: the stream has ended."""
        if self._buf:
            self._line(bytes(self._buf))
            self._buf.clear()
        self._flush()
        return self._take()

    def _put(self, data: bytes) -> None:
        if data:
            self._out += data
            self._recent = (self._recent + data)[-4:]

    def _take(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _line(self, line: bytes) -> None:
        body = line.rstrip(b"\r\n")
        event = _event(body)
        if event is None:
            if body[5:].strip() == b"[DONE]" and body.startswith(b"data:"):
                self._flush()
            self._put(line)
            return
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices:
            self._flush()  # usage and other choice-less events come after the text
            self._put(line)
            return
        self._template = {k: v for k, v in event.items() if k not in ("choices", "usage")}
        changed = False
        for position, choice in enumerate(choices):
            if isinstance(choice, dict):
                changed |= self._choice(choice, position)
        if changed:
            self._put(b"data: " + orjson.dumps(event) + line[len(body) :])
        else:
            self._put(line)

    def _choice(self, choice: dict[str, Any], position: int) -> bool:
        index = choice.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        finished = choice.get("finish_reason") is not None
        changed = False
        if "text" in choice:
            changed |= self._field(choice, "text", (index, "text", 0), finished)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for name in _TEXT_FIELDS:
                if name in delta:
                    changed |= self._field(delta, name, (index, name, 0), finished)
            calls = delta.get("tool_calls")
            for pos, call in enumerate(calls if isinstance(calls, list) else ()):
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and "arguments" in function:
                    slot = call.get("index", pos)
                    key = (index, "tool", slot if isinstance(slot, int) else pos)
                    changed |= self._field(function, "arguments", key, finished)
        changed |= _restore_whole(choice, _STREAMED, self._vault)
        if isinstance(delta, dict):
            changed |= _restore_whole(delta, _STREAMED_DELTA, self._vault)
        if finished:
            # The choice ends here: whatever it still holds goes out with this event.
            for key in [k for k in self._held if k[0] == index]:
                _inject(choice, key, self._held.pop(key))
                changed = True
        return changed

    def _field(
        self, container: dict[str, Any], name: str, key: tuple[int, str, int], finished: bool
    ) -> bool:
        value = container[name]
        if not isinstance(value, str):
            # Content as a list of parts (Mistral streams its reasoning models' so), arguments
            # as an object: whole tokens restored in it, as in a plain answer.
            restored = rehydrate_json(value, self._vault)
            if restored == value:
                return False
            container[name] = restored
            return True
        text = self._held.pop(key, "") + value
        emit, tail = (text, "") if finished else self._split(text)
        if tail:
            self._held[key] = tail
        new = rehydrate_text(emit, self._vault, json_escaped=key[1] == "tool")
        if new == value:
            return False
        container[name] = new
        return True

    def _split(self, text: str) -> tuple[str, str]:
        """Text to emit now, and a tail that may still grow into a token."""
        cut = text.rfind("<")
        if cut >= 0 and self._vault.is_partial(text[cut:]):
            return text[:cut], text[cut:]
        return text, ""

    def _flush(self) -> None:
        """An event releasing every held tail as it is (the choices stay open)."""
        if not self._held:
            return
        choices: list[dict[str, Any]] = []
        for key, text in sorted(self._held.items()):
            choice: dict[str, Any] = {"index": key[0]}
            _inject(choice, key, text)
            choice["finish_reason"] = None
            choices.append(choice)
        self._held.clear()
        # Start a fresh event: end a line cut short or an event still open first.
        recent = self._recent
        if recent.endswith(b"\r"):
            newline = b"\r"  # a stream of bare CRs: a lone LF would not end its line
            if not recent.endswith(b"\r\r"):
                self._put(newline)
        else:
            newline = b"\n"
            if not recent.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
                self._put(b"\n" if recent.endswith(b"\n") else b"\n\n")
        event = b"data: " + orjson.dumps({**self._template, "choices": choices})
        self._put(event + newline + newline)


def _event(body: bytes) -> dict[str, Any] | None:
    """The JSON object a ``data:`` line carries, or None for any other line."""
    if not body.startswith(b"data:"):
        return None
    try:
        event = orjson.loads(body[5:])
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _restore_whole(fields: dict[str, Any], skip: frozenset[str], vault: TokenVault) -> bool:
    """Whole tokens restored in the fields not in `skip`; whether any changed."""
    changed = False
    for name, value in fields.items():
        if name in skip or not isinstance(value, dict | list | str):
            continue
        new = rehydrate_json(value, vault)
        if new != value:
            fields[name] = new
            changed = True
    return changed


def _inject(choice: dict[str, Any], key: tuple[int, str, int], text: str) -> None:
    """Append held text to the field it came from, creating the field if the event lacks it."""
    _, kind, slot = key
    if kind == "text":
        choice["text"] = text + str(choice.get("text") or "")
        return
    delta = choice.setdefault("delta", {})
    if kind != "tool":
        delta[kind] = text + str(delta.get(kind) or "")
        return
    calls = delta.setdefault("tool_calls", [])
    calls.append({"index": slot, "function": {"arguments": text}})
