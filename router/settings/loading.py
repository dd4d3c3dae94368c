"""Reading a site config file: its settings over the defaults, its relative paths made absolute."""

from __future__ import annotations

from pathlib import Path

from router import yamlconf
from router.settings.document import Settings
from router.settings.listener import ListenerTlsSettings
from router.settings.upstream import TlsSettings


def load_settings(path: Path | None) -> Settings:
    """The embedded default when `path` is None, else the file's settings over the defaults."""
    if path is None:
        return Settings()
    settings = yamlconf.load(path, Settings, refuse_variables=True)
    repo = settings.models.repository
    if repo is not None and not repo.is_absolute():
        models = settings.models.model_copy(update={"repository": path.parent / repo})
        settings = settings.model_copy(update={"models": models})
    policy = settings.policy
    relative: dict[str, object] = {
        key: path.parent / value
        for key, value in (("bundle", policy.bundle), ("secret_file", policy.secret_file))
        if value is not None and not value.is_absolute()
    }
    if policy.public_keys:
        relative["public_keys"] = tuple(path.parent / key for key in policy.public_keys)
    source = policy.source
    if source is not None and source.path is not None and not source.path.is_absolute():
        relative["source"] = source.model_copy(update={"path": path.parent / source.path})
    if relative:
        settings = settings.model_copy(update={"policy": policy.model_copy(update=relative)})
    spool = settings.spool
    spool_files = {
        key: path.parent / value
        for key, value in (("path", spool.path), ("collector_key_file", spool.collector_key_file))
        if value is not None and not value.is_absolute()
    }
    if spool_files:
        spool = spool.model_copy(update=spool_files)
        settings = settings.model_copy(update={"spool": spool})
    # Only a path the file names is the file's; the default stays in the working directory.
    audit_path = settings.audit.path
    if audit_path is not None and not audit_path.is_absolute():
        audit = settings.audit.model_copy(update={"path": path.parent / audit_path})
        settings = settings.model_copy(update={"audit": audit})
    return _tls_paths_resolved(settings, path.parent)


def _tls_paths_resolved(settings: Settings, folder: Path) -> Settings:
    """Certificate paths relative to the config file's folder, like every other path in it."""

    def resolved(tls: ListenerTlsSettings | TlsSettings) -> dict[str, Path]:
        return {
            key: folder / value
            for key, value in tls.model_dump().items()
            if isinstance(value, Path) and not value.is_absolute()
        }

    update: dict[str, object] = {}
    server_tls = settings.server.tls
    if server_tls is not None and resolved(server_tls):
        listener = server_tls.model_copy(update=resolved(server_tls))
        update["server"] = settings.server.model_copy(update={"tls": listener})
    spool_tls = settings.spool.tls
    if resolved(spool_tls):
        collector = spool_tls.model_copy(update=resolved(spool_tls))
        update["spool"] = settings.spool.model_copy(update={"tls": collector})
    source = settings.policy.source
    if source is not None and resolved(source.tls):
        fetching = source.model_copy(
            update={"tls": source.tls.model_copy(update=resolved(source.tls))}
        )
        update["policy"] = settings.policy.model_copy(update={"source": fetching})
    clusters = tuple(
        c.model_copy(update={"tls": c.tls.model_copy(update=resolved(c.tls))})
        for c in settings.upstreams
    )
    if clusters != settings.upstreams:
        update["upstreams"] = clusters
    return settings.model_copy(update=update) if update else settings
