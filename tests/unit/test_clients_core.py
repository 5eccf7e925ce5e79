"""Client pieces that need no server: request building, errors, retry delays, CLI I/O."""

import io
import json

from PIL import Image

from clients import cli
from clients.core import PIL_MAX_SIDE, RetryPolicy, api_error, build_request
from clients.results import ManyResult


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
