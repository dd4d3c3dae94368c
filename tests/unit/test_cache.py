"""router/cache.py: keyed digests, freshness and staleness on a fake clock, the byte-bounded LRU,
and what the request's and the upstream's Cache-Control headers allow."""

from __future__ import annotations

import email.utils
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.cache import (
    Entry,
    Outcome,
    RequestDirectives,
    ResponseCache,
    entry_headers,
    must_revalidate,
    response_ttl,
    upstream_age,
)
from router.context import Reply, RequestContext
from router.policy.bundle import load_bundle
from router.resources import default_policy_bundle
from router.settings import CacheSettings, SiteSettings
from router.stages.cache import LookupCache

SECRET = b"s" * 32
# What an entry costs besides its body and events: a fixed part and make_entry's one header.
OVERHEAD = 256 + len("Cache-Control") + len("max-age=10")


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_entry(
    stored_at: float,
    *,
    body: bytes = b'{"ok": true}',
    fresh_s: float = 10.0,
    events: tuple[bytes, ...] | None = None,
) -> Entry:
    return Entry(
        status=200,
        content_type="application/json",
        headers=(("Cache-Control", "max-age=10"),),
        body=body,
        events=events,
        stored_at=stored_at,
        fresh_s=fresh_s,
        tier="edge",
        reasons="local",
    )


def make_cache(
    clock: Clock, *, max_bytes: int = 1 << 20, max_stale_s: float = 60.0
) -> ResponseCache:
    return ResponseCache(SECRET, max_bytes, max_stale_s, clock=clock)


class TestKey:
    def test_same_parts_give_the_same_key(self) -> None:
        """A key is a pure function of the secret and the parts."""
        cache = make_cache(Clock())
        parts = ["kserve-v2", "/v2/models/m/infer", "m", "", b'{"a":1}']
        assert cache.key(parts) == cache.key(list(parts))
        assert len(cache.key(parts)) == 32  # HMAC-SHA256

    def test_str_and_bytes_parts_are_the_same_part(self) -> None:
        """A str part is its UTF-8 bytes: callers may pass either."""
        cache = make_cache(Clock())
        assert cache.key(["modèle", "x"]) == cache.key(["modèle".encode(), b"x"])

    @pytest.mark.parametrize(
        ("left", "right"),
        [
            (["ab", "c"], ["a", "bc"]),
            (["a", ""], ["a"]),
            ([""], []),
            (["", ""], [""]),
            (["a\x00b"], ["a", "b"]),
            ([b"\x01\x00\x00\x00\x00\x00\x00\x00a"], ["a"]),  # a part that looks like framing
        ],
    )
    def test_shifting_bytes_between_parts_changes_the_key(
        self, left: list[str | bytes], right: list[str | bytes]
    ) -> None:
        """Parts are length-framed: the same bytes split differently never collide."""
        cache = make_cache(Clock())
        assert cache.key(left) != cache.key(right)

    @given(
        st.lists(st.binary(max_size=12), max_size=5), st.lists(st.binary(max_size=12), max_size=5)
    )
    def test_different_part_lists_never_share_a_key(
        self, left: list[bytes], right: list[bytes]
    ) -> None:
        """Any two different part lists get different keys."""
        cache = ResponseCache(SECRET, 1024, 0.0)
        assert (cache.key(left) == cache.key(right)) == (left == right)

    def test_key_depends_on_the_secret(self) -> None:
        """Without the site secret nobody can compute (or match guesses against) a key."""
        parts = ["openai", "/v1/embeddings", b'{"input":"x"}']
        one = ResponseCache(SECRET, 1024, 0.0)
        other = ResponseCache(b"t" * 32, 1024, 0.0)
        assert one.key(parts) != other.key(parts)


class TestFreshness:
    def test_a_fresh_entry_is_a_hit(self) -> None:
        """Within its freshness an entry is served as a HIT, stale allowed or not."""
        clock = Clock()
        cache = make_cache(clock)
        entry = make_entry(clock.now, fresh_s=10.0)
        cache.put(b"k", entry)
        clock.advance(9.5)
        assert cache.get(b"k", allow_stale=False) == (entry, Outcome.HIT)
        assert cache.get(b"k", allow_stale=True) == (entry, Outcome.HIT)
        assert entry.age(clock.now) == 9.5

    def test_a_missing_key_is_none(self) -> None:
        """Nothing stored, nothing found."""
        assert make_cache(Clock()).get(b"nope", allow_stale=True) is None

    def test_past_freshness_only_a_stale_lookup_finds_it(self) -> None:
        """Once its freshness is over an entry is STALE, and only for a caller who allows it;
        a lookup that does not allow stale leaves it in place for one that does."""
        clock = Clock()
        cache = make_cache(clock, max_stale_s=60.0)
        entry = make_entry(clock.now, fresh_s=10.0)
        cache.put(b"k", entry)
        clock.advance(10.0)  # freshness is a half-open interval: age 10 of 10 is stale
        assert cache.get(b"k", allow_stale=False) is None
        assert cache.get(b"k", allow_stale=True) == (entry, Outcome.STALE)
        clock.advance(50.0)  # age 60: fresh 10 + stale 60 still covers it
        assert cache.get(b"k", allow_stale=True) == (entry, Outcome.STALE)

    def test_past_freshness_and_max_stale_the_entry_is_gone(self) -> None:
        """Past fresh + max_stale an entry is dropped, and its bytes freed."""
        clock = Clock()
        cache = make_cache(clock, max_stale_s=60.0)
        cache.put(b"k", make_entry(clock.now, fresh_s=10.0))
        assert cache.bytes_used > 0
        clock.advance(70.001)
        assert cache.get(b"k", allow_stale=True) is None
        assert cache.bytes_used == 0
        clock.advance(-70.001)  # even were time to run back, it was removed
        assert cache.get(b"k", allow_stale=True) is None

    def test_without_max_stale_an_expired_entry_is_gone_at_once(self) -> None:
        """max_stale_s 0: no grace period, nothing served past freshness."""
        clock = Clock()
        cache = make_cache(clock, max_stale_s=0.0)
        cache.put(b"k", make_entry(clock.now, fresh_s=1.0))
        clock.advance(1.5)
        assert cache.get(b"k", allow_stale=True) is None

    def test_age_never_goes_negative(self) -> None:
        """An entry read at a time before its store (another clock) reports age 0, still fresh."""
        entry = make_entry(1000.0, fresh_s=5.0)
        assert entry.age(990.0) == 0.0
        assert entry.fresh(990.0)

    def test_now_is_the_injected_clock(self) -> None:
        """Stages stamp entries with the cache's clock, so a fake clock drives all of it."""
        clock = Clock()
        cache = make_cache(clock)
        clock.advance(3.0)
        assert cache.now() == 1003.0


class TestBoundedByBytes:
    def test_entry_size_counts_body_events_and_overhead(self) -> None:
        """An entry weighs its body, every recorded event and a fixed overhead."""
        assert make_entry(0.0, body=b"x" * 100).size == 100 + OVERHEAD
        streamed = make_entry(0.0, body=b"", events=(b"data: 1\n\n", b"data: [DONE]\n\n"))
        assert streamed.size == 9 + 14 + OVERHEAD

    def test_entry_size_counts_its_headers(self) -> None:
        """Headers an upstream sent weigh in: 60 KB of them on a tiny body are 60 KB of cache."""
        heavy = replace(make_entry(0.0, body=b"x"), headers=(("X-Big", "v" * 60_000),))
        assert heavy.size == 1 + len("X-Big") + 60_000 + 256

    def test_least_recently_used_entry_is_evicted_first(self) -> None:
        """Storing past max_bytes evicts the entry read or written longest ago."""
        clock = Clock()
        one = 100 + OVERHEAD
        cache = make_cache(clock, max_bytes=3 * one)
        for key in (b"a", b"b", b"c"):
            cache.put(key, make_entry(clock.now, body=b"x" * 100))
        assert cache.bytes_used == 3 * one
        assert cache.get(b"a", allow_stale=False) is not None  # a is now the most recent
        cache.put(b"d", make_entry(clock.now, body=b"y" * 100))
        assert cache.get(b"b", allow_stale=True) is None
        for key in (b"a", b"c", b"d"):
            assert cache.get(key, allow_stale=False) is not None
        assert cache.bytes_used == 3 * one

    def test_a_large_entry_evicts_as_many_as_it_needs(self) -> None:
        """One big entry pushes out several small ones, never exceeding max_bytes."""
        clock = Clock()
        small = 10 + OVERHEAD
        cache = make_cache(clock, max_bytes=4 * small)
        for key in (b"a", b"b", b"c", b"d"):
            cache.put(key, make_entry(clock.now, body=b"x" * 10))
        cache.put(b"big", make_entry(clock.now, body=b"z" * (2 * small)))
        assert cache.bytes_used <= 4 * small
        assert cache.get(b"big", allow_stale=False) is not None
        assert cache.get(b"a", allow_stale=True) is None
        assert cache.get(b"b", allow_stale=True) is None

    def test_an_entry_larger_than_the_cache_is_not_stored(self) -> None:
        """Too big to ever fit: not stored, nothing evicted, no error."""
        clock = Clock()
        cache = make_cache(clock, max_bytes=1000)
        cache.put(b"small", make_entry(clock.now, body=b"x" * 10))
        used = cache.bytes_used
        cache.put(b"huge", make_entry(clock.now, body=b"x" * 1000))
        assert cache.get(b"huge", allow_stale=True) is None
        assert cache.get(b"small", allow_stale=True) is not None
        assert cache.bytes_used == used

    def test_replacing_an_entry_accounts_for_the_new_size(self) -> None:
        """A key stored twice weighs only its latest entry."""
        clock = Clock()
        cache = make_cache(clock)
        cache.put(b"k", make_entry(clock.now, body=b"x" * 500))
        cache.put(b"k", make_entry(clock.now, body=b"x" * 10))
        assert cache.bytes_used == 10 + OVERHEAD


class TestCounts:
    def test_every_outcome_starts_at_zero_and_counts_up(self) -> None:
        """Counters exist for every outcome from the start (scrapes see zeros, not gaps)."""
        cache = make_cache(Clock())
        assert cache.counts == dict.fromkeys(Outcome, 0)
        cache.count(Outcome.HIT)
        cache.count(Outcome.HIT)
        cache.count(Outcome.BYPASS)
        assert cache.counts[Outcome.HIT] == 2
        assert cache.counts[Outcome.BYPASS] == 1
        assert cache.counts[Outcome.MISS] == cache.counts[Outcome.STALE] == 0

    def test_outcomes_are_the_header_values(self) -> None:
        """The enum's values are what X-Cache says."""
        assert [o.value for o in Outcome] == ["HIT", "MISS", "STALE", "BYPASS"]


class TestRequestDirectives:
    @pytest.mark.parametrize("header", [None, "", "max-age=0", "no-transform", "only-if-cached"])
    def test_without_no_cache_or_no_store_both_are_allowed(self, header: str | None) -> None:
        """Other request directives neither skip the lookup nor the store."""
        directives = RequestDirectives.parse(header)
        assert (directives.lookup, directives.store) == (True, True)

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("max-age=0", RequestDirectives(max_age=0.0)),
            ("Max-Age=30, min-fresh=5", RequestDirectives(max_age=30.0, min_fresh=5.0)),
            ("max-stale", RequestDirectives(max_stale=float("inf"))),
            ('max-stale="20"', RequestDirectives(max_stale=20.0)),
            ("max-stale=soon", RequestDirectives()),
            ("only-if-cached", RequestDirectives(only_if_cached=True)),
            ("max-age=99999999999999", RequestDirectives(max_age=2.0**31)),
            ("max-age=-1, min-fresh=\u00b2", RequestDirectives()),
        ],
    )
    def test_age_limits_are_read(self, header: str, expected: RequestDirectives) -> None:
        """max-age, min-fresh, max-stale and only-if-cached as RFC 9111 §5.2.1 spells them;
        what is no delta-seconds is ignored."""
        assert RequestDirectives.parse(header) == expected

    def test_fresh_enough_and_takes_stale_follow_the_limits(self) -> None:
        """An entry fresh for 10 s, 12 s old: stale; max-stale=2 takes it, max-stale=1 does not,
        and max-age=11 refuses it whatever max-stale says."""
        entry = make_entry(stored_at=0.0, fresh_s=10.0)
        assert not RequestDirectives().fresh_enough(entry, 12.0)
        assert RequestDirectives(max_stale=2.0).takes_stale(entry, 12.0)
        assert not RequestDirectives(max_stale=1.0).takes_stale(entry, 12.0)
        assert not RequestDirectives(max_stale=5.0, max_age=11.0).takes_stale(entry, 12.0)
        assert not RequestDirectives().takes_stale(entry, 12.0)
        assert RequestDirectives(min_fresh=3.0).fresh_enough(entry, 6.0)
        assert not RequestDirectives(min_fresh=4.0).fresh_enough(entry, 6.0)

    @pytest.mark.parametrize(
        "header", ["no-cache", "No-Cache", "  no-cache  ", "max-age=5, NO-CACHE"]
    )
    def test_no_cache_skips_the_lookup_but_stores(self, header: str) -> None:
        """no-cache: go to the origin, but what comes back may be kept."""
        directives = RequestDirectives.parse(header)
        assert (directives.lookup, directives.store) == (False, True)

    @pytest.mark.parametrize(
        "header",
        ["no-store", "NO-STORE", " no-store ,", "no-cache, no-store", "max-age=0,no-store"],
    )
    def test_no_store_neither_looks_up_nor_stores(self, header: str) -> None:
        """no-store wins over everything: the cache is not touched at all."""
        assert RequestDirectives.parse(header) == RequestDirectives(lookup=False, store=False)


class TestResponseTtl:
    @pytest.mark.parametrize(
        ("header", "ttl"),
        [
            ("max-age=60", 60.0),
            ("MAX-AGE=60", 60.0),
            ("public, max-age=5", 5.0),
            ("public,max-age=5,must-revalidate", 5.0),
            ('max-age="7"', 7.0),
            ("s-maxage=30", 30.0),
            ("public, s-maxage=30", 30.0),
            ("max-age=0", 0.0),
        ],
    )
    def test_max_age_and_s_maxage_win_over_the_default(self, header: str, ttl: float) -> None:
        """An upstream's stated lifetime replaces the configured default."""
        assert response_ttl(header, 300.0) == ttl

    def test_s_maxage_wins_over_max_age_for_a_shared_cache(self) -> None:
        """The router is a shared cache: s-maxage overrides max-age whatever their order."""
        assert response_ttl("max-age=60, s-maxage=5", 300.0) == 5.0

    @pytest.mark.parametrize(
        "header",
        [
            "no-store",
            "private",
            "no-cache",
            "No-Store",
            "private, max-age=60",
            "max-age=60, no-store",
            'private="set-cookie"',
            "public, no-cache, max-age=60",
        ],
    )
    def test_no_store_private_and_no_cache_are_never_stored(self, header: str) -> None:
        """An upstream that did not want its answer shared is not shared, max-age or not."""
        assert response_ttl(header, 300.0) is None

    def test_a_huge_lifetime_is_capped(self) -> None:
        """delta-seconds past 2^31 mean 2^31 (RFC 9111 §1.2.2), not the default."""
        assert response_ttl("max-age=99999999999999", 42.0) == 2.0**31

    @pytest.mark.parametrize("header", ["max-age=abc", "max-age=-1", "s-maxage=1.5", "max-age"])
    def test_an_invalid_lifetime_is_stale_at_once(self, header: str) -> None:
        """A max-age that is no delta-seconds counts as stale (RFC 9111 §4.2.1): 0, not the
        default."""
        assert response_ttl(header, 42.0) == 0.0

    def test_expires_gives_the_lifetime_when_max_age_does_not(self) -> None:
        """Without max-age, an Expires date is the explicit lifetime (RFC 9111 §4.2.1): an
        hour ahead keeps about an hour; past, invalid or "0" keep nothing; max-age wins."""
        ahead = email.utils.formatdate(time.time() + 3600, usegmt=True)
        assert 3590 < (response_ttl(None, 42.0, ahead) or 0) <= 3600
        assert 3590 < (response_ttl("public", 42.0, ahead) or 0) <= 3600
        assert response_ttl("max-age=5", 42.0, ahead) == 5.0
        past = email.utils.formatdate(time.time() - 60, usegmt=True)
        for expires in (past, "0", "not a date", ""):
            assert response_ttl(None, 42.0, expires) == 0.0
        assert response_ttl("private", 42.0, ahead) is None

    @pytest.mark.parametrize("header", [None, "", "public", "must-revalidate"])
    def test_without_a_lifetime_the_default_applies(self, header: str | None) -> None:
        """No usable max-age: the route's configured ttl."""
        assert response_ttl(header, 42.0) == 42.0


class TestRevalidateAndAge:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            (None, False),
            ("max-age=5", False),
            ("public, max-age=5, must-revalidate", True),
            ("Proxy-Revalidate", True),
            ("s-maxage=5", True),
        ],
    )
    def test_what_may_not_be_served_stale(self, header: str | None, expected: bool) -> None:
        """must-revalidate, proxy-revalidate and (for a shared cache) s-maxage forbid it."""
        assert must_revalidate(header) is expected

    @pytest.mark.parametrize(
        ("header", "age"),
        [(None, 0.0), ("12", 12.0), (" 7 ", 7.0), ("\u00b2", 0.0), ("-3", 0.0), ("1e3", 0.0)],
    )
    def test_an_upstream_age_that_is_no_number_counts_as_zero(
        self, header: str | None, age: float
    ) -> None:
        """Only delta-seconds count; anything else (a superscript digit too) is 0, never an
        exception."""
        assert upstream_age(header) == age

    @pytest.mark.parametrize(("header", "age"), [("30, 40", 30.0), ("30,40", 30.0), ("9 ,x", 9.0)])
    def test_an_age_sent_as_a_list_counts_by_its_first_member(
        self, header: str, age: float
    ) -> None:
        """Age sent on two lines reaches the cache joined ("30, 40"): its first member counts
        (RFC 9111 §5.1), so the answer is not taken for one just made."""
        assert upstream_age(header) == age


class TestEntryHeaders:
    def test_per_request_headers_are_not_replayed(self) -> None:
        """Age, X-Cache, the request id, timings and redaction counts belong to one answer."""
        kept = entry_headers(
            {
                "Cache-Control": "max-age=5",
                "Age": "3",
                "X-Cache": "MISS",
                "X-Request-Id": "abc",
                "Server-Timing": "upstream;dur=1",
                "X-Redactions": "EMAIL=1",
                "Inference-Header-Content-Length": "12",
            }
        )
        assert kept == (("Cache-Control", "max-age=5"), ("Inference-Header-Content-Length", "12"))


class TestStreamRecording:
    async def test_a_stream_larger_than_the_cache_is_relayed_without_being_held(self) -> None:
        """An upstream's cacheable stream far past the cache's size (an endless SSE, say) is
        relayed whole, is not kept, and its chunks are let go as they pass: memory stays near
        one chunk, not the stream's length."""
        cache = make_cache(Clock(), max_bytes=1 << 20)
        bundle = load_bundle(default_policy_bundle())
        stage = LookupCache(cache, CacheSettings(), bundle, SiteSettings())
        chunk_bytes, chunks = 64 * 1024, 256  # 16 MiB through a 1 MiB cache

        async def endless() -> AsyncIterator[bytes]:
            for i in range(chunks):
                yield i.to_bytes(4, "big") * (chunk_bytes // 4)  # a fresh object each time

        reply = Reply(headers={"Cache-Control": "max-age=600"}, stream=endless())
        ctx = RequestContext(api="openai", model="gpt-test", version=None, deadline=0.0)
        relayed = stage._keep(ctx, b"k" * 32, reply)
        assert relayed.stream is not None
        tracemalloc.start()
        try:
            total = 0
            async for chunk in relayed.stream:
                total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == chunk_bytes * chunks
        assert peak < 4 * (1 << 20)
        assert cache.get(b"k" * 32, allow_stale=True) is None
