"""The trained heads a model replica serves, and how changes to the heads directory reach it.

A replica reads every head file in ``heads_dir`` at start, then again when the directory
changes (a poll of file names, sizes and times every ``heads_poll_s``), when
``POST /v1/classifiers/reload`` reaches it, or when its ``user_config`` carries a new
``heads_version``. A reload builds a new set beside the old one and swaps it in with one
assignment: requests in flight finish with the set they started with, none is dropped. A file
that is refused (corrupt, a bad label set, trained on another model) never replaces a head
the replica already serves: that head stays at its last good version, and the refusal is
listed in ``GET /v1/classifiers``. That memory is the replica's own: a replica started later
reads only the files, so fix or remove a refused file rather than leave it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from classifiers.trained import SUFFIX, HeadSet, directory_signature, load_heads_dir

logger = logging.getLogger("ray.serve")


def merge(previous: HeadSet, fresh: HeadSet) -> HeadSet:
    """``fresh``, except that a head whose file is now refused keeps its ``previous`` version,
    and a directory that cannot be listed (a remount, a folder swapped by two renames) keeps
    the whole previous set: only files that are there, and readable, change what is served."""
    if fresh.unreadable:
        return HeadSet(previous.heads, {**previous.refused, "(directory)": fresh.unreadable
                                        + (" (still serving the heads read before)" if previous.heads else "")},
                       fresh.unreadable)
    heads = dict(fresh.heads)
    refused = dict(fresh.refused)
    for file_name, why in fresh.refused.items():
        name = Path(file_name).name.removesuffix(SUFFIX)
        if name in previous.heads and name not in heads:
            heads[name] = previous.heads[name]
            refused[file_name] = f"{why} (still serving version {previous.heads[name].version})"
    return HeadSet(heads, refused)


class HeadRegistry:
    """The current ``HeadSet`` (read it once per request: ``registry.current``)."""

    def __init__(self, heads_dir: str | None, fingerprint: np.ndarray, model: str,
                 builtins: frozenset[str], poll_s: float = 0.0) -> None:
        self.heads_dir, self.fingerprint, self.model = heads_dir, fingerprint, model
        self.builtins, self.poll_s = builtins, poll_s
        self._lock = threading.Lock()  # one reload at a time (poller, endpoint, reconfigure)
        self._stop = threading.Event()
        self._signature: tuple = ()
        self.current = HeadSet()
        self.reload()
        self._poller = None
        if heads_dir and poll_s > 0:
            self._poller = threading.Thread(target=self._poll, name="heads-poll", daemon=True)
            self._poller.start()

    def reload(self) -> HeadSet:
        """Read the directory now; returns the set in force afterwards. Never raises for a bad
        file (it is refused); the previous set stays if the directory cannot be listed."""
        with self._lock:
            signature = directory_signature(self.heads_dir)
            fresh = load_heads_dir(self.heads_dir, self.fingerprint, self.model, self.builtins)
            merged = merge(self.current, fresh)
            changed = merged.version != self.current.version or merged.refused != self.current.refused
            self.current, self._signature = merged, signature
        if changed:
            logger.info("trained heads %s: %s", merged.version,
                        {n: h.version for n, h in sorted(merged.heads.items())} or "none")
            for file_name, why in merged.refused.items():
                logger.warning("head file refused: %s", why if file_name in why else f"{file_name}: {why}")
        return merged

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if directory_signature(self.heads_dir) != self._signature:
                    self.reload()
            except Exception:  # noqa: BLE001 - the poller must outlive any one bad read
                logger.exception("reloading trained heads failed; serving the previous ones")

    def status(self) -> dict:
        """What ``GET /v1/classifiers`` and the reload endpoint report (plain types)."""
        current = self.current
        return {"dir": self.heads_dir, "version": current.version, "poll_s": self.poll_s,
                "loaded": {n: h.version for n, h in sorted(current.heads.items())},
                "refused": dict(current.refused)}

    def close(self) -> None:
        self._stop.set()
