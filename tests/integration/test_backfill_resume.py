"""A backfill killed midway (SIGKILL of `moderation backfill` and its Ray) and run again writes
each source exactly once: parts are written whole or not at all, and the rerun skips what is in
them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from backfill.table import read_table
from images import jpeg
from integration.cluster import kill_with_ray

pytestmark = pytest.mark.integration
COUNT = 1200


def backfill(source, out, model, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "moderation_cli.main", "backfill", str(source), "--out", str(out),
               "--model", model, "--part-rows", "16", "--batch-size", "16", "--no-progress", "-c", "nudity"]
    return subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def test_a_killed_backfill_resumes_and_writes_each_source_once(tiny_clip_dir, tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    for n in range(COUNT):
        (source / f"{n:04d}.jpg").write_bytes(jpeg(320, 240, seed=n % 50))
    out, log = tmp_path / "table", tmp_path / "backfill.log"
    first = backfill(source, out, tiny_clip_dir, log)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("part-*.parquet")):  # killed as soon as it has written a part
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
    finally:
        kill_with_ray(first)
    written = len(read_table(str(out), "parquet"))
    assert 0 < written < COUNT, written  # midway

    second = backfill(source, out, tiny_clip_dir, log)
    assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    rows = read_table(str(out), "parquet").to_pylist()
    sources = [r["source"] for r in rows]
    assert len(sources) == len(set(sources)) == COUNT  # each exactly once
    assert all(r["ok"] for r in rows)
    assert f"{COUNT - written} to do" in log.read_text()
