"""Tenants without a server: key hashing and extraction, identification under both auth modes,
allowed models, token buckets on a fake clock, the auth-off rule and the key CLI."""

from __future__ import annotations

import argparse
import io
import re
import shutil
from pathlib import Path

import pytest
from multidict import CIMultiDict

from router import cli
from router.errors import ConfigError, ModelNotAllowed, RateLimited, Unauthorized
from router.policy.bundle import load_bundle
from router.policy.model import RateLimit, Tenants
from router.ratelimit import Limiter, Limiters, duration
from router.resources import default_policy_bundle
from router.settings import Settings
from router.tenancy import ANONYMOUS, Tenancy, hash_key, presented_key
from router.tenant_cli import run as tenant_run

KEY = "lr-unit-test-key-0123456789abcdefghij"
OTHER = "lr-unit-test-other-0123456789abcdefgh"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tenants(**extra: object) -> Tenants:
    return Tenants.model_validate(
        {
            "default": {"data_class": "internal", **extra},
            "tenants": {
                "alpha": {"keys": [hash_key(KEY)], "models": ["color_*", "gpt-4o"]},
                "beta": {"keys": [hash_key(OTHER)], "data_class": "public"},
            },
        }
    )


class TestKeys:
    def test_hash_is_sha256_hex_of_the_utf8_key(self) -> None:
        """The stored form is `sha256:` and 64 hex digits, the same for the same key."""
        hashed = hash_key(KEY)
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", hashed)
        assert hashed == hash_key(KEY) != hash_key(OTHER)

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"Authorization": f"Bearer {KEY}"}, KEY),
            ({"authorization": f"bearer   {KEY} "}, KEY),
            ({"api-key": KEY}, KEY),
            ({"X-Api-Key": KEY}, KEY),
            ({"Authorization": "Basic abc", "X-Api-Key": KEY}, KEY),
            ({"Authorization": "Bearer "}, None),
            ({}, None),
        ],
    )
    def test_key_is_found_in_each_header_form(
        self, headers: dict[str, str], expected: str | None
    ) -> None:
        """Bearer first, then api-key, then X-Api-Key; a non-Bearer Authorization is no key."""
        assert presented_key(CIMultiDict(headers)) == expected


class TestIdentify:
    def test_required_mode_maps_keys_to_tenants_and_refuses_the_rest(self) -> None:
        """A known key is its tenant; none or an unknown one is 401 naming neither."""
        tenancy = Tenancy(tenants(), required=True, limiters=Limiters())
        assert tenancy.identify({"api-key": KEY}).name == "alpha"
        assert tenancy.identify({"Authorization": f"Bearer {OTHER}"}).name == "beta"
        for headers in ({}, {"api-key": "lr-wrong-key-0123456789abcdefghij"}):
            with pytest.raises(Unauthorized) as caught:
                tenancy.identify(headers)
            assert "lr-wrong" not in caught.value.message

    def test_disabled_mode_falls_back_to_the_anonymous_tenant(self) -> None:
        """Without required auth, no key or a foreign one is the anonymous tenant."""
        tenancy = Tenancy(tenants(), required=False, limiters=Limiters())
        assert tenancy.identify({}).name == ANONYMOUS
        assert tenancy.identify({"Authorization": "Bearer sk-upstream"}).name == ANONYMOUS
        assert tenancy.identify({"api-key": KEY}).name == "alpha"

    def test_models_are_names_or_globs_and_the_default_applies(self) -> None:
        """alpha lists models; beta inherits default's None (every model)."""
        tenancy = Tenancy(tenants(), required=True, limiters=Limiters())
        tenancy.authorize("alpha", "color_classifier")
        tenancy.authorize("alpha", "gpt-4o")
        tenancy.authorize("beta", "anything")
        for model in ("gpt-4o-mini", "hotspot_detector"):
            with pytest.raises(ModelNotAllowed):
                tenancy.authorize("alpha", model)

    def test_tenant_data_class_falls_back_to_the_default(self) -> None:
        """beta starts public; alpha and unknown tenants start at default's class."""
        t = tenants()
        assert t.data_class_of("beta") == "public"
        assert t.data_class_of("alpha") == t.data_class_of(ANONYMOUS) == "internal"

    def test_a_hash_held_twice_or_malformed_is_a_bundle_error(self) -> None:
        """Two tenants with one key hash, or a hash not in sha256:hex form, are rejected."""
        with pytest.raises(ValueError, match="same key hash"):
            Tenants.model_validate(
                {"tenants": {"a": {"keys": [hash_key(KEY)]}, "b": {"keys": [hash_key(KEY)]}}}
            )
        with pytest.raises(ValueError, match="pattern"):
            Tenants.model_validate({"tenants": {"a": {"keys": [KEY]}}})


class TestTokenBucket:
    def test_burst_then_refusal_then_refill(self) -> None:
        """3 per minute: three pass (remaining 2, 1, 0), the fourth is 429 with Retry-After of
        one token's refill (20 s), and 20 s later one more passes."""
        clock = Clock()
        limiter = Limiter([RateLimit(requests=3, period_s=60)], clock)
        remaining = [limiter.take()["x-ratelimit-remaining-requests"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        with pytest.raises(RateLimited) as caught:
            limiter.take()
        assert caught.value.retry_after == pytest.approx(20.0)
        assert caught.value.headers == {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m0s",
        }
        clock.now += 20
        assert limiter.take()["x-ratelimit-remaining-requests"] == "0"

    def test_the_limit_header_is_what_a_burst_lets_through(self) -> None:
        """600 a minute with bursts of 20: the limit a client reads is the 20 it may send at
        once, so limit minus remaining counts the requests it has made."""
        limiter = Limiter([RateLimit(requests=600, period_s=60, burst=20)], Clock())
        headers = limiter.take()
        assert headers["x-ratelimit-limit-requests"] == "20"
        assert headers["x-ratelimit-remaining-requests"] == "19"

    def test_a_refusal_takes_no_token_from_any_bucket(self) -> None:
        """A rate and a quota: when the quota is spent, the rate bucket keeps its tokens."""
        clock = Clock()
        limiter = Limiter(
            [RateLimit(requests=10, period_s=1), RateLimit(requests=2, period_s=86400)], clock
        )
        limiter.take()
        limiter.take()
        for _ in range(5):
            with pytest.raises(RateLimited) as caught:
                limiter.take()
        assert caught.value.retry_after == pytest.approx(43200.0)
        clock.now += 1
        with pytest.raises(RateLimited):
            limiter.take()

    def test_buckets_survive_a_reload_when_limits_are_unchanged(self) -> None:
        """A new Tenancy from an equal bundle keeps the spent bucket; changed limits reset it."""
        clock = Clock()
        limiters = Limiters(clock)
        spent = tenants(rate_limits=[{"requests": 1, "period_s": 60}])
        Tenancy(spent, required=True, limiters=limiters).by_name["alpha"].limiter.take()  # type: ignore[union-attr]
        again = Tenancy(spent, required=True, limiters=limiters).by_name["alpha"].limiter
        assert again is not None
        with pytest.raises(RateLimited):
            again.take()
        changed = tenants(rate_limits=[{"requests": 2, "period_s": 60}])
        fresh = Tenancy(changed, required=True, limiters=limiters).by_name["alpha"].limiter
        assert fresh is not None
        fresh.take()

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0.0, "0ms"),
            (0.25, "250ms"),
            (1.0, "1s"),
            (59.2, "1m0s"),
            (360, "6m0s"),
            (3723, "1h2m3s"),
        ],
    )
    def test_durations_read_like_openais(self, seconds: float, text: str) -> None:
        """x-ratelimit-reset-requests in Go's duration form, rounded up."""
        assert duration(seconds) == text


class TestAuthRule:
    @pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
    def test_loopback_without_auth_setting_is_allowed(self, host: str) -> None:
        """Only this machine can connect: the embedded default may serve without keys."""
        settings = Settings.model_validate({"server": {"host": host}})
        assert not settings.auth_required

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "router.example"])
    def test_non_loopback_without_auth_setting_is_a_config_error(self, host: str) -> None:
        """The error says which setting to add and what each value means."""
        with pytest.raises(ValueError, match=r"auth\.mode") as caught:
            Settings.model_validate({"server": {"host": host}})
        assert "'required'" in str(caught.value)
        assert "'disabled'" in str(caught.value)

    @pytest.mark.parametrize("mode", ["required", "disabled"])
    def test_an_explicit_mode_allows_any_host(self, mode: str) -> None:
        """Written down, either choice stands."""
        settings = Settings.model_validate({"server": {"host": "0.0.0.0"}, "auth": {"mode": mode}})
        assert settings.auth_required == (mode == "required")

    def test_serve_flag_sets_the_mode(self) -> None:
        """`serve --host 0.0.0.0 --auth disabled` is accepted; without --auth it is refused."""
        args = cli._parser().parse_args(["serve", "--host", "0.0.0.0", "--auth", "disabled"])
        assert not cli._settings(args).auth_required
        bad = cli._parser().parse_args(["serve", "--host", "0.0.0.0"])
        with pytest.raises(ConfigError, match=r"auth\.mode"):
            cli._settings(bad)

    def test_required_auth_with_a_keyless_bundle_stops_startup(self, tmp_path: Path) -> None:
        """auth.mode required and no tenant key anywhere: nobody could ever be served."""
        from router.app import build_app

        folder = tmp_path / "bundle"
        shutil.copytree(default_policy_bundle(), folder)
        load_bundle(folder)
        settings = Settings.model_validate(
            {"auth": {"mode": "required"}, "policy": {"bundle": str(folder)}}
        )
        with pytest.raises(ConfigError, match="no tenant has a key") as refused:
            build_app(settings)
        # The folder the operator configured, not the copy activated under the state dir.
        assert refused.value.source == f"tenants.yaml of {folder}"

    def test_required_auth_with_the_embedded_bundle_says_to_bring_one(self) -> None:
        """With no bundle configured the error names the embedded bundle and says what to do,
        not a copy under the state directory that an edit would never reach."""
        from router.app import build_app

        settings = Settings.model_validate({"auth": {"mode": "required"}})
        with pytest.raises(ConfigError, match=r"set policy\.bundle") as refused:
            build_app(settings)
        assert refused.value.source == "tenants.yaml of the embedded policy bundle"


class TestKeyCommands:
    def test_hash_key_reads_stdin_and_prints_only_the_hash(self) -> None:
        """The printed line is the hash tenants.yaml takes; the key itself is not echoed."""
        out = io.StringIO()
        args = argparse.Namespace(tenant_command="hash-key")
        assert tenant_run(args, io.StringIO(KEY + "\n"), out) == 0
        assert out.getvalue().strip() == hash_key(KEY)
        assert KEY not in out.getvalue()

    def test_hash_key_refuses_short_keys(self) -> None:
        """A short key's unsalted hash could be brute-forced: refused with exit 2."""
        args = argparse.Namespace(tenant_command="hash-key")
        assert tenant_run(args, io.StringIO("hunter2\n"), io.StringIO()) == 2

    def test_new_key_prints_a_random_key_and_its_hash(self) -> None:
        """Two calls give different 256-bit keys, each with its matching hash."""
        keys = []
        for _ in range(2):
            out = io.StringIO()
            assert tenant_run(argparse.Namespace(tenant_command="new-key"), out=out) == 0
            key_line, hash_line = out.getvalue().splitlines()
            key = key_line.split()[-1]
            assert hash_line.split()[-1] == hash_key(key)
            keys.append(key)
        assert keys[0] != keys[1]
        assert len(keys[0]) >= 43


def test_a_sites_upload_key_never_names_a_tenant() -> None:
    """A key listed as a site's upload key is refused as an API key even where tenants.yaml
    gives it to a tenant (the tenant is named for the operator); the tenant's other key
    still works."""
    upload, own = "lr-site-upload-key-0123456789abcdef", "lr-tenant-own-key-0123456789abcdef"
    tenants = Tenants.model_validate(
        {"tenants": {"line-3": {"keys": [hash_key(upload), hash_key(own)]}}}
    )
    tenancy = Tenancy(
        tenants, required=True, limiters=Limiters(), upload_keys=frozenset({hash_key(upload)})
    )
    with pytest.raises(Unauthorized):
        tenancy.identify({"Authorization": f"Bearer {upload}"})
    assert tenancy.identify({"Authorization": f"Bearer {own}"}).name == "line-3"
    assert tenancy.holding_upload_keys == ["line-3"]


def test_check_refuses_required_auth_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`auth.mode: required` with a bundle holding no key: `serve` refuses to start, so
    `layer-router check` says so too (exit 2 naming tenants.yaml), not `ok`; with a key, ok."""
    config = tmp_path / "site.yaml"
    config.write_text("auth: {mode: required}\n")
    assert cli.main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "auth.mode is 'required' but no tenant has a key" in err
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    key = hash_key("lr-a-tenant-key-0123456789abcdef")
    (bundle / "tenants.yaml").write_text(f"tenants:\n  line-3:\n    keys: ['{key}']\n")
    config.write_text("auth: {mode: required}\npolicy: {bundle: bundle}\n")
    assert cli.main(["check", str(config)]) == 0, capsys.readouterr().err
