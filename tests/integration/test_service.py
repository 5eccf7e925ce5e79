"""The real application on Ray Serve with the tiny checkpoint, over real HTTP on 127.0.0.1."""

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

from classifiers.engines import openvino_available
from classifiers.errors import ModerationError
from classifiers.registry import BUILTIN_CLASSIFIERS
from classifiers.results import Classification
from deployments.settings import AppArgs, FetchSettings, KnownImagesSettings
from images import jpeg, noise_png, png
from integration.cluster import app_config, deploy_apps, serve_on_loopback
from integration.servers import serve_routes

# These tests count decodes, forward passes and batches: repeats must not come from the result cache.
NO_CACHE = KnownImagesSettings(cache_size=0)

pytestmark = pytest.mark.integration

PHOTO = jpeg(640, 480, seed=1)
# This module's service runs the image tower on OpenVINO (test_operations' on torch), so each
# engine serves real requests through Ray Serve; torch where openvino cannot be installed.
ENGINE = "openvino" if openvino_available() else "torch"
OTHER = png(300, 200, seed=2)


@pytest.fixture(scope="module")
def image_port():
    routes = {
        "/photo.jpg": (200, {"Content-Type": "image/jpeg"}, PHOTO),
        "/no-type": (200, {}, PHOTO),
        "/hop": (302, {"Location": "/photo.jpg"}, b""),
        "/page.html": (200, {"Content-Type": "text/html"}, b"<html>hi</html>"),
        "/gone.jpg": (404, {"Content-Type": "text/plain"}, b"not here"),
    }
    with serve_routes(routes) as port:
        yield port


@pytest.fixture(scope="module")
def app_args(tiny_clip_dir, image_port):
    return AppArgs(
        model=tiny_clip_dir, max_batch_size=8, batch_wait_timeout_s=0.05,
        torch_threads=2, forward_lanes=2,  # the CPU default with 2 CPUs (replicas here get 1)
        engine=ENGINE,
        fetch=FetchSettings(allowed_networks=("127.0.0.0/8",), allowed_ports=(image_port,)),
        known_images=NO_CACHE,
        # this module's concurrent uploads test relies on coalescing: any upload that finds another out waits
        coalesce_uploads_ms=5, coalesce_min_out=1,
    )


def deploy(args: AppArgs, port: int, model_user_config: dict | None = None) -> None:
    extra = {}
    if model_user_config is not None:
        extra["deployments"] = [{"name": "ClipModel", "user_config": model_user_config}]
    deploy_apps(port, app_config(args, **extra))


@pytest.fixture(scope="module")
def base_url(app_args):
    with serve_on_loopback() as port:
        deploy(app_args, port)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def upload(http, data=PHOTO, **form):
    return http.post("/v1/classify", files={"file": ("image.jpg", data, "image/jpeg")}, data=form)


def scores_of(results: dict) -> dict:
    """Scores flattened to ``{"classifier/label": score}``."""
    return {f"{name}/{k}": v for name, r in results.items() for k, v in r["scores"].items()}


def assert_same_scores(a: dict, b: dict) -> None:
    """Batched matmuls differ from batch-1 ones in the last bits, nothing more."""
    assert scores_of(a) == pytest.approx(scores_of(b), abs=1e-4)


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


def test_upload_scores_every_builtin_classifier(http):
    response = upload(http)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert list(body["results"]) == list(BUILTIN_CLASSIFIERS)
    for name, result in body["results"].items():
        label_set = BUILTIN_CLASSIFIERS[name]
        assert list(result["scores"]) == list(label_set.label_names)
        if label_set.kind == "exclusive":
            assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert result["top_label"] == max(result["scores"], key=result["scores"].get)
        assert result["flagged"] == (bool(label_set.unsafe) and result["unsafe_score"] >= result["threshold"])
    assert body["flagged"] == any(r["flagged"] for r in body["results"].values())
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0
    assert body["model_family"] == "clip"


def test_upload_base64_and_url_give_the_same_scores(http, image_port):
    by_upload = upload(http).json()["results"]
    by_base64 = http.post("/v1/classify", json={"image_base64": base64.b64encode(PHOTO).decode()})
    by_url = http.post("/v1/classify", json={"url": f"http://127.0.0.1:{image_port}/photo.jpg"})
    redirected = http.post("/v1/classify", json={"url": f"http://127.0.0.1:{image_port}/hop"})
    untyped = http.post("/v1/classify", json={"url": f"http://127.0.0.1:{image_port}/no-type"})
    for response in (by_base64, by_url, redirected, untyped):
        assert response.status_code == 200, response.text
        assert_same_scores(response.json()["results"], by_upload)


def test_custom_labels_with_unsafe_labels_and_threshold(http):
    response = http.post("/v1/classify", json={
        "image_base64": base64.b64encode(PHOTO).decode(), "classifiers": [],
        "labels": ["a cat", "a dog", "a car"], "unsafe_labels": ["a dog"], "threshold": 0.01,
    })
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert list(results) == ["custom"]
    custom = results["custom"]
    assert list(custom["scores"]) == ["a cat", "a dog", "a car"]
    assert sum(custom["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert custom["unsafe_score"] == custom["scores"]["a dog"] and custom["flagged"]


def test_multipart_form_fields_select_classifiers_and_labels(http):
    response = upload(http, classifiers="gore", labels='["red, bright", "blue"]')
    assert response.status_code == 200, response.text
    assert list(response.json()["results"]) == ["gore", "custom"]
    assert list(response.json()["results"]["custom"]["scores"]) == ["red, bright", "blue"]


def test_concurrent_requests_are_batched_without_mixing_results(http):
    images = [jpeg(200 + 40 * i, 160, seed=10 + i) for i in range(8)]
    sequential = [upload(http, img, classifiers="nudity").json()["results"] for img in images]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda img: upload(http, img, classifiers="nudity"), images))
    for response, alone in zip(concurrent, sequential):
        assert_same_scores(response.json()["results"], alone)
    assert max(r.json()["timing"]["batch_size"] for r in concurrent) > 1  # batches really formed
    distinct = {round(r["nudity"]["scores"]["none"], 4) for r in sequential}
    assert len(distinct) == len(images)  # the images really differ, so a mix-up would show


@pytest.mark.parametrize(
    "request_kwargs, status, code",
    [
        (dict(json={"image_base64": base64.b64encode(PHOTO).decode(), "classifiers": ["violence"]}),
         400, "unknown_classifier"),
        (dict(files={"file": ("x.jpg", b"<html>not an image</html>", "image/jpeg")}),
         415, "unsupported_media_type"),
        (dict(files={"file": ("x.jpg", PHOTO[:500], "image/jpeg")}), 422, "image_decode_error"),
        (dict(files={"file": ("x.jpg", b"", "image/jpeg")}), 422, "image_decode_error"),
        (dict(json={"image_base64": "@@not base64@@"}), 400, "invalid_request"),
        (dict(json={"image_base64": "aGk=", "labels": ["only one"]}), 400, "invalid_request"),
        (dict(json={}), 400, "invalid_request"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}),
         400, "invalid_request"),
        (dict(data={"classifiers": "gore"}, files={"other": ("x", b"1")}), 400, "invalid_request"),
        (dict(content=PHOTO, headers={"content-type": "image/jpeg"}), 415, "unsupported_media_type"),
        (dict(json={"image_base64": base64.b64encode(PHOTO).decode(), "threshold": 0.1}),
         400, "invalid_request"),
        (dict(json={"url": ""}), 400, "invalid_request"),
        (dict(json={"image_base64": "aGk=", "colour": "red"}), 400, "invalid_request"),
        (dict(params={"classifiers": "gore"}, files={"file": ("x.jpg", PHOTO, "image/jpeg")}),
         400, "invalid_request"),
    ],
    ids=["unknown-classifier", "html-upload", "truncated", "empty", "bad-base64", "one-label",
         "no-image", "bad-json", "no-file-part", "raw-body", "threshold-without-labels",
         "empty-url", "unknown-field", "query-string"],
)
def test_bad_requests_get_coded_4xx_errors(http, request_kwargs, status, code):
    assert_error(http.post("/v1/classify", **request_kwargs), status, code)


@pytest.mark.parametrize(
    "path, status, code",
    [("/gone.jpg", 502, "fetch_failed"), ("/page.html", 415, "unsupported_media_type")],
)
def test_url_failures_get_coded_errors(http, image_port, path, status, code):
    response = http.post("/v1/classify", json={"url": f"http://127.0.0.1:{image_port}{path}"})
    assert_error(response, status, code)


def test_addresses_outside_the_allow_list_are_refused(http, image_port):
    # ::1 is loopback but not allow-listed here (only 127.0.0.0/8): refused before connecting.
    response = http.post("/v1/classify", json={"url": f"http://[::1]:{image_port}/photo.jpg"})
    assert_error(response, 400, "url_forbidden")
    response = http.post("/v1/classify", json={"url": f"http://localhost:{image_port + 1}/x.jpg"})
    assert_error(response, 400, "url_forbidden")  # port not allowed


def test_unknown_route_uses_the_error_body(http):
    assert_error(http.get("/v2/nothing"), 404, "not_found")


def test_classifiers_health_and_docs(http, tiny_clip_dir):
    catalog = http.get("/v1/classifiers").json()
    info = catalog["model_info"]
    assert catalog["model"] == info["checkpoint"] == tiny_clip_dir
    assert (info["family"], info["architecture"], info["scoring"], info["preprocessing"]) == \
        ("clip", "CLIPModel", "softmax", "crop")
    assert [c["name"] for c in catalog["classifiers"]] == list(BUILTIN_CLASSIFIERS)
    nudity = catalog["classifiers"][0]
    assert nudity["unsafe_labels"] == ["explicit"] and nudity["threshold"] == 0.5
    assert http.get("/healthz").json() == {"status": "ok", "model": tiny_clip_dir, "model_family": "clip"}
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert {"ClassifyResponse", "ErrorResponse"} <= set(spec["components"]["schemas"])


def test_handle_call_returns_the_same_result_as_http(http):
    handle = serve.get_deployment_handle("ClipModel", app_name="moderation")
    result = handle.classify.remote(PHOTO, ["nudity", "gore"]).result()
    assert isinstance(result, Classification)
    over_http = upload(http, classifiers="nudity,gore").json()["results"]
    from_handle = {r.name: {"scores": r.scores} for r in result.results}
    assert_same_scores(from_handle, over_http)
    with pytest.raises(ModerationError) as info:
        handle.classify.remote(b"not an image").result()
    assert info.value.code == "unsupported_media_type"


def test_custom_label_sets_are_encoded_once_then_cached(http):
    handle = serve.get_deployment_handle("ClipModel", app_name="moderation")
    labels = ["a teapot", "a bicycle", "a lighthouse"]
    before = handle.health.remote().result()["custom_heads_cached"]
    for _ in range(3):
        assert http.post("/v1/classify", json={
            "image_base64": base64.b64encode(PHOTO).decode(), "labels": labels}).status_code == 200
    assert handle.health.remote().result()["custom_heads_cached"] == before + 1


def test_thresholds_change_through_user_config_without_restart(http, app_args, base_url):
    handle = serve.get_deployment_handle("ClipModel", app_name="moderation")
    replica = handle.health.remote().result()["replica"]
    before = upload(http, classifiers="gore").json()["results"]["gore"]
    deploy(app_args, int(base_url.rsplit(":", 1)[1]), model_user_config={"thresholds": {"gore": 0.01}})
    after = upload(http, classifiers="gore").json()["results"]["gore"]
    assert after["threshold"] == 0.01 and after["flagged"]
    assert_same_scores({"gore": after}, {"gore": before})
    assert http.get("/v1/classifiers").json()["classifiers"][1]["threshold"] == 0.01
    assert handle.health.remote().result()["replica"] == replica  # reconfigured, not restarted


# --- many images per request ----------------------------------------------------------------


def test_batch_upload_answers_each_image_in_order_and_a_bad_one_fails_alone(http):
    files = [("file", ("a.jpg", PHOTO, "image/jpeg")), ("file", ("b.png", OTHER, "image/png")),
             ("file", ("c.jpg", b"not an image at all", "image/jpeg")),
             ("file", ("d.jpg", PHOTO, "image/jpeg"))]
    response = http.post("/v1/classify/batch", files=files, data={"classifiers": "nudity,gore"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["items"]] == [0, 1, 2, 3]
    assert [item["id"] for item in body["items"]] == ["a.jpg", "b.png", "c.jpg", "d.jpg"]
    assert body["errors"] == 1 and body["model"] and body["request_id"] == response.headers["x-request-id"]
    bad = body["items"][2]
    assert bad["error"]["code"] == "unsupported_media_type" and bad["error"]["status"] == 415
    assert bad["results"] is None
    for index, data in ((0, PHOTO), (1, OTHER), (3, PHOTO)):
        item = body["items"][index]
        assert item["error"] is None and list(item["results"]) == ["nudity", "gore"]
        alone = upload(http, data=data, classifiers="nudity,gore").json()
        assert_same_scores(item["results"], alone["results"])
        assert item["flagged"] == alone["flagged"]
    assert body["flagged"] == any(item["flagged"] for item in body["items"] if item["error"] is None)


def test_batch_json_mixes_urls_and_base64_with_per_image_fetch_errors(http, image_port):
    base = f"http://127.0.0.1:{image_port}"
    images = [
        {"url": f"{base}/photo.jpg", "id": "u1"},
        {"url": f"{base}/gone.jpg", "id": "u2"},
        {"url": "http://10.0.0.1/x.jpg", "id": "u3"},  # refused by the address check, never fetched
        {"image_base64": base64.b64encode(OTHER).decode(), "id": "b1"},
        {"image_base64": "!!not base64", "id": "b2"},
    ]
    response = http.post("/v1/classify/batch", json={
        "images": images, "classifiers": [], "labels": ["a cat", "a dog"],
    })
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["id"] for i in items] == ["u1", "u2", "u3", "b1", "b2"]
    assert [i["error"] and i["error"]["code"] for i in items] == [
        None, "fetch_failed", "url_forbidden", None, "invalid_request"]
    alone = http.post("/v1/classify", json={"url": f"{base}/photo.jpg", "classifiers": [],
                                            "labels": ["a cat", "a dog"]}).json()
    assert_same_scores(items[0]["results"], alone["results"])
    assert list(items[3]["results"]) == ["custom"]


def test_batch_images_join_the_model_batches_one_by_one(http):
    files = [("file", (f"{i}.jpg", jpeg(320, 240, seed=i), "image/jpeg")) for i in range(8)]
    body = http.post("/v1/classify/batch", files=files, data={"classifiers": "nudity"}).json()
    assert body["errors"] == 0
    assert max(item["timing"]["batch_size"] for item in body["items"]) > 1


def test_many_images_in_one_model_call_answer_each_alone_and_in_order(http):
    """20 uploads: the ingress sends them in calls of 16 and 4 (images_per_model_call); every
    image is scored as if sent alone, a bad one fails alone."""
    images = [jpeg(320, 240, seed=i) for i in range(20)]
    images[7] = b"not an image at all"
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    body = http.post("/v1/classify/batch", files=files, data={"classifiers": "nudity"}).json()
    assert [item["id"] for item in body["items"]] == [f"{i}.jpg" for i in range(20)]
    assert [item["index"] for item in body["items"] if item["error"]] == [7]
    assert body["items"][7]["error"]["code"] == "unsupported_media_type"
    for i in (0, 15, 16, 19):  # first and last of each call
        alone = upload(http, data=images[i], classifiers="nudity").json()
        assert_same_scores(body["items"][i]["results"], alone["results"])


def test_uploads_too_large_to_go_by_value_go_through_the_object_store(http):
    """Small uploads reach the model by value, over Serve's gRPC channel to the replica, whose
    server takes messages up to 4 MiB; a call carrying more than ``BY_VALUE_MAX_BYTES`` goes by
    reference. A single upload of 3 MiB, and three of 1.5 MiB in one model call (4.4 MiB: more
    than the gRPC limit), are answered like small ones."""
    from deployments.model_calls import BY_VALUE_MAX_BYTES

    big = noise_png(1024, seed=1)
    parts = [noise_png(700, seed=s) for s in (2, 3, 4)]
    assert len(big) > BY_VALUE_MAX_BYTES and sum(map(len, parts)) > 4 << 20 > max(map(len, parts))
    alone = upload(http, data=big, classifiers="nudity")
    assert alone.status_code == 200, alone.text
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate([*parts, PHOTO])]
    body = http.post("/v1/classify/batch", files=files, data={"classifiers": "nudity"}).json()
    assert body["errors"] == 0, body
    for data, item in zip(parts, body["items"]):
        assert_same_scores(item["results"], upload(http, data=data, classifiers="nudity").json()["results"])


def test_concurrent_single_uploads_each_get_their_own_answer(http):
    """Uploads that arrive together share model calls (``coalesce_uploads_ms``; ``coalesce_min_out`` 1 here):
    each response is still that image's, with that request's options, and a bad image fails alone."""
    images = {"photo": PHOTO, "other": OTHER, "bad": b"not an image at all"}
    options = ("nudity", "gore,offensive")
    solo = {(name, opts): upload(http, data=data, classifiers=opts)
            for name, data in images.items() for opts in options}
    requests = [(name, opts) for _ in range(4) for name in images for opts in options]  # 24 at once
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: upload(http, data=images[r[0]], classifiers=r[1]), requests))
    for (name, opts), answer in zip(requests, answers):
        if name == "bad":
            assert_error(answer, 415, "unsupported_media_type")
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert list(body["results"]) == opts.split(",")
        assert_same_scores(body["results"], solo[(name, opts)].json()["results"])


def test_handle_callers_classify_many_with_an_outcome_per_image(http):
    handle = serve.get_deployment_handle("ClipModel", app_name="moderation")
    outcomes = handle.try_classify_many.remote([PHOTO, b"not an image", 12345, OTHER], ["gore"]).result()
    assert [type(o).__name__ for o in outcomes] == ["Classification", "ModerationError", "ModerationError",
                                                    "Classification"]
    assert outcomes[1].code == "unsupported_media_type"
    assert outcomes[2].code == "internal_error"  # an unexpected failure is that image's answer only
    alone = handle.classify.remote(OTHER, ["gore"]).result()
    assert outcomes[3].results[0].scores == pytest.approx(alone.results[0].scores, abs=1e-4)
    bad_options = handle.try_classify_many.remote([PHOTO, OTHER], ["nope"]).result()
    assert [o.code for o in bad_options] == ["unknown_classifier"] * 2
    assert handle.record_autoscaling_stats.remote().result() == {"extra_images": 0.0}  # none in flight


@pytest.mark.parametrize("request_kwargs, status, code", [
    ({"files": [("file", ("a.jpg", PHOTO, "image/jpeg"))] * 33}, 400, "invalid_request"),
    ({"json": {"images": [{"url": "http://127.0.0.1/a.jpg"}] * 33}}, 400, "invalid_request"),
    ({"json": {"images": []}}, 400, "invalid_request"),
    ({"json": {"images": [{"image_base64": "aGk="}], "classifiers": ["nope"]}}, 400, "unknown_classifier"),
    ({"files": [("file", ("a.jpg", PHOTO, "image/jpeg"))], "data": {"bogus": "1"}}, 400, "invalid_request"),
    ({"data": {"classifiers": "nudity"}, "files": [("other", ("a.jpg", PHOTO, "image/jpeg"))]},
     400, "invalid_request"),
    ({"content": b"raw bytes", "headers": {"content-type": "image/jpeg"}}, 415, "unsupported_media_type"),
])
def test_batch_whole_request_errors(http, request_kwargs, status, code):
    assert_error(http.post("/v1/classify/batch", **request_kwargs), status, code)


def test_batch_file_names_are_echoed_safely_whatever_their_charset(http):
    boundary = "b0undary"
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="\\ud800{"x" * 300}.jpg"'
            f"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + PHOTO + f"\r\n--{boundary}--\r\n".encode()
    response = http.post("/v1/classify/batch", content=part, headers={
        "content-type": f"multipart/form-data; boundary={boundary}; charset=unicode_escape"})
    assert response.status_code == 200, response.text
    item = response.json()["items"][0]
    assert item["error"] is None and item["id"].startswith("?x") and len(item["id"]) == 256


def test_the_model_info_names_the_engine_that_serves(http):
    if ENGINE == "torch":
        print("openvino is not installed: this module's service runs torch")
    info = http.get("/v1/classifiers").json()["model_info"]
    assert info["engine"] == info["lone_image_engine"] == ENGINE
