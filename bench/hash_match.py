"""Known-image matching: build time, match latency and recall of ``banks.index.HashIndex`` against brute force.

``python -m bench.hash_match [--sizes 10000,100000,1000000] [--queries 2000] [--seed 0] [--main-thread]``

For each size: that many random PDQ hashes in one bank, loaded with one ``HashIndex.apply`` (the build time
covers checking the entries and filling faiss's multi-index hashing tables). Half of the queries are stored
hashes with 0-31 random bits flipped (planted: each must find its source, recall must be 100%), half are
random hashes. Latency is one ``HashIndex.match(sha256, pdq)`` call per query, as the service makes it. The
comparison row is a faiss ``IndexBinaryFlat`` (exhaustive Hamming scan) over the same hashes, queried with
``range_search`` directly.

Queries run in a worker thread (the service matches from request threads) unless ``--main-thread``: with
glibc's malloc, faiss's per-query shortlist (a ``std::unordered_set``) allocates from the main thread's
arena, which the large index build has fragmented, and was measured 2-5x slower there.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from banks.hashes import PDQ_MATCH_THRESHOLD, code_to_hex
from banks.index import HashIndex
from banks.store import Changes, Entry

BANK = "bench"


def make_queries(codes: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` query codes and, per query, the row it was planted from (-1 for the random half)."""
    planted = n // 2
    sources = rng.integers(0, len(codes), planted)
    bits = np.unpackbits(codes[sources], axis=1)
    for i, flips in enumerate(rng.integers(0, PDQ_MATCH_THRESHOLD + 1, planted)):
        bits[i, rng.choice(256, int(flips), replace=False)] ^= 1
    queries = np.concatenate([np.packbits(bits, axis=1), rng.integers(0, 256, (n - planted, 32), dtype=np.uint8)])
    return queries, np.concatenate([sources, np.full(n - planted, -1)])


def timed(queries: list[Any], search: Callable[[Any], set[int]], main_thread: bool) -> tuple[list, list]:
    """(latencies in ms, result row sets) of ``search`` per query, in this thread or in a worker thread."""
    out: tuple[list, list] = ([], [])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for q in queries:
                t = time.perf_counter()
                found = search(q)
                out[0].append((time.perf_counter() - t) * 1e3)
                out[1].append(found)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    if main_thread:
        run()
    else:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    if errors:
        raise errors[0]
    return out


def row(entries: int, name: str, build_s: float, latencies: list, found: list, sources: np.ndarray,
        same: str = "") -> str:
    planted = [(src, hits) for src, hits in zip(sources.tolist(), found) if src >= 0]
    recall = sum(src in hits for src, hits in planted) / max(1, len(planted))
    lat = np.asarray(latencies)
    return (f"| {entries:,} | {name} | {build_s:.2f} | {np.percentile(lat, 50):.3f} | {np.percentile(lat, 99):.3f} "
            f"| {100 * recall:.1f}% | {same} |")


def bench_index(n: int, codes: np.ndarray, pairs: list[tuple[str, str]],
                main_thread: bool) -> tuple[str, list, float, list]:
    """(name, latencies, build seconds, hits per query) of ``HashIndex`` over ``codes``."""
    hexes = bytes(codes).hex()
    added = [Entry(pk=i, bank=BANK, kind="pdq", hash=hexes[64 * i : 64 * i + 64], entry_id=None, note=None,
                   created_at="") for i in range(n)]
    index = HashIndex()
    t = time.perf_counter()
    index.apply(Changes(version=1, actions={BANK: "block"}, added=added, removed=[]))
    build = time.perf_counter() - t
    del added

    def via_index(pair: tuple[str, str]) -> set[int]:
        return {m.pk for m in index.match(*pair)}

    lat, found = timed(pairs, via_index, main_thread)
    return "HashIndex (multi-index hashing)", lat, build, found


def bench_flat(codes: np.ndarray, queries: np.ndarray, main_thread: bool) -> tuple[str, list, float, list]:
    """The same for a brute-force ``IndexBinaryFlat``."""
    flat = faiss.IndexBinaryFlat(256)
    t = time.perf_counter()
    flat.add(codes)
    build = time.perf_counter() - t

    def via_flat(q: np.ndarray) -> set[int]:
        _, _, ids = flat.range_search(q[None], PDQ_MATCH_THRESHOLD + 1)
        return set(ids.tolist())

    lat, found = timed(list(queries), via_flat, main_thread)
    return "IndexBinaryFlat (brute force)", lat, build, found


def bench_size(n: int, n_queries: int, seed: int, main_thread: bool) -> list[str]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    queries, sources = make_queries(codes, n_queries, rng)
    # (sha256, pdq) per query: a random SHA-256 (a dict miss, as for most uploads) and the PDQ hash
    pairs = [(code_to_hex(rng.integers(0, 256, 32, dtype=np.uint8)), code_to_hex(q)) for q in queries]
    name, lat, build, found = bench_index(n, codes, pairs, main_thread)
    flat_name, flat_lat, flat_build, flat_found = bench_flat(codes, queries, main_thread)
    same = sum(a == b for a, b in zip(found, flat_found))
    return [row(n, name, build, lat, found, sources, f"{same}/{len(found)}"),
            row(n, flat_name, flat_build, flat_lat, flat_found, sources, "-")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hash_match", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated index sizes (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=2000, help="queries per size, half planted (default: 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--main-thread", action="store_true", help="query from the main thread")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    print(f"PDQ radius {PDQ_MATCH_THRESHOLD}, {args.queries} queries per size (half planted 0-31 bits from a stored "
          f"hash), queried from {'the main' if args.main_thread else 'a worker'} thread; "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    print()
    print("| entries | index | build s | p50 ms | p99 ms | recall (planted) | same hits as brute force |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        for line in bench_size(n, args.queries, args.seed, args.main_thread):
            print(line, flush=True)


if __name__ == "__main__":
    main()
