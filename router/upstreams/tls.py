"""TLS contexts, both directions: each cluster's client side (CA bundle, client certificate and
key, the server name to verify) and the listener's server side (certificate, optional client CA
that makes client certificates required).

Certificates rotate while a site runs, so every context is rebuildable: `reload()` stats the
files and builds anew only when one changed (a bad new file raises ConfigError and the old
context stays in use). `TlsContexts.reload()` is the one hook hot reload (SIGHUP, polling)
calls; it is cheap when nothing changed.

- A client context is swapped whole: the transport passes `ClientTls.context` with every
  request and aiohttp keys pooled connections by context, so new requests open connections
  with the new certificates while connections already open finish their requests.
- The listener's context is bound to the listening socket, so it is updated in place: new
  handshakes present the new certificate. A rotated client CA file is added to the trusted
  set; a CA removed from it stays trusted until restart (OpenSSL cannot forget one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

from router.errors import ConfigError
from router.settings import ClusterSettings, ListenerTlsSettings, Settings, TlsSettings

log = logging.getLogger(__name__)

Stamp = tuple[tuple[str, int, int], ...]


def _stamp(paths: Iterable[Path | None]) -> Stamp:
    """Each file's (path, mtime, size); a file that vanished stamps as (path, -1, -1)."""
    stamps = []
    for path in paths:
        if path is None:
            continue
        try:
            info = os.stat(path)
            stamps.append((str(path), info.st_mtime_ns, info.st_size))
        except OSError:
            stamps.append((str(path), -1, -1))
    return tuple(stamps)


def _readable(where: str, key: str, path: Path) -> str:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(where, [f"{key}: cannot read {path}: {exc.strerror or exc}"]) from None
    return str(path)


def client_context(tls: TlsSettings, where: str) -> ssl.SSLContext | bool:
    """The context for one cluster; True (aiohttp's default verification) when nothing is set."""
    if tls.key_file is not None and tls.cert_file is None:
        raise ConfigError(where, ["key_file: given without cert_file"])
    if not (tls.ca_file or tls.cert_file) and tls.verify:
        return True
    cafile = _readable(where, "ca_file", tls.ca_file) if tls.ca_file else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise ConfigError(where, [f"ca_file: no valid CA certificate in {cafile}: {exc}"]) from None
    if tls.cert_file is not None:
        _load_chain(context, where, tls.cert_file, tls.key_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def listener_context(tls: ListenerTlsSettings, where: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_listener_files(context, tls, where)
    if tls.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_listener_files(context: ssl.SSLContext, tls: ListenerTlsSettings, where: str) -> None:
    _load_chain(context, where, tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        cafile = _readable(where, "client_ca_file", tls.client_ca_file)
        try:
            context.load_verify_locations(cafile=cafile)
        except ssl.SSLError as exc:
            problem = f"client_ca_file: no valid CA certificate in {cafile}: {exc}"
            raise ConfigError(where, [problem]) from None


def _load_chain(context: ssl.SSLContext, where: str, cert: Path, key: Path | None) -> None:
    certfile = _readable(where, "cert_file", cert)
    keyfile = _readable(where, "key_file", key) if key is not None else None
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        problem = f"cert_file/key_file: not a valid certificate and matching key: {exc}"
        raise ConfigError(where, [problem]) from None


class ClientTls:
    """One cluster's client TLS: the context and server name every request to it uses."""

    def __init__(self, settings: TlsSettings, where: str) -> None:
        self.settings = settings
        self.where = where
        # SNI and the certificate check use this name instead of the URL's host when set.
        self.server_hostname = settings.server_name
        self._stamp = self._files_stamp()
        self.context = client_context(settings, where)

    def _files_stamp(self) -> Stamp:
        s = self.settings
        return _stamp((s.ca_file, s.cert_file, s.key_file))

    def reload(self) -> bool:
        """Rebuild when a file changed: True if it did. ConfigError keeps the old context."""
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        self.context = client_context(self.settings, self.where)
        self._stamp = stamp
        return True


class ListenerTls:
    """The listener's server context, updated in place (it is bound to the listening socket)."""

    def __init__(self, settings: ListenerTlsSettings, where: str = "server.tls") -> None:
        self.settings = settings
        self.where = where
        self._stamp = self._files_stamp()
        self.context = listener_context(settings, where)

    def _files_stamp(self) -> Stamp:
        s = self.settings
        return _stamp((s.cert_file, s.key_file, s.client_ca_file))

    def reload(self) -> bool:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        listener_context(self.settings, self.where)  # all files valid, or the old ones stay
        _load_listener_files(self.context, self.settings, self.where)
        self._stamp = stamp
        return True


class TlsContexts:
    """Every TLS context of a site: the reload hook's one entry point."""

    def __init__(
        self,
        listener: ListenerTls | None,
        clients: Mapping[str, ClientTls],
        collector: ClientTls | None = None,
    ) -> None:
        self.listener = listener
        self.clients = dict(clients)  # by cluster name
        self.collector = collector or ClientTls(TlsSettings(), "spool.tls")  # spool uploads

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsContexts:
        """Reads and checks every file now: a bad one is a ConfigError at start-up."""
        listener = ListenerTls(settings.server.tls) if settings.server.tls else None
        clients = {c.name: ClientTls(c.tls, f"upstreams.{c.name}.tls") for c in settings.upstreams}
        return cls(listener, clients, ClientTls(settings.spool.tls, "spool.tls"))

    def clients_for(self, clusters: Iterable[ClusterSettings]) -> dict[str, ClientTls]:
        """Client TLS for a reloaded `upstreams` list: the running context where a cluster's
        TLS settings did not change, a new one (files read now) where they did. Blocking file
        I/O; a bad file raises ConfigError."""
        out: dict[str, ClientTls] = {}
        for cluster in clusters:
            running = self.clients.get(cluster.name)
            if running is not None and running.settings == cluster.tls:
                out[cluster.name] = running
            else:
                out[cluster.name] = ClientTls(cluster.tls, f"upstreams.{cluster.name}.tls")
        return out

    def reload(self) -> list[str]:
        """Re-read changed certificate files; the problems found (those contexts keep the old
        files). Blocking file I/O: call it from a thread (asyncio.to_thread)."""
        problems: list[str] = []
        for tls in (self.listener, *self.clients.values(), self.collector):
            if tls is None:
                continue
            try:
                tls.reload()
            except ConfigError as exc:
                problems.append(f"{exc.source}: " + "; ".join(exc.problems))
        return problems


async def reload_contexts(contexts: TlsContexts) -> list[str]:
    """`contexts.reload()` off the event loop, each problem logged (paths and reasons only)."""
    problems = await asyncio.to_thread(contexts.reload)
    for problem in problems:
        log.warning("certificate files not reloaded, the old ones stay in use: %s", problem)
    return problems
