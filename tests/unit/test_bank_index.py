"""banks.index.HashIndex: exact PDQ radius search (against a brute-force numpy reference), SHA-256 matches,
the change feed (adds, removals, rebuilds, idempotence), ordering, and matching during concurrent applies."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from banks.hashes import code_to_hex, hexes_to_codes
from banks.index import HashIndex, Match
from banks.store import Changes, Entry

POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def brute_force(codes: np.ndarray, query: np.ndarray, radius: int) -> dict[int, int]:
    """row -> distance for every row of ``codes`` within ``radius`` bits of ``query`` (numpy popcount)."""
    distances = POPCOUNT[np.bitwise_xor(codes, query[None])].sum(axis=1)
    rows = np.nonzero(distances <= radius)[0]
    return dict(zip(rows.tolist(), distances[rows].tolist()))


def flip(code: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    unpacked = np.unpackbits(code)
    unpacked[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked)


def entry(pk: int, hash: str, bank: str = "b", kind: str = "pdq", entry_id: str | None = None) -> Entry:
    return Entry(pk=pk, bank=bank, kind=kind, hash=hash, entry_id=entry_id, note=None,
                 created_at="2025-01-01T00:00:00Z")


def changes(version: int, added=(), removed=(), actions=None) -> Changes:
    return Changes(version=version, actions=actions if actions is not None else {"b": "block"},
                   added=list(added), removed=list(removed))


def random_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    # some clusters: many stored hashes near each other, so buckets hold many candidates
    for c in range(0, min(n, 2000), 100):
        for i in range(c + 1, c + 100):
            codes[i] = flip(codes[c], int(rng.integers(0, 40)), rng)
    codes[n - 5 :] = codes[0]  # exact duplicates
    return codes


def planted_queries(codes: np.ndarray, rng: np.random.Generator, per_distance: int = 4) -> list[np.ndarray]:
    queries = [flip(codes[int(rng.integers(len(codes)))], d, rng) for d in range(0, 41) for _ in range(per_distance)]
    return queries + [rng.integers(0, 256, 32, dtype=np.uint8) for _ in range(20)]


def pdq_hits(index: HashIndex, query: np.ndarray, radius: int | None = None) -> dict[int, int]:
    return {m.pk: m.distance for m in index.match(None, code_to_hex(query), radius) if m.kind == "pdq"}


@pytest.mark.parametrize("max_distance, n", [(31, 20_000), (10, 5_000), (47, 5_000)])
def test_pdq_search_is_exact_against_brute_force(max_distance, n):
    rng = np.random.default_rng(max_distance)
    codes = random_codes(n, rng)
    index = HashIndex(max_distance=max_distance)
    index.apply(changes(1, [entry(pk, code_to_hex(c)) for pk, c in enumerate(codes)]))
    assert len(index) == n and index.version == 1
    radii = sorted({max_distance, max_distance // 2, 0})
    checked = 0
    for query in planted_queries(codes, rng):
        for radius in radii:
            expected = brute_force(codes, query, radius)
            assert pdq_hits(index, query, radius) == expected
            checked += len(expected)
    # each planted query within the radius finds at least the hash it was made from
    assert checked >= 4 * (min(max_distance, 40) + 1)


def test_removals_filter_then_rebuild_stay_exact():
    rng = np.random.default_rng(1)
    codes = random_codes(6000, rng)
    index = HashIndex(rebuild_fraction=0.25)
    index.apply(changes(1, [entry(pk, code_to_hex(c)) for pk, c in enumerate(codes)]))
    live = np.ones(len(codes), dtype=bool)
    queries = planted_queries(codes, rng, per_distance=2)
    version = 1
    for fraction in (0.05, 0.1, 0.2, 0.3):  # the later batches push dead slots past 25%: a rebuild
        alive_rows = np.nonzero(live)[0]
        gone = rng.choice(alive_rows, int(fraction * len(alive_rows)), replace=False)
        live[gone] = False
        version += 1
        index.apply(changes(version, removed=gone.tolist()))
        assert len(index) == int(live.sum()) and index.version == version
        for query in queries:
            expected = {pk: d for pk, d in brute_force(codes, query, 31).items() if live[pk]}
            assert pdq_hits(index, query) == expected
    assert index._pdq.n < len(codes)  # compacted at least once


def test_bulk_and_incremental_adds_agree():
    rng = np.random.default_rng(2)
    codes = random_codes(3000, rng)
    bulk, steps = HashIndex(bulk_add=500), HashIndex(bulk_add=10**9)
    for version, start in enumerate(range(0, 3000, 600), start=1):
        batch = [entry(pk, code_to_hex(codes[pk])) for pk in range(start, start + 600)]
        bulk.apply(changes(version, batch))
        steps.apply(changes(version, batch))
    for query in planted_queries(codes, rng, per_distance=1):
        assert pdq_hits(bulk, query) == pdq_hits(steps, query) == brute_force(codes, query, 31)


def test_sha256_exact_matches_banks_actions_and_order():
    sha = "ab" * 32
    pdq = "0f" * 32
    near = hexes_to_codes([pdq])[0].copy()
    near[0] ^= 0b111  # 3 bits away
    index = HashIndex()
    actions = {"zeta": "block", "alpha": "review", "mid": "allow", "gone": "block"}
    index.apply(changes(5, [
        entry(1, sha, "mid", "sha256", "s-mid"),
        entry(2, sha, "alpha", "sha256", "s-alpha"),
        entry(3, sha, "zeta", "sha256"),
        entry(4, code_to_hex(near), "alpha", "pdq", "p-near"),
        entry(5, pdq, "mid", "pdq", "p-exact"),
        entry(6, pdq, "zeta", "pdq"),
        entry(7, "cd" * 32, "alpha", "sha256"),
    ], actions=actions))
    got = index.match(sha.upper(), pdq)
    assert [(m.distance, m.action, m.bank, m.kind) for m in got] == [
        (0, "block", "zeta", "sha256"), (0, "block", "zeta", "pdq"),
        (0, "review", "alpha", "sha256"),
        (0, "allow", "mid", "sha256"), (0, "allow", "mid", "pdq"),  # a tie: by pk
        (3, "review", "alpha", "pdq"),
    ]
    assert Match("alpha", "review", "pdq", 3, "p-near", 4) in got
    assert [m.pk for m in index.match(sha, None)] == [3, 2, 1]
    assert index.match("00" * 32, None) == []
    assert [m.pk for m in index.match(None, pdq, max_distance=2)] == [6, 5]

    # an action changes; a bank is deleted (its entries tombstoned; until then they are skipped)
    index.apply(changes(6, actions={"zeta": "allow", "alpha": "review", "mid": "allow"}))
    assert [(m.pk, m.action) for m in index.match(sha, None)] == [(2, "review"), (1, "allow"), (3, "allow")]
    index.apply(changes(7, removed=[3, 6, 99], actions={"alpha": "review", "mid": "allow"}))
    assert [m.pk for m in index.match(sha, pdq)] == [2, 1, 5, 4]
    assert len(index) == 5
    index.apply(changes(8, removed=[1, 2, 7]))
    assert index.match(sha, None) == [] and index._sha == {}


def test_apply_is_idempotent_and_ignores_stale_changes():
    a, b = "11" * 32, "22" * 32
    index = HashIndex()
    first = changes(3, [entry(1, a), entry(2, b, kind="sha256"), entry(1, a)])
    index.apply(first)
    index.apply(first)
    assert len(index) == 2 and index._pdq.n == 1
    assert [m.pk for m in index.match(b, a)] == [1, 2]
    index.apply(changes(4, removed=[1]))
    index.apply(first)  # stale: version 3 < 4, would revive pk 1
    assert [m.pk for m in index.match(b, a)] == [2] and index.version == 4
    index.apply(changes(4, removed=[1]))  # same version again: harmless
    assert len(index) == 1


def test_empty_index_and_bad_input():
    index = HashIndex()
    assert len(index) == 0 and index.version == 0
    assert index.match("00" * 32, "00" * 32) == [] and index.match("00" * 32, None) == []
    index.apply(changes(1))
    assert index.match(None, "ff" * 32) == [] and index.version == 1
    with pytest.raises(ValueError):
        index.match(None, "00" * 32, max_distance=32)
    with pytest.raises(ValueError):
        index.match(None, "xyz")
    with pytest.raises(ValueError):
        index.apply(changes(2, [entry(1, "00" * 32), entry(2, "00" * 31, kind="pdq")]))
    with pytest.raises(ValueError):
        index.apply(changes(2, [entry(1, "00" * 32, kind="md5")]))
    assert len(index) == 0 and index.version == 1  # a bad batch changes nothing
    with pytest.raises(ValueError):
        HashIndex(max_distance=256)
    with pytest.raises(ValueError):
        HashIndex(nhash=3)
    # everything removed: searches skip the dead slots
    index.apply(changes(3, [entry(1, "00" * 32)]))
    index.apply(changes(4, removed=[1]))
    assert index.match(None, "00" * 32) == [] and len(index) == 0


def test_matches_stay_correct_during_concurrent_applies():
    """Readers match around fixed anchors while a writer adds and removes entries near those anchors, in small
    (incremental) and large (rebuilt) batches. Every hit must be consistent: its entry exists with the id and
    hash it was added with, at the distance reported; the anchors, never removed, are always found."""
    rng = np.random.default_rng(3)
    anchors = rng.integers(0, 256, (20, 32), dtype=np.uint8)
    codes: dict[int, np.ndarray] = dict(enumerate(anchors))  # filled before each apply, never shrunk
    index = HashIndex(bulk_add=400, rebuild_fraction=0.2)
    index.apply(changes(1, [entry(pk, code_to_hex(c), entry_id=f"e{pk}") for pk, c in codes.items()]))
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                pk = int(r.integers(len(anchors)))
                query = flip(anchors[pk], int(r.integers(0, 20)), r)
                hits = index.match(None, code_to_hex(query))
                assert any(m.pk == pk for m in hits), (pk, hits)
                for m in hits:
                    assert m.entry_id == f"e{m.pk}" and m.distance <= 31
                    assert m.distance == POPCOUNT[np.bitwise_xor(codes[m.pk], query)].sum()
                searches[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    version, next_pk, live = 1, 1000, []
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline and not stop.is_set():
            size = int(rng.choice([5, 50, 600]))  # small incremental batches and bulk (rebuilt) ones
            batch = []
            for pk in range(next_pk, next_pk + size):  # near an anchor: the readers' searches find them
                codes[pk] = flip(anchors[int(rng.integers(len(anchors)))], int(rng.integers(0, 40)), rng)
                batch.append(entry(pk, code_to_hex(codes[pk]), entry_id=f"e{pk}"))
            next_pk += size
            gone = [live.pop(int(rng.integers(len(live)))) for _ in range(min(len(live), size // 2 + 1))]
            live += [e.pk for e in batch]
            version += 1
            index.apply(changes(version, batch, gone))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert searches[0] > 100
    assert len(index) == len(anchors) + len(live) and index.version == version
