"""Backfill output: rows from real results and errors, atomic part files, resuming, the summary."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pyarrow as pa
import pytest

from backfill.table import PartWriter, Summary, done_sources, read_table, row_of
from banks.hashes import ImageHashes
from banks.index import Match
from classifiers.errors import ModerationError
from classifiers.results import Classification, ClassifierResult, Face, PolicyHit

NSFW = ClassifierResult(
    name="nsfw", kind="exclusive", scores={"safe": 0.2, "suggestive": 0.1, "explicit": 0.7},
    top_label="explicit", top_score=0.7, unsafe_labels=("explicit",), unsafe_score=0.7,
    threshold=0.5, flagged=True,
)
VIOLENCE = ClassifierResult(
    name="violence", kind="attributes", scores={"gore": 0.1, "weapon": 0.3}, top_label="weapon",
    top_score=0.3, unsafe_labels=("gore", "weapon"), unsafe_score=0.3, threshold=0.5, flagged=False,
)
# A label named like a result field must not overwrite it.
ODD = ClassifierResult(
    name="odd", kind="exclusive", scores={"flagged": 0.9, "fine": 0.1}, top_label="flagged",
    top_score=0.9, unsafe_labels=("flagged",), unsafe_score=0.9, threshold=0.95, flagged=False,
)
HASHES = ImageHashes(sha256="a" * 64, pdq="b" * 64, pdq_quality=90)


def classification(*results, **kwargs) -> Classification:
    return Classification(model="tiny-clip", results=results, decode_ms=1.0, inference_ms=2.0, **kwargs)


def ok_row(source="a.jpg", *results, **kwargs):
    return row_of(source, classification(*(results or (NSFW, VIOLENCE)), hashes=HASHES, **kwargs), "v3")


def error_row(source="bad.jpg", code="fetch_failed"):
    return row_of(source, ModerationError(code, f"{code} happened"), "v3")


# -- rows --------------------------------------------------------------------------------------

def test_ok_row_is_flat():
    faces = (Face((0, 0, 10, 10), 0.9, {"minor": 0.1}), Face((5, 5, 8, 8), 0.8, {"minor": 0.2}))
    row = ok_row("a.jpg", NSFW, VIOLENCE, faces=faces, policies=(PolicyHit("minors", "review"),))
    assert row == {
        "source": "a.jpg", "ok": True, "error_code": None, "error_message": None, "status": 200,
        "flagged": True, "action": "review", "model": "tiny-clip", "heads_version": "v3",
        "sha256": "a" * 64, "pdq": "b" * 64, "pdq_quality": 90, "faces": 2, "policies": ["minors"], "flagged_by": ["nsfw"],
        "nsfw.top_label": "explicit", "nsfw.top_score": 0.7, "nsfw.unsafe_score": 0.7, "nsfw.flagged": True,
        "nsfw.safe": 0.2, "nsfw.suggestive": 0.1, "nsfw.explicit": 0.7,
        "violence.top_label": "weapon", "violence.top_score": 0.3, "violence.unsafe_score": 0.3,
        "violence.flagged": False, "violence.gore": 0.1, "violence.weapon": 0.3,
    }


def test_ok_row_without_hashes_faces_or_policies_and_a_bank_block():
    match = Match(bank="known", action="block", kind="sha256", distance=0, entry_id=None, pk=1)
    row = row_of("b.jpg", classification(VIOLENCE, matches=(match,)), None)
    assert (row["flagged"], row["action"], row["flagged_by"]) == (True, "block", [])
    assert (row["sha256"], row["pdq"], row["faces"], row["policies"], row["heads_version"]) == (
        None, None, None, [], None)


def test_label_named_like_a_field_does_not_overwrite_it():
    row = ok_row("c.jpg", ODD)
    assert row["odd.flagged"] is False and row["odd.label:flagged"] == 0.9 and row["odd.fine"] == 0.1


def test_error_row_has_the_fixed_keys_with_none():
    row = error_row("bad.jpg", "image_too_large")
    assert row == {
        "source": "bad.jpg", "ok": False, "error_code": "image_too_large",
        "error_message": "image_too_large happened", "status": 413, "flagged": None, "action": None,
        "model": None, "heads_version": "v3", "sha256": None, "pdq": None, "pdq_quality": None, "faces": None,
        "policies": None, "flagged_by": None,
    }
    assert set(row) <= set(ok_row())


def test_other_exceptions_are_internal_errors():
    row = row_of("x.jpg", RuntimeError("boom"), None)
    assert (row["error_code"], row["status"], row["error_message"]) == ("internal_error", 500, "RuntimeError: boom")


def test_embedding_is_the_first_frame_as_float32():
    frames = np.array([[0.1, 0.2, 0.3], [9.0, 9.0, 9.0]], dtype=np.float64)
    row = row_of("a.jpg", classification(NSFW), None, embedding=frames)
    assert row["embedding"] == np.float32([0.1, 0.2, 0.3]).tolist()
    assert row_of("a.jpg", classification(NSFW), None, embedding=np.ones(2))["embedding"] == [1.0, 1.0]
    assert "embedding" not in row_of("a.jpg", classification(NSFW), None)


# -- parts -------------------------------------------------------------------------------------

PART_NAME = re.compile(r"part-\d{6}-[0-9a-f]{8}\.(parquet|jsonl)")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parts_round_trip_with_ok_and_error_rows(tmp_path, fmt):
    dest = tmp_path / "out" / "nested"  # created on the first write
    rows = [error_row("bad.jpg"), ok_row("a.jpg"), ok_row("b.jpg", ODD)]
    rows[1]["embedding"] = [0.5, 0.25]
    path = PartWriter(dest, fmt).write(rows)
    assert path.parent == dest and PART_NAME.fullmatch(path.name) and path.suffix == f".{fmt}"
    assert [p.name for p in dest.iterdir()] == [path.name]  # no temporary file left
    table = read_table(dest, fmt)
    back = table.to_pylist()
    assert [r["source"] for r in back] == ["bad.jpg", "a.jpg", "b.jpg"]
    assert back[0]["nsfw.top_score"] is None and back[0]["error_code"] == "fetch_failed"
    assert back[1]["nsfw.explicit"] == pytest.approx(0.7) and back[1]["policies"] == []
    assert back[1]["flagged_by"] == ["nsfw"] and back[2]["odd.label:flagged"] == pytest.approx(0.9)
    assert back[1]["embedding"] == [0.5, 0.25] and back[0]["embedding"] is None
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema.field("status").type == pa.int64()
    assert done_sources(dest, fmt) == {"bad.jpg", "a.jpg", "b.jpg"}


def test_jsonl_part_is_one_object_per_line(tmp_path):
    path = PartWriter(tmp_path, "jsonl").write([ok_row("a.jpg"), error_row("é.jpg")])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["source"] for line in lines] == ["a.jpg", "é.jpg"]


def test_seq_continues_after_the_highest_existing_part(tmp_path):
    first = PartWriter(tmp_path, "parquet")
    names = [first.write([ok_row(f"{i}.jpg")]).name for i in range(2)]
    (tmp_path / "part-000007-0123abcd.parquet").write_bytes(b"")  # e.g. from an earlier run
    (tmp_path / "notes.txt").write_text("not a part")
    later = PartWriter(tmp_path, "parquet").write([ok_row("c.jpg")]).name
    assert [n[:11] for n in names + [later]] == ["part-000001", "part-000002", "part-000008"]


def test_unknown_format_and_empty_parts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="format"):
        PartWriter(tmp_path, "csv")
    with pytest.raises(ValueError, match="at least one row"):
        PartWriter(tmp_path, "parquet").write([])


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        PartWriter(tmp_path, "jsonl").write([{"source": "a.jpg", "bad": object()}])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_leftovers_and_truncated_parts_are_deleted_and_redone(tmp_path, fmt, caplog):
    writer = PartWriter(tmp_path, fmt)
    good = writer.write([ok_row("a.jpg"), error_row("b.jpg")])
    broken = writer.write([ok_row("c.jpg"), ok_row("d.jpg")])
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2] if fmt == "parquet" else data[: data.index(b"\n") + 20])
    tmp = tmp_path / f".part-000003-deadbeef.{fmt}.tmp"
    tmp.write_bytes(good.read_bytes())  # a complete-looking file that was never renamed
    with caplog.at_level(logging.WARNING, logger="backfill.table"):
        assert done_sources(tmp_path, fmt) == {"a.jpg", "b.jpg"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]
    assert broken.name in caplog.text
    assert read_table(tmp_path, fmt).column("source").to_pylist() == ["a.jpg", "b.jpg"]


def test_done_sources_reads_only_its_format(tmp_path):
    PartWriter(tmp_path, "parquet").write([ok_row("a.jpg")])
    PartWriter(tmp_path, "jsonl").write([ok_row("b.jpg")])
    assert done_sources(tmp_path, "parquet") == {"a.jpg"}
    assert done_sources(tmp_path, "jsonl") == {"b.jpg"}


def test_missing_dest_is_empty(tmp_path):
    assert done_sources(tmp_path / "nope", "parquet") == set()
    assert read_table(tmp_path / "nope", "jsonl").num_rows == 0


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parts_with_different_columns_are_unified(tmp_path, fmt):
    writer = PartWriter(tmp_path, fmt)
    writer.write([error_row("e1.jpg"), error_row("e2.jpg", "image_decode_error")])  # error columns only
    writer.write([ok_row("a.jpg", NSFW)])
    writer.write([ok_row("b.jpg", VIOLENCE, ODD)])
    table = read_table(tmp_path, fmt)
    assert table.column("source").to_pylist() == ["e1.jpg", "e2.jpg", "a.jpg", "b.jpg"]
    assert table.column("nsfw.explicit").to_pylist() == [None, None, pytest.approx(0.7), None]
    assert table.column("violence.flagged").to_pylist() == [None, None, None, False]
    assert table.column("odd.top_label").to_pylist() == [None, None, None, "flagged"]
    assert table.schema.field("flagged").type == pa.bool_()
    assert table.schema.field("policies").type == pa.list_(pa.string())


# -- summary -----------------------------------------------------------------------------------

def test_summary_counts_and_text():
    summary = Summary()
    for row in [ok_row("a.jpg"), ok_row("b.jpg", NSFW, ODD), ok_row("c.jpg", VIOLENCE), error_row("d.jpg"),
                error_row("e.jpg"), error_row("f.jpg", "image_decode_error")]:
        summary.add(row)
    assert summary.as_dict() == {
        "images": 6, "ok": 3, "errors": 3, "flagged": 2, "flagged_by": {"nsfw": 2},
        "error_codes": {"fetch_failed": 2, "image_decode_error": 1},
    }
    assert summary.as_dict(2.0)["images_per_s"] == 3.0
    assert summary.render(2.0) == (
        "6 images in 2.0 s (3.0 images/s): 3 ok, 3 errors\n"
        "flagged: 2 (nsfw 2)\n"
        "errors: fetch_failed 2, image_decode_error 1"
    )


def test_empty_summary_renders():
    assert Summary().render(0.0) == "0 images in 0.0 s (- images/s): 0 ok, 0 errors\nflagged: 0"


def test_extra_columns_are_inferred_and_dotted_labels_stay_scores(tmp_path):
    row = ok_row("a.jpg", ClassifierResult(
        name="odd", kind="exclusive", scores={"x.flagged": 0.6, "fine": 0.4}, top_label="x.flagged",
        top_score=0.6, unsafe_labels=("x.flagged",), unsafe_score=0.6, threshold=0.5, flagged=True))
    row["decode.note"] = "slow"
    PartWriter(tmp_path, "parquet").write([row])
    table = read_table(tmp_path, "parquet")
    assert table.schema.field("odd.x.flagged").type == pa.float64()
    assert table.column("decode.note").to_pylist() == ["slow"]
