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
    # What Python's int() takes but a number on a command line is not.
    ("--port", "8_000"),
    ("--port", "+8000"),
    ("--port", " 8000"),
    ("--port", "\uff18\uff10\uff10\uff10"),  # fullwidth 8000
    ("--admin-port", "9_001"),
    ("--workers", "1_6"),
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


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["demo", "--base-port", "8_000"], "--base-port"),
        (["demo", "--base-port", "+8000"], "--base-port"),
        (["bundle", "sign", "b.tar.gz", "--signing-key", "k", "--serial", "1_0"], "--serial"),
        (["bundle", "build", ".", "-o", "b.tar.gz", "--serial", " 7"], "--serial"),
    ],
)
def test_other_integer_flags_take_plain_digits_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], flag: str
) -> None:
    """Every subcommand's integer flag refuses what int() alone would take (underscores, a
    sign, spaces): one argparse error naming the flag, exit 2, before anything runs."""
    import router.demo

    def run(*_: object, **__: object) -> int:
        raise AssertionError("a bad flag value must not start the demo")

    monkeypatch.setattr(router.demo, "run", run)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid " in err
    assert repr(argv[-1]) in err
    assert "Traceback" not in err


def test_the_mock_llm_port_takes_plain_digits_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's mock upstream refuses --port 8_000 as the router does, before serving."""
    from router.demo import mock_llm

    def run_app(*_: object, **__: object) -> None:
        raise AssertionError("a bad flag value must not reach serving")

    monkeypatch.setattr(mock_llm.web, "run_app", run_app)
    with pytest.raises(SystemExit) as info:
        mock_llm.main(["--port", "8_000"])
    assert info.value.code == 2
    assert "argument --port: invalid " in capsys.readouterr().err
