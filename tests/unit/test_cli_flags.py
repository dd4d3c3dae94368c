"""`layer-router serve` flags that take a URL or a number: a bad value is one error line
naming the flag and what it must be, exit status 2, no traceback, nothing served."""

from __future__ import annotations

import pytest

import router.server
from router.cli import main

BAD = [
    ("--regional", "notaurl"),
    ("--central", "notaurl"),
    ("--regional", "ftp://host"),
    ("--regional", "http://"),
    ("--regional", "http://:80"),
    ("--central", "http://host:99999"),
    ("--central", "http://host:port"),
    ("--regional", "http://host/?q=1"),
    ("--port", "99999"),
    ("--port", "-1"),
    ("--port", "abc"),
    ("--admin-port", "65536"),
    ("--workers", "0"),
    ("--workers", "257"),
    ("--workers", "two"),
]


@pytest.fixture(autouse=True)
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(*_: object, **__: object) -> int:
        raise AssertionError("a bad flag value must not reach serving")

    monkeypatch.setattr(router.server, "serve", serve)


@pytest.mark.parametrize(("flag", "value"), BAD)
def test_bad_value_is_one_error_line(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """The error is one line naming the flag and its value; no pydantic text, exit 2."""
    with pytest.raises(SystemExit) as info:
        main(["serve", flag, value, "--port", "0"] if flag != "--port" else ["serve", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert f"argument {flag}: invalid " in errors[0]
    assert repr(value) in errors[0]
    assert "pydantic" not in err
    assert "Traceback" not in err
    assert "Input should" not in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--regional", "http://127.0.0.1:9"), ("--central", "https://central.example/v")],
)
def test_good_urls_reach_the_settings(flag: str, value: str) -> None:
    """A well-formed upstream URL passes the flag's check and becomes the cluster's endpoint."""
    from router.cli import _parser, _settings

    args = _parser().parse_args(["serve", flag, value])
    settings = _settings(args)
    (cluster,) = [c for c in settings.upstreams if c.name == flag.lstrip("-")]
    assert [e.url for e in cluster.endpoints] == [value]
