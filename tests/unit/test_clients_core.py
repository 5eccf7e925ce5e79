"""Client pieces that need no server: request building, errors, retry delays, CLI I/O."""

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image
from ray.exceptions import RayTaskError
from ray.serve.exceptions import RayServeException

from classifiers.errors import ModerationError
from clients import cli
from clients.core import PIL_MAX_SIDE, RetryPolicy, api_error, build_request, chunks_in_threads
from clients.errors import ModerationAPIError
from clients.in_cluster import _in_order, _loaded
from clients.results import ManyResult
from deployments.model_calls import missing_method
from deployments.responses import as_moderation_error


def test_urls_go_as_json_and_files_as_multipart_with_json_lists():
    by_url = build_request("https://example.com/a.jpg", classifiers=["gore"], labels=["a, b", "c"])
    assert by_url.json == {"url": "https://example.com/a.jpg", "classifiers": ["gore"], "labels": ["a, b", "c"]}
    upload = build_request(b"\xff\xd8\xff", classifiers=[], labels=["x", "y"], threshold=0.3)
    assert upload.files["file"][1] == b"\xff\xd8\xff"
    assert json.loads(upload.data["labels"]) == ["x", "y"] and upload.data["threshold"] == "0.3"
    assert build_request(b"abc", use_base64=True).json == {"image_base64": "YWJj"}


def test_large_pil_images_are_shrunk_before_upload():
    big = Image.new("RGB", (4000, 3000), (10, 20, 30))
    name, data, _ = build_request(big).files["file"]
    sent = Image.open(io.BytesIO(data))
    assert name.endswith(".png") and max(sent.size) == PIL_MAX_SIDE and sent.size[0] / sent.size[1] == 4 / 3


def test_non_json_error_bodies_keep_status_and_text():
    error = api_error(502, b"<html>Bad gateway</html>", {"x-request-id": "abc"})
    assert (error.status, error.code, error.request_id) == (502, "http_error", "abc")
    assert "Bad gateway" in error.message
    coded = api_error(413, json.dumps({"error": {"code": "image_too_large", "message": "m",
                                                 "request_id": "r"}}).encode(), {})
    assert (coded.code, coded.request_id) == ("image_too_large", "r")


def test_retry_delay_honours_retry_after_and_caps():
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=4)
    assert policy.delay(0, "2") == 2 and policy.delay(0, "100") == 4
    assert 0.25 <= policy.delay(0) <= 0.5 and policy.delay(10) <= 4


def test_inputs_expand_directories_stdin_and_urls(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/a.JPG", "d/e/b.png", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    stdin = io.StringIO("https://example.com/x.jpg\n\n/some/file.gif\n")
    found = list(cli.expand_inputs([str(tmp_path / "d"), "-"], stdin=stdin))
    assert found == [str(tmp_path / "d/a.JPG"), str(tmp_path / "d/e/b.png"),
                     "https://example.com/x.jpg", "/some/file.gif"]


def test_table_prints_names_with_brackets_verbatim():
    error = type("E", (Exception,), {"code": "image_decode_error", "message": "bad [/] data"})()
    rows = [cli.row_of(ManyResult(0, "[red]x[/].jpg", error=error))]
    out = io.StringIO()
    cli.write_table(rows, out)
    assert "[red]x[/].jpg" in out.getvalue() and "bad [/] data" in out.getvalue()


def test_cli_usage_errors_exit_2_before_any_request(tmp_path):
    assert cli.main(["classify", "x.jpg", "--threshold", "0.2"]) == cli.EXIT_USAGE
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert cli.main(["classify", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "no/such/dir/out.csv"),
                     "--server", "http://127.0.0.1:9"]) == cli.EXIT_USAGE


def test_cli_rows_carry_action_faces_and_policies():
    from classifiers.schemas import ClassifyResponse

    response = ClassifyResponse.model_validate({
        "request_id": "r", "model": "m", "flagged": True, "action": "block", "results": {},
        "faces": [{"box": [1, 2, 3, 4], "confidence": 0.9, "attributes": {"minor": 0.8}}],
        "policies": [{"name": "minor_and_nudity", "action": "block"}],
        "timing": {"total_ms": 1, "decode_ms": 1, "inference_ms": 1}})
    row = cli.row_of(ManyResult(0, "a.jpg", response=response))
    assert row["action"] == "block" and row["policies"] == ["minor_and_nudity"]
    assert row["faces"] == [{"box": [1, 2, 3, 4], "confidence": 0.9, "attributes": {"minor": 0.8}}]
    out = io.StringIO()
    cli.write_csv([row], out)
    header, line = out.getvalue().splitlines()
    assert dict(zip(header.split(","), line.split(",")))["faces"] == "1"
    table = io.StringIO()
    cli.write_table([row], table)
    assert "minor_and_nudity" in table.getvalue() and "faces: 1" in table.getvalue()


def test_chunks_in_threads_yields_every_chunk_and_refuses_an_empty_batch_size():
    def chunk_of(indices):
        return [index * 10 for index in indices]

    assert list(chunks_in_threads(chunk_of, 7, 3, 2, ordered=True)) == [0, 10, 20, 30, 40, 50, 60]
    assert sorted(chunks_in_threads(chunk_of, 7, 3, 2, ordered=False)) == [0, 10, 20, 30, 40, 50, 60]
    assert list(chunks_in_threads(chunk_of, 0, 3, 2, ordered=True)) == []
    for size in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            list(chunks_in_threads(chunk_of, 3, size, 2, ordered=True))


def test_an_older_model_replica_is_told_from_other_failures():
    """Serve's own exception for a method the replica's class lacks, as a handle call raises it."""
    cause = RayServeException("Tried to call a method 'try_classify_many' that does not exist. "
                              "Available methods: ['classify', 'try_classify'].")
    raised = RayTaskError("handle_request_with_rejection", "Traceback ...", cause).as_instanceof_cause()
    assert missing_method(raised, "try_classify_many") and missing_method(cause, "try_classify_many")
    assert not missing_method(raised, "try_classify")
    assert not missing_method(RayServeException("the deployment is not ready"), "try_classify_many")
    assert not missing_method(RuntimeError("boom"), "try_classify_many")
    assert as_moderation_error(raised).code == "internal_error"  # what the ingress would answer without it


def test_in_cluster_batch_outcomes_go_back_in_input_order(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff bytes")
    array = np.zeros((4, 4, 3), np.uint8)
    payloads = _loaded([b"raw", str(tmp_path / "missing.jpg"), "https://example.com/a.jpg", str(path), array, 7])
    assert [type(p).__name__ for p in payloads] == ["bytes", "FileNotFoundError", "TypeError", "bytes", "ndarray",
                                                     "TypeError"]
    failure, cancelled = RuntimeError("replica bug"), asyncio.CancelledError()
    answers = _in_order(payloads, [ModerationError("unsupported_media_type", "no"), failure, cancelled], 0.0)
    assert isinstance(answers[0], ModerationAPIError) and answers[0].code == "unsupported_media_type"
    assert answers[3] is failure and answers[4] is cancelled
    assert isinstance(answers[1], FileNotFoundError) and isinstance(answers[5], TypeError)
    with pytest.raises(RuntimeError, match="answers"):
        _in_order(payloads, [failure], 0.0)
