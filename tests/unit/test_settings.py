"""router/settings/ and router/yamlconf.py: loading a site config, and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router.errors import ConfigError
from router.settings import Settings, Tier, load_settings


def _write(folder: Path, text: str, name: str = "site.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


class TestLoadSettings:
    def test_embedded_default_without_a_file(self) -> None:
        """With no file the embedded default describes a local edge site."""
        settings = load_settings(None)
        assert settings == Settings()
        assert settings.site.tier is Tier.EDGE
        assert settings.server.host == "127.0.0.1"
        assert settings.server.port == 8000
        assert settings.models.repository is None
        assert settings.models.inference_threads >= 1

    def test_empty_file_is_the_default(self, tmp_path: Path) -> None:
        """An empty file changes nothing."""
        assert load_settings(_write(tmp_path, "")) == Settings()

    def test_file_overrides_keys(self, tmp_path: Path) -> None:
        """Keys in the file replace the defaults; the others stay."""
        path = _write(
            tmp_path,
            "site:\n  id: plant-7\n  tier: regional\nserver:\n  port: 9000\n"
            "models:\n  max_queue_size: 3\n  execution_providers: [CPUExecutionProvider]\n",
        )
        settings = load_settings(path)
        assert settings.site.id == "plant-7"
        assert settings.site.tier is Tier.REGIONAL
        assert settings.server.port == 9000
        assert settings.server.host == "127.0.0.1"
        assert settings.models.max_queue_size == 3
        assert settings.models.execution_providers == ("CPUExecutionProvider",)

    def test_settings_are_frozen(self) -> None:
        """Loaded settings cannot be changed in place."""
        settings = load_settings(None)
        with pytest.raises(ValidationError):
            settings.server.port = 1  # type: ignore[misc]

    def test_unknown_key_names_file_and_key_path(self, tmp_path: Path) -> None:
        """A misspelt key is reported with its dotted path."""
        path = _write(tmp_path, "server:\n  prot: 8080\n")
        assert _problems(path) == ["server.prot: unknown key"]

    def test_misspelt_execution_provider(self, tmp_path: Path) -> None:
        """A provider name onnxruntime does not know is an error naming the key and the name,
        not a restriction of every model to CPU."""
        path = _write(tmp_path, "models:\n  execution_providers: [OpenVINOExecutionProvidr]\n")
        (problem,) = _problems(path)
        assert problem.startswith("models.execution_providers: ")
        assert "OpenVINOExecutionProvidr" in problem

    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        """An unknown section is reported by name."""
        assert _problems(_write(tmp_path, "servers: {}\n")) == ["servers: unknown key"]

    def test_bad_value_names_the_key(self, tmp_path: Path) -> None:
        """A port out of range names server.port."""
        (problem,) = _problems(_write(tmp_path, "server:\n  port: 70000\n"))
        assert problem.startswith("server.port: ")
        assert "65535" in problem

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("server: {port: true}\n", "server.port"),
            ("server: {drain_timeout_s: yes}\n", "server.drain_timeout_s"),
            ("models: {inference_threads: on}\n", "models.inference_threads"),
            (
                "upstreams: [{name: a, tier: central, endpoints: [{url: 'http://a'}],"
                " connect_timeout_ms: false}]\n",
                "upstreams.0.connect_timeout_ms",
            ),
        ],
    )
    def test_a_boolean_is_no_number(self, tmp_path: Path, text: str, key: str) -> None:
        """true/yes/on where a number belongs is refused at its key, not read as 1 (port 1,
        a one-second drain)."""
        (problem,) = _problems(_write(tmp_path, text))
        assert problem.startswith(f"{key}: Input should be a valid ")

    def test_booleans_stay_booleans(self, tmp_path: Path) -> None:
        """A boolean setting still takes YAML's yes/no."""
        settings = load_settings(_write(tmp_path, "cache: {enabled: no}\nadmin: {enabled: yes}\n"))
        assert settings.cache.enabled is False
        assert settings.admin.enabled is True

    def test_every_problem_is_listed(self, tmp_path: Path) -> None:
        """Several problems in one file are all reported, one per line."""
        path = _write(tmp_path, "server:\n  port: -1\n  prot: 1\nsite:\n  tier: moon\n")
        problems = _problems(path)
        assert len(problems) == 3
        assert {p.split(":")[0] for p in problems} == {"server.port", "server.prot", "site.tier"}
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert str(info.value).count("\n  - ") == 3

    def test_invalid_yaml_names_line_and_column(self, tmp_path: Path) -> None:
        """A YAML syntax error names the line and column."""
        (problem,) = _problems(_write(tmp_path, "server:\n  port: 80: 90\n"))
        assert problem.startswith("line 2, column ")

    def test_not_a_mapping(self, tmp_path: Path) -> None:
        """A top level that is not a mapping is refused."""
        (problem,) = _problems(_write(tmp_path, "- a\n- b\n"))
        assert "expected a mapping" in problem

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that cannot be read is a ConfigError, not an OSError."""
        (problem,) = _problems(tmp_path / "absent.yaml")
        assert problem.startswith("cannot read file")

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is a ConfigError."""
        path = tmp_path / "site.yaml"
        path.write_bytes(b"site:\n  id: \xff\xfe\n")
        assert _problems(path) == ["file is not valid UTF-8"]

    def test_values_are_not_echoed(self, tmp_path: Path) -> None:
        """A rejected value is not repeated in the message (it could be a secret)."""
        path = _write(tmp_path, "site:\n  id: 'canary secret 9f2c'\n")
        (problem,) = _problems(path)
        assert problem.startswith("site.id: ")
        assert "canary" not in problem

    def test_relative_repository_is_resolved_against_the_file(self, tmp_path: Path) -> None:
        """A relative models.repository is taken from the config file's folder."""
        folder = tmp_path / "conf"
        folder.mkdir()
        settings = load_settings(_write(folder, "models:\n  repository: ../models\n"))
        assert settings.models.repository == folder / "../models"
        assert settings.models.repository.resolve() == (tmp_path / "models").resolve()

    def test_absolute_repository_is_kept(self, tmp_path: Path) -> None:
        """An absolute models.repository is used as written."""
        target = tmp_path / "elsewhere"
        settings = load_settings(_write(tmp_path, f"models:\n  repository: {target}\n"))
        assert settings.models.repository == target

    def test_duplicate_cluster_names(self, tmp_path: Path) -> None:
        """Two upstream clusters with one name are refused, naming the name."""
        text = (
            "upstreams:\n"
            "  - {name: r1, tier: regional, endpoints: [{url: 'http://127.0.0.1:1'}]}\n"
            "  - {name: r1, tier: central, endpoints: [{url: 'http://127.0.0.1:2'}]}\n"
        )
        (problem,) = _problems(_write(tmp_path, text))
        assert "'r1' is used twice" in problem


@pytest.mark.parametrize(
    ("host", "tls", "mode", "warned"),
    [
        ("0.0.0.0", False, "required", True),  # keys from other machines, in clear
        ("0.0.0.0", True, "required", False),
        ("127.0.0.1", False, "required", False),  # only this machine connects
        ("0.0.0.0", False, "disabled", False),  # no keys at all
    ],
)
def test_keys_in_clear(host: str, tls: bool, mode: str, warned: bool) -> None:
    """`serve` warns when tenants' API keys would cross the network unencrypted."""
    server: dict[str, object] = {"host": host}
    if tls:
        server["tls"] = {"cert_file": "site.pem"}
    settings = Settings.model_validate({"server": server, "auth": {"mode": mode}})
    assert settings.keys_in_clear is warned


class TestDuplicateKeys:
    def test_a_repeated_key_is_an_error_at_its_line(self, tmp_path: Path) -> None:
        """A second `server:` would silently replace the first (port 9100 lost): it is refused
        with the line and the key named."""
        path = _write(
            tmp_path, "server:\n  port: 9100\nlogging:\n  level: info\nserver:\n  host: 0.0.0.0\n"
        )
        assert _problems(path) == ["line 5, column 1: duplicate key 'server'"]

    def test_a_repeated_nested_key_is_an_error(self, tmp_path: Path) -> None:
        """Duplicates inside a section are caught too."""
        path = _write(tmp_path, "server:\n  port: 9100\n  port: 9200\n")
        assert _problems(path) == ["line 3, column 3: duplicate key 'port'"]

    def test_merge_keys_may_still_be_overridden(self, tmp_path: Path) -> None:
        """A key written beside a `<<:` merge overrides the merged one, as YAML intends."""
        text = "x-base: &base\n  port: 9100\n  host: 127.0.0.1\n"
        path = _write(tmp_path, text + "server:\n  <<: *base\n  port: 9200\n")
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert info.value.problems == ["x-base: unknown key"]  # parsed; only x-base is unknown


class TestAdminPort:
    def test_the_api_port_given_to_admin_too_is_refused(self, tmp_path: Path) -> None:
        """`--port 8100 --admin-port 8100` is a config error naming both keys, not a start
        that fails later with 'address already in use'."""
        path = _write(tmp_path, "server: {port: 8100}\nadmin: {port: 8100}\n")
        [problem] = _problems(path)
        # The reason as the router words it, without pydantic's "Value error, " before it.
        assert problem.startswith("(top level): admin.port 8100 is server.port too")

    def test_the_same_port_on_different_addresses_is_allowed(self) -> None:
        """Two distinct addresses may each have the port; a disabled admin takes none."""
        Settings.model_validate(
            {"server": {"host": "127.0.0.2", "port": 8100}, "admin": {"port": 8100}}
        )
        Settings.model_validate(
            {"server": {"port": 8100}, "admin": {"port": 8100, "enabled": False}}
        )


@pytest.mark.parametrize(
    "host", ["", "$HOST", "127.0.0.1:8000", "http://0.0.0.0", "local host", "0.0.0.0 "]
)
@pytest.mark.parametrize("section", ["server", "admin"])
def test_a_host_that_is_no_address_is_refused(tmp_path: Path, section: str, host: str) -> None:
    """A listen address serve could never bind (a port or scheme in it, an unexpanded
    variable, empty: all interfaces by accident) is refused at its key, so check refuses it
    too, instead of serve failing with 'Name or service not known'."""
    path = _write(tmp_path, f"{section}: {{host: '{host}'}}\nauth: {{mode: disabled}}\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{section}.host: not an IP address or host name")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::1]", "localhost", "my_router.internal."])
def test_addresses_and_host_names_are_taken(host: str) -> None:
    """IPv4 and IPv6 addresses (bracketed or not) and host names pass."""
    settings = Settings.model_validate({"server": {"host": host}, "auth": {"mode": "disabled"}})
    assert settings.server.host == host.strip("[]")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("routing: {idempotent_paths: ['v2/']}\n", "routing.idempotent_paths.0"),
        ("cache: {no_coalesce_paths: [/v1/chat, v1/embeddings]}\n", "cache.no_coalesce_paths.1"),
        (
            "upstreams: [{name: a, tier: central, endpoints: [{url: 'http://a:8000'}],"
            " health_check: {path: healthz}}]\n",
            "upstreams.0.health_check.path",
        ),
    ],
)
def test_a_path_prefix_without_its_slash_is_refused(tmp_path: Path, text: str, key: str) -> None:
    """Request paths all begin with '/': a prefix written without it matched nothing (no
    retries, coalescing left on), and a health check path was glued to the endpoint's port
    (http://a:8000healthz: never healthy), silently; each is refused at its key."""
    (problem,) = _problems(_write(tmp_path, text))
    assert problem.startswith(f"{key}: String should match pattern")


CLUSTER = "upstreams: [{name: a, tier: central, endpoints: [{url: 'http://a'}], headers: %s}]\n"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ('{Authorization: "Bearer canary-7f3a\\n"}', "the value of Authorization holds a line"),
        ("{'Authorization: Bearer': canary-7f3a}", "'Authorization: Bearer' is no header name"),
        ("{'X-Key': \"canary-7f3a\\r\\nX-Other: 1\"}", "the value of X-Key holds a line break"),
    ],
)
def test_a_header_no_request_can_carry_is_refused(
    tmp_path: Path, headers: str, reason: str
) -> None:
    """An upstream header with a line break in its value (a YAML block scalar's last newline)
    or a name that is no token stopped serve with a stack trace (UnforwardableHeader from the
    first discovery) or failed every request as the client's fault; it is refused at its key,
    the value never quoted back."""
    (problem,) = _problems(_write(tmp_path, CLUSTER % headers))
    assert problem.startswith(f"upstreams.0.headers: {reason}")
    assert "canary-7f3a" not in problem


def test_a_bundle_sources_headers_are_checked_too(tmp_path: Path) -> None:
    """policy.source.headers are sent as written too: the same rule."""
    text = (
        "policy: {public_keys: [k.pub], source: {url: 'https://b.example/x.tar.gz',"
        ' headers: {Authorization: "Bearer x\\n"}}}\n'
    )
    problems = _problems(_write(tmp_path, text))
    assert "policy.source.headers: the value of Authorization holds a line break" in " ".join(
        problems
    )


def test_an_unexpanded_variable_is_refused_at_its_key(tmp_path: Path) -> None:
    """The config is read as written: `${STATE_DIR}/audit` made a folder named `${STATE_DIR}`,
    an upstream at `http://${HOST}` was never reached and `Bearer ${TOKEN}` was refused by it,
    all silently; each is refused at its key, naming the variable, quoting nothing else."""
    text = (
        "audit: {path: '${STATE_DIR}/audit'}\n"
        "upstreams: [{name: a, tier: central, endpoints: [{url: 'http://${HOST}:8000'}],"
        " headers: {Authorization: 'Bearer ${TOKEN:-canary-51c}'}}]\n"
    )
    problems = _problems(_write(tmp_path, text))
    assert [p.split(":")[0] for p in problems] == [
        "audit.path",
        "upstreams.0.endpoints.0.url",
        "upstreams.0.headers.Authorization",
    ]
    assert "holds ${TOKEN}, which is not expanded" in problems[2]
    assert "canary-51c" not in " ".join(problems)


def test_a_dollar_that_is_no_variable_is_kept(tmp_path: Path) -> None:
    """A `$` that does not open `${NAME}` (a password, a price) is a value like any other."""
    text = "upstreams: [{name: a, tier: central, endpoints: [{url: 'http://a'}],"
    text += " headers: {X-Key: 'pa$$word{1}', X-Other: '$HOME'}}]\n"
    settings = load_settings(_write(tmp_path, text))
    assert settings.upstreams[0].headers["X-Key"] == "pa$$word{1}"


def test_a_bracketed_ipv6_host_is_taken_as_the_address() -> None:
    """`--host [::1]` (the URL spelling) is the loopback ::1, not a name 'reachable from other
    machines' that then fails to resolve."""
    settings = Settings.model_validate({"server": {"host": "[::1]"}, "admin": {"host": "[::1]"}})
    assert (settings.server.host, settings.admin.host) == ("::1", "::1")


def test_a_section_left_empty_means_its_defaults(tmp_path: Path) -> None:
    """`server:` with every key under it commented out (YAML null) is the section's defaults,
    as if it were absent; a section that may be None (server.tls) keeps its None."""
    settings = load_settings(_write(tmp_path, "server:\n  # port: 9000\nmodels:\n"))
    assert (settings.server, settings.models) == (Settings().server, Settings().models)
    settings = load_settings(_write(tmp_path, "server:\n  tls:\n", name="tls.yaml"))
    assert settings.server.tls is None


class TestEndpointUrl:
    @pytest.mark.parametrize("url", ["http://a:99999", "http://a:0", "http://a:port", "http://:80"])
    def test_port_and_host_checked_at_load(self, tmp_path: Path, url: str) -> None:
        """An endpoint URL with no host or an impossible port is refused at load, not at the
        first request; the error names the key once (no echo of the tuple's length)."""
        text = f"upstreams:\n  - name: r\n    tier: regional\n    endpoints: [{{url: '{url}'}}]\n"
        problems = _problems(_write(tmp_path, text))
        assert len(problems) == 1, problems
        assert problems[0].startswith("upstreams.0.endpoints.0.url: ")

    def test_a_port_in_range_is_fine(self) -> None:
        """A URL with a host and a port from 1 to 65535 loads."""
        doc = {
            "upstreams": [{"name": "r", "tier": "regional", "endpoints": [{"url": "http://a:1"}]}]
        }
        assert Settings.model_validate(doc).upstreams[0].endpoints[0].url == "http://a:1"


class TestAuthCoolOff:
    @pytest.mark.parametrize("value", ["-1", "3601", "soon"])
    def test_out_of_range_is_refused_naming_the_key(self, tmp_path: Path, value: str) -> None:
        """outlier.auth_cooloff_s outside 0..3600 s (or not a number) is refused at load."""
        text = (
            "upstreams:\n  - name: r\n    tier: regional\n    endpoints: [{url: 'http://a:1'}]\n"
            f"    outlier: {{auth_cooloff_s: {value}}}\n"
        )
        (problem,) = _problems(_write(tmp_path, text))
        assert problem.startswith("upstreams.0.outlier.auth_cooloff_s: ")

    def test_default_is_thirty_seconds(self) -> None:
        """Without the key a refusing cluster is tried last for 30 s (0 is allowed: never)."""
        doc = {"upstreams": [{"name": "r", "tier": "regional", "endpoints": [{"url": "http://a"}]}]}
        assert Settings.model_validate(doc).upstreams[0].outlier.auth_cooloff_s == 30.0
        doc["upstreams"][0]["outlier"] = {"auth_cooloff_s": 0}
        assert Settings.model_validate(doc).upstreams[0].outlier.auth_cooloff_s == 0.0


def test_a_list_or_map_left_empty_is_an_empty_one(tmp_path: Path) -> None:
    """`upstreams:` with every cluster commented out, or `routing.models:` with every model,
    is YAML null too: an empty list or map (as the README says a section left empty is its
    defaults), not 'Input should be a valid tuple'; a required list says it needs an item."""
    text = (
        "upstreams:\n#  - name: regional\nrouting:\n  models:\n#    m: {heavy: true}\n"
        "  idempotent_paths:\nspool:\n  collector_sites:\n"
    )
    settings = load_settings(_write(tmp_path, text))
    assert (settings.upstreams, settings.routing.models, settings.spool) == (
        (),
        {},
        Settings().spool,
    )
    assert settings.routing.idempotent_paths == ()
    text = "upstreams:\n  - name: r\n    tier: regional\n    endpoints:\n"
    problems = _problems(_write(tmp_path, text, name="endpoints.yaml"))
    assert problems == [
        "upstreams.0.endpoints: Tuple should have at least 1 item after validation, not 0"
    ]


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        (
            'policy:\n  source: {url: "https://c.example/b.tar.gz",'
            ' headers: {Authorization: "Bearer a\\nb"}}\n  public_keys: [k.pub]\n',
            "policy.source.headers: the value of Authorization holds a line break",
        ),
        (
            'upstreams:\n  - name: c\n    tier: central\n    endpoints: [{url: "http://c:8000"}]\n'
            '    headers: {"X Key": "v"}\n',
            "upstreams.0.headers: 'X Key' is no header name",
        ),
    ],
)
def test_header_fields_in_config_must_be_sendable(
    tmp_path: Path, yaml_text: str, where: str
) -> None:
    """A header value with a line break (or a name with a space) was accepted, and the HTTP
    client then refused every request carrying it: the bundle source's poll task died on the
    ValueError, a cluster's requests each failed; now an error naming the key and field."""
    problems = _problems(_write(tmp_path, yaml_text))
    assert any(problem.startswith(where) for problem in problems), problems
