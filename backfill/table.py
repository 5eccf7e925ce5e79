"""The backfill's output: one flat row per image, written as atomic part files.

A part (``part-000001-1a2b3c4d.parquet`` or ``.jsonl``) is written under a temporary name and
renamed into place, so a part that exists is complete; the sources in the parts are done, which
is how a re-run resumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from classifiers.errors import ModerationError

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl")
PART = re.compile(r"part-(\d{6})-[0-9a-f]{8}\.(parquet|jsonl)")
TMP_SUFFIX = ".tmp"
RESULT_FIELDS = ("top_label", "top_score", "unsafe_score", "flagged")
ERROR_KEYS = ("flagged", "action", "model", "sha256", "pdq", "pdq_quality", "faces", "policies", "flagged_by")


def _error_row(source: str, exc: BaseException, heads_version: str | None) -> dict:
    if not isinstance(exc, ModerationError):
        exc = ModerationError("internal_error", f"{type(exc).__name__}: {exc}")
    return {"source": source, "ok": False, "error_code": exc.code, "error_message": exc.message,
            "status": exc.status, **dict.fromkeys(ERROR_KEYS), "heads_version": heads_version}


def row_of(source: str, outcome, heads_version: str | None, embedding=None) -> dict:
    """One flat row for ``outcome`` (a ``Classification``, or the exception it failed with).

    Per classifier: ``NAME.top_label``, ``NAME.top_score``, ``NAME.unsafe_score``,
    ``NAME.flagged`` and ``NAME.LABEL`` per label score (a label named like one of those
    four goes in ``NAME.label:LABEL``). ``embedding``: its first frame, when given.
    """
    if isinstance(outcome, BaseException):
        row = _error_row(source, outcome, heads_version)
    else:
        hashes = outcome.hashes
        row = {
            "source": source, "ok": True, "error_code": None, "error_message": None, "status": 200,
            "flagged": bool(outcome.flagged), "action": outcome.action, "model": outcome.model,
            "heads_version": heads_version,
            "sha256": hashes.sha256 if hashes else None, "pdq": hashes.pdq if hashes else None,
            "pdq_quality": hashes.pdq_quality if hashes else None,
            "faces": None if outcome.faces is None else len(outcome.faces),
            "policies": [hit.name for hit in outcome.policies],
            "flagged_by": [r.name for r in outcome.results if r.flagged],
        }
        for result in outcome.results:
            name = result.name
            row[f"{name}.top_label"] = result.top_label
            row[f"{name}.top_score"] = float(result.top_score)
            row[f"{name}.unsafe_score"] = float(result.unsafe_score)
            row[f"{name}.flagged"] = bool(result.flagged)
            for label, score in result.scores.items():
                key = f"{name}.label:{label}" if label in RESULT_FIELDS else f"{name}.{label}"
                row[key] = float(score)
    if embedding is not None:
        import numpy as np

        frames = np.asarray(embedding, dtype=np.float32)
        row["embedding"] = (frames[0] if frames.ndim > 1 else frames).tolist()
    return row


def _column_type(key: str):
    """The type of a known column (so an all-None column is still typed), else None."""
    import pyarrow as pa

    fixed = {"source": pa.string(), "ok": pa.bool_(), "error_code": pa.string(),
             "error_message": pa.string(), "status": pa.int64(), "flagged": pa.bool_(),
             "action": pa.string(), "model": pa.string(), "heads_version": pa.string(),
             "sha256": pa.string(), "pdq": pa.string(), "pdq_quality": pa.int64(), "faces": pa.int64(),
             "policies": pa.list_(pa.string()), "flagged_by": pa.list_(pa.string()),
             "embedding": pa.list_(pa.float32())}
    if key in fixed:
        return fixed[key]
    if "." not in key:
        return None
    field_name = key.split(".", 1)[1]  # classifier names have no dots; labels may
    return {"top_label": pa.string(), "flagged": pa.bool_()}.get(field_name, pa.float64())


def _table(rows: list[dict]):
    """A pyarrow table of ``rows``: the columns of all rows (first-seen order), None where
    missing; known columns get their own type, others are inferred."""
    import pyarrow as pa

    keys = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_arrays([_array([row.get(key) for row in rows], key) for key in keys], names=keys)


def _array(values: list, key: str):
    import pyarrow as pa

    try:
        return pa.array(values, type=_column_type(key))
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column of the caller's own: infer it
        return pa.array(values)


def _parts(dest: Path, fmt: str | None = None) -> list[Path]:
    if not dest.is_dir():
        return []
    found = [p for p in dest.iterdir() if (m := PART.fullmatch(p.name)) and fmt in (None, m.group(2))]
    return sorted(found, key=lambda p: (int(PART.fullmatch(p.name).group(1)), p.name))


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


class PartWriter:
    """Writes rows into ``dest`` as numbered part files, each written atomically."""

    def __init__(self, dest: str | Path, fmt: str) -> None:
        _check_format(fmt)
        self.dest = Path(dest)
        self.fmt = fmt
        parts = _parts(self.dest)
        self.seq = int(PART.fullmatch(parts[-1].name).group(1)) if parts else 0

    def write(self, rows: list[dict]) -> Path:
        """Write ``rows`` as the next part; returns its path. Raises ``ValueError`` without rows."""
        if not rows:
            raise ValueError("a part needs at least one row")
        self.dest.mkdir(parents=True, exist_ok=True)
        self.seq += 1
        final = self.dest / f"part-{self.seq:06d}-{secrets.token_hex(4)}.{self.fmt}"
        tmp = final.with_name(f".{final.name}{TMP_SUFFIX}")
        try:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(_table(rows), tmp)
            else:
                with tmp.open("w", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a line is not a JSON object")
                rows.append(row)
    return rows


def _part_sources(path: Path, fmt: str) -> list[str]:
    if fmt == "jsonl":
        return [row["source"] for row in _read_jsonl(path)]
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["source"]).column("source").to_pylist()


def done_sources(dest: str | Path, fmt: str) -> set[str]:
    """The sources of every row in ``dest``'s complete parts. Deletes leftover temporary files
    and parts that cannot be read (with a warning: their sources are done again); run it
    before writing, never while a writer is at work in ``dest``."""
    _check_format(fmt)
    dest = Path(dest)
    if not dest.is_dir():
        return set()
    for leftover in dest.glob(f".part-*{TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    done: set[str] = set()
    for path in _parts(dest, fmt):
        try:
            done.update(_part_sources(path, fmt))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # ArrowInvalid is a ValueError
            log.warning("deleting %s, which cannot be read (%s); its images will be done again", path, exc)
            path.unlink(missing_ok=True)
    return done


def part_rows(dest: str | Path):
    """Each complete part in ``dest`` (both formats) and its rows, in part order."""
    import pyarrow.parquet as pq

    for path in _parts(Path(dest)):
        yield path, (_read_jsonl(path) if path.suffix == ".jsonl" else pq.read_table(path).to_pylist())


def read_table(dest: str | Path, fmt: str):
    """Every part in ``dest`` as one pyarrow table; columns missing from a part are null and
    types are promoted (e.g. an all-null column joins a typed one)."""
    import pyarrow as pa

    _check_format(fmt)
    tables = []
    for path in _parts(Path(dest), fmt):
        if fmt == "jsonl":
            rows = _read_jsonl(path)
            if rows:
                tables.append(_table(rows))
        else:
            import pyarrow.parquet as pq

            tables.append(pq.read_table(path))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


@dataclass
class Summary:
    """Running counts over rows: images, ok, errors, flagged per classifier, errors per code."""

    images: int = 0
    ok: int = 0
    errors: int = 0
    flagged: int = 0
    flagged_by: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)

    def add(self, row: dict) -> None:
        self.images += 1
        if row.get("ok"):
            self.ok += 1
            self.flagged += bool(row.get("flagged"))
            self.flagged_by.update(row.get("flagged_by") or ())
        else:
            self.errors += 1
            self.error_codes[row.get("error_code") or "internal_error"] += 1

    def as_dict(self, elapsed_s: float | None = None) -> dict:
        out = {"images": self.images, "ok": self.ok, "errors": self.errors, "flagged": self.flagged,
               "flagged_by": dict(self.flagged_by.most_common()),
               "error_codes": dict(self.error_codes.most_common())}
        if elapsed_s is not None:
            out["elapsed_s"] = elapsed_s
            out["images_per_s"] = self.images / elapsed_s if elapsed_s > 0 else None
        return out

    def render(self, elapsed_s: float) -> str:
        rate = f"{self.images / elapsed_s:,.1f} images/s" if elapsed_s > 0 else "- images/s"
        lines = [f"{self.images:,} images in {elapsed_s:,.1f} s ({rate}): "
                 f"{self.ok:,} ok, {self.errors:,} errors"]
        by = ", ".join(f"{name} {count:,}" for name, count in self.flagged_by.most_common())
        lines.append(f"flagged: {self.flagged:,}" + (f" ({by})" if by else ""))
        if self.error_codes:
            lines.append("errors: " + ", ".join(f"{code} {count:,}" for code, count in self.error_codes.most_common()))
        return "\n".join(lines)
