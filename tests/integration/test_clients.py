"""The clients against the real service (tiny model): sync, async, in-cluster, and the CLI."""

import asyncio
import csv
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from clients import AsyncModerationClient, ModerationAPIError, ModerationClient, ModerationConnectionError
from clients.core import RetryPolicy
from clients.in_cluster import InClusterClient
from classifiers.schemas import ClassifyResponse
from deployments.app import build_app
from deployments.fetcher import ImageFetcher
from deployments.ingress import Ingress
from deployments.settings import AppArgs, FetchSettings
from images import jpeg, noise_png
from integration.cluster import serve_on_loopback
from integration.servers import PHOTO, free_port, serve_routes

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(max_retries=3, backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(scope="module")
def image_port():
    with serve_routes({"/photo.jpg": (200, {"Content-Type": "image/jpeg"}, PHOTO)}) as port:
        yield port


@pytest.fixture(scope="module")
def base_url(tiny_clip_dir, image_port):
    args = AppArgs(model=tiny_clip_dir, fetch=FetchSettings(
        allowed_networks=("127.0.0.0/8",), allowed_ports=(image_port,)))
    with serve_on_loopback() as port:
        serve.run(build_app(args), name="moderation", route_prefix="/")
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(base_url):
    with ModerationClient(base_url) as c:
        yield c


@pytest.fixture
def inputs(tmp_path, image_port):
    path = tmp_path / "photo.jpg"
    path.write_bytes(PHOTO)
    return {
        "path": str(path),
        "bytes": PHOTO,
        "pil": Image.open(path),
        "url": f"http://127.0.0.1:{image_port}/photo.jpg",
    }


def nudity_scores(response: ClassifyResponse) -> dict:
    return response.results["nudity"].scores


@pytest.mark.parametrize("kind", ["path", "bytes", "pil", "url"])
def test_sync_client_accepts_every_input_kind(client, inputs, kind):
    response = client.classify(inputs[kind], classifiers=["nudity"])
    reference = client.classify(PHOTO, classifiers=["nudity"])
    assert isinstance(response, ClassifyResponse)
    tolerance = 0.05 if kind == "pil" else 1e-4  # PIL goes as lossless PNG of the decoded JPEG
    assert nudity_scores(response) == pytest.approx(nudity_scores(reference), abs=tolerance)


def test_sync_client_base64_custom_labels_and_typed_errors(client):
    response = client.classify(PHOTO, classifiers=[], labels=["a cat", "a dog"], use_base64=True)
    assert list(response.results) == ["custom"]
    with pytest.raises(ModerationAPIError) as info:
        client.classify(b"not an image")
    assert info.value.status == 415 and info.value.code == "unsupported_media_type"
    assert info.value.request_id
    with pytest.raises(ModerationAPIError) as info:
        client.classify(PHOTO, classifiers=["violence"])
    assert info.value.code == "unknown_classifier"
    assert [c.name for c in client.classifiers().classifiers][0] == "nudity"


@pytest.mark.parametrize("ordered", [True, False])
def test_sync_classify_many_streams_every_result(client, ordered):
    images = [jpeg(120 + 10 * i, 90, seed=i) for i in range(6)] + [b"broken"]
    results = list(client.classify_many(images, concurrency=3, ordered=ordered, classifiers=["gore"]))
    assert sorted(r.index for r in results) == list(range(7))
    if ordered:
        assert [r.index for r in results] == list(range(7))
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1 and failed[0].index == 6 and failed[0].error.code == "unsupported_media_type"


def test_many_send_batches_of_mixed_inputs_and_each_image_gets_its_own_answer(client, base_url, inputs):
    images = [inputs["path"], inputs["bytes"], inputs["url"], "/no/such/file.jpg", b"broken", PHOTO, PHOTO]
    alone = nudity_scores(client.classify(PHOTO, classifiers=["nudity"]))

    def check(results):
        assert [r.index for r in results] == list(range(7))
        assert [r.ok for r in results] == [True, True, True, False, False, True, True]
        assert isinstance(results[3].error, FileNotFoundError)
        assert results[4].error.code == "unsupported_media_type" and results[4].error.status == 415
        for r in results:
            if r.ok:
                assert nudity_scores(r.response) == pytest.approx(alone, abs=1e-4)
                assert r.response.request_id and r.response.model

    results = list(client.classify_many(images, batch_size=3, ordered=True, classifiers=["nudity"]))
    check(results)
    # One request per chunk of three (the first chunk: path, bytes and URL in one JSON body).
    assert len({r.response.request_id for r in results[:3]}) == 1

    async def main():
        async with AsyncModerationClient(base_url) as aclient:
            return [r async for r in aclient.classify_many(images, batch_size=3, ordered=True,
                                                            classifiers=["nudity"])]

    check(asyncio.run(main()))


def test_many_fall_back_to_one_request_per_image_without_the_batch_route(ok_body):
    old = ScriptedServer([], ok_body, missing=("/v1/classify/batch",))
    try:
        with ModerationClient(old.url, retry=FAST_RETRY) as c:
            results = list(c.classify_many([PHOTO] * 5, batch_size=4, concurrency=1, ordered=True))
        assert [r.ok for r in results] == [True] * 5
        assert old.paths == ["/v1/classify/batch"] + ["/v1/classify"] * 5
    finally:
        old.close()


def test_a_refused_batch_and_shed_items_are_sent_again_one_by_one(ok_body):
    too_big = json.dumps({"error": {"code": "image_too_large", "message": "the request body is larger",
                                    "request_id": "r"}}).encode()
    refusing = ScriptedServer([], ok_body, answers={"/v1/classify/batch": (413, too_big)})
    one = json.loads(ok_body)
    partly_shed = json.dumps({
        "request_id": "b", "model": one["model"], "model_family": one["model_family"], "flagged": False,
        "errors": 1, "total_ms": 1.0, "items": [
            {"index": 0, "flagged": one["flagged"], "results": one["results"], "timing": one["timing"]},
            {"index": 1, "error": {"code": "overloaded", "message": "waited too long", "status": 503}},
        ]}).encode()
    shedding = ScriptedServer([], ok_body, answers={"/v1/classify/batch": (200, partly_shed)})
    try:
        with ModerationClient(refusing.url, retry=FAST_RETRY) as c:
            results = list(c.classify_many([PHOTO] * 3, batch_size=3, ordered=True))
        assert [r.ok for r in results] == [True] * 3
        assert refusing.paths == ["/v1/classify/batch"] + ["/v1/classify"] * 3
        with ModerationClient(shedding.url, retry=FAST_RETRY) as c:
            results = list(c.classify_many([PHOTO] * 2, batch_size=2, ordered=True))
        assert [r.ok for r in results] == [True, True] and results[0].response.request_id == "b"
        assert shedding.paths == ["/v1/classify/batch", "/v1/classify"]  # only the shed one again
    finally:
        refusing.close()
        shedding.close()


def test_async_client_every_input_kind_and_many(base_url, inputs):
    async def main():
        async with AsyncModerationClient(base_url) as aclient:
            singles = [await aclient.classify(inputs[k], classifiers=["nudity"]) for k in ("path", "bytes", "url")]
            pil = await aclient.classify(inputs["pil"], classifiers=["nudity"])
            many = [r async for r in aclient.classify_many([PHOTO] * 4 + [b"x"], concurrency=2,
                                                            ordered=True, classifiers=["nudity"])]
            with pytest.raises(ModerationAPIError) as info:
                await aclient.classify(PHOTO, labels=["only one"])
            return singles, pil, many, info.value

    singles, pil, many, error = asyncio.run(main())
    for response in singles[1:]:
        assert nudity_scores(response) == pytest.approx(nudity_scores(singles[0]), abs=1e-4)
    assert nudity_scores(pil) == pytest.approx(nudity_scores(singles[0]), abs=0.05)
    assert [r.index for r in many] == list(range(5)) and [r.ok for r in many] == [True] * 4 + [False]
    assert error.code == "invalid_request" and error.status == 400


class ScriptedServer:
    """Answers with the scripted statuses in turn (then 200 with a real body); counts hits."""

    def __init__(self, statuses: list[int], ok_body: bytes, delay_s: float = 0.0,
                 missing: tuple[str, ...] = (), answers: dict[str, tuple[int, bytes]] | None = None) -> None:
        self.statuses, self.hits, self.ok_body = list(statuses), 0, ok_body
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.hits += 1
                outer.paths.append(self.path)
                time.sleep(delay_s)
                if self.path in (answers or {}):  # this path's one answer
                    status, body = answers[self.path]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path in missing:  # as a server of an older version answers
                    body = json.dumps({"error": {"code": "not_found", "message": "Not Found",
                                                 "request_id": "r"}}).encode()
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                status = outer.statuses.pop(0) if outer.statuses else 200
                body = outer.ok_body if status == 200 else json.dumps({"error": {
                    "code": "overloaded" if status == 503 else "invalid_request",
                    "message": "scripted", "request_id": f"r{outer.hits}"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ok_body(client):
    return client.classify(PHOTO, classifiers=["nudity"]).model_dump_json().encode()


def test_retries_on_503_but_never_on_4xx(ok_body):
    flaky = ScriptedServer([503, 503], ok_body)
    refusing = ScriptedServer([400, 400], ok_body)
    try:
        with ModerationClient(flaky.url, retry=FAST_RETRY) as c:
            assert c.classify(PHOTO).results["nudity"]
        assert flaky.hits == 3
        with ModerationClient(refusing.url, retry=FAST_RETRY) as c, pytest.raises(ModerationAPIError) as info:
            c.classify(PHOTO)
        assert refusing.hits == 1 and info.value.code == "invalid_request" and info.value.request_id == "r1"

        async def async_flaky():
            again = ScriptedServer([503], ok_body)
            try:
                async with AsyncModerationClient(again.url, retry=FAST_RETRY) as ac:
                    await ac.classify(PHOTO)
                return again.hits
            finally:
                again.close()

        assert asyncio.run(async_flaky()) == 2
    finally:
        flaky.close()
        refusing.close()


def test_a_slow_answer_is_not_sent_again(ok_body):
    slow = ScriptedServer([], ok_body, delay_s=1.0)
    try:
        with ModerationClient(slow.url, timeout_s=0.3, retry=FAST_RETRY) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.classify(PHOTO)
        assert slow.hits == 1  # the request may have been processed: never repeated

        async def async_slow():
            async with AsyncModerationClient(slow.url, timeout_s=0.3, retry=FAST_RETRY) as ac:
                with pytest.raises(asyncio.TimeoutError):
                    await ac.classify(PHOTO)

        asyncio.run(async_slow())
        assert slow.hits == 2
    finally:
        slow.close()


def test_unreachable_service_raises_a_connection_error_after_retries(client):
    assert client.healthy()
    with ModerationClient(f"http://127.0.0.1:{free_port()}", retry=FAST_RETRY) as c:
        assert not c.healthy()
        with pytest.raises(ModerationConnectionError):
            c.classify(PHOTO)


def test_in_cluster_client_takes_python_objects(base_url, tmp_path, client):
    path = tmp_path / "p.jpg"
    path.write_bytes(PHOTO)
    in_cluster = InClusterClient("moderation")
    over_http = nudity_scores(client.classify(PHOTO, classifiers=["nudity"]))
    for image in (PHOTO, str(path)):
        response = in_cluster.classify(image, classifiers=["nudity"])
        assert isinstance(response, ClassifyResponse)
        assert nudity_scores(response) == pytest.approx(over_http, abs=1e-4)
    array = np.asarray(Image.open(path).convert("RGB"))
    for image in (array, Image.open(path)):
        assert nudity_scores(in_cluster.classify(image, classifiers=["nudity"])) == pytest.approx(
            over_http, abs=0.05)
    assert asyncio.run(in_cluster.aclassify(PHOTO, classifiers=["gore"])).results["gore"]
    with pytest.raises(ModerationAPIError) as info:
        in_cluster.classify(np.zeros((4, 4, 2), np.uint8))
    assert info.value.code == "invalid_request"


def test_in_cluster_client_classifies_a_batch_in_one_call(base_url, tmp_path):
    path = tmp_path / "p.jpg"
    path.write_bytes(PHOTO)
    other = jpeg(300, 200, seed=5)
    in_cluster = InClusterClient("moderation")
    images = [PHOTO, str(path), b"not an image", str(tmp_path / "missing.jpg"), other]
    answers = in_cluster.classify_batch(images, classifiers=["nudity"])
    assert [type(a).__name__ for a in answers] == ["ClassifyResponse", "ClassifyResponse", "ModerationAPIError",
                                                   "FileNotFoundError", "ClassifyResponse"]
    assert answers[2].code == "unsupported_media_type"
    alone = nudity_scores(in_cluster.classify(other, classifiers=["nudity"]))
    assert nudity_scores(answers[4]) == pytest.approx(alone, abs=1e-4)
    assert nudity_scores(answers[0]) == pytest.approx(nudity_scores(answers[1]), abs=1e-6)
    again = asyncio.run(in_cluster.aclassify_batch(images, classifiers=["nudity"]))
    assert [type(a) for a in again] == [type(a) for a in answers]
    results = list(in_cluster.classify_many(images, batch_size=2, ordered=True, classifiers=["nudity"]))
    assert [r.index for r in results] == list(range(5)) and [r.ok for r in results] == [True, True, False, False, True]
    assert results[2].error.code == "unsupported_media_type"
    unreadable = in_cluster.classify_batch([str(tmp_path / "missing.jpg")])  # nothing to send: no call
    assert len(unreadable) == 1 and isinstance(unreadable[0], FileNotFoundError)
    assert in_cluster.classify_batch([]) == []


class RecordingHandle:
    """A real ``DeploymentHandle`` whose calls note how each went (``DeploymentResponse.by_reference``)."""

    def __init__(self, handle, ways: list) -> None:
        self.handle, self.ways = handle, ways

    def __getattr__(self, method: str):
        def remote(*args, **kwargs):
            response = getattr(self.handle, method).remote(*args, **kwargs)
            self.ways.append("reference" if response.by_reference else "value")
            return response

        return SimpleNamespace(remote=remote)


def recording(client: InClusterClient) -> list:
    ways: list = []
    same = client._by_value is client._by_reference
    client._by_reference = RecordingHandle(client._by_reference, ways)
    client._by_value = client._by_reference if same else RecordingHandle(client._by_value, ways)
    return ways


def test_in_cluster_calls_go_by_value_up_to_2_mib_and_larger_ones_through_the_object_store(base_url):
    """By value, a replica's gRPC server takes messages up to 4 MiB: a call carrying more than
    ``BY_VALUE_MAX_BYTES`` of images goes by reference, and is answered like a small one. (Sent by
    value anyway, without the threshold and without asking again on gRPC RESOURCE_EXHAUSTED, the
    batch of 4.4 MiB failed as a whole when this test was written: that is what the threshold spares.)"""
    from deployments.model_calls import BY_VALUE_MAX_BYTES

    big = noise_png(1024, seed=1)
    parts = [noise_png(700, seed=s) for s in (2, 3, 4)]
    assert len(big) > BY_VALUE_MAX_BYTES and sum(map(len, parts)) > 4 << 20 > max(map(len, parts))
    in_cluster = InClusterClient("moderation")
    by_reference = InClusterClient("moderation", by_value=False)
    ways, reference_ways = recording(in_cluster), recording(by_reference)
    small = in_cluster.classify_batch([parts[0], PHOTO], classifiers=["nudity"])
    assert in_cluster.classify(big, classifiers=["nudity"]).results["nudity"]
    answers = in_cluster.classify_batch([*parts, PHOTO], classifiers=["nudity"])
    again = asyncio.run(in_cluster.aclassify_batch(parts, classifiers=["nudity"]))
    assert ways == ["value", "reference", "reference", "reference"]
    assert all(isinstance(answer, ClassifyResponse) for answer in [*small, *answers, *again]), (small, answers, again)
    for answer, alone in zip([*small, *answers], by_reference.classify_batch([parts[0], PHOTO, *parts, PHOTO],
                                                                              classifiers=["nudity"])):
        assert nudity_scores(answer) == pytest.approx(nudity_scores(alone), abs=1e-6)
    assert reference_ways == ["reference"]


@serve.deployment(name="ClipModel", ray_actor_options={"num_cpus": 0})
class OlderModel:
    """A model replica of a version before ``try_classify_many`` (as during a rolling upgrade):
    single-image calls only, answered by the real model."""

    def __init__(self, model) -> None:
        self.model = model

    async def try_classify(self, *args, **kwargs):
        return await self.model.try_classify.remote(*args, **kwargs)


@pytest.fixture(scope="module")
def older_url(base_url, tiny_clip_dir):
    """An ingress (this version) in front of an older model deployment, as app ``older``."""
    args = AppArgs(model=tiny_clip_dir)
    model = OlderModel.bind(serve.get_deployment_handle("ClipModel", app_name="moderation"))
    serve.run(Ingress.bind(ImageFetcher.bind(args.fetch), model, args.ingress_settings()),
              name="older", route_prefix="/older")
    yield f"{base_url}/older"
    serve.delete("older")


def test_an_older_model_replica_gets_a_call_per_image(base_url, older_url):
    files = [("file", ("a.jpg", PHOTO, "image/jpeg")), ("file", ("b.jpg", b"not an image", "image/jpeg")),
             ("file", ("c.jpg", jpeg(300, 200, seed=5), "image/jpeg"))]
    current = httpx.post(f"{base_url}/v1/classify/batch", files=files, data={"classifiers": "nudity"}, timeout=60)
    older = httpx.post(f"{older_url}/v1/classify/batch", files=files, data={"classifiers": "nudity"}, timeout=60)
    assert current.status_code == older.status_code == 200, older.text
    items = older.json()["items"]
    assert [item["error"] and item["error"]["code"] for item in items] == [None, "unsupported_media_type", None]
    for mine, theirs in zip(current.json()["items"], items):
        if mine["results"] is not None:
            assert theirs["results"]["nudity"]["scores"] == pytest.approx(mine["results"]["nudity"]["scores"], abs=1e-4)
    answers = InClusterClient("older").classify_batch([PHOTO, b"not an image"], classifiers=["nudity"])
    assert isinstance(answers[0], ClassifyResponse) and answers[1].code == "unsupported_media_type"
    assert asyncio.run(InClusterClient("older").aclassify_batch([PHOTO], classifiers=["nudity"]))[0].results


# ---------------------------------------------------------------- CLI

@pytest.fixture
def image_dir(tmp_path):
    root = tmp_path / "uploads"
    (root / "nested").mkdir(parents=True)
    for i in range(7):
        (root / ("nested" if i % 2 else "") / f"img{i}.jpg").write_bytes(jpeg(100, 80, seed=i))
    (root / "notes.txt").write_text("not an image, skipped by suffix")
    return root


def run_cli(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_directory_to_jsonl_and_csv(base_url, image_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    result = run_cli("classify", str(image_dir), "-c", "face_attributes", "--server", base_url,
                     "-f", "jsonl", "-o", str(out))
    assert result.returncode == 0, result.stderr  # face attributes never flag, no errors
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7 and all(r["ok"] and r["flagged"] is False for r in rows)
    assert {r["source"].rsplit("/", 1)[1] for r in rows} == {f"img{i}.jpg" for i in range(7)}
    assert "face_attributes" in rows[0]["results"]

    out_csv = tmp_path / "out.csv"
    result = run_cli("classify", str(image_dir), "-c", "nudity", "-c", "gore", "--server", base_url,
                     "-f", "csv", "-o", str(out_csv))
    table = list(csv.DictReader(out_csv.open()))
    assert len(table) == 7 and "nudity.top_label" in table[0] and "gore.unsafe_score" in table[0]
    assert result.returncode == (1 if any(r["flagged"] == "True" for r in table) else 0)


def test_cli_exit_codes_errors_stdin_and_flagged_only(base_url, image_dir, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg(200, 150)[:500])  # truncated
    listing = f"{image_dir / 'img0.jpg'}\n{broken}\n{tmp_path / 'missing.jpg'}\n"
    result = run_cli("classify", "-", "-c", "face_attributes", "--server", base_url, "-f", "jsonl",
                     stdin=listing)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 3  # some images failed, none flagged
    assert [r["ok"] for r in rows] == [True, False, False]
    assert rows[1]["error"]["code"] == "image_decode_error"
    assert rows[2]["error"]["code"] == "FileNotFoundError"

    flagged = run_cli("classify", str(image_dir), "-c", "face_attributes", "--labels", "a thing,another",
                      "--unsafe-labels", "a thing", "--threshold", "0.001", "--server", base_url,
                      "-f", "jsonl", "--flagged-only")
    assert flagged.returncode == 1
    rows = [json.loads(line) for line in flagged.stdout.splitlines()]
    assert len(rows) == 7 and all(r["flagged"] for r in rows)
    assert run_cli("classify", str(tmp_path / "empty-dir-does-not-exist"), "--server", base_url).returncode == 3
    assert run_cli("classify").returncode == 2
