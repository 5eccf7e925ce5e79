"""Which images a backfill reads, and reading them: local files, http(s) URLs, s3:// and gs://.

``list_sources`` expands a spec (a folder, a list file or an object-store prefix) into sources;
``read_sources`` turns sources into bytes, or a ``ModerationError`` per source that failed.
URLs go through the service's fetcher (``deployments.fetching``), address policy included.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from classifiers.errors import ModerationError
from evaluation.dataset import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from deployments.settings import FetchSettings

STORE_SCHEMES = ("s3", "gs")
SOURCE_COLUMNS = ("source", "path", "url")
MAX_CONCURRENT_FETCHES = 16
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
logger = logging.getLogger(__name__)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _scheme(source: str) -> str | None:
    return source.split("://", 1)[0].lower() if _SCHEME.match(source) else None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _store_path(uri: str) -> str:
    """``s3://bucket/key`` → ``bucket/key``, the path pyarrow's S3/GCS filesystems take."""
    parts = urlsplit(uri)
    return (parts.netloc + parts.path).rstrip("/")


def _filesystem(uri: str, filesystem=None):
    """The filesystem and path for an object-store URI (``filesystem`` overrides the URI's)."""
    if filesystem is not None:
        return filesystem, _store_path(uri)
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


def _list_store(spec: str, filesystem=None) -> list[str]:
    from pyarrow import fs

    scheme = _scheme(spec)
    try:
        store, root = _filesystem(spec, filesystem)
        infos = store.get_file_info(fs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot list {spec}: {exc}") from None
    paths = [i.path for i in infos if i.type == fs.FileType.File and _is_image(i.path)]
    return sorted(f"{scheme}://{p.lstrip('/')}" for p in paths)


def _resolve(entry: str, base: Path) -> str:
    entry = entry.strip()
    if _scheme(entry):
        return entry
    path = Path(entry).expanduser()
    return os.path.abspath(path if path.is_absolute() else base / path)


def _from_txt(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _from_csv(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(c) for c in SOURCE_COLUMNS if c in header), 0)
    cells = (row[column].strip() for row in rows[1:] if len(row) > column)
    return [cell for cell in cells if cell]


def _from_parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        column = next((c for c in SOURCE_COLUMNS if c in names), None)
        values = [] if column is None else pq.read_table(path, columns=[column]).column(column).to_pylist()
    except ValueError as exc:  # pyarrow's ArrowInvalid: not a parquet file, or a broken one
        raise ValueError(f"cannot read {path}: {exc}") from None
    if column is None:
        raise ValueError(f"{path}: no column named {' / '.join(SOURCE_COLUMNS)} (it has {names})")
    return [str(v).strip() for v in values if v is not None and str(v).strip()]


LIST_READERS = {".txt": _from_txt, ".csv": _from_csv, ".parquet": _from_parquet}


def _text_names(paths) -> list[str]:
    """Paths whose names are text: a file name that is not UTF-8 cannot go in a table's
    ``source`` column (nor come back from it), so it is left out, with a warning."""
    kept, skipped = [], 0
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            skipped += 1
            continue
        kept.append(path)
    if skipped:
        logger.warning("backfill: %d file(s) whose names are not UTF-8 left out (rename them to include them)",
                       skipped)
    return kept


def list_sources(spec: str, filesystem=None) -> list[str]:
    """Every image source ``spec`` names, sorted (folders, prefixes) or in list order, without
    duplicates: a local folder (image files under it, recursively, as absolute paths), a
    ``.txt``/``.csv``/``.parquet`` list (relative paths are relative to the list's folder), or
    an ``s3://``/``gs://`` prefix (``filesystem``: a pyarrow filesystem to list it with instead
    of the URI's own). Raises ``ValueError`` when ``spec`` cannot be read.
    """
    if _scheme(spec) in STORE_SCHEMES:
        return _unique(_list_store(spec, filesystem))
    if _scheme(spec):
        raise ValueError(f"{spec}: give a local folder, a .txt/.csv/.parquet list, or an s3:// or gs:// prefix")
    path = Path(spec).expanduser().absolute()
    if path.is_dir():
        try:
            files = [p for p in path.rglob("*") if _is_image(p.name) and p.is_file()]
        except OSError as exc:
            raise ValueError(f"cannot list {path}: {exc}") from None
        return sorted(_text_names(os.path.abspath(p) for p in files))
    if not path.exists():
        raise ValueError(f"no such folder or list: {path}")
    reader = LIST_READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: give a folder, a .txt, .csv or .parquet list, or an s3:// or gs:// prefix")
    try:
        entries = reader(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    return _unique([_resolve(entry, path.parent) for entry in entries])


def _too_large(max_bytes: int) -> ModerationError:
    return ModerationError("image_too_large", f"the image is larger than {max_bytes} bytes")


def _read_stream(stream, max_bytes: int) -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def _read_local(source: str, max_bytes: int) -> bytes:
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            raise ModerationError("fetch_failed", f"a folder, not a file: {source}")
        if path.stat().st_size > max_bytes:
            raise _too_large(max_bytes)
        with path.open("rb") as fh:
            return _read_stream(fh, max_bytes)
    except FileNotFoundError:
        raise ModerationError("fetch_failed", f"no such file: {source}") from None
    except OSError as exc:
        raise ModerationError("fetch_failed", f"cannot read {source}: {exc.strerror or exc}") from None


def _read_store(source: str, max_bytes: int, filesystems: dict, filesystem=None) -> bytes:
    parts = urlsplit(source)
    key = (parts.scheme, parts.netloc)
    try:
        if key not in filesystems:  # one filesystem per bucket: from_uri may ask for its region
            filesystems[key] = _filesystem(source, filesystem)[0]
        store = filesystems[key]
        info = store.get_file_info(_store_path(source))
        if info.size is not None and info.size > max_bytes:
            raise _too_large(max_bytes)
        with store.open_input_stream(_store_path(source)) as stream:
            return _read_stream(stream, max_bytes)
    except ModerationError:
        raise
    except (OSError, ValueError) as exc:
        raise ModerationError("fetch_failed", f"cannot read {source}: {exc}") from None


async def _fetch_all(urls: list[str], fetch: FetchSettings) -> list[bytes | ModerationError]:
    from deployments.fetching import build_session, fetch_image

    gate = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)

    async def one(session, url: str) -> bytes | ModerationError:
        async with gate:
            try:
                return await fetch_image(session, url, fetch)
            except ModerationError as exc:
                return exc
            except Exception as exc:  # noqa: BLE001 - one bad URL never fails the others
                return ModerationError("fetch_failed", f"the image download failed: {type(exc).__name__}")

    async with build_session(fetch) as session:
        return await asyncio.gather(*(one(session, url) for url in urls))


def read_sources(
    sources: list[str], fetch: FetchSettings, max_bytes: int, filesystem=None
) -> list[bytes | ModerationError]:
    """Each source's bytes, or the ``ModerationError`` it failed with, in ``sources``' order.

    Local paths and ``s3://``/``gs://`` objects are read here (larger than ``max_bytes``:
    ``image_too_large``, unreadable: ``fetch_failed``); http(s) URLs are fetched at most
    ``MAX_CONCURRENT_FETCHES`` at a time by the service's fetcher under ``fetch``'s policy and
    limits, with ``max_bytes`` as the size limit. Other schemes: ``url_forbidden``.
    Call it outside a running event loop (it runs its own with ``asyncio.run``).
    """
    out: list[bytes | ModerationError | None] = [None] * len(sources)
    urls: dict[int, str] = {}
    filesystems: dict = {}
    for index, source in enumerate(sources):
        scheme = _scheme(source)
        try:
            if scheme in ("http", "https"):
                urls[index] = source
            elif scheme in STORE_SCHEMES:
                out[index] = _read_store(source, max_bytes, filesystems, filesystem)
            elif scheme:
                out[index] = ModerationError("url_forbidden", f"cannot read {scheme}:// sources")
            else:
                out[index] = _read_local(source, max_bytes)
        except ModerationError as exc:
            out[index] = exc
    if urls:
        settings = fetch.model_copy(update={"max_bytes": max_bytes})
        fetched = asyncio.run(_fetch_all(list(urls.values()), settings))
        for index, result in zip(urls, fetched):
            out[index] = result
    return out
