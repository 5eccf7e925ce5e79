"""What a model replica knows about images it has seen before: the hash banks and the result cache.

Every image's SHA-256 (of the bytes as received) and PDQ hash (of the first frame, upright, as
decoded) are made on the replica's decode threads, where the bytes and pixels already are: no
bytes travel for it, and in-cluster handle callers get the same hashes and matches as HTTP
ones. Each replica holds the banks in memory (``banks.index.HashIndex``: multi-index hashing
for PDQ, a dict for SHA-256) and keeps it in step with the database through a poller thread
that reads only what changed since the version it holds (``BankStore.changes_since``), every
``poll_s``. The result cache keeps each recent image's embedding (not its scores) by SHA-256,
so a repeat is scored with the heads, thresholds and banks in force now, without a decode or
a forward pass.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from cachetools import TTLCache
from PIL import Image

from banks.hashes import ImageHashes, pdq_dihedral, pdq_draft_size, pdq_hash, sha256_hex
from banks.index import SEVERITY, HashIndex, Match
from banks.store import BankStore
from classifiers.preprocess import first_frame_at_draft
from deployments.settings import KnownImagesSettings

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Seen:
    """A cached image: its embedding (frames x dim), its hashes and, when they were looked
    for, its faces with each crop's embedding."""

    embedding: np.ndarray
    hashes: ImageHashes
    faces: tuple | None = None  # ((FaceBox, embedding), ...)


def content_sha256(image: bytes | np.ndarray) -> str:
    """SHA-256 of the file's bytes, or of a decoded array's shape and pixels (handle callers)."""
    if isinstance(image, np.ndarray):
        digest = hashlib.sha256(repr(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()
    return sha256_hex(image)


class PdqOfFirstFrame:
    """``decode_frames``'s ``first_frame`` hook: keeps the PDQ hash of the first frame (and, with
    ``turned``, its 7 turned and mirrored hashes, from the same pass). With the file's ``data``,
    the frame hashed is the one ``pdq_draft_size`` allows (decoded again if the model's decode
    was larger), so the hash is the file's, whatever the request asked for (``file_hashes``
    makes the same)."""

    def __init__(self, turned: bool = False, data: bytes | None = None, max_pixels: int = 50_000_000) -> None:
        self.turned = turned
        self.data, self.max_pixels = data, max_pixels
        self.pdq: tuple[str, int, tuple[str, ...]] | None = None

    def __call__(self, frame: Image.Image, full_size: tuple[int, int] | None = None) -> None:
        if self.data is not None:
            frame = first_frame_at_draft(self.data, frame, pdq_draft_size, self.max_pixels)
        if self.turned:
            hashes, quality = pdq_dihedral(frame, full_size)
            self.pdq = (hashes[0], quality, hashes[1:])
        else:
            self.pdq = (*pdq_hash(frame, full_size), ())


class KnownImages:
    """One per model replica: the bank index (kept current by a poller) and the result cache."""

    def __init__(self, settings: KnownImagesSettings) -> None:
        self.settings = settings
        self.store: BankStore | None = None
        self.index = HashIndex(settings.max_distance)
        self.loaded = False  # false until the banks were read once
        try:
            self._catch_up()
        except Exception:  # noqa: BLE001 - classify without banks rather than not at all; loudly
            logger.exception("hash banks: the database cannot be read at start; matching nothing until it can "
                             "(retrying every %s s)", settings.poll_s)
        self.cache: TTLCache | None = (
            TTLCache(settings.cache_size, settings.cache_ttl_s) if settings.cache_size else None
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="banks-poll", daemon=True)
        self._poller.start()

    def _catch_up(self) -> None:
        """Read what changed since the version this replica holds (everything, the first time)."""
        start = time.perf_counter()
        if self.store is None:
            self.store = BankStore(self.settings.banks_url)
        changes = self.store.changes_since(self.index.version)
        if changes.version < self.index.version:  # another database behind the same URL
            logger.warning("hash banks: the database is at version %d, behind this replica's %d: reading it whole",
                           changes.version, self.index.version)
            fresh = HashIndex(self.settings.max_distance)
            fresh.apply(self.store.changes_since(0))
            self.index = fresh
        elif changes.version != self.index.version or not self.loaded:
            self.index.apply(changes)
            self.loaded = True  # before the log line: status() never says unloaded while matches are served
            logger.info("hash banks: version %d, %d entries (+%d, -%d) in %.2f s", changes.version, len(self.index),
                        len(changes.added), len(changes.removed), time.perf_counter() - start)
        self.loaded = True

    def _poll(self) -> None:
        failing = False
        while not self._stop.wait(self.settings.poll_s):
            try:
                self._catch_up()
                if failing:
                    logger.info("hash banks: reading the database again")
                failing = False
            except Exception:  # noqa: BLE001 - the poller must outlive a database outage
                if not failing:  # once per outage, not every poll
                    logger.exception("hash banks: reading changes failed; matching against version %d",
                                     self.index.version)
                failing = True

    def hashes(self, sha256: str, pdq: tuple[str, int, tuple[str, ...]] | None) -> ImageHashes:
        return ImageHashes(sha256, *(pdq or (None, None, ())))

    def match(self, hashes: ImageHashes) -> tuple[Match, ...]:
        """Bank entries this image matches: SHA-256 always, PDQ when its quality is enough (the
        image as it is, and turned or mirrored when those hashes were made): each entry once,
        at its nearest."""
        usable = hashes.pdq_quality is not None and hashes.pdq_quality >= self.settings.min_pdq_quality
        index = self.index
        found = index.match(hashes.sha256, hashes.pdq if usable else None)
        if usable and hashes.pdq_turned:
            nearest = {m.pk: m for m in found}
            for turned in hashes.pdq_turned:
                for m in index.match(None, turned):
                    if m.pk not in nearest or m.distance < nearest[m.pk].distance:
                        nearest[m.pk] = m
            found = sorted(nearest.values(), key=lambda m: (m.distance, SEVERITY.get(m.action, 9), m.bank, m.pk))
        return tuple(found)

    def recall(self, sha256: str) -> Seen | None:
        return self.cache.get(sha256) if self.cache is not None else None

    def remember(self, sha256: str, seen: Seen) -> None:
        if self.cache is not None:
            self.cache[sha256] = seen

    def status(self) -> dict:
        return {"loaded": self.loaded, "version": self.index.version, "entries": len(self.index),
                "cached_images": len(self.cache) if self.cache is not None else 0}

    def close(self) -> None:
        self._stop.set()
        if self.store is not None:
            self.store.close()
