"""Backfill sources: expanding a spec into sources, and reading them (local, http on 127.0.0.1
only, and object stores through a pyarrow filesystem over a local folder)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from pyarrow import fs

from backfill import sources
from backfill.sources import list_sources, read_sources
from classifiers.errors import ModerationError
from deployments.settings import FetchSettings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
JPEG = b"\xff\xd8\xff" + b"\x01" * 50


def write(path, data: bytes = PNG):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- list_sources ------------------------------------------------------------------------------

def test_folder_lists_images_recursively_sorted_absolute(tmp_path):
    for name in ("b.JPG", "a.png", "sub/deep/c.webp", "sub/d.TIFF", "sub/notes.txt", "e.gif.bak",
                 "README", "sub/f.bmp"):
        write(tmp_path / name)
    (tmp_path / "empty.jpg").mkdir()  # a folder named like an image is not an image
    found = list_sources(str(tmp_path))
    expected = sorted(str(tmp_path / n) for n in ("b.JPG", "a.png", "sub/deep/c.webp", "sub/d.TIFF", "sub/f.bmp"))
    assert found == expected
    assert all(os.path.isabs(p) for p in found)


def test_relative_folder_spec_gives_absolute_paths(tmp_path, monkeypatch):
    write(tmp_path / "imgs" / "x.jpeg")
    monkeypatch.chdir(tmp_path)
    assert list_sources("imgs") == [str(tmp_path / "imgs" / "x.jpeg")]


def test_empty_folder_gives_no_sources(tmp_path):
    assert list_sources(str(tmp_path)) == []


def test_txt_list_skips_comments_and_blanks_resolves_relative_and_dedupes(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    spec = lists / "todo.txt"
    spec.write_text(
        "# images to redo\n\nimg/a.jpg\n  ../other/b.png  \n/abs/c.jpg\nhttps://example.com/d.jpg\n"
        "s3://bucket/e.jpg\ngs://bucket/f.png\nimg/a.jpg\n   # indented comment\n"
    )
    assert list_sources(str(spec)) == [
        str(lists / "img" / "a.jpg"), str(tmp_path / "other" / "b.png"), "/abs/c.jpg",
        "https://example.com/d.jpg", "s3://bucket/e.jpg", "gs://bucket/f.png",
    ]


def test_csv_list_takes_the_source_column(tmp_path):
    spec = tmp_path / "todo.csv"
    spec.write_text("id,URL,label\n1,a.jpg,x\n2,http://example.com/b.jpg,y\n3,,z\n4,a.jpg,x\n")
    assert list_sources(str(spec)) == [str(tmp_path / "a.jpg"), "http://example.com/b.jpg"]


def test_csv_list_without_a_known_column_takes_the_first(tmp_path):
    spec = tmp_path / "todo.csv"
    spec.write_text("file,label\nsub/a.jpg,x\n/abs/b.png,y\n")
    assert list_sources(str(spec)) == [str(tmp_path / "sub" / "a.jpg"), "/abs/b.png"]


def test_header_only_csv_is_empty(tmp_path):
    spec = tmp_path / "todo.csv"
    spec.write_text("source\n")
    assert list_sources(str(spec)) == []


def test_parquet_list(tmp_path):
    spec = tmp_path / "todo.parquet"
    pq.write_table(pa.table({"n": [1, 2, 3, 4], "path": ["a.jpg", None, "s3://b/c.png", "a.jpg"]}), spec)
    assert list_sources(str(spec)) == [str(tmp_path / "a.jpg"), "s3://b/c.png"]


def test_parquet_without_a_source_column_is_refused(tmp_path):
    spec = tmp_path / "todo.parquet"
    pq.write_table(pa.table({"image": ["a.jpg"]}), spec)
    with pytest.raises(ValueError, match="no column named source"):
        list_sources(str(spec))


@pytest.mark.parametrize("name", ["missing", "missing.txt", "s3x://bucket/a"])
def test_missing_or_unknown_specs_raise_value_error(tmp_path, name):
    with pytest.raises(ValueError):
        list_sources(name if "://" in name else str(tmp_path / name))


def test_unsupported_or_broken_list_files_raise_value_error(tmp_path):
    jsonl = write(tmp_path / "todo.jsonl", b'{"path": "a.jpg"}\n')
    with pytest.raises(ValueError, match=r"\.txt, \.csv or \.parquet"):
        list_sources(str(jsonl))
    broken = write(tmp_path / "todo.parquet", b"PAR1 not really")
    with pytest.raises(ValueError, match="cannot read"):
        list_sources(str(broken))


@pytest.fixture
def store(tmp_path):
    """A pyarrow filesystem whose paths (``bucket/key``) are folders under tmp_path."""
    root = tmp_path / "store"
    for name in ("bucket/prefix/a.jpg", "bucket/prefix/nested/b.PNG", "bucket/prefix/notes.txt",
                 "bucket/prefixed/c.jpg", "bucket/other/d.jpg"):
        write(root / name)
    write(root / "bucket/prefix/big.jpg", JPEG + b"\x00" * 1000)
    return fs.SubTreeFileSystem(str(root), fs.LocalFileSystem())


def test_object_store_prefix_lists_images_as_full_uris(store):
    assert list_sources("s3://bucket/prefix", filesystem=store) == [
        "s3://bucket/prefix/a.jpg", "s3://bucket/prefix/big.jpg", "s3://bucket/prefix/nested/b.PNG",
    ]
    assert list_sources("gs://bucket/prefix/nested/", filesystem=store) == ["gs://bucket/prefix/nested/b.PNG"]


def test_object_store_uses_from_uri_by_default(store, monkeypatch):
    seen = []

    class StubFileSystem:
        @staticmethod
        def from_uri(uri):
            seen.append(uri)
            return store, uri.split("://", 1)[1]

    monkeypatch.setattr(fs, "FileSystem", StubFileSystem)
    assert list_sources("s3://bucket/other") == ["s3://bucket/other/d.jpg"]
    out = read_sources(["s3://bucket/other/d.jpg", "s3://bucket/prefix/a.jpg"], FetchSettings(), 10_000)
    assert out == [PNG, PNG]
    assert seen == ["s3://bucket/other", "s3://bucket/other/d.jpg"]  # one filesystem per bucket


def test_missing_object_store_prefix_raises_value_error(store):
    with pytest.raises(ValueError, match="cannot list s3://bucket/nothing"):
        list_sources("s3://bucket/nothing", filesystem=store)


# -- read_sources: local files and object stores -----------------------------------------------

def codes(outcomes):
    return [o.code if isinstance(o, ModerationError) else o for o in outcomes]


def test_local_files_and_their_errors_in_order(tmp_path):
    ok = write(tmp_path / "ok.png", PNG[:20])
    exact = write(tmp_path / "exact.jpg", JPEG)
    big = write(tmp_path / "big.jpg", JPEG + b"\x00")
    out = read_sources([str(ok), str(tmp_path / "missing.jpg"), str(exact), str(big), str(tmp_path),
                        "ftp://example.com/a.jpg"], FetchSettings(), len(JPEG))
    assert codes(out) == [PNG[:20], "fetch_failed", JPEG, "image_too_large", "fetch_failed", "url_forbidden"]
    assert out[1].message == f"no such file: {tmp_path / 'missing.jpg'}"
    assert out[3].status == 413


def test_a_too_large_local_file_is_not_read(tmp_path, monkeypatch):
    big = write(tmp_path / "big.jpg", JPEG * 10)
    monkeypatch.setattr(sources, "_read_stream", lambda *a: pytest.fail("read a too-large file"))
    assert codes(read_sources([str(big)], FetchSettings(), 10)) == ["image_too_large"]


def test_unreadable_local_file_is_fetch_failed(tmp_path, monkeypatch):
    path = write(tmp_path / "secret.png")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", refuse)
    out = read_sources([str(path)], FetchSettings(), 10_000)
    assert codes(out) == ["fetch_failed"]
    assert out[0].message == f"cannot read {path}: Permission denied"


def test_object_store_reads_and_errors(store):
    out = read_sources(["s3://bucket/prefix/a.jpg", "s3://bucket/prefix/big.jpg", "gs://bucket/nope.jpg",
                        "s3://bucket/prefix"], FetchSettings(), 500, filesystem=store)
    assert codes(out) == [PNG, "image_too_large", "fetch_failed", "fetch_failed"]


def test_no_sources_gives_nothing():
    assert read_sources([], FetchSettings(), 10) == []


# -- read_sources: http(s) through the service's fetcher, on 127.0.0.1 only --------------------

class Server:
    def __init__(self) -> None:
        self.active = 0
        self.most = 0

    async def slow(self, request):
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.active -= 1
        return web.Response(body=PNG, content_type="image/png")


@pytest.fixture
def http():
    state = Server()
    app = web.Application()
    port_box = {}

    async def redirect_private(request):
        raise web.HTTPFound(f"http://10.0.0.1:{port_box['port']}/a.png")

    app.add_routes([
        web.get("/a.png", _serving(PNG)),
        web.get("/big.png", _serving(PNG + b"\x00" * 5000)),
        web.get("/page", _serving(b"<html>" + b" " * 100, "text/html")),
        web.get("/slow", state.slow),
        web.get("/private", redirect_private),
    ])
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    port_box["port"] = port
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings = FetchSettings(allowed_networks=("127.0.0.0/8",), allowed_ports=(port,))
    yield f"http://127.0.0.1:{port}", settings, state
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _serving(body: bytes, content_type: str = "image/png"):
    async def handler(request):
        return web.Response(body=body, content_type=content_type)

    return handler


def test_urls_are_fetched_with_the_service_codes(http, tmp_path):
    base, settings, _ = http
    local = write(tmp_path / "x.jpg", JPEG)
    out = read_sources([f"{base}/a.png", str(local), f"{base}/big.png", f"{base}/missing.png",
                        f"{base}/page", f"{base}/private", f"{base}/a.png"], settings, 1000)
    assert codes(out) == [PNG, JPEG, "image_too_large", "fetch_failed", "unsupported_media_type",
                          "url_forbidden", PNG]


def test_at_most_16_downloads_at_once(http):
    base, settings, state = http
    out = read_sources([f"{base}/slow?i={i}" for i in range(40)], settings, 1000)
    assert out == [PNG] * 40
    assert 1 < state.most <= sources.MAX_CONCURRENT_FETCHES


def test_private_address_is_refused_without_connecting(monkeypatch):
    async def no_request(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(aiohttp.ClientSession, "_request", no_request)
    start = time.monotonic()
    out = read_sources(["http://10.0.0.1/a.jpg", "http://169.254.169.254/latest", "http://[::1]/a.png"],
                       FetchSettings(), 1000)
    assert codes(out) == ["url_forbidden"] * 3
    assert time.monotonic() - start < 2
