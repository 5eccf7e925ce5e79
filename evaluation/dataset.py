"""Labelled image sets: a folder per class, or a CSV / JSONL of ``path_or_url,label``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
PATH_KEYS = ("path_or_url", "path", "url", "image", "file")


class DatasetError(ValueError):
    """The labelled set cannot be read or does not fit the classifier; the message says why."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: a local path or an http(s) URL, and its true label."""

    source: str
    label: str


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _resolve(source: str, base: Path) -> str:
    source = source.strip()
    if _is_url(source) or Path(source).is_absolute():
        return source
    return str(base / source)


def _from_folders(root: Path) -> list[Sample]:
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(str(path), class_dir.name))
    return samples


def _from_csv(path: Path) -> list[Sample]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    if rows and rows[0][0].strip().lower() in PATH_KEYS:
        rows = rows[1:]  # a header row
    samples = []
    for number, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"{path}: row {number} is not `path_or_url,label`: {row!r}")
        samples.append(Sample(_resolve(row[0], path.parent), row[1].strip()))
    return samples


def _from_jsonl(path: Path) -> list[Sample]:
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            source = next(record[k] for k in PATH_KEYS if k in record)
            label = record["label"]
        except (ValueError, StopIteration, KeyError, TypeError):
            raise DatasetError(
                f"{path}: line {number} needs a JSON object with \"path_or_url\" (or \"path\"/"
                f"\"url\") and \"label\": {line[:120]!r}"
            ) from None
        samples.append(Sample(_resolve(str(source), path.parent), str(label).strip()))
    return samples


def load_samples(spec: str | Path) -> list[Sample]:
    """Samples from a directory (one sub-folder per class), a ``.csv`` or a ``.jsonl`` file.

    Relative paths in a file are relative to that file. Raises ``DatasetError``.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        samples = _from_folders(path)
    elif path.suffix.lower() == ".csv" and path.is_file():
        samples = _from_csv(path)
    elif path.suffix.lower() in (".jsonl", ".ndjson") and path.is_file():
        samples = _from_jsonl(path)
    elif not path.exists():
        raise DatasetError(f"no such dataset: {path}")
    else:
        raise DatasetError(f"{path}: give a folder with one sub-folder per class, a .csv or a .jsonl")
    if not samples:
        raise DatasetError(f"{path}: no labelled images found")
    return samples


def parse_label_map(pairs: Iterable[str]) -> dict[str, str]:
    """``["porn=explicit", "neutral=none"]`` → dataset label to classifier label."""
    mapping = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise DatasetError(f"--map takes DATASET_LABEL=CLASSIFIER_LABEL, not {pair!r}")
        mapping[old.strip()] = new.strip()
    return mapping


def relabel(
    samples: list[Sample], label_names: tuple[str, ...], mapping: Mapping[str, str] | None = None
) -> list[Sample]:
    """Apply ``mapping`` and check every label is one of the classifier's ``label_names``.

    Dataset labels mapped to ``-`` are dropped (classes the classifier has no label for).
    """
    mapping = dict(mapping or {})
    bad_targets = sorted({v for v in mapping.values() if v != "-" and v not in label_names})
    if bad_targets:
        raise DatasetError(f"--map targets {bad_targets} are not labels of the classifier; "
                           f"its labels: {list(label_names)}")
    out = [Sample(s.source, mapping.get(s.label, s.label)) for s in samples]
    out = [s for s in out if s.label != "-"]
    unknown = sorted({s.label for s in out} - set(label_names))
    if unknown:
        raise DatasetError(
            f"dataset labels {unknown} are not labels of the classifier {list(label_names)}; rename "
            "them with --map DATASET_LABEL=CLASSIFIER_LABEL (or =- to leave a class out)"
        )
    if not out:
        raise DatasetError("no samples left after --map")
    return out
