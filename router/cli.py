"""layer-router serve | check | audit | bundle | tenant | demo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import ValidationError

from router import __version__, logs, tenant_cli, yamlconf
from router.audit import cli as audit_cli
from router.errors import ConfigError
from router.flags import decimal, port
from router.inference.repository import Loader, ModelRepository, available_providers
from router.policy import cli as bundle_cli
from router.policy.bundle import PolicyBundle
from router.policy.cases import run_cases
from router.policy.distribution import checked_bundle
from router.privacy import Privacy, read_secret
from router.resources import demo_model_repository
from router.settings import Settings, load_settings
from router.settings.listener import MAX_WORKERS
from router.settings.upstream import EndpointSettings
from router.spool.sites import read_key_file
from router.store_paths import check_store_paths
from router.upstreams.tls import TlsContexts
from router.workers import admin_ports_problem, as_worker, supervise, worker_index


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layer-router", description="Layer-aware inference request router."
    )
    parser.add_argument("--version", action="version", version=f"layer-router {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve requests (embedded default config if none)")
    serve.add_argument(
        "--config",
        type=_config_file,
        default=os.environ.get("LAYER_ROUTER_CONFIG") or None,
        help="site config YAML (default: $LAYER_ROUTER_CONFIG, else the embedded config)",
    )
    serve.add_argument("--model-repository", type=_folder, help="model repository folder")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default 8000)")
    serve.add_argument(
        "--admin-port",
        type=_port,
        help="port of the admin listener, /metrics and /status (default 8002; 0 with --port 0)",
    )
    for tier in ("regional", "central"):
        serve.add_argument(
            f"--{tier}",
            action="append",
            default=[],
            type=_upstream_url,
            metavar="URL",
            help=f"a {tier} upstream endpoint (repeatable; adds a cluster named '{tier}')",
        )
    serve.add_argument("--offline", action="store_true", help="local-only: never forward")
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes sharing the port (SO_REUSEPORT) under a supervisor (default 1)",
    )
    serve.add_argument(
        "--auth",
        choices=("required", "disabled"),
        help="require tenants' API keys, or serve without (default: disabled on loopback only)",
    )

    check = commands.add_parser("check", help="validate a site config and the models it names")
    check.add_argument(
        "config",
        type=_config_file,
        nargs="?",
        default=os.environ.get("LAYER_ROUTER_CONFIG") or None,
        help="site config YAML (default: $LAYER_ROUTER_CONFIG, else the embedded config)",
    )
    check.add_argument("--model-repository", type=_folder, help="model repository folder")
    audit_cli.add_parser(commands)
    tenant_cli.add_parser(commands)
    bundle_cli.add_parser(commands)
    demo = commands.add_parser("demo", help="start an edge -> regional -> central demo on loopback")
    demo.add_argument(
        "--base-port",
        type=_base_port,
        default=8000,
        help="edge on this port, regional +10, central +20, switchboard +90 (0: any free ports)",
    )
    demo.add_argument("--workdir", type=_folder, help="keep configs, models and logs here")
    return parser


def _folder(text: str) -> Path:
    if not text:  # `--model-repository "$UNSET"` would otherwise serve the current folder
        raise ValueError(text)
    return Path(text)


_folder.__name__ = "folder (empty)"  # argparse: "invalid folder (empty) value: ''"


def _config_file(text: str) -> Path:
    if not text:  # `--config "$UNSET"` would otherwise read the current folder as the config
        raise ValueError(text)
    return Path(text)


_config_file.__name__ = "file (empty)"  # argparse: "invalid file (empty) value: ''"


# The flags' own checks, so that a bad value is one argparse line naming the flag and what
# it must be ("argument --port: invalid port (0 to 65535) value: '99999'"), not the
# settings model's wording about the key it lands in.
_port = port


def _workers(text: str) -> int:
    value = decimal(text)
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(text)
    return value


_workers.__name__ = f"worker count (1 to {MAX_WORKERS})"


def _upstream_url(text: str) -> str:
    try:
        EndpointSettings(url=text)  # the settings' own rule for an endpoint URL
    except ValidationError:
        raise ValueError(text) from None
    return text


_upstream_url.__name__ = "URL (http[s]://host[:port][/path], no query)"


DEMO_PORT_SPAN = 90  # the switchboard, the highest of the demo's ports, is at base + 90


def _base_port(text: str) -> int:
    value = decimal(text)
    if value != 0 and not 1 <= value <= 65535 - DEMO_PORT_SPAN:
        raise ValueError(text)
    return value


_base_port.__name__ = "base port (0, or 1 to 65445)"  # argparse names it in its error


def _demo(args: argparse.Namespace) -> int:
    from router.demo import DemoOptions, run

    if args.workdir is not None:
        try:
            args.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"error: --workdir {args.workdir}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return run(DemoOptions(args.base_port, args.workdir))


def _settings(args: argparse.Namespace) -> Settings:
    """The config file's settings with the command line's flags on top, validated again."""
    settings = load_settings(args.config)
    doc = settings.model_dump(mode="python")
    for key in ("host", "port", "workers"):
        if getattr(args, key, None) is not None:
            doc["server"][key] = getattr(args, key)
    admin_port = getattr(args, "admin_port", None)
    if admin_port is None and getattr(args, "port", None) == 0:
        admin_port = 0  # "any free port" for the API means the same for its admin listener
    if admin_port is not None:
        doc["admin"]["port"] = admin_port
    if args.model_repository:
        doc["models"]["repository"] = args.model_repository
    for tier in ("regional", "central"):
        urls = getattr(args, tier, None) or []
        if urls:
            doc["upstreams"] = [c for c in doc["upstreams"] if c["name"] != tier]
            doc["upstreams"].append(
                {"name": tier, "tier": tier, "endpoints": [{"url": u} for u in urls]}
            )
    if getattr(args, "offline", False):
        doc["routing"]["offline"] = True
    if getattr(args, "auth", None):
        doc["auth"]["mode"] = args.auth
    if worker_index() is not None:
        as_worker(doc)
    return yamlconf.validate(doc, Settings, "command line")


# A process killed by SIGPIPE exits 128 + 13 in the shell's eyes: `| head` scripts expect it.
BROKEN_PIPE_EXIT = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _command(argv)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not in a trace at exit
    except BrokenPipeError:
        # Python ignores SIGPIPE, so a closed pipe is an exception: end quietly, as
        # `cat | head` does, with stdout on /dev/null so the final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    return code


def _command(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "audit":
        return audit_cli.run(args)
    if args.command == "tenant":
        return tenant_cli.run(args)
    if args.command == "bundle":
        return bundle_cli.run(args)
    if args.command == "demo":
        return _demo(args)
    try:
        settings = _settings(args)
        bundle = checked_bundle(settings) if args.command == "check" else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.logging.level, settings.logging.format)
    if args.command == "check":
        try:
            _refused_by_serve(settings, bundle)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if bundle is None:
            source = settings.policy.source.url if settings.policy.source else ""
            print(f"policy bundle from {source}: verified when fetched")
            return check(settings)
        print(f"policy bundle '{bundle.manifest.name}' revision {bundle.revision} ({bundle.path})")
        policy = check_policy(bundle, settings)
        if policy == 2:
            return 2
        return max(policy, check(settings))
    if settings.server.workers > 1 and worker_index() is None:
        return supervise(settings, list(sys.argv[1:] if argv is None else argv))
    from router.server import serve

    # SIGHUP re-reads the file with the same command-line flags on top.
    return serve(settings, read_settings=lambda: _settings(args))


def _refused_by_serve(settings: Settings, bundle: PolicyBundle | None) -> None:
    """What `serve` would refuse at start-up (ConfigError): files it reads or writes, the
    OTEL_* variables, required authentication without a key. Blocking."""
    from router.app import check_auth  # the app and the tracing SDK only for `check`
    from router.telemetry.tracing import provider_from_env

    TlsContexts.from_settings(settings)  # every certificate file readable and valid
    ports = admin_ports_problem(settings)
    if ports is not None:
        raise ConfigError("server.workers", [ports])
    check_store_paths(settings)  # the spool and the audit log can be made where they go
    if settings.spool.collector_key_file is not None:
        read_key_file(settings.spool.collector_key_file)
    if bundle is None and settings.policy.secret_file is not None:
        read_secret(settings.policy.secret_file)  # no cases to run that would read it
    try:
        provider = provider_from_env()
    except ValueError as exc:
        raise ConfigError("environment", [str(exc)]) from None
    if provider is not None:
        provider.shutdown()
    if bundle is not None:
        embedded = settings.policy.source is None and settings.policy.bundle is None
        check_auth(settings, bundle, "embedded" if embedded else str(bundle.path))


def check_policy(bundle: PolicyBundle, settings: Settings) -> int:
    """Run the bundle's decision cases: 0 when all pass, 1 when one fails, 2 when one is
    malformed (the error names the file and key)."""
    try:
        results = run_cases(bundle, Privacy.build(bundle, settings.policy.secret_file))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(f"policy case '{result.name}' failed ({result.source}):", file=sys.stderr)
        print(*(f"  {p}" for p in result.problems), sep="\n", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} policy cases failed", file=sys.stderr)
        return 1
    print(f"{len(results)} policy cases passed")
    return 0


def check(settings: Settings) -> int:
    """Load every model the config names, as `serve` would, and report without serving."""
    path = settings.models.repository or demo_model_repository()
    with ThreadPoolExecutor(1) as executor:
        try:
            repository = Loader(settings.models, executor, available_providers()).load(path)
        except ConfigError as exc:  # the repository itself (not one model) is unusable
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for model in repository.models.values():
            for entry in model.versions.values():
                state = entry.provider if entry.ready else f"NOT LOADED: {entry.reason}"
                print(f"{model.name} v{entry.version}: {state}")
        problems = repository.failures + escalation_problems(settings, repository)
        repository.close()
    if problems:
        print("problems:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(
        f"ok: site '{settings.site.id}' ({settings.site.tier.value}), "
        f"{len(repository.models)} models in {path}"
    )
    return 0


def escalation_problems(settings: Settings, repository: ModelRepository) -> list[str]:
    """An escalation judged on an output the local model lacks would never fire, silently."""
    problems = []
    for name, route in settings.routing.models.items():
        rule, model = route.escalate, repository.models.get(name)
        if rule is None or rule.output is None or model is None:
            continue
        for entry in model.versions.values():
            if entry.signature is not None and entry.signature.output(rule.output) is None:
                problems.append(
                    f"routing.models.{name}.escalate.output: model '{name}' version "
                    f"{entry.version} has no output '{rule.output}'"
                )
    return problems
