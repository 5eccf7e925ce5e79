"""``moderation backfill`` on Ray Data with the tiny checkpoint: a folder tree with good, corrupt,
truncated, empty and non-image files gives one row per source with the API's error codes; its
scores are the service's; stored embeddings are re-scored without pixels."""

from __future__ import annotations

import io
import json

import pytest
import ray
from PIL import Image

from backfill.job import BackfillOptions, rescore_table, run_backfill, service_args
from backfill.table import read_table
from images import jpeg, png

pytestmark = pytest.mark.integration


def tree(root) -> dict[str, str | None]:  # also used by test_backfill_cluster.py
    """Files under ``root`` and the error code each should get (None: a result)."""
    (root / "a" / "b").mkdir(parents=True)
    expected = {}
    for n in range(6):
        path = root / "a" / f"photo{n}.jpg"
        path.write_bytes(jpeg(320 + 16 * n, 240, seed=n))
        expected[str(path)] = None
    (root / "a" / "b" / "deep.png").write_bytes(png(200, 150, seed=9))
    expected[str(root / "a" / "b" / "deep.png")] = None
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(io.BytesIO(jpeg(300, 200, seed=3))).save(turned, "JPEG", exif=exif)
    (root / "a" / "turned.jpg").write_bytes(turned.getvalue())
    expected[str(root / "a" / "turned.jpg")] = None
    whole = jpeg(640, 480, seed=4)
    (root / "a" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    expected[str(root / "a" / "truncated.jpg")] = "image_decode_error"
    (root / "a" / "noise.jpg").write_bytes(bytes(range(256)) * 8)
    expected[str(root / "a" / "noise.jpg")] = "unsupported_media_type"
    (root / "a" / "b" / "empty.png").write_bytes(b"")
    expected[str(root / "a" / "b" / "empty.png")] = "image_decode_error"
    (root / "a" / "b" / "page.gif").write_bytes(b"<html>not an image</html>")
    expected[str(root / "a" / "b" / "page.gif")] = "unsupported_media_type"
    (root / "a" / "notes.txt").write_text("not listed: not an image suffix")
    return expected


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def args(tiny_clip_dir):
    return service_args({"model": tiny_clip_dir, "dtype": "float32", "engine": "torch", "forward_lanes": 1})


def test_a_folder_tree_gives_one_row_per_source_with_the_api_error_codes(local_ray, args, tmp_path):
    expected = tree(tmp_path / "images")
    out = tmp_path / "table"
    summary = run_backfill(BackfillOptions(str(tmp_path / "images"), str(out), cpus_per_actor=1.5, part_rows=4,
                                           progress=False), args)
    rows = read_table(str(out), "parquet").to_pylist()
    assert sorted(r["source"] for r in rows) == sorted(expected)
    for row in rows:
        assert row["error_code"] == expected[row["source"]], row
        assert row["ok"] is (expected[row["source"]] is None)
        if row["ok"]:
            assert row["model"] == args["model"] and len(row["sha256"]) == 64
            assert isinstance(row["nudity.flagged"], bool) and 0 <= row["nudity.explicit"] <= 1
            assert row["faces"] == 0  # generated photos: no faces (face_attributes is in the default set)
    assert summary["images"] == len(expected) and summary["errors"] == 4
    assert len(list(out.glob("part-*.parquet"))) >= 3  # written as it went, 4 rows a part

    again = run_backfill(BackfillOptions(str(tmp_path / "images"), str(out), progress=False), args)
    assert again["skipped"] == len(expected) and again["images"] == 0
    assert len(read_table(str(out), "parquet")) == len(expected)


@ray.remote
def classify_with_the_model_class(args: dict, data: bytes):
    """The service's model class answering one image, in a Ray worker (not in this process:
    a used ``@serve.batch`` method keeps state that stops Serve from pickling the class later)."""
    import asyncio

    from backfill.scorer import batch_outside_serve
    from deployments.clip_model import ClipModel
    from deployments.settings import AppArgs

    batch_outside_serve()
    app = AppArgs.model_validate({**args, "torch_threads": 1})
    model = ClipModel.func_or_class(app.model_settings(), app.runtime_config())
    return asyncio.run(model.classify(data))


def test_the_service_and_the_backfill_give_the_same_scores(local_ray, args, tmp_path):
    """One code path: the backfill's row for an image has the scores the model class gives."""
    (tmp_path / "one").mkdir()
    data = jpeg(400, 300, seed=11)
    (tmp_path / "one" / "x.jpg").write_bytes(data)
    run_backfill(BackfillOptions(str(tmp_path / "one"), str(tmp_path / "t"), fmt="jsonl", progress=False), args)
    row = json.loads((next((tmp_path / "t").glob("part-*.jsonl"))).read_text().splitlines()[0])
    served = ray.get(classify_with_the_model_class.remote(args, data))
    for result in served.results:
        for label, value in result.scores.items():
            assert row[f"{result.name}.{label}"] == pytest.approx(value, abs=1e-5)
    assert row["sha256"] == served.hashes.sha256 and row["pdq"] == served.hashes.pdq


def test_rescore_uses_stored_embeddings_and_todays_thresholds(local_ray, args, tmp_path):
    (tmp_path / "few").mkdir()
    for n in range(3):
        (tmp_path / "few" / f"{n}.jpg").write_bytes(jpeg(256, 256, seed=20 + n))
    (tmp_path / "few" / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    first = tmp_path / "first"
    run_backfill(BackfillOptions(str(tmp_path / "few"), str(first), embeddings=True, classifiers=["gore"],
                                 progress=False), args)
    stored = {r["source"]: r for r in read_table(str(first), "parquet").to_pylist()}
    dims = {len(r["embedding"]) for r in stored.values() if r["ok"]}
    assert len(dims) == 1 and dims.pop() >= 16  # the tiny model's projection, one vector a row
    strict = {**args, "thresholds": {"gore": 0.01}}  # today's policy: flag everything
    rescore_table(str(first), str(tmp_path / "second"), "parquet", strict, {"classifiers": ["gore"]})
    again = {r["source"]: r for r in read_table(str(tmp_path / "second"), "parquet").to_pylist()}
    assert set(again) == set(stored)
    for source, row in again.items():
        if not stored[source]["ok"]:
            assert row["error_code"] == stored[source]["error_code"]
            continue
        assert row["gore.graphic"] == pytest.approx(stored[source]["gore.graphic"], abs=1e-6)
        assert row["gore.flagged"] is True and row["sha256"] == stored[source]["sha256"]
