"""Who may upload to the spool collector (router.spool.sites): each site's key checked against
hashes with its site id, a key of one site naming another refused, mTLS as the alternative,
and the config that refuses an exposed collector nobody authenticates."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from router.cli import main
from router.errors import BadRequest, ConfigError, SiteMismatch, Unauthorized
from router.settings import Settings, load_settings
from router.spool.collector import CollectorStore
from router.spool.retention import Retention
from router.spool.sites import (
    SITE_HEADER,
    PeerCertificate,
    SiteGuard,
    check_record_sites,
    read_key_file,
    sent_in_clear,
)
from router.spool.wire import Item
from router.tenancy import hash_key


def fixed_key(name: str) -> str:
    """A deterministic key for the tests (never a real secret)."""
    return "lr-test-" + hashlib.sha256(name.encode()).hexdigest()


KEY_A, KEY_B = fixed_key("site-a"), fixed_key("site-b")
SITES = {"site-a": hash_key(KEY_A), "site-b": [hash_key(KEY_B)]}


def settings(**sections: Any) -> Settings:
    return Settings.model_validate(sections)


def central(host: str = "0.0.0.0", **spool: Any) -> dict[str, Any]:
    return {
        "site": {"id": "hq", "tier": "central"},
        "server": {"host": host},
        "auth": {"mode": "disabled"},
        "spool": spool,
    }


def upload(key: str | None = None, site: str | None = None) -> dict[str, str]:
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if site is not None:
        headers[SITE_HEADER] = site
    return headers


@pytest.fixture
def guard() -> SiteGuard:
    return SiteGuard.of(settings(**central(collector_sites=SITES)))


class TestSiteGuard:
    def test_a_site_key_names_its_site(self, guard: SiteGuard) -> None:
        """Each site's key is admitted as that site, with or without the batch naming it."""
        assert guard.admit(upload(KEY_A, "site-a")) == "site-a"
        assert guard.admit(upload(KEY_B, "site-b")) == "site-b"
        assert guard.admit(upload(KEY_B)) == "site-b"

    def test_no_key_or_an_unknown_one_is_401(self, guard: SiteGuard) -> None:
        """No key, an unknown key, or a key's hash sent as the key are all refused with 401."""
        for headers in (upload(), upload(site="site-a"), upload(fixed_key("x"), "site-a")):
            with pytest.raises(Unauthorized):
                guard.admit(headers)
        with pytest.raises(Unauthorized):
            guard.admit(upload(hash_key(KEY_A), "site-a"))

    def test_one_sites_key_for_anothers_batch_is_403(self, guard: SiteGuard) -> None:
        """Site A's key on a batch that names site B: 403 site_mismatch."""
        with pytest.raises(SiteMismatch) as refused:
            guard.admit(upload(KEY_A, "site-b"))
        assert (refused.value.status, refused.value.code) == (403, "site_mismatch")

    def test_errors_quote_no_key(self, guard: SiteGuard) -> None:
        """The refusals' messages name neither the key presented nor any hash."""
        for headers in (upload(fixed_key("x")), upload(KEY_A, "site-b")):
            with pytest.raises((Unauthorized, SiteMismatch)) as refused:
                guard.admit(headers)
            for secret in (fixed_key("x"), KEY_A, hash_key(KEY_A), hash_key(KEY_A)[7:]):
                assert secret not in refused.value.message

    def test_mtls_certificate_is_enough(self) -> None:
        """With a client CA on the listener a verified certificate admits a batch without a
        key; without the certificate (or the CA) it does not, and a wrong key still fails."""
        tls = {"cert_file": "site.pem", "client_ca_file": "clients.pem"}
        mtls = SiteGuard.of(settings(**{**central(), "server": {"host": "0.0.0.0", "tls": tls}}))
        assert mtls.admit(upload(site="site-a"), certified=True) == "site-a"
        with pytest.raises(Unauthorized):
            mtls.admit(upload(site="site-a"), certified=False)
        both = settings(
            **{**central(collector_sites=SITES), "server": {"host": "0.0.0.0", "tls": tls}}
        )
        with pytest.raises(Unauthorized):
            SiteGuard.of(both).admit(upload(fixed_key("x")), certified=True)
        keys_only = SiteGuard.of(settings(**central(collector_sites=SITES)))
        with pytest.raises(Unauthorized):
            keys_only.admit(upload(site="site-a"), certified=True)  # no client CA: no mTLS

    def test_an_unchecked_site_name_must_be_a_site_id(self) -> None:
        """Where the batch's own word names its site (mTLS, open), it must look like a site id:
        that name is stored with its records."""
        with pytest.raises(BadRequest):
            SiteGuard().admit(upload(site="../../etc"))

    def test_loopback_without_keys_is_open(self) -> None:
        """A loopback-only central with no keys and no mTLS admits any upload (zero config)."""
        open_guard = SiteGuard.of(settings(site={"tier": "central"}))
        assert open_guard.open
        assert open_guard.admit(upload(site="anywhere")) == "anywhere"
        assert open_guard.admit(upload(fixed_key("x"))) is None


MTLS = {"cert_file": "site.pem", "client_ca_file": "clients.pem"}
FINGERPRINT_C = "ab" * 32
CERT_A = PeerCertificate("11" * 32, frozenset({"site-a.example"}))
CERT_C = PeerCertificate(FINGERPRINT_C, frozenset({"site-c.example"}))
CERT_X = PeerCertificate("22" * 32, frozenset({"anybody.example"}))  # bound to no site


def mtls_central(collector_sites: dict[str, Any]) -> Settings:
    doc = central(collector_sites=collector_sites)
    return settings(**{**doc, "server": {"host": "0.0.0.0", "tls": MTLS}})


@pytest.fixture
def bound() -> SiteGuard:
    """site-a by key and by its certificate's name, site-b by key only, site-c by the colon
    form of its certificate's fingerprint (as openssl prints it)."""
    colons = ":".join(FINGERPRINT_C.upper()[i : i + 2] for i in range(0, 64, 2))
    return SiteGuard.of(
        mtls_central(
            {
                "site-a": {"keys": [hash_key(KEY_A)], "certificate_names": ["Site-A.example"]},
                "site-b": hash_key(KEY_B),
                "site-c": {"certificates": [f"sha256:{colons}"]},
            }
        )
    )


class TestCertificateBinding:
    def test_a_bound_certificate_uploads_for_its_site(self, bound: SiteGuard) -> None:
        """A site's own certificate admits its batch, named or not, with or without its key."""
        assert bound.admit(upload(site="site-c"), certificate=CERT_C) == "site-c"
        assert bound.admit(upload(), certificate=CERT_C) == "site-c"
        assert bound.admit(upload(site="site-a"), certificate=CERT_A) == "site-a"
        assert bound.admit(upload(KEY_A, "site-a"), certificate=CERT_A) == "site-a"

    def test_a_certificate_bound_to_one_site_cannot_upload_for_another(
        self, bound: SiteGuard
    ) -> None:
        """Site C's certificate naming site A or B, with or without B's valid key: 403."""
        for headers in (upload(site="site-a"), upload(site="site-b"), upload(KEY_B, "site-b")):
            with pytest.raises(SiteMismatch):
                bound.admit(headers, certificate=CERT_C)
        with pytest.raises(SiteMismatch):
            bound.admit(upload(KEY_B), certificate=CERT_C)

    def test_an_unbound_certificate_cannot_upload_for_a_bound_site(self, bound: SiteGuard) -> None:
        """A valid certificate bound to no site cannot name a site bound to another one, even
        with that site's key; an unbound site stays open to it (bind every site to close it)."""
        with pytest.raises(SiteMismatch):
            bound.admit(upload(site="site-c"), certificate=CERT_X)
        with pytest.raises(SiteMismatch):
            bound.admit(upload(KEY_A, "site-a"), certificate=CERT_X)
        assert bound.admit(upload(site="site-b"), certificate=CERT_X) == "site-b"
        assert bound.admit(upload(site="site-z"), certificate=CERT_X) == "site-z"

    def test_without_a_certificate_keys_alone_vouch(self) -> None:
        """A connection with no client certificate (keys over plain HTTP) is judged by its key."""
        guard = SiteGuard.of(settings(**central(collector_sites={"site-a": hash_key(KEY_A)})))
        assert guard.admit(upload(KEY_A, "site-a")) == "site-a"

    def test_peer_certificate_reads_fingerprint_and_names(self) -> None:
        """The fingerprint is over the DER bytes; names are the CN and the DNS/IP/URI SANs."""

        class Connection:
            def getpeercert(self, binary_form: bool = False) -> Any:
                if binary_form:
                    return b"der bytes"
                return {
                    "subject": ((("organizationName", "Ops"),), (("commonName", "Plant-7"),)),
                    "subjectAltName": (
                        ("DNS", "plant-7.example"),
                        ("IP Address", "10.0.0.7"),
                        ("URI", "spiffe://hq/plant-7"),
                        ("email", "ops@example.com"),
                    ),
                }

        certificate = PeerCertificate.of(Connection())
        assert certificate is not None
        assert certificate.fingerprint == hashlib.sha256(b"der bytes").hexdigest()
        assert certificate.names == {
            "plant-7",
            "plant-7.example",
            "10.0.0.7",
            "spiffe://hq/plant-7",
        }
        assert PeerCertificate.of(None) is None


class TestRecordSites:
    @staticmethod
    def item(payload: bytes) -> Item:
        return Item("k", "sample", payload, 1.0, None)

    def test_a_record_naming_another_site_is_403(self) -> None:
        """A payload that names a site must name the uploader; the refusal names the record."""
        items = [self.item(b'{"site":"site-a"}'), self.item(b'{"site":"site-b","x":1}')]
        with pytest.raises(SiteMismatch, match="record 1"):
            check_record_sites(items, "site-a")
        with pytest.raises(SiteMismatch):
            check_record_sites([self.item(b' {"site": null}')], "site-a")

    def test_records_naming_no_site_pass(self) -> None:
        """Opaque payloads, JSON without a site, and unnamed uploads are not checked."""
        items = [self.item(b"x"), self.item(b'{"id":1}'), self.item(b'["site-b"]')]
        check_record_sites([*items, self.item(b'{"site":"site-a"}')], "site-a")
        check_record_sites([self.item(b'{"site":"site-b"}')], None)


class TestSettings:
    def test_certificate_bindings_need_mtls_and_a_site_needs_a_credential(self) -> None:
        """Binding certificates without a client CA, or a site with nothing, is refused; one
        certificate bound to two sites too."""
        with pytest.raises(ValueError, match=r"needs server\.tls\.client_ca_file"):
            settings(**central(collector_sites={"site-a": {"certificate_names": ["a.example"]}}))
        with pytest.raises(ValueError, match="names neither a key nor a certificate"):
            mtls_central({"site-a": {}})
        with pytest.raises(ValueError, match="hold the same certificate"):
            mtls_central(
                {
                    "site-a": {"certificates": ["sha256:" + "ab" * 32]},
                    "site-b": {"certificates": ["sha256:" + "AB" * 32]},
                }
            )
        with pytest.raises(ValueError, match="collector_sites"):
            mtls_central({"site-a": {"certificates": ["sha256:abc"]}})

    def test_exposed_collector_without_authentication_is_a_config_error(self) -> None:
        """Central on 0.0.0.0 with neither keys nor mTLS: an error naming the keys to set."""
        with pytest.raises(ValueError, match=r"spool\.collector_sites") as error:
            settings(**central())
        assert "server.tls.client_ca_file" in str(error.value)
        with pytest.raises(ValueError, match=r"spool\.collect is true"):
            settings(**{**central(collect=True), "site": {"tier": "edge"}})

    @pytest.mark.parametrize(
        "doc",
        [
            central(collector_sites=SITES),
            central(collect=False),
            central(host="127.0.0.1"),
            {**central(), "site": {"tier": "regional"}},
            {
                **central(),
                "server": {"host": "0.0.0.0", "tls": {"cert_file": "c", "client_ca_file": "ca"}},
            },
        ],
        ids=["keys", "collect-false", "loopback", "not-central", "mtls"],
    )
    def test_decided_collectors_validate(self, doc: dict[str, Any]) -> None:
        """Keys, mTLS, no collector, loopback, or a tier that does not collect: all valid."""
        settings(**doc)

    def test_site_keys_are_hashes_held_by_one_site(self) -> None:
        """A raw key instead of its hash, or one hash for two sites, is refused."""
        with pytest.raises(ValueError, match="collector_sites"):
            settings(**central(collector_sites={"site-a": KEY_A}))
        with pytest.raises(ValueError, match="sites site-a and site-b hold the same key hash"):
            settings(
                **central(collector_sites={"site-a": SITES["site-a"], "site-b": [SITES["site-a"]]})
            )

    def test_a_rotating_site_holds_two_hashes(self) -> None:
        """During rotation a site lists its old and new hashes; either key is admitted."""
        new = fixed_key("site-a-new")
        guard = SiteGuard.of(
            settings(**central(collector_sites={"site-a": [hash_key(KEY_A), hash_key(new)]}))
        )
        assert guard.admit(upload(KEY_A, "site-a")) == guard.admit(upload(new, "site-a"))

    def test_a_key_file_needs_a_collector(self) -> None:
        """A key file without a collector_url is a mistake worth naming."""
        with pytest.raises(ValueError, match="collector_key_file is set but collector_url"):
            settings(spool={"collector_key_file": "upload.key"})

    def test_key_file_is_relative_to_the_config(self, tmp_path: Path) -> None:
        """A relative spool.collector_key_file is read from the config file's folder."""
        config = tmp_path / "site.yaml"
        config.write_text(
            "spool: {collector_url: 'http://127.0.0.1:9', collector_key_file: keys/collector.key}\n"
        )
        assert load_settings(config).spool.collector_key_file == tmp_path / "keys/collector.key"


class TestKeyFile:
    @pytest.mark.parametrize(
        ("url", "clear"),
        [
            ("http://central.example.com:8000", True),
            ("http://10.0.0.5", True),
            ("https://central.example.com", False),
            ("http://127.0.0.1:8000", False),
            ("http://localhost:8000/", False),
        ],
    )
    def test_keys_in_clear_are_noticed(self, url: str, clear: bool) -> None:
        """Plain http to another machine would carry the key unencrypted: warned at start-up."""
        assert sent_in_clear(url) is clear

    def test_the_key_is_read_without_its_newline(self, tmp_path: Path) -> None:
        """The key as `layer-router tenant new-key` prints it, with a trailing newline."""
        path = tmp_path / "collector.key"
        path.write_text(KEY_A + "\n")
        assert read_key_file(path) == KEY_A

    @pytest.mark.parametrize(
        "content", ["short-but-secret", "two words-of-a-key-long-enough", ""], ids=repr
    )
    def test_a_bad_key_file_is_a_config_error_that_quotes_nothing(
        self, tmp_path: Path, content: str
    ) -> None:
        """Too short, with spaces, or empty: a config error naming the file, not its content."""
        path = tmp_path / "collector.key"
        path.write_text(content)
        with pytest.raises(ConfigError) as error:
            read_key_file(path)
        assert str(path) in str(error.value)
        assert "spool.collector_key_file" in str(error.value)
        if content:
            assert content not in str(error.value)

    def test_a_missing_key_file_is_a_config_error(self, tmp_path: Path) -> None:
        """An unreadable file stops start-up with an error that names it."""
        with pytest.raises(ConfigError, match="cannot read it"):
            read_key_file(tmp_path / "absent.key")


OLD_RECEIVED = """
CREATE TABLE received (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    payload BLOB NOT NULL, created REAL NOT NULL, expires REAL, received REAL NOT NULL
);
INSERT INTO received (key, kind, payload, created, expires, received)
    VALUES ('old', 'audit', x'00', 1.0, NULL, 2.0);
"""


class TestStoredSite:
    def test_records_keep_the_site_that_uploaded_them(self, tmp_path: Path) -> None:
        """Each record stores its uploader; another site's record under the same key is that
        site's own and changes nothing of the first."""
        store = CollectorStore.open_sync(tmp_path / "collector.sqlite3")
        try:
            store.add_sync([Item("k1", "audit", b"p", 1.0, None)], "site-a")
            store.add_sync([Item("k1", "audit", b"q", 1.0, None)], "site-b")
            store.add_sync([Item("k2", "audit", b"p", 1.0, None)])
            assert [(r.item.key, r.item.payload, r.site) for r in store.read_sync()] == [
                ("k1", b"p", "site-a"),
                ("k1", b"q", "site-b"),
                ("k2", b"p", None),
            ]
        finally:
            store.close_sync()

    def test_no_site_can_take_another_sites_next_key(self, tmp_path: Path) -> None:
        """A site uploading first under the key another site will use (an audit id it saw in
        an X-Audit-Id) does not get the real record dropped as a duplicate: that one is new,
        and the owner's resend of it is the duplicate."""
        store = CollectorStore.open_sync(tmp_path / "collector.sqlite3")
        try:
            forged = store.add_sync([Item("audit:01X", "audit", b"forged", 1.0, None)], "site-b")
            real = store.add_sync([Item("audit:01X", "audit", b"real", 1.0, None)], "site-a")
            again = store.add_sync([Item("audit:01X", "audit", b"real", 1.0, None)], "site-a")
            assert (forged.new, real.new, again.duplicates) == (1, 1, 1)
            held = {r.site: r.item.payload for r in store.read_sync()}
            assert held == {"site-b": b"forged", "site-a": b"real"}
        finally:
            store.close_sync()

    def test_a_record_stored_before_keys_were_scoped_is_still_a_duplicate(
        self, tmp_path: Path
    ) -> None:
        """A file from before keys were scoped by site: its site's resend of a record it holds
        is a duplicate, not a second copy; another site's record under that key is new."""
        path = tmp_path / "collector.sqlite3"
        store = CollectorStore.open_sync(path)
        store.close_sync()
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            # Received just now: within the collector's retention.
            conn.execute(
                "INSERT INTO received (key, kind, payload, created, expires, received, site)"
                " VALUES ('audit:old', 'audit', x'00', 1.0, NULL, ?, 'site-a')",
                (time.time(),),
            )
        store = CollectorStore.open_sync(path)
        try:
            resend = store.add_sync([Item("audit:old", "audit", b"\x00", 1.0, None)], "site-a")
            other = store.add_sync([Item("audit:old", "audit", b"\x01", 1.0, None)], "site-b")
            assert (resend.duplicates, other.new) == (1, 1)
            assert [(r.item.key, r.site) for r in store.read_sync()] == [
                ("audit:old", "site-a"),
                ("audit:old", "site-b"),
            ]
        finally:
            store.close_sync()

    def test_a_store_from_before_sites_authenticated_opens(self, tmp_path: Path) -> None:
        """A file without the site column gains it; its records stay, with no site."""
        path = tmp_path / "collector.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.executescript(OLD_RECEIVED)
        # Its record was received in 1970: a retention that still holds it.
        store = CollectorStore.open_sync(path, retention=Retention(max_age_s=1e12))
        try:
            store.add_sync([Item("new", "audit", b"p", 1.0, None)], "site-a")
            assert [(r.item.key, r.site) for r in store.read_sync()] == [
                ("old", None),
                ("new", "site-a"),
            ]
        finally:
            store.close_sync()
        reopened = CollectorStore.open_sync(path)  # the column is added once
        reopened.close_sync()


def test_check_command_reads_the_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`layer-router check` reads the upload key file too: a bad one is exit 2, not quoted."""
    (tmp_path / "upload.key").write_text("too-short-a-secret")
    config = tmp_path / "site.yaml"
    config.write_text(
        "spool: {collector_url: 'https://hq.example', collector_key_file: upload.key}\n"
    )
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "spool.collector_key_file" in err
    assert "too-short-a-secret" not in err


def test_sites_with_certificates_only_and_no_mtls_are_not_open() -> None:
    """Sites bound by certificate alone on a listener without mTLS (a reload can combine them
    while the listener waits for a restart): nobody is admitted, the collector is not open."""
    spool = mtls_central({"site-c": {"certificate_names": ["c.example"]}}).spool
    running = settings(**central(host="127.0.0.1")).model_copy(update={"spool": spool})
    guard = SiteGuard.of(running)
    assert not guard.open
    with pytest.raises(Unauthorized):
        guard.admit(upload(site="site-c"))
