"""A resumable on-disk cache of image embeddings (and of server answers), in one SQLite file.

Keys are the SHA-256 of the image file's bytes plus the identity of what produced the value
(model and preprocessing for embeddings; server, its model and catalog, classifier and options
for answers), so renamed or moved files hit, and changed files or another model miss. Every
batch is committed as it is computed: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    producer TEXT NOT NULL, digest TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (producer, digest));
CREATE TABLE IF NOT EXISTS answers (
    producer TEXT NOT NULL, digest TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (producer, digest));
"""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pack(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float32), allow_pickle=False)
    return buf.getvalue()


def _unpack(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class ResultCache:
    """Embeddings (float32 arrays) and JSON answers by (producer, image digest).

    ``path=None`` keeps everything in memory for one run.
    """

    def __init__(self, path: str | Path | None) -> None:
        if path is not None:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(Path(path).expanduser()))
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, table: str, producer: str, digests: list[str]) -> dict[str, object]:
        found: dict[str, object] = {}
        for start in range(0, len(digests), 500):  # SQLite's bound-parameter limit
            chunk = digests[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT digest, value FROM {table} WHERE producer = ? AND digest IN ({marks})",
                [producer, *chunk],
            )
            found.update(rows)
        return found

    def get_embeddings(self, producer: str, digests: list[str]) -> dict[str, np.ndarray]:
        return {d: _unpack(v) for d, v in self._get("embeddings", producer, digests).items()}

    def put_embeddings(self, producer: str, values: dict[str, np.ndarray]) -> None:
        with self._db:  # one transaction per batch: committed as soon as it is computed
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                [(producer, d, _pack(v)) for d, v in values.items()],
            )

    def get_answers(self, producer: str, digests: list[str]) -> dict[str, dict]:
        return {d: json.loads(v) for d, v in self._get("answers", producer, digests).items()}

    def put_answers(self, producer: str, values: dict[str, dict]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                [(producer, d, json.dumps(v)) for d, v in values.items()],
            )
