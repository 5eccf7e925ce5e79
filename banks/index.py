"""The in-memory match index over the hash banks: SHA-256 exact matches and PDQ matches within a Hamming radius.

SHA-256 entries sit in a dict (hash -> pks). PDQ entries sit in a faiss ``IndexBinaryMultiHash`` (multi-index
hashing, as python-threatexchange's ``PDQMultiHashIndex`` uses it: 16 tables of 16 bits, ``nflip =
max_distance // 16``). The search is exact: two hashes at most ``r`` bits apart differ in at most
``r // nhash`` bits in at least one of the ``nhash`` sub-strings (pigeonhole), and every sub-string within
``nflip`` flips is probed; candidates are then checked against the full 256 bits.

The index follows the store's change feed (``apply(store.changes_since(index.version))``). faiss's multi-hash
index cannot remove entries, so a removal marks the entry's slot dead and search results skip dead slots; once
dead slots exceed ``rebuild_fraction`` of all slots (or a large batch arrives) the PDQ index is rebuilt from the
live codes, off the lock, and swapped in. Matches take a shared lock (faiss searches run in parallel, without
the GIL); ``apply`` takes it exclusively only to mutate or to swap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from banks.hashes import CODE_BYTES, PDQ_BITS, PDQ_MATCH_THRESHOLD, hex_to_code, hexes_to_codes, is_hash_hex

SEVERITY = {"block": 0, "review": 1, "allow": 2}
KINDS = ("pdq", "sha256")


@dataclass(frozen=True)
class Match:
    bank: str
    action: str
    kind: str
    distance: int
    entry_id: str | None
    pk: int


class _RWLock:
    """Many readers or one writer. A waiting writer holds back new readers, so writers are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _PdqSlots:
    """The PDQ half: the faiss index and, per faiss id ("slot", in insertion order), its code, pk and liveness."""

    def __init__(self, nhash: int, nflip: int, capacity: int = 1024) -> None:
        self.index = faiss.IndexBinaryMultiHash(PDQ_BITS, nhash, PDQ_BITS // nhash)
        self.index.nflip = nflip
        self.codes = np.zeros((capacity, CODE_BYTES), dtype=np.uint8)
        self.pks = np.zeros(capacity, dtype=np.int64)
        self.alive = np.zeros(capacity, dtype=bool)
        self.n = 0  # slots used
        self.dead = 0

    @property
    def live(self) -> int:
        return self.n - self.dead

    def reserve(self, extra: int) -> None:
        need = self.n + extra
        if need <= len(self.pks):
            return
        size = max(need, 2 * len(self.pks))
        for name in ("codes", "pks", "alive"):
            old = getattr(self, name)
            new = np.zeros((size,) + old.shape[1:], dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def add(self, codes: np.ndarray, pks: np.ndarray) -> None:
        k = len(pks)
        if not k:
            return
        self.reserve(k)
        self.index.add(np.ascontiguousarray(codes))
        self.codes[self.n : self.n + k] = codes
        self.pks[self.n : self.n + k] = pks
        self.alive[self.n : self.n + k] = True
        self.n += k


class HashIndex:
    """Known-image matching over every bank: ``apply`` the store's changes, ``match`` an image's hashes."""

    def __init__(
        self,
        max_distance: int = PDQ_MATCH_THRESHOLD,
        *,
        nhash: int = 16,
        rebuild_fraction: float = 0.25,
        bulk_add: int = 50_000,
    ) -> None:
        if not 0 <= max_distance < PDQ_BITS:
            raise ValueError(f"max_distance must be in 0..{PDQ_BITS - 1}, got {max_distance}")
        if PDQ_BITS % nhash or PDQ_BITS // nhash > 64:
            raise ValueError(f"nhash must divide {PDQ_BITS} into sub-strings of at most 64 bits, got {nhash}")
        self.max_distance = max_distance
        self.nhash = nhash
        self.nflip = max_distance // nhash  # exact by pigeonhole (module docstring)
        self.rebuild_fraction = rebuild_fraction
        self.bulk_add = bulk_add
        self.version = 0  # the store version applied last
        self._apply_lock = threading.Lock()  # one apply at a time; only apply mutates
        self._rw = _RWLock()
        self._actions: dict[str, str] = {}
        self._entries: dict[int, tuple[str, str, str | None, str]] = {}  # pk -> (bank, kind, entry_id, hash)
        self._sha: dict[str, list[int]] = {}  # sha256 hex -> pks
        self._slot: dict[int, int] = {}  # PDQ pk -> slot
        self._pdq = _PdqSlots(nhash, self.nflip)

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ updates

    def apply(self, changes: Any) -> None:
        """Catch up with a ``banks.store.Changes``: every bank's action, entries added, pks removed.

        Idempotent: an added pk already present and a removed pk not present are skipped. Changes older
        than the version already applied are ignored (applying them could revive removed entries)."""
        with self._apply_lock:
            if changes.version < self.version:
                return
            added = self._check_added(changes.added)
            removed = [pk for pk in dict.fromkeys(int(pk) for pk in changes.removed) if pk in self._entries]
            gone = set(removed)
            added = [e for e in added if e[0] not in self._entries or e[0] in gone]
            removed_slots = np.array([self._slot[pk] for pk in removed if pk in self._slot], dtype=np.int64)
            new_pdq = [e for e in added if e[2] == "pdq"]
            pdq_codes = hexes_to_codes([e[3] for e in new_pdq])
            pdq_pks = np.array([e[0] for e in new_pdq], dtype=np.int64)

            old = self._pdq
            dead_after = old.dead + len(removed_slots)
            rebuild = len(new_pdq) >= self.bulk_add or (
                dead_after > 0 and dead_after > self.rebuild_fraction * (old.n + len(new_pdq))
            )
            if rebuild:
                fresh, slots = self._rebuilt(old, removed_slots, pdq_codes, pdq_pks)
            with self._rw.write():
                if rebuild:
                    self._pdq, self._slot = fresh, slots
                else:
                    if len(removed_slots):
                        old.alive[removed_slots] = False
                        old.dead += len(removed_slots)
                    first = old.n
                    old.add(pdq_codes, pdq_pks)
                    for pk in removed:
                        self._slot.pop(pk, None)
                    self._slot.update(zip(pdq_pks.tolist(), range(first, old.n)))
                for pk in removed:
                    _, kind, _, text = self._entries.pop(pk)
                    if kind == "sha256":
                        pks = self._sha[text]
                        pks.remove(pk)
                        if not pks:
                            del self._sha[text]
                for pk, bank, kind, text, entry_id in added:
                    self._entries[pk] = (bank, kind, entry_id, text if kind == "sha256" else "")
                    if kind == "sha256":
                        self._sha.setdefault(text, []).append(pk)
                self._actions = dict(changes.actions)
                self.version = changes.version

    @staticmethod
    def _check_added(entries: Any) -> list[tuple[int, str, str, str, str | None]]:
        """(pk, bank, kind, hash, entry_id) per entry, the first of repeated pks; all checked before any change."""
        out, seen = [], set()
        for e in entries:
            pk, kind, text = int(e.pk), e.kind, str(e.hash).strip().lower()
            if kind not in KINDS:
                raise ValueError(f"entry {pk}: unknown kind {kind!r}")
            if not is_hash_hex(text):
                raise ValueError(f"entry {pk}: not a 64-hex-char {kind} hash: {e.hash!r}")
            if pk not in seen:
                seen.add(pk)
                out.append((pk, e.bank, kind, text, e.entry_id))
        return out

    def _rebuilt(
        self, old: _PdqSlots, removed_slots: np.ndarray, codes: np.ndarray, pks: np.ndarray
    ) -> tuple[_PdqSlots, dict[int, int]]:
        """A compacted PDQ index: the live old slots (less ``removed_slots``) then the new codes. Built while
        matches go on reading ``old`` (nothing else mutates it: applies are serialised)."""
        keep = old.alive[: old.n].copy()
        keep[removed_slots] = False
        all_codes = np.concatenate([old.codes[: old.n][keep], codes])
        all_pks = np.concatenate([old.pks[: old.n][keep], pks])
        fresh = _PdqSlots(self.nhash, self.nflip, capacity=max(1024, len(all_pks)))
        fresh.add(all_codes, all_pks)
        return fresh, dict(zip(all_pks.tolist(), range(len(all_pks))))

    # ------------------------------------------------------------------ queries

    def match(self, sha256: str | None, pdq: str | None, max_distance: int | None = None) -> list[Match]:
        """Entries whose SHA-256 equals ``sha256`` (distance 0) and PDQ entries within ``max_distance`` bits of
        ``pdq`` (default and upper bound: the index's), sorted by (distance, block < review < allow, bank, pk).
        Entries of banks without an action (deleted banks) are left out."""
        radius = self.max_distance if max_distance is None else int(max_distance)
        if not 0 <= radius <= self.max_distance:
            raise ValueError(f"max_distance must be in 0..{self.max_distance}, got {max_distance}")
        code = None
        if pdq is not None:
            pdq = pdq.strip().lower()
            if not is_hash_hex(pdq):
                raise ValueError(f"not a 64-hex-char PDQ hash: {pdq!r}")
            code = hex_to_code(pdq)[None]
        out: list[Match] = []
        with self._rw.read():
            actions, entries = self._actions, self._entries
            if sha256 is not None:
                for pk in self._sha.get(sha256.strip().lower(), ()):
                    bank, _, entry_id, _ = entries[pk]
                    action = actions.get(bank)
                    if action is not None:
                        out.append(Match(bank, action, "sha256", 0, entry_id, pk))
            slots = self._pdq
            if code is not None and slots.live:
                lims, distances, ids = slots.index.range_search(code, radius + 1)  # radius is exclusive
                keep = slots.alive[ids]
                for pk, distance in zip(slots.pks[ids[keep]].tolist(), distances[keep].tolist()):
                    bank, _, entry_id, _ = entries[pk]
                    action = actions.get(bank)
                    if action is not None:
                        out.append(Match(bank, action, "pdq", int(distance), entry_id, pk))
        out.sort(key=lambda m: (m.distance, SEVERITY.get(m.action, len(SEVERITY)), m.bank, m.pk))
        return out
